"""refind: find any person across many camera streams.

The project's top-level folders are this package's subpackages (``refind.streaming``,
``refind.models``, ``refind.indexer``, ``refind.actors``, ``refind.app``, ``refind.training``,
``refind.datasets``, ``refind.evaluation``), mapped by ``pyproject.toml``'s ``package-dir``, so an
install puts the one name ``refind`` in site-packages. Importing this package loads nothing
heavy; the records every stage passes on are here for convenience.

Example:
    >>> import refind
    >>> refind.SearchFilter(cameras=("gate",)).narrows
    True
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from refind.streaming.records import (
    Crop,
    CropHit,
    CropRecord,
    Detections,
    Embeddings,
    Frame,
    ImageQuery,
    SearchFilter,
    TextQuery,
    TrackletHit,
    Tracks,
    TrackSpan,
)

try:
    __version__ = version("refind")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Crop", "CropHit", "CropRecord", "Detections", "Embeddings", "Frame", "ImageQuery",
    "SearchFilter", "TextQuery", "TrackSpan", "TrackletHit", "Tracks", "__version__",
]  # fmt: skip
