"""Camera actor: one live camera from frames to stored, searchable tracklets.

Per camera: LiveCamera (decode, sample, drop-oldest queue, reconnect) -> detector pool (batched
across cameras; at most ``live.max_in_flight`` frames in flight, bounded with ``ray.wait``) ->
ByteTracker -> CropSelector -> embedder pool -> the camera's index writer. Track, crop,
detection and camera-status events go to Kafka when enabled; camera status and track metadata go
to Redis when it is the metadata store. The actor runs its loop in a thread, so ``status()`` and
``stop()`` answer at once; Ray restarts a dead actor, which resumes with fresh track ids.

When the serving index version changes, the supervisor hands the camera the new version's
embedder pool (``set_embedders``); the loop takes it between two frames and forgets the tracks'
appearance learned with the old model. A writer refuses embeddings of a model other than its
version's (``StaleModelError``): the camera then re-embeds the crops with its current pool, or
waits for the new one, so every crop is stored once, by the model of the version it lands in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from actors.pools import Pool, PoolEmbedder
from actors.writer import StaleModelError
from models.appearance import BoxEmbedder
from streaming.config import CameraConfig, RefindConfig
from streaming.crops import CropSelector
from streaming.events import (
    CameraStatusEvent,
    CropEvent,
    DetectionEvent,
    TrackEvent,
)
from streaming.records import Crop, CropRecord, Detections, Frame, Tracks
from streaming.tracker import ByteTracker

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0
STALE_WAIT_S = 120.0  # longest a crop batch waits for the writer and the pool to agree on a model


class StageTimes:
    """Seconds spent per stage, for utilisation figures (thread-safe: the
    camera loop adds while ``status`` reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.seconds)


@dataclass
class CameraReport:
    """What a camera actor has done so far (returned by ``status``)."""

    camera: str
    state: str
    message: str
    frames_in: int
    frames_dropped: int
    frames_processed: int
    reconnects: int
    rate_fps: float
    tracks_started: int
    crops_stored: int
    events_published: int
    freshness_s: list[float]
    stage_seconds: dict[str, float]
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    queue_depth: int = 0
    in_flight: int = 0
    model_id: str = ""  # the embedder model this camera's crops are embedded with now
    error: str | None = None
    events_sent: int = 0  # of events_published: acknowledged by Kafka
    events_failed: int = 0  # of events_published: given up on (logged at ERROR)


class _Outputs:
    """Kafka events and Redis metadata of one camera; both optional, both fault-tolerant."""

    def __init__(self, cfg: RefindConfig, camera: str) -> None:
        self.camera = camera
        self.bus: Any = None
        self.redis: Any = None
        self.published = 0
        if cfg.kafka.enabled:
            from streaming.bus import EventBus

            self.bus = EventBus(cfg.kafka)
        if cfg.metadata.type == "redis":
            from indexer.redis_meta import RedisMetadata

            self.redis = RedisMetadata(cfg.metadata)
        self.publish_detections = cfg.kafka.publish_detections

    def publish(self, event: Any) -> None:
        """Hand an event to Kafka; ``published`` counts those the producer accepted."""
        if self.bus is not None and self.bus.publish(event):
            self.published += 1

    def delivered(self) -> tuple[int, int]:
        """(sent, failed): accepted events Kafka acknowledged, and those given up on."""
        if self.bus is None:
            return 0, 0
        stats = self.bus.stats()
        return stats.sent, stats.failed

    def redis_call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """A Redis write; while Redis is down it is logged and skipped (the gallery keeps the
        crops, and the next update of the same track rewrites its metadata)."""
        if self.redis is None:
            return
        from indexer.redis_meta import MetadataUnavailable

        try:
            getattr(self.redis, method)(*args, **kwargs)
        except MetadataUnavailable as err:
            log.warning("%s: redis %s skipped: %s", self.camera, method, err)

    def close(self) -> None:
        if self.bus is not None:
            self.bus.flush(timeout_s=30)
            self.bus.close(timeout_s=10)


