"""The clock that times live frames: wall-clock nanoseconds that never go back and never stall.

A live frame is timed when it is received (``streaming/sources.py``). Reading the host's clock
for that goes wrong when the clock is stepped: set back (an NTP correction, someone fixing the
date), every later frame would be clamped to just after the last one, so the sampler would drop
them all until the clock caught up, an hour later for an hour's step; set forward, nothing
breaks but a gap. ``SteadyWallClock`` counts from one reading of the wall clock with the
monotonic clock, so a step back is ignored (times run on, ahead of the host's clock by the step,
with a warning) and a step forward is followed (times jump with it). The clock is one per
process: a camera actor started after a step back counts from the host's clock as it is then,
so its frames may be timed before ones stored earlier (ids and tracks are unaffected).

Example:
    >>> clock = SteadyWallClock()
    >>> a = clock.now_ns(); b = clock.now_ns()
    >>> b >= a
    True
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

STEP_NS = 2_000_000_000  # a difference larger than this between the two clocks is a step


class SteadyWallClock:
    """Wall-clock time advanced by the monotonic clock; follows the host's clock forward only
    (module docstring). ``wall`` and ``steady`` are the two clocks read (``time.time_ns`` and
    ``time.monotonic_ns``)."""

    def __init__(self, wall: Callable[[], int] = time.time_ns,
                 steady: Callable[[], int] = time.monotonic_ns) -> None:
        self._wall, self._steady = wall, steady
        self._lock = threading.Lock()
        self._anchor = (wall(), steady())
        self.steps_back = 0  # host clock steps back that were ignored
        self._behind_ns = 0

    def now_ns(self) -> int:
        with self._lock:
            wall0, steady0 = self._anchor
            now = wall0 + self._steady() - steady0
            wall = self._wall()
            if wall > now + STEP_NS:  # stepped forward (or a step back undone): follow it
                self._anchor = (wall, self._steady())
                self._behind_ns = 0
                return wall
            if wall < now - STEP_NS and now - wall > self._behind_ns + STEP_NS:
                self.steps_back += 1
                log.warning("the host's clock went back by %.1f s; live frames keep being "
                            "timed by the steady clock, %.1f s ahead of it", (now - wall) / 1e9,
                            (now - wall) / 1e9)
                self._behind_ns = now - wall
            return now


LIVE_CLOCK = SteadyWallClock()  # one per process: every live source and camera actor in it


def live_now_ns() -> int:
    """Now on this process's live clock (a function, so that code shipped to Ray actors by
    value refers to the clock of the process it runs in)."""
    return LIVE_CLOCK.now_ns()
