"""Live ingestion follows the serving alias: a real HTTP MPEG-TS camera (PETS09) feeds version A
(OMZ 0277) through the Ray actors; a re-index builds version B (OMZ 0288) and switches the alias
while the camera runs. New crops must land in B with B's model, every crop of A must be in B once
under its own id, no id may repeat, searches through LiveSearch must answer throughout, and
serve's /metrics and /healthz must name the new model."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import ray

from refind.actors.pools import actor_ids
from refind.actors.supervisor import RETIRE_AFTER_S, Supervisor, wait_until
from refind.app.serve import start_http, supervise
from refind.config import RefindConfig, parse_config
from refind.indexer.gallery_store import GalleryStore
from refind.indexer.live_search import LiveSearch
from refind.indexer.metadata import SqliteMetadata
from refind.indexer.reindex import EmbedCrops, ReindexJob
from refind.indexer.versions import serving_version, with_model
from refind.models.registry import build_embedder
from refind.models.store import ModelStore
from refind.streaming.records import CropRecord, Embeddings
from tests.actors.test_reindex import Searcher
from tests.conftest import (
    LIGHT_DETECTOR,
    PETS_VIDEO,
    STARTS_RAY,
    answered_count,
    camera_count,
    http_get,
    need_models,
    need_pets,
)
from tests.indexer.test_reindex import M0288, batches

pytestmark = [pytest.mark.slow, STARTS_RAY]


def _config(data_dir: Path, url: str) -> RefindConfig:
    return parse_config({
        "data_dir": str(data_dir),
        "cameras": [{"name": "pets", "url": url, "sample_fps": 5}],
        "live": {"reconnect": {"initial_backoff_s": 0.2, "max_backoff_s": 1.0,
                               "stall_timeout_s": 3.0}},
        "crops": {"early_after_s": 0.5},
        "ray": {"embedder_num_cpus": 0, "detector_num_cpus": 0},
        "serve": {"save_interval_s": 1.0},
        "detector": LIGHT_DETECTOR,
    })


def _rows(shard: Path) -> tuple[list[tuple[str, int]], list[CropRecord]]:
    """(models, every crop record in id order) of one shard, read like any reader."""
    meta = SqliteMetadata(shard / "metadata.sqlite3", read_only=True)
    try:
        models = meta.models()
        ids = np.concatenate([meta.vector_ids(m) for m, _ in models]) if models else []
        return models, meta.crops(sorted(int(v) for v in ids))
    finally:
        meta.close()


def _reindex(cfg: RefindConfig) -> str:
    """Build version B (0288) with the plain re-index job and switch the alias; its model_id."""
    target_cfg = with_model(cfg, M0288)
    embedder = build_embedder(target_cfg.embedder, ModelStore.from_config(cfg.models))
    embed = EmbedCrops(target_cfg, embedder)
    with ReindexJob.open(cfg, target_cfg, embedder) as job:
        for _ in range(3):  # the first pass, then crops stored meanwhile
            todo = job.todo()
            if not len(todo["vector_id"]):
                break
            for batch in batches(todo, 32):
                job.commit(embed(batch))
        job.finish(switch=True)
    return embedder.model_id


def test_live_ingestion_follows_the_alias_to_a_new_version(
    ray_local, http_camera_factory, tmp_path: Path
) -> None:
    need_models()
    need_pets()
    cam = http_camera_factory(PETS_VIDEO)
    cfg = _config(tmp_path / "data", cam.url)
    sup = Supervisor(cfg)
    sup.start()
    server = start_http(sup, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    stop = threading.Event()
    loop = threading.Thread(target=supervise, args=(sup, cfg, stop), daemon=True)
    loop.start()
    live = searcher = None
    try:
        old_model = sup.live.model_id
        old_pool = list(sup.embedders)
        assert wait_until(lambda: camera_count(sup, "pets", "crops_stored") >= 5, 60), (
            sup.status())
        _, records = _rows(cfg.data_dir / "gallery")
        photo = cv2.imread(str(cfg.data_dir / "crops" / max(records, key=lambda r: r.quality)
                               .crop_path))
        live = LiveSearch.from_config(cfg)
        searcher = Searcher(live, photo)
        searcher.start()

        new_model = _reindex(cfg)  # the camera keeps storing into A meanwhile
        assert serving_version(cfg).model_id == new_model != old_model
        assert wait_until(lambda: sup.alias_switches == 1, 60), sup.version_info()
        switched_at = answered_count(sup, "pets", "crops_stored")
        # CI (2026-12-07, beside the other worker) twice stored fewer than 3 in the next 60 s;
        # alone this takes seconds: the wait is for a loaded machine
        assert wait_until(
            lambda: camera_count(sup, "pets", "crops_stored") >= switched_at + 3, 150), (
            sup.status(), sup.version_info())
        report = sup.status()["pets"]
        assert report.model_id == new_model and report.error is None
        assert report.crops_failed == 0  # no batch was lost to the switch
        # the old pool ends once the camera embeds with the new one (RETIRE_AFTER_S after)
        _, camera = sup._cameras["pets"]
        assert ray.get(camera.embedder_ids.remote(), timeout=30) == actor_ids(sup.embedders)
        assert wait_until(lambda: not sup._retiring, RETIRE_AFTER_S + 60), sup._retiring
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(old_pool[0].info.remote(), timeout=30)

        code, body = http_get(f"{base}/metrics")
        text = body.decode()
        assert code == 200
        assert f'refind_serving_model_info{{model_id="{new_model}"}} 1.0' in text, text[-2000:]
        assert "refind_alias_switches_total 1.0" in text
        code, body = http_get(f"{base}/healthz")
        health = json.loads(body)
        assert code == 200 and health["model_id"] == new_model
        assert health["alias_switches"] == 1 and health["alias_error"] is None
        assert wait_until(lambda: searcher.by_model[new_model] >= 3, 30)
    finally:
        if searcher is not None:
            searcher.stop.set()
            searcher.join(60)
        if live is not None:
            live.close()
        stop.set()
        loop.join(30)
        server.shutdown()
        sup.stop()  # stores the open tracks' crops and saves the shards

    a_models, a_rows = _rows(cfg.data_dir / "gallery")
    b_root = serving_version(cfg).root
    b_models, b_rows = _rows(b_root / "gallery")
    assert a_models == [(old_model, 256)] and b_models == [(new_model, 256)]  # one model each
    b_ids = [r.vector_id for r in b_rows]
    assert len(b_ids) == len(set(b_ids))
    assert len({r.crop_path for r in b_rows}) == len(b_rows)  # no crop twice under two ids
    # every crop A got (before the switch, and in flight) is in B once, under its own id
    by_id = {r.vector_id: r.crop_path for r in b_rows}
    assert all(by_id.get(r.vector_id) == r.crop_path for r in a_rows)
    # crops after the switch went only to B, with ids above every id A handed out
    new_rows = [r for r in b_rows if r.vector_id > a_rows[-1].vector_id]
    assert len(new_rows) >= 3 and all(r.model_id == new_model for r in new_rows)
    assert len(b_rows) == len(a_rows) + len(new_rows)
    with GalleryStore(b_root / "gallery", cfg.gallery, new_model, 256, read_only=True) as g:
        assert len(g) == len(b_rows)  # the FAISS view holds every row, copies included
    assert searcher.errors == []
    assert searcher.by_model[old_model] > 0 and searcher.by_model[new_model] >= 3


def _colour_embedder(model_id: str, order: tuple[int, ...]):
    """A real, deterministic embedder actor (mean colour in ``order``, normalised): two orders
    are two models, without loading a network."""
    import ray

    @ray.remote
    class ColourEmbedder:
        def embed(self, crops: list[np.ndarray]) -> Embeddings:
            feats = [np.append(c.reshape(-1, 3).mean(0), 1.0)[list(order)] for c in crops]
            vectors = np.asarray(feats, np.float32).reshape(len(crops), 4)
            return Embeddings(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), model_id)

        def info(self) -> tuple[str, int]:
            return model_id, 4

    return ColourEmbedder.remote()


def test_writer_switch_catches_up_each_crop_once_and_keeps_ids_apart(ray_local, tmp_path):
    """The writer's switch at the actor level, around a real re-index job: crops stored during
    the job's last pass and after the alias switched are caught up once, under their ids; the
    new version's own ids start above every id of the old one; stale embeddings are refused."""
    import ray

    from refind.actors.pools import Pool, PoolEmbedder
    from refind.actors.writer import IndexWriterActor, StaleModelError
    from refind.streaming.records import Crop

    cfg = parse_config({"data_dir": str(tmp_path / "data")})
    emb_a = _colour_embedder("colour-a", (0, 1, 2, 3))
    emb_b = _colour_embedder("colour-b", (3, 2, 1, 0))
    writer = IndexWriterActor.remote(cfg, 0, str(cfg.data_dir), "colour-a", 4)

    def add(first: int, n: int, embedder) -> list[int]:
        crops = [Crop("gate", 1, i, 1_000 + i, (0.0, 0.0, 8.0, 16.0), 0.9, 0.5,
                      np.full((16, 8, 3), (20 * i, 100, 200 - 10 * i), np.uint8))
                 for i in range(first, first + n)]
        vectors = ray.get(embedder.embed.remote([c.image for c in crops]))
        return [r.vector_id for r in ray.get(writer.add.remote(crops, vectors))]

    assert add(0, 3, emb_a) == [0, 1, 2]
    target = PoolEmbedder(Pool([emb_b]), "colour-b", 4)
    with ReindexJob.open(cfg, cfg, target) as job:
        job.commit(EmbedCrops(cfg, target)(job.todo()))
        assert add(3, 2, emb_a) == [3, 4]  # stored during the job's last pass
        job.finish(switch=True)
    root_b = serving_version(cfg).root
    assert add(5, 1, emb_a) == [5]  # the alias switched; the writer has not yet
    with pytest.raises(StaleModelError):
        add(6, 1, emb_b)  # the new model's embeddings wait for the writer's switch

    report = ray.get(writer.switch.remote(str(root_b), "colour-b", 4, [emb_b]))
    assert (report["caught_up"], report["failed"], report["id_floor"]) == (3, 0, 6)
    assert ray.get(writer.switch.remote(str(root_b), "colour-b", 4, [emb_b]))["caught_up"] == 0
    assert add(6, 2, emb_b) == [6, 7]
    with pytest.raises(StaleModelError):
        add(8, 1, emb_a)  # an old-model crop in flight is refused, to be re-embedded
    ray.get(writer.close.remote())
    ray.kill(writer)

    a_models, a_rows = _rows(cfg.data_dir / "gallery")
    b_models, b_rows = _rows(root_b / "gallery")
    assert a_models == [("colour-a", 4)] and [r.vector_id for r in a_rows] == list(range(6))
    assert b_models == [("colour-b", 4)] and [r.vector_id for r in b_rows] == list(range(8))
    assert [r.crop_path for r in b_rows[:6]] == [r.crop_path for r in a_rows]
    assert len({r.crop_path for r in b_rows}) == 8
    with GalleryStore(root_b / "gallery", cfg.gallery, "colour-b", 4, read_only=True) as g:
        assert len(g) == 8
