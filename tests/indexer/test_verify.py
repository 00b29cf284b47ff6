"""A retried write stores a crop once, and ``refind check`` finds what a crash can leave: crops
recorded but not stored, stored twice, stored without a record."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from refind.app.cli import main
from refind.config import RefindConfig, parse_config
from refind.indexer.blobs import CropStore
from refind.indexer.journal import EventJournal, journal_dir
from refind.indexer.sink import open_sink
from refind.indexer.verify import check_gallery
from refind.streaming.events import CropEvent
from refind.streaming.records import Crop, Embeddings

pytestmark = pytest.mark.unit

MODEL = "test-model@0"
DIM = 8


def _cfg(tmp: Path) -> RefindConfig:
    return parse_config({"data_dir": str(tmp / "data")})


def _crops(track: int, frames: range, t0_ns: int = 0) -> list[Crop]:
    rng = np.random.default_rng(track)
    return [Crop("door", track, f, t0_ns + f * 1_000_000, (0.0, 0.0, 8.0, 16.0), 0.9, 0.5,
                 rng.integers(0, 255, (16, 8, 3), dtype=np.uint8)) for f in frames]


def _vectors(n: int, seed: int = 0) -> Embeddings:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return Embeddings(v / np.linalg.norm(v, axis=1, keepdims=True), MODEL)


def test_a_retried_write_stores_each_crop_once_and_answers_with_its_records(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    with open_sink(cfg, MODEL, DIM) as sink:
        first = sink.store(_crops(1, range(3)), _vectors(3))
        # the same batch again (the writer died after its commit), with one new crop
        again = sink.store(_crops(1, range(4)), _vectors(4))
        assert [r.vector_id for r in again[:3]] == [r.vector_id for r in first]
        assert [r.frame_index for r in again] == [0, 1, 2, 3]
        assert len(sink.gallery) == 4 and sink.stored == 4
        # all of it again: nothing stored, nothing recorded
        assert sink.store(_crops(1, range(4)), _vectors(4)) == again
    report = check_gallery(cfg)
    assert report.ok and (report.recorded, report.stored, report.retried) == (4, 4, 0), report


def test_check_names_missing_duplicated_and_unrecorded_crops(tmp_path, capsys) -> None:
    cfg = _cfg(tmp_path)
    with open_sink(cfg, MODEL, DIM) as sink:
        stored = sink.store(_crops(2, range(5)), _vectors(5))
    assert check_gallery(cfg).ok
    journal = EventJournal(journal_dir(cfg.data_dir))
    # a crash after the record, before the commit: recorded under an id never stored ...
    ghost = replace(stored[0], vector_id=99, frame_index=7, ts_ns=7_000_000,
                    crop_path="door/2/gone.jpg")
    journal.append([CropEvent.from_record(ghost)])
    # ... a write retried after it: recorded twice, stored once
    journal.append([CropEvent.from_record(replace(stored[1], vector_id=98))])
    db = sqlite3.connect(cfg.data_dir / "gallery" / "metadata.sqlite3")
    with db:  # a row stored twice, and one the record never had
        db.execute("INSERT INTO crops SELECT vector_id + 100, camera, track_id, frame_index, "
                   "ts_ns, x1, y1, x2, y2, confidence, quality, crop_path, model_id, dim, vector "
                   "FROM crops WHERE vector_id = ?", (stored[2].vector_id,))
        db.execute("INSERT INTO crops SELECT vector_id + 200, camera, track_id, 40, "
                   "ts_ns, x1, y1, x2, y2, confidence, quality, crop_path, model_id, dim, vector "
                   "FROM crops WHERE vector_id = ?", (stored[3].vector_id,))
    db.close()
    report = check_gallery(cfg)
    assert not report.ok
    assert report.missing == (("door", 2, 7, 7_000_000),) and report.missing_jpeg == 1
    assert report.duplicates == (("door", 2, 2, 2_000_000),)
    assert report.unrecorded == (("door", 2, 40, 3_000_000),)
    assert report.retried == 1 and report.recorded == 6 and report.stored == 7
    assert main(["check", "--data-dir", str(cfg.data_dir)]) == 2
    out = capsys.readouterr().out
    assert "1 recorded crops are not in the gallery (1 of them without their JPEG): door/2/7" in out
    assert "1 crops are stored twice: door/2/2" in out and "NOT OK" in out


def test_check_of_an_empty_data_dir_is_ok(tmp_path, capsys) -> None:
    cfg = _cfg(tmp_path)
    assert main(["check", "--data-dir", str(cfg.data_dir), "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out


def test_crops_removed_by_retention_and_copies_of_a_reindex_are_not_problems(tmp_path) -> None:
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "retention": {"default_days": 1}})
    day = 86_400 * 10**9
    now = 1_800_000_000 * 10**9  # January 2027
    with open_sink(cfg, MODEL, DIM) as sink:
        old = sink.store(_crops(3, range(2), now - 10 * day), _vectors(2))  # 10 days old
        sink.gallery.remove_before("door", now - day)  # what retention does
    blobs = CropStore.from_config(cfg)
    for r in old:
        blobs.delete(r.crop_path)
    report = check_gallery(cfg, now_ns=now)
    assert report.ok and report.expired == 2 and report.stored == 0, report
    # a crop recorded by one model counts for a version of another that holds its copy (as a
    # re-index leaves it)
    with open_sink(cfg, MODEL, DIM) as sink:
        sink.store(_crops(4, range(1)), _vectors(1))
    db = sqlite3.connect(cfg.data_dir / "gallery" / "metadata.sqlite3")
    with db:
        db.execute("UPDATE crops SET model_id = 'another@1'")
    db.close()
    moved = check_gallery(cfg, now_ns=now)
    assert moved.model_id == "another@1" and moved.ok and moved.stored == 1, moved


def test_a_rebuild_stores_a_crop_recorded_twice_once(tmp_path) -> None:
    from refind.indexer.rebuild import fold

    cfg = _cfg(tmp_path)
    with open_sink(cfg, MODEL, DIM) as sink:
        [first] = sink.store(_crops(5, range(1)), _vectors(1))
    retry = CropEvent.from_record(replace(first, vector_id=first.vector_id + 7))
    events = [*EventJournal(journal_dir(cfg.data_dir)).read("crops"), retry]
    record = fold(events, 1)
    assert [list(crops) for crops in record.crops.values()] == [[first.vector_id + 7]]
