"""Index writer actor: owns one gallery shard (SQLite + FAISS) of the version live cameras feed.

A writer writes shard ``shard`` of one index version (``indexer/versions.py``) and takes only
embeddings of that version's model: others are refused with ``StaleModelError`` before anything
is stored, and the camera re-embeds or waits (``actors/camera.py``). ``switch`` moves the writer
to another version when the serving alias changes:

1. open the new version's shard (its writer lock; if that fails, the old one stays open);
2. catch up: crops the old version holds past the new one's newest row (stored after the
   re-index's last pass, until this call) are read from the crop store, embedded by the new
   version's embedder pool and copied into the new version under their own vector ids;
3. raise the new version's id floor above every id the old one handed out, then close the old.

The actor runs one call at a time, so no crop reaches the old version after step 1 and none gets
an id in the new one before step 3: a crop is stored exactly once per version, and an id the new
version hands out can never name a crop of the old one (ids stay collision-free across versions).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.actor import ActorHandle

from refind.actors.pools import Pool, PoolEmbedder
from refind.actors.runtime import node_id
from refind.config import RefindConfig
from refind.indexer.gallery_store import GalleryStore
from refind.indexer.identity_service import crop_news
from refind.indexer.metadata import TrackSummary
from refind.indexer.reindex import EmbedCrops, embed_copies
from refind.indexer.shards import merge_recent_keys, merge_shard_hits, shard_dir
from refind.indexer.sink import open_sink
from refind.streaming.clips import TrackClip
from refind.streaming.records import (
    NO_FILTER,
    Crop,
    CropHit,
    CropRecord,
    Embeddings,
    SearchFilter,
    TrackSpan,
)

log = logging.getLogger(__name__)

CATCH_UP_BATCH = 64


class StaleModelError(ValueError):
    """Embeddings of a model other than the one of the version this writer writes."""


@ray.remote
class IndexWriterActor:
    """Adds crops to shard ``shard`` of the version under ``root`` and answers searches on it.

    Example:
        >>> w = IndexWriterActor.remote(cfg, 0, str(cfg.data_dir), "reid-0277@ab", 256)  # doctest: +SKIP
        >>> ray.get(w.switch.remote(str(new_root), "reid-0288@cd", 256, embedders))       # doctest: +SKIP
        {'model_id': 'reid-0288@cd', 'caught_up': 12, 'failed': 0, 'id_floor': 4711}
    """

    def __init__(self, cfg: RefindConfig, shard: int, root: str, model_id: str, dim: int,
                 identity: ActorHandle | None = None) -> None:
        self._cfg = cfg
        self._identity = identity  # told of every crop stored and track ended (fire and forget)
        self._shard = shard
        self._root = Path(root)
        # the durable record (journal, and Kafka when on) and Redis: the same as `refind ingest`
        self._sink = open_sink(cfg, model_id, dim, self._root, shard)
        self._last_save = time.monotonic()
        self._caught_up = 0
        self._ended = 0

    @property
    def _gallery(self) -> GalleryStore:
        return self._sink.gallery

    def max_track_id(self, camera: str) -> int:
        return self._sink.max_track_id(camera)

    def version(self) -> tuple[str, str]:
        """(root, model_id) of the version this writer writes."""
        return str(self._root), self._gallery.model_id

    def add(self, crops: list[Crop], embeddings: Embeddings) -> list[CropRecord]:
        """Store crops and vectors (recorded, one transaction); saved every few seconds."""
        if embeddings.model_id != self._gallery.model_id:  # before any JPEG is written
            raise StaleModelError(
                f"shard {self._shard} writes version {self._gallery.model_id}; embeddings of "
                f"{embeddings.model_id} are refused (re-embed with the serving model)"
            )
        records = self._sink.store(crops, embeddings)
        if self._identity is not None and records:
            self._identity.crops.remote(crop_news(crops, embeddings, records))
        self._save_due()
        return records

    def end_tracks(self, spans: list[TrackSpan]) -> int:
        """Tracks ended after their crops were stored: recorded with their crops, spans kept."""
        self._ended += len(self._sink.end_tracks(spans))
        if self._identity is not None and spans:
            self._identity.ended.remote(spans)
        self._save_due()
        return len(spans)

    def put_clip(self, clip: TrackClip) -> str | None:
        """Store an ended track's clip beside its crops (refused for a forgotten track)."""
        return self._sink.put_clip(clip)

    def _save_due(self) -> None:
        if time.monotonic() - self._last_save >= self._cfg.serve.save_interval_s:
            self.save()

    def switch(self, root: str, model_id: str, dim: int, embedders: list[ActorHandle]) -> dict[str, Any]:
        """Write the version under ``root`` (model ``model_id``) from now on; ``embedders`` is
        that model's pool, for the catch-up. Idempotent: a writer already there only reports."""
        old = self._gallery
        if Path(root) == self._root and model_id == old.model_id:
            return self._switch_report(0, 0)
        record = self._sink.record
        new = GalleryStore(shard_dir(Path(root), self._shard), self._cfg.gallery, model_id, dim,
                           record=record)
        try:
            old.save()
            copied, failed = self._catch_up(old, new, embedders)
            if copied and new.refresh() < copied:
                # a copy fell at or below the FAISS view's newest id (removed rows): reopening
                # without a save rebuilds the view from SQLite
                log.warning("shard %d: rebuilding the %s FAISS view after the catch-up",
                            self._shard, model_id)
                new.close()
                new = GalleryStore(shard_dir(Path(root), self._shard), self._cfg.gallery,
                                   model_id, dim, record=record)
            new.metadata.raise_id_floor(old.next_vector_id())  # ids above all of the old's
            new.save()
        except BaseException:
            new.close()
            raise
        old.close()
        self._sink.gallery, self._root = new, Path(root)
        self._caught_up += copied
        self._last_save = time.monotonic()
        log.info("shard %d now writes %s in %s (%d crops caught up, %d unreadable)",
                 self._shard, model_id, root, copied, failed)
        return self._switch_report(copied, failed)

    def _switch_report(self, copied: int, failed: int) -> dict[str, Any]:
        return {"model_id": self._gallery.model_id, "root": str(self._root), "caught_up": copied,
                "failed": failed, "id_floor": self._gallery.next_vector_id()}

    def _catch_up(
        self, old: GalleryStore, new: GalleryStore, embedders: list[ActorHandle]
    ) -> tuple[int, int]:
        """Copy the old version's crops newer than the new one's newest row, re-embedded by
        ``embedders``, with their track spans; returns (crops copied, crops unreadable)."""
        src, dst = old.metadata, new.metadata
        newest = dst.max_vector_id(new.model_id)  # -1 when it has none
        ids = src.vector_ids(old.model_id)  # sorted; the new version holds none above newest
        todo = ids[ids > newest]
        copied = failed = 0
        if len(todo):
            embed = EmbedCrops(self._cfg, PoolEmbedder(Pool(embedders), new.model_id, new.dim))
            for start in range(0, len(todo), CATCH_UP_BATCH):
                found = src.crops_found(todo[start : start + CATCH_UP_BATCH].tolist())
                recs = [replace(found[v], model_id=new.model_id) for v in sorted(found)]
                added, bad = embed_copies(embed, dst, recs)
                for vid, err in bad.items():
                    log.warning("shard %d catch-up: crop %d skipped: %s", self._shard, vid, err)
                copied += added
                failed += len(bad)
        dst.set_track_spans(src.track_spans())  # recorded already, when the tracks ended
        dst.mark_forgotten(src.forgotten())
        return copied, failed

    def save(self) -> None:
        self._gallery.save()
        self._last_save = time.monotonic()

    def search(
        self, vectors: np.ndarray, k_crops: int, filt: SearchFilter = NO_FILTER
    ) -> list[list[CropHit]]:
        return self._gallery.search(vectors, k_crops, filt)

    def count_tracks(self, limit: int, filt: SearchFilter = NO_FILTER) -> int:
        return self._gallery.count_tracks(limit, filt)

    def recent_track_keys(self, limit: int, filt: SearchFilter = NO_FILTER
                          ) -> list[tuple[int, str, int]]:
        return self._gallery.recent_track_keys(limit, filt)

    def tracks(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], TrackSummary]:
        return self._gallery.tracks(keys)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: vectors searchable, crops added, tracks ended, crops caught up
        in switches, and the Kafka delivery of the record's events (zeros without Kafka)."""
        bus = self._sink.record.stats() if self._sink.record is not None else None
        return {"vectors": len(self._gallery), "added": self._sink.stored,
                "ended": self._ended, "caught_up": self._caught_up,
                "events_published": bus.accepted if bus else 0,
                "events_sent": bus.sent if bus else 0, "events_failed": bus.failed if bus else 0,
                "pid": os.getpid(), "node_id": node_id()}

    def close(self) -> dict[str, Any]:
        """Save, flush the record's Kafka events, close; the final stats."""
        self._sink.close()
        return self.stats()


