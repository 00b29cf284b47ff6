"""Rebuilding the gallery and metadata from the durable record (crop JPEGs + events), and
forgetting across index versions so that a forgotten track stays gone after a rebuild."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from refind.app.cli import main
from refind.config import RefindConfig
from refind.indexer.gallery_store import GalleryStore
from refind.indexer.journal import EventJournal, journal_dir
from refind.indexer.metadata import SqliteMetadata
from refind.indexer.reindex import EmbedCrops, ReindexJob
from refind.indexer.shards import existing_shards
from refind.indexer.versions import all_version_shards, read_registry, serving_version, with_model
from refind.models.registry import build_embedder
from refind.models.store import ModelStore
from refind.streaming.bus import EventBus
from refind.streaming.config import KafkaConfig
from tests.indexer.test_reindex import M0288, copy_gallery, shared_small_gallery

ROW_FIELDS = ("vector_id", "camera", "track_id", "frame_index", "ts_ns", "xyxy", "quality",
              "crop_path")


@pytest.fixture(scope="module")
def small_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_small_gallery(tmp_path_factory)


def rows(cfg: RefindConfig) -> tuple[list[tuple], list[tuple]]:
    """The serving version's crop rows (without the vector and confidence) and track spans."""
    serving = serving_version(cfg)
    out, spans = [], []
    for shard in existing_shards(serving.root):
        meta = SqliteMetadata(shard / "metadata.sqlite3", read_only=True)
        try:
            for model_id, _ in meta.models():
                records = meta.crops(meta.vector_ids(model_id))
                out += [tuple(getattr(r, f) for f in ROW_FIELDS) for r in records]
            spans += [(s.camera, s.track_id, s.first_ts_ns, s.last_ts_ns)
                      for s in meta.track_spans()]
        finally:
            meta.close()
    return sorted(out), sorted(spans)


def photos(cfg: RefindConfig, tmp: Path, n: int = 3) -> list[Path]:
    """Copies of the best crop of ``n`` different tracks, used as query photos."""
    meta = SqliteMetadata(cfg.data_dir / "gallery" / "metadata.sqlite3", read_only=True)
    try:
        records = meta.crops(meta.vector_ids(meta.models()[0][0]))
    finally:
        meta.close()
    best: dict[int, object] = {}
    for r in sorted(records, key=lambda r: -r.quality):
        best.setdefault(r.track_id, r)
    out = []
    for r in list(best.values())[:n]:
        out.append(tmp / f"q{r.track_id}.jpg")
        shutil.copy(cfg.data_dir / "crops" / r.crop_path, out[-1])
    return out


def searches(cfg: RefindConfig, config: Path, queries: list[Path], capsys) -> list[list[dict]]:
    out = []
    for q in queries:
        capsys.readouterr()
        assert main(["search", "--image", str(q), "--k", "5", "--data-dir", str(cfg.data_dir),
                     "--config", str(config), "--json"]) == 0
        out.append(json.loads(capsys.readouterr().out))
    return out


def same_results(a: list[list[dict]], b: list[list[dict]], tol: float) -> None:
    for hits_a, hits_b in zip(a, b, strict=True):
        assert [(h["camera"], h["track_id"]) for h in hits_a] == [
            (h["camera"], h["track_id"]) for h in hits_b]
        assert np.allclose([h["score"] for h in hits_a], [h["score"] for h in hits_b], atol=tol)
        assert [(h["start_ts"], h["end_ts"]) for h in hits_a] == [
            (h["start_ts"], h["end_ts"]) for h in hits_b]


def drop_views(cfg: RefindConfig) -> None:
    """Lose every derived view: SQLite, FAISS, versions; keep the crops and the events."""
    for shard in existing_shards(cfg.data_dir):
        shutil.rmtree(shard)
    shutil.rmtree(cfg.data_dir / "versions", ignore_errors=True)
    (cfg.data_dir / "versions.json").unlink(missing_ok=True)


