"""Re-indexing: re-embed the stored crops with another model into a new version, then switch.

The plain half of ``refind reindex`` (``actors/reindex.py`` runs the embedding on Ray Data):

- ``ReindexJob.open`` picks the source (the serving version) and the target (the version of the
  new embedder, under ``data_dir/versions/<stem>/`` unless it exists already), registers the
  target as ``building`` and takes ``<target>/reindex.lock`` so that one job runs per target.
- ``todo()`` lists the source's crops (optionally since a time, of some cameras) that the target
  lacks. The target's own rows are the checkpoint: a crop is done when its row is committed.
- ``EmbedCrops`` reads a batch of crop JPEGs from the crop store and embeds them; a crop that is
  missing or not an image is reported in the batch, not raised.
- ``commit(batch)`` writes a batch's vectors with the source rows' metadata into the target's
  SQLite in one transaction, keyed by the crop's ``vector_id`` (``INSERT OR IGNORE``): a batch
  committed twice (a resume after kill -9 between the commit and the next read) stores each crop
  once.
- ``finish()`` reconciles the target with the source (rows the source removed meanwhile, by
  forgetting or retention, leave the target too; tombstones, track spans and the id floor are
  copied), builds and saves the target's FAISS indexes, links its tracks into global ids with
  the new model's vectors (``refind.indexer.identity_service.relink_gallery``), marks it
  ``ready`` and switches the serving alias (one atomic file replace). The source version is
  kept until deleted.

Example:
    >>> with ReindexJob.open(cfg, target_cfg) as job:                          # doctest: +SKIP
    ...     for batch in map(EmbedCrops(target_cfg), batches_of(job.todo())):
    ...         job.commit(batch)
    ...     report = job.finish(switch=True)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Set
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

import numpy as np

from refind.config import RefindConfig
from refind.indexer.blobs import CropStore, CropStoreError
from refind.indexer.gallery_store import GalleryStore, acquire_lock
from refind.indexer.identity_state import relink_gallery
from refind.indexer.metadata import SqliteMetadata
from refind.indexer.shards import existing_shards
from refind.indexer.versions import (
    BASE_ROOT,
    Registry,
    Version,
    VersionError,
    update_registry,
    version_root,
)
from refind.models.base import ModelInputError, ReidEmbedder, check_bgr_image
from refind.models.registry import build_embedder
from refind.models.store import ModelStore
from refind.streaming.records import CropRecord, Embeddings, SearchFilter

log = logging.getLogger(__name__)

BATCH_COLUMNS = ("shard", "vector_id", "crop_path")
"""Columns of a batch handed to ``EmbedCrops``: (n,) str, (n,) int64, (n,) str."""


class EmbedCrops:
    """Reads crops from the crop store and embeds them: the batch function of a re-index.

    ``__call__`` takes a batch of columns ``shard`` (n,) str, ``vector_id`` (n,) int64,
    ``crop_path`` (n,) str and returns them with ``vector`` (n, d) float32 (zeros where the crop
    failed), ``ok`` (n,) bool and ``error`` (n,) str.

    Example:
        >>> out = EmbedCrops(cfg)({"shard": ..., "vector_id": ..., "crop_path": ...})  # doctest: +SKIP
        >>> out["vector"].shape
        (64, 256)
    """

    def __init__(self, cfg: RefindConfig, embedder: ReidEmbedder | None = None) -> None:
        self.embedder = embedder or build_embedder(cfg.embedder, ModelStore.from_config(cfg.models))
        self.crops = CropStore.from_config(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["crop_path"]]
        n = len(paths)
        ok = np.zeros(n, bool)
        errors = [""] * n
        images = []
        for i, rel in enumerate(paths):
            try:
                image = self.crops.read(rel)
                check_bgr_image(image, f"crop {rel}")
                if min(image.shape[:2]) < 2:
                    raise ModelInputError(f"crop {rel} is {image.shape[1]}x{image.shape[0]}")
            except (CropStoreError, ModelInputError) as err:
                errors[i] = str(err)
                continue
            ok[i] = True
            images.append(image)
        vectors = np.zeros((n, self.embedder.dim), np.float32)  # (n, D)
        if images:
            vectors[ok] = self.embedder(images).vectors
        return {  # strings as object arrays: Arrow keeps them strings, whatever their length
            "shard": np.asarray([str(s) for s in batch["shard"]], dtype=object),
            "vector_id": np.asarray(batch["vector_id"], np.int64),
            "crop_path": np.asarray(paths, dtype=object),
            "vector": vectors,
            "ok": ok,
            "error": np.asarray(errors, dtype=object),
        }


def embed_copies(
    embed: EmbedCrops, dst: SqliteMetadata, records: list[CropRecord]
) -> tuple[int, dict[int, str]]:
    """Re-embed the crops of ``records`` (already under the embedder's model_id) and store those
    read into ``dst`` (``add_copies``, ids kept); returns (rows added, {vector_id: error} of the
    crops that could not be read)."""
    out = embed({"shard": np.asarray([""] * len(records), dtype=object),
                 "vector_id": np.asarray([r.vector_id for r in records], np.int64),
                 "crop_path": np.asarray([r.crop_path for r in records], dtype=object)})
    ok = out["ok"]
    failed = {r.vector_id: str(err) for r, err in zip(records, out["error"], strict=True) if err}
    kept = [r for r, good in zip(records, ok, strict=True) if good]
    return dst.add_copies(kept, Embeddings(out["vector"][ok], embed.embedder.model_id)), failed


@dataclass
class ReindexReport:
    """What a re-index did, for the CLI, the bench and logs."""

    source: str
    target: str
    target_root: str
    todo: int = 0
    added: int = 0
    failed: dict[int, str] = field(default_factory=dict)  # vector_id -> why
    removed: int = 0
    crops: int = 0
    seconds: float = 0.0
    first_batch_s: float | None = None  # start-up: Ray, the actors, their model loads
    first_batch: int = 0
    switched: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source, "target": self.target, "target_root": self.target_root,
            "todo": self.todo, "added": self.added, "failed": len(self.failed),
            "failed_examples": [f"{v}: {e}" for v, e in list(self.failed.items())[:5]],
            "removed": self.removed, "crops": self.crops, "seconds": round(self.seconds, 3),
            "crops_per_s": round(self.added / self.seconds, 2) if self.seconds > 0 else 0.0,
            "startup_s": None if self.first_batch_s is None else round(self.first_batch_s, 3),
            "steady_crops_per_s": self.steady_rate(),
            "switched": self.switched,
        }

    def steady_rate(self) -> float | None:
        """Crops/s after the first batch came back (start-up excluded)."""
        if self.first_batch_s is None or self.seconds <= self.first_batch_s:
            return None
        return round((self.added - self.first_batch) / (self.seconds - self.first_batch_s), 2)


def _source_version(cfg: RefindConfig, registry: Registry | None) -> Version:
    """The serving version; without a registry, the base gallery and the config's embedder."""
    if registry is not None:
        return registry.versions[registry.serving]
    models: set[tuple[str, int]] = set()
    for shard in existing_shards(cfg.data_dir):
        with SqliteMetadata(shard / "metadata.sqlite3", read_only=True) as meta:
            models |= set(meta.models())
    if not models:
        raise VersionError(f"no gallery in {cfg.data_dir} to re-index: run `refind ingest` first")
    if len(models) > 1:  # several models in one root: the config's embedder says which serves
        current = build_embedder(cfg.embedder, ModelStore.from_config(cfg.models))
        models = {m for m in models if m[0] == current.model_id}
        if not models:
            raise VersionError(f"the gallery in {cfg.data_dir} holds no vectors of the "
                               f"configured embedder {current.model_id}")
    [(model_id, dim)] = models
    return Version(model_id, BASE_ROOT, cfg.embedder.model_dump(), dim)


class ReindexJob:
    """One re-index from the serving version into the version of ``target_cfg``'s embedder."""

    def __init__(
        self,
        cfg: RefindConfig,
        source: Version,
        target: Version,
        *,
        since_ns: int | None = None,
        cameras: tuple[str, ...] = (),
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.target = target
        self.since_ns = since_ns
        self.cameras = tuple(cameras)
        self.data_dir = Path(cfg.data_dir)
        self.target_dir = target.path(self.data_dir)
        self.target_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = acquire_lock(
            self.target_dir / "reindex.lock",
            lambda holder: VersionError(
                f"another re-index into {self.target_dir} is running ({holder})"),
        )
        self._src: dict[str, SqliteMetadata] = {}
        self._dst: dict[str, SqliteMetadata] = {}
        self.identities: dict[str, object] | None = None  # finish(): the new model's global ids
        try:
            for shard in existing_shards(source.path(self.data_dir)):
                self._src[shard.name] = SqliteMetadata(shard / "metadata.sqlite3", read_only=True)
                (self.target_dir / shard.name).mkdir(parents=True, exist_ok=True)
                self._dst[shard.name] = SqliteMetadata(
                    self.target_dir / shard.name / "metadata.sqlite3")
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls,
        cfg: RefindConfig,
        target_cfg: RefindConfig,
        embedder: ReidEmbedder,
        *,
        since_ns: int | None = None,
        cameras: tuple[str, ...] = (),
    ) -> ReindexJob:
        """Register the target version (``building``) and lock it; ``embedder`` is the target's
        (loaded once here to learn its model_id and dim, and to check its weights)."""
        found: list[tuple[Version, Version]] = []

        def change(reg: Registry | None) -> Registry:
            source = _source_version(cfg, reg)
            if embedder.model_id == source.model_id:
                raise VersionError(f"{embedder.model_id} is already the serving version")
            old = reg.versions.get(embedder.model_id) if reg else None
            if old is not None and old.dim != embedder.dim:
                raise VersionError(f"version {old.model_id} has dim {old.dim}, the embedder "
                                   f"{embedder.dim}")
            root = old.root if old else version_root(embedder.model_id)
            target = Version(embedder.model_id, root, target_cfg.embedder.model_dump(),
                             embedder.dim, "building")
            found.append((source, target))
            versions = dict(reg.versions) if reg else {source.model_id: source}
            versions[target.model_id] = target
            return Registry(reg.serving if reg else source.model_id, versions)

        update_registry(cfg.data_dir, change)
        source, target = found[0]
        log.info("re-index %s -> %s in %s", source.model_id, target.model_id, target.root)
        return cls(cfg, source, target, since_ns=since_ns, cameras=cameras)

    def todo(self, exclude: Set[tuple[str, int]] = frozenset()) -> dict[str, np.ndarray]:
        """The source's crops the target lacks, as a batch (``BATCH_COLUMNS``), in id order."""
        shards: list[str] = []
        ids: list[int] = []
        paths: list[str] = []
        for name, src in self._src.items():
            wanted = src.ids_matching(self.source.model_id,
                                      SearchFilter(self.cameras, self.since_ns))
            done = self._dst[name].vector_ids(self.target.model_id)
            left = np.setdiff1d(wanted, done, assume_unique=True)
            todo = [int(v) for v in left if (name, int(v)) not in exclude]
            for vid, rec in sorted(src.crops_found(todo).items()):
                shards.append(name)
                ids.append(vid)
                paths.append(rec.crop_path)
        return {"shard": np.asarray(shards, dtype=str), "vector_id": np.asarray(ids, np.int64),
                "crop_path": np.asarray(paths, dtype=str)}

    def done(self) -> int:
        """Crops the target holds now (committed)."""
        return sum(d.count(self.target.model_id) for d in self._dst.values())

    def commit(self, batch: dict[str, np.ndarray]) -> tuple[int, dict[tuple[str, int], str]]:
        """Store an ``EmbedCrops`` batch in the target, one transaction per shard; returns
        (rows added, {(shard, vector_id): error} of the crops that failed)."""
        added = 0
        failed: dict[tuple[str, int], str] = {}
        vectors = np.asarray(batch["vector"], np.float32)  # (n, D)
        for name in sorted(set(batch["shard"].tolist())):
            rows = np.flatnonzero(batch["shard"] == name)
            for i in rows[~batch["ok"][rows]]:
                failed[(name, int(batch["vector_id"][i]))] = str(batch["error"][i])
            good = rows[batch["ok"][rows]]
            ids = batch["vector_id"][good].tolist()
            found = self._src[name].crops_found(ids)  # a row removed meanwhile is not copied
            keep = [j for j, v in zip(good.tolist(), ids, strict=True) if v in found]
            records = [replace(found[int(batch["vector_id"][j])], model_id=self.target.model_id)
                       for j in keep]
            added += self._dst[name].add_copies(
                records, Embeddings(vectors[np.asarray(keep, np.int64)], self.target.model_id)
            )
        return added, failed

    def finish(self, switch: bool = True) -> tuple[int, int]:
        """Reconcile, build the FAISS indexes, mark ``ready`` and (if ``switch``) serve the
        target; returns (rows removed in reconciliation, crops in the target)."""
        removed = 0
        for name, src in self._src.items():
            dst = self._dst[name]
            removed += dst.mark_forgotten(src.forgotten())
            gone = np.setdiff1d(dst.vector_ids(self.target.model_id),
                                src.vector_ids(self.source.model_id))
            removed += dst.remove_ids(gone.tolist())
            dst.set_track_spans(src.track_spans())
            dst.raise_id_floor(src.next_vector_id())
        for name in self._dst:  # the FAISS views: built from SQLite and saved
            with GalleryStore(self.target_dir / name, self.cfg.gallery, self.target.model_id,
                              self.target.dim) as store:
                store.save()
        crops = self.done()
        if self.cfg.identities.enabled:  # the new model's global ids, before it serves
            self.identities = relink_gallery(self.cfg, list(self._dst.values()),
                                             self.target.model_id)
            log.info("global ids for %s: %s", self.target.model_id, self.identities)

        def change(reg: Registry | None) -> Registry:
            if reg is None or self.target.model_id not in reg.versions:
                raise VersionError(f"version {self.target.model_id} was deleted during the "
                                   "re-index")
            versions = dict(reg.versions)
            versions[self.target.model_id] = replace(self.target, state="ready",
                                                     updated_ns=time.time_ns())
            return Registry(self.target.model_id if switch else reg.serving, versions)

        update_registry(self.data_dir, change)
        log.info("re-index done: %s holds %d crops%s", self.target.model_id, crops,
                 "; now serving" if switch else "")
        return removed, crops

    def close(self) -> None:
        for meta in [*self._src.values(), *self._dst.values()]:
            meta.close()
        self._src, self._dst = {}, {}
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> ReindexJob:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
