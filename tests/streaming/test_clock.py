"""The live frames' clock: a step back of the host's clock neither stalls nor reorders frame
times; a step forward is followed."""

from __future__ import annotations

import pytest

from refind.streaming.clock import STEP_NS, SteadyWallClock

pytestmark = pytest.mark.unit

S = 1_000_000_000


class Clocks:
    """A host wall clock that can be stepped, and a monotonic clock that only runs."""

    def __init__(self) -> None:
        self.wall, self.steady = 1_800_000_000 * S, 5 * S

    def run(self, ns: int) -> None:
        self.wall += ns
        self.steady += ns


def test_steps_back_are_ignored_and_forward_ones_followed() -> None:
    c = Clocks()
    clock = SteadyWallClock(lambda: c.wall, lambda: c.steady)
    t0 = clock.now_ns()
    c.run(S)
    assert clock.now_ns() == t0 + S
    c.wall -= 3600 * S  # set back an hour
    c.run(S // 5)
    t1 = clock.now_ns()
    assert t1 == t0 + S + S // 5 and clock.steps_back == 1  # runs on, 200 ms later
    times = []
    for _ in range(10):  # frames at 5 fps keep 200 ms apart, as a sampler needs
        c.run(S // 5)
        times.append(clock.now_ns())
    assert all(b - a == S // 5 for a, b in zip([t1, *times], times, strict=False))
    assert clock.steps_back == 1  # warned once for that step
    c.wall += 7200 * S  # set forward past where the frames are: followed
    t2 = clock.now_ns()
    assert t2 == c.wall and t2 > times[-1] + 3000 * S


def test_small_differences_are_not_steps() -> None:
    c = Clocks()
    clock = SteadyWallClock(lambda: c.wall, lambda: c.steady)
    t0 = clock.now_ns()
    c.wall += STEP_NS // 2  # NTP slewing the wall clock a little
    c.run(S)
    assert clock.now_ns() == t0 + S and clock.steps_back == 0