def test_rebuild_from_the_journal_gives_the_same_results(small_gallery, tmp_path, capsys):
    cfg = copy_gallery(small_gallery, tmp_path)
    queries = photos(cfg, tmp_path)
    ingested = searches(cfg, small_gallery, queries, capsys)
    rows_ingested, spans_ingested = rows(cfg)
    argv = ["rebuild", "--data-dir", str(cfg.data_dir), "--config", str(small_gallery), "--json"]

    capsys.readouterr()
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["crops"] == len(rows_ingested) and report["skipped_missing"] == 0
    assert not list(cfg.data_dir.glob("gallery*"))  # the old root was replaced
    assert rows(cfg) == (rows_ingested, spans_ingested)  # metadata from the record, exactly
    rebuilt = searches(cfg, small_gallery, queries, capsys)
    # ingest and the rebuild both embedded the stored JPEG's pixels: the same answers, to
    # within the embedder's arithmetic on batches of other sizes
    same_results(ingested, rebuilt, tol=0.005)

    # a rebuild killed half-way left its folder (its pid is gone): the next one removes it;
    # a folder whose pid is alive (this test's parent process, as if a rebuild were running
    # there; this process's own pid would be the rebuild's own folder) stays
    stem = Path(report["root"]).name.split("-rebuilt-")[0]
    dead = cfg.data_dir / "versions" / f".rebuild-{stem}-{2**22 + 7}"
    live = cfg.data_dir / "versions" / f".rebuild-{stem}-{os.getppid()}"
    for left in (dead, live):
        (left / "gallery").mkdir(parents=True)
        (left / "gallery" / "metadata.sqlite3").write_bytes(b"half written")
    assert main(argv) == 0
    assert not dead.exists() and live.exists()
    shutil.rmtree(live)

    drop_views(cfg)  # every view lost: the record alone gives the same gallery again
    assert main(argv) == 0
    assert rows(cfg) == (rows_ingested, spans_ingested)
    same_results(searches(cfg, small_gallery, queries, capsys), rebuilt, tol=1e-4)


def test_rebuild_refuses_to_shrink_the_gallery(small_gallery, tmp_path, capsys):
    """A record that lost events, or crops whose JPEGs are gone: the rebuild stops with a
    clear error and changes nothing, unless --force."""
    cfg = copy_gallery(small_gallery, tmp_path)
    before = rows(cfg)
    argv = ["rebuild", "--data-dir", str(cfg.data_dir), "--config", str(small_gallery), "--json"]
    journal = journal_dir(cfg.data_dir) / "crops.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[: len(lines) - 3]))  # the record lost three crops

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"the gallery holds {len(before[0])} crops" in err
    assert f"only {len(before[0]) - 3} the record holds" in err and "--force" in err
    assert rows(cfg) == before and list(cfg.data_dir.glob("gallery*"))  # nothing changed
    assert not list((cfg.data_dir / "versions").glob(".rebuild-*"))

    journal.write_bytes(b"".join(lines))  # the record is whole again, but two JPEGs are gone
    gone = [r for r in lines[:2]]
    for line in gone:
        (cfg.data_dir / "crops" / json.loads(line)["crop_path"]).unlink()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "could be rebuilt from the record" in err and "Missing, e.g.:" in err
    assert rows(cfg) == before
    assert not list((cfg.data_dir / "versions").glob(".rebuild-*"))

    assert main([*argv, "--force"]) == 0  # asked for: the two crops without JPEGs are lost
    report = json.loads(capsys.readouterr().out)
    assert (report["gallery_crops"], report["crops"], report["skipped_missing"]) == (
        len(before[0]), len(before[0]) - 2, 2)
    assert len(rows(cfg)[0]) == len(before[0]) - 2


