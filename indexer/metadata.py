"""SQLite metadata: every gallery vector with where it came from, and a summary per track.

SQLite is the gallery's source of truth: each crop row holds its vector as a float32 BLOB, so
any FAISS index can be rebuilt from it. WAL mode lets readers search while one writer ingests.
Tracks are keyed by (camera, track_id): a track id is unique within its camera only.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from refind.streaming.motion import TrackMotion
from refind.streaming.records import NO_FILTER, CropRecord, Embeddings, SearchFilter, TrackSpan

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
_IN_CHUNK = 500  # ids per "IN (...)" query, well under SQLite's variable limit
VIEWS = 3  # crops of a track besides its best one that a summary names

# A track's span as ``SqliteMetadata.track`` reports it: its crops, widened by the tracker's span.
_TRACK_SPAN_NS = (
    "(MAX(t.end_ts_ns, COALESCE(s.last_ts_ns, t.end_ts_ns)) "
    "- MIN(t.start_ts_ns, COALESCE(s.first_ts_ns, t.start_ts_ns)))"
)


# The span of the ``tracks`` row being updated.
_SPAN_OF_ROW = (
    f"(SELECT {_TRACK_SPAN_NS} FROM tracks t LEFT JOIN track_spans s ON s.camera = t.camera "
    "AND s.track_id = t.track_id WHERE t.camera = tracks.camera AND t.track_id = tracks.track_id)"
)


def _refresh_span(row: str) -> str:
    """Trigger body: recompute ``tracks.span_ns`` of the track of ``row`` (NEW or OLD)."""
    return (f"BEGIN UPDATE tracks SET span_ns = {_SPAN_OF_ROW} "
            f"WHERE camera = {row}.camera AND track_id = {row}.track_id; END")


# version -> statements taking the schema from version - 1 to version, run in one transaction.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (0)",
        """CREATE TABLE crops (
            vector_id INTEGER PRIMARY KEY, camera TEXT NOT NULL, track_id INTEGER NOT NULL,
            frame_index INTEGER NOT NULL, ts_ns INTEGER NOT NULL,
            x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
            confidence REAL NOT NULL, quality REAL NOT NULL, crop_path TEXT NOT NULL,
            model_id TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL)""",
        "CREATE INDEX crops_model_ts ON crops (model_id, ts_ns)",
        "CREATE INDEX crops_model_camera_ts ON crops (model_id, camera, ts_ns)",
        "CREATE INDEX crops_track ON crops (camera, track_id)",
        """CREATE TABLE tracks (
            camera TEXT NOT NULL, track_id INTEGER NOT NULL, start_ts_ns INTEGER NOT NULL,
            end_ts_ns INTEGER NOT NULL, n_crops INTEGER NOT NULL, best_vector_id INTEGER NOT NULL,
            PRIMARY KEY (camera, track_id)) WITHOUT ROWID""",
    ),
    # When the tracker saw each track (first to last frame); crops cover only part of it.
    2: (
        """CREATE TABLE track_spans (
            camera TEXT NOT NULL, track_id INTEGER NOT NULL, first_ts_ns INTEGER NOT NULL,
            last_ts_ns INTEGER NOT NULL, PRIMARY KEY (camera, track_id)) WITHOUT ROWID""",
    ),
    # Forgetting: tracks that must never come back, and the first id never handed out, so that
    # removing the newest rows does not let their ids be reused.
    3: (
        """CREATE TABLE forgotten_tracks (
            camera TEXT NOT NULL, track_id INTEGER NOT NULL, forgotten_ns INTEGER NOT NULL,
            PRIMARY KEY (camera, track_id)) WITHOUT ROWID""",
        "CREATE TABLE vector_id_floor (next_vector_id INTEGER NOT NULL)",
        "INSERT INTO vector_id_floor SELECT COALESCE(MAX(vector_id) + 1, 0) FROM crops",
    ),
    # The minimum-track-length filter: each track's span as ``track`` reports it, kept by
    # triggers and indexed, so the eligible tracks are found first and then only their crops
    # are read (through a covering index) instead of testing every crop row.
    4: (
        "ALTER TABLE tracks ADD COLUMN span_ns INTEGER NOT NULL DEFAULT 0",
        f"UPDATE tracks SET span_ns = {_SPAN_OF_ROW}",
        # covering for a time window too: a track's start and end prune it before its crops
        "CREATE INDEX tracks_span ON tracks (span_ns, start_ts_ns, end_ts_ns)",
        "CREATE INDEX crops_track_model_ts ON crops (camera, track_id, model_id, ts_ns)",
        "DROP INDEX crops_track",  # a prefix of the index above
        f"CREATE TRIGGER tracks_span_insert AFTER INSERT ON tracks {_refresh_span('NEW')}",
        "CREATE TRIGGER tracks_span_update AFTER UPDATE OF start_ts_ns, end_ts_ns ON tracks "
        + _refresh_span("NEW"),
        f"CREATE TRIGGER track_spans_insert AFTER INSERT ON track_spans {_refresh_span('NEW')}",
        f"CREATE TRIGGER track_spans_update AFTER UPDATE ON track_spans {_refresh_span('NEW')}",
        f"CREATE TRIGGER track_spans_delete AFTER DELETE ON track_spans {_refresh_span('OLD')}",
    ),
    # How each track moved over its whole span (JSON of ``TrackMotion.as_dict``; NULL unknown).
    5: ("ALTER TABLE track_spans ADD COLUMN motion TEXT",),
}

_CROP_COLUMNS = (
    "vector_id, camera, track_id, frame_index, ts_ns, x1, y1, x2, y2, confidence, quality, "
    "crop_path, model_id"
)

# Recomputed from the crops (not incremented) so that a re-index under a second model, which
# stores the same crops again, does not count them twice.
_REFRESH_TRACK = """
INSERT OR REPLACE INTO tracks (camera, track_id, start_ts_ns, end_ts_ns, n_crops, best_vector_id)
SELECT c.camera, c.track_id, MIN(c.ts_ns), MAX(c.ts_ns), COUNT(DISTINCT c.frame_index),
    (SELECT b.vector_id FROM crops b WHERE b.camera = c.camera AND b.track_id = c.track_id
     ORDER BY b.quality DESC, b.vector_id LIMIT 1)
