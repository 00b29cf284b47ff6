"""Small protocols every learned model of refind sits behind.

A model runner is a plain class: ``__init__`` loads, ``__call__`` runs one batch. Ray wrappers in
``actors/`` hold one of these; tests use them directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from streaming.records import Detections, Embeddings


class ModelInputError(ValueError):
    """An input a model cannot take (wrong shape, dtype, empty); the message names it."""


@runtime_checkable
class Detector(Protocol):
    """Finds objects in a batch of BGR frames ((H, W, 3) uint8 each)."""

    model_id: str

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]: ...


@runtime_checkable
class ReidEmbedder(Protocol):
    """Maps person crops ((h, w, 3) uint8 BGR each) to unit vectors of one model."""

    model_id: str
    dim: int

    def __call__(self, crops: Sequence[np.ndarray]) -> Embeddings: ...


def check_bgr_image(image: np.ndarray, what: str) -> None:
    """Raise ModelInputError unless ``image`` is a non-empty (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray):
        raise ModelInputError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ModelInputError(f"{what} must be (H, W, 3) uint8 BGR, got {image.shape} {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ModelInputError(f"{what} has zero size: {image.shape[1]}x{image.shape[0]}")
