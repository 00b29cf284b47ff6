"""The IRM model (models/irm.py) and its training (training/irm.py, irm_cache.py,
irm_objectives.py).

Tiny random configurations need no data; the tests with trained weights on real PETS crops skip
when ../shared is absent.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refind.models.base import TASKS, InstructableEmbedder
from refind.models.irm import IrmHead, load_head, save_head
from refind.models.irm_cpu import IrmConfig
from refind.models.irm_embedder import IrmEmbedder
from refind.models.minilm import pad_states
from refind.training.irm import TrainOptions
from refind.training.irm_cache import VIEWS, Cache
from refind.training.irm_objectives import IdClassifier, sample_batch, step_loss
from tests.conftest import MODELS_DIR, PETS_GT, PETS_VIDEO
from tests.irm_builders import TINY, crops, tiny_embedder, tiny_head

WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights" / "irm-pets-v3.safetensors"


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
    from refind.models.base import ModelInputError

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
        val_patches=t(patches).half(), val_teacher=t(teacher),
        val_label=label.astype(str), val_frame=np.tile(np.arange(per_id) * 100, n_ids),
        text_states=states, texts=texts,
        captions=np.stack([label * 3, label * 3 + 1, label * 3 + 2], 1),
        val_captions=np.stack([label * 3, label * 3 + 1, label * 3 + 2], 1),
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
    from refind.training.irm import train_head

    opts = TrainOptions(
        out=tmp_path, ids_per_batch=4, crops_per_id=3, config=TINY, max_steps=6, eval_every=3,
        progress=False,
    )  # fmt: skip
    report = train_head(synthetic_cache(), opts, torch.device("cpu"))
    assert report["steps"] == 6 and len(report["history"]) == 3
    head, meta = load_head(tmp_path / "irm.safetensors")
    assert head.cfg == TINY and meta["backbone"].startswith("person-reidentification")


def test_cv_folds_deal_pets_training_ids_and_keep_tracklets_training():
    from refind.training.irm_cache import cv_folds

    names = ["intel:1", "pets:1", "pets:3", "pets:5", "pets:7", "pets:9"]
    label = np.repeat(np.arange(6), [50, 10, 40, 30, 20, 40])
    folds = cv_folds(names, label, 2)
    assert folds == [["pets:3", "pets:5", "pets:1"], ["pets:9", "pets:7"]]
    assert cv_folds(names, label, 1) == []


def test_choose_steps_takes_the_best_mean_gain_and_the_earlier_tie():
    from refind.training.irm import choose_steps, plain_gain

    def hist(gains):
        return [
            {"step": 50 * k, "irm_mAP": 0.5 + g, "teacher_mAP": 0.5} for k, g in enumerate(gains)
        ]

    def best(*hists):
        return choose_steps(list(hists), plain_gain)

    steps, table = best(hist([0, 0.02, 0.03, 0.01]), hist([0, 0.02, 0.01, 0.0]))
    assert steps == 50 and [r["step"] for r in table] == [0, 50, 100, 150]
    assert best(hist([0, -0.01]), hist([0, -0.02]))[0] == 0  # nothing beats the teacher
    assert best(hist([0, 0.01, 0.05]), hist([0, 0.01]))[0] == 50  # steps both reached


def test_part_masks_separate_identity_from_outfit():
    from refind.training.irm_objectives import Batch, part_masks

    # crops 0, 1 of identity 0, crop 2 of identity 1; the last entry is crop 0 recoloured
    label = np.asarray([0, 0, 1])
    batch = Batch(
        g_crop=np.asarray([0, 1, 2, 0]), g_view=np.zeros(4, int),
        g_recoloured=np.asarray([False, False, False, True]),
        q_crop=np.asarray([0]), q_task=["reid"], q_view=np.zeros(1, int),
        q_text=np.zeros(1, int), q_image_instruction=np.zeros(1, bool),
    )  # fmt: skip
    masks = part_masks(batch, label)
    id_pos, id_neg = masks["id"]
    clo_pos, clo_neg = masks["clo"]
    assert id_pos[0, 3] and not id_pos[0, 1] and not id_neg[0, 1] and not id_pos[0, 0]
    assert id_neg[0, 2]
    assert clo_pos[0, 1] and clo_neg[0, 3] and not clo_pos[0, 3] and clo_neg[0, 2]


@pytest.mark.parametrize("stage1_steps", [0, 3])
def test_instruction_tuning_leaves_the_gallery_and_plain_reid_alone(tmp_path, stage1_steps):
    """Stage 2 trains only what the gallery does not depend on (after 0 stage-1 steps: all but
    the gallery's output layers): gallery vectors and plain-ReID queries are bit-identical
    afterwards, while the other tasks' queries moved."""
    from refind.training.irm import train_head

    cache = synthetic_cache()
    opts = TrainOptions(
        out=tmp_path / "a", ids_per_batch=4, crops_per_id=3, config=TINY,
        max_steps=stage1_steps, progress=False,
    )  # fmt: skip
    train_head(cache, opts, torch.device("cpu"))
    before, _ = load_head(tmp_path / "a" / "irm.safetensors")
    tuned = replace(opts, out=tmp_path / "b", max_steps=8, lr=1e-2, warmup_steps=0)
    train_head(cache, tuned, torch.device("cpu"), start=before)
    after, _ = load_head(tmp_path / "b" / "irm.safetensors")
    p, t = cache.val_patches[:6, 0].float(), cache.val_teacher[:6, 0]
    text, mask = pad_states([cache.text_states[cache.gallery_text]], TINY.text_dim)
    with torch.no_grad():
        assert torch.equal(before.gallery(p, t).vectors, after.gallery(p, t).vectors)
        for task, same in (("reid", True), ("clothes_change", False)):
            ids = torch.full((6,), TASKS.index(task))
            q = [h.query(p, t, ids, text.expand(6, -1, -1), mask.expand(6, -1)).vectors
                 for h in (before, after)]  # fmt: skip
            assert torch.equal(*q) is same, task


def test_instruction_tuning_classifies_against_the_frozen_gallery_centroids():
    """Stage 2's identity classifier is each identity's mean gallery id part, frozen: a
    query's id cross-entropy pulls it to its own people (before: a fresh random classifier
    that never trained pulled query id parts toward random directions)."""
    from refind.training.irm_objectives import centroid_classifier

    torch.manual_seed(0)
    cache, head = synthetic_cache(), IrmHead(TINY)
    head.train()
    clf = centroid_classifier(head, cache, torch.device("cpu"))
    assert head.training and not any(p.requires_grad for p in clf.parameters())
    with torch.no_grad():
        head.eval()
        ids = F.normalize(
            head.gallery(cache.patches[:, 0].float(), cache.teacher[:, 0]).id_part, dim=-1
        )
    for k in range(len(cache.identities)):
        mean = ids[cache.label == k].mean(0)
        assert torch.allclose(
            F.normalize(clf.weight[k], dim=-1), F.normalize(mean, dim=-1), atol=1e-5
        )
    # the synthetic identities are separable: each crop is nearest its own identity's centroid
    assert (clf(ids).argmax(1).numpy() == cache.label).mean() > 0.9


def test_text_training_learns_captions_and_moves_no_image_vector(tmp_path):
    from refind.training.irm import train_text

    torch.manual_seed(0)
    cache = synthetic_cache()
    head = IrmHead(TINY)  # untrained: its image vectors are the teacher's
    head.set_gallery_text(cache.text_states[cache.gallery_text])
    p, t = cache.val_patches[:, 0].float(), cache.val_teacher[:, 0]
    text, mask = pad_states([cache.text_states[cache.gallery_text]], TINY.text_dim)
    ids = torch.full((len(p),), TASKS.index("clothes_change"))
    with torch.no_grad():
        gal = head.gallery(p, t).vectors
        q = head.query(p, t, ids, text.expand(len(p), -1, -1), mask.expand(len(p), -1)).vectors
    opts = TrainOptions(out=tmp_path, config=TINY, text_steps=60, text_lr=3e-3, eval_every=30,
                        progress=False)  # fmt: skip
    report = train_text(head, cache, opts, torch.device("cpu"))
    first, last = report["history"][0], report["history"][-1]
    assert last["step"] == 60 and last["text_mAP"] > first["text_mAP"] + 0.1, report["history"]
    with torch.no_grad():
        assert torch.equal(gal, head.gallery(p, t).vectors)
        after = head.query(p, t, ids, text.expand(len(p), -1, -1), mask.expand(len(p), -1))
        assert torch.equal(q, after.vectors)


def test_pad_states_masks_padding():
    states, mask = pad_states([np.ones((2, 3)), np.ones((4, 3))], 3)
    assert states.shape == (2, 4, 3) and mask.sum().item() == 6 and not mask[0, 2:].any()


# ---- integration: config, store, trained weights on real crops ----


def test_config_selects_the_irm_embedder():
    from refind.config import load_config, parse_config
    from refind.models.config import IrmEmbedderConfig, OpenVinoReidConfig

    assert isinstance(parse_config({"embedder": {"type": "irm"}}).embedder, IrmEmbedderConfig)
    assert isinstance(parse_config({}).embedder, OpenVinoReidConfig)
    assert isinstance(parse_config({"embedder": {"batch_size": 8}}).embedder, OpenVinoReidConfig)
    assert load_config(Path(__file__).parents[2] / "configs" / "irm.yaml").embedder.type == "irm"


def test_store_serves_the_packaged_weights(tmp_path):
    from refind.models.store import ModelStore

    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} not present")
    store = ModelStore([], tmp_path / "cache", allow_download=False)
    resolved = store.resolve("irm-pets-v3")
    assert resolved.path == WEIGHTS and resolved.model_id.startswith("irm-pets-v3@")
    head, meta = load_head(resolved.path)
    assert head.cfg.out_dim == 512 and meta["backbone"] == "person-reidentification-retail-0277"


