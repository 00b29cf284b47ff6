"""The gallery on disk: SQLite metadata (the source of truth, vectors included) plus a FAISS index
per model that is a derived, persisted view of it.

Layout of ``data_dir``::

    metadata.sqlite3            crops (with vectors) and tracks, WAL mode
    gallery.lock                flock'ed by the one writer
    index/<model>-<hash>.faiss  FAISS index of one model_id
    index/<model>-<hash>.json   manifest: model_id, dim, index_factory, last id covered, count,
                                size and sha256 of the .faiss file

Crash safety: ``add`` commits SQLite first (one transaction), then adds to FAISS in memory.
``save`` replaces the index file and then the manifest, each atomically (temp file, fsync,
os.replace, fsync of the directory). On open, an index whose manifest does not match the config,
the model, the file's sha256 or SQLite's row count is rebuilt from SQLite; otherwise only rows
newer than the manifest's last id are added. Either way the index ends equal to SQLite.

Removal (``remove_track``, ``remove_before``) deletes the rows from SQLite first (one
transaction), then from the index in memory, then saves. A crash before the save leaves a manifest
whose count exceeds SQLite's, so the next open rebuilds the index without the removed rows; they
never come back. Removed ids are never handed out again (``SqliteMetadata.next_vector_id``).
Readers that opened the index before a removal drop hits whose rows are gone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from refind.indexer.config import GalleryConfig
from refind.indexer.gallery import FaissGallery
from refind.indexer.journal import fsync_dir
from refind.indexer.metadata import RecentTrack, SqliteMetadata, TrackSummary
from refind.indexer.record import EventRecord
from refind.streaming.events import CropEvent, TrackEvent
from refind.streaming.records import (
    CLIP_TIME_NS,
    NO_FILTER,
    CropHit,
    CropRecord,
    Embeddings,
    SearchFilter,
    TrackSpan,
)

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
_MANIFEST_FIELDS = ("last_vector_id", "count", "removed_ids", "index_bytes", "index_sha256")


class GalleryLockedError(RuntimeError):
    """Another process is already writing this gallery."""


class _StaleIndex(Exception):
    """The saved index cannot be used as is; the message says why."""


def index_stem(model_id: str) -> str:
    """File name stem for ``model_id``'s index: readable part plus a hash (no collisions)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._")[:80] or "model"
    return f"{safe}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def acquire_lock(path: Path, busy: Callable[[str], Exception]) -> int:
    """An fd holding an exclusive flock on ``path`` (closing it releases the lock); raises
    ``busy(holder)`` if another process holds it, ``holder`` being what that process wrote."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 100, 0).decode(errors="replace").strip() or "unknown holder"
        os.close(fd)
        raise busy(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    return fd


def lock_gallery(shard: Path) -> int:
    """The writer lock of a gallery shard (an fd); GalleryLockedError if another holds it."""
    return acquire_lock(shard / "gallery.lock", lambda holder: GalleryLockedError(
        f"gallery {shard} is already being written ({holder}); one writer at a time, "
        "open it with read_only=True to search"
    ))


class GalleryStore:
    """The searchable gallery of one model: SQLite metadata plus its FAISS index.

    A writer holds ``data_dir/gallery.lock``; ``read_only=True`` opens without the lock (searches
    only; ``refresh()`` picks up rows a writer committed since). With a ``record``
    (``refind.indexer.record.EventRecord``), every crop added and every track ended is also recorded
    as an event, before SQLite commits: the durable record ``refind rebuild`` reads.

    Example:
        >>> with GalleryStore(Path(".refind"), GalleryConfig(), "reid-0277", 256) as store:  # doctest: +SKIP
        ...     store.add(records, embeddings)  # records[i].vector_id from store.next_vector_id()
        ...     store.save()
        ...     hits = store.search(query_embeddings, 50, SearchFilter(cameras=("gate",)))
    """

    def __init__(
        self,
        data_dir: Path,
        gallery_cfg: GalleryConfig,
        model_id: str,
        dim: int,
        *,
        read_only: bool = False,
        record: EventRecord | None = None,
    ) -> None:
        if not model_id:
            raise ValueError("GalleryStore needs a model_id")
        self._dir = Path(data_dir)
        self._cfg = gallery_cfg
        self._model_id = model_id
        self._dim = dim
        self._read_only = read_only
        self._record = record  # the durable record of what is stored (refind.indexer.record)
        self._stale = False
        self._lock_fd: int | None = None
        self._meta: SqliteMetadata | None = None
        stem = index_stem(model_id)
        self._index_path = self._dir / "index" / f"{stem}.faiss"
        self._manifest_path = self._dir / "index" / f"{stem}.json"
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        if not self._read_only:
            self._index_path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = lock_gallery(self._dir)
            for tmp in self._index_path.parent.glob(".*.tmp"):  # left by a crash during save
                tmp.unlink(missing_ok=True)
        self._meta = SqliteMetadata(self._dir / "metadata.sqlite3", read_only=self._read_only)
        stored_dim = self._meta.dim(self._model_id)
        if stored_dim is not None and stored_dim != self._dim:
            raise ValueError(
                f"{self._dir}: model {self._model_id!r} has dim {stored_dim} vectors stored, "
                f"asked for dim {self._dim}"
            )
        self._gallery = self._load_or_rebuild()
        added = self.refresh()
        if added:
            log.info("%s: added %d vectors from SQLite to the %s index", self._dir, added,
                     self._model_id)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metadata(self) -> SqliteMetadata:
        """The metadata store (tracks, cameras, crops)."""
        assert self._meta is not None
        return self._meta

    def __len__(self) -> int:
        return len(self._gallery)

    def next_vector_id(self) -> int:
        return self.metadata.next_vector_id()

    def track(self, camera: str, track_id: int) -> TrackSummary | None:
        """Summary of one track of one camera, None if unknown."""
        return self.metadata.track(camera, track_id)

    def tracks(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], TrackSummary]:
        """Summaries of the known tracks among ``keys`` (camera, track id)."""
        return {key: found for key in keys if (found := self.track(*key)) is not None}

    def end_tracks(self, spans: list[TrackSpan]) -> list[TrackEvent]:
        """Tracks ended: record their ``TrackEvent`` (phase ``end``, with this model's crops of
        each: count, best crop, vector ids) in the durable record, then store their spans
        (when the tracker saw them). Returns the events."""
        self._check_writable()
        gone = self.metadata.forgotten_among({(s.camera, int(s.track_id)) for s in spans})
        spans = [s for s in spans if (s.camera, int(s.track_id)) not in gone]
        events = [self._end_event(span) for span in spans]
        if self._record is not None and events:
            self._record.append(events)
        self.metadata.set_track_spans(spans)
        return events

    def _end_event(self, span: TrackSpan) -> TrackEvent:
        summary = self.metadata.track(span.camera, span.track_id)
        ids = self.metadata.track_vector_ids(span.camera, span.track_id, self._model_id)
        return TrackEvent.from_span(
            span, "end", n_crops=summary.n_crops if summary else 0,
            best_crop=summary.best.crop_path if summary else None,
            vector_ids=tuple(ids), model_id=self._model_id if ids else None,
        )

    def max_track_id(self, camera: str) -> int:
        """Largest track id stored for ``camera`` (0 if none): offset for a new ingest's ids."""
        return self.metadata.max_track_id(camera)

    def add(self, records: list[CropRecord], embeddings: Embeddings) -> list[CropRecord]:
        """Store crops and their vectors: SQLite in one transaction, then the FAISS index.

        Crops of forgotten tracks are skipped; returns the records that were stored."""
        self._check_writable()
        if embeddings.model_id != self._model_id:
            raise ValueError(
                f"embeddings of model {embeddings.model_id!r} cannot go into the gallery of "
                f"{self._model_id!r}"
            )
        if len(embeddings) and embeddings.dim != self._dim:
            raise ValueError(f"embeddings have dim {embeddings.dim}, the gallery has {self._dim}")
        if self._record is not None and records:
            # the record first (it may hold more than SQLite, not less), under ids taken first:
            # crops it holds that SQLite never stores (a crash between) keep ids of their own;
            # a forgotten track's crops stay out of it
            self.metadata.claim_ids(records[0].vector_id, records[-1].vector_id + 1)
            gone = self.metadata.forgotten_among({(r.camera, int(r.track_id)) for r in records})
            self._record.append([CropEvent.from_record(r) for r in records
                                 if (r.camera, int(r.track_id)) not in gone])
        kept = self.metadata.add(records, embeddings, claimed=self._record is not None)
        ids = np.array([r.vector_id for r in records], np.int64)[kept]
        try:
            self._gallery.add(ids, Embeddings(embeddings.vectors[kept], self._model_id))
        except BaseException:
            self._stale = True  # SQLite has the rows; reopening rebuilds the index from it
            raise
        return [r for r, k in zip(records, kept, strict=True) if k]

    def remove_track(self, camera: str, track_id: int, *, forget: bool = False) -> list[CropRecord]:
        """Remove this model's crops of one track; ``forget`` also refuses its crops from now on.

        Deletes from SQLite, then the index, then saves; returns the removed records (the
        caller deletes their crop files).
        """
        forget_ns = time.time_ns() if forget else None
        return self._remove(camera, track_id=track_id, forget_ns=forget_ns)

    def remove_before(self, camera: str, before_ts_ns: int) -> list[CropRecord]:
        """Remove this model's crops of ``camera`` older than ``before_ts_ns`` (retention).
        Crops with clip-relative times (below CLIP_TIME_NS) have no date: they stay."""
        return self._remove(camera, before_ts_ns=before_ts_ns, since_ts_ns=CLIP_TIME_NS)

    def is_forgotten(self, camera: str, track_id: int) -> bool:
        return self.metadata.is_forgotten(camera, track_id)

    def _remove(
        self,
        camera: str,
        *,
        track_id: int | None = None,
        before_ts_ns: int | None = None,
        since_ts_ns: int | None = None,
        forget_ns: int | None = None,
    ) -> list[CropRecord]:
        self._check_writable()
        removed = self.metadata.remove_where(
            self._model_id, camera, track_id=track_id, before_ts_ns=before_ts_ns,
            since_ts_ns=since_ts_ns, forget_ns=forget_ns,
        )
        if not removed:
            return removed
        try:
            self._gallery.remove(np.array([r.vector_id for r in removed], np.int64))
            self.save()
        except BaseException:
            self._stale = True  # SQLite lost the rows; reopening rebuilds the index without them
            raise
        log.info("%s: removed %d %s vectors of camera %s", self._dir, len(removed),
                 self._model_id, camera)
        return removed

    def refresh(self) -> int:
        """Add SQLite rows of this model newer than the index; returns how many."""
        added = 0
        for ids, vectors in self.metadata.vectors_after(self._gallery.max_id, self._model_id):
            self._gallery.add(ids, Embeddings(vectors, self._model_id))
            added += len(ids)
        return added

    def save(self) -> None:
        """Persist the FAISS index and its manifest atomically."""
        self._check_writable()
        data = self._gallery.to_bytes()
        trained = self._gallery.is_trained  # buffered vectors are not in the file
        manifest = {
            "format": MANIFEST_FORMAT,
            "model_id": self._model_id,
            "dim": self._dim,
            "index_factory": self._cfg.index_factory,
            "last_vector_id": self._gallery.max_id if trained else -1,
            "count": len(self._gallery) if trained else 0,
            "removed_ids": self._gallery.removed_ids.tolist(),
            "index_bytes": len(data),
            "index_sha256": hashlib.sha256(data).hexdigest(),
        }
        atomic_write(self._index_path, data)
        atomic_write(self._manifest_path, json.dumps(manifest, indent=1).encode())
        log.debug("%s: saved %s (%d vectors)", self._dir, self._index_path.name, manifest["count"])

    def search(
        self,
        query_vectors: Embeddings | np.ndarray,
        k_crops: int,
        filt: SearchFilter = NO_FILTER,
    ) -> list[list[CropHit]]:
        """Per query, up to ``k_crops`` crops with their cosine score, best first, within the
        filter."""
        if isinstance(query_vectors, Embeddings):
            if query_vectors.model_id != self._model_id:
                raise ValueError(
                    f"queries embedded by {query_vectors.model_id!r} cannot search the gallery "
                    f"of {self._model_id!r}"
                )
            query_vectors = query_vectors.vectors
        allowed = None
        if filt.narrows:
            allowed = self.metadata.ids_matching(self._model_id, filt)
            allowed = allowed[allowed <= self._gallery.max_id]  # newer rows are not indexed yet
        scores, ids = self._gallery.search(query_vectors, k_crops, allowed)
        # a row removed by a writer since this (read-only) store loaded its index is left out
        records = self.metadata.crops_found(np.unique(ids[ids >= 0]).tolist())
        return [
            [CropHit(records[int(i)], float(s)) for s, i in zip(s_row, i_row, strict=True)
             if int(i) in records]
            for s_row, i_row in zip(scores, ids, strict=True)
        ]

    def recent_tracks(self, limit: int, filt: SearchFilter = NO_FILTER) -> list[RecentTrack]:
        """At most ``limit`` tracks with crops of this model within the filter, most recently
        seen first."""
        return self.metadata.recent_tracks(self._model_id, filt, limit)

    def count_tracks(self, limit: int, filt: SearchFilter = NO_FILTER) -> int:
        """Tracks with crops of this model within the filter, counted up to ``limit``."""
        return self.metadata.count_tracks(self._model_id, filt, limit)

    def recent_track_keys(self, limit: int, filt: SearchFilter = NO_FILTER
                          ) -> list[tuple[int, str, int]]:
        """(last crop time, camera, track id) of ``recent_tracks``, without summaries."""
        return self.metadata.recent_track_keys(self._model_id, filt, limit)

    def close(self) -> None:
        """Close SQLite and release the writer lock (the index is not saved: call save())."""
        if self._meta is not None:
            self._meta.close()
            self._meta = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the fd releases the flock
            self._lock_fd = None

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_writable(self) -> None:
        if self._read_only:
            raise RuntimeError(f"gallery {self._dir} was opened read-only")
        if self._stale:
            raise RuntimeError(
                f"gallery {self._dir}: the {self._model_id} index missed a write; reopen the "
                "store to rebuild it from SQLite"
            )

    # -- loading ----------------------------------------------------------------------------

    def _load_or_rebuild(self) -> FaissGallery:
        try:
            return self._load()
        except _StaleIndex as why:
            has_rows = self.metadata.count(self._model_id) > 0
            (log.warning if has_rows else log.debug)(
                "%s: rebuilding the %s index from SQLite: %s", self._dir, self._model_id, why
            )
            return FaissGallery(self._cfg, self._model_id, self._dim)

    def _load(self) -> FaissGallery:
        """The saved index, checked against its manifest and SQLite; _StaleIndex if unusable."""
        manifest = self._read_manifest()
        try:
            data = self._index_path.read_bytes()
        except OSError as err:
            raise _StaleIndex(f"cannot read {self._index_path.name}: {err}") from None
        if len(data) != manifest["index_bytes"]:
            raise _StaleIndex(f"{self._index_path.name} has {len(data)} bytes, manifest says "
                              f"{manifest['index_bytes']}")
        if hashlib.sha256(data).hexdigest() != manifest["index_sha256"]:
            raise _StaleIndex(f"{self._index_path.name} does not match its manifest's sha256")
        try:
            gallery = FaissGallery.from_bytes(
                data, self._cfg, self._model_id, self._dim, manifest["removed_ids"],
                max_id=manifest["last_vector_id"],
            )
        except (ValueError, TypeError) as err:
            raise _StaleIndex(str(err)) from None
        last, count = manifest["last_vector_id"], manifest["count"]
        if gallery.max_id != last or len(gallery) != count:
            raise _StaleIndex(f"index holds {len(gallery)} vectors up to id {gallery.max_id}, "
                              f"manifest says {count} up to {last}")
        if self.metadata.count(self._model_id, last) != count:
            raise _StaleIndex(f"SQLite rows up to id {last} differ from the index's {count}")
        return gallery

    def _read_manifest(self) -> dict:
        try:
            manifest = json.loads(self._manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise _StaleIndex(f"no saved index {self._manifest_path.name}") from None
        except (OSError, ValueError) as err:
            raise _StaleIndex(f"unreadable manifest {self._manifest_path.name}: {err}") from None
        expected = {
            "format": MANIFEST_FORMAT,
            "model_id": self._model_id,
            "dim": self._dim,
            "index_factory": self._cfg.index_factory,
        }
        for key, value in expected.items():
            if not isinstance(manifest, dict) or manifest.get(key) != value:
                got = manifest.get(key) if isinstance(manifest, dict) else manifest
                raise _StaleIndex(f"manifest {key} is {got!r}, expected {value!r}")
        missing = [k for k in _MANIFEST_FIELDS if k not in manifest]
        if missing:
            raise _StaleIndex(f"manifest {self._manifest_path.name} lacks {missing}")
        return manifest
