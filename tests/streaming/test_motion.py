"""Track motion: direction, towards/away, standing still, in person heights per second."""

from __future__ import annotations

import numpy as np
import pytest

from refind.streaming.motion import track_motion


def _track(dx: float, dy: float, grow: float = 0.0, seconds: float = 2.0, fps: float = 10.0):
    """Boxes of a 60 px tall person moving dx, dy px/s and growing ``grow`` px/s."""
    t = np.arange(0, seconds, 1 / fps)
    h = 60 + grow * t
    x, y2 = 100 + dx * t, 200 + dy * t
    return t, np.stack([x, y2 - h, x + 20, y2], axis=1)


@pytest.mark.parametrize(
    ("dx", "dy", "grow", "vx", "towards_sign", "still"),
    [
        (-45, 0, 0, -0.75, 0, 0.0),   # walking left
        (45, 0, 0, 0.75, 0, 0.0),     # walking right
        (0, 30, 6, 0.0, 1, 0.0),      # down the image and growing: towards the camera
        (0, -30, -6, 0.0, -1, 0.0),   # up and shrinking: away
        (0, 0, 0, 0.0, 0, 1.0),       # standing
    ],
)
def test_motion(dx, dy, grow, vx, towards_sign, still) -> None:
    m = track_motion(*_track(dx, dy, grow))
    assert m is not None
    assert m.vx == pytest.approx(vx, abs=0.05)
    assert np.sign(round(m.towards, 2)) == towards_sign
    assert m.still == pytest.approx(still)


def test_jitter_does_not_make_a_standing_person_walk() -> None:
    t, boxes = _track(0, 0)
    boxes = boxes + np.random.default_rng(0).normal(0, 1.5, boxes.shape)  # detector jitter
    m = track_motion(t, boxes)
    assert m is not None and m.still > 0.8 and m.speed < 0.15


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_short_is_unknown(n: int) -> None:
    t, boxes = _track(40, 0)
    assert track_motion(t[:n], boxes[:n]) is None


def test_bad_input_is_refused() -> None:
    t, boxes = _track(40, 0)
    with pytest.raises(ValueError, match="times for"):
        track_motion(t[:-1], boxes)
    with pytest.raises(ValueError, match="increase"):
        track_motion(t[::-1], boxes)
