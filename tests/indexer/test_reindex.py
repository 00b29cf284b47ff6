"""Re-indexing without Ray: the job's checkpoint, exactly-once commits, reconciliation, the alias.

The gallery is a real ingest of the first 150 PETS09-S2L1 frames; the second model is OMZ 0288.
The Ray Data run of the same job (and kill -9) is in tests/actors/test_reindex.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from refind.app.cli import main
from refind.config import RefindConfig, load_config
from refind.indexer.blobs import CropStore
from refind.indexer.gallery_store import GalleryStore
from refind.indexer.metadata import SqliteMetadata
from refind.indexer.reindex import EmbedCrops, ReindexJob, embed_copies
from refind.indexer.versions import (
    VersionError,
    read_registry,
    serving_version,
    use_version,
    with_model,
)
from refind.models.registry import build_embedder
from refind.models.store import ModelStore
from refind.streaming.records import CropRecord, Embeddings
from tests.conftest import (
    LIGHT_DETECTOR,
    MODELS_DIR,
    PETS_VIDEO,
    built_once,
    need_models,
    need_pets,
)

M0288 = "person-reidentification-retail-0288"
GALLERY_YAML = """
crops: {max_per_track: 40, min_gap_s: 0.1}
tracker: {appearance_weight: 0}
models: {dir: %s, allow_download: false}
detector: %s
"""


def ingest_small_gallery(root: Path, frames: int = 150) -> Path:
    """A real gallery: ``frames`` PETS frames, many crops per track; returns its config file."""
    need_models()
    need_pets()
    config = root / "refind.yaml"
    config.write_text(GALLERY_YAML % (MODELS_DIR, json.dumps(LIGHT_DETECTOR)))
    argv = ["ingest", str(PETS_VIDEO), "--camera", "pets", "--max-frames", str(frames),
            "--data-dir", str(root / "data"), "--config", str(config), "--json"]
    assert main(argv) == 0
    return config


def shared_small_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config of ``ingest_small_gallery``'s gallery, built once for the modules that use
    it (each test works on a ``copy_gallery``)."""
    return built_once(tmp_path_factory, "small-gallery", ingest_small_gallery) / "refind.yaml"


@pytest.fixture(scope="module")
def small_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_small_gallery(tmp_path_factory)


def copy_gallery(config: Path, dest: Path) -> RefindConfig:
    """A private copy of the gallery of ``config``; returns its config."""
    shutil.copytree(config.parent / "data", dest / "data")
    return load_config(config).model_copy(update={"data_dir": dest / "data"})


def batches(todo: dict[str, np.ndarray], size: int):
    for i in range(0, len(todo["vector_id"]), size):
        yield {k: v[i : i + size] for k, v in todo.items()}


def source_ids(cfg: RefindConfig) -> np.ndarray:
    meta = SqliteMetadata(cfg.data_dir / "gallery" / "metadata.sqlite3", read_only=True)
    try:
        return meta.vector_ids(meta.models()[0][0])
    finally:
        meta.close()


