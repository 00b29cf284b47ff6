"""Image search: embed the query person, search crops, aggregate crop hits into ranked tracklets.

Filters (cameras, time window) are applied inside the FAISS search, so a narrow filter still
returns k tracklets when they exist, at any gallery size.

Example:
    >>> engine = SearchEngine(cfg.search, embedder, gallery)                 # doctest: +SKIP
    >>> engine.search_image(ImageQuery(image=crop, k=5))[0].track_id          # doctest: +SKIP
    3
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from indexer.gallery_store import GalleryStore
from indexer.shards import ShardedGallery
from models.base import ReidEmbedder
from streaming.config import SearchConfig
from streaming.records import CropRecord, ImageQuery, TrackletHit

log = logging.getLogger(__name__)

MAX_QUERY_IMAGE_BYTES = 20 * 1024 * 1024
MAX_QUERY_IMAGE_SIDE = 8192


class QueryError(ValueError):
    """A query that cannot be run (bad image, bad filters); the message says what is wrong."""


def decode_query_image(data: bytes, what: str = "query image") -> np.ndarray:
    """Decode JPEG/PNG/BMP/WebP bytes into (h, w, 3) uint8 BGR, or raise QueryError."""
    if not data:
        raise QueryError(f"{what} is empty")
    if len(data) > MAX_QUERY_IMAGE_BYTES:
        raise QueryError(
            f"{what} is {len(data) / 1e6:.1f} MB; at most {MAX_QUERY_IMAGE_BYTES // 2**20} MiB"
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise QueryError(f"{what} is not an image (JPEG, PNG, BMP or WebP expected)")
    if max(image.shape[:2]) > MAX_QUERY_IMAGE_SIDE:
        raise QueryError(f"{what} is {image.shape[1]}x{image.shape[0]}; too large")
    return image


def read_query_image(path: str | Path) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise QueryError(f"query image not found: {p}")
    return decode_query_image(p.read_bytes(), f"query image {p}")


def _aggregate(scores: list[float], how: str) -> float:
    best = sorted(scores, reverse=True)
    if how == "max" or len(best) == 1:
        return best[0]
    return float(np.mean(best[:2]))


class SearchEngine:
    """Answers image queries against one gallery with one embedder (the gallery's model)."""

    def __init__(
        self, cfg: SearchConfig, embedder: ReidEmbedder, gallery: GalleryStore | ShardedGallery
    ) -> None:
        if embedder.model_id != gallery.model_id:
            raise QueryError(
                f"embedder {embedder.model_id} cannot search a gallery of {gallery.model_id}"
            )
        self.cfg = cfg
        self.embedder = embedder
        self.gallery = gallery

    def search_image(self, query: ImageQuery) -> list[TrackletHit]:
        vector = self.embedder([query.image]).vectors  # (1, D)
        return self.search_vector(vector, query)

    def search_vector(self, vector: np.ndarray, query: ImageQuery) -> list[TrackletHit]:
        k_crops = query.k * self.cfg.overfetch
        [hits] = self.gallery.search(
            vector,
            k_crops,
            cameras=query.cameras,
            start_ts_ns=query.start_ts_ns,
            end_ts_ns=query.end_ts_ns,
        )
        return self._tracklets(hits)[: query.k]

    def _tracklets(self, hits: list[tuple[CropRecord, float]]) -> list[TrackletHit]:
        groups: dict[tuple[str, int], list[tuple[CropRecord, float]]] = defaultdict(list)
        for record, score in hits:
            groups[(record.camera, record.track_id)].append((record, score))
        out = []
        for (camera, track_id), members in groups.items():
            best_record, _ = max(members, key=lambda m: m[1])
            summary = self.gallery.track(camera, track_id)
            out.append(
                TrackletHit(
                    camera=camera,
                    track_id=track_id,
                    score=_aggregate([s for _, s in members], self.cfg.aggregation),
                    start_ts_ns=summary.start_ts_ns if summary else best_record.ts_ns,
                    end_ts_ns=summary.end_ts_ns if summary else best_record.ts_ns,
                    n_crops=summary.n_crops if summary else len(members),
                    best_frame_index=best_record.frame_index,
                    best_xyxy=best_record.xyxy,
                    thumbnail=best_record.crop_path,
                )
            )
        out.sort(key=lambda h: h.score, reverse=True)
        return out