FROM crops c WHERE c.camera = ? AND c.track_id = ? GROUP BY c.camera, c.track_id
"""


@dataclass(frozen=True)
class TrackSummary:
    """One track of one camera: its time span, crop count, best (highest quality) crop and
    motion."""

    camera: str
    track_id: int
    start_ts_ns: int
    end_ts_ns: int
    n_crops: int
    best: CropRecord
    motion: TrackMotion | None = None  # how it moved, when the tracker's span recorded it
    views: tuple[CropRecord, ...] = ()  # other crops of it, spread over its time (best first)


def _motion_json(motion: TrackMotion | None) -> str | None:
    return None if motion is None else json.dumps(motion.as_dict(), sort_keys=True)


def _motion(text: str | None) -> TrackMotion | None:
    return None if text is None else TrackMotion.from_dict(json.loads(text))


def _record(row: tuple) -> CropRecord:
    vid, camera, track_id, frame_index, ts_ns, x1, y1, x2, y2, conf, quality, path, model = row
    return CropRecord(
        vector_id=vid, camera=camera, track_id=track_id, frame_index=frame_index, ts_ns=ts_ns,
        xyxy=(x1, y1, x2, y2), confidence=conf, quality=quality, crop_path=path, model_id=model,
    )


class StoredModel(NamedTuple):
    """A model with vectors in a gallery shard, and their dimension."""

    model_id: str
    dim: int


@dataclass(frozen=True)
class RecentTrack:
    """A track with crops within a search's filters, and the time of its last such crop."""

    last_crop_ts_ns: int
    summary: TrackSummary


@dataclass(frozen=True)
class ForgottenTrack:
    """A track that was forgotten (its crops are refused from then on), and when."""

    camera: str
    track_id: int
    forgotten_ns: int