def test_job_resumes_commits_each_crop_once_and_switches(small_gallery: Path, tmp_path: Path):
    cfg = copy_gallery(small_gallery, tmp_path)
    target_cfg = with_model(cfg, M0288)
    store = ModelStore.from_config(cfg.models)
    embedder = build_embedder(target_cfg.embedder, store)
    embed = EmbedCrops(target_cfg, embedder)
    ids = source_ids(cfg)
    assert len(ids) > 100

    # first run: half the batches, then the process "dies" (no finish)
    with ReindexJob.open(cfg, target_cfg, embedder) as job:
        todo = job.todo()
        assert np.array_equal(todo["vector_id"], ids)
        first = list(batches(todo, 16))[: len(ids) // 32]
        for batch in first:
            job.commit(embed(batch))
        done_before = job.done()
    registry = read_registry(cfg.data_dir)
    assert registry.serving.startswith("person-reidentification-retail-0277")
    assert registry.versions[embedder.model_id].state == "building"
    assert serving_version(cfg).model_id == registry.serving  # searches still use 0277

    # resume: only what was not committed, and a batch committed twice is stored once
    with ReindexJob.open(cfg, target_cfg, embedder) as job:
        todo = job.todo()
        assert len(todo["vector_id"]) == len(ids) - done_before
        assert not set(todo["vector_id"].tolist()) & set(
            np.concatenate([b["vector_id"] for b in first]).tolist())
        again = embed(first[0])
        assert job.commit(again) == (0, {})
        for batch in batches(todo, 16):
            job.commit(embed(batch))
        removed, crops = job.finish(switch=True)
    assert (removed, crops) == (0, len(ids))

    serving = serving_version(cfg)
    assert serving.model_id == embedder.model_id
    shard = serving.root / "gallery"
    meta = SqliteMetadata(shard / "metadata.sqlite3", read_only=True)
    try:
        assert meta.models() == [(embedder.model_id, embedder.dim)]  # one model per index
        assert np.array_equal(meta.vector_ids(embedder.model_id), ids)  # each crop exactly once
    finally:
        meta.close()
    with GalleryStore(shard, cfg.gallery, embedder.model_id, embedder.dim,
                      read_only=True) as g:
        assert len(g) == len(ids)
        # the 0288 vector of a crop is what 0288 makes of its JPEG
        probe = {"shard": np.array(["gallery"]), "vector_id": ids[:1],
                 "crop_path": np.array([g.metadata.crops(ids[:1])[0].crop_path])}
        [found] = g.search(embed(probe)["vector"], 1)[0]
        hit, score = found.record, found.score
        assert hit.vector_id == ids[0] and score > 0.999


def test_search_follows_the_alias_and_rollback(small_gallery: Path, tmp_path: Path, capsys):
    cfg = copy_gallery(small_gallery, tmp_path)
    data = str(cfg.data_dir)
    config = str(small_gallery)
    meta = SqliteMetadata(cfg.data_dir / "gallery" / "metadata.sqlite3", read_only=True)
    photo = cfg.data_dir / "crops" / meta.crops(source_ids(cfg)[:1])[0].crop_path
    meta.close()
    search = ["search", "--image", str(photo), "--k", "3", "--data-dir", data, "--config", config,
              "--json"]

    def top() -> list[dict]:
        capsys.readouterr()
        assert main(search) == 0
        return json.loads(capsys.readouterr().out)

    before = top()
    target_cfg = with_model(cfg, M0288)
    embedder = build_embedder(target_cfg.embedder, ModelStore.from_config(cfg.models))
    with ReindexJob.open(cfg, target_cfg, embedder) as job:
        job.commit(EmbedCrops(target_cfg, embedder)(job.todo()))
        job.finish(switch=True)
    after = top()
    assert after[0]["track_id"] == before[0]["track_id"]  # the photo's own track, either model
    assert [h["score"] for h in after] != [h["score"] for h in before]  # another model answered

    assert main(["versions", "use", "person-reidentification-retail-0277", "--data-dir", data,
                 "--config", config]) == 0
    assert top() == before  # rolled back: the old version, untouched
    capsys.readouterr()
    assert main(["versions", "list", "--data-dir", data, "--config", config, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["serving"].startswith("person-reidentification-retail-0277")
    assert sorted(v["state"] for v in listing["versions"].values()) == ["ready", "ready"]
    assert main(["versions", "delete", M0288, "--data-dir", data, "--config", config]) == 0
    assert not (cfg.data_dir / "versions").exists() or not any(
        (cfg.data_dir / "versions").iterdir())
    assert top() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reindex", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["reindex", "--model", "person-reidentification-retail-0277"],
         "already the serving version"),
        (["versions", "use", "nothing-like-it"], "no index version 'nothing-like-it'"),
        (["versions", "delete", "person-reidentification-retail-0277"], "no index version"),
        (["reindex", "--workers", "0"], None),  # argparse: exit status 2 as well
    ],
)
def test_bad_input_is_one_clear_error(small_gallery: Path, tmp_path: Path, capsys, argv, message):
    cfg = copy_gallery(small_gallery, tmp_path)
    full = [*argv, "--data-dir", str(cfg.data_dir), "--config", str(small_gallery)]
    if message is None:
        with pytest.raises(SystemExit) as exit_info:
            main(full)
        assert exit_info.value.code == 2
        return
    assert main(full) == 2
    err = capsys.readouterr().err
    assert err.startswith("refind: error: ") and message in err and err.count("\n") == 1
    registry = read_registry(cfg.data_dir)  # nothing switched: 0277 (or no registry) serves
    assert registry is None or registry.serving.startswith("person-reidentification-retail-0277")


