"""One camera's analysis, written once: frames -> detections -> tracks -> crops to embed.

``CameraPipeline`` is the stage loop of refind. It is a plain class (no Ray, no storage), and
every path runs it: ``refind ingest`` (``indexer/ingest.py``), the live camera actor
(``actors/camera.py``, which only moves data between Ray and this class), ``refind eval mot``
and the dataset builders. Per analysed frame, in this order:

1. detections below ``tracker.low_threshold`` are dropped (the tracker never uses them);
2. the ByteTracker associates them, asking the ReID embedder for the few boxes it needs
   (``refind.streaming.appearance.BoxEmbedder``, when ``tracker.appearance_weight`` > 0);
3. track ids get the camera's ``id_offset`` (the largest id already stored for the camera), so
   a camera ingested twice, or a camera actor restarted, never reuses an id;
4. per-track analysis stages (``TrackStage``) see the frame and its tracks;
5. the ``CropSelector`` weighs every track box as a candidate crop; a track's best crop so far
   is handed out ``crops.early_after_s`` after its first candidate (so a live person is
   searchable before the track ends), and the rest of its crops when it ends; each is encoded
   as the JPEG it will be stored as, and carries that JPEG's pixels (``crops.as_stored``), so
   ingest, a re-index and a rebuild all embed the same pixels; each crop carries a downscaled
   view of its frame with its box drawn (``crops.context_px``);
6. the ``ClipRecorder`` samples the frame for its tracks; an ended track's clip (an MP4 of its
   frames with its box drawn, ``crops.clip_px``) comes with its end.

Each step returns a ``FrameResult``: the tracks, the tracks started and ended (``TrackSpan``:
when and where the tracker saw them), the crops ready to embed, what the stages said of the
ended tracks, and their clips. Embedding and storing are the caller's: offline they are calls,
live they are actor calls in flight. ``run`` is the offline driver: it decodes in a prefetch
thread, detects in batches of ``detector_batch`` frames, and yields one result per frame and a
last one from ``finish`` (every track still open ends there). Before detection, two choices,
which ``run`` and the live camera actor both ask for: with ``tracker.detect_every`` n > 1, the
frames between every n-th one ``coasts``: they are not detected, the tracker predicts their
boxes, and no crop is taken from them; and the motion gate (``needs_detection``,
``refind.streaming.activity``) lets a frame where nothing moved since the last detected one
reuse that frame's detections.

Example:
    >>> pipe = CameraPipeline("gate", cfg.tracker, cfg.crops, detector, embedder)  # doctest: +SKIP
    >>> for result in pipe.run(VideoSource("clip.mp4", camera="gate")):            # doctest: +SKIP
    ...     store(result.crops); end(result.ended)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from refind.streaming.activity import MotionGate
from refind.streaming.appearance import BoxEmbedder, EmbedFn
from refind.streaming.clips import ClipRecorder, TrackClip
from refind.streaming.config import CropConfig, MotionGateConfig, TrackerConfig
from refind.streaming.crops import CropSelector, as_stored
from refind.streaming.metrics import Metrics
from refind.streaming.motion import TrackPath
from refind.streaming.records import Crop, Detections, Frame, Tracks, TrackSpan
from refind.streaming.tracker import ByteTracker

log = logging.getLogger(__name__)

DetectFn = Callable[[Sequence[np.ndarray]], list[Detections]]
"""Any detector (``refind.models.base.Detector``): a batch of BGR frames in, one Detections each out."""

_END = object()


class TrackStage(Protocol):
    """A per-track analysis that runs after tracking on every frame (pose, parts, motion, ...).

    ``update`` sees each frame with its confirmed tracks (ids already offset); ``end`` is called
    once when a track ends and returns what the stage concluded about it (name -> value), which
    the pipeline hands on with the ended track (``FrameResult.analysis``).
    """

    name: str

    def update(self, frame: Frame, tracks: Tracks) -> None: ...

    def end(self, track_id: int) -> Mapping[str, float]: ...


class StageTimes:
    """Seconds spent per stage (thread-safe: a camera's loop adds while its status reads); also
    counted in ``metrics`` (``refind_stage_seconds``) when given."""

    def __init__(self, camera: str = "", metrics: Metrics | None = None) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._camera = camera
        self._metrics = metrics

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds
        if self._metrics is not None:
            self._metrics.add_stage(self._camera, stage, seconds)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)


@dataclass(frozen=True)
class FrameResult:
    """What one step of the pipeline produced.

    frame: the analysed frame (None for the end-of-stream step); tracks: its confirmed tracks,
    ids offset; started / ended: tracks first reported in this frame / ended by it; crops: chosen
    crops ready to embed (best first per track); analysis: per ended track id, what each stage
    concluded (``"<stage>.<name>" -> value``); clips: the ended tracks' clips
    (``refind.streaming.clips``).
    """

    frame: Frame | None
    detections: Detections
    tracks: Tracks | None
    started: tuple[TrackSpan, ...] = ()
    ended: tuple[TrackSpan, ...] = ()
    crops: tuple[Crop, ...] = ()
    analysis: Mapping[int, Mapping[str, float]] = field(default_factory=dict)
    clips: tuple[TrackClip, ...] = ()


class _OpenTrack:
    """The span of a track still being reported (mutable, inside the pipeline only)."""

    __slots__ = ("first_ts_ns", "frames", "last_ts_ns", "last_xyxy", "path")

    def __init__(self, ts_ns: int, frame_wh: tuple[int, int]) -> None:
        self.first_ts_ns = self.last_ts_ns = ts_ns
        self.last_xyxy: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
        self.frames = 0
        # its boxes over time, for the motion of the ended track and the edges it crossed
        self.path = TrackPath(frame_wh=frame_wh)


class CameraPipeline:
    """Detect, track and choose crops for one camera (see the module docstring).

    ``detector`` is needed by ``run`` only (live callers detect elsewhere); ``embedder`` gives
    the tracker its appearance (None: motion only); ``select_crops=False`` skips crop selection
    (tracking evaluation); ``early_crops=False`` hands a track's crops out only when it ends;
    ``metrics`` counts the seconds of each stage (``refind_stage_seconds``); ``motion_gate``
    (when given and enabled) skips the detector on frames where nothing moved
    (``needs_detection``; ``run`` then reuses the last detections, live callers do the same).

    Example:
        >>> from refind.streaming.config import CropConfig, TrackerConfig
        >>> pipe = CameraPipeline("gate", TrackerConfig(appearance_weight=0), CropConfig())
        >>> image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        >>> box = Detections(np.array([[100, 50, 140, 170]]), np.array([0.9]), np.array([0]))
        >>> [len(pipe.process(Frame("gate", i, i * 10**8, image), box).tracks) for i in range(3)]
        [0, 1, 1]
        >>> [(s.track_id, s.frames) for s in pipe.finish().ended]
        [(1, 2)]
    """

    def __init__(
        self,
        camera: str,
        tracker: TrackerConfig,
        crops: CropConfig,
        detector: DetectFn | None = None,
        embedder: EmbedFn | None = None,
        *,
        id_offset: int = 0,
        detector_batch: int = 4,
        select_crops: bool = True,
        early_crops: bool = True,
        stages: Sequence[TrackStage] = (),
        metrics: Metrics | None = None,
        motion_gate: MotionGateConfig | None = None,
    ) -> None:
        if id_offset < 0:
            raise ValueError(f"id_offset must be >= 0, got {id_offset}")
        self.camera = camera
        self.id_offset = id_offset
        self.detector = detector
        self.detector_batch = detector_batch
        self.times = StageTimes(camera, metrics)
        self._tracker_cfg = tracker
        self._crop_cfg = crops
        self._tracker = ByteTracker(tracker, camera)
        self._selector = CropSelector(crops) if select_crops else None
        self._clips = (ClipRecorder(crops.clip_px, crops.clip_max_frames)
                       if select_crops and crops.clip_px else None)
        self._early = early_crops
        self._stages = tuple(stages)
        self._open: dict[int, _OpenTrack] = {}
        self._boxes: BoxEmbedder | None = None
        self.gate = MotionGate(motion_gate) if motion_gate and motion_gate.enabled else None
        self.frames = 0
        self.frames_coasted = 0  # frames between detections (tracker.detect_every)
        self._planned = 0  # frames asked of ``coasts``
        self.detections = 0
        self.tracks_started = 0
        self.set_embedder(embedder)

    # -- configuration while running ----------------------------------------------------------

    def set_embedder(self, embedder: EmbedFn | None) -> None:
        """Ask ``embedder`` for appearance from the next frame on; the tracker's learned
        appearance is forgotten when it was another model's (by ``model_id``: vectors of two
        models do not compare), and kept when only the embedder's instances changed."""
        old = getattr(self._boxes.embedder, "model_id", None) if self._boxes else None
        use = embedder is not None and self._tracker_cfg.appearance_weight > 0
        self._boxes = BoxEmbedder(embedder) if use else None  # type: ignore[arg-type]
        new = getattr(embedder, "model_id", None) if use else None
        if old is not None and new != old:
            self._tracker.forget_appearance()

    @property
    def appearance(self) -> BoxEmbedder | None:
        """The tracker's appearance embedder and its counters (crops, calls, seconds)."""
        return self._boxes

    @property
    def appearance_asked(self) -> dict[str, int]:
        """Detections the tracker had embedded, by why: ``ambiguous`` (two or more candidates
        in the motion gate), ``refresh`` (a sure match whose track's appearance was stale),
        ``reid`` (a detection no track claims, within reach of a track motion lost)."""
        return dict(self._tracker.asked)

    @property
    def open_tracks(self) -> int:
        return len(self._open)

    # -- the stage loop -------------------------------------------------------------------------

    def coasts(self, frame: Frame) -> bool:
        """Whether ``frame`` falls between detected frames (``tracker.detect_every``): it is
        then processed without detections (``process(frame, None)``) and the tracker predicts
        its boxes. Ask once per analysed frame, in order, before ``needs_detection``."""
        self._planned += 1
        return (self._planned - 1) % self._tracker_cfg.detect_every != 0

    def needs_detection(self, frame: Frame) -> bool:
        """Whether ``frame`` must be detected: always without a motion gate; with one, only when
        something moved since the last detected frame (else its detections are reused)."""
        if self.gate is None:
            return True
        t0 = time.perf_counter()
        needed = self.gate.needs_detection(frame.image, frame.ts_ns)
        self.times.add("motion", time.perf_counter() - t0)
        return needed

    @property
    def frames_detected(self) -> int:
        """Frames the detector ran on (every frame not coasted, without a motion gate)."""
        return self.gate.detected if self.gate is not None else self.frames - self.frames_coasted

    def process(self, frame: Frame, detections: Detections | None) -> FrameResult:
        """Track one analysed frame (frames in time order) and choose its crops; ``None``: a
        frame that ``coasts`` (the tracker predicts its boxes; no crop is taken from them)."""
        if frame.camera != self.camera:
            raise ValueError(f"pipeline of camera {self.camera!r} given a frame of {frame.camera!r}")
        t0 = time.perf_counter()
        coasted = detections is None
        dets = (Detections.empty() if detections is None else
                detections.select(detections.confidence >= self._tracker_cfg.low_threshold))
        boxes = self._boxes
        before = boxes.seconds if boxes is not None else 0.0
        if coasted:
            raw = self._tracker.coast(frame.index, frame.ts_ns)
            self.frames_coasted += 1
        else:
            appearance = boxes.callback(frame.image, dets) if boxes is not None else None
            raw = self._tracker.update(frame.index, frame.ts_ns, dets, appearance)
        tracks = replace(raw, track_id=raw.track_id + self.id_offset) if self.id_offset else raw
        t1 = time.perf_counter()
        spent = boxes.seconds - before if boxes is not None else 0.0
        self.times.add("appearance", spent)
        self.times.add("track", t1 - t0 - spent)
        started = self._note(frame, tracks)
        for stage in self._stages:
            s0 = time.perf_counter()
            stage.update(frame, tracks)
            self.times.add(f"stage.{stage.name}", time.perf_counter() - s0)
        ended = [t + self.id_offset for t in self._tracker.pop_ended()]
        t2 = time.perf_counter()
        crops: list[Crop] = []
        if self._selector is not None:
            if not coasted:  # crops only from boxes a detector found
                self._selector.update(frame, tracks)
            if self._early:
                crops += self._selector.early(frame.ts_ns, self._crop_cfg.early_after_s)
            crops += self._selector.finish(ended)
            crops = [as_stored(c, self._crop_cfg.jpeg_quality) for c in crops]
        t3 = time.perf_counter()
        self.times.add("crops", t3 - t2)
        if self._clips is not None:
            self._clips.update(frame, tracks)
            self.times.add("clips", time.perf_counter() - t3)
        self.frames += 1
        self.detections += len(dets)
        spans, analysis, clips = self._end(ended)
        return FrameResult(frame, dets, tracks, started, spans, tuple(crops), analysis, clips)

    def finish(self) -> FrameResult:
        """End of stream: every open track ends; the crops they still hold."""
        ended = [t + self.id_offset for t in self._tracker.flush()]
        crops = self._selector.finish(ended) if self._selector is not None else []
        crops = [as_stored(c, self._crop_cfg.jpeg_quality) for c in crops]
        spans, analysis, clips = self._end(ended)
        return FrameResult(None, Detections.empty(), None, (), spans, tuple(crops), analysis,
                           clips)

    def run(self, frames: Iterable[Frame], prefetch_batches: int = 4) -> Iterator[FrameResult]:
        """Offline: decode ahead in a thread, detect in batches (the frames that do not coast
        and that the motion gate lets through; the gate's others reuse the last detections),
        one result per frame, then the end-of-stream result (``finish``)."""
        if self.detector is None:
            raise ValueError("CameraPipeline.run needs a detector")
        last = Detections.empty()
        for batch in prefetch(frames, self.detector_batch, prefetch_batches):
            coast = [self.coasts(f) for f in batch]
            fresh = [not c and self.needs_detection(f) for f, c in zip(batch, coast, strict=True)]
            found: Iterator[Detections] = iter(())
            if any(fresh):
                t0 = time.perf_counter()
                images = [f.image for f, new in zip(batch, fresh, strict=True) if new]
                found = iter(self.detector(images))
                self.times.add("detect", time.perf_counter() - t0)
            for frame, new, c in zip(batch, fresh, coast, strict=True):
                last = next(found) if new else last
                yield self.process(frame, None if c else last)
        yield self.finish()

    # -- track spans ----------------------------------------------------------------------------

    def _note(self, frame: Frame, tracks: Tracks) -> tuple[TrackSpan, ...]:
        """Update the open tracks' spans; the spans of tracks first reported in this frame."""
        started = []
        for tid, box in zip(tracks.track_id.tolist(), tracks.xyxy.tolist(), strict=True):
            track = self._open.get(tid)
            if track is None:
                h, w = frame.image.shape[:2]
                track = self._open[tid] = _OpenTrack(frame.ts_ns, (w, h))
                self.tracks_started += 1
            track.last_ts_ns = frame.ts_ns
            track.last_xyxy = tuple(round(v, 1) for v in box)  # type: ignore[assignment]
            track.path.add(frame.ts_ns, track.last_xyxy)
            track.frames += 1
            if track.frames == 1:
                started.append(self._span(tid, track))
        return tuple(started)

    def _end(
        self, track_ids: list[int]
    ) -> tuple[tuple[TrackSpan, ...], dict[int, Mapping[str, float]], tuple[TrackClip, ...]]:
        spans: list[TrackSpan] = []
        analysis: dict[int, Mapping[str, float]] = {}
        clips: list[TrackClip] = []
        t0 = time.perf_counter()
        for tid in track_ids:
            clip = self._clips.end(tid) if self._clips is not None else None
            if clip is not None:
                clips.append(clip)
        if self._clips is not None and track_ids:
            self.times.add("clips", time.perf_counter() - t0)
        for tid in track_ids:
            track = self._open.pop(tid, None)
            if track is None:  # confirmed but never reported in a frame: nothing was seen
                continue
            spans.append(replace(self._span(tid, track), motion=track.path.motion()))
            notes = {f"{s.name}.{k}": v for s in self._stages for k, v in s.end(tid).items()}
            if notes:
                analysis[tid] = notes
        return tuple(spans), analysis, tuple(clips)

    def _span(self, tid: int, track: _OpenTrack) -> TrackSpan:
        return TrackSpan(self.camera, tid, track.first_ts_ns, track.last_ts_ns, track.last_xyxy,
                         track.frames)


