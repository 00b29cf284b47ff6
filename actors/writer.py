"""Index writer actor: owns one gallery shard (SQLite + FAISS) and the crops written to it."""

from __future__ import annotations

import logging
import time

import numpy as np
import ray

from indexer.blobs import CropStore
from indexer.gallery_store import GalleryStore
from indexer.ingest import store_crops
from indexer.metadata import TrackSummary
from indexer.shards import shard_dir
from streaming.config import RefindConfig
from streaming.records import Crop, CropRecord, Embeddings

log = logging.getLogger(__name__)


@ray.remote
class IndexWriterActor:
    """Adds crops to shard ``shard`` and answers searches on it with the freshest index."""

    def __init__(self, cfg: RefindConfig, shard: int, model_id: str, dim: int) -> None:
        self._cfg = cfg
        self._gallery = GalleryStore(shard_dir(cfg.data_dir, shard), cfg.gallery, model_id, dim)
        self._crops = CropStore.from_config(cfg)
        self._last_save = time.monotonic()
        self._added = 0

    def max_track_id(self, camera: str) -> int:
        return self._gallery.max_track_id(camera)

    def add(self, crops: list[Crop], embeddings: Embeddings, id_offset: int) -> list[CropRecord]:
        """Store crops and vectors (one transaction); the shard is saved every few seconds."""
        records = store_crops(crops, embeddings, self._gallery, self._crops, id_offset)
        self._added += len(records)
        if time.monotonic() - self._last_save >= self._cfg.serve.save_interval_s:
            self.save()
        return records

    def set_track_spans(self, camera: str, spans: list[tuple[int, int, int]]) -> None:
        self._gallery.set_track_spans(camera, spans)

    def save(self) -> None:
        self._gallery.save()
        self._last_save = time.monotonic()

    def search(
        self,
        vectors: np.ndarray,
        k_crops: int,
        cameras: tuple[str, ...] = (),
        start_ts_ns: int | None = None,
        end_ts_ns: int | None = None,
    ) -> list[list[tuple[CropRecord, float]]]:
        return self._gallery.search(vectors, k_crops, cameras, start_ts_ns, end_ts_ns)

    def track(self, camera: str, track_id: int) -> TrackSummary | None:
        return self._gallery.track(camera, track_id)

    def stats(self) -> dict[str, int]:
        return {"vectors": len(self._gallery), "added": self._added}

    def close(self) -> None:
        self._gallery.save()
        self._gallery.close()
