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


def box_gaps(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """How far apart two boxes are across and down the image (pixels; 0 where they overlap).

    Example:
        >>> box_gaps((0, 0, 10, 10), (15, 5, 20, 30))
        (5.0, 0.0)
    """
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    return max(bx1 - ax2, ax1 - bx2, 0.0), max(by1 - ay2, ay1 - by2, 0.0)


Region = tuple[float, float, float, float]
"""Part of a source's frame as fractions of its width and height: x1, y1, x2, y2 in [0, 1]."""


def check_region(region: Region) -> Region:
    """``region`` as floats, or ValueError naming what is wrong with it."""
    x1, y1, x2, y2 = (float(v) for v in region)
    if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
        raise ValueError(f"region {tuple(region)} must be x1, y1, x2, y2 fractions of the frame "
                         "with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1 (e.g. [0, 0, 0.5, 1] for "
                         "the left half)")
    return x1, y1, x2, y2


def region_px(region: Region, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel box (x1, y1, x2, y2; x2, y2 exclusive) of ``region`` in a width x height frame,
    never empty.

    Example:
        >>> region_px((0.0, 0.0, 0.5, 1.0), 480, 360)
        (0, 0, 240, 360)
    """
    x1, y1 = min(round(region[0] * width), width - 1), min(round(region[1] * height), height - 1)
    x2 = max(round(region[2] * width), x1 + 1)
    y2 = max(round(region[3] * height), y1 + 1)
    return x1, y1, min(x2, width), min(y2, height)


def cut_region(image: np.ndarray, region: Region) -> np.ndarray:
    """The ``region`` of an (h, w, 3) frame, as its own contiguous (h', w', 3) array."""
    x1, y1, x2, y2 = region_px(region, image.shape[1], image.shape[0])
    return np.ascontiguousarray(image[y1:y2, x1:x2])
