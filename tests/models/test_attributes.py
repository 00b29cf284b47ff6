"""The OMZ person-attributes runner and colour naming, on real PETS crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from refind.models.base import ATTRIBUTE_NAMES, AttributeModel, ModelInputError
from refind.models.colours import canonical_colour, colour_match, name_colour, sample_colour

# BGR samples and the name each must get
LABELLED = [
    ((0, 0, 0), "black"),
    ((20, 20, 25), "black"),
    ((128, 128, 128), "grey"),
    ((245, 245, 245), "white"),
    ((30, 30, 200), "red"),
    ((0, 140, 255), "orange"),
    ((30, 70, 110), "brown"),
    ((0, 220, 230), "yellow"),
    ((40, 170, 40), "green"),
    ((200, 80, 20), "blue"),
    ((160, 40, 120), "purple"),
    ((190, 160, 250), "pink"),
]


@pytest.mark.parametrize(("bgr", "name"), LABELLED)
def test_colour_names(bgr: tuple[int, int, int], name: str) -> None:
    assert name_colour(np.array(bgr, np.uint8)) == name


@pytest.mark.parametrize(
    ("wanted", "seen", "score"),
    [
        ("red", "red", 1.0),
        ("Gray", "grey", 1.0),
        ("navy", "blue", 1.0),
        ("orange", "brown", 0.5),
        ("white", "grey", 0.5),
        ("red", "blue", 0.0),
        ("tall", "red", 0.0),
    ],
)
def test_colour_match_is_tolerant_of_neighbours(wanted: str, seen: str, score: float) -> None:
    assert colour_match(wanted, seen) == score


def test_canonical_colour_rejects_non_colours() -> None:
    assert canonical_colour("backpack") is None
    assert canonical_colour(" Khaki ") == "brown"


def test_sample_colour_reads_the_patch_at_the_point() -> None:
    crop = np.zeros((100, 50, 3), np.uint8)
    crop[:50] = (30, 30, 200)  # red top half
    crop[50:] = (200, 80, 20)  # blue bottom half
    assert name_colour(sample_colour(crop, (0.5, 0.25))) == "red"
    assert name_colour(sample_colour(crop, (0.5, 0.75))) == "blue"
    # a point at the very edge still gives a patch inside the crop
    assert sample_colour(crop, (1.0, 1.0)).shape == (3,)


def _pets_crops(video, frame_number: int = 1) -> list[np.ndarray]:
    """Ground-truth person crops of one 1-based MOT frame of PETS09-S2L1."""
    scale = 480 / 768
    rows = [
        [float(v) for v in line.split(",")[:6]]
        for line in (video.parent / "gt.txt").read_text().splitlines()
        if line.startswith(f"{frame_number},")
    ]
    cap = cv2.VideoCapture(str(video))
    for _ in range(frame_number):
        ok, frame = cap.read()
        assert ok
    crops = []
    for _, _, x, y, w, h in rows:
        x1, y1 = max(0, int(x * scale)), max(0, int(y * scale))
        crops.append(frame[y1 : int((y + h) * scale), x1 : int((x + w) * scale)])
    return crops


@pytest.fixture(scope="module")
def attributes(model_store):
    from refind.models.attributes import OpenVinoAttributes

    return OpenVinoAttributes(model_store, batch_size=2)


def test_attributes_on_real_crops_are_batch_independent(attributes, pets_video) -> None:
    crops = _pets_crops(pets_video)
    assert len(crops) >= 3
    assert isinstance(attributes, AttributeModel)
    together = attributes(crops)
    one_by_one = [attributes([c]) for c in crops]
    assert together.probs.shape == (len(crops), len(ATTRIBUTE_NAMES))
    assert np.all((together.probs >= 0) & (together.probs <= 1))
    for i, single in enumerate(one_by_one):
        np.testing.assert_allclose(together.probs[i], single.probs[0], atol=1e-4)
        assert together.top_colour[i] == single.top_colour[0]
    assert len(together.top_colour) == len(together.bottom_colour) == len(crops)
    # the crops are different people: the model does not answer the same for all of them
    assert np.ptp(together.probs, axis=0).max() > 0.2


def test_attributes_refuse_bad_input(attributes) -> None:
    assert len(attributes([])) == 0
    with pytest.raises(ModelInputError, match="attribute crop 0"):
        attributes([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ModelInputError, match="too small"):
        attributes([np.zeros((1, 5, 3), np.uint8)])