@ray.remote
class CameraActor:
    def __init__(
        self,
        cfg: RefindConfig,
        camera: CameraConfig,
        detectors: list[Any],
        embedders: list[Any],
        writer: Any,
        shard: int,
    ) -> None:
        from streaming.live import LiveCamera

        self._cfg = cfg
        self._cam = camera
        self._detectors = Pool(detectors)
        self._embedders = Pool(embedders)
        self._writer = writer
        self._shard = shard
        self._tracker = ByteTracker(cfg.tracker, camera.name)
        self._selector = CropSelector(cfg.crops)
        self._id_offset = ray.get(writer.max_track_id.remote(camera.name))
        model_id, dim = ray.get(embedders[0].info.remote())
        self._model_id = model_id
        self._boxes = self._box_embedder(model_id, dim)
        # a new version's pool, handed over by set_embedders and taken by the loop thread
        self._next_pool: tuple[list[Any], str, int] | None = None
        self._pool_changed = threading.Event()
        self._out = _Outputs(cfg, camera.name)
        self._status_at = time.monotonic()
        self._live = LiveCamera(camera, cfg.live, on_status=self._on_status)
        self._times = StageTimes()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._processed = 0
        self._tracks: dict[int, dict[str, Any]] = {}
        self._tracks_started = 0
        self._crops_stored = 0
        self._freshness: deque[float] = deque(maxlen=10_000)
        self._latency: deque[float] = deque(maxlen=1000)  # receive -> tracked, last frames
        self._in_flight = 0
        self._received: dict[int, int] = {}  # frame index -> wall-clock receive time (bounded)
        self._error: str | None = None
        self._out.redis_call("register_camera", camera.name, camera.url)
        self._live.start()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera.name}", daemon=True)
        self._thread.start()

    def _box_embedder(self, model_id: str, dim: int) -> BoxEmbedder | None:
        """Lazy appearance for the tracker, through the embedder pool."""
        if self._cfg.tracker.appearance_weight <= 0:
            return None
        return BoxEmbedder(PoolEmbedder(self._embedders, model_id, dim))

    # -- public, answered while the loop runs ------------------------------------------------

    def set_embedders(self, embedders: list[Any], model_id: str, dim: int) -> None:
        """Embed with this pool (model ``model_id``) from the next frame on."""
        with self._lock:
            self._next_pool = (list(embedders), model_id, dim)
        self._pool_changed.set()

    def _take_pool(self) -> None:
        """Switch to a pool handed over by ``set_embedders`` (on the thread that embeds)."""
        with self._lock:
            handed, self._next_pool = self._next_pool, None
            self._pool_changed.clear()
        if handed is None:
            return
        embedders, model_id, dim = handed
        old = self._model_id
        self._embedders = Pool(embedders)
        self._model_id = model_id
        self._boxes = self._box_embedder(model_id, dim)
        if model_id != old:
            self._tracker.forget_appearance()
        log.info("%s: embedding with %s now", self._cam.name, model_id)

    def status(self) -> CameraReport:
        s = self._live.status()
        sent, failed = self._out.delivered()
        with self._lock:
            lat = np.quantile(self._latency, [0.5, 0.95]) if self._latency else (None, None)
            return CameraReport(
                camera=self._cam.name,
                state=str(getattr(s.state, "value", s.state)),
                message=s.message,
                frames_in=s.frames_in,
                frames_dropped=s.frames_dropped,
                frames_processed=self._processed,
                reconnects=s.reconnects,
                rate_fps=s.rate_fps,
                tracks_started=self._tracks_started,
                crops_stored=self._crops_stored,
                events_published=self._out.published,
                freshness_s=list(self._freshness),
                stage_seconds=self._times.snapshot(),
                latency_p50_s=None if lat[0] is None else float(lat[0]),
                latency_p95_s=None if lat[1] is None else float(lat[1]),
                queue_depth=self._live.qsize(),
                in_flight=self._in_flight,
                model_id=self._model_id,
                error=self._error,
                events_sent=sent,
                events_failed=failed,
            )

    def stop(self) -> CameraReport:
        """Stop reading, store what the open tracks hold, flush events; the final report."""
        self._stop.set()
        self._live.stop(timeout=5)
        self._thread.join(timeout=30)
        self._finish_all()
        self._out.close()
        return self.status()

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        pending: deque[tuple[Frame, Any]] = deque()
        try:
            while not self._stop.is_set() and not (self._live.done and not pending):
                self._take_pool()
                frame = self._live.get(timeout=0.1)
                if frame is not None:
                    image_ref = ray.put(frame.image)  # put once; the detector reads it zero-copy
                    pending.append((frame, self._detectors.pick().detect.remote(image_ref)))
                self._drain(pending, block=len(pending) >= self._cfg.live.max_in_flight)
                self._in_flight = len(pending)
                if time.monotonic() - self._status_at >= STATUS_EVERY_S:
                    self._on_status(self._live.status())  # counters to Redis and Kafka
            self._drain(pending, block=True, everything=True)
        except Exception as err:  # reported in status; Ray restarts the actor if it dies
            log.exception("%s: camera loop failed", self._cam.name)
            self._error = f"{type(err).__name__}: {err}"

    def _drain(self, pending: deque[tuple[Frame, Any]], block: bool, everything: bool = False):
        """Process finished detections in frame order; wait for the oldest when ``block``."""
        while pending:
            frame, ref = pending[0]
            ready, _ = ray.wait([ref], timeout=None if (block or everything) else 0)
            if not ready:
                return
            pending.popleft()
            self._process(frame, ray.get(ref))
            block = False

    def _process(self, frame: Frame, dets: Detections) -> None:
        t0 = time.perf_counter()
        boxes = self._boxes
        appearance = boxes.callback(frame.image, dets) if boxes is not None else None
        seconds_before = boxes.seconds if boxes is not None else 0.0
        tracks = self._tracker.update(frame.index, frame.ts_ns, dets, appearance)
        self._selector.update(frame, tracks)
        if boxes is not None:
            self._times.add("appearance", boxes.seconds - seconds_before)
        self._times.add("track", time.perf_counter() - t0)
        self._track_events(frame, tracks, dets)
        ended = self._tracker.pop_ended()
        crops = self._selector.early(frame.ts_ns, self._cfg.crops.early_after_s)
        crops += self._selector.finish(ended)
        if crops:
            self._store(crops)
        for tid in ended:
            self._end_track(tid)
        with self._lock:
            self._processed += 1
            if frame.received_ns:
                self._latency.append((time.time_ns() - frame.received_ns) / 1e9)

    def _store(self, crops: list[Crop]) -> None:
        records = self._embed_and_write(crops)
        now = time.time_ns()
        with self._lock:
            self._crops_stored += len(records)
        for rec in records:
            self._crop_event(rec)
            tid = rec.track_id - self._id_offset
            info = self._tracks.get(tid)
            if info is None:
                continue
            info["n_crops"] += 1
            info["best"] = info["best"] or rec.crop_path
            info["vector_ids"].append(rec.vector_id)
            if info["n_crops"] == 1 and self._received.get(rec.frame_index):
                # the tracklet became searchable now: freshness from its crop's capture
                self._freshness.append((now - self._received[rec.frame_index]) / 1e9)
            self._upsert_track(tid, info, "active")

    def _embed_and_write(self, crops: list[Crop]) -> list[CropRecord]:
        """Embed ``crops`` and store them; around a version switch, re-embed them when the pool
        changed model, and wait (at most STALE_WAIT_S) while the writer still writes another
        model's version."""
        images = [c.image for c in crops]
        embeddings = None
        deadline = time.monotonic() + STALE_WAIT_S
        while True:
            self._take_pool()
            if embeddings is None or embeddings.model_id != self._model_id:
                t0 = time.perf_counter()
                embeddings = ray.get(self._embedders.pick().embed.remote(images))
                self._times.add("embed", time.perf_counter() - t0)
            t0 = time.perf_counter()
            try:
                records: list[CropRecord] = ray.get(
                    self._writer.add.remote(crops, embeddings, self._id_offset)
                )
            except StaleModelError as err:
                if time.monotonic() > deadline:
                    raise
                log.debug("%s: %s; waiting for the switch", self._cam.name, err)
                self._pool_changed.wait(0.2)  # the supervisor switches the pool and the writer
                continue
            finally:
                self._times.add("write", time.perf_counter() - t0)
            return records

    # -- events and metadata ----------------------------------------------------------------

    def _track_events(self, frame: Frame, tracks: Tracks, dets: Detections) -> None:
        if self._out.publish_detections and self._out.bus is not None and len(dets):
            self._out.publish(
                DetectionEvent.from_detections(self._cam.name, frame.index, frame.ts_ns, dets)
            )
        self._received[frame.index] = frame.received_ns
        if len(self._received) > 2000:  # keep the last ~1000 frames' receive times
            for k in list(self._received)[:1000]:
                del self._received[k]
        for tid, box in zip(tracks.track_id.tolist(), tracks.xyxy.tolist(), strict=True):
            info = self._tracks.get(tid)
            started = info is None
            if info is None:
                info = {"first_ts": frame.ts_ns, "n_crops": 0, "best": None, "vector_ids": []}
                self._tracks[tid] = info
                with self._lock:
                    self._tracks_started += 1
            info["last_ts"] = frame.ts_ns
            info["box"] = box
            if started:
                self._out.publish(self._track_event(tid, info, "start"))
                self._upsert_track(tid, info, "active")

    def _end_track(self, tid: int) -> None:
        info = self._tracks.pop(tid, None)
        if info is not None:
            span = (tid + self._id_offset, info["first_ts"], info["last_ts"])
            self._writer.set_track_spans.remote(self._cam.name, [span])
            self._out.publish(self._track_event(tid, info, "end"))
            self._upsert_track(tid, info, "ended")

    def _track_event(self, tid: int, info: dict[str, Any], phase: str) -> TrackEvent:
        return TrackEvent(
            camera=self._cam.name,
            ts_ns=info["last_ts"],
            phase=phase,
            track_id=tid + self._id_offset,
            first_ts_ns=info["first_ts"],
            last_ts_ns=info["last_ts"],
            last_box=tuple(round(v, 1) for v in info["box"]),
            n_crops=info["n_crops"],
            best_crop=info["best"],
            vector_ids=tuple(info["vector_ids"]),
            model_id=self._model_id,
        )

    def _crop_event(self, rec: CropRecord) -> None:
        self._out.publish(CropEvent.from_record(rec))

    def _upsert_track(self, tid: int, info: dict[str, Any], state: str) -> None:
        self._out.redis_call(
            "upsert_track", self._cam.name, tid + self._id_offset, info["first_ts"],
            info["last_ts"], info["n_crops"], info["best"], state,
        )
        if info["vector_ids"]:
            self._out.redis_call(
                "map_vectors", info["vector_ids"], self._cam.name, tid + self._id_offset, self._shard
            )

    def _on_status(self, status: Any) -> None:
        """Camera state and counters to Redis and the camera-status topic (on every change of
        state, and every STATUS_EVERY_S while the camera runs)."""
        self._status_at = time.monotonic()
        from indexer.redis_meta import CameraCounters  # redis is an optional extra

        state = str(getattr(status.state, "value", status.state))
        counters = CameraCounters(status.frames_in, status.frames_dropped, status.reconnects)
        self._out.redis_call("set_camera_status", self._cam.name, state, status.message, counters)
        self._out.publish(
            CameraStatusEvent(
                camera=self._cam.name, ts_ns=time.time_ns(), state=state,
                message=status.message[:2000],
                frames_in=status.frames_in, frames_dropped=status.frames_dropped,
                reconnects=status.reconnects,
            )
        )

    def _finish_all(self) -> None:
        ended = self._tracker.flush()
        crops = self._selector.flush()
        if crops:
            self._store(crops)
        for tid in ended:
            self._end_track(tid)
