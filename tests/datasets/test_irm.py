"""IRM data: augmentations, the PETS identity split, captions and their parse back."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from refind.datasets.captions import UNRELIABLE, aggregate_attributes, describe, instruction_for
from refind.datasets.irm import (
    HEAD_FRAC,
    TASKS,
    load_pets_crops,
    lower_body,
    person_mask,
    pets_identity_split,
    recolour_clothes,
    texture_swap,
    to_greyscale,
    to_thermal,
    upper_body,
)
from refind.models.base import ATTRIBUTE_NAMES, PersonAttributes
from refind.models.colours import COLOUR_NAMES
from refind.models.text_attributes import WantedAttributes, agreement, parse_attributes
from tests.conftest import PETS_GT, need_pets


def _person(h: int = 128, w: int = 56) -> np.ndarray:
    """A drawn pedestrian: grey pavement, skin head, red top, blue trousers (BGR)."""
    img = np.full((h, w, 3), (150, 150, 150), np.uint8)
    cx = w // 2
    cv2.ellipse(img, (cx, int(h * 0.09)), (w // 8, int(h * 0.07)), 0, 0, 360, (120, 160, 210), -1)
    cv2.rectangle(
        img, (cx - w // 4, int(h * 0.19)), (cx + w // 4, int(h * 0.55)), (40, 40, 200), -1
    )
    cv2.rectangle(img, (cx - w // 5, int(h * 0.55)), (cx + w // 5, h - 3), (150, 60, 20), -1)
    return img


def _seeded(fn: Callable) -> Callable[[np.ndarray, int], np.ndarray]:
    return lambda img, seed: fn(img, np.random.default_rng(seed))


AUGMENTATIONS = {
    "recolour_clothes": _seeded(recolour_clothes),
    "texture_swap": _seeded(texture_swap),
    "to_greyscale": _seeded(to_greyscale),
    "to_thermal": _seeded(to_thermal),
}


@pytest.mark.parametrize("augment", AUGMENTATIONS.values(), ids=AUGMENTATIONS)
@pytest.mark.parametrize("shape", [(128, 56), (40, 17), (300, 120)])
def test_augmentation_keeps_shape_and_dtype(augment: Callable, shape: tuple[int, int]) -> None:
    img = _person(*shape)
    out = augment(img, 0)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(img, _person(*shape))  # the input is not modified


@pytest.mark.parametrize("augment", AUGMENTATIONS.values(), ids=AUGMENTATIONS)
def test_augmentation_is_deterministic_per_seed(augment: Callable) -> None:
    img = _person()
    assert np.array_equal(augment(img, 3), augment(img, 3))
    if augment is not AUGMENTATIONS["to_greyscale"]:
        assert any(not np.array_equal(augment(img, 3), augment(img, s)) for s in range(4, 8))


@pytest.mark.parametrize("augment", [recolour_clothes, texture_swap], ids=["recolour", "texture"])
def test_clothes_change_keeps_the_head_and_background(augment: Callable) -> None:
    img = _person()
    h = img.shape[0]
    for seed in range(6):
        out = augment(img, np.random.default_rng(seed))
        head = int(h * HEAD_FRAC)
        assert np.array_equal(out[:head], img[:head]), "head rows changed"
        assert np.abs(out[:, :3].astype(int) - img[:, :3]).max() <= 2, "background changed"
        clothes = np.abs(out[head:].astype(int) - img[head:]).mean(axis=2) > 30
        assert clothes.mean() > 0.1, "clothes did not change"


def test_person_mask_finds_the_drawn_person() -> None:
    img = _person()
    mask = person_mask(img)
    assert mask.shape == img.shape[:2] and mask.dtype == np.float32
    assert mask[40:70, 24:32].mean() > 0.9  # torso
    assert mask[:, :3].mean() < 0.1  # the outer columns are background


def test_thermal_is_grey_and_the_person_is_warm() -> None:
    img = _person()
    warmer = 0
    for seed in range(8):
        out = to_thermal(img, np.random.default_rng(seed))
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
        torso, pavement = float(out[40:70, 24:32, 0].mean()), float(out[:, :4, 0].mean())
        assert abs(torso - pavement) > 40  # white-hot or black-hot, never flat
        warmer += torso > pavement
    assert warmer >= 4  # most renderings are white-hot


def test_greyscale_has_equal_channels() -> None:
    out = to_greyscale(_person())
    assert np.array_equal(out[..., 0], out[..., 2])


def test_garment_crops_are_the_right_rows() -> None:
    img = np.arange(100, dtype=np.uint8)[:, None, None].repeat(20, 1).repeat(3, 2)
    top, bottom = upper_body(img), lower_body(img)
    assert top.shape == (40, 20, 3) and top[0, 0, 0] == 18 and top[-1, 0, 0] == 57
    assert bottom[0, 0, 0] == 55 and bottom[-1, 0, 0] == 99


def test_pets_split_is_fixed_and_never_mixes() -> None:
    need_pets()  # without the ground truth the split falls back to ids 1-19 by rule
    train, heldout = pets_identity_split(PETS_GT)
    assert not set(train) & set(heldout)
    assert heldout == tuple(range(2, 19, 2)) and train == tuple(range(1, 20, 2))
    assert pets_identity_split(PETS_GT) == (train, heldout)


def test_load_pets_crops_only_the_asked_identities() -> None:
    need_pets()
    crops = load_pets_crops([7], every_n_frames=20)
    assert crops and {c.identity for c in crops} == {"pets:7"}
    assert all(c.image.shape[0] >= 48 and c.image.dtype == np.uint8 for c in crops)
    assert len({c.frame_index for c in crops}) == len(crops)


def _attrs(probs: list[float], top: str, bottom: str) -> PersonAttributes:
    return PersonAttributes(
        np.array([probs], np.float32), np.zeros((1, 3), np.uint8), np.zeros((1, 3), np.uint8),
        (top,), (bottom,),
    )  # fmt: skip


# probs in ATTRIBUTE_NAMES order: is_male, bag, backpack, hat, longsleeves, longpants, longhair, coat
CAPTION_CASES = {
    "confident man with backpack": ([0.9, 0.1, 0.9, 0.1, 0.9, 0.9, 0.1, 0.9], "blue", "black"),
    "woman, long hair, bag": ([0.1, 0.9, 0.1, 0.1, 0.5, 0.2, 0.9, 0.1], "red", "grey"),
    "nothing confident": ([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], "white", "brown"),
    "short sleeves, hat": ([0.5, 0.2, 0.2, 0.95, 0.05, 0.9, 0.2, 0.5], "yellow", "green"),
}


@pytest.mark.parametrize(("probs", "top", "bottom"), CAPTION_CASES.values(), ids=CAPTION_CASES)
def test_captions_parse_back_to_their_attributes(probs: list, top: str, bottom: str) -> None:
    attrs = _attrs(probs, top, bottom)
    for seed in range(40):
        for text in (
            describe(attrs, 0, np.random.default_rng(seed)),
            instruction_for("attribute_text", np.random.default_rng(seed), attrs, 0),
        ):
            wanted = parse_attributes(text)
            assert (wanted.top_colour, wanted.bottom_colour) == (top, bottom), text
            for name, value in wanted.flags:
                p = probs[ATTRIBUTE_NAMES.index(name)]
                assert name not in UNRELIABLE, text
                assert (p > 0.7) if value else (p < 0.3), f"{text!r} says {name}={value}, p={p}"
            assert agreement(wanted, attrs, 0) == 1.0, text


def test_captions_are_varied() -> None:
    attrs = _attrs(CAPTION_CASES["confident man with backpack"][0], "blue", "black")
    texts = {describe(attrs, 0, np.random.default_rng(s)) for s in range(30)}
    assert len(texts) >= 10


PARSE_CASES = {
    "a man with a backpack in a blue top and black trousers": (
        {"is_male": True, "has_backpack": True}, "blue", "black"),
    "now wearing a black jacket and a cap": ({"has_hat": True}, "black", None),
    "woman without a bag, dark blue jeans": ({"is_male": False, "has_bag": False}, None, "blue"),
    "Gray T-shirt, navy shorts, long hair": ({"has_longhair": True}, "grey", "blue"),
    "a person in a red and white shirt": ({}, "white", None),
    "short-sleeved dark shirt, no hat": (
        {"has_longsleeves": False, "has_hat": False}, "black", None),
    "the query is an infrared image": ({}, None, None),
}  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES.items(), ids=list(PARSE_CASES))
def test_parse_attributes(text: str, expected: tuple) -> None:
    flags, top, bottom = expected
    assert parse_attributes(text) == WantedAttributes(tuple(sorted(flags.items())), top, bottom)


AGREEMENT_CASES = {
    "all confirmed": ("a man in a red top", [0.9] + [0.5] * 7, "red", "black", 1.0),
    "colour neighbour half": ("a red top", [0.5] * 8, "orange", "black", 0.5),
    "one of two": ("a woman in a blue top", [0.9] + [0.5] * 7, "blue", "black", 0.5),
    "nothing named": ("find this person", [0.5] * 8, "red", "red", 1.0),
}


@pytest.mark.parametrize(
    ("text", "probs", "top", "bottom", "expected"), AGREEMENT_CASES.values(), ids=AGREEMENT_CASES
)
def test_agreement(text: str, probs: list, top: str, bottom: str, expected: float) -> None:
    assert agreement(parse_attributes(text), _attrs(probs, top, bottom), 0) == expected


def test_aggregate_attributes_mean_and_majority() -> None:
    attrs = PersonAttributes(
        np.array([[0.2] * 8, [0.4] * 8, [0.9] * 8], np.float32),
        np.array([[0, 0, 200], [0, 0, 180], [200, 0, 0]], np.uint8),
        np.zeros((3, 3), np.uint8),
        ("red", "red", "blue"),
        ("black", "grey", "grey"),
    )
    ids, agg = aggregate_attributes(attrs, ["a", "b", "a"])
    assert ids == ["a", "b"]
    assert agg.probs[0, 0] == pytest.approx(0.55) and agg.probs[1, 0] == pytest.approx(0.4)
    assert agg.top_colour == ("red", "red") and agg.bottom_colour == ("black", "grey")


@pytest.mark.parametrize("task", [t for t in TASKS if t not in ("attribute_text", "text")])
def test_fixed_instructions(task: str) -> None:
    from refind.models.irm_cpu import DEFAULT_INSTRUCTIONS

    # the canonical phrasing is the one the embedder uses when a query names only its task
    assert instruction_for(task, None) == DEFAULT_INSTRUCTIONS[task]
    drawn = {instruction_for(task, np.random.default_rng(k)) for k in range(20)}
    assert DEFAULT_INSTRUCTIONS[task] in drawn and len(drawn) > 1
    with pytest.raises(ValueError, match="unknown task"):
        instruction_for("dance", None)


def test_text_instructions_need_attributes() -> None:
    with pytest.raises(ValueError, match="needs the attributes"):
        instruction_for("attribute_text", np.random.default_rng(0))
    assert COLOUR_NAMES  # colour names are what captions use
