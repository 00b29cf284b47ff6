"""Box geometry in one place: whole-pixel boxes and the pixels inside them.

Boxes are ``xyxy`` in pixels of the frame (x1, y1, x2, y2, x2 >= x1); images are (H, W, 3) uint8.

Example:
    >>> pixel_box(np.array([1.5, 2.2, 10.1, 20.0]), (16, 8))
    (1, 2, 8, 16)
    >>> crop_box(np.zeros((16, 8, 3), np.uint8), (1, 2, 7, 12)).shape
    (10, 6, 3)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pixel_box(xyxy: np.ndarray | Sequence[float], hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Box rounded outwards to whole pixels and clipped to a frame of size ``hw``."""
    h, w = hw
    x1 = int(np.clip(np.floor(xyxy[0]), 0, w))
    y1 = int(np.clip(np.floor(xyxy[1]), 0, h))
    x2 = int(np.clip(np.ceil(xyxy[2]), 0, w))
    y2 = int(np.clip(np.ceil(xyxy[3]), 0, h))
    return x1, y1, x2, y2


def box_pixels(image: np.ndarray, xyxy: np.ndarray | Sequence[float], min_px: int = 2) -> np.ndarray:
    """Pixels of box ``xyxy`` in ``image`` ((H, W, 3)), widened to at least ``min_px`` each way
    inside the image, so a sliver of a box still gives a crop a model takes (a view)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = pixel_box(xyxy, (h, w))
    x1, y1 = min(x1, max(w - min_px, 0)), min(y1, max(h - min_px, 0))
    x2, y2 = max(x2, x1 + min_px), max(y2, y1 + min_px)
    return image[y1:y2, x1:x2]


def crop_box(image: np.ndarray, xyxy: Sequence[float]) -> np.ndarray:
    """A copy of the pixels of ``image`` inside ``xyxy`` (rounded, clipped to the image); raises
    ValueError naming the box when less than 2 x 2 pixels of it are inside the image."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in xyxy)
    x1, x2 = max(0, min(x1, w)), max(0, min(x2, w))
    y1, y2 = max(0, min(y1, h)), max(0, min(y2, h))
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ValueError(f"crop box {tuple(xyxy)} is empty inside a {w}x{h} image")
    return np.ascontiguousarray(image[y1:y2, x1:x2])
