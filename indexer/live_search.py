"""Search a gallery that another process is still writing: one embedder, shards re-read per query.

``LiveSearch`` holds the query embedder (loaded once) and a read-only ``ShardedGallery``. Before
every query it picks up rows the writers committed since the last one (``refresh``), and reopens
the shards when a new one has appeared. It is safe to call from many threads: the embedder and
the gallery are each used by one thread at a time (the gallery by its own thread, since its
SQLite connections belong to the thread that opened them), so one query's embedding overlaps
another's FAISS search.

Example:
    >>> live = LiveSearch.from_config(load_config(None))                       # doctest: +SKIP
    >>> result = live.search(ImageQuery(image=photo, k=5))                     # doctest: +SKIP
    >>> result.hits[0].track_id, result.took_ms["embed"]                       # doctest: +SKIP
    (3, 11.2)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from refind.config import RefindConfig
from refind.indexer.blobs import CropStore
from refind.indexer.config import GalleryConfig, SearchConfig
from refind.indexer.evidence import EvidenceStore
from refind.indexer.forget import ForgetReport, forget_track
from refind.indexer.metadata import TrackSummary
from refind.indexer.rerank import RerankerPool
from refind.indexer.search import QueryError, Ranked, SearchEngine, embed_image_query
from refind.indexer.shards import ShardedGallery, existing_shards
from refind.indexer.versions import registry_stamp, serving_version
from refind.models.base import ReidEmbedder
from refind.models.registry import build_embedder
from refind.models.store import ModelStore
from refind.streaming.records import (
    CropRecord,
    ImageQuery,
    SearchFilter,
    TextQuery,
    TrackletHit,
)

T = TypeVar("T")
OVERVIEW_TTL_S = 5.0  # how long the cameras' newest tracks are reused
SIMILAR_SEEDS = 4  # stored crops of a track whose mean vector seeds "find similar"
log = logging.getLogger(__name__)


class GalleryUnavailable(RuntimeError):
    """No gallery has been written under the data directory yet."""


@dataclass(frozen=True)
class SearchResult:
    """Ranked tracklets of one query and the milliseconds each step took."""

    hits: list[TrackletHit]
    took_ms: dict[str, float] = field(default_factory=dict)
    message: str | None = None  # "no tracklet matches ...", or a bounded text scan
    details: dict[str, object] = field(default_factory=dict)  # reranker, task, scanned_tracks
    best: TrackletHit | None = None  # no hits: the nearest miss the message names


def _result(ranked: Ranked, took: dict[str, float]) -> SearchResult:
    details: dict[str, object] = {"reranker": ranked.reranker, "task": ranked.task}
    if ranked.scanned_tracks is not None:
        details |= {"scanned_tracks": ranked.scanned_tracks, "scan_bounded": ranked.scan_bounded}
    if ranked.understood is not None:
        details["understood"] = ranked.understood
    return SearchResult(ranked.hits, took, ranked.message, details, ranked.best)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1e3, 2)


class LiveSearch:
    """Image search, track and camera look-ups over the shards under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        gallery_cfg: GalleryConfig,
        search_cfg: SearchConfig,
        embedder: ReidEmbedder,
        cfg: RefindConfig | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        # with the deployment's config, searches follow the serving alias (refind.indexer.versions)
        self._cfg = cfg
        self._stamp = registry_stamp(self.data_dir) if cfg is not None else None
        self._root = serving_version(cfg).root if cfg is not None else self.data_dir
        self.gallery_cfg = gallery_cfg
        self.search_cfg = search_cfg
        self.embedder = embedder
        # re-rankers (loaded on first use) read candidates' crops; both need the full config
        self._crops = CropStore.from_config(cfg) if cfg is not None else None
        self._rerankers: RerankerPool | None = None
        self._embed_lock = threading.Lock()
        # every gallery call runs on this one thread: SQLite connections are bound to theirs
        self._gallery_thread = ThreadPoolExecutor(1, thread_name_prefix="live-gallery")
        self._gallery: ShardedGallery | None = None
        self._overview: tuple[float, list[dict[str, object]]] | None = None
        self._shard_dirs: list[Path] = []

    @classmethod
    def from_config(cls, cfg: RefindConfig) -> LiveSearch:
        """Load the configured embedder (weights checked) for ``cfg.data_dir``'s gallery."""
        serving = serving_version(cfg)
        embedder = build_embedder(serving.cfg.embedder, ModelStore.from_config(cfg.models))
        return cls(cfg.data_dir, cfg.gallery, cfg.search, embedder, cfg)

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    def embed_photo(self, query: ImageQuery) -> tuple[np.ndarray, str]:
        """The (1, D) vector of ``query``'s photo (with its instruction) and its model_id."""
        with self._embed_lock:
            vector, _ = embed_image_query(self.embedder, query)
            return vector, self.embedder.model_id

    def _on_gallery_thread(self, fn: Callable[[], T]) -> T:
        return self._gallery_thread.submit(fn).result()

    def _follow_alias(self) -> None:
        """Switch embedder and root when the serving alias has changed (gallery thread).

        One stat per query; on a change the new embedder is loaded before anything is swapped,
        so a query in flight is answered by the old version or the new one, never fails."""
        if self._cfg is None:
            return
        stamp = registry_stamp(self.data_dir)
        if stamp == self._stamp:
            return
        serving = serving_version(self._cfg)
        if serving.root != self._root or serving.model_id != self.embedder.model_id:
            embedder = self.embedder
            if serving.model_id is not None and serving.model_id != embedder.model_id:
                embedder = build_embedder(serving.cfg.embedder, ModelStore.from_config(self._cfg.models))
            with self._embed_lock:
                self.embedder = embedder
            self._root = serving.root
            if self._gallery is not None:
                self._gallery.close()
                self._gallery = None
            log.info("searches now use version %s in %s", embedder.model_id, serving.root)
        self._stamp = stamp

    def _current(self) -> ShardedGallery:
        """The gallery with every committed row (call on the gallery thread)."""
        self._follow_alias()
        dirs = existing_shards(self._root)
        if not dirs:
            raise GalleryUnavailable(
                f"no gallery in {self.data_dir} yet: run `refind ingest` or `refind serve` first"
            )
        if self._gallery is None or dirs != self._shard_dirs:
            if self._gallery is not None:
                self._gallery.close()
                self._gallery = None
            self._gallery = ShardedGallery.open(
                self._root, self.gallery_cfg, self.embedder.model_id, self.embedder.dim
            )
            self._shard_dirs = dirs
        else:
            self._gallery.refresh()
        return self._gallery

    def search(self, query: ImageQuery) -> SearchResult:
        """Rank tracklets like the person in ``query.image``, within its filters."""
        t0 = time.perf_counter()
        with self._embed_lock:
            embedder = self.embedder
            vector, task = embed_image_query(embedder, query)  # (1, D); QueryError on bad input
        embed_ms = _ms(t0)

        def run() -> SearchResult:
            nonlocal vector
            t = time.perf_counter()
            gallery = self._current()
            refresh_ms = _ms(t)
            if gallery.model_id != embedder.model_id:  # the alias switched meanwhile: re-embed
                with self._embed_lock:
                    vector, _ = embed_image_query(self.embedder, query)
            t = time.perf_counter()
            ranked = self._engine(gallery).rank_vector(vector, query, task)
            took = {"embed": embed_ms, "refresh": refresh_ms, "search": _ms(t), "total": _ms(t0)}
            return _result(ranked, took)

        return self._on_gallery_thread(run)

    def _engine(self, gallery: ShardedGallery) -> SearchEngine:
        if self._rerankers is None and self._cfg is not None:
            self._rerankers = RerankerPool(ModelStore.from_config(self._cfg.models),
                                           self.search_cfg.match_threshold,
                                           self.search_cfg.mllm_dir,
                                           EvidenceStore.in_data_dir(self._cfg.data_dir))
        return SearchEngine(self.search_cfg, self.embedder, gallery, self._crops, self._rerankers,
                            self._cfg.places() if self._cfg is not None else None)

    def search_text(self, query: TextQuery) -> SearchResult:
        """Rank tracklets of the person ``query.text`` describes, within its filters (the
        whole query on the gallery thread: the re-ranker reads crops and runs a model)."""
        t0 = time.perf_counter()

        def run() -> SearchResult:
            t = time.perf_counter()
            gallery = self._current()
            refresh_ms = _ms(t)
            t = time.perf_counter()
            with self._embed_lock:  # an instructable embedder embeds the text
                ranked = self._engine(gallery).search_text(query)
            took = {"refresh": refresh_ms, "search": _ms(t), "total": _ms(t0)}
            return _result(ranked, took)

        return self._on_gallery_thread(run)

    def track(self, camera: str, track_id: int) -> tuple[TrackSummary, list[CropRecord]] | None:
        """A track's summary and its stored crops (time order), None if it is unknown."""

        def run() -> tuple[TrackSummary, list[CropRecord]] | None:
            gallery = self._current()
            summary = gallery.track(camera, track_id)
            if summary is None:
                return None
            crops: list[CropRecord] = []
            for shard in gallery.shards:
                ids = shard.metadata.track_vector_ids(camera, track_id, self.model_id)
                crops.extend(shard.metadata.crops_found(ids).values())
            crops.sort(key=lambda r: (r.ts_ns, r.vector_id))
            return summary, crops

        return self._on_gallery_thread(run)

    def cameras(self) -> list[str]:
        """Cameras with at least one stored track, sorted."""

        return self._on_gallery_thread(lambda: self._current().cameras())

    def stats(self) -> dict[str, object]:
        """What the health check reports: shards and vectors searchable now."""

        def run() -> dict[str, object]:
            try:
                gallery = self._current()
            except GalleryUnavailable:
                return {"model_id": self.model_id, "shards": 0, "vectors": 0}
            return {"model_id": self.model_id, "shards": len(gallery.shards),
                    "vectors": len(gallery)}

        return self._on_gallery_thread(run)

    def search_similar(
        self, camera: str, track_id: int, k: int, cameras: tuple[str, ...] = (),
        start_ts_ns: int | None = None, end_ts_ns: int | None = None,
        min_track_s: float | None = None,
    ) -> SearchResult:
        """"Find similar": tracklets like the stored track ``camera``/``track_id``, by the mean
        of its best crops' vectors (re-embedded from the stored crops, so any model works); the
        track itself is left out. QueryError when the track is unknown."""
        t0 = time.perf_counter()

        def run() -> SearchResult:
            gallery = self._current()
            summary = gallery.track(camera, track_id)
            if summary is None or self._crops is None:
                raise QueryError(f"camera {camera!r} has no track {track_id} to search from")
            seeds = [summary.best, *summary.views][:SIMILAR_SEEDS]
            images = [self._crops.read(r.crop_path) for r in seeds]
            with self._embed_lock:
                vectors = self.embedder(images).vectors
            mean = vectors.mean(axis=0, keepdims=True)
            mean /= max(float(np.linalg.norm(mean)), 1e-12)
            query = ImageQuery(image=images[0], k=k + 1, cameras=cameras,
                               start_ts_ns=start_ts_ns, end_ts_ns=end_ts_ns,
                               min_track_s=min_track_s, rerank="none")
            embed_ms = _ms(t0)
            t = time.perf_counter()
            ranked = self._engine(gallery).rank_vector(mean.astype(np.float32), query, "reid")
            hits = [h for h in ranked.hits if (h.camera, h.track_id) != (camera, track_id)][:k]
            took = {"embed": embed_ms, "search": _ms(t), "total": _ms(t0)}
            return _result(replace(ranked, hits=hits), took)

        return self._on_gallery_thread(run)

    def describe_track(self, records: list[CropRecord]) -> list[str]:
        """A stored track's looks in words (colours per part, attributes), read from up to
        ``SIMILAR_SEEDS`` of its crops (``records``) by the composing referrer; [] when the
        referrer cannot be built here."""
        if self._crops is None or not records:
            return []
        chosen = sorted(records, key=lambda r: -r.quality)[:SIMILAR_SEEDS]
        paths = [r.crop_path for r in chosen]
        crops = self._crops

        def run() -> list[str]:
            try:  # a missing crop is a CropStoreError, a ValueError: nothing to describe then
                referrer = self._engine(self._current()).rerankers.get("compose")  # type: ignore[union-attr]
                describe = getattr(referrer, "describe", None)
                return describe([crops.read(p) for p in paths], paths) if describe else []
            except (ImportError, OSError, ValueError, RuntimeError) as err:
                log.warning("tracklet description unavailable: %s", err)
                return []

        return self._on_gallery_thread(run)

    def overview(self) -> list[dict[str, object]]:
        """Per camera with stored tracks: its newest track (summary) and when it was seen.
        Kept for ``OVERVIEW_TTL_S``: the cameras page asks every 2 s, and each look groups a
        camera's crops on the gallery thread that searches need."""
        kept = self._overview
        if kept is not None and time.monotonic() - kept[0] < OVERVIEW_TTL_S:
            return kept[1]

        def run() -> list[dict[str, object]]:
            try:
                gallery = self._current()
            except GalleryUnavailable:
                return []
            out = []
            for camera in gallery.cameras():
                newest = gallery.recent_tracks(1, SearchFilter(cameras=(camera,)))
                out.append({"camera": camera,
                            "newest": newest[0].summary if newest else None,
                            "last_crop_ts_ns": newest[0].last_crop_ts_ns if newest else None})
            return out

        found = self._on_gallery_thread(run)
        self._overview = (time.monotonic(), found)
        return found

    def forget(self, camera: str, track_id: int, reason: str) -> ForgetReport:
        """Forget a track for good (``refind.indexer.forget``), then reopen the gallery so no
        search sees it again. Needs the deployment's config."""
        if self._cfg is None:
            raise RuntimeError("forgetting needs the deployment's config")
        cfg = self._cfg

        def run() -> ForgetReport:
            try:
                return forget_track(cfg, camera, track_id, reason=reason)
            finally:
                self._overview = None
                if self._gallery is not None:
                    self._gallery.close()
                    self._gallery = None

        return self._on_gallery_thread(run)

    def close(self) -> None:
        """Close the shards and stop the gallery thread."""

        def run() -> None:
            if self._gallery is not None:
                self._gallery.close()
                self._gallery = None

        self._on_gallery_thread(run)
        self._gallery_thread.shutdown()
