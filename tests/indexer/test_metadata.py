"""SqliteMetadata: one-transaction adds, lookups, filters, track summaries, schema version."""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3

import numpy as np
import pytest

from refind.indexer.metadata import SCHEMA_VERSION, SqliteMetadata, _crop_filter
from refind.streaming.motion import TrackMotion
from refind.streaming.records import CropRecord, Embeddings, SearchFilter, TrackSpan
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


def test_claimed_ids_are_never_handed_out_again(meta):
    _add(meta, 5)
    meta.claim_ids(5, 8)  # a batch written to the record, then a crash before SQLite
    assert meta.next_vector_id() == 8
    with pytest.raises(ValueError, match="not above the largest stored id 7"):
        meta.claim_ids(6, 9)
    meta.claim_ids(8, 10)  # claimed, then stored under those ids
    meta.add(crop_records(np.arange(8, 10)), Embeddings(np.ones((2, DIM)), MODEL), claimed=True)
    assert meta.next_vector_id() == 10 and meta.count(MODEL) == 7


def test_ids_of_skipped_crops_are_never_handed_out_again(meta):
    _add(meta, 5)
    last = meta.crops([4])[0]
    meta.remove_where(MODEL, last.camera, track_id=last.track_id, forget_ns=1)
    late = dataclasses.replace(crop_records(np.array([5]))[0], camera=last.camera,
                               track_id=last.track_id)  # a late crop of a forgotten track
    kept = meta.add([late], Embeddings(np.ones((1, DIM)), MODEL))
    assert not kept.any() and meta.next_vector_id() == 6


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
    got = meta.ids_matching(model_id, SearchFilter(cameras, start, end))
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
    meta.set_track_spans([TrackSpan("gate", 9, 0, 1)])  # a track ended with no crop stored
    assert meta.max_track_id("gate") == 9  # a new ingest never takes its id


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
    meta.set_track_spans([TrackSpan(rec.camera, rec.track_id, first, last)])
    after = meta.track(rec.camera, rec.track_id)
    assert (after.start_ts_ns, after.end_ts_ns) == (first, last)
    assert after.n_crops == before.n_crops
    # a later, narrower span never shrinks what was recorded
    meta.set_track_spans([TrackSpan(rec.camera, rec.track_id, first + 1, last - 1)])
    assert meta.track(rec.camera, rec.track_id).start_ts_ns == first


def _undo_schema_5(conn: sqlite3.Connection) -> None:
    """Take a database back to schema 4 (no motion column on track spans)."""
    conn.execute("ALTER TABLE track_spans DROP COLUMN motion")
    conn.execute("UPDATE schema_version SET version = 4")


def test_schema_4_database_gets_track_motion(tmp_path):
    db = tmp_path / "old.sqlite3"
    meta = SqliteMetadata(db)
    _add(meta, 3)
    rec = meta.crops([0])[0]
    meta.set_track_spans([TrackSpan(rec.camera, rec.track_id, 0, 10)])
    meta.close()
    with sqlite3.connect(db) as conn:
        _undo_schema_5(conn)
    meta = SqliteMetadata(db)
    assert meta.schema_version() == SCHEMA_VERSION == 5
    assert meta.track(rec.camera, rec.track_id).motion is None  # kept, motion unknown
    moving = TrackMotion(vx=-0.7, vy=0.1, growth=0.02, speed=0.7, still=0.0, duration_s=4.0,
                         height_px=80.0)
    meta.set_track_spans([TrackSpan(rec.camera, rec.track_id, 0, 12, motion=moving)])
    assert meta.track(rec.camera, rec.track_id).motion == moving
    meta.set_track_spans([TrackSpan(rec.camera, rec.track_id, 0, 12)])  # unknown: kept
    assert meta.track(rec.camera, rec.track_id).motion == moving
    assert [s.motion for s in meta.track_spans()] == [moving]
    meta.close()


