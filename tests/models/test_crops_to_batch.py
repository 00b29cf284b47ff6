"""models.base.crops_to_batch: big batches resize on threads, with the same pixels and errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.base import PARALLEL_RESIZE_MIN, ModelInputError, crops_to_batch


def varied_crops(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (int(rng.integers(20, 300)), int(rng.integers(10, 150)), 3), np.uint8)
        for _ in range(n)
    ]


def test_a_threaded_batch_equals_the_crops_resized_one_by_one() -> None:
    crops = varied_crops(PARALLEL_RESIZE_MIN * 2 + 3)
    batch = crops_to_batch(crops, (256, 128), "crop")
    assert batch.shape == (len(crops), 3, 256, 128) and batch.dtype == np.float32
    for i, crop in enumerate(crops):  # each row is its own crop, in order
        want = cv2.resize(crop, (128, 256), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        np.testing.assert_array_equal(batch[i], want)
    small = crops_to_batch(crops[:5], (256, 128), "crop")  # below the threshold: one thread
    np.testing.assert_array_equal(small, batch[:5])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((40, 20), np.uint8), "crop 70 must be"),
        (np.zeros((1, 9, 3), np.uint8), "crop 70 is too small"),
    ],
)
def test_a_bad_crop_in_a_big_batch_is_named(bad: np.ndarray, message: str) -> None:
    crops = varied_crops(PARALLEL_RESIZE_MIN + 10)
    crops[70] = bad
    with pytest.raises(ModelInputError, match=message):
        crops_to_batch(crops, (256, 128), "crop")


def test_a_forked_child_resizes_big_batches_too() -> None:
    """The parent's pool threads do not exist in a fork: the child must not wait on them."""
    import multiprocessing

    crops = varied_crops(PARALLEL_RESIZE_MIN)
    want = crops_to_batch(crops, (256, 128), "crop")  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(crops_to_batch, (crops, (256, 128), "crop")).get(timeout=60)
    np.testing.assert_array_equal(got, want)
