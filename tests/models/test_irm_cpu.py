"""The IRM embedder without torch (refind.models.irm_cpu): its OpenVINO export gives the torch
head's vectors on every path, the real weights and MiniLM agree with torch, the export is cached
and checked, and a machine without torch serves from the cache or says how to make it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refind.models.base import TASKS
from refind.models.irm import save_head
from refind.models.irm_cpu import (
    IrmCpuEmbedder,
    KeptTexts,
    OpenVinoHead,
    checked_export,
    export_folder,
    export_irm,
    pad_states,
)
from refind.models.irm_export import export_graphs
from refind.models.store import ModelStoreError
from tests.irm_builders import TINY, FakeBackbone, FakeText, crops, tiny_embedder


class FakeTextPadded:
    """tests.irm_builders.FakeText, padded as the head reads it."""

    def padded(self, texts):
        return pad_states(FakeText()(texts), TINY.text_dim)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    """The tiny head of tests.irm_builders, saved and exported (head graphs only)."""
    folder = tmp_path_factory.mktemp("tiny-export")
    weights = folder / "tiny.safetensors"
    save_head(tiny_embedder().head, weights)
    export_graphs(weights, folder, text_encoder=False)
    return folder


def _pair(tiny_export: Path) -> tuple[IrmCpuEmbedder, object]:
    head = OpenVinoHead(tiny_export)
    head.text = FakeTextPadded()
    cpu = IrmCpuEmbedder(head, FakeBackbone(), "irm-tiny", batch_size=4)
    return cpu, tiny_embedder()


def test_encoded_texts_are_kept_within_a_bound():
    """A long-running API sees endless distinct texts: each is encoded once while kept, and
    no more than ``size`` are kept."""
    kept, asked = KeptTexts(size=2), []

    def encode(todo: list[str]) -> list[np.ndarray]:
        asked.append(todo)
        return [np.full(3, len(t), np.float32) for t in todo]

    assert [v[0] for v in kept(["a", "bb", "a"], encode)] == [1, 2, 1]
    assert [v[0] for v in kept(["ccc", "a"], encode)] == [3, 1]  # "bb", least recent, goes
    kept(["a", "bb"], encode)
    assert asked == [["a", "bb"], ["ccc"], ["bb"]]


@pytest.mark.parametrize(("task", "instruction"), [
    ("reid", None),
    ("clothes_change", "ignore the clothes"),
    ("attribute_text", "now wearing a red top"),
    ("visible_infrared", None),
    ("clothes_template", "garment"),
])
def test_photo_queries_equal_the_torch_head(tiny_export, task, instruction):
    cpu, ref = _pair(tiny_export)
    if instruction == "garment":
        instruction = crops(1, seed=9)[0]
    photos = crops(6)  # two batches of the embedder's 4
    got = cpu.embed_query(photos, task, instruction).vectors
    want = ref.embed_query(photos, task, instruction).vectors
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.shape == (6, TINY.out_dim)


def test_gallery_and_text_equal_the_torch_head(tiny_export):
    cpu, ref = _pair(tiny_export)
    photos = crops(5, seed=3)
    np.testing.assert_allclose(cpu(photos).vectors, ref(photos).vectors, atol=1e-5)
    texts = ["a man with a hat", "someone walking quickly", "x"]
    np.testing.assert_allclose(cpu.embed_text(texts).vectors, ref.embed_text(texts).vectors,
                               atol=1e-5)
    assert cpu(crops(0)).vectors.shape == (0, TINY.out_dim)


@pytest.mark.parametrize(("bad", "match"), [
    (lambda e: e.embed_query(crops(1), "dance"), "unknown task 'dance'"),
    (lambda e: e.embed_query(crops(1), "text", "a man"), "task 'text' takes no crops"),
])
def test_bad_queries_are_refused(tiny_export, bad, match):
    from refind.models.base import ModelInputError

    cpu, _ = _pair(tiny_export)
    with pytest.raises(ModelInputError, match=match):
        bad(cpu)


def test_a_broken_export_is_refused(tiny_export, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for f in tiny_export.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    files = {f.name: __import__("hashlib").sha256(f.read_bytes()).hexdigest()
             for f in folder.iterdir()}
    (folder / "manifest.json").write_text(json.dumps(
        {"format": 1, "weights": "tiny@abc", "files": files}))
    assert checked_export(folder, "tiny@abc") == folder
    with pytest.raises(ModelStoreError, match="not of other@def"):
        checked_export(folder, "other@def")
    (folder / "gallery.bin").write_bytes(b"changed")
    with pytest.raises(ModelStoreError, match=r"gallery\.bin has sha256"):
        checked_export(folder, "tiny@abc")
    with pytest.raises(ModelStoreError, match="no OpenVINO export"):
        checked_export(tmp_path / "nowhere", "tiny@abc")


# ---- the real weights, MiniLM, the cache, and a machine without torch -------------------------


@pytest.fixture(scope="module")
def real_export(model_store, tmp_path_factory) -> tuple[object, Path]:
    """irm-pets-v3 exported into a private model store cache, as ensure_export does."""
    from refind.models.store import ModelStore

    cache = tmp_path_factory.mktemp("store-cache")
    store = ModelStore(model_store.search_dirs, cache, allow_download=False)
    resolved = store.resolve("irm-pets-v3")
    export_irm(resolved.path, resolved.model_id, export_folder(store, resolved.model_id))
    return store, cache


@pytest.mark.slow
def test_real_weights_and_minilm_give_the_torch_vectors(real_export, pets_video):
    from refind.models.config import IrmEmbedderConfig
    from refind.models.irm_embedder import IrmEmbedder
    from refind.models.minilm import MiniLmTokens

    store, _ = real_export
    cfg = IrmEmbedderConfig(device="cpu")
    cpu = IrmCpuEmbedder.from_config(cfg, store)
    ref = IrmEmbedder.from_config(cfg, store)
    assert isinstance(cpu, IrmCpuEmbedder) and cpu.model_id == ref.model_id
    texts = ["a woman in a red top with a backpack", "someone suspicious near the gate",
             "", "word " * 60]
    for a, b in zip(cpu.head.text(texts), MiniLmTokens(32)(texts), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)  # tokenizer and encoder: the same states
    photos = crops(5, seed=1)
    np.testing.assert_allclose(cpu(photos).vectors, ref(photos).vectors, atol=1e-4)
    for task in TASKS[:-1]:
        np.testing.assert_allclose(cpu.embed_query(photos[:2], task).vectors,
                                   ref.embed_query(photos[:2], task).vectors, atol=1e-4)
    np.testing.assert_allclose(cpu.embed_text(texts).vectors, ref.embed_text(texts).vectors,
                               atol=1e-4)


def _without_torch(code: str, cache: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where torch and transformers are not installed, as far
    as it can tell (neither imports nor is found), with ``cache`` as the model store's cache."""
    blocker = tmp_path / "block"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules.update(torch=None, transformers=None)\n")
    env = os.environ | {"PYTHONPATH": str(blocker), "XDG_CACHE_HOME": str(cache.parent.parent)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow
def test_without_torch_the_cached_export_serves_and_a_missing_one_names_the_fix(
    real_export, tmp_path
):
    _, cache = real_export
    code = ("from refind.models.config import IrmEmbedderConfig, ModelStoreConfig\n"
            "from refind.models.registry import build_embedder\n"
            "from refind.models.store import ModelStore, default_cache_dir\n"
            "store = ModelStore.from_config(ModelStoreConfig())\n"
            "emb = build_embedder(IrmEmbedderConfig(device='auto'), store)\n"
            "v = emb.embed_text(['someone suspicious near the gate']).vectors\n"
            "print(type(emb).__name__, v.shape)\n")
    # the private cache is <tmp>/refind/models: XDG_CACHE_HOME is two levels up
    served = tmp_path / "xdg" / "refind" / "models"
    served.parent.mkdir(parents=True)
    served.symlink_to(cache, target_is_directory=True)
    out = _without_torch(code, served, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "IrmCpuEmbedder (1, 512)"
    empty = tmp_path / "xdg2" / "refind" / "models"
    empty.mkdir(parents=True)
    out = _without_torch(code, empty, tmp_path)
    assert out.returncode != 0
    assert "pip install 'refind[torch]'" in out.stderr and "OpenVINO export" in out.stderr
