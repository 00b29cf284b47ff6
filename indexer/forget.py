"""Forgetting a track: its crops, vectors, metadata and a tombstone that keeps it forgotten.

``forget_track`` works through every gallery shard and every model stored there: it deletes the
track's rows from SQLite and its vectors from the FAISS index (``GalleryStore.remove_track``,
saved at once), records the track in ``forgotten_tracks`` so that a replayed event or a late crop
is refused, then deletes the crop files and the Redis track metadata (when metadata is in Redis).
Before any of that, a ``ForgetEvent`` tombstone goes into the durable record
(``refind.indexer.record``: the local journal, and ``<prefix>.forget`` when Kafka is enabled).
Every index version's shards are reached (``refind.indexer.versions``). SQLite goes before the
files: a crash part way leaves at most orphan files, never a row that points at nothing.

Example:
    >>> report = forget_track(cfg, "gate", 7, reason="erasure request")  # doctest: +SKIP
    >>> report.crops_deleted
    5
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from refind.config import RefindConfig
from refind.indexer.blobs import CropStore
from refind.indexer.evidence import EvidenceStore
from refind.indexer.gallery_store import GalleryStore, lock_gallery
from refind.indexer.identity_state import forget_identities
from refind.indexer.metadata import SqliteMetadata, StoredModel
from refind.indexer.record import EventRecord
from refind.indexer.shards import shard_number
from refind.indexer.versions import all_version_shards
from refind.streaming.events import ForgetEvent
from refind.streaming.records import CropRecord

log = logging.getLogger(__name__)


class UnknownTrackError(ValueError):
    """No gallery shard holds the track asked for."""


@dataclass(frozen=True)
class ForgetReport:
    """What ``forget_track`` removed: vector ids per shard, files, Redis, the tombstone event."""

    camera: str
    track_id: int
    vector_ids: dict[int, tuple[int, ...]]
    crops_deleted: int
    redis_removed: bool
    event_published: bool

    def to_json(self) -> dict[str, object]:
        return {
            "camera": self.camera, "track_id": self.track_id,
            "vector_ids": {str(s): list(v) for s, v in self.vector_ids.items()},
            "crops_deleted": self.crops_deleted, "redis_removed": self.redis_removed,
            "event_published": self.event_published,
        }


def shard_models(shard: Path) -> list[StoredModel]:
    """Every model with vectors in a shard."""
    with SqliteMetadata(shard / "metadata.sqlite3") as meta:
        return meta.models()


def model_stores(cfg: RefindConfig, shard: Path) -> Iterator[GalleryStore]:
    """A writable GalleryStore per model of a shard, one open at a time (one writer lock)."""
    for model_id, dim in shard_models(shard):
        with GalleryStore(shard, cfg.gallery, model_id, dim) as store:
            yield store


def delete_files(crops: CropStore, records: list[CropRecord],
                 evidence: EvidenceStore | None = None) -> int:
    """Delete the crop files of ``records`` (shared by every model's row of a crop) with their
    context views, what text search read from them (``evidence``), and their tracks' clips (a
    clip shows the whole track: it goes with the first of its crops); returns crops deleted."""
    paths = sorted({r.crop_path for r in records})
    if evidence is not None:
        evidence.forget_paths(paths)
    for camera, track_id in sorted({(r.camera, r.track_id) for r in records}):
        crops.delete_clip(camera, track_id)
    return sum(crops.delete(path) for path in paths)


def _known(shard: Path, camera: str, track_id: int) -> tuple[bool, bool, list[int]]:
    """(has the track, has forgotten it, its vector ids of every model) in one shard."""
    with SqliteMetadata(shard / "metadata.sqlite3") as meta:
        ids = [v for m in meta.models() for v in meta.track_vector_ids(camera, track_id, m.model_id)]
        return meta.track(camera, track_id) is not None, meta.is_forgotten(camera, track_id), ids


def forget_track(cfg: RefindConfig, camera: str, track_id: int, reason: str = "") -> ForgetReport:
    """Delete every trace of one track and keep it forgotten; UnknownTrackError if none holds it.

    The tombstone goes into the durable record first (as ``GalleryStore.add`` records crops
    before it stores them): a crash part way leaves the track forgotten for ``refind rebuild``.
    Forgetting a forgotten track again deletes what is left.
    """
    shards = all_version_shards(cfg.data_dir)  # every index version holds the crop
    known = {s: _known(s, camera, track_id) for s in shards}
    if not any(has or gone for has, gone, _ in known.values()):
        raise UnknownTrackError(
            f"camera {camera!r} has no track {track_id} in {cfg.data_dir} "
            f"({len(shards)} gallery shard(s))"
        )
    found: dict[int, set[int]] = {}  # a crop keeps its id in every version: one set per number
    for shard, (_, _, ids) in known.items():
        if ids:
            found.setdefault(shard_number(shard), set()).update(ids)
    vector_ids = {n: tuple(sorted(ids)) for n, ids in sorted(found.items())}
    for shard in shards:  # a live writer holds a shard: refuse before any tombstone is written
        os.close(lock_gallery(shard))
    published = _record(cfg, ForgetEvent(
        camera=camera, ts_ns=time.time_ns(), track_id=track_id,
        vector_ids=tuple(sorted(v for ids in found.values() for v in ids)), reason=reason,
    ))
    crops = CropStore.from_config(cfg)
    evidence = EvidenceStore.in_data_dir(cfg.data_dir)
    deleted = 0
    for shard in shards:
        removed: list[CropRecord] = []
        for store in model_stores(cfg, shard):
            removed += store.remove_track(camera, track_id, forget=True)
        deleted += delete_files(crops, removed, evidence)
    redis_removed = _forget_in_redis(cfg, camera, track_id, vector_ids)
    forget_identities(cfg.data_dir, camera, track_id)  # its mean vector and global id too
    log.info("forgot track %s/%d: %d vectors, %d crop files", camera, track_id,
             sum(len(v) for v in vector_ids.values()), deleted)
    return ForgetReport(camera, int(track_id), vector_ids, deleted, redis_removed, published)


def _forget_in_redis(cfg: RefindConfig, camera: str, track_id: int,
                     vector_ids: dict[int, tuple[int, ...]]) -> bool:
    if cfg.metadata.type != "redis":
        return False
    from refind.indexer.redis_meta import RedisMetadata

    client = RedisMetadata(cfg.metadata)  # type: ignore[arg-type]
    try:
        return client.remove_track(camera, track_id, vector_ids)
    finally:
        client.close()


def _record(cfg: RefindConfig, event: ForgetEvent) -> bool:
    """Append the tombstone to the durable record; True when Kafka took it too."""
    record = EventRecord.open(cfg)
    try:
        record.append([event])
        return record.bus is not None and record.flush()
    finally:
        record.close()