@pytest.fixture(scope="module")
def pets_embedder():
    if not (MODELS_DIR / "omz").is_dir() or not PETS_VIDEO.is_file() or not PETS_GT.is_file():
        pytest.skip("needs ../shared/models (OMZ 0277) and the PETS09-S2L1 clip")
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} not present")
    from refind.models.config import IrmEmbedderConfig, ModelStoreConfig
    from refind.models.store import ModelStore

    return IrmEmbedder.from_config(
        IrmEmbedderConfig(device="cpu"), ModelStore.from_config(ModelStoreConfig())
    )


@pytest.mark.slow  # trains a tiny model for ~15 s
def test_trained_ignore_clothes_separates_a_recoloured_person_better(tmp_path):
    """Training teaches the instruction its meaning: on a small synthetic set where recolouring
    changes some patch tokens, after training a recoloured crop queried with "ignore the
    clothes" stands further above the other people (same-identity minus other-identity cosine
    to the original crops) than the same crop as a plain ReID query, for most crops; untrained,
    the two queries are the same."""
    from refind.training.irm import train_head
    from refind.training.irm_cache import V

    torch.manual_seed(0)
    cache = synthetic_cache(n_ids=6, per_id=8)
    opts = TrainOptions(
        out=tmp_path, ids_per_batch=6, crops_per_id=4, config=TINY, max_steps=400, lr=3e-3,
        warmup_steps=10, eval_every=1000, progress=False,
    )  # fmt: skip

    def margins(head: IrmHead) -> dict[str, torch.Tensor]:
        p, t = cache.patches.float(), cache.teacher
        same = torch.from_numpy(cache.label[:, None] == cache.label[None, :])
        out = {}
        with torch.no_grad():
            gal = head.gallery(p[:, V["orig"]], t[:, V["orig"]]).vectors
            for task in ("reid", "clothes_change"):
                text, mask = pad_states([cache.instruction_states(task)], TINY.text_dim)
                n, ids = len(p), torch.full((len(p),), TASKS.index(task))
                q = head.query(p[:, V["recolour_a"]], t[:, V["recolour_a"]], ids,
                               text.expand(n, -1, -1), mask.expand(n, -1)).vectors  # fmt: skip
                sim = q @ gal.T
                out[task] = sim[same].view(n, -1).mean(1) - sim[~same].view(n, -1).mean(1)
        return out

    untrained = IrmHead(TINY)
    untrained.set_gallery_text(cache.text_states[cache.gallery_text])
    before = margins(untrained)
    assert torch.equal(before["reid"], before["clothes_change"])
    train_head(cache, opts, torch.device("cpu"))
    after = margins(load_head(tmp_path / "irm.safetensors")[0])
    gain = after["clothes_change"] - after["reid"]
    assert gain.mean() > 0.02 and (gain > 0).float().mean() >= 0.75, gain


