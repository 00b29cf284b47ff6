"""Live cameras: a reader thread per camera that reconnects forever and never blocks on a consumer.

A ``LiveCamera`` opens its source with ``VideoSource``, keeps frames at an adaptive rate
(``AdaptiveSampler``) and hands them over through a bounded ``DropOldestQueue``: when the
consumer falls behind, the oldest waiting frame is dropped and counted, so what it gets next is
as fresh as possible. A source that fails, stalls or ends is reopened after a capped,
jittered exponential ``Backoff``, until ``stop()``. Each camera has its own thread, so a dead
camera never holds up the others.

Files used as cameras (``CameraConfig.url`` a path):
  * ``realtime=True``: played at their own frame rate and treated exactly like a camera (frames
    dropped when the consumer is slow; ``ts_ns`` is the wall-clock time a frame was played).
  * ``realtime=False``: read as fast as the consumer takes frames; the reader waits for room in
    the queue instead of dropping, so every sampled frame is delivered; ``ts_ns`` is the file's
    presentation time.
  * ``loop=True`` starts again at the end (at once, not counted as a reconnect); without it the
    camera stops at the end. A file that cannot be read is retried like a camera when looping,
    and fails the camera otherwise.

Frame ``index`` and ``ts_ns`` keep increasing across reconnects and loops.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from typing import TypeVar

import av

from refind.streaming.clock import live_now_ns
from refind.streaming.config import CameraConfig, LiveConfig, redact_credentials
from refind.streaming.events import CameraState
from refind.streaming.flow import AdaptiveSampler, Backoff, DropOldestQueue
from refind.streaming.metrics import Metrics
from refind.streaming.records import Frame
from refind.streaming.sources import SourceError, VideoSource, is_live_url

log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_STAGE = "camera_queue"  # the `stage` label of a camera's own queue in metrics

# Opening a live stream includes FFmpeg's probe, which may read up to its analyzeduration (5 s)
# of video. An open timeout cut short inside the probe leaves the connection failed ("Immediate
# exit requested" on the first read), so opening gets this much on top of stall_timeout_s.
PROBE_ALLOWANCE_S = 5.0


@dataclass(frozen=True)
class CameraStatus:
    """A snapshot of one camera; ``message`` says why it is in its state (naming the URL)."""

    camera: str
    state: CameraState
    message: str
    frames_in: int
    frames_dropped: int
    reconnects: int
    last_frame_ts_ns: int | None
    rate_fps: float
    corrupt_packets: int = 0  # packets the decoder could not decode (skipped), since the start
    corrupt_frames: int = 0  # frames decoded with damage concealed, since the start


class _Pacer:
    """Holds each frame of a file until its presentation time, as a camera would send it."""

    _MAX_LAG_NS = 1_000_000_000  # further behind than this, play on from now (no burst)

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._anchor: tuple[int, int, int] | None = None  # (monotonic_ns, wall_ns, pts_ns)

    def wait(self, pts_ns: int) -> int | None:
        """Sleep until the frame at ``pts_ns`` is due; its wall-clock ts_ns, None if stopped."""
        now = time.monotonic_ns()
        if self._anchor is None:
            self._anchor = (now, live_now_ns(), pts_ns)
        mono0, wall0, pts0 = self._anchor
        due = mono0 + (pts_ns - pts0)
        if due > now and self._stop.wait((due - now) / 1e9):
            return None
        if now - due > self._MAX_LAG_NS:
            self._anchor = (now, live_now_ns(), pts_ns)
            return self._anchor[1]
        return wall0 + (pts_ns - pts0)


@dataclass
class _Counters:
    frames_in: int = 0
    reconnects: int = 0
    last_ts_ns: int | None = None
    next_index: int = 0
    gap_ns: int = 0  # last interval between frames, to continue a looped file's clock
    corrupt_packets: int = 0  # skipped by the decoder, in openings that ended
    corrupt_frames: int = 0  # decoded with damage concealed, in openings that ended


class LiveCamera:
    """Reads one camera on its own thread into a bounded drop-oldest queue; reconnects forever.

    ``on_status`` gets a snapshot at every change of state or message, on the reader thread
    (or on the thread calling ``stop()``); it must not block. ``metrics``, when given, counts
    frames in and dropped, reconnects, the state and the queue depth under this camera's name.

    Example:
        >>> cam = LiveCamera(CameraConfig(name="gate", url="rtsp://nvr/gate"), LiveConfig())
        >>> cam.start()                                   # doctest: +SKIP
        >>> frame = cam.get(timeout=1.0)                  # doctest: +SKIP
        >>> cam.stop()                                    # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: CameraConfig,
        live: LiveConfig,
        on_status: Callable[[CameraStatus], None] | None = None,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.live = live
        self._on_status = on_status
        self.metrics = metrics
        self._is_file = not is_live_url(cfg.url)
        self._drop_oldest = not self._is_file or cfg.realtime
        self._queue: DropOldestQueue[Frame] = DropOldestQueue(live.queue_frames)
        min_fps = live.min_fps if cfg.sample_fps is None else min(live.min_fps, cfg.sample_fps)
        self._sampler = AdaptiveSampler(cfg.sample_fps, min_fps)
        self._backoff = Backoff(live.reconnect, rng)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state = CameraState.CONNECTING
        self._message = redact_credentials(f"not started: {cfg.url}")
        self._n = _Counters()
        self._source: VideoSource | None = None  # the opening being read

    @property
    def name(self) -> str:
        return self.cfg.name

    def start(self) -> None:
        """Start the reader thread (once)."""
        if self._thread is not None:
            raise RuntimeError(f"camera {self.name!r} was already started")
        self._set_state(CameraState.CONNECTING, f"opening {self.cfg.url}")
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop reading and wake consumers; True if the reader thread ended within ``timeout``.

        A reader blocked in opening or reading a dead source ends within the stall timeout.
        """
        self._stop.set()
        self._queue.close()
        ended = True
        if self._thread is not None:
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
        if self.status().state is not CameraState.FAILED:
            self._set_state(CameraState.STOPPED, f"stopped: {self.cfg.url}")
        return ended

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest waiting frame; None after ``timeout`` or once stopped and drained."""
        frame = self._queue.get(timeout)
        self._gauge_queue()
        return frame

    @property
    def done(self) -> bool:
        """True once no frame will come any more: reader ended (stopped, file end, failed) and
        queue drained. ``get`` then returns None at once, so a consumer loop should check this."""
        return self._queue.closed and self._queue.qsize() == 0

    def qsize(self) -> int:
        """Frames waiting now (never more than LiveConfig.queue_frames)."""
        return self._queue.qsize()

    def status(self) -> CameraStatus:
        with self._lock:
            return CameraStatus(
                camera=self.name,
                state=self._state,
                message=self._message,
                frames_in=self._n.frames_in,
                frames_dropped=self._queue.dropped,
                reconnects=self._n.reconnects,
                last_frame_ts_ns=self._n.last_ts_ns,
                rate_fps=self._sampler.rate_fps,
                corrupt_packets=self._n.corrupt_packets + (
                    self._source.stats.corrupt_packets if self._source is not None else 0),
                corrupt_frames=self._n.corrupt_frames + (
                    self._source.stats.corrupt_frames if self._source is not None else 0),
            )

    # The reader thread.

    def _run(self) -> None:
        try:
            self._read_forever()
        except Exception as err:  # a bug, not a camera problem: fail this camera only
            log.exception("camera %s: reader crashed", self.name)
            self._set_state(CameraState.FAILED, f"reader crashed on {self.cfg.url}: {err!r}")
        finally:
            self._queue.close()

    def _read_forever(self) -> None:
        while not self._stop.is_set():
            ended, message = self._read_once()
            if self._stop.is_set():
                return
            if self._is_file and ended and not self.cfg.loop:
                self._set_state(CameraState.STOPPED, f"end of file: {self.cfg.url}")
                return
            if self._is_file and ended:
                continue  # loop: play again at once
            if self._is_file and not self.cfg.loop:
                self._set_state(CameraState.FAILED, message)
                return
            self._wait_to_reconnect(message)

    def _wait_to_reconnect(self, message: str) -> None:
        delay = self._backoff.next_delay()
        with self._lock:
            self._n.reconnects += 1
        if self.metrics is not None:
            self.metrics.reconnects.labels(camera=self.name).inc()
        log.warning("camera %s: %s; reconnecting in %.2f s", self.name, message, delay)
        self._set_state(CameraState.RECONNECTING, f"{message}; retrying in {delay:.2f} s")
        self._stop.wait(delay)

    def _read_once(self) -> tuple[bool, str]:
        """Read one opening of the source to its end: (ended normally, what happened)."""
        stall_s = self.live.reconnect.stall_timeout_s
        try:
            source = VideoSource(
                self.cfg.url,
                self.name,
                open_timeout_s=stall_s + PROBE_ALLOWANCE_S,
                read_timeout_s=stall_s,
                rtsp_transport=self.cfg.rtsp_transport,
                region=self.cfg.region,
            )
            with self._lock:
                self._source = source
            try:
                with closing(iter(source)) as frames:
                    self._deliver_all(frames)
            finally:
                with self._lock:
                    self._n.corrupt_packets += source.stats.corrupt_packets
                    self._n.corrupt_frames += source.stats.corrupt_frames
                    self._source = None
        except (SourceError, av.error.FFmpegError, OSError) as err:
            message = str(err)
            return False, message if self.cfg.url in message else f"{self.cfg.url!r}: {message}"
        if not self._is_file:
            return False, f"{self.cfg.url!r}: stream ended"
        return True, f"{self.cfg.url!r}: end of file"

    def _deliver_all(self, frames: Iterator[Frame]) -> None:
        pacer = _Pacer(self._stop) if self._is_file and self.cfg.realtime else None
        with self._lock:
            index_base = self._n.next_index
            ts_base = self._n.last_ts_ns + self._n.gap_ns if self._n.last_ts_ns is not None else 0
        for n, frame in enumerate(frames):
            if n == 0:
                self._backoff.reset()
                self._set_state(CameraState.LIVE, f"receiving {self.cfg.url}")
            if pacer is not None:
                ts = pacer.wait(frame.ts_ns)
            else:
                ts = frame.ts_ns if not self._is_file else ts_base + frame.ts_ns
            if ts is None or self._stop.is_set():
                return
            out = replace(
                frame,
                index=index_base + frame.index,
                ts_ns=self._count_in(ts),
                received_ns=ts if pacer is not None else frame.received_ns,
            )
            if self._sampler.keep(out.ts_ns) and not self._enqueue(out):
                return

    def _count_in(self, ts_ns: int) -> int:
        """Count one decoded frame; its ts_ns, made to increase strictly."""
        with self._lock:
            n = self._n
            if n.last_ts_ns is not None:
                ts_ns = max(ts_ns, n.last_ts_ns + 1)
                n.gap_ns = ts_ns - n.last_ts_ns
            n.last_ts_ns = ts_ns
            n.frames_in += 1
            n.next_index += 1
        if self.metrics is not None:
            self.metrics.frames_in.labels(camera=self.name).inc()
        return ts_ns

    def _enqueue(self, frame: Frame) -> bool:
        """Hand a kept frame over; False when stopped while waiting for room."""
        if not self._drop_oldest:
            while not self._queue.put_wait(frame, timeout=0.2):
                if self._stop.is_set():
                    return False
        elif self._queue.put(frame) is not None:
            if self.live.adaptive_rate:
                self._sampler.on_drop(frame.ts_ns)
            if self.metrics is not None:
                self.metrics.frames_dropped.labels(camera=self.name, stage=QUEUE_STAGE).inc()
        elif self.live.adaptive_rate:
            self._sampler.on_ok(frame.ts_ns)
        self._gauge_queue()
        return True

    def _gauge_queue(self) -> None:
        if self.metrics is not None:
            depth = self._queue.qsize()
            self.metrics.queue_depth.labels(camera=self.name, stage=QUEUE_STAGE).set(depth)

    def _set_state(self, state: CameraState, message: str) -> None:
        message = redact_credentials(message)  # it goes to logs, events, Redis and pages
        with self._lock:
            if self._stop.is_set() and state not in (CameraState.STOPPED, CameraState.FAILED):
                return  # a late report from a reader that is being stopped
            changed = (state, message) != (self._state, self._message)
            self._state, self._message = state, message
        if not changed:
            return
        log.info("camera %s: %s (%s)", self.name, state.value, message)
        if self.metrics is not None:
            self.metrics.set_camera_state(self.name, state.value)
        if self._on_status is not None:
            try:
                self._on_status(self.status())
            except Exception:
                log.exception("camera %s: on_status callback failed", self.name)
