from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from refind.streaming.boxes import pixel_box
from refind.streaming.config import CropConfig
from refind.streaming.crops import CropSelector, sharpness
from refind.streaming.records import Frame, Tracks

H, W = 360, 480
FPS = 10
SHARP_BOX = [200.0, 100.0, 240.0, 200.0]  # 40 x 100, well inside the frame


def textured(seed: int = 0) -> np.ndarray:
    """A frame with fine detail everywhere, so that any crop of it is sharp."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def blurred(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=4)


def frame_at(index: int, image: np.ndarray | None = None) -> Frame:
    img = textured(index) if image is None else image
    return Frame("cam", index, round(index * 1e9 / FPS), img)


def tracks_at(
    frame: Frame, boxes: list[list[float]], ids: list[int] | None = None, conf: float = 0.9
) -> Tracks:
    ids = list(range(1, len(boxes) + 1)) if ids is None else ids
    return Tracks(
        frame.camera,
        frame.index,
        frame.ts_ns,
        np.array(ids),
        np.array(boxes).reshape(-1, 4),
        np.full(len(boxes), conf),
    )


def show(selector: CropSelector, frame: Frame, boxes: list[list[float]], **kw: object) -> None:
    selector.update(frame, tracks_at(frame, boxes, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("xyxy", "kept", "why"),
    [
        (SHARP_BOX, 1, "inside, large enough"),
        ([0.0, 100.0, 40.0, 200.0], 0, "touches the left edge"),
        ([440.0, 100.0, 480.0, 200.0], 0, "touches the right edge"),
        ([200.0, 280.0, 240.0, 360.0], 0, "cut by the bottom edge"),
        ([200.0, 100.0, 240.0, 130.0], 0, "too short"),
        ([200.0, 100.0, 208.0, 200.0], 0, "too narrow"),
    ],
)
def test_candidates_are_refused_when_cut_or_tiny(xyxy: list[float], kept: int, why: str) -> None:
    selector = CropSelector(CropConfig(edge_margin_px=2, min_height_px=48, min_width_px=16))
    show(selector, frame_at(0), [xyxy])
    assert len(selector.finish([1])) == kept, why


def test_crop_carries_its_record_fields_and_pixels() -> None:
    selector = CropSelector(CropConfig())
    frame = frame_at(3)
    show(selector, frame, [SHARP_BOX], ids=[7], conf=0.8)
    [crop] = selector.finish([7])
    assert (crop.camera, crop.track_id, crop.frame_index, crop.ts_ns) == ("cam", 7, 3, frame.ts_ns)
    assert crop.xyxy == (200.0, 100.0, 240.0, 200.0)
    assert crop.confidence == pytest.approx(0.8)
    assert 0 < crop.quality <= 1
    np.testing.assert_array_equal(crop.image, frame.image[100:200, 200:240])
    assert not np.shares_memory(crop.image, frame.image), "a crop must not hold the frame"


@pytest.mark.parametrize("max_per_track", [1, 3, 5])
def test_at_most_max_per_track_spread_at_least_min_gap_apart(max_per_track: int) -> None:
    cfg = CropConfig(max_per_track=max_per_track, min_gap_s=1.0)
    selector = CropSelector(cfg)
    for i in range(100):  # 10 s of one person at 10 fps
        show(selector, frame_at(i), [SHARP_BOX])
    crops = selector.finish([1])
    assert len(crops) == max_per_track
    times = sorted(c.ts_ns for c in crops)
    assert all(b - a >= 1e9 for a, b in itertools.pairwise(times))
    assert [c.quality for c in crops] == sorted((c.quality for c in crops), reverse=True)


@pytest.mark.parametrize("blur_first", [True, False])
def test_blurred_crop_ranks_below_a_sharp_one(blur_first: bool) -> None:
    selector = CropSelector(CropConfig(max_per_track=5, min_gap_s=1.0))
    sharp, soft = textured(1), blurred(textured(2))
    order = [soft, sharp] if blur_first else [sharp, soft]
    for k, image in enumerate(order):  # 2 s apart: both can be kept
        show(selector, frame_at(20 * k, image), [SHARP_BOX])
    best, worst = selector.finish([1])
    assert best.frame_index == (20 if blur_first else 0)
    assert sharpness(best.image) > sharpness(worst.image)
    assert best.quality > worst.quality


def test_sharper_candidate_within_min_gap_replaces_the_kept_one() -> None:
    selector = CropSelector(CropConfig(max_per_track=5, min_gap_s=1.0))
    show(selector, frame_at(0, blurred(textured(0))), [SHARP_BOX])
    show(selector, frame_at(3, textured(3)), [SHARP_BOX])  # 0.3 s later, sharper
    [crop] = selector.finish([1])
    assert crop.frame_index == 3


@pytest.mark.parametrize(
    ("height", "conf", "better_than_reference"),
    [(200, 0.9, True), (60, 0.9, False), (100, 0.95, True), (100, 0.5, False)],
)
def test_quality_grows_with_height_and_confidence(
    height: int, conf: float, better_than_reference: bool
) -> None:
    selector = CropSelector(CropConfig())
    image = textured(5)
    reference = selector.quality(image[:100, :40], 0.9)
    assert (selector.quality(image[:height, :40], conf) > reference) is better_than_reference


def test_finish_forgets_and_flush_returns_the_rest() -> None:
    selector = CropSelector(CropConfig())
    frame = frame_at(0)
    show(selector, frame, [SHARP_BOX, [300.0, 100.0, 340.0, 200.0]], ids=[4, 9])
    assert [c.track_id for c in selector.finish([4])] == [4]
    assert selector.finish([4]) == []
    assert [c.track_id for c in selector.flush()] == [9]
    assert selector.flush() == []


def test_tracks_of_another_frame_are_refused() -> None:
    selector = CropSelector(CropConfig())
    with pytest.raises(ValueError, match="given with frame"):
        selector.update(frame_at(1), tracks_at(frame_at(2), [SHARP_BOX]))


@pytest.mark.parametrize(
    ("xyxy", "expected"),
    [
        ([10.2, 20.7, 30.5, 40.1], (10, 20, 31, 41)),
        ([-5.0, -1.0, 500.0, 400.0], (0, 0, W, H)),
    ],
)
def test_pixel_box_rounds_outwards_and_clips(
    xyxy: list[float], expected: tuple[int, int, int, int]
) -> None:
    assert pixel_box(np.array(xyxy), (H, W)) == expected


def test_early_hands_out_the_best_crop_once_and_finish_skips_it() -> None:
    rng = np.random.default_rng(1)
    selector = CropSelector(CropConfig(min_gap_s=0.0))
    for i in range(5):
        image = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
        ts = i * 100_000_000
        tracks = Tracks("c", i, ts, [1], [[100, 50, 160, 250]], [0.5 + i / 10])
        selector.update(Frame("c", i, ts, image), tracks)
    assert selector.early(now_ts_ns=200_000_000, after_s=0.5) == []  # too young
    [first] = selector.early(now_ts_ns=500_000_000, after_s=0.5)
    assert selector.early(now_ts_ns=900_000_000, after_s=0.5) == []  # only once per track
    rest = selector.finish([1])
    assert first.frame_index not in {c.frame_index for c in rest}


def test_a_crop_as_stored_carries_its_jpeg_and_those_pixels():
    from refind.streaming.crops import as_stored
    from refind.streaming.records import Crop

    image = np.random.default_rng(3).integers(0, 256, (120, 50, 3), dtype=np.uint8)
    crop = Crop("gate", 4, 17, 1_700, (1.0, 2.0, 51.0, 122.0), 0.8, 0.5, image)
    stored = as_stored(crop, 90)
    assert stored.jpeg[:2] == b"\xff\xd8"  # a JPEG
    decoded = cv2.imdecode(np.frombuffer(stored.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(stored.image, decoded) and not np.array_equal(stored.image, image)
    assert (stored.camera, stored.track_id, stored.frame_index, stored.ts_ns, stored.xyxy,
            stored.confidence, stored.quality) == ("gate", 4, 17, 1_700, crop.xyxy, 0.8, 0.5)
    assert len(as_stored(crop, 30).jpeg) < len(stored.jpeg)  # the quality is the one asked for