def test_shipped_weights_keep_the_teacher_image_path():
    """irm-pets-v3's training chose 0 image and 0 instruction steps by cross-validation (every
    step lowered mAP on unseen people; see its model card): its image vectors are 0277's, so
    plain ReID ranks exactly as the teacher does. Its metadata says so."""
    head, meta = load_head(WEIGHTS)
    assert meta["cv_steps"] == "0" and meta["instruction_steps"] == "0"
    for layer in (head.id_out, head.clo_out, head.query_id_out, head.query_clo_out):
        assert not layer.weight.any()
    assert torch.equal(head.clo_teacher.weight, torch.eye(head.cfg.part_dim))
    assert int(meta["text_steps"]) > 0  # the text path is trained


@pytest.mark.slow
def test_teacher_shortcut_equals_the_head(pets_embedder):
    """irm-pets-v3's gallery path is computed without the head; the head gives the same."""
    from refind.datasets.irm import load_pets_crops, pets_identity_split

    crops = [c.image for c in load_pets_crops(pets_identity_split()[1], every_n_frames=40)][:24]
    assert pets_embedder.teacher_shortcut
    fast = pets_embedder(crops)
    pets_embedder.teacher_shortcut = False
    try:
        slow = pets_embedder(crops)
    finally:
        pets_embedder.teacher_shortcut = True
    assert fast.model_id == slow.model_id
    np.testing.assert_allclose(fast.vectors, slow.vectors, atol=2e-5)


