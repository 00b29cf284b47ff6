"""Forgetting a track: rows, vectors, files and summaries go, stay gone, and never come back."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pytest

from refind.app.cli import main
from refind.config import RefindConfig
from refind.indexer.blobs import CropStore
from refind.indexer.config import GalleryConfig, RedisMetadataConfig
from refind.indexer.forget import UnknownTrackError, forget_track
from refind.indexer.gallery_store import GalleryStore
from refind.indexer.journal import EventJournal, journal_dir
from refind.indexer.metadata import SqliteMetadata
from refind.indexer.record import EventRecord
from refind.indexer.redis_meta import RedisMetadata
from refind.streaming.config import KafkaConfig
from refind.streaming.consumer import EventConsumer
from refind.streaming.events import ForgetEvent
from refind.streaming.records import CropRecord, Embeddings, SearchFilter, TrackSpan
from tests.indexer.conftest import DIM, MODEL, clustered, crop_records

N = 200
GONE = ("gate", 1)  # crop_records: vector ids 0, 4, 8, 12, 16
GONE_IDS = [0, 4, 8, 12, 16]


def _cfg(tmp_path, factory: str = "Flat", **kw) -> RefindConfig:
    return RefindConfig(data_dir=tmp_path, gallery=GalleryConfig(index_factory=factory), **kw)


def _open(cfg: RefindConfig, **kw) -> GalleryStore:
    return GalleryStore(cfg.data_dir / "gallery", cfg.gallery, MODEL, DIM, **kw)


def _records_with_files(cfg: RefindConfig, ids: np.ndarray, t0_ns: int = 0) -> list[CropRecord]:
    crops = CropStore.from_config(cfg)
    image = np.full((16, 8, 3), 128, np.uint8)
    return [
        dataclasses.replace(r, crop_path=crops.put(r.camera, r.track_id, r.frame_index, image),
                            ts_ns=t0_ns + r.ts_ns)
        for r in crop_records(ids)
    ]


def _build(cfg: RefindConfig, t0_ns: int = 0) -> tuple[np.ndarray, list[CropRecord]]:
    """N crops with files; crop i at ``t0_ns`` + i seconds (0: times from a clip's start)."""
    vectors = clustered(N, seed=3).vectors
    records = _records_with_files(cfg, np.arange(N, dtype=np.int64), t0_ns)
    with _open(cfg) as store:
        store.add(records, Embeddings(vectors, MODEL))
        store.save()
    return vectors, records


def _found(store: GalleryStore, queries: np.ndarray, **filters) -> set[int]:
    found = store.search(queries, N, SearchFilter(**filters))
    return {h.record.vector_id for hits in found for h in hits}


def _assert_forgotten(cfg: RefindConfig, vectors: np.ndarray) -> None:
    with _open(cfg, read_only=True) as store:
        assert len(store) == N - len(GONE_IDS)
        assert store.track(*GONE) is None
        queries = vectors[GONE_IDS]
        for filters in ({}, {"cameras": ("gate",)}, {"start_ts_ns": 0, "end_ts_ns": 20 * 10**9}):
            found = _found(store, queries, **filters)
            assert found and not found & set(GONE_IDS)
        assert store.metadata.is_forgotten(*GONE)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF4,Flat"])
def test_forget_removes_rows_vectors_files_and_summary(tmp_path, factory, caplog):
    cfg = _cfg(tmp_path, factory)
    if factory.startswith("IVF"):
        cfg = _cfg(tmp_path, factory).model_copy(update={"gallery": GalleryConfig(
            index_factory=factory, train_min_vectors=100)})
    vectors, records = _build(cfg)
    crops = CropStore.from_config(cfg)

    report = forget_track(cfg, *GONE)

    assert report.vector_ids == {0: tuple(GONE_IDS)} and report.crops_deleted == 5
    assert not report.redis_removed and not report.event_published
    for r in records:
        assert crops.resolve(r.crop_path).exists() == (r.vector_id not in GONE_IDS)
    with caplog.at_level(logging.WARNING, logger="refind.indexer.gallery_store"):
        _assert_forgotten(cfg, vectors)  # reopened from the saved index ...
    assert "rebuilding" not in caplog.text  # ... without a needless rebuild
    next(cfg.data_dir.glob("gallery/index/*.faiss")).unlink()
    with _open(cfg):  # rebuilt from SQLite
        pass
    _assert_forgotten(cfg, vectors)


def test_forgotten_track_is_never_stored_again(tmp_path):
    cfg = _cfg(tmp_path)
    vectors, _ = _build(cfg)
    forget_track(cfg, *GONE)
    with _open(cfg) as store:
        first = store.next_vector_id()
        assert first == N
        late = [
            dataclasses.replace(crop_records(np.array([first]))[0], camera="gate", track_id=1),
            dataclasses.replace(crop_records(np.array([first + 1]))[0], camera="gate",
                                track_id=99),
        ]
        assert len(store.add(late, Embeddings(vectors[:2], MODEL))) == 1
        store.save()
        assert store.track(*GONE) is None and store.track("gate", 99).n_crops == 1
        assert _found(store, vectors[:2]) >= {first + 1}
        assert first not in _found(store, vectors[:2])
    with pytest.raises(UnknownTrackError, match="no track 12345"):
        forget_track(cfg, "gate", 12345)
    assert forget_track(cfg, *GONE).vector_ids == {}  # again: nothing left, no error


def test_the_record_keeps_no_trace_of_a_forgotten_track(tmp_path):
    """Late crops and the end of a forgotten track stay out of the durable record (and Kafka)."""
    cfg = _cfg(tmp_path)
    vectors, _ = _build(cfg)
    forget_track(cfg, *GONE)
    journal = EventJournal(journal_dir(cfg.data_dir))
    with _open(cfg, record=EventRecord(journal)) as store:
        first = store.next_vector_id()
        late = dataclasses.replace(crop_records(np.array([first]))[0], camera="gate", track_id=1)
        assert store.add([late], Embeddings(vectors[:1], MODEL)) == []
        assert store.next_vector_id() == first + 1
        assert store.end_tracks([TrackSpan(*GONE, 0, 10**9)]) == []
        assert GONE not in {(s.camera, s.track_id) for s in store.metadata.track_spans()}
    assert [e.topic_kind for kind in ("crops", "tracks", "forget")
            for e in journal.read(kind)] == ["forget"]


def test_removal_without_save_is_not_undone_by_reopening(tmp_path):
    """A crash after SQLite committed the removal, before the index was saved."""
    cfg = _cfg(tmp_path)
    vectors, _ = _build(cfg)
    meta = SqliteMetadata(cfg.data_dir / "gallery" / "metadata.sqlite3")
    newest = meta.crops([N - 1])[0]
    removed = meta.remove_where(MODEL, newest.camera, track_id=newest.track_id)
    meta.close()
    gone = {r.vector_id for r in removed}
    assert N - 1 in gone
    with _open(cfg) as store:  # the manifest's count no longer matches: rebuilt from SQLite
        assert len(store) == N - len(gone)
        assert not _found(store, vectors[sorted(gone)]) & gone
        assert store.next_vector_id() == N  # removed ids are not handed out again
        assert store.track(newest.camera, newest.track_id) is None


def test_removing_the_newest_ids_keeps_the_saved_index(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    vectors, _ = _build(cfg)
    newest = crop_records(np.array([N - 1]))[0]
    with _open(cfg) as store:
        assert N - 1 in {r.vector_id for r in store.remove_track(newest.camera, newest.track_id)}
    with caplog.at_level(logging.INFO, logger="refind.indexer.gallery_store"), _open(cfg) as store:
        first = store.next_vector_id()
        assert first == N
        store.add(crop_records(np.array([first])), Embeddings(vectors[:1], MODEL))
    assert "rebuilding" not in caplog.text and "added" not in caplog.text


def test_a_reader_opened_before_the_removal_drops_removed_hits(tmp_path):
    cfg = _cfg(tmp_path)
    vectors, _ = _build(cfg)
    with _open(cfg, read_only=True) as reader:
        forget_track(cfg, *GONE)
        assert not _found(reader, vectors[GONE_IDS]) & set(GONE_IDS)


def test_cli_forget(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    _build(cfg)
    assert main(["forget", "--camera", "gate", "--track", "77", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refind: error: camera 'gate' has no track 77") and err.count("\n") == 1
    assert main(["forget", "--camera", "gate", "--track", "1", "--data-dir", str(tmp_path),
                 "--json"]) == 0
    assert '"0": [\n      0,' in capsys.readouterr().out


def test_forget_removes_redis_track_metadata(tmp_path, redis_server):
    cfg = _cfg(tmp_path, metadata=RedisMetadataConfig(url=redis_server.url))
    _build(cfg)
    redis = RedisMetadata(cfg.metadata)
    try:
        redis.upsert_track("gate", 1, 0, 16, 5, None, "ended")
        redis.upsert_track("gate", 2, 20, 36, 5, None, "ended")
        redis.map_vectors(GONE_IDS, "gate", 1, shard=0)
        report = forget_track(cfg, *GONE)
        assert report.redis_removed
        assert redis.track(*GONE) is None and redis.track("gate", 2) is not None
        assert [t.track_id for t in redis.tracks("gate")] == [2]
        assert redis.lookup_vectors(GONE_IDS, shard=0) == [None] * 5
    finally:
        redis.close()


def test_forget_publishes_a_tombstone(tmp_path, tansu):
    kafka = KafkaConfig(enabled=True, bootstrap_servers=tansu.bootstrap, linger_ms=5,
                        topic_prefix=f"t{time.time_ns()}")
    cfg = _cfg(tmp_path, kafka=kafka)
    _build(cfg)
    assert forget_track(cfg, *GONE, reason="erasure request").event_published
    events: list[ForgetEvent] = []
    with EventConsumer(kafka, [f"{kafka.topic_prefix}.forget"], None) as consumer:
        deadline = time.monotonic() + 30
        while not events and time.monotonic() < deadline:
            events += consumer.poll(0.5)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, ForgetEvent)
    assert (event.camera, event.track_id, event.vector_ids, event.reason) == (
        "gate", 1, tuple(GONE_IDS), "erasure request")
