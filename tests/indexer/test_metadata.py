"""SqliteMetadata: one-transaction adds, lookups, filters, track summaries, schema version."""

from __future__ import annotations

import dataclasses
import sqlite3

import numpy as np
import pytest

from indexer.metadata import SCHEMA_VERSION, SqliteMetadata
from streaming.records import Embeddings
from tests.indexer.conftest import CAMERAS, DIM, MODEL, crop_records


@pytest.fixture
def meta(tmp_path):
    m = SqliteMetadata(tmp_path / "meta.sqlite3")
    yield m
    m.close()


def _add(meta: SqliteMetadata, n: int, model_id: str = MODEL, seed: int = 0) -> np.ndarray:
    first = meta.next_vector_id()
    ids = np.arange(first, first + n, dtype=np.int64)
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    meta.add(crop_records(ids, model_id), Embeddings(vectors, model_id))
    return vectors


def test_round_trip_of_records_and_vectors(meta):
    vectors = _add(meta, 50)
    assert meta.next_vector_id() == 50
    assert meta.schema_version() == SCHEMA_VERSION
    seven, three = crop_records(np.array([7, 3]))
    assert meta.crops([7, 3, 7]) == [seven, three, seven]
    chunks = list(meta.vectors_after(9, MODEL, chunk_size=16))
    assert [len(ids) for ids, _ in chunks] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate([ids for ids, _ in chunks]), np.arange(10, 50))
    np.testing.assert_array_equal(np.concatenate([v for _, v in chunks]), vectors[10:])
    assert meta.dim(MODEL) == DIM and meta.dim("unknown") is None
    assert meta.count(MODEL) == 50 and meta.count(MODEL, max_vector_id=9) == 10


def test_missing_ids_raise_key_error_naming_them(meta):
    _add(meta, 5)
    with pytest.raises(KeyError, match=r"\[77, 99\]"):
        meta.crops([1, 99, 77])


@pytest.mark.parametrize(
    ("spoil", "error"),
    [
        (lambda r: dataclasses.replace(r, crop_path=None), sqlite3.IntegrityError),  # row 3 fails
        (lambda r: dataclasses.replace(r, vector_id=2), ValueError),  # ids not increasing
        (lambda r: dataclasses.replace(r, model_id="other"), ValueError),
    ],
)
def test_failed_add_writes_nothing(meta, spoil, error):
    _add(meta, 5)
    ids = np.arange(5, 10)
    records = crop_records(ids)
    records[3] = spoil(records[3])
    with pytest.raises(error):
        meta.add(records, Embeddings(np.ones((5, DIM)), MODEL))
    assert meta.next_vector_id() == 5
    assert meta.count(MODEL) == 5
    assert meta.track(CAMERAS[1], 1).n_crops == 1  # track summaries rolled back too


def test_ids_below_the_stored_maximum_are_refused(meta):
    _add(meta, 5)
    with pytest.raises(ValueError, match="not above the largest stored id 4"):
        meta.add(crop_records(np.array([4])), Embeddings(np.ones((1, DIM)), MODEL))


@pytest.mark.parametrize(
    ("cameras", "start_s", "end_s", "model_id", "expected"),
    [
        ((), None, None, MODEL, list(range(40))),
        (("gate",), None, None, MODEL, list(range(0, 40, 4))),
        (("gate", "dock"), None, None, MODEL, sorted([*range(0, 40, 4), *range(3, 40, 4)])),
        ((), 10, 12, MODEL, [10, 11, 12]),
        (("lobby",), 10, None, MODEL, list(range(13, 40, 4))),
        (("lobby",), None, 5, MODEL, [1, 5]),
        (("nowhere",), None, None, MODEL, []),
        ((), None, None, "other-model", []),
    ],
)
def test_ids_matching(meta, cameras, start_s, end_s, model_id, expected):
    _add(meta, 40)
    start = None if start_s is None else start_s * 1_000_000_000
    end = None if end_s is None else end_s * 1_000_000_000
    got = meta.ids_matching(cameras, start, end, model_id)
    assert got.dtype == np.int64
    assert got.tolist() == expected


def test_tracks_are_keyed_by_camera_and_track_id(meta):
    _add(meta, 40)  # track 1 on every camera: ids 0..19; track 2: ids 20..39
    gate, lobby = meta.track("gate", 1), meta.track("lobby", 1)
    assert (gate.n_crops, gate.start_ts_ns, gate.end_ts_ns) == (5, 0, 16_000_000_000)
    assert (lobby.n_crops, lobby.start_ts_ns) == (5, 1_000_000_000)
    assert gate.best.quality == max(v % 7 for v in range(0, 20, 4))
    assert meta.track("gate", 3) is None
    assert meta.cameras() == sorted(CAMERAS)
    assert meta.max_track_id("gate") == 2 and meta.max_track_id("nowhere") == 0


def test_second_model_does_not_double_count_crops(meta):
    _add(meta, 20)
    first = meta.next_vector_id()
    again = [
        dataclasses.replace(r, vector_id=first + i, model_id="reid-test-v2")
        for i, r in enumerate(crop_records(np.arange(20)))
    ]
    meta.add(again, Embeddings(np.ones((20, 8)), "reid-test-v2"))
    assert meta.track("gate", 1).n_crops == 5
    assert meta.dim("reid-test-v2") == 8 and meta.count(MODEL) == 20


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "meta.sqlite3"
    SqliteMetadata(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer than this code"):
        SqliteMetadata(path)


def test_wal_mode(meta):
    assert meta._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_track_span_covers_what_the_tracker_saw(meta):
    _add(meta, 20)
    rec = meta.crops([0])[0]
    before = meta.track(rec.camera, rec.track_id)
    first, last = before.start_ts_ns - 5_000_000_000, before.end_ts_ns + 7_000_000_000
    meta.set_track_spans(rec.camera, [(rec.track_id, first, last)])
    after = meta.track(rec.camera, rec.track_id)
    assert (after.start_ts_ns, after.end_ts_ns) == (first, last)
    assert after.n_crops == before.n_crops
    # a later, narrower span never shrinks what was recorded
    meta.set_track_spans(rec.camera, [(rec.track_id, first + 1, last - 1)])
    assert meta.track(rec.camera, rec.track_id).start_ts_ns == first


def test_schema_1_database_is_migrated(tmp_path):
    db = tmp_path / "old.sqlite3"
    SqliteMetadata(db).close()
    with sqlite3.connect(db) as conn:  # roll it back to version 1 as an older refind left it
        for table in ("track_spans", "forgotten_tracks", "vector_id_floor"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("UPDATE schema_version SET version = 1")
    meta = SqliteMetadata(db)
    assert meta.schema_version() == SCHEMA_VERSION == 3
    meta.set_track_spans("c", [(1, 0, 10)])
    meta.close()


def test_schema_2_database_keeps_its_ids_when_migrated(tmp_path):
    db = tmp_path / "old.sqlite3"
    meta = SqliteMetadata(db)
    _add(meta, 20)
    meta.close()
    with sqlite3.connect(db) as conn:  # as refind with schema 2 left it
        conn.execute("DROP TABLE forgotten_tracks")
        conn.execute("DROP TABLE vector_id_floor")
        conn.execute("UPDATE schema_version SET version = 2")
    meta = SqliteMetadata(db)
    assert meta.schema_version() == 3 and meta.next_vector_id() == 20
    rec = meta.crops([19])[0]
    meta.remove_where(MODEL, rec.camera, track_id=rec.track_id)
    assert meta.next_vector_id() == 20  # removed ids are never handed out again
    meta.close()