def test_shipped_weights_carry_the_attribute_probe():
    """irm-pets-v3 = irm-pets-v2's head + the attribute probe its report describes."""
    import json

    from refind.models.irm import load_weights

    head, probe, meta = load_weights(WEIGHTS)
    report = json.loads(WEIGHTS.with_suffix(".probe.json").read_text())
    assert probe is not None and probe.dim == head.cfg.out_dim == 512
    assert probe.l2 == report["l2"] == json.loads(meta["attribute_probe"])["l2"]
    assert probe.photo_text_weight == report["photo_text_weight"] > 0
    assert np.isfinite(probe.weight).all() and probe.weight.any(axis=1).all()


@pytest.mark.slow
def test_shipped_probe_finds_red_tops_among_unseen_people(pets_embedder):
    """Held-out PETS people: 6 and 10 wear red tops, the others dark ones (the attribute model's
    reading, refind datasets irm-eval). A red-top text query ranks their crops first: its AP
    is over 0.4 and over 5x the share of red-top crops (about a random ranking's AP; measured
    0.56 against 0.044)."""
    from refind.datasets.irm import load_pets_crops, pets_identity_split

    crops = load_pets_crops(pets_identity_split()[1], every_n_frames=20)
    red = np.array([c.identity in ("pets:6", "pets:10") for c in crops])
    gallery = pets_embedder([c.image for c in crops]).vectors
    query = pets_embedder.embed_text(["a woman in a red top"]).vectors[0]
    order = np.argsort(-(gallery @ query), kind="stable")
    hits = red[order]
    ap = float((np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits].mean())
    assert 0.02 < red.mean() < 0.5 and ap > max(0.4, 5 * red.mean()), (ap, red.mean())


@pytest.mark.slow
def test_gallery_vectors_carry_the_store_model_id(pets_embedder):
    crop = np.full((64, 32, 3), 128, np.uint8)
    out = pets_embedder([crop, crop])
    assert out.model_id.startswith("irm-pets-v3@") and out.vectors.shape == (2, 512)
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