def prefetch(frames: Iterable[Frame], batch_size: int, depth: int = 4) -> Iterator[list[Frame]]:
    """Batches of frames decoded in a background thread; at most ``depth`` batches wait.

    The detector releases the GIL, so decoding the next batch overlaps detecting this one. A
    decoding error is raised in the consumer; closing the generator stops the thread.
    """
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


class EndGate:
    """Holds ended tracks back until every crop of theirs that was sent to be stored is stored,
    so a track's end is recorded with all its crops (offline and live alike).

    Example:
        >>> gate = EndGate()
        >>> gate.sent([7, 7]); gate.ended([TrackSpan("gate", 7, 0, 10)]); gate.release()
        []
        >>> gate.done([7, 7]); [s.track_id for s in gate.release()]
        [7]
    """

    def __init__(self) -> None:
        self._in_flight: dict[int, int] = {}
        self._waiting: list[TrackSpan] = []

    def sent(self, track_ids: Iterable[int]) -> None:
        """Crops of these tracks (one id per crop) went to be stored."""
        for tid in track_ids:
            self._in_flight[tid] = self._in_flight.get(tid, 0) + 1

    def done(self, track_ids: Iterable[int]) -> None:
        """Crops of these tracks were stored (or given up on)."""
        for tid in track_ids:
            left = self._in_flight.get(tid, 0) - 1
            if left > 0:
                self._in_flight[tid] = left
            else:
                self._in_flight.pop(tid, None)

    def ended(self, spans: Iterable[TrackSpan]) -> None:
        self._waiting.extend(spans)

    def release(self) -> list[TrackSpan]:
        """The ended tracks with no crop in flight any more, in the order they ended."""
        ready = [s for s in self._waiting if s.track_id not in self._in_flight]
        self._waiting = [s for s in self._waiting if s.track_id in self._in_flight]
        return ready

    @property
    def waiting(self) -> int:
        return len(self._waiting)
