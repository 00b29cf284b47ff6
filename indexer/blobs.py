"""Crop and thumbnail storage: JPEG files under one root directory.

Paths handed out are relative to the root; ``resolve`` refuses any path that would leave it, so a
path that arrives from a request can never read files outside the crop store.

Example:
    >>> store = CropStore(Path("/tmp/crops"))                              # doctest: +SKIP
    >>> store.put("gate", 7, 120, crop_bgr)                                  # doctest: +SKIP
    'gate/7/000120.jpg'
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import cv2
import numpy as np

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class CropStoreError(ValueError):
    """A crop path that is invalid or points outside the store."""


def safe_name(name: str) -> str:
    """A file-system safe form of a camera or model name (no separators, no dot-dot)."""
    cleaned = _SAFE.sub("_", name).strip("._") or "_"
    return cleaned[:120]


class CropStore:
    """Writes crops as JPEG atomically and reads them back by relative path."""

    def __init__(self, root: Path, jpeg_quality: int = 90) -> None:
        self.root = root.resolve()
        self.jpeg_quality = jpeg_quality
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, camera: str, track_id: int, frame_index: int, image: np.ndarray) -> str:
        """Store one crop; returns its path relative to the root."""
        rel = f"{safe_name(camera)}/{int(track_id)}/{int(frame_index):06d}.jpg"
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise CropStoreError(f"could not encode crop {rel} as JPEG")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-", suffix=".jpg")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.tobytes())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return rel

    def resolve(self, rel: str) -> Path:
        """Absolute path of a stored crop; refuses absolute paths and any escape from the root."""
        if not rel or Path(rel).is_absolute():
            raise CropStoreError(f"invalid crop path {rel!r}")
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):
            raise CropStoreError(f"crop path {rel!r} is outside the crop store")
        return path

    def read(self, rel: str) -> np.ndarray:
        path = self.resolve(rel)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise CropStoreError(f"crop {rel!r} is missing or not an image")
        return image
