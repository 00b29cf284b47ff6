"""Ingest one video source into the gallery: ``CameraPipeline`` for the analysis, a
``CropSink`` for the storing.

Plain Python, no Ray: ``actors/`` runs the same two pieces for live cameras. The pipeline
decodes in a prefetch thread (the detector releases the GIL, so it never waits for the
decoder); a file is never dropped from, only live sources drop frames (in ``actors/``). Crops are
embedded in batches of ``embedder.batch_size``; a track's end is stored once its crops are.
With ``identities.enabled`` every stored crop's track gets its global person id and is checked
against the watches (``refind.indexer.identity_service``, as live). With
``ingest.referring_evidence`` each stored crop is also read for text search (BlazePose and
the attribute model, ``refind.indexer.evidence``), so a first text query finds it read.

Crash safety: crops are written first, then the durable record, then vectors and metadata in
one SQLite transaction per batch (see ``GalleryStore``). A crash loses at most the batch in
flight; the gallery stays as before the ingest plus every fully written batch.

Example:
    >>> pipe = IngestPipeline.from_config(load_config(None))                # doctest: +SKIP
    >>> with open_sink(cfg, pipe.embedder.model_id, pipe.embedder.dim) as sink:  # doctest: +SKIP
    ...     report = pipe.run(VideoSource("clip.mp4", camera="gate"), sink)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from refind.config import RefindConfig
from refind.indexer.identity_service import IdentityService, crop_news, referrer_text_scorer
from refind.indexer.sink import CropSink
from refind.models.base import Detector, ReidEmbedder
from refind.models.registry import build_detector, build_embedder
from refind.models.store import ModelStore
from refind.streaming.pipeline import CameraPipeline, EndGate
from refind.streaming.records import Crop
from refind.streaming.sources import VideoSource

if TYPE_CHECKING:  # built only when ingest.referring_evidence is on
    from refind.models.referring import ComposingReferrer


@dataclass
class IngestReport:
    """What one ingest did, for the CLI, benchmarks and logs."""

    camera: str
    frames: int = 0
    frames_detected: int = 0  # the detector ran (the rest reused them: nothing moved)
    detections: int = 0
    tracks: int = 0
    crops: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    identity: dict[str, int] = field(default_factory=dict)  # global id changes and alerts
    appearance_asked: dict[str, int] = field(default_factory=dict)  # the tracker's ReID crops

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "camera": self.camera,
            "frames": self.frames,
            "frames_detected": self.frames_detected,
            "detections": self.detections,
            "tracks": self.tracks,
            "crops": self.crops,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "identity": self.identity,
            "appearance_asked": self.appearance_asked,
        }


class IngestPipeline:
    """Runs a ``CameraPipeline`` over one source and stores what it chooses in a ``CropSink``."""

    def __init__(self, cfg: RefindConfig, detector: Detector, embedder: ReidEmbedder,
                 referrer: ComposingReferrer | None = None) -> None:
        self.cfg = cfg
        self.detector = detector
        self.embedder = embedder
        self.referrer = referrer  # reads stored crops for text search (ingest.referring_evidence)
        self.identities: IdentityService | None = None  # global ids and watches, per run

    @classmethod
    def from_config(cls, cfg: RefindConfig, store: ModelStore | None = None) -> IngestPipeline:
        store = store or ModelStore.from_config(cfg.models)
        referrer = None
        if cfg.ingest.referring_evidence:
            from refind.indexer.evidence import EvidenceStore
            from refind.models.attributes import OpenVinoAttributes
            from refind.models.body import PoseModel
            from refind.models.referring import ComposingReferrer

            evidence = EvidenceStore.in_data_dir(cfg.data_dir)
            if evidence is not None:  # reads crops only: no text, so no text encoder
                referrer = ComposingReferrer(OpenVinoAttributes(store), PoseModel(store),
                                             store=evidence)
        return cls(cfg, build_detector(cfg.detector, store), build_embedder(cfg.embedder, store),
                   referrer)

    def camera_pipeline(self, camera: str, id_offset: int = 0) -> CameraPipeline:
        """The stage loop for ``camera`` with this ingest's models and settings."""
        return CameraPipeline(
            camera, self.cfg.tracker, self.cfg.crops, self.detector, self.embedder,
            id_offset=id_offset, detector_batch=self.cfg.detector.batch_size,
            motion_gate=self.cfg.motion_gate,
        )

    def run(
        self, source: VideoSource, sink: CropSink, on_frames: Callable[[int], None] | None = None,
    ) -> IngestReport:
        """Ingest ``source`` to its end (or ``ingest.max_frames``); ``on_frames(n)`` is called
        as frames are analysed."""
        start = time.perf_counter()
        pipe = self.camera_pipeline(source.camera, sink.max_track_id(source.camera))
        if self.cfg.identities.enabled:
            self.identities = IdentityService(self.cfg, sink.record,
                                              lambda: referrer_text_scorer(self.cfg))
        gate = EndGate()
        pending: list[Crop] = []
        timers = {"embed": 0.0, "store": 0.0}
        frames = itertools.islice(iter(source), self.cfg.ingest.max_frames)
        for result in pipe.run(frames):
            pending += result.crops
            gate.sent(c.track_id for c in result.crops)
            gate.ended(result.ended)
            for clip in result.clips:
                sink.put_clip(clip)
            if len(pending) >= self.cfg.embedder.batch_size or result.frame is None:
                self._store(pending, sink, timers)
                gate.done(c.track_id for c in pending)
                pending = []
            if gate.waiting:
                t0 = time.perf_counter()
                ended = gate.release()
                sink.end_tracks(ended)
                timers["store"] += time.perf_counter() - t0
                if self.identities is not None:
                    t1 = time.perf_counter()
                    self.identities.ended(ended)
                    timers["identities"] = (timers.get("identities", 0.0)
                                            + time.perf_counter() - t1)
            if on_frames is not None and result.frame is not None:
                on_frames(1)
        t0 = time.perf_counter()
        sink.save()
        if self.identities is not None:
            self.identities.close()
        timers["store"] += time.perf_counter() - t0
        return IngestReport(
            camera=source.camera, frames=pipe.frames, frames_detected=pipe.frames_detected,
            detections=pipe.detections,
            tracks=pipe.tracks_started, crops=sink.stored,
            seconds=time.perf_counter() - start, stage_seconds=pipe.times.snapshot() | timers,
            appearance_asked=pipe.appearance_asked,
            identity={k: self.identities.counts[k] for k in ("changes", "alerts")}
            if self.identities is not None else {},
        )

    def _store(self, crops: list[Crop], sink: CropSink, timers: dict[str, float]) -> None:
        if not crops:
            return
        t0 = time.perf_counter()
        embeddings = self.embedder([c.image for c in crops])
        t1 = time.perf_counter()
        stored = sink.store(crops, embeddings)
        timers["embed"] += t1 - t0
        timers["store"] += time.perf_counter() - t1
        if self.identities is not None and stored:
            t3 = time.perf_counter()
            self.identities.crops(crop_news(crops, embeddings, stored))
            timers["identities"] = timers.get("identities", 0.0) + time.perf_counter() - t3
        if self.referrer is not None and stored:  # the pixels stored are what a query reads
            t2 = time.perf_counter()
            by_path = {(r.camera, r.track_id, r.frame_index): r.crop_path for r in stored}
            kept = [c for c in crops if (c.camera, c.track_id, c.frame_index) in by_path]
            self.referrer.crop_evidence(
                [c.image for c in kept],
                [by_path[(c.camera, c.track_id, c.frame_index)] for c in kept])
            timers["evidence"] = timers.get("evidence", 0.0) + time.perf_counter() - t2
