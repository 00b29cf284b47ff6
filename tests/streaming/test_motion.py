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


def test_an_ended_track_carries_its_motion_through_its_event() -> None:
    """The pipeline follows a box walking right for 3 s; the ended span says so, and the track
    end event (what the journal, Kafka and rebuild keep) carries the same motion back."""
    from refind.streaming.config import CropConfig, TrackerConfig
    from refind.streaming.events import TrackEvent
    from refind.streaming.motion import TrackMotion
    from refind.streaming.pipeline import CameraPipeline
    from refind.streaming.records import Detections, Frame

    pipe = CameraPipeline("gate", TrackerConfig(appearance_weight=0), CropConfig(),
                          select_crops=False)
    image = np.zeros((240, 320, 3), np.uint8)
    for i in range(30):  # 10 fps, 20 px/s on a 120 px tall person: 1/6 height per second
        x = 50 + 2 * i
        pipe.process(Frame("gate", i, i * 10**8, image),
                     Detections(np.array([[x, 50, x + 40, 170]], np.float32), np.array([0.9]),
                                np.array([0])))
    [span] = pipe.finish().ended
    assert span.motion is not None
    assert span.motion.vx == pytest.approx(1 / 6, abs=0.02) and span.motion.still < 0.5
    event = TrackEvent.from_span(span, "end")
    again = TrackEvent.model_validate_json(event.model_dump_json(by_alias=True))
    back = TrackMotion.from_dict(again.motion)
    assert back.vx == pytest.approx(span.motion.vx, abs=1e-3)
    assert back.still == span.motion.still and back.duration_s == pytest.approx(span.seconds)


def test_a_long_track_keeps_a_bounded_path() -> None:
    from refind.streaming.motion import TrackPath

    path = TrackPath(cap=64)
    for i in range(10_000):  # 1000 s at 10 fps, walking left
        path.add(i * 10**8, (1000 - 0.5 * i, 0, 1040 - 0.5 * i, 100))
    assert len(path) <= 64
    m = path.motion()
    assert m is not None and m.duration_s > 990 and m.vx == pytest.approx(-0.05, abs=0.005)


def test_motion_from_dict_names_bad_keys() -> None:
    from refind.streaming.motion import TrackMotion

    with pytest.raises(ValueError, match="missing"):
        TrackMotion.from_dict({"vx": 1.0})


@pytest.mark.parametrize(("box", "side"), [
    ((0, 100, 30, 200), "left"), ((610, 100, 640, 200), "right"), ((300, 0, 330, 90), "top"),
    ((300, 380, 330, 480), "bottom"), ((300, 100, 330, 200), ""),
])
def test_edges(box, side) -> None:
    from refind.streaming.motion import edge_of

    assert edge_of(box, (640, 480)) == side


def test_a_track_knows_the_edges_it_crossed_when_the_frame_size_is_known() -> None:
    t = np.arange(0, 3.0, 0.1)
    x = 600 - 200 * t  # from the right edge leftwards, ending inside the frame
    boxes = np.stack([x, 100 + 0 * t, x + 40, 220 + 0 * t], axis=1)
    m = track_motion(t, boxes, (640, 480))
    assert (m.enter, m.exit) == ("right", "")
    assert track_motion(t, boxes).enter is None  # no frame size: unknown, not "inside"
    from refind.streaming.motion import TrackMotion

    back = TrackMotion.from_dict(m.as_dict())
    assert (back.enter, back.exit) == ("right", "")
    old = {k: v for k, v in m.as_dict().items() if k not in ("enter", "exit")}
    assert TrackMotion.from_dict(old).enter is None  # stored before sides were kept
    with pytest.raises(ValueError, match="sides"):
        TrackMotion.from_dict(old | {"enter": "sideways"})
