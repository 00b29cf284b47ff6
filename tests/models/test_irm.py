"""The IRM model (models/irm.py) and its training (models/train_irm.py).

Tiny random configurations need no data; the tests with trained weights on real PETS crops skip
when ../shared is absent.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from models.base import TASKS, InstructableEmbedder
from models.irm import IrmConfig, IrmEmbedder, IrmHead, load_head, save_head
from models.minilm import pad_states
from models.train_irm import VIEWS, Cache, IdClassifier, TrainOptions, sample_batch, step_loss
from tests.conftest import MODELS_DIR, PETS_GT, PETS_VIDEO

TINY = IrmConfig(
    token_dim=16, n_patches=4, teacher_dim=8, text_dim=12, dim=16, heads=2,
    encoder_layers=1, editing_layers=1, part_dim=8, max_text_tokens=8,
)  # fmt: skip
WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights" / "irm-pets-v1.safetensors"


def tiny_head(seed: int = 0) -> IrmHead:
    torch.manual_seed(seed)
    head = IrmHead(TINY)
    # Trained-like: non-zero output projections and gate, so the instruction matters.
    for p in (head.id_out.weight, head.clo_out.weight, head.gate.weight):
        torch.nn.init.normal_(p, std=0.5)
    head.set_gallery_text(torch.randn(3, TINY.text_dim))
    return head.eval()


class FakeBackbone:
    """Deterministic features from pixels: 2x2 patch colours through fixed random projections."""

    model_id = "fake-backbone"

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.tok = rng.normal(size=(3, TINY.token_dim)).astype(np.float32)
        self.tea = rng.normal(size=(12, TINY.teacher_dim)).astype(np.float32)

    def __call__(self, crops):
        import cv2

        cells = np.stack([cv2.resize(c, (2, 2), interpolation=cv2.INTER_AREA) for c in crops])
        cells = cells.reshape(len(crops), 4, 3).astype(np.float32) / 255.0  # (B, 4, 3)
        return np.maximum(cells @ self.tok, 0), cells.reshape(len(crops), 12) @ self.tea


class FakeText:
    """Deterministic per-word states, (n_words + 1, text_dim) per text."""

    def __call__(self, texts):
        out = []
        for t in texts:
            rows = [np.random.default_rng(zlib.crc32(w.encode())).normal(size=TINY.text_dim)
                    for w in ["[CLS]", *t.split()]]  # fmt: skip
            out.append(np.asarray(rows, np.float32))
        return out


def tiny_embedder(seed: int = 0) -> IrmEmbedder:
    return IrmEmbedder(
        tiny_head(seed), FakeBackbone(), "irm-tiny", "cpu", batch_size=4, text=FakeText(),
        compile_cpu=False,
    )  # fmt: skip


def crops(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 4 * i, 20, 3), dtype=np.uint8) for i in range(n)]


def test_is_an_instructable_embedder():
    assert isinstance(tiny_embedder(), InstructableEmbedder)


@pytest.mark.parametrize("task", [t for t in TASKS if t != "text"])
def test_query_shapes_and_unit_norm(task):
    emb = tiny_embedder()
    q = emb.embed_query(crops(5), task)
    assert q.vectors.shape == (5, TINY.out_dim) and q.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q.vectors, axis=1), 1.0, atol=1e-5)
    assert q.model_id == "irm-tiny"


def test_gallery_and_text_shapes():
    emb = tiny_embedder()
    g = emb(crops(6))
    t = emb.embed_text(["a man in a red top", "a woman with a bag"])
    assert g.vectors.shape == (6, 16) and t.vectors.shape == (2, 16)
    for v in (g.vectors, t.vectors):
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert emb([]).vectors.shape == (0, 16)


def test_deterministic_across_instances_and_calls():
    a, b = tiny_embedder(), tiny_embedder()
    x = crops(5)
    np.testing.assert_array_equal(a(x).vectors, b(x).vectors)
    np.testing.assert_array_equal(
        a.embed_query(x, "clothes_change").vectors, a.embed_query(x, "clothes_change").vectors
    )


def test_batch_size_independent():
    emb, x = tiny_embedder(), crops(7)
    whole = emb(x).vectors  # chunks of 4 + 3
    single = np.concatenate([emb([c]).vectors for c in x])
    np.testing.assert_allclose(whole, single, atol=1e-5)
    texts = ["red top", "a man in blue trousers and a black top"]
    np.testing.assert_allclose(
        emb.embed_text(texts).vectors,
        np.concatenate([emb.embed_text([t]).vectors for t in texts]),
        atol=1e-5,
    )  # fmt: skip (padding of the shorter text must not change it)


def test_gallery_does_not_depend_on_queries():
    emb, x = tiny_embedder(), crops(4)
    before = emb(x).vectors
    for task in TASKS[:-1]:
        emb.embed_query(x, task, "now wearing a red top")
    np.testing.assert_array_equal(emb(x).vectors, before)


def test_instruction_changes_the_query():
    emb, x = tiny_embedder(), crops(3)
    plain = emb.embed_query(x, "reid").vectors
    assert not np.allclose(plain, emb.embed_query(x, "clothes_change").vectors)
    assert not np.allclose(plain, emb.embed_query(x, "reid", "a red jacket").vectors)
    garment = emb.embed_query(x, "clothes_template", crops(1, seed=5)[0]).vectors
    assert garment.shape == plain.shape and not np.allclose(plain, garment)


def test_untrained_head_is_the_teacher():
    """Residual init: at step 0 both parts are the teacher, so plain ReID = 0277."""
    torch.manual_seed(0)
    head = IrmHead(TINY).eval()
    p, t = torch.randn(5, 4, 16), torch.randn(5, 8)
    out = head.gallery(p, t)
    unit = torch.nn.functional.normalize(t, dim=-1)
    torch.testing.assert_close(out.id_part, unit)
    torch.testing.assert_close(out.vectors @ out.vectors.T, unit @ unit.T)


def test_save_load_roundtrip(tmp_path):
    head = tiny_head()
    save_head(head, tmp_path / "h.safetensors", {"backbone": "x"})
    loaded, meta = load_head(tmp_path / "h.safetensors")
    assert loaded.cfg == TINY and meta["backbone"] == "x"
    p, t = torch.randn(3, 4, 16), torch.randn(3, 8)
    torch.testing.assert_close(loaded.gallery(p, t).vectors, head.gallery(p, t).vectors)


@pytest.mark.parametrize(
    "bad", [dict(dim=15, heads=2), dict(part_dim=4)], ids=["heads", "residual"]
)
def test_config_checks(bad):
    with pytest.raises(ValueError):
        IrmConfig(**{**TINY.__dict__, **bad})


def test_unknown_task_is_refused():
    from models.base import ModelInputError

    with pytest.raises(ModelInputError, match="unknown task"):
        tiny_embedder().embed_query(crops(1), "dance")


# ---- training ----


def synthetic_cache(n_ids: int = 4, per_id: int = 6, seed: int = 0) -> Cache:
    """A tiny cache in the training layout: identity-dependent tokens, recolours change some."""
    rng = np.random.default_rng(seed)
    n, nv = n_ids * per_id, len(VIEWS)
    label = np.repeat(np.arange(n_ids), per_id)
    centre = rng.normal(size=(n_ids, TINY.token_dim))
    patches = centre[label][:, None, None] + 0.5 * rng.normal(size=(n, nv, 4, TINY.token_dim))
    patches[:, 2:5, 2:] += rng.normal(size=(n, 3, 2, TINY.token_dim))  # recoloured clothes
    teacher = rng.normal(size=(n_ids, 8))[label][:, None] + 0.3 * rng.normal(size=(n, nv, 8))
    texts = [f"text {k}" for k in range(n_ids * 3 + 5)]
    states = [torch.from_numpy(rng.normal(size=(3 + k % 3, TINY.text_dim)).astype(np.float32))
              for k in range(len(texts))]  # fmt: skip
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32))  # noqa: E731
    return Cache(
        patches=t(patches).half(), teacher=t(teacher), probs=t(rng.random((n, 8))), label=label,
        identities=[f"id{k}" for k in range(n_ids)],
        val_patches=t(patches[:, 0]).half(), val_teacher=t(teacher[:, 0]),
        val_label=label.astype(str), val_frame=np.tile(np.arange(per_id) * 100, n_ids),
        text_states=states, texts=texts,
        captions=np.stack([label * 3, label * 3 + 1, label * 3 + 2], 1),
        attr_texts=np.stack([label * 3, label * 3 + 1], 1),
        fixed={k: [n_ids * 3 + i for i in range(2)] for k in
               ("reid", "clothes_change", "clothes_template", "visible_infrared")},
        gallery_text=n_ids * 3 + 4,
    )  # fmt: skip


def test_training_steps_lower_the_loss(tmp_path):
    torch.manual_seed(0)
    cache, device = synthetic_cache(), torch.device("cpu")
    opts = TrainOptions(out=tmp_path, ids_per_batch=4, crops_per_id=3, config=TINY, lr=3e-3)
    head = IrmHead(TINY)
    head.set_gallery_text(cache.text_states[cache.gallery_text])
    clf = IdClassifier(4, TINY.part_dim)
    optim = torch.optim.AdamW([*head.parameters(), *clf.parameters()], lr=opts.lr)
    fixed = [sample_batch(cache, np.random.default_rng(100 + k), opts) for k in range(4)]

    def held_loss() -> float:
        with torch.no_grad():
            return float(sum(step_loss(head, clf, cache, b, opts, device)[0] for b in fixed))

    before = held_loss()
    rng = np.random.default_rng(0)
    for _ in range(40):
        loss, _ = step_loss(head, clf, cache, sample_batch(cache, rng, opts), opts, device)
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert held_loss() < 0.8 * before


def test_train_head_writes_weights_and_report(tmp_path):
    from models.train_irm import train_head

    opts = TrainOptions(
        out=tmp_path, ids_per_batch=4, crops_per_id=3, config=TINY, max_steps=6, eval_every=3,
        progress=False,
    )  # fmt: skip
    report = train_head(synthetic_cache(), opts, torch.device("cpu"))
    assert report["steps"] == 6 and len(report["history"]) == 3
    head, meta = load_head(tmp_path / "irm.safetensors")
    assert head.cfg == TINY and meta["backbone"].startswith("person-reidentification")


def test_pad_states_masks_padding():
    states, mask = pad_states([np.ones((2, 3)), np.ones((4, 3))], 3)
    assert states.shape == (2, 4, 3) and mask.sum().item() == 6 and not mask[0, 2:].any()


# ---- integration: config, store, trained weights on real crops ----


def test_config_selects_the_irm_embedder():
    from streaming.config import IrmEmbedderConfig, OpenVinoReidConfig, load_config, parse_config

    assert isinstance(parse_config({"embedder": {"type": "irm"}}).embedder, IrmEmbedderConfig)
    assert isinstance(parse_config({}).embedder, OpenVinoReidConfig)
    assert isinstance(parse_config({"embedder": {"batch_size": 8}}).embedder, OpenVinoReidConfig)
    assert load_config(Path(__file__).parents[2] / "configs" / "irm.yaml").embedder.type == "irm"


def test_store_serves_the_packaged_weights(tmp_path):
    from models.store import ModelStore

    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} not present")
    store = ModelStore([], tmp_path / "cache", allow_download=False)
    resolved = store.resolve("irm-pets-v1")
    assert resolved.path == WEIGHTS and resolved.model_id.startswith("irm-pets-v1@")
    head, meta = load_head(resolved.path)
    assert head.cfg.out_dim == 512 and meta["backbone"] == "person-reidentification-retail-0277"


@pytest.fixture(scope="module")
def pets_embedder():
    if not (MODELS_DIR / "omz").is_dir() or not PETS_VIDEO.is_file() or not PETS_GT.is_file():
        pytest.skip("needs ../shared/models (OMZ 0277) and the PETS09-S2L1 clip")
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} not present")
    from models.store import ModelStore
    from streaming.config import IrmEmbedderConfig, ModelStoreConfig

    return IrmEmbedder.from_config(
        IrmEmbedderConfig(device="cpu"), ModelStore.from_config(ModelStoreConfig())
    )


@pytest.mark.slow
def test_ignore_clothes_brings_a_recoloured_crop_closer(pets_embedder):
    """On held-out PETS people: a query whose clothes were recoloured is closer to its own
    gallery crops under "ignore the clothes" than as a plain ReID query.

    (With irm-pets-v1 the effect is small, about +0.01 cosine, and it lifts the other people by
    about as much: see the model card.)"""
    from models.irm_data import load_pets_crops, pets_identity_split, recolour_clothes

    people = load_pets_crops(pets_identity_split()[1], every_n_frames=20)
    g = pets_embedder([c.image for c in people]).vectors
    ids = np.asarray([c.identity for c in people])
    gains = []
    for k, person in enumerate(people[::4]):
        query = recolour_clothes(person.image, np.random.default_rng(k))
        same = ids == person.identity
        plain = pets_embedder.embed_query([query], "reid").vectors @ g.T
        ignore = pets_embedder.embed_query([query], "clothes_change").vectors @ g.T
        gains.append(ignore[0, same].mean() - plain[0, same].mean())
    assert np.mean(gains) > 0 and np.mean(np.asarray(gains) > 0) >= 0.75, gains


@pytest.mark.slow
def test_gallery_vectors_carry_the_store_model_id(pets_embedder):
    crop = np.full((64, 32, 3), 128, np.uint8)
    out = pets_embedder([crop, crop])
    assert out.model_id.startswith("irm-pets-v1@") and out.vectors.shape == (2, 512)
    np.testing.assert_allclose(out.vectors[0], out.vectors[1], atol=1e-6)


def test_untrained_gradients_are_finite_for_every_task(tmp_path):
    """Text-only queries start from their own output layers: no 0/0 in the normalisation."""
    torch.manual_seed(0)
    cache, device = synthetic_cache(), torch.device("cpu")
    opts = TrainOptions(out=tmp_path, ids_per_batch=4, crops_per_id=3, config=TINY)
    head = IrmHead(TINY)
    head.set_gallery_text(cache.text_states[cache.gallery_text])
    batch = sample_batch(cache, np.random.default_rng(0), opts)
    assert "text" in batch.q_task
    loss, _ = step_loss(head, IdClassifier(4, TINY.part_dim), cache, batch, opts, device)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in head.parameters() if p.grad is not None])
    assert torch.isfinite(grads).all() and grads.abs().max() < 100
