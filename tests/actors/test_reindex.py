"""``refind reindex`` on Ray Data: killed with SIGKILL half-way and resumed while searches keep
answering; unreadable crops are counted and keep the old version serving."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from refind.app.cli import main
from refind.app.identity_commands import add_watch
from refind.config import RefindConfig
from refind.indexer.gallery_store import GalleryStore
from refind.indexer.identity_state import state_path
from refind.indexer.live_search import LiveSearch
from refind.indexer.metadata import SqliteMetadata
from refind.indexer.versions import read_registry, serving_version
from refind.indexer.watchlist import WatchStore
from refind.streaming.records import ImageQuery
from tests.conftest import REPO, STARTS_RAY
from tests.indexer.test_reindex import M0288, copy_gallery, shared_small_gallery

pytestmark = [pytest.mark.slow, STARTS_RAY]


@pytest.fixture(scope="module")
def small_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_small_gallery(tmp_path_factory)


def _source(cfg: RefindConfig) -> tuple[np.ndarray, list]:
    meta = SqliteMetadata(cfg.data_dir / "gallery" / "metadata.sqlite3", read_only=True)
    try:
        ids = meta.vector_ids(meta.models()[0][0])
        return ids, meta.crops(ids)
    finally:
        meta.close()


def _committed(cfg: RefindConfig) -> int:
    """Rows the re-index has committed so far (its checkpoint), read like any other reader."""
    registry = read_registry(cfg.data_dir)
    if registry is None:
        return 0
    target = next((v for v in registry.versions.values() if v.name == M0288), None)
    db = None if target is None else target.path(cfg.data_dir) / "gallery" / "metadata.sqlite3"
    if db is None or not db.exists():
        return 0
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM crops").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        conn.close()


class Searcher(threading.Thread):
    """Searches without pause through LiveSearch (the API's path); records every failure."""

    def __init__(self, live: LiveSearch, photo: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.live, self.photo = live, photo
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.by_model: collections.Counter[str] = collections.Counter()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                result = self.live.search(ImageQuery(image=self.photo, k=3))
                assert result.hits, "no hits"
                self.by_model[self.live.model_id] += 1
            except Exception as err:  # any failed query fails the test
                self.errors.append(repr(err))


def test_reindex_killed_half_way_resumes_exactly_once_while_searches_answer(
    small_gallery: Path, tmp_path: Path
) -> None:
    cfg = copy_gallery(small_gallery, tmp_path)
    ids, records = _source(cfg)
    photo = cv2.imread(str(cfg.data_dir / "crops" / max(records, key=lambda r: r.quality)
                           .crop_path))
    store = WatchStore.in_data_dir(cfg.data_dir)
    add_watch(cfg, store, "visitor", image=cv2.imencode(".jpg", photo)[1].tobytes())
    live = LiveSearch.from_config(cfg)
    old_model = live.model_id
    searcher = Searcher(live, photo)
    searcher.start()
    argv = [sys.executable, "-m", "refind.app.cli", "reindex", "--model", M0288, "--batch-size", "2",
            "--data-dir", str(cfg.data_dir), "--config", str(small_gallery), "--json"]
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    try:
        with open(tmp_path / "first.log", "wb") as log:
            first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log,
                                     start_new_session=True)  # its own group: Ray's too
        deadline = time.monotonic() + 300
        while (done := _committed(cfg)) < 20:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "re-index committed nothing in 300 s"
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        at_kill = _committed(cfg)
        assert at_kill < len(ids), "the job finished before it could be killed"
        registry = read_registry(cfg.data_dir)
        assert registry.serving == old_model  # nothing switched yet
        assert registry.versions[registry.serving].state == "ready"

        second = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, timeout=600)
        assert second.returncode == 0, second.stderr.decode()[-3000:]
        report = json.loads(second.stdout)
        deadline = time.monotonic() + 60
        while searcher.by_model[report["target"]] < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        searcher.stop.set()
        searcher.join(60)
        live.close()

    assert done >= 20 and at_kill >= done
    assert report["todo"] == len(ids) - at_kill  # finished work was not redone
    assert report["switched"] and report["crops"] == len(ids) and report["failed"] == 0
    serving = serving_version(cfg)
    assert serving.model_id == report["target"] != old_model
    shard = serving.root / "gallery"
    meta = SqliteMetadata(shard / "metadata.sqlite3", read_only=True)
    try:
        assert meta.models() == [(report["target"], 256)]
        assert np.array_equal(meta.vector_ids(report["target"]), ids)  # each crop exactly once
        paths = [r.crop_path for r in meta.crops(ids)]
        assert paths == [r.crop_path for r in records]
    finally:
        meta.close()
    with GalleryStore(shard, cfg.gallery, report["target"], 256, read_only=True) as g:
        assert len(g) == len(ids)
    # the photo watch was embedded by the new model too (and keeps its first vector)
    assert report["watches_reembedded"] == 1
    watch = WatchStore.in_data_dir(cfg.data_dir).get("visitor")
    assert watch.vector_for(report["target"]) is not None and watch.model_id == old_model
    # the new model's global ids were made from its own vectors, for every track
    linked = report["identities"]
    tracks = {(r.camera, r.track_id) for r in records}
    assert linked["tracks"] == len(tracks) and 1 <= linked["global_ids"] <= len(tracks)
    state = json.loads(Path(linked["path"]).read_text())
    assert Path(linked["path"]) == state_path(cfg.data_dir, report["target"])
    assert len(state["tracklets"]) == len(tracks)
    # searches never failed, and were answered by the old version, then by the new one
    assert searcher.errors == []
    assert searcher.by_model[old_model] > 0 and searcher.by_model[report["target"]] >= 3


def test_unreadable_crops_are_counted_and_keep_the_old_version(
    small_gallery: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_local: None
) -> None:
    cfg = copy_gallery(small_gallery, tmp_path)
    ids, records = _source(cfg)
    crops = cfg.data_dir / "crops"
    (crops / records[3].crop_path).write_bytes(b"not a jpeg")
    (crops / records[7].crop_path).unlink()
    argv = ["reindex", "--model", M0288, "--data-dir", str(cfg.data_dir), "--config",
            str(small_gallery), "--json"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("refind: error: 2 crop(s) could not be read or embedded")
    assert "still serves" in err
    registry = read_registry(cfg.data_dir)
    assert registry.serving.startswith("person-reidentification-retail-0277")
    assert _committed(cfg) == len(ids) - 2

    assert main([*argv, "--skip-unreadable"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["switched"] and report["crops"] == len(ids) - 2 and report["failed"] == 2
    assert serving_version(cfg).model_id == report["target"]
