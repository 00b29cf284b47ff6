"""The motion gate (``refind.streaming.activity``): the detector runs only when something moved,
alone and inside the stage loop (offline ``run``), with a detector that really reads the pixels."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pytest

from refind.streaming.activity import MotionGate
from refind.streaming.config import CropConfig, MotionGateConfig, TrackerConfig
from refind.streaming.pipeline import CameraPipeline
from refind.streaming.records import Detections, Frame

H, W = 288, 384
STEP_NS = 100_000_000  # 10 frames/s
GATE = MotionGateConfig()


def _scene(seed: int = 0) -> np.ndarray:
    """A textured, blurred background: a floor and walls, not flat colour."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(40, 160, (H, W, 3), dtype=np.uint8), (9, 9), 0)


def _noisy(image: np.ndarray, rng: np.random.Generator, sigma: float = 3.0) -> np.ndarray:
    """The same view as a camera sees it twice: sensor noise on every pixel."""
    noise = rng.normal(0.0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _with_person(image: np.ndarray, x: int, y: int = 100, w: int = 24, h: int = 72,
                 grey: int = 250) -> np.ndarray:
    out = image.copy()
    out[y : y + h, x : x + w] = grey
    return out


def test_a_still_scene_is_detected_once_and_then_every_max_skip():
    gate, rng, scene = MotionGate(GATE), np.random.default_rng(1), _scene()
    asked = [gate.needs_detection(_noisy(scene, rng), i * STEP_NS) for i in range(50)]
    # the first frame, then once max_skip_s (2 s = 20 frames) has passed since the last detection
    assert [i for i, a in enumerate(asked) if a] == [0, 20, 40]
    assert (gate.detected, gate.skipped) == (3, 47)


def test_a_person_walking_in_is_detected_and_slow_motion_adds_up():
    gate, rng, scene = MotionGate(GATE), np.random.default_rng(2), _scene()
    assert gate.needs_detection(_noisy(scene, rng), 0)
    assert gate.needs_detection(_noisy(_with_person(scene, 100), rng), STEP_NS)
    # a dim person (little contrast with the floor) creeping 1 px a frame: one step alone is
    # below the threshold, but the gate compares with the last *detected* frame, so within a few
    # frames the movement is seen
    asked = [gate.needs_detection(_noisy(_with_person(scene, 100 + k, grey=140), rng),
                                  (1 + k) * STEP_NS) for k in range(12)]
    assert asked[0] and any(asked[2:6]) and not all(asked)


def test_a_small_far_person_moving_counts():
    gate, scene = MotionGate(GATE), _scene()
    assert gate.needs_detection(_with_person(scene, 50, w=8, h=20), 0)
    assert gate.needs_detection(_with_person(scene, 58, w=8, h=20), STEP_NS)


def test_a_new_stream_or_size_is_detected():
    gate, scene = MotionGate(GATE), _scene()
    assert gate.needs_detection(scene, 10 * STEP_NS)
    assert not gate.needs_detection(scene, 11 * STEP_NS)
    assert gate.needs_detection(scene, 0)  # time went back: another stream
    assert gate.needs_detection(cv2.resize(scene, (W // 2, H // 2)), STEP_NS)
    gate.reset()
    assert gate.needs_detection(cv2.resize(scene, (W // 2, H // 2)), 2 * STEP_NS)


class BrightBoxDetector:
    """Finds the one bright (>= 240) rectangle of a frame: a detector that reads the pixels, so
    whichever frames it is given, each gets its own answer."""

    model_id = "bright-box"

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        self.frames += len(images)
        out = []
        for image in images:
            ys, xs = np.nonzero((image >= 240).all(axis=2))
            if len(xs) == 0:
                out.append(Detections.empty())
                continue
            box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
            out.append(Detections(box, np.array([0.9], np.float32), np.zeros(1, np.int32)))
        return out


def _story(n_empty: int = 20, n_walk: int = 20, n_stand: int = 30) -> list[Frame]:
    """An empty view, a person walking in 4 px a frame, then standing still; sensor noise."""
    rng, scene = np.random.default_rng(3), _scene(3)
    images = [scene] * n_empty
    images += [_with_person(scene, 40 + 4 * k) for k in range(n_walk)]
    images += [_with_person(scene, 40 + 4 * (n_walk - 1))] * n_stand
    return [Frame("door", i, i * STEP_NS, _noisy(img, rng)) for i, img in enumerate(images)]


def _run(gate: MotionGateConfig | None, detect_every: int = 1
         ) -> tuple[CameraPipeline, BrightBoxDetector, list]:
    detector = BrightBoxDetector()
    pipe = CameraPipeline("door", TrackerConfig(appearance_weight=0.0, detect_every=detect_every),
                          CropConfig(), detector, detector_batch=4, select_crops=False,
                          motion_gate=gate)
    tracked = [(r.frame.index, r.tracks.track_id.tolist(), r.tracks.xyxy.round().tolist())
               for r in pipe.run(iter(_story())) if r.frame is not None]
    return pipe, detector, tracked


def test_the_pipeline_detects_what_moved_and_tracks_the_same():
    gated, gated_detector, gated_tracks = _run(GATE)
    every, every_detector, every_tracks = _run(None)
    assert every_detector.frames == every.frames_detected == 70
    # empty view: frames 0 and 20 (max_skip_s); walking: every frame; standing: its first frame
    # and one max_skip_s later
    assert gated.frames_detected == gated_detector.frames <= 2 + 20 + 2
    assert gated.frames == 70 and "motion" in gated.times.snapshot()
    # the standing person stays tracked, under one id, with the box the detector last gave
    assert gated_tracks == every_tracks
    standing = [ids for f, ids, _ in gated_tracks if f >= 40]
    assert standing == [[1]] * 30


def test_disabled_gate_detects_every_frame():
    pipe, detector, _ = _run(MotionGateConfig(enabled=False))
    assert pipe.gate is None and detector.frames == pipe.frames_detected == 70


def test_detecting_every_second_frame_predicts_the_walk_between():
    pipe, detector, tracked = _run(None, detect_every=2)
    assert detector.frames == pipe.frames_detected == 35 and pipe.frames_coasted == 35
    # the walker (4 px a frame from x 40, frames 20-39), under one id; on the frames between
    # detections the box is where the tracker predicts: as the motion model learns the pace,
    # within a pixel of the truth (the last detection's box would be 4 px behind)
    walking = {f: xyxy for f, ids, xyxy in tracked if 23 <= f < 40}
    assert {tuple(ids) for f, ids, _ in tracked if f >= 22} == {(1,)}
    for f in range(27, 40, 2):  # coasted frames
        assert abs(walking[f][0][0] - (40 + 4 * (f - 20))) <= 1, (f, walking[f])
    # with the motion gate as well, the still view is detected no more often than before
    gated, gated_detector, gated_tracks = _run(GATE, detect_every=2)
    assert gated_detector.frames == gated.frames_detected <= 2 + 10 + 2
    assert {tuple(ids) for f, ids, _ in gated_tracks if f >= 40} == {(1,)}


def test_crops_come_only_from_detected_frames():
    detector = BrightBoxDetector()
    pipe = CameraPipeline("door", TrackerConfig(appearance_weight=0.0, detect_every=3),
                          CropConfig(early_after_s=0.3), detector, detector_batch=4)
    crops = [c for r in pipe.run(iter(_story())) for c in r.crops]
    assert crops and all(c.frame_index % 3 == 0 for c in crops)


@pytest.mark.parametrize("field,value", [("pixel_threshold", 0), ("min_changed", 1.5),
                                         ("frame_height", 4), ("max_skip_s", 0)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        MotionGateConfig(**{field: value})
