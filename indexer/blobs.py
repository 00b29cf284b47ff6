"""Crop and thumbnail storage: JPEG files under one root, a directory or an fsspec URL.

Beside each crop ``<camera>/<track>/<frame>.jpg`` lies its context view ``<frame>.ctx.jpg`` (the
downscaled frame with the box drawn), and each track's clip is ``<camera>/<track>/clip.mp4``;
deleting a crop deletes its context view.

Paths handed out are relative to the root; ``resolve`` refuses any path that would leave it, so a
path that arrives from a request can never read files outside the crop store. A local root is
written atomically (temporary file, then rename); an object store (``s3://bucket/crops``, any
fsspec URL) writes each object in one put, which is atomic there.

Example:
    >>> store = CropStore(Path("/tmp/crops"))                              # doctest: +SKIP
    >>> store.put("gate", 7, 120, crop_bgr)                                  # doctest: +SKIP
    'gate/7/000120.jpg'
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import tempfile
from pathlib import Path

import cv2
import numpy as np

from refind.config import RefindConfig

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class CropStoreError(ValueError):
    """A crop path that is invalid, points outside the store, or cannot be read."""


class CropStoreFull(OSError):
    """The crop store's volume is full (or over quota): nothing is written until space is
    freed."""


def safe_name(name: str) -> str:
    """A file-system safe form of a camera or model name (no separators, no dot-dot)."""
    cleaned = _SAFE.sub("_", name).strip("._") or "_"
    return cleaned[:120]


CONTEXT_SUFFIX = ".ctx.jpg"
CLIP_NAME = "clip.mp4"


def context_path(rel: str) -> str:
    """Where the downscaled frame of the crop at ``rel`` is stored: beside it."""
    return rel[: -len(".jpg")] + CONTEXT_SUFFIX if rel.endswith(".jpg") else rel + CONTEXT_SUFFIX


def clip_path(camera: str, track_id: int) -> str:
    """Where a track's clip is stored: in its crops' folder."""
    return f"{safe_name(camera)}/{int(track_id)}/{CLIP_NAME}"


def _check_relative(rel: str) -> str:
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        raise CropStoreError(f"invalid crop path {rel!r}")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise CropStoreError(f"crop path {rel!r} is outside the crop store")
    return norm


class CropStore:
    """Writes crops as JPEG and reads them back by relative path.

    ``root`` is a directory; ``url`` (optional) an fsspec URL that replaces it as the root.
    """

    def __init__(self, root: Path, jpeg_quality: int = 90, url: str | None = None) -> None:
        self.jpeg_quality = jpeg_quality
        self.url = url
        if url:
            import fsspec

            self._fs, self._base = fsspec.core.url_to_fs(url)
            self.root = Path(root).resolve()  # unused for object stores; kept for display
        else:
            self._fs = None
            self.root = Path(root).resolve()
            self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_config(cls, cfg: RefindConfig) -> CropStore:
        """The crop store of a deployment: ``blobs.url`` if set, else ``<data_dir>/crops``."""
        return cls(cfg.data_dir / "crops", cfg.crops.jpeg_quality, cfg.blobs.url)

    def put(self, camera: str, track_id: int, frame_index: int, image: np.ndarray,
            jpeg: bytes = b"", context: bytes = b"") -> str:
        """Store one crop (its ``jpeg`` bytes as they are, else ``image`` encoded) and, when
        given, the JPEG of its downscaled frame beside it (``context_path``); returns the
        crop's path relative to the root."""
        rel = f"{safe_name(camera)}/{int(track_id)}/{int(frame_index):06d}.jpg"
        if not jpeg:
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise CropStoreError(f"could not encode crop {rel} as JPEG")
            jpeg = buf.tobytes()
        if context:  # first, so a crop that is stored always has its context
            self._write(context_path(rel), context)
        self._write(rel, jpeg)
        return rel

    def put_clip(self, camera: str, track_id: int, data: bytes) -> str:
        """Store a track's MP4 clip (``refind.streaming.clips``); returns its relative path."""
        rel = clip_path(camera, track_id)
        self._write(rel, data)
        return rel

    def exists(self, rel: str) -> bool:
        try:
            if self._fs is not None:
                return bool(self._fs.exists(f"{self._base}/{_check_relative(rel)}"))
            return self.resolve(rel).is_file()
        except CropStoreError:
            return False

    def _write(self, rel: str, data: bytes) -> None:
        if self._fs is not None:
            key = f"{self._base}/{rel}"
            try:
                self._fs.pipe_file(key, data)
            except FileNotFoundError:  # filesystems with folders (file://) need them made
                self._fs.makedirs(posixpath.dirname(key), exist_ok=True)
                self._fs.pipe_file(key, data)
            return
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        suffix = posixpath.splitext(rel)[1]
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-", suffix=suffix)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CropStoreFull(
                    err.errno, f"the crop store at {self.root} is full ({err.strerror}): "
                    "free space there or give it a bigger volume (blobs.url); crops are not "
                    "stored until then") from err
            raise

    def resolve(self, rel: str) -> Path:
        """Absolute path of a stored crop (local roots); refuses any escape from the root."""
        norm = _check_relative(rel)
        path = (self.root / norm).resolve()
        if not path.is_relative_to(self.root):
            raise CropStoreError(f"crop path {rel!r} is outside the crop store")
        return path

    def location(self, rel: str) -> str:
        """Where a crop lives, for people and events: a local path or the object's URL."""
        if self._fs is not None:
            return f"{self.url.rstrip('/')}/{_check_relative(rel)}"  # type: ignore[union-attr]
        return str(self.resolve(rel))

    def read_bytes(self, rel: str) -> bytes:
        """The stored JPEG bytes of a crop."""
        try:
            if self._fs is not None:
                return self._fs.cat_file(f"{self._base}/{_check_relative(rel)}")
            return self.resolve(rel).read_bytes()
        except (FileNotFoundError, OSError) as err:
            raise CropStoreError(f"crop {rel!r} is missing: {err}") from None

    def delete(self, rel: str) -> bool:
        """Delete a stored crop and its context frame; False if the crop was already gone."""
        if rel.endswith(".jpg") and not rel.endswith(CONTEXT_SUFFIX):
            self._delete(context_path(rel))
        return self._delete(rel)

    def delete_clip(self, camera: str, track_id: int) -> bool:
        """Delete a track's clip; False if it had none."""
        return self._delete(clip_path(camera, track_id))

    def _delete(self, rel: str) -> bool:
        try:
            if self._fs is not None:
                self._fs.rm_file(f"{self._base}/{_check_relative(rel)}")
            else:
                self.resolve(rel).unlink()
        except FileNotFoundError:
            return False
        return True

    def read(self, rel: str) -> np.ndarray:
        data = self.read_bytes(rel)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise CropStoreError(f"crop {rel!r} is not an image")
        return image