class WriterGallery:
    """All index writers seen as one gallery (``refind.indexer.search.Gallery``): searches fan out
    and merge by score."""

    def __init__(self, writers: list[ActorHandle], model_id: str) -> None:
        self._writers, self.model_id = writers, model_id

    def search(
        self, vectors: np.ndarray, k_crops: int, filt: SearchFilter = NO_FILTER
    ) -> list[list[CropHit]]:
        refs = [w.search.remote(vectors, k_crops, filt) for w in self._writers]
        return merge_shard_hits(ray.get(refs), k_crops)

    def count_tracks(self, limit: int, filt: SearchFilter = NO_FILTER) -> int:
        return min(limit, sum(ray.get([w.count_tracks.remote(limit, filt)
                                       for w in self._writers])))

    def recent_track_keys(self, limit: int, filt: SearchFilter = NO_FILTER
                          ) -> list[tuple[int, str, int]]:
        return merge_recent_keys(
            ray.get([w.recent_track_keys.remote(limit, filt) for w in self._writers]), limit)

    def tracks(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], TrackSummary]:
        """Summaries of the known tracks among ``keys``: one call to every writer."""
        found: dict[tuple[str, int], TrackSummary] = {}
        for rows in ray.get([w.tracks.remote(list(keys)) for w in self._writers]):
            for key, summary in rows.items():
                found.setdefault(key, summary)
        return found