def _crop_filter(model_id: str, filt: SearchFilter) -> tuple[str, list[object]]:
    """``FROM ... WHERE ...`` over ``crops`` rows for the search filters, and its arguments.

    With a minimum track length the eligible tracks come first (index on ``tracks.span_ns``),
    then their crops (covering index on crops (camera, track_id, model_id, ts_ns)); CROSS JOIN
    keeps that order. Without one, the crops' own indexes answer.
    """
    min_track_ns = filt.min_track_ns
    joined = min_track_ns is not None
    source = ("tracks t CROSS JOIN crops ON crops.camera = t.camera "
              "AND crops.track_id = t.track_id") if joined else "crops"
    where = ["crops.model_id = ?"]
    args: list[object] = [model_id]
    if min_track_ns is not None:
        where.append("t.span_ns >= ?")
        args.append(int(min_track_ns))
    cameras, start_ts_ns, end_ts_ns = filt.cameras, filt.start_ts_ns, filt.end_ts_ns
    if cameras:
        where.append(f"{'t' if joined else 'crops'}.camera IN ({','.join('?' * len(cameras))})")
        args.extend(cameras)
    # A track's own start and end bound its crops' times: a track wholly outside the window
    # is passed over without reading its crops.
    if start_ts_ns is not None:
        where.append("crops.ts_ns >= ?" + (" AND t.end_ts_ns >= ?" if joined else ""))
        args.extend([int(start_ts_ns)] * (2 if joined else 1))
    if end_ts_ns is not None:
        where.append("crops.ts_ns <= ?" + (" AND t.start_ts_ns <= ?" if joined else ""))
        args.extend([int(end_ts_ns)] * (2 if joined else 1))
    return f"{source} WHERE {' AND '.join(where)}", args


def _check_batch(records: list[CropRecord], vectors: Embeddings) -> None:
    """Same length, every record of the vectors' model."""
    if len(records) != len(vectors):
        raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
    bad = [r.vector_id for r in records if r.model_id != vectors.model_id]
    if bad:
        raise ValueError(f"records {bad[:5]} are not of model {vectors.model_id!r}")


def _rows(records: list[CropRecord], vectors: Embeddings) -> list[tuple]:
    """``crops`` rows (``_CROP_COLUMNS``, dim, vector) of records and their vectors."""
    vecs = vectors.vectors.astype("<f4", copy=False)
    return [
        (r.vector_id, r.camera, int(r.track_id), int(r.frame_index), int(r.ts_ns),
         *(float(v) for v in r.xyxy), float(r.confidence), float(r.quality), r.crop_path,
         r.model_id, vectors.dim, vecs[i].tobytes())
        for i, r in enumerate(records)
    ]


