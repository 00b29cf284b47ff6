"""GalleryStore: persistence, reconcile after a crash, rebuild of a bad index, locks, filters."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from refind.indexer.config import GalleryConfig
from refind.indexer.gallery_store import GalleryLockedError, GalleryStore, index_stem
from refind.streaming.records import Embeddings, SearchFilter
from tests.conftest import REPO
from tests.indexer.conftest import CAMERAS, DIM, MODEL, crop_records, fill, recall_at

K = 10
SMALL_TRAIN = {"IVF16,PQ8x4": {"train_min_vectors": 1_000}}


def _open(path, factory: str = "Flat", model_id: str = MODEL, dim: int = DIM, **kw):
    cfg = GalleryConfig(index_factory=factory, **SMALL_TRAIN.get(factory, {}))
    return GalleryStore(path, cfg, model_id, dim, **kw)


def _answers(store: GalleryStore, queries: np.ndarray, **filters) -> list[list[tuple[int, float]]]:
    found = store.search(queries, K, SearchFilter(**filters))
    return [[(h.record.vector_id, h.score) for h in hits] for hits in found]


def _ids(answers: list[list[tuple[int, float]]]) -> np.ndarray:
    return np.array([[vid for vid, _ in row] + [-1] * (K - len(row)) for row in answers])


def _exact(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :K]


def _rebuild_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]


@pytest.mark.parametrize(
    ("factory", "n", "min_recall"),
    [
        ("Flat", 3_000, 1.0),
        ("HNSW32", 3_000, 0.95),
        ("IVF64,Flat", 3_000, 0.95),
        ("IVF16,PQ8x4", 3_000, 0.25),  # 32-bit codes: a sanity floor, not a quality target
        ("IVF64,Flat", 1_000, 1.0),  # still buffering (not trained) when saved: exact
    ],
)
def test_save_and_reopen_gives_the_same_answers(tmp_path, data3k, caplog, factory, n, min_recall):
    with _open(tmp_path, factory) as store:
        ids = fill(store, data3k.vectors[:n])
        store.save()
        before = _answers(store, data3k.queries)
    caplog.set_level(logging.INFO, logger="refind.indexer")
    with _open(tmp_path, factory) as store:
        assert len(store) == n
        assert _answers(store, data3k.queries) == before
        assert store.refresh() == 0
    assert not _rebuild_warnings(caplog)
    assert ids.tolist() == list(range(n))
    assert recall_at(_ids(before), _exact(data3k.vectors[:n], data3k.queries)) >= min_recall


_CRASHING_INGEST = """
import os, sys, numpy as np
from refind.indexer.config import GalleryConfig
from refind.indexer.gallery_store import GalleryStore
from tests.indexer.conftest import fill
vectors = np.load(sys.argv[1])
store = GalleryStore(sys.argv[2], GalleryConfig(index_factory=sys.argv[3]), "{model}", {dim})
fill(store, vectors[:2000])
store.save()
fill(store, vectors[2000:])  # committed to SQLite, never saved to the index
os._exit(3)  # die without closing: no save, no unlock
"""


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_reopen_after_crash_finds_rows_committed_since_the_last_save(
    tmp_path, data3k, caplog, factory
):
    np.save(tmp_path / "vectors.npy", data3k.vectors)
    script = textwrap.dedent(_CRASHING_INGEST.format(model=MODEL, dim=DIM))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "vectors.npy"), str(tmp_path / "g"), factory],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 3, proc.stderr
    caplog.set_level(logging.INFO, logger="refind.indexer")
    with _open(tmp_path / "g", factory) as store:  # the dead process's lock is gone
        assert len(store) == 3_000
        [[(top, score)]] = [[hits[0]] for hits in _answers(store, data3k.vectors[2_500:2_501])]
        assert top == 2_500 and score == pytest.approx(1.0, abs=1e-5)
        found = _ids(_answers(store, data3k.queries))
    assert recall_at(found, _exact(data3k.vectors, data3k.queries)) >= 0.95
    assert any("added 1000 vectors from SQLite" in r.getMessage() for r in caplog.records)
    assert not _rebuild_warnings(caplog)


def _truncate(index, manifest):
    index.write_bytes(index.read_bytes()[:-100])


def _flip_bytes(index, manifest):
    data = bytearray(index.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    index.write_bytes(bytes(data))


def _edit_manifest(key, value):
    def edit(index, manifest):
        content = json.loads(manifest.read_text())
        content[key] = value
        manifest.write_text(json.dumps(content))

    return edit


def _old_manifest(index, manifest):
    """A crash between replacing the index and replacing its manifest."""
    manifest.write_text(manifest.with_suffix(".first").read_text())


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_truncate, "bytes, manifest says"),
        (_flip_bytes, "sha256"),
        (lambda index, manifest: index.unlink(), "cannot read"),
        (lambda index, manifest: manifest.write_text("{not json"), "unreadable manifest"),
        (lambda index, manifest: manifest.unlink(), "no saved index"),
        (_edit_manifest("index_factory", "HNSW32"), "index_factory"),
        (_edit_manifest("model_id", "someone-else"), "model_id"),
        (_edit_manifest("count", 5), "manifest says 5"),
        (_old_manifest, "bytes, manifest says"),
    ],
)
def test_unusable_index_is_rebuilt_from_sqlite(tmp_path, data3k, caplog, spoil, reason):
    with _open(tmp_path) as store:
        fill(store, data3k.vectors[:2_000])
        store.save()
        index, manifest = store._index_path, store._manifest_path
        manifest.with_suffix(".first").write_text(manifest.read_text())
        fill(store, data3k.vectors[2_000:])
        store.save()
        before = _answers(store, data3k.queries)
    spoil(index, manifest)
    caplog.set_level(logging.INFO, logger="refind.indexer")
    with _open(tmp_path) as store:
        assert len(store) == 3_000
        assert _answers(store, data3k.queries) == before
        store.save()
    [warning] = _rebuild_warnings(caplog)
    assert reason in warning
    caplog.clear()
    with _open(tmp_path) as store:
        assert len(store) == 3_000
    assert not _rebuild_warnings(caplog)


def test_rows_deleted_behind_the_index_force_a_rebuild(tmp_path, data3k, caplog):
    with _open(tmp_path) as store:
        fill(store, data3k.vectors[:500])
        store.save()
    with sqlite3.connect(tmp_path / "metadata.sqlite3") as conn:
        conn.execute("DELETE FROM crops WHERE vector_id < 10")
    with _open(tmp_path) as store:
        assert len(store) == 490
    assert "SQLite rows up to id 499" in _rebuild_warnings(caplog)[0]


@pytest.mark.parametrize(
    ("act", "match"),
    [
        (lambda s: s.add(crop_records(np.array([9]), "other"), Embeddings(np.ones((1, DIM)), "other")),
         "cannot go into"),
        (lambda s: s.add(crop_records(np.array([9])), Embeddings(np.ones((1, DIM + 2)), MODEL)),
         "dim"),
        (lambda s: s.search(Embeddings(np.ones((1, DIM)), "other"), K), "cannot search"),
        (lambda s: s.search(np.ones((1, DIM), np.float32), K,
                            SearchFilter(start_ts_ns=5, end_ts_ns=1)), "wrong way round"),
    ],
)
def test_other_model_or_dim_is_refused(tmp_path, act, match):
    with _open(tmp_path) as store:
        fill(store, np.eye(DIM, dtype=np.float32)[:5])
        with pytest.raises(ValueError, match=match):
            act(store)
        assert len(store) == 5 and store.next_vector_id() == 5


def test_reopening_a_model_with_another_dim_is_refused(tmp_path):
    with _open(tmp_path) as store:
        fill(store, np.eye(DIM, dtype=np.float32)[:5])
    with pytest.raises(ValueError, match=f"has dim {DIM} vectors stored, asked for dim 32"):
        _open(tmp_path, dim=32)
    _open(tmp_path).close()  # the failed open released the lock


def test_two_models_keep_separate_indexes(tmp_path, data3k):
    with _open(tmp_path, "HNSW32") as store:
        fill(store, data3k.vectors[:1_000])
        store.save()
        before = _answers(store, data3k.queries)
    other = np.ascontiguousarray(data3k.vectors[:500, :32])
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    with _open(tmp_path, "Flat", model_id="reid-test-v2", dim=32) as store:
        fill(store, other, model_id="reid-test-v2")
        store.save()
        assert len(store) == 500
    with _open(tmp_path, "HNSW32") as store:
        assert len(store) == 1_000 and _answers(store, data3k.queries) == before
    assert len(list((tmp_path / "index").glob("*.faiss"))) == 2


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF64,Flat"])
@pytest.mark.parametrize(
    ("cameras", "window_s"),
    [(("gate",), (100, 400)), ((), (1_000, 1_029)), (("lobby", "dock"), (None, 60))],
)
def test_filtered_search_returns_k_matching_crops(tmp_path, data3k, factory, cameras, window_s):
    start, end = (None if s is None else s * 1_000_000_000 for s in window_s)
    with _open(tmp_path, factory) as store:
        fill(store, data3k.vectors)
        results = store.search(data3k.queries, K, SearchFilter(cameras, start, end))
    for hits in results:
        assert len(hits) == K
        for record in (h.record for h in hits):
            assert not cameras or record.camera in cameras
            assert (start or 0) <= record.ts_ns <= (end if end is not None else np.inf)


def test_second_writer_is_refused_and_readers_are_not(tmp_path, data3k):
    writer = _open(tmp_path)
    fill(writer, data3k.vectors[:100])
    writer.save()
    with pytest.raises(GalleryLockedError, match=r"already being written \(pid \d+\)"):
        _open(tmp_path)
    with _open(tmp_path, read_only=True) as reader:
        assert len(reader) == 100
        fill(writer, data3k.vectors[100:300])
        assert reader.refresh() == 200 and len(reader) == 300
        with pytest.raises(RuntimeError, match="read-only"):
            reader.save()
    writer.close()
    with _open(tmp_path) as again:
        assert len(again) == 300


@pytest.mark.parametrize(
    ("model_id", "pattern"),
    [("reid-0277", r"reid-0277-[0-9a-f]{8}"), ("osnet/x1.0 market", r"osnet_x1.0_market-[0-9a-f]{8}")],
)
def test_index_files_are_named_by_model(model_id, pattern):
    assert re.fullmatch(pattern, index_stem(model_id))
    assert index_stem("osnet/x1.0 market") != index_stem("osnet_x1.0_market")


def test_cameras_and_tracks_through_the_store(tmp_path, data3k):
    with _open(tmp_path) as store:
        fill(store, data3k.vectors[:40])
        assert store.metadata.cameras() == sorted(CAMERAS)
        assert store.track("gate", 1).n_crops == 5 and store.max_track_id("gate") == 2
