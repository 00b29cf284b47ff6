"""Forgetting a track: its crops, vectors, metadata and a tombstone that keeps it forgotten.

``forget_track`` works through every gallery shard and every model stored there: it deletes the
track's rows from SQLite and its vectors from the FAISS index (``GalleryStore.remove_track``,
saved at once), records the track in ``forgotten_tracks`` so that a replayed event or a late crop
is refused, then deletes the crop files, the Redis track metadata (when metadata is in Redis) and
writes a ``ForgetEvent`` tombstone to the local journal and on ``<prefix>.forget`` (when Kafka is
enabled). Every index version's shards are reached (``refind.indexer.versions``). SQLite goes
first: a crash part way leaves at most orphan files, never a row that points at nothing.

Example:
    >>> report = forget_track(cfg, "gate", 7, reason="erasure request")  # doctest: +SKIP
    >>> report.crops_deleted
    5
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from refind.config import RefindConfig
from refind.indexer.blobs import CropStore
from refind.indexer.gallery_store import GalleryStore
from refind.indexer.journal import EventJournal, journal_dir
from refind.indexer.metadata import SqliteMetadata, StoredModel
from refind.indexer.shards import shard_number
from refind.indexer.versions import all_version_shards
from refind.streaming.bus import EventBus
from refind.streaming.events import ForgetEvent
from refind.streaming.records import CropRecord

if TYPE_CHECKING:
    from refind.indexer.redis_meta import RedisMetadata

log = logging.getLogger(__name__)
_FLUSH_S = 30.0  # how long forgetting waits for Kafka to take the tombstone


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


def delete_files(crops: CropStore, records: list[CropRecord]) -> int:
    """Delete the crop files of ``records`` (shared by every model's row of a crop)."""
    return sum(crops.delete(path) for path in sorted({r.crop_path for r in records}))


def _known(shard: Path, camera: str, track_id: int) -> tuple[bool, bool]:
    """(has the track, has forgotten it) in one shard."""
    with SqliteMetadata(shard / "metadata.sqlite3") as meta:
        return meta.track(camera, track_id) is not None, meta.is_forgotten(camera, track_id)


def forget_track(
    cfg: RefindConfig,
    camera: str,
    track_id: int,
    bus: EventBus | None = None,
    redis: RedisMetadata | None = None,
    reason: str = "",
) -> ForgetReport:
    """Delete every trace of one track and keep it forgotten; UnknownTrackError if none holds it.

    ``bus``/``redis``: open clients to use; by default they are made from ``cfg`` when Kafka is
    enabled and metadata is in Redis. Forgetting a forgotten track again deletes what is left.
    """
    shards = all_version_shards(cfg.data_dir)  # every index version holds the crop
    known = {s: _known(s, camera, track_id) for s in shards}
    if not any(has or gone for has, gone in known.values()):
        raise UnknownTrackError(
            f"camera {camera!r} has no track {track_id} in {cfg.data_dir} "
            f"({len(shards)} gallery shard(s))"
        )
    crops = CropStore.from_config(cfg)
    vector_ids: dict[int, tuple[int, ...]] = {}
    deleted = 0
    for shard in shards:
        removed: list[CropRecord] = []
        for store in model_stores(cfg, shard):
            removed += store.remove_track(camera, track_id, forget=True)
        if removed:  # a crop keeps its id in every version: one list per shard number
            n = shard_number(shard)
            vector_ids[n] = tuple(sorted({*vector_ids.get(n, ()), *(r.vector_id for r in removed)}))
        deleted += delete_files(crops, removed)
    redis_removed = _forget_in_redis(cfg, camera, track_id, vector_ids, redis)
    published = _publish(cfg, camera, track_id, vector_ids, reason, bus)
    log.info("forgot track %s/%d: %d vectors, %d crop files", camera, track_id,
             sum(len(v) for v in vector_ids.values()), deleted)
    return ForgetReport(camera, int(track_id), vector_ids, deleted, redis_removed, published)


def _forget_in_redis(cfg: RefindConfig, camera: str, track_id: int,
                     vector_ids: dict[int, tuple[int, ...]], redis: RedisMetadata | None) -> bool:
    if redis is None and cfg.metadata.type != "redis":
        return False
    from refind.indexer.redis_meta import RedisMetadata

    client = redis if redis is not None else RedisMetadata(cfg.metadata)  # type: ignore[arg-type]
    try:
        return client.remove_track(camera, track_id, vector_ids)
    finally:
        if redis is None:
            client.close()


def _publish(cfg: RefindConfig, camera: str, track_id: int,
             vector_ids: dict[int, tuple[int, ...]], reason: str, bus: EventBus | None) -> bool:
    event = ForgetEvent(
        camera=camera, ts_ns=time.time_ns(), track_id=track_id,
        vector_ids=tuple(sorted(v for ids in vector_ids.values() for v in ids)), reason=reason,
    )
    # the local journal too: a rebuild from it must keep the track forgotten
    EventJournal(journal_dir(cfg.data_dir)).append([event])
    if bus is None and not cfg.kafka.enabled:
        return False
    own = bus is None
    client = EventBus(cfg.kafka) if own else bus
    try:
        return client.publish(event) and client.flush(_FLUSH_S)
    finally:
        if own:
            client.close()