class SqliteMetadata:
    """Crop metadata and vectors in one SQLite file (WAL mode).

    Example:
        >>> meta = SqliteMetadata(Path(".refind/metadata.sqlite3"))  # doctest: +SKIP
        >>> meta.add(records, embeddings)  # doctest: +SKIP
        >>> meta.ids_matching(embeddings.model_id, SearchFilter(cameras=("gate",)))  # doctest: +SKIP
        array([0, 4, 8])
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only and not self.path.is_file():
            raise FileNotFoundError(f"metadata database not found: {self.path}")
        uri = f"{self.path.resolve().as_uri()}?mode={'ro' if read_only else 'rwc'}"
        self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)
        self._read_only = read_only
        if not read_only:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                log.warning("%s: SQLite refused WAL mode (got %s)", self.path, mode)
        self._conn.execute("PRAGMA synchronous=FULL")
        # 64 MiB of page cache (grown on use; SQLite's default is 2 MiB): the filters' index
        # pages of a 1M-crop gallery stay in memory between searches.
        self._conn.execute("PRAGMA cache_size=-65536")
        self._migrate()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SqliteMetadata:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema version {version} is newer than this code ({SCHEMA_VERSION})"
            )
        if version == SCHEMA_VERSION:
            return
        if self._read_only:
            raise RuntimeError(f"{self.path}: schema version {version} needs a migration; "
                               "open it writable once")
        with self._transaction():
            version = self.schema_version()  # another process may have migrated meanwhile
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    self._conn.execute(statement)
                self._conn.execute("UPDATE schema_version SET version = ?", (target,))
                log.info("%s: schema migrated to version %d", self.path, target)

    def schema_version(self) -> int:
        """The stored schema version, 0 for an empty database."""
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not exists:
            return 0
        return int(self._conn.execute("SELECT version FROM schema_version").fetchone()[0])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block (or the commit) raises."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def add(
        self, records: list[CropRecord], vectors: Embeddings, *, claimed: bool = False
    ) -> np.ndarray:
        """Store crops with their vectors in one transaction; ids must exceed every id handed
        out (``claimed``: every stored id, the caller took them with ``claim_ids``). The ids
        are never handed out again, not even those of skipped crops.

        Crops of a forgotten track are skipped (a replayed event or a late crop never brings it
        back). Returns the (n,) bool mask of the records stored.
        """
        _check_batch(records, vectors)
        ids = np.array([r.vector_id for r in records], np.int64)
        if ids.size and (ids[0] < 0 or np.any(np.diff(ids) <= 0)):
            raise ValueError(f"vector ids must be >= 0 and increasing, got {ids[:5].tolist()}...")
        kept = np.ones(len(records), bool)
        if not records:
            return kept
        rows = _rows(records, vectors)
        with self._transaction():
            self._check_new(int(ids[0]), stored_only=claimed)
            forgotten = self.forgotten_among({(r.camera, int(r.track_id)) for r in records})
            if forgotten:
                kept = np.array([(r.camera, int(r.track_id)) not in forgotten for r in records])
                log.warning("%s: skipped %d crops of forgotten tracks %s", self.path,
                            int((~kept).sum()), sorted(forgotten)[:5])
            self._conn.executemany(
                f"INSERT INTO crops ({_CROP_COLUMNS}, dim, vector) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row for row, keep in zip(rows, kept, strict=True) if keep],
            )
            tracks = sorted({(r.camera, int(r.track_id)) for r in records} - forgotten)
            self._conn.executemany(_REFRESH_TRACK, tracks)
            self._raise_floor(int(ids[-1]) + 1)
        return kept

    def claim_ids(self, first: int, end: int) -> None:
        """Take ids ``[first, end)`` before their crops are written anywhere else (the durable
        record): no later batch gets them, even when these crops never reach SQLite."""
        with self._transaction():
            self._check_new(first)
            self._raise_floor(end)

    def _check_new(self, first: int, *, stored_only: bool = False) -> None:
        if stored_only:
            row = self._conn.execute("SELECT MAX(vector_id) FROM crops").fetchone()
            last = -1 if row[0] is None else int(row[0])
        else:
            last = self.next_vector_id() - 1
        if first <= last:
            raise ValueError(f"vector id {first} is not above the largest stored id {last}")

    def next_vector_id(self) -> int:
        """The id the next stored vector should take (ids are global across models and never
        reused, not even those of removed rows)."""
        row = self._conn.execute(
            "SELECT MAX(COALESCE((SELECT MAX(vector_id) + 1 FROM crops), 0), "
            "(SELECT next_vector_id FROM vector_id_floor))"
        ).fetchone()
        return int(row[0])

    def max_vector_id(self, model_id: str) -> int:
        """Largest id stored for ``model_id``, -1 when none."""
        row = self._conn.execute(
            "SELECT MAX(vector_id) FROM crops WHERE model_id = ?", (model_id,)
        ).fetchone()
        return -1 if row[0] is None else int(row[0])

    def count(self, model_id: str, max_vector_id: int | None = None) -> int:
        """Vectors stored for ``model_id`` (only those with id <= ``max_vector_id`` if given)."""
        limit = (1 << 63) - 1 if max_vector_id is None else max_vector_id
        return int(self._conn.execute(
            "SELECT COUNT(*) FROM crops WHERE model_id = ? AND vector_id <= ?", (model_id, limit)
        ).fetchone()[0])

    def dim(self, model_id: str) -> int | None:
        """Dimension of ``model_id``'s stored vectors, None when it has none."""
        row = self._conn.execute(
            "SELECT dim FROM crops WHERE model_id = ? LIMIT 1", (model_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def crops(self, vector_ids: Iterable[int]) -> list[CropRecord]:
        """The records of ``vector_ids``, in that order; KeyError names any that are missing."""
        wanted = [int(v) for v in vector_ids]
        unique = sorted(set(wanted))
        found = self.crops_found(unique)
        missing = [v for v in unique if v not in found]
        if missing:
            raise KeyError(f"vector ids not in metadata: {missing[:10]}")
        return [found[v] for v in wanted]

    def crops_found(self, vector_ids: Iterable[int]) -> dict[int, CropRecord]:
        """The records of those ``vector_ids`` still stored (removed ones are left out)."""
        unique = sorted({int(v) for v in vector_ids})
        found: dict[int, CropRecord] = {}
        for start in range(0, len(unique), _IN_CHUNK):
            chunk = unique[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(
                f"SELECT {_CROP_COLUMNS} FROM crops WHERE vector_id IN ({marks})", chunk
            ):
                found[row[0]] = _record(row)
        return found

    def vectors_after(
        self, vector_id: int, model_id: str, chunk_size: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (n,) int64, vectors (n, d) float32) chunks of ``model_id`` with id > vector_id."""
        last = vector_id
        while True:
            rows = self._conn.execute(
                "SELECT vector_id, dim, vector FROM crops WHERE model_id = ? AND vector_id > ? "
                "ORDER BY vector_id LIMIT ?",
                (model_id, last, chunk_size),
            ).fetchall()
            if not rows:
                return
            dims = {r[1] for r in rows}
            if len(dims) != 1:
                raise ValueError(f"model {model_id!r} has vectors of several dims: {sorted(dims)}")
            ids = np.array([r[0] for r in rows], np.int64)
            vecs = np.frombuffer(b"".join(r[2] for r in rows), "<f4").reshape(len(rows), -1)
            yield ids, vecs.astype(np.float32)
            last = int(ids[-1])

    def ids_matching(self, model_id: str, filt: SearchFilter = NO_FILTER) -> np.ndarray:
        """Sorted (n,) int64 ids of ``model_id`` within the filter (a track's length as
        ``track`` reports its span)."""
        source, args = _crop_filter(model_id, filt)
        # One string of ids parsed in C: ~3x faster than a Python step per row (100k+ rows).
        sql = f"SELECT group_concat(crops.vector_id) FROM {source}"
        text = self._conn.execute(sql, args).fetchone()[0] or ""
        return np.sort(np.fromstring(text, np.int64, sep=","))

    def recent_tracks(
        self, model_id: str, filt: SearchFilter = NO_FILTER, limit: int = 1000
    ) -> list[RecentTrack]:
        """Tracks of ``model_id`` with crops within the filter (as ``ids_matching``), most
        recently seen first, at most ``limit``."""
        out = []
        for last, camera, track_id in self.recent_track_keys(model_id, filt, limit):
            summary = self.track(camera, track_id)
            if summary is not None:
                out.append(RecentTrack(last, summary))
        return out

    def count_tracks(self, model_id: str, filt: SearchFilter = NO_FILTER,
                     limit: int = 1000) -> int:
        """How many tracks of ``model_id`` have crops within the filter, counted up to
        ``limit`` (the scan stops there: ~20 ms at 800k crops, where ordering every track by
        time takes a second)."""
        source, args = _crop_filter(model_id, filt)
        sql = (f"SELECT COUNT(*) FROM (SELECT DISTINCT crops.camera, crops.track_id FROM {source} "
               "LIMIT ?)")
        return int(self._conn.execute(sql, [*args, int(limit)]).fetchone()[0])

    def recent_track_keys(
        self, model_id: str, filt: SearchFilter = NO_FILTER, limit: int = 1000
    ) -> list[tuple[int, str, int]]:
        """(time of its last crop, camera, track id) of the tracks ``recent_tracks`` returns,
        without their summaries: one query, for counting and choosing before reading."""
        source, args = _crop_filter(model_id, filt)
        sql = (f"SELECT crops.camera, crops.track_id, MAX(crops.ts_ns) AS last FROM {source} "
               "GROUP BY crops.camera, crops.track_id "
               "ORDER BY last DESC, crops.camera, crops.track_id LIMIT ?")
        found = self._conn.execute(sql, [*args, int(limit)]).fetchall()
        return [(int(last), camera, int(track_id)) for camera, track_id, last in found]

    def set_track_spans(self, spans: Iterable[TrackSpan]) -> None:
        """Record when the tracker saw tracks (widening a span already recorded); a forgotten
        track's span is not recorded again."""
        spans = list(spans)
        with self._transaction():
            gone = self.forgotten_among({(s.camera, int(s.track_id)) for s in spans})
            spans = [s for s in spans if (s.camera, int(s.track_id)) not in gone]
            self._conn.executemany(
                "INSERT INTO track_spans (camera, track_id, first_ts_ns, last_ts_ns, motion) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (camera, track_id) DO UPDATE SET "
                "first_ts_ns = MIN(first_ts_ns, excluded.first_ts_ns), "
                "last_ts_ns = MAX(last_ts_ns, excluded.last_ts_ns), "
                "motion = COALESCE(excluded.motion, motion)",
                [(s.camera, int(s.track_id), int(s.first_ts_ns), int(s.last_ts_ns),
                  _motion_json(s.motion)) for s in spans],
            )

    def track_vector_ids(self, camera: str, track_id: int, model_id: str) -> list[int]:
        """Ids of ``model_id``'s vectors of one track, ascending."""
        return [int(r[0]) for r in self._conn.execute(
            "SELECT vector_id FROM crops WHERE camera = ? AND track_id = ? AND model_id = ? "
            "ORDER BY vector_id", (camera, int(track_id), model_id))]

    def track(self, camera: str, track_id: int) -> TrackSummary | None:
        """The summary of one track, None if it has no crops. Its times span what the tracker
        saw when that was recorded (``set_track_spans``), else its crops."""
        row = self._conn.execute(
            "SELECT t.start_ts_ns, t.end_ts_ns, t.n_crops, t.best_vector_id, s.first_ts_ns, "
            "s.last_ts_ns, s.motion FROM tracks t LEFT JOIN track_spans s "
            "ON s.camera = t.camera AND s.track_id = t.track_id "
            "WHERE t.camera = ? AND t.track_id = ?",
            (camera, int(track_id)),
        ).fetchone()
        if row is None:
            return None
        best = self.crops([row[3]])[0]
        start = row[0] if row[4] is None else min(row[0], row[4])
        end = row[1] if row[5] is None else max(row[1], row[5])
        return TrackSummary(camera, int(track_id), start, end, row[2], best, _motion(row[6]),
                            self._views(best))

    def _views(self, best: CropRecord, n: int = VIEWS) -> tuple[CropRecord, ...]:
        """Up to ``n`` other crops of ``best``'s track, of its model, spread over the track's
        time (the best of each of n time slices), so evidence can be read from more than one."""
        rows = [_record(r) for r in self._conn.execute(
            f"SELECT {_CROP_COLUMNS} FROM crops WHERE camera = ? AND track_id = ? AND "
            "model_id = ? AND vector_id != ? ORDER BY ts_ns",
            (best.camera, best.track_id, best.model_id, best.vector_id))]
        if len(rows) <= n:
            return tuple(rows)
        cuts = np.array_split(np.arange(len(rows)), n)
        return tuple(max((rows[i] for i in cut), key=lambda r: r.quality) for cut in cuts)

    def max_track_id(self, camera: str) -> int:
        """Largest track id stored for ``camera`` (with crops or only a span), 0 when none
        (trackers number from 1)."""
        row = self._conn.execute(
            "SELECT MAX(id) FROM (SELECT MAX(track_id) AS id FROM tracks WHERE camera = ? "
            "UNION ALL SELECT MAX(track_id) FROM track_spans WHERE camera = ?)", (camera, camera)
        ).fetchone()
        return 0 if row[0] is None else int(row[0])

    def remove_where(
        self,
        model_id: str,
        camera: str,
        *,
        track_id: int | None = None,
        before_ts_ns: int | None = None,
        since_ts_ns: int | None = None,
        forget_ns: int | None = None,
    ) -> list[CropRecord]:
        """Delete ``model_id``'s crops of ``camera`` (of one track, within ``[since_ts_ns,
        before_ts_ns)``, or both) in one transaction; returns the records removed, in id order.

        Track summaries are recomputed from the crops left (of every model); a track with no
        crop left loses its summary and span. ``forget_ns`` (needs ``track_id``) also records
        the track as forgotten, so that ``add`` never stores it again, and drops its span.
        """
        if forget_ns is not None and track_id is None:
            raise ValueError("forgetting needs a track_id")
        where, args = ["model_id = ?", "camera = ?"], [model_id, camera]
        if track_id is not None:
            where.append("track_id = ?")
            args.append(int(track_id))
        if before_ts_ns is not None:
            where.append("ts_ns < ?")
            args.append(int(before_ts_ns))
        if since_ts_ns is not None:
            where.append("ts_ns >= ?")
            args.append(int(since_ts_ns))
        cond = " AND ".join(where)
        with self._transaction():
            removed = [_record(r) for r in self._conn.execute(
                f"SELECT {_CROP_COLUMNS} FROM crops WHERE {cond} ORDER BY vector_id", args
            )]
            if removed:
                self._conn.execute(f"DELETE FROM crops WHERE {cond}", args)
                self._raise_floor(removed[-1].vector_id + 1)
            tracks = sorted({(r.camera, int(r.track_id)) for r in removed})
            self._recompute_tracks(tracks)
            self._conn.executemany(
                "DELETE FROM track_spans WHERE camera = ? AND track_id = ? AND NOT EXISTS "
                "(SELECT 1 FROM tracks t WHERE t.camera = ? AND t.track_id = ?)",
                [(c, t, c, t) for c, t in tracks],
            )
            if forget_ns is not None:
                self._conn.execute(
                    "DELETE FROM track_spans WHERE camera = ? AND track_id = ?",
                    (camera, int(track_id)),  # type: ignore[arg-type]
                )
                self._conn.execute(
                    "INSERT OR IGNORE INTO forgotten_tracks (camera, track_id, forgotten_ns) "
                    "VALUES (?, ?, ?)",
                    (camera, int(track_id), int(forget_ns)),  # type: ignore[arg-type]
                )
        return removed

    def is_forgotten(self, camera: str, track_id: int) -> bool:
        """True when the track was forgotten (its crops are refused)."""
        return self.forgotten_among({(camera, int(track_id))}) != set()

    def forgotten_among(self, tracks: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """Those of ``tracks`` (camera, track id) that were forgotten."""
        return {
            (c, t) for c, t in tracks
            if self._conn.execute(
                "SELECT 1 FROM forgotten_tracks WHERE camera = ? AND track_id = ?", (c, t)
            ).fetchone()
        }

    def models(self) -> list[StoredModel]:
        """Every model with stored vectors, sorted."""
        return [StoredModel(m, int(d)) for m, d in self._conn.execute(
            "SELECT model_id, MIN(dim) FROM crops GROUP BY model_id ORDER BY model_id"
        )]

    def cameras(self) -> list[str]:
        """Cameras with at least one stored track, sorted."""
        return [r[0] for r in self._conn.execute("SELECT DISTINCT camera FROM tracks ORDER BY 1")]

    # -- copies: re-index and rebuild write rows under ids chosen elsewhere ------------------

    def add_copies(self, records: list[CropRecord], vectors: Embeddings) -> int:
        """Store rows whose ids were chosen elsewhere (a re-index keeps each crop's id); one
        transaction, ids already stored or of forgotten tracks are skipped. Returns rows added.

        Idempotent: committing the same batch twice stores it once (``vector_id`` is the key).
        """
        _check_batch(records, vectors)
        if not records:
            return 0
        with self._transaction():
            forgotten = self.forgotten_among({(r.camera, int(r.track_id)) for r in records})
            rows = [row for r, row in zip(records, _rows(records, vectors), strict=True)
                    if (r.camera, int(r.track_id)) not in forgotten]
            before = self._conn.total_changes
            self._conn.executemany(
                f"INSERT OR IGNORE INTO crops ({_CROP_COLUMNS}, dim, vector) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            added = self._conn.total_changes - before
            tracks = sorted({(r.camera, int(r.track_id)) for r in records} - forgotten)
            self._conn.executemany(_REFRESH_TRACK, tracks)
        return added

    def vector_ids(self, model_id: str) -> np.ndarray:
        """Sorted (n,) int64 ids of every row of ``model_id``."""
        return np.fromiter((r[0] for r in self._conn.execute(
            "SELECT vector_id FROM crops WHERE model_id = ? ORDER BY vector_id", (model_id,)
        )), np.int64)

    def crop_keys(self, model_id: str) -> Iterator[tuple[str, int, int, int]]:
        """(camera, track id, frame index, time ns) of every row of ``model_id``, one per
        row."""
        for c, t, f, ns in self._conn.execute(
            "SELECT camera, track_id, frame_index, ts_ns FROM crops WHERE model_id = ?",
            (model_id,),
        ):
            yield c, int(t), int(f), int(ns)

    def stored_already(self, keys: Iterable[tuple[str, int, int, int]], model_id: str
                       ) -> dict[tuple[str, int, int, int], CropRecord]:
        """The rows of ``model_id`` that already hold the crops ``keys`` ((camera, track,
        frame, time)), by key: a write retried after its first try was committed."""
        wanted = {(c, int(t), int(f), int(ns)) for c, t, f, ns in keys}
        found: dict[tuple[str, int, int, int], CropRecord] = {}
        for camera, track_id in sorted({(c, t) for c, t, _, _ in wanted}):
            for row in self._conn.execute(
                f"SELECT {_CROP_COLUMNS} FROM crops WHERE camera = ? AND track_id = ? "
                "AND model_id = ? ORDER BY vector_id", (camera, track_id, model_id),
            ):
                rec = _record(row)
                key = (rec.camera, int(rec.track_id), int(rec.frame_index), int(rec.ts_ns))
                if key in wanted:
                    found.setdefault(key, rec)
        return found

    def remove_ids(self, vector_ids: Iterable[int]) -> int:
        """Delete rows by id (one transaction), recompute their tracks; returns rows deleted."""
        ids = sorted({int(v) for v in vector_ids})
        if not ids:
            return 0
        with self._transaction():
            tracks: set[tuple[str, int]] = set()
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                tracks |= set(self._conn.execute(
                    f"SELECT camera, track_id FROM crops WHERE vector_id IN ({marks})", chunk
                ).fetchall())
                self._conn.execute(f"DELETE FROM crops WHERE vector_id IN ({marks})", chunk)
            self._raise_floor(ids[-1] + 1)
            self._recompute_tracks(sorted(tracks))
        return len(ids)

    def raise_id_floor(self, next_vector_id: int) -> None:
        """Never hand out ids below ``next_vector_id`` (a copy keeps its source's id space)."""
        with self._transaction():
            self._raise_floor(next_vector_id)

    def _raise_floor(self, next_vector_id: int) -> None:
        """``raise_id_floor`` inside the caller's transaction."""
        self._conn.execute("UPDATE vector_id_floor SET next_vector_id = MAX(next_vector_id, ?)",
                           (int(next_vector_id),))

    def _recompute_tracks(self, tracks: list[tuple[str, int]]) -> None:
        """Summaries of ``tracks`` from the crops left, inside the caller's transaction; a
        track with no crop left loses its summary."""
        self._conn.executemany("DELETE FROM tracks WHERE camera = ? AND track_id = ?", tracks)
        self._conn.executemany(_REFRESH_TRACK, tracks)

    def track_spans(self) -> list[TrackSpan]:
        """Every recorded span (their boxes are not stored: zeros), by camera and track."""
        return [TrackSpan(c, int(t), int(a), int(b), motion=_motion(m))
                for c, t, a, b, m in self._conn.execute(
                    "SELECT camera, track_id, first_ts_ns, last_ts_ns, motion FROM track_spans "
                    "ORDER BY 1, 2")]

    def forgotten(self) -> list[ForgottenTrack]:
        """Every forgotten track, by camera and track."""
        return [ForgottenTrack(c, int(t), int(ns)) for c, t, ns in self._conn.execute(
            "SELECT camera, track_id, forgotten_ns FROM forgotten_tracks ORDER BY 1, 2"
        )]

    def mark_forgotten(self, forgotten: Iterable[ForgottenTrack]) -> int:
        """Record tracks as forgotten and delete their rows and spans; returns the rows
        deleted. Used when copying a gallery: its tombstones come along."""
        tracks = [(f.camera, int(f.track_id), int(f.forgotten_ns)) for f in forgotten]
        ids = [r[0] for c, t, _ in tracks for r in self._conn.execute(
            "SELECT vector_id FROM crops WHERE camera = ? AND track_id = ?", (c, t)
        )]
        removed = self.remove_ids(ids)
        with self._transaction():
            self._conn.executemany(
                "INSERT OR IGNORE INTO forgotten_tracks (camera, track_id, forgotten_ns) "
                "VALUES (?, ?, ?)", tracks,
            )
            self._conn.executemany("DELETE FROM track_spans WHERE camera = ? AND track_id = ?",
                                   [(c, t) for c, t, _ in tracks])
        return removed