def test_rebuild_from_kafka_events(small_gallery, tmp_path, capsys, tansu):
    cfg = copy_gallery(small_gallery, tmp_path)
    queries = photos(cfg, tmp_path)
    prefix = f"t{time.time_ns()}"
    config = tmp_path / "kafka.yaml"
    config.write_text(small_gallery.read_text() + f"kafka: {{enabled: true, bootstrap_servers: "
                      f"'{tansu.bootstrap}', topic_prefix: {prefix}, linger_ms: 5}}\n")
    # what the camera actors of `refind serve` publish: here, the journal's events
    journal = EventJournal(journal_dir(cfg.data_dir))
    events = [e for kind in ("crops", "tracks") for e in journal.read(kind)]
    bus = EventBus(KafkaConfig(enabled=True, bootstrap_servers=tansu.bootstrap,
                               topic_prefix=prefix, linger_ms=5))
    try:
        assert all(bus.publish(e) for e in events)
        assert bus.publish(events[0])  # delivered twice: de-duplicated by event_id
        assert bus.flush(30.0)
    finally:
        bus.close()
    argv = ["rebuild", "--data-dir", str(cfg.data_dir), "--config", str(config), "--json"]
    assert main(argv) == 0  # from the journal
    expected = rows(cfg), searches(cfg, config, queries, capsys)

    drop_views(cfg)
    shutil.rmtree(journal_dir(cfg.data_dir))
    capsys.readouterr()
    assert main([*argv, "--from-kafka", "--idle", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["crops"] == len(expected[0][0])
    assert rows(cfg) == expected[0]
    same_results(searches(cfg, config, queries, capsys), expected[1], tol=1e-4)


def track_ids_everywhere(cfg: RefindConfig, camera: str, track_id: int) -> list[int]:
    """Ids of the track's rows in every version's SQLite and FAISS index."""
    found = []
    for shard in all_version_shards(cfg.data_dir):
        meta = SqliteMetadata(shard / "metadata.sqlite3", read_only=True)
        try:
            models = meta.models()
            assert meta.is_forgotten(camera, track_id)
            found += [r[0] for r in meta._conn.execute(
                "SELECT vector_id FROM crops WHERE camera = ? AND track_id = ?",
                (camera, track_id))]
        finally:
            meta.close()
        for model_id, dim in models:
            with GalleryStore(shard, cfg.gallery, model_id, dim, read_only=True) as g:
                assert len(g) == g.metadata.count(model_id)  # the index matches SQLite
    return found


def test_forgotten_track_is_gone_from_every_store_and_stays_gone(small_gallery, tmp_path, capsys):
    cfg = copy_gallery(small_gallery, tmp_path)
    # a second version (0288) beside the serving one
    target_cfg = with_model(cfg, M0288)
    embedder = build_embedder(target_cfg.embedder, ModelStore.from_config(cfg.models))
    with ReindexJob.open(cfg, target_cfg, embedder) as job:
        job.commit(EmbedCrops(target_cfg, embedder)(job.todo()))
        job.finish(switch=False)
    queries = photos(cfg, tmp_path, n=1)
    [hits] = searches(cfg, small_gallery, queries, capsys)
    gone = hits[0]["track_id"]  # the photo's own track: certainly found before
    meta = SqliteMetadata(cfg.data_dir / "gallery" / "metadata.sqlite3", read_only=True)
    files = [r.crop_path for r in meta.crops(meta.vector_ids(meta.models()[0][0]))
             if r.track_id == gone]
    meta.close()
    data = ["--data-dir", str(cfg.data_dir), "--config", str(small_gallery)]

    assert main(["forget", "--camera", "pets", "--track", str(gone), *data]) == 0
    assert track_ids_everywhere(cfg, "pets", gone) == []
    assert not [f for f in files if (cfg.data_dir / "crops" / f).exists()]
    assert [(e.camera, e.track_id) for e in EventJournal(journal_dir(cfg.data_dir)).read(
        "forget")] == [("pets", gone)]

    def assert_not_found() -> None:
        for version in ("person-reidentification-retail-0277", M0288):
            assert main(["versions", "use", version, *data]) == 0
            [hits] = searches(cfg, small_gallery, queries, capsys)
            assert hits and gone not in [h["track_id"] for h in hits]

    assert_not_found()
    assert main(["rebuild", *data]) == 0  # rebuilds 0288 (serving now) from the record
    assert read_registry(cfg.data_dir).serving.startswith(M0288)
    assert track_ids_everywhere(cfg, "pets", gone) == []
    assert_not_found()
    assert main(["rebuild", *data]) == 0  # and 0277
    assert track_ids_everywhere(cfg, "pets", gone) == []
    assert_not_found()


def test_a_track_forgotten_in_the_gallery_stays_gone_when_the_record_lost_its_tombstone(
        small_gallery, tmp_path, capsys):
    """The tombstone reached the gallery but not the record (a record restored from an older
    copy): the gallery's own list of forgotten tracks keeps the track out of the rebuild."""
    cfg = copy_gallery(small_gallery, tmp_path)
    [hits] = searches(cfg, small_gallery, photos(cfg, tmp_path, n=1), capsys)
    gone = hits[0]["track_id"]
    data = ["--data-dir", str(cfg.data_dir), "--config", str(small_gallery)]
    assert main(["forget", "--camera", "pets", "--track", str(gone), *data]) == 0
    (journal_dir(cfg.data_dir) / "forget.jsonl").unlink()
    assert main(["rebuild", *data]) == 0
    assert track_ids_everywhere(cfg, "pets", gone) == []