def test_alias_rules(small_gallery: Path, tmp_path: Path):
    cfg = copy_gallery(small_gallery, tmp_path)
    target_cfg = with_model(cfg, M0288)
    embedder = build_embedder(target_cfg.embedder, ModelStore.from_config(cfg.models))
    with ReindexJob.open(cfg, target_cfg, embedder) as job:
        with pytest.raises(VersionError, match="another re-index"):
            ReindexJob.open(cfg, target_cfg, embedder)  # one job per target at a time
        with pytest.raises(VersionError, match="still being built"):
            use_version(cfg.data_dir, M0288)
        job.commit(EmbedCrops(target_cfg, embedder)(job.todo()))
        job.finish(switch=False)
    assert read_registry(cfg.data_dir).serving.startswith("person-reidentification-retail-0277")
    assert use_version(cfg.data_dir, M0288).model_id == embedder.model_id
    assert serving_version(cfg).cfg.embedder.model == M0288


@pytest.mark.parametrize(
    ("since_s", "cameras", "expected"),
    [(None, (), "all"), (None, ("pets",), "all"), (None, ("elsewhere",), "none"),
     (10.0, (), "later"), (1e6, (), "none")],
)
def test_since_and_cameras_narrow_the_crops_to_do(small_gallery: Path, tmp_path: Path,
                                                 since_s, cameras, expected):
    cfg = copy_gallery(small_gallery, tmp_path)
    target_cfg = with_model(cfg, M0288)
    embedder = build_embedder(target_cfg.embedder, ModelStore.from_config(cfg.models))
    meta = SqliteMetadata(cfg.data_dir / "gallery" / "metadata.sqlite3", read_only=True)
    records = meta.crops(source_ids(cfg))
    meta.close()
    since_ns = None if since_s is None else int(since_s * 1e9)
    with ReindexJob.open(cfg, target_cfg, embedder, since_ns=since_ns, cameras=cameras) as job:
        todo = job.todo()["vector_id"].tolist()
    want = {"all": [r.vector_id for r in records], "none": [],
            "later": [r.vector_id for r in records if r.ts_ns >= 10 * 10**9]}[expected]
    assert todo == want
    assert expected != "later" or 0 < len(want) < len(records)


class _ConstantEmbedder:
    model_id, dim = "const@1", 4

    def __call__(self, images: list[np.ndarray]) -> Embeddings:
        return Embeddings(np.full((len(images), self.dim), 0.5, np.float32), self.model_id)


def test_embed_copies_stores_the_crops_read_and_names_the_rest(tmp_path: Path):
    """The catch-up and rebuild path: re-embed stored crops, keep their ids, report the missing."""
    cfg = RefindConfig(data_dir=tmp_path)
    crops = CropStore.from_config(cfg)
    paths = [crops.put("cam", 1, 0, np.full((16, 8, 3), 90, np.uint8)), "cam/1/000001.jpg",
             crops.put("cam", 1, 2, np.full((16, 8, 3), 90, np.uint8))]
    records = [CropRecord(vector_id=10 + i, camera="cam", track_id=1, frame_index=i, ts_ns=i,
                          xyxy=(0.0, 0.0, 8.0, 16.0), confidence=0.0, quality=0.5, crop_path=p,
                          model_id="const@1") for i, p in enumerate(paths)]
    meta = SqliteMetadata(tmp_path / "metadata.sqlite3")
    try:
        added, failed = embed_copies(EmbedCrops(cfg, _ConstantEmbedder()), meta, records)
        assert added == 2 and list(failed) == [11] and "missing" in failed[11]
        assert meta.vector_ids("const@1").tolist() == [10, 12]
    finally:
        meta.close()
