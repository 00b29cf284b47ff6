"""Flow control for live video: a drop-oldest queue, reconnect backoff, an adaptive sampler.

Live video prefers fresh frames: ``DropOldestQueue`` never blocks a producer and counts every
drop; ``AdaptiveSampler`` lowers a camera's rate while frames are dropped and recovers it
slowly; ``Backoff`` spaces reconnect attempts (capped, jittered, exponential).
"""

from __future__ import annotations

import random
import threading
from collections import deque
from typing import Generic, TypeVar

from refind.streaming.config import ReconnectConfig

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """Thread-safe bounded FIFO whose ``put`` never blocks: when full, the oldest item goes.

    Example:
        >>> q = DropOldestQueue[int](2)
        >>> for i in range(3):
        ...     _ = q.put(i)
        >>> q.get(0), q.dropped
        (1, 1)
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"DropOldestQueue maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._dropped = 0
        self._closed = False

    def put(self, item: T) -> T | None:
        """Add ``item``; return the oldest item dropped to make room, else None.

        A closed queue takes no more items: ``item`` is ignored.
        """
        with self._cond:
            if self._closed:
                return None
            dropped = None
            if len(self._items) >= self.maxsize:
                dropped = self._items.popleft()
                self._dropped += 1
            self._items.append(item)
            self._cond.notify()
            return dropped

    def put_wait(self, item: T, timeout: float | None = None) -> bool:
        """Add ``item`` once there is room; False if ``timeout`` passed or the queue closed."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._closed or len(self._items) < self.maxsize, timeout
            ):
                return False
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item; None after ``timeout`` seconds or once closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed, timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()  # wakes a put_wait
            return item

    def qsize(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def dropped(self) -> int:
        """Items dropped so far to make room for newer ones."""
        with self._cond:
            return self._dropped

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def close(self) -> None:
        """Take no more items and wake every waiting getter; items already in stay gettable."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Backoff:
    """Capped exponential retry delays with jitter.

    Delay n (from 0) is ``base * (1 + jitter * u)`` with ``u`` uniform in [-1, 1] and
    ``base = min(initial_backoff_s * 2**n, max_backoff_s / (1 + jitter))``: no delay exceeds
    ``max_backoff_s``, and delays at the cap are still spread, so cameras that failed together
    (one NVR down) do not retry in lockstep. ``reset()`` after a success starts again.

    Example:
        >>> b = Backoff(ReconnectConfig(initial_backoff_s=1, max_backoff_s=3, jitter=0))
        >>> [b.next_delay() for _ in range(4)]
        [1.0, 2.0, 3.0, 3.0]
    """

    _MAX_DOUBLINGS = 60  # 2**60 times any initial delay is past any cap

    def __init__(self, cfg: ReconnectConfig, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; each call counts one attempt."""
        cfg = self.cfg
        doublings = min(self.attempts, self._MAX_DOUBLINGS)
        base = min(cfg.initial_backoff_s * 2.0**doublings, cfg.max_backoff_s / (1 + cfg.jitter))
        self.attempts += 1
        return base * (1.0 + cfg.jitter * self._rng.uniform(-1.0, 1.0))

    def reset(self) -> None:
        self.attempts = 0


class AdaptiveSampler:
    """Chooses which frames (by ``ts_ns``) to analyse, at a rate that backs off under load.

    Rule (AIMD, as in TCP congestion control), all in stream time (frame timestamps):
      * keep a frame when it is due: at least ``1/rate`` after the previous kept frame (less
        half an input frame interval, so timestamp jitter does not skip frames);
      * ``on_drop(ts)`` multiplies the rate by ``decrease`` (0.5), never below ``min_fps``, at
        most once per ``hold_s`` so that one slowdown's burst of drops counts once;
      * ``on_ok(ts)`` adds ``recover_fps_per_s`` for every second since the last change, up to
        the target: after a slowdown the rate climbs back linearly (default: the whole range
        in 10 s).
    ``target_fps=None`` keeps every frame; it then backs off from the measured input rate.

    Example:
        >>> s = AdaptiveSampler(target_fps=5.0, min_fps=1.0)
        >>> [t // 10**8 for t in range(0, 10**9, 10**8) if s.keep(t)]  # 10 fps in, 5 kept
        [0, 2, 4, 6, 8]
    """

    def __init__(
        self,
        target_fps: float | None,
        min_fps: float,
        decrease: float = 0.5,
        recover_fps_per_s: float | None = None,
        hold_s: float = 1.0,
    ) -> None:
        if target_fps is not None and target_fps <= 0:
            raise ValueError(f"target_fps must be > 0 or None, got {target_fps}")
        if min_fps <= 0 or (target_fps is not None and min_fps > target_fps):
            raise ValueError(f"min_fps must be in (0, target_fps={target_fps}], got {min_fps}")
        if not 0.0 < decrease < 1.0:
            raise ValueError(f"decrease must be in (0, 1), got {decrease}")
        self.target_fps = target_fps
        self.min_fps = min_fps
        self.decrease = decrease
        self.recover_fps_per_s = recover_fps_per_s
        self.hold_ns = int(hold_s * 1e9)
        self._rate = target_fps if target_fps is not None else float("inf")
        self._next_ns: int | None = None
        self._last_ts: int | None = None
        self._gap_ns = 0.0  # moving average of the input frame interval
        self._changed_ns: int | None = None  # last change of the rate
        self._decreased_ns: int | None = None  # last decrease (for hold_s)

    @property
    def rate_fps(self) -> float:
        """Frames per second kept now (the input rate when every frame is kept; 0 if unknown)."""
        input_fps = 1e9 / self._gap_ns if self._gap_ns else float("inf")
        rate = min(self._rate, input_fps)
        return rate if rate != float("inf") else 0.0

    def keep(self, ts_ns: int) -> bool:
        """Whether the frame at ``ts_ns`` is to be analysed at the current rate."""
        if self._last_ts is not None and ts_ns > self._last_ts:
            gap = ts_ns - self._last_ts
            self._gap_ns = gap if not self._gap_ns else 0.9 * self._gap_ns + 0.1 * gap
        self._last_ts = ts_ns
        if self._rate == float("inf"):
            return True
        step = int(1e9 / self._rate)
        if self._next_ns is not None and ts_ns < self._next_ns - self._gap_ns / 2:
            return False
        late = self._next_ns is None or ts_ns >= self._next_ns + step
        self._next_ns = ts_ns + step if late else self._next_ns + step
        return True

    def on_drop(self, ts_ns: int) -> None:
        """A kept frame was dropped downstream: lower the rate (at most once per hold_s)."""
        if self._decreased_ns is not None and ts_ns - self._decreased_ns < self.hold_ns:
            return
        base = min(self._rate, self._ceiling())
        self._rate = max(self.min_fps, base * self.decrease)
        self._decreased_ns = self._changed_ns = ts_ns

    def on_ok(self, ts_ns: int) -> None:
        """A kept frame was taken without a drop: raise the rate toward the target."""
        ceiling = self._ceiling()
        if self._changed_ns is None or self._rate >= ceiling:
            return
        recover = self.recover_fps_per_s or (ceiling - self.min_fps) / 10.0
        self._rate += recover * max(0, ts_ns - self._changed_ns) / 1e9
        self._changed_ns = ts_ns
        if self._rate >= ceiling:
            self._rate = self.target_fps if self.target_fps is not None else float("inf")

    def _ceiling(self) -> float:
        if self.target_fps is not None:
            return self.target_fps
        return 1e9 / self._gap_ns if self._gap_ns else float("inf")
