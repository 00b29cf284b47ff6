"""Ingest one video source into the gallery: decode -> detect -> track -> pick crops -> embed -> store.

Plain Python, no Ray: ``actors/`` wraps these pieces for live, multi-camera work. Decoding runs
in a prefetch thread with a bounded queue, so the detector (which releases the GIL) never waits
for the decoder; a file is never dropped from, only live sources drop frames (in ``actors/``).

Crash safety: crops are written first, then their vectors and metadata in one SQLite
transaction per batch (see ``GalleryStore``). A crash loses at most the batch in flight; the
gallery stays as before the ingest plus every fully written batch.

Example:
    >>> pipe = IngestPipeline.from_config(load_config(None))              # doctest: +SKIP
    >>> report = pipe.run(VideoSource("clip.mp4", camera="gate"), gallery)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from indexer.blobs import CropStore
from indexer.gallery_store import GalleryStore
from models.appearance import BoxEmbedder
from models.base import Detector, ReidEmbedder
from models.openvino_reid import OpenVinoReidEmbedder
from models.store import ModelStore
from models.yolox import YoloxDetector
from streaming.config import RefindConfig
from streaming.crops import CropSelector
from streaming.records import Crop, CropRecord, Embeddings, Frame
from streaming.sources import VideoSource
from streaming.tracker import ByteTracker

log = logging.getLogger(__name__)

_END = object()


@dataclass
class IngestReport:
    """What one ingest did, for the CLI, benchmarks and logs."""

    camera: str
    frames: int = 0
    detections: int = 0
    tracks: int = 0
    crops: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "camera": self.camera,
            "frames": self.frames,
            "detections": self.detections,
            "tracks": self.tracks,
            "crops": self.crops,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


def build_detector(cfg: RefindConfig, store: ModelStore) -> Detector:
    return YoloxDetector(cfg.detector, store)


def build_embedder(cfg: RefindConfig, store: ModelStore) -> ReidEmbedder:
    if cfg.embedder.type == "irm":
        from models.irm_embedder import IrmEmbedder  # torch and transformers load only when chosen

        return IrmEmbedder.from_config(cfg.embedder, store)
    return OpenVinoReidEmbedder(cfg.embedder, store)


def prefetch(frames: Iterator[Frame], batch_size: int, depth: int = 4) -> Iterator[list[Frame]]:
    """Batches of frames decoded in a background thread; at most ``depth`` batches wait."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        batch: list[Frame] = []
        try:
            for frame in frames:
                if stop.is_set():
                    return
                batch.append(frame)
                if len(batch) == batch_size:
                    q.put(batch)
                    batch = []
            if batch:
                q.put(batch)
            q.put(_END)
        except BaseException as err:  # handed to the consumer, which re-raises it
            q.put(err)

    thread = threading.Thread(target=work, name="decode", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class IngestPipeline:
    """Runs the stages over one source and writes crops, vectors and metadata."""

    def __init__(self, cfg: RefindConfig, detector: Detector, embedder: ReidEmbedder) -> None:
        self.cfg = cfg
        self.detector = detector
        self.embedder = embedder

    @classmethod
    def from_config(cls, cfg: RefindConfig, store: ModelStore | None = None) -> IngestPipeline:
        store = store or ModelStore.from_config(cfg.models)
        return cls(cfg, build_detector(cfg, store), build_embedder(cfg, store))

    def run(
        self,
        source: VideoSource,
        gallery: GalleryStore,
        crops: CropStore,
        on_frames: Callable[[int], None] | None = None,
    ) -> IngestReport:
        """Ingest ``source`` to its end; ``on_frames(n)`` is called as batches finish."""
        report = IngestReport(camera=source.camera)
        timers = {"detect": 0.0, "track": 0.0, "embed": 0.0, "store": 0.0}
        tracker = ByteTracker(self.cfg.tracker, source.camera)
        boxes = BoxEmbedder(self.embedder) if self.cfg.tracker.appearance_weight > 0 else None
        selector = CropSelector(self.cfg.crops)
        id_offset = gallery.max_track_id(source.camera)
        pending: list[Crop] = []
        spans: dict[int, list[int]] = {}  # track id -> [first_ts_ns, last_ts_ns]
        start = time.perf_counter()
        frames = iter(source)
        if self.cfg.ingest.max_frames:
            frames = (f for f, _ in zip(frames, range(self.cfg.ingest.max_frames), strict=False))
        for batch in prefetch(frames, self.cfg.detector.batch_size):
            t0 = time.perf_counter()
            detections = self.detector([f.image for f in batch])
            t1 = time.perf_counter()
            for frame, dets in zip(batch, detections, strict=True):
                appearance = boxes.callback(frame.image, dets) if boxes else None
                tracks = tracker.update(frame.index, frame.ts_ns, dets, appearance)
                selector.update(frame, tracks)
                for tid in tracks.track_id.tolist():
                    spans.setdefault(tid, [frame.ts_ns, frame.ts_ns])[1] = frame.ts_ns
                pending.extend(selector.finish(tracker.pop_ended()))
                report.detections += len(dets)
            timers["detect"] += t1 - t0
            timers["track"] += time.perf_counter() - t1
            report.frames += len(batch)
            if len(pending) >= self.cfg.embedder.batch_size:
                report.crops += self._store(pending, gallery, crops, id_offset, timers)
                pending = []
            if on_frames:
                on_frames(len(batch))
        tracker.flush()
        pending.extend(selector.flush())
        report.crops += self._store(pending, gallery, crops, id_offset, timers)
        t0 = time.perf_counter()
        gallery.set_track_spans(
            source.camera, [(tid + id_offset, a, b) for tid, (a, b) in spans.items()]
        )
        gallery.save()
        timers["store"] += time.perf_counter() - t0
        report.tracks = len(spans)
        report.seconds = time.perf_counter() - start
        if boxes:
            timers["track_appearance"] = boxes.seconds  # part of "track": the lazy ReID calls
        report.stage_seconds = timers
        return report

    def _store(
        self,
        crops: list[Crop],
        gallery: GalleryStore,
        store: CropStore,
        id_offset: int,
        timers: dict[str, float],
    ) -> int:
        """Embed ``crops`` and write them (JPEG, then vectors + metadata in one transaction)."""
        if not crops:
            return 0
        t0 = time.perf_counter()
        embeddings = self.embedder([c.image for c in crops])
        t1 = time.perf_counter()
        records = store_crops(crops, embeddings, gallery, store, id_offset)
        timers["embed"] += t1 - t0
        timers["store"] += time.perf_counter() - t1
        return len(records)


def store_crops(
    crops: list[Crop],
    embeddings: Embeddings,
    gallery: GalleryStore,
    store: CropStore,
    id_offset: int = 0,
) -> list[CropRecord]:
    """Write crops as JPEG, then their vectors and metadata in one gallery transaction.

    ``id_offset`` is added to the tracker's ids, so a camera ingested twice never reuses ids.
    Returns the records stored: crops of a forgotten track are refused by the gallery, and
    their JPEGs deleted again.
    """
    first_id = gallery.next_vector_id()
    records = []
    for i, c in enumerate(crops):
        track_id = c.track_id + id_offset
        records.append(
            CropRecord(
                vector_id=first_id + i,
                camera=c.camera,
                track_id=track_id,
                frame_index=c.frame_index,
                ts_ns=c.ts_ns,
                xyxy=tuple(float(v) for v in c.xyxy),  # type: ignore[arg-type]
                confidence=float(c.confidence),
                quality=float(c.quality),
                crop_path=store.put(c.camera, track_id, c.frame_index, c.image),
                model_id=embeddings.model_id,
            )
        )
    stored = gallery.add(records, embeddings)
    if len(stored) < len(records):
        kept = {r.vector_id for r in stored}
        for r in records:
            if r.vector_id not in kept:
                store.delete(r.crop_path)
    return stored


def crop_box(image: np.ndarray, xyxy: tuple[float, float, float, float]) -> np.ndarray:
    """The pixels of ``image`` inside ``xyxy`` (clipped to the image); raises on an empty box."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in xyxy)
    x1, x2 = max(0, min(x1, w)), max(0, min(x2, w))
    y1, y2 = max(0, min(y1, h)), max(0, min(y2, h))
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ValueError(f"crop box {xyxy} is empty inside a {w}x{h} image")
    return np.ascontiguousarray(image[y1:y2, x1:x2])
