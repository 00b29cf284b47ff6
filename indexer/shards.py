"""Gallery shards: one per index writer, searched together.

Writer ``i`` of ``n`` owns ``<data_dir>/gallery`` (i = 0) or ``<data_dir>/gallery-<i>``; a camera
always goes to the same shard (a stable hash of its name), so its track ids stay in one place.
``ShardedGallery`` opens every shard read-only and answers searches as one gallery.

Example:
    >>> with ShardedGallery.open(Path(".refind"), GalleryConfig(), "reid@1", 256) as g:  # doctest: +SKIP
    ...     hits = g.search(vectors, k_crops=100)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from refind.indexer.config import GalleryConfig
from refind.indexer.gallery_store import GalleryStore
from refind.indexer.metadata import RecentTrack, TrackSummary
from refind.streaming.records import NO_FILTER, CropHit, Embeddings, SearchFilter


def shard_name(shard: int) -> str:
    """The folder name of shard ``shard``: ``gallery`` for 0, else ``gallery-<shard>``."""
    return "gallery" if shard == 0 else f"gallery-{shard}"


def shard_number(shard: Path) -> int:
    """The inverse of ``shard_dir``: 0 for ``gallery``, i for ``gallery-<i>``."""
    return 0 if shard.name == "gallery" else int(shard.name.rsplit("-", 1)[1])


def shard_dir(data_dir: Path, shard: int) -> Path:
    return data_dir / shard_name(shard)


def shard_of(camera: str, n_shards: int) -> int:
    """The shard a camera writes to: a stable hash of its name (same on every node and run)."""
    return zlib.crc32(camera.encode()) % n_shards


def merge_recent_keys(per_shard: Sequence[Sequence[tuple[int, str, int]]],
                      limit: int) -> list[tuple[int, str, int]]:
    """The ``limit`` most recent (last crop time, camera, track id) of several shards' lists."""
    found = [k for rows in per_shard for k in rows]
    found.sort(key=lambda k: (-k[0], k[1], k[2]))
    return found[:limit]


def merge_shard_hits(
    per_shard: Sequence[list[list[CropHit]]], k_crops: int
) -> list[list[CropHit]]:
    """Per query, the ``k_crops`` best hits over all shards' answers, best first."""
    merged = []
    for rows in zip(*per_shard, strict=True):
        hits = sorted((hit for row in rows for hit in row), key=lambda h: h.score, reverse=True)
        merged.append(hits[:k_crops])
    return merged


def existing_shards(data_dir: Path) -> list[Path]:
    """The shard folders of ``data_dir`` that hold a gallery, sorted."""
    return [p for p in sorted(data_dir.glob("gallery*")) if (p / "metadata.sqlite3").exists()]


class ShardedGallery:
    """Read-only view over several gallery shards of one model, with GalleryStore's search API."""

    def __init__(self, shards: Sequence[GalleryStore]) -> None:
        if not shards:
            raise ValueError("no gallery shard to search")
        self.shards = list(shards)
        self.model_id = shards[0].model_id
        self.dim = shards[0].dim

    @classmethod
    def open(cls, data_dir: Path, cfg: GalleryConfig, model_id: str, dim: int) -> ShardedGallery:
        dirs = existing_shards(data_dir) or [shard_dir(data_dir, 0)]
        opened: list[GalleryStore] = []
        try:
            for d in dirs:
                opened.append(GalleryStore(d, cfg, model_id, dim, read_only=True))
        except BaseException:
            for g in opened:
                g.close()
            raise
        return cls(opened)

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def refresh(self) -> int:
        """Pick up rows the writers committed since the last look."""
        return sum(s.refresh() for s in self.shards)

    def cameras(self) -> list[str]:
        """Cameras with at least one stored track in any shard, sorted."""
        return sorted({c for shard in self.shards for c in shard.metadata.cameras()})

    def search(
        self, query_vectors: Embeddings | np.ndarray, k_crops: int,
        filt: SearchFilter = NO_FILTER,
    ) -> list[list[CropHit]]:
        per_shard = [s.search(query_vectors, k_crops, filt) for s in self.shards]
        return merge_shard_hits(per_shard, k_crops)

    def recent_tracks(self, limit: int, filt: SearchFilter = NO_FILTER) -> list[RecentTrack]:
        """The ``limit`` most recently seen tracks over all shards (``GalleryStore``'s)."""
        found = [t for s in self.shards for t in s.recent_tracks(limit, filt)]
        found.sort(key=lambda t: (-t.last_crop_ts_ns, t.summary.camera, t.summary.track_id))
        return found[:limit]

    def count_tracks(self, limit: int, filt: SearchFilter = NO_FILTER) -> int:
        """Tracks within the filter over all shards (a camera's tracks live in one shard),
        counted up to ``limit``."""
        total = 0
        for s in self.shards:
            total += s.count_tracks(limit - total, filt)
            if total >= limit:
                break
        return total

    def recent_track_keys(self, limit: int, filt: SearchFilter = NO_FILTER
                          ) -> list[tuple[int, str, int]]:
        """(last crop time, camera, track id) of ``recent_tracks``, without summaries."""
        return merge_recent_keys([s.recent_track_keys(limit, filt) for s in self.shards], limit)

    def track(self, camera: str, track_id: int) -> TrackSummary | None:
        return self.tracks([(camera, track_id)]).get((camera, track_id))

    def tracks(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], TrackSummary]:
        """Summaries of the known tracks among ``keys``, from whichever shard holds each."""
        found: dict[tuple[str, int], TrackSummary] = {}
        for s in self.shards:
            found |= s.tracks([k for k in keys if k not in found])
        return found

    def close(self) -> None:
        for s in self.shards:
            s.close()

    def __enter__(self) -> ShardedGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