def _undo_schema_4(conn: sqlite3.Connection) -> None:
    """Take a database back to schema 3 (no track span column, its triggers or indexes)."""
    _undo_schema_5(conn)
    for trigger in ("tracks_span_insert", "tracks_span_update", "track_spans_insert",
                    "track_spans_update", "track_spans_delete"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP INDEX tracks_span")
    conn.execute("DROP INDEX crops_track_model_ts")
    conn.execute("ALTER TABLE tracks DROP COLUMN span_ns")
    conn.execute("CREATE INDEX crops_track ON crops (camera, track_id)")
    conn.execute("UPDATE schema_version SET version = 3")


def test_schema_1_database_is_migrated(tmp_path):
    db = tmp_path / "old.sqlite3"
    SqliteMetadata(db).close()
    with sqlite3.connect(db) as conn:  # roll it back to version 1 as an older refind left it
        _undo_schema_4(conn)
        for table in ("track_spans", "forgotten_tracks", "vector_id_floor"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("UPDATE schema_version SET version = 1")
    meta = SqliteMetadata(db)
    assert meta.schema_version() == SCHEMA_VERSION == 5
    meta.set_track_spans([TrackSpan("c", 1, 0, 10)])
    meta.close()


def test_schema_2_database_keeps_its_ids_when_migrated(tmp_path):
    db = tmp_path / "old.sqlite3"
    meta = SqliteMetadata(db)
    _add(meta, 20)
    meta.close()
    with sqlite3.connect(db) as conn:  # as refind with schema 2 left it
        _undo_schema_4(conn)
        conn.execute("DROP TABLE forgotten_tracks")
        conn.execute("DROP TABLE vector_id_floor")
        conn.execute("UPDATE schema_version SET version = 2")
    meta = SqliteMetadata(db)
    assert meta.schema_version() == SCHEMA_VERSION and meta.next_vector_id() == 20
    rec = meta.crops([19])[0]
    meta.remove_where(MODEL, rec.camera, track_id=rec.track_id)
    assert meta.next_vector_id() == 20  # removed ids are never handed out again
    meta.close()


# -- the minimum-track-length filter -----------------------------------------------------------

S = 1_000_000_000


def _reference_filter(cameras, start_ts_ns, end_ts_ns, model_id, min_track_ns):
    """The filter as schema 3 wrote it (a correlated EXISTS per crop row): the reference."""
    where, args = ["model_id = ?"], [model_id]
    if cameras:
        where.append(f"camera IN ({','.join('?' * len(cameras))})")
        args.extend(cameras)
    if start_ts_ns is not None:
        where.append("ts_ns >= ?")
        args.append(int(start_ts_ns))
    if end_ts_ns is not None:
        where.append("ts_ns <= ?")
        args.append(int(end_ts_ns))
    if min_track_ns is not None and min_track_ns > 0:
        where.append(
            "EXISTS (SELECT 1 FROM tracks t LEFT JOIN track_spans s ON s.camera = t.camera "
            "AND s.track_id = t.track_id WHERE t.camera = crops.camera AND t.track_id = "
            "crops.track_id AND (MAX(t.end_ts_ns, COALESCE(s.last_ts_ns, t.end_ts_ns)) "
            "- MIN(t.start_ts_ns, COALESCE(s.first_ts_ns, t.start_ts_ns))) >= ?)"
        )
        args.append(int(min_track_ns))
    return " AND ".join(where), args


def _reference(meta, *filters):
    where, args = _reference_filter(*filters)
    ids = [r[0] for r in meta._conn.execute(
        f"SELECT vector_id FROM crops WHERE {where} ORDER BY vector_id", args)]
    tracks = [tuple(r) for r in meta._conn.execute(
        f"SELECT camera, track_id, MAX(ts_ns) AS last FROM crops WHERE {where} "
        "GROUP BY camera, track_id ORDER BY last DESC, camera, track_id LIMIT 1000", args)]
    return ids, tracks


def _varied_gallery(meta: SqliteMetadata, n: int = 600, seed: int = 3) -> None:
    """Tracks of 1-30 crops at random times, two models, tracker spans that widen a track
    (before, after, both, disjoint) or not, then removals and a forgotten track."""
    rng = np.random.default_rng(seed)
    cam = rng.integers(0, len(CAMERAS), n)
    track = rng.integers(1, 25, n)
    ts = rng.integers(0, 120 * S, n)
    records = [
        CropRecord(vector_id=i, camera=CAMERAS[cam[i]], track_id=int(track[i]), frame_index=i,
                   ts_ns=int(ts[i]), xyxy=(1.0, 2.0, 30.0, 90.0), confidence=0.9,
                   quality=float(i % 5), crop_path=f"crops/{i}.jpg", model_id=MODEL)
        for i in range(n)
    ]
    meta.add(records, Embeddings(np.ones((n, DIM)), MODEL))
    second = [dataclasses.replace(r, vector_id=n + j, model_id="m2")
              for j, r in enumerate(records[::3])]
    meta.add(second, Embeddings(np.ones((len(second), 4)), "m2"))
    for camera in CAMERAS:
        spans = []
        for t in range(1, 25, 2):
            summary = meta.track(camera, t)
            if summary is None:
                continue
            a, b = summary.start_ts_ns, summary.end_ts_ns
            spans.append([(t, a - 30 * S, b), (t, a, b + 40 * S), (t, a - 5 * S, b + 5 * S),
                          (t, b + 50 * S, b + 60 * S), (t, a + S, a + S)][t % 5])
        spans.append((99, 0, 200 * S))  # a span with no crops: no track, never eligible
        meta.set_track_spans(TrackSpan(camera, t, a, b) for t, a, b in spans)
    meta.set_track_spans([TrackSpan(CAMERAS[0], 3, -50 * S, 0)])  # a later, wider span
    meta.remove_where(MODEL, CAMERAS[1], track_id=5)  # m2 crops of the track remain
    meta.remove_where(MODEL, CAMERAS[2], track_id=7, forget_ns=1)  # its span goes too
    meta.remove_where(MODEL, CAMERAS[3], before_ts_ns=20 * S)


_FILTERS = list(itertools.product(
    [(), ("gate",), ("lobby", "dock")],  # cameras
    [(None, None), (30 * S, None), (None, 70 * S), (30 * S, 70 * S)],  # window
    [MODEL, "m2"],
    [None, 0, 1, 20 * S, 60 * S, 90 * S, 150 * S, 10**18],  # minimum track length, ns
))


def _assert_same_as_reference(meta: SqliteMetadata) -> None:
    eligible = 0
    for cameras, (start, end), model_id, min_ns in _FILTERS:
        ids, tracks = _reference(meta, cameras, start, end, model_id, min_ns)
        filt = SearchFilter(cameras, start, end, None if min_ns is None else min_ns / 1e9)
        got = meta.ids_matching(model_id, filt)
        assert got.tolist() == ids, (cameras, start, end, model_id, min_ns)
        recent = [(t.summary.camera, t.summary.track_id, t.last_crop_ts_ns)
                  for t in meta.recent_tracks(model_id, filt)]
        assert recent == tracks, (cameras, start, end, model_id, min_ns)
        eligible += bool(min_ns) and len(ids) > 0
    assert eligible > 50  # the table is not vacuous: most minimum lengths keep some crops


def test_min_track_filter_gives_what_the_per_crop_query_gave(meta):
    _varied_gallery(meta)
    _assert_same_as_reference(meta)
    # the spans matter: some tracks pass only because the tracker saw them longer
    widened = [(c, t) for c, t in ((s.camera, s.track_id) for s in meta.track_spans())
               if (s := meta.track(c, t)) and s.end_ts_ns - s.start_ts_ns >= 60 * S
               and not meta._conn.execute(
                   "SELECT MAX(ts_ns) - MIN(ts_ns) >= ? FROM crops WHERE camera = ? AND "
                   "track_id = ?", (60 * S, c, t)).fetchone()[0]]
    assert len(widened) >= 5


def test_min_track_filter_after_migrating_a_schema_3_gallery(tmp_path):
    db = tmp_path / "old.sqlite3"
    meta = SqliteMetadata(db)
    _varied_gallery(meta)
    meta.close()
    with sqlite3.connect(db) as conn:  # as refind with schema 3 left it: spans, no span_ns
        _undo_schema_4(conn)
    meta = SqliteMetadata(db)
    assert meta.schema_version() == SCHEMA_VERSION
    _assert_same_as_reference(meta)
    meta.close()


def test_min_track_filter_reads_tracks_first(meta):
    _varied_gallery(meta, n=50)
    source, args = _crop_filter(MODEL, SearchFilter(("gate",), 0, 10 * S, 5.0))
    plan = " | ".join(r[3] for r in meta._conn.execute(
        f"EXPLAIN QUERY PLAN SELECT crops.vector_id FROM {source}", args))
    assert "crops_track_model_ts" in plan and "SCAN crops" not in plan, plan


def test_a_summary_names_other_crops_of_the_track_spread_over_its_time(meta):
    _add(meta, 200)  # 5 crops per track and camera: tracks of 5, best by quality
    rec = meta.crops([0])[0]
    summary = meta.track(rec.camera, rec.track_id)
    views = summary.views
    assert 0 < len(views) <= 3 and summary.best not in views
    assert all((v.camera, v.track_id) == (rec.camera, rec.track_id) for v in views)
    assert [v.ts_ns for v in views] == sorted(v.ts_ns for v in views)  # one per time slice
    other = _add(meta, 5, model_id="other-model")  # a second model's copies are not views
    assert other is not None and meta.track(rec.camera, rec.track_id).views == views
