"""Camera actor: moves one live camera's data between Ray and the plain ``CameraPipeline``.

Per camera: ``LiveCamera`` (decode, sample, drop-oldest queue, reconnect) -> with
``tracker.detect_every`` n > 1, the frames between every n-th one skip detection (the tracker
predicts their boxes) -> the motion gate (a frame where nothing moved since the last detected
one reuses that frame's detections, the same object reference) -> the detector pool (batched
across cameras; at most ``live.max_in_flight`` frames in flight, bounded with
``ray.wait``) -> ``CameraPipeline.process`` (track, per-track stages, crop selection: the same
stage loop as ``refind ingest``) -> the embedder pool -> the camera's index writer, whose
``CropSink`` stores the crops and records them (journal, and Kafka when on) as ingest does.

The loop never waits on an embedding or a write: a batch of crops is put once and handed to the
embedder and the writer as object references, and the loop goes on with the next frame. At most
``live.max_stores_in_flight`` batches are in flight; beyond that the loop waits for the oldest,
and counts the wait (``store_waits``, stage ``store_wait``). A track's end goes to the writer once
every crop of it sent there is stored (``EndGate``), so it is recorded with all its crops. The
one call the loop does wait on is the tracker's appearance (a few boxes of a frame, through the
embedder pool): association of that frame needs the answer.

The camera publishes what only it knows to Kafka (track starts, detections, camera status) and
mirrors camera status and track starts to Redis; stored crops and ended tracks are published by
the writer. The actor runs its loop in a thread, so ``status()`` and ``stop()`` answer at once;
Ray restarts a dead actor, which resumes with fresh track ids (above the stored ones).

When the serving index version changes, the supervisor hands the camera the new version's
embedder pool (``set_embedders``); the loop takes it between two frames and the pipeline forgets
the appearance learned with the old model. A writer refuses embeddings of a model other than its
version's (``StaleModelError``): the batch is embedded again with the camera's current pool, or
tried again a little later while the switch completes (at most ``STALE_WAIT_S``), so every crop
is stored once, by the model of the version it lands in.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import ray
from ray import ObjectRef
from ray.actor import ActorHandle

from refind.actors.camera_events import CameraEvents
from refind.actors.pools import Pool, PoolEmbedder, actor_ids
from refind.actors.runtime import node_id
from refind.actors.writer import StaleModelError
from refind.config import RefindConfig
from refind.streaming.clock import live_now_ns
from refind.streaming.config import CameraConfig
from refind.streaming.live import CameraStatus, LiveCamera
from refind.streaming.metrics import FRESHNESS_BUCKETS_S, BucketCounts
from refind.streaming.pipeline import CameraPipeline, EndGate, FrameResult
from refind.streaming.records import Crop, CropRecord, Detections, Frame, TrackSpan

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0
STALE_WAIT_S = 120.0  # longest a crop batch waits for the writer and the pool to agree on a model
RETRY_STALE_S = 0.2  # a batch refused during a version switch is tried again after this long
STOP_WAIT_S = 120.0  # longest stop() waits for the loop to store what it holds
RECEIVED_KEPT = 2000  # frames whose receive time is kept (for freshness)
FRESH_KEPT = 1000  # latest freshness samples a report carries


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
    freshness: BucketCounts  # capture -> searchable, every track since the camera started
    freshness_s: list[float]  # the same, the latest FRESH_KEPT
    stage_seconds: dict[str, float]
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    queue_depth: int = 0
    in_flight: int = 0  # detections in flight
    model_id: str = ""  # the embedder model this camera's crops are embedded with now
    error: str | None = None
    events_sent: int = 0  # of events_published: acknowledged by Kafka
    events_failed: int = 0  # of events_published: given up on (logged at ERROR)
    stores_in_flight: int = 0  # crop batches being embedded and written
    store_waits: int = 0  # times the loop waited because max_stores_in_flight were in flight
    crops_failed: int = 0  # crops whose store failed (logged at ERROR)
    pid: int = 0  # the actor's process
    node_id: str = ""  # the Ray node it runs on
    detect_failed: int = 0  # frames lost because their detector died (Ray restarts it)
    store_error: str | None = None  # why the latest store failed; None once one succeeds again
    corrupt_packets: int = 0  # packets the decoder could not decode (skipped)
    corrupt_frames: int = 0  # frames decoded with damage concealed
    frames_detected: int = 0  # of frames_processed: the detector ran (the rest: nothing moved)


@dataclass(eq=False)  # one job is itself, whatever it holds
class _StoreJob:
    """One batch of crops on its way through the embedder pool to the writer."""

    crops_ref: ObjectRef
    track_ids: list[int]  # one per crop
    model_id: str = ""  # the model ``embeddings`` are of
    embeddings: ObjectRef | None = None  # ObjectRef of the pool's Embeddings
    result: ObjectRef | None = None  # ObjectRef of the writer's list[CropRecord]
    deadline: float | None = None  # set at the first refusal: tried again until then
    retry_at: float | None = None  # set while waiting out a version switch


@ray.remote
class CameraActor:
    def __init__(
        self,
        cfg: RefindConfig,
        camera: CameraConfig,
        detectors: list[ActorHandle],
        embedders: list[ActorHandle],
        writer: ActorHandle,
        shard: int,
    ) -> None:
        self._cfg = cfg
        self._cam = camera
        self._detectors = Pool(detectors)
        self._embedders = Pool(embedders)
        self._writer = writer
        self._shard = shard
        # once, before the loop: ids above every id the shard holds for this camera
        id_offset = ray.get(writer.max_track_id.remote(camera.name))
        self._model_id, dim = ray.get(embedders[0].info.remote())
        self._pipe = CameraPipeline(
            camera.name, cfg.tracker, cfg.crops,
            embedder=PoolEmbedder(self._embedders, self._model_id, dim), id_offset=id_offset,
            motion_gate=cfg.motion_gate,
        )
        # a new version's pool, handed over by set_embedders and taken by the loop thread
        self._next_pool: tuple[list[ActorHandle], str, int] | None = None
        self._out = CameraEvents(cfg, camera)
        self._status_at = time.monotonic()
        self._live = LiveCamera(camera, cfg.live, on_status=self._on_status)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stores: deque[_StoreJob] = deque()
        self._ends: deque[ObjectRef] = deque()  # ObjectRefs of end_tracks calls not yet seen done
        self._gate = EndGate()
        self._searchable: set[int] = set()  # tracks with a stored crop (for freshness)
        self._received: dict[int, int] = {}  # frame index -> wall-clock receive time (bounded)
        self._freshness = BucketCounts(FRESHNESS_BUCKETS_S)
        self._fresh: deque[float] = deque(maxlen=FRESH_KEPT)
        self._latency: deque[float] = deque(maxlen=1000)  # receive -> tracked, last frames
        self._processed = self._crops_stored = self._crops_failed = self._store_waits = 0
        self._detect_failed = 0  # frames lost because their detector died
        self._last_detection: ObjectRef | None = None  # reused while nothing moves
        self._node_id = node_id()
        self._store_error: str | None = None  # the latest store failure, until a success
        self._in_flight = 0
        self._error: str | None = None
        self._live.start()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera.name}", daemon=True)
        self._thread.start()

    # -- public, answered while the loop runs ------------------------------------------------

    def set_embedders(self, embedders: list[ActorHandle], model_id: str, dim: int) -> None:
        """Embed with this pool (model ``model_id``) from the next frame on."""
        with self._lock:
            self._next_pool = (list(embedders), model_id, dim)

    def embedder_ids(self) -> set[str]:
        """The ids of the embedder actors the loop calls now. A pool handed over is taken
        between frames, so once this names the new pool no call of the loop's is left on the
        old one (a store batch on it is sent again when its actor is gone)."""
        return actor_ids(self._embedders.actors)

    def status(self) -> CameraReport:
        s = self._live.status()
        published, sent, failed = self._out.delivered()
        with self._lock:
            lat = np.quantile(self._latency, [0.5, 0.95]) if self._latency else (None, None)
            return CameraReport(
                camera=self._cam.name, state=s.state.value,
                message=s.message, frames_in=s.frames_in, frames_dropped=s.frames_dropped,
                frames_processed=self._processed, reconnects=s.reconnects, rate_fps=s.rate_fps,
                tracks_started=self._pipe.tracks_started, crops_stored=self._crops_stored,
                events_published=published, freshness=self._freshness.copy(),
                freshness_s=list(self._fresh),
                stage_seconds=self._pipe.times.snapshot(),
                latency_p50_s=None if lat[0] is None else float(lat[0]),
                latency_p95_s=None if lat[1] is None else float(lat[1]),
                queue_depth=self._live.qsize(), in_flight=self._in_flight,
                model_id=self._model_id, error=self._error, events_sent=sent,
                events_failed=failed, stores_in_flight=len(self._stores),
                store_waits=self._store_waits, crops_failed=self._crops_failed,
                pid=os.getpid(), node_id=self._node_id, detect_failed=self._detect_failed,
                store_error=self._store_error, corrupt_packets=s.corrupt_packets,
                corrupt_frames=s.corrupt_frames, frames_detected=self._pipe.frames_detected,
            )

    def stop(self) -> CameraReport:
        """Stop reading; the loop stores what the open tracks hold and records their ends;
        events are flushed. The final report."""
        self._stop.set()
        self._live.stop(timeout=5)
        self._thread.join(timeout=STOP_WAIT_S)
        if self._thread.is_alive():  # its events are not flushed: the loop may still send
            log.error("%s: the camera loop did not finish within %.0f s", self._cam.name,
                      STOP_WAIT_S)
        else:
            self._out.close()
        return self.status()

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        pending: deque[tuple[Frame, ObjectRef | None]] = deque()
        try:
            while not self._stop.is_set() and not (self._live.done and not pending):
                self._take_pool()
                frame = self._live.get(timeout=0.1)
                if frame is not None:
                    pending.append((frame, self._detection(frame)))
                self._drain(pending, block=len(pending) >= self._cfg.live.max_in_flight)
                self._in_flight = len(pending)
                self._poll_stores()
                if time.monotonic() - self._status_at >= STATUS_EVERY_S:
                    self._on_status(self._live.status())  # counters to Redis and Kafka
            self._drain(pending, block=True, everything=True)
            self._in_flight = 0
        except Exception as err:  # reported in status; Ray restarts the actor if it dies
            log.exception("%s: camera loop failed", self._cam.name)
            self._error = f"{type(err).__name__}: {err}"
        try:  # after a failure too: what is open and in flight is stored if it can be
            self._finish()
        except Exception as err:
            log.exception("%s: storing the open tracks failed", self._cam.name)
            self._error = self._error or f"{type(err).__name__}: {err}"

    def _detection(self, frame: Frame) -> ObjectRef | None:
        """The detections of ``frame``: None for a frame between detected ones
        (``tracker.detect_every``), asked of the pool when something moved, else those of the
        last detected frame (the same reference, maybe still in flight)."""
        if self._pipe.coasts(frame):
            return None
        if self._pipe.needs_detection(frame):  # always, while no detection stands
            image_ref = ray.put(frame.image)  # put once; the detector reads it zero-copy
            self._last_detection = self._detectors.pick().detect.remote(image_ref)
        assert self._last_detection is not None
        return self._last_detection

    def _take_pool(self) -> None:
        """Switch to a pool handed over by ``set_embedders`` (on the loop thread)."""
        with self._lock:
            handed, self._next_pool = self._next_pool, None
        if handed is None:
            return
        embedders, model_id, dim = handed
        self._embedders = Pool(embedders)
        # the new pool from the next frame on (the old one may be retired); the tracker forgets
        # its learned appearance only when the model changed
        self._pipe.set_embedder(PoolEmbedder(self._embedders, model_id, dim))
        self._model_id = model_id
        log.info("%s: embedding with %s now", self._cam.name, model_id)

    def _drain(self, pending: deque[tuple[Frame, ObjectRef | None]], block: bool,
               everything: bool = False):
        """Process finished detections in frame order; wait for the oldest when ``block``."""
        while pending:
            frame, ref = pending[0]
            if ref is None:  # a frame between detected ones: the tracker predicts its boxes
                pending.popleft()
                self._process(frame, None)
                continue
            ready, _ = ray.wait([ref], timeout=None if (block or everything) else 0)
            if not ready:
                return
            pending.popleft()
            try:
                dets = ray.get(ref)
            except ray.exceptions.RayActorError as err:  # the detector died; Ray restarts it
                with self._lock:
                    self._detect_failed += 1
                if ref == self._last_detection:  # the next frame asks the pool again
                    self._last_detection = None
                    if self._pipe.gate is not None:  # and is the gate's new reference
                        self._pipe.gate.reset()
                log.warning("%s: frame %d lost: its detector did not answer (%s)",
                            self._cam.name, frame.index, type(err).__name__)
                continue
            self._process(frame, dets)
            block = False

    def _process(self, frame: Frame, dets: Detections | None) -> None:
        # a pool handed over is taken before every frame, not only between the loop's turns: one
        # turn may process many frames, and the old pool is retired soon after a switch
        self._take_pool()
        result = self._pipe.process(frame, dets)
        self._out.frame(frame, result, self._model_id)
        self._received[frame.index] = frame.received_ns
        if len(self._received) > RECEIVED_KEPT:
            for k in list(self._received)[: RECEIVED_KEPT // 2]:
                del self._received[k]
        self._after(result)
        with self._lock:
            self._processed += 1
            if frame.received_ns:
                self._latency.append((live_now_ns() - frame.received_ns) / 1e9)

    def _after(self, result: FrameResult) -> None:
        """Send the result's crops to be stored and its ended tracks through the gate."""
        if result.crops:
            self._submit(list(result.crops))
        for clip in result.clips:  # not waited on: a clip lost to a writer restart is no crop
            self._writer.put_clip.remote(clip)
        self._gate.ended(result.ended)
        self._send_ends()

    def _finish(self) -> None:
        """End of the camera: the open tracks end; wait until everything is stored."""
        try:
            self._after(self._pipe.finish())
        finally:
            while self._stores:
                self._wait_oldest()
            self._send_ends()
            while self._ends:
                self._check_end(self._ends.popleft(), timeout=60)

    # -- storing, in flight -----------------------------------------------------------------

    def _submit(self, crops: list[Crop]) -> None:
        """A new batch (waiting while max_stores_in_flight are in flight), then sent."""
        while len(self._stores) >= self._cfg.live.max_stores_in_flight:
            self._store_waits += 1
            t0 = time.perf_counter()
            self._wait_oldest()
            self._pipe.times.add("store_wait", time.perf_counter() - t0)
        job = _StoreJob(ray.put(crops), [c.track_id for c in crops])
        self._gate.sent(job.track_ids)
        self._stores.append(job)
        self._send(job)

    def _send(self, job: _StoreJob) -> None:
        """Hand a batch to the embedder pool (again only when the model changed since, or the
        last embedding failed) and the writer without waiting for either."""
        if job.embeddings is None or job.model_id != self._model_id:
            job.embeddings = self._embedders.pick().embed_crops.remote(job.crops_ref)
            job.model_id = self._model_id
        job.result = self._writer.add.remote(job.crops_ref, job.embeddings)
        job.retry_at = None

    def _poll_stores(self) -> None:
        """Take in every batch that is done (no waiting); resubmit refused ones when due."""
        now = time.monotonic()
        for job in list(self._stores):
            if job.retry_at is not None:
                if now >= job.retry_at:
                    self._take_pool()
                    self._send(job)
                continue
            ready, _ = ray.wait([job.result], timeout=0)
            if ready:
                self._settle(job)
        self._send_ends()

    def _wait_oldest(self) -> None:
        job = self._stores[0]
        if job.retry_at is not None:
            time.sleep(max(0.0, job.retry_at - time.monotonic()))
            self._take_pool()
            self._send(job)
        ray.wait([job.result], timeout=None)
        self._settle(job)

    def _settle(self, job: _StoreJob) -> None:
        """A finished batch: its records, a retry during a version switch, or a failure."""
        try:
            records: list[CropRecord] = ray.get(job.result)
        except (StaleModelError, ray.exceptions.RayActorError) as err:
            # a version switch under way, or a pool retired or restarting: tried again
            now = time.monotonic()
            job.deadline = job.deadline or now + STALE_WAIT_S
            if isinstance(err, ray.exceptions.RayActorError):
                job.embeddings = None
            if now < job.deadline:
                log.debug("%s: %s; trying again", self._cam.name, err)
                job.retry_at = now + RETRY_STALE_S
                return
            self._failed(job, err)
            return
        except Exception as err:  # a full disk, a writer that died: counted, logged, goes on
            self._failed(job, err)
            return
        self._stores.remove(job)
        self._gate.done(job.track_ids)
        now = live_now_ns()  # the clock the frames were timed by
        with self._lock:
            self._store_error = None
            self._crops_stored += len(records)
            for rec in records:
                if rec.track_id in self._searchable:
                    continue
                self._searchable.add(rec.track_id)
                if self._received.get(rec.frame_index):  # searchable now: capture -> here
                    seconds = (now - self._received[rec.frame_index]) / 1e9
                    self._freshness.observe(seconds)
                    self._fresh.append(seconds)

    def _failed(self, job: _StoreJob, err: BaseException) -> None:
        self._stores.remove(job)
        self._gate.done(job.track_ids)
        with self._lock:
            self._crops_failed += len(job.track_ids)
            cause = getattr(err, "cause", None) or err  # a RayTaskError carries the writer's
            self._store_error = f"{type(cause).__name__}: {cause}"
        log.error("%s: %d crops of tracks %s were not stored: %s", self._cam.name,
                  len(job.track_ids), sorted(set(job.track_ids))[:10], err)

    def _send_ends(self) -> None:
        """Ended tracks whose crops are all stored go to the writer (recorded there)."""
        spans: list[TrackSpan] = self._gate.release()
        if spans:
            self._ends.append(self._writer.end_tracks.remote(spans))
            self._searchable.difference_update(s.track_id for s in spans)
        while self._ends and ray.wait([self._ends[0]], timeout=0)[0]:
            self._check_end(self._ends.popleft(), timeout=0)

    def _check_end(self, ref: ObjectRef, timeout: float) -> None:
        try:
            ray.get(ref, timeout=timeout)
        except Exception as err:
            log.error("%s: recording ended tracks failed: %s", self._cam.name, err)

    def _on_status(self, status: CameraStatus) -> None:
        """Camera state and counters to Redis and the camera-status topic (on every change of
        state, and every STATUS_EVERY_S while the camera runs)."""
        self._status_at = time.monotonic()
        self._out.status(status)
