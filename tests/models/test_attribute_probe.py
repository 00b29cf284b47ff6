"""The attribute probe (models/attribute_probe.py) and its place in the IRM weights and text path
(models/irm.py: save_head / load_weights; models/irm_embedder.py: IrmEmbedder.embed_text).

The probe is fitted on synthetic gallery vectors whose attributes and colours are known directions;
the IRM tests use the tiny head, fake backbone and fake text encoder of tests/models/conftest.py
(no data, CPU only).
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from safetensors import safe_open

from refind.models.attribute_probe import PROBE_NAMES, TENSOR_PREFIX, AttributeProbe
from refind.models.base import ATTRIBUTE_NAMES, ModelInputError, PersonAttributes
from refind.models.colours import COLOUR_NAMES
from refind.models.irm import load_head, load_weights, save_head
from refind.models.irm_embedder import IrmEmbedder
from refind.models.text_attributes import parse_attributes
from refind.training.probe_fit import fit_probe, grouped_folds
from tests.irm_builders import TINY, FakeBackbone, FakeText, tiny_head

D = 32
N_IDS, PER_ID = 20, 12
TOPS = ("red", "blue", "black", "white")  # the colours the synthetic crops wear
BOTTOMS = ("blue", "black", "grey", "red")
GRID = (1e-5, 1e-3)
QUERY = "a man in a red top and blue trousers"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic_gallery(seed: int = 0) -> tuple[np.ndarray, PersonAttributes, list[str]]:
    """(n, D) unit vectors = normalise(signed attribute directions + top colour direction +
    bottom colour direction + an identity direction + noise), the PersonAttributes they were
    built from (probabilities and colours drawn per crop) and the identity of each crop."""
    rng = np.random.default_rng(seed)
    n = N_IDS * PER_ID
    attr_dir = unit(rng.normal(size=(len(ATTRIBUTE_NAMES), D)))
    top_dir = {c: unit(rng.normal(size=D)) for c in COLOUR_NAMES}
    bottom_dir = {c: unit(rng.normal(size=D)) for c in COLOUR_NAMES}
    id_dir = unit(rng.normal(size=(N_IDS, D)))
    identity = np.repeat(np.arange(N_IDS), PER_ID)
    probs = rng.uniform(size=(n, len(ATTRIBUTE_NAMES))).astype(np.float32)
    top = [TOPS[k] for k in rng.integers(0, len(TOPS), n)]
    bottom = [BOTTOMS[k] for k in rng.integers(0, len(BOTTOMS), n)]
    x = (
        (2 * probs - 1) @ attr_dir
        + np.stack([top_dir[c] for c in top])
        + np.stack([bottom_dir[c] for c in bottom])
        + 0.5 * id_dir[identity]
        + 0.1 * rng.normal(size=(n, D))
    )
    attrs = PersonAttributes(
        probs=probs,
        top_bgr=np.zeros((n, 3), np.uint8),
        bottom_bgr=np.zeros((n, 3), np.uint8),
        top_colour=tuple(top),
        bottom_colour=tuple(bottom),
    )
    return unit(x).astype(np.float32), attrs, [f"person{k}" for k in identity]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """The fits and the tiny head are far too small to gain from threads (tests/conftest.py)."""


@pytest.fixture(scope="module")
def fitted():
    vectors, attrs, groups = synthetic_gallery()
    probe, report = fit_probe(vectors, attrs, groups, l2_grid=GRID, folds=3)
    return vectors, attrs, groups, probe, report


def random_probe(dim: int, seed: int = 0) -> AttributeProbe:
    rng = np.random.default_rng(seed)
    return AttributeProbe(
        rng.normal(size=(len(PROBE_NAMES), dim)).astype(np.float32),
        rng.normal(size=len(PROBE_NAMES)).astype(np.float32),
        3e-4,
    )


# ---- fitting ----


def test_fit_report_and_probe_shape(fitted):
    vectors, attrs, _, probe, report = fitted
    assert report["l2"] in GRID and probe.l2 == report["l2"]
    assert len(report["cv_log_loss"]) == len(GRID)
    # the chosen strength has the lowest held-out log-loss
    assert report["cv_log_loss"][f"{report['l2']:g}"] == min(report["cv_log_loss"].values())
    assert all(np.isfinite(v) and v > 0 for v in report["cv_log_loss"].values())
    assert report["n_crops"] == len(vectors) and report["n_identities"] == N_IDS
    assert report["folds"] == 3
    assert probe.weight.shape == (len(PROBE_NAMES), D) and probe.bias.shape == (len(PROBE_NAMES),)
    assert probe.weight.dtype == np.float32 and probe.dim == D
    assert report["positives"]["top:red"] == attrs.top_colour.count("red")
    assert report["positives"]["top:purple"] == 0


@pytest.mark.parametrize("name", [*(f"top:{c}" for c in TOPS), *(f"bottom:{c}" for c in BOTTOMS)])
def test_held_out_colour_accuracy_beats_the_majority(fitted, name):
    vectors, _, _, _, report = fitted
    rate = report["positives"][name] / len(vectors)
    majority = max(rate, 1 - rate)
    acc = report["cv_accuracy"][name]
    assert acc >= majority + 0.6 * (1 - majority), (name, acc, majority)


@pytest.mark.parametrize("name", ATTRIBUTE_NAMES)
def test_held_out_attribute_accuracy(fitted, name):
    assert fitted[4]["cv_accuracy"][name] >= 0.8


def test_fitted_logits_follow_the_targets(fitted):
    vectors, attrs, _, probe, _ = fitted
    z = probe.logits(vectors)
    assert z.shape == (len(vectors), len(PROBE_NAMES))
    k = len(ATTRIBUTE_NAMES)
    for j in range(k):  # the attribute log-odds rank crops as their probabilities do
        assert np.corrcoef(z[:, j], attrs.probs[:, j])[0, 1] > 0.9
    top = np.array([PROBE_NAMES.index(f"top:{c}") for c in attrs.top_colour])
    assert (z[:, k : k + len(COLOUR_NAMES)].argmax(1) + k == top).mean() > 0.95


def test_query_ranks_the_described_crops_first(fitted):
    vectors, attrs, _, probe, _ = fitted
    q = probe.query_vector(QUERY)
    scores = vectors @ q
    match = np.array(
        [
            t == "red" and b == "blue"
            for t, b in zip(attrs.top_colour, attrs.bottom_colour, strict=True)
        ]
    )
    assert 5 <= match.sum() < len(match) // 4
    assert scores[match].mean() > scores[~match].mean() + 0.3
    assert match[np.argsort(-scores)[:10]].sum() >= 8
    # the score is the sum of the named log-odds, shifted and scaled the same for every crop
    s = probe.signs(parse_attributes(QUERY))
    expected = (probe.logits(vectors) - probe.bias) @ s / np.linalg.norm(s @ probe.weight)
    np.testing.assert_allclose(scores, expected, atol=1e-4)


# ---- query vectors ----


@pytest.mark.parametrize(
    "text, named",
    [
        ("someone suspicious", False),
        ("", False),
        ("a person walking near the door", False),
        ("with a backpack", True),
        ("a woman in a green skirt", True),
        (QUERY, True),
    ],
)
def test_query_vector_is_none_or_unit(text, named):
    q = random_probe(D).query_vector(text)
    if not named:
        assert q is None
    else:
        assert q is not None and q.shape == (D,) and q.dtype == np.float32
        assert abs(float(np.linalg.norm(q)) - 1.0) < 1e-5


def test_query_vector_of_a_probe_that_reads_nothing_is_none():
    zero = AttributeProbe(np.zeros((len(PROBE_NAMES), D), np.float32),
                          np.zeros(len(PROBE_NAMES), np.float32), 1e-4)  # fmt: skip
    assert zero.query_vector("a red top with a backpack") is None


@pytest.mark.parametrize(
    "text, signs",
    [
        ("with a backpack", {"has_backpack": 1}),
        ("without a backpack", {"has_backpack": -1}),
        ("a red top", {"top:red": 1}),
        ("blue jeans", {"bottom:blue": 1}),
        (QUERY, {"is_male": 1, "top:red": 1, "bottom:blue": 1}),
        ("a woman without a bag in a black coat", {"is_male": -1, "has_bag": -1, "top:black": 1}),
        ("someone suspicious", {}),
    ],
)
def test_signs(text, signs):
    s = random_probe(D).signs(parse_attributes(text))
    assert s.shape == (len(PROBE_NAMES),)
    assert {PROBE_NAMES[k]: int(s[k]) for k in np.flatnonzero(s)} == signs


def test_query_vector_is_the_signed_sum_of_read_outs():
    probe = random_probe(D)
    w = dict(zip(PROBE_NAMES, probe.weight, strict=True))
    expected = unit(w["has_backpack"] - w["has_hat"] + w["bottom:grey"])
    np.testing.assert_allclose(
        probe.query_vector("with a backpack, no hat, grey trousers"), expected, atol=1e-6
    )


@pytest.mark.parametrize(
    "weight, text, edited",
    [(0.8, "now wearing a red top", True), (0.0, "now wearing a red top", False)],
    ids=["edited", "zero-weight"],
)  # fmt: skip
def test_compose(weight, text, edited):
    """(A text naming nothing never reaches compose: test_attribute_text_photo_queries_...)"""
    probe = replace(random_probe(D), photo_text_weight=weight)
    photo = unit(np.random.default_rng(1).normal(size=(5, D))).astype(np.float32)
    out = probe.compose(photo, probe.query_vector(text))
    if not edited:
        assert out is None
        return
    expected = unit(photo + weight * probe.query_vector(text))
    assert out.shape == (5, D) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    gain = out @ probe.query_vector(text) - photo @ probe.query_vector(text)
    assert (gain > 0).all()  # every query moved toward the text


# ---- folds and input checks ----


@pytest.mark.parametrize("k", [2, 3, 5])
def test_grouped_folds_keep_each_identity_in_one_fold(k):
    rng = np.random.default_rng(k)
    groups = [f"id{g}" for g in rng.integers(0, 7, 60)]
    folds = grouped_folds(groups, k)
    assert len(folds) == k
    stacked = np.stack(folds)  # (k, n)
    assert stacked.shape == (k, len(groups)) and stacked.dtype == bool
    assert (stacked.sum(0) == 1).all()  # every row held out exactly once
    for g in set(groups):
        rows = np.array([x == g for x in groups])
        assert sum(bool(f[rows].any()) for f in folds) == 1
        assert any(f[rows].all() for f in folds)
    per_fold = [len({g for g, held in zip(groups, f, strict=True) if held}) for f in folds]
    assert max(per_fold) - min(per_fold) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(folds, grouped_folds(groups, k), strict=True))


@pytest.mark.parametrize("k", [1, 0])
def test_grouped_folds_refuse_fewer_than_two_folds(k):
    with pytest.raises(ValueError, match="at least 2 folds"):
        grouped_folds([f"id{g}" for g in range(20)], k)


def test_read_outs_never_seen_in_training_give_no_query(fitted):
    """The synthetic crops never wear a purple top: its read-out is a zero row, so a text naming
    only it has no vector, and a text naming it with a known colour uses the known one alone."""
    _, _, _, probe, _ = fitted
    purple = PROBE_NAMES.index("top:purple")
    assert not probe.weight[purple].any() and probe.weight[PROBE_NAMES.index("top:red")].any()
    assert probe.query_vector("a purple top") is None
    np.testing.assert_allclose(
        probe.query_vector("a purple top and blue trousers"),
        probe.query_vector("blue trousers"),
        atol=1e-6,
    )


@pytest.mark.parametrize("n_groups, k", [(2, 3), (4, 5), (1, 2)])
def test_grouped_folds_refuse_fewer_groups_than_folds(n_groups, k):
    with pytest.raises(ValueError, match="cannot be split"):
        grouped_folds([f"id{g % n_groups}" for g in range(20)], k)


@pytest.mark.parametrize(
    "cut", ["vectors", "attributes", "groups", "flat"], ids=lambda c: f"short-{c}"
)
def test_fit_probe_refuses_mismatched_rows(cut):
    vectors, attrs, groups = synthetic_gallery()
    if cut == "vectors":
        vectors = vectors[:-1]
    elif cut == "attributes":
        attrs = PersonAttributes(attrs.probs[:-1], attrs.top_bgr[:-1], attrs.bottom_bgr[:-1],
                                 attrs.top_colour[:-1], attrs.bottom_colour[:-1])  # fmt: skip
    elif cut == "groups":
        groups = groups[:-1]
    else:
        vectors = vectors[:, 0]
    with pytest.raises(ValueError, match="one row per crop"):
        fit_probe(vectors, attrs, groups, l2_grid=GRID, folds=3)


K = len(PROBE_NAMES)


@pytest.mark.parametrize(
    "weight, bias",
    [((K - 1, D), (K,)), ((K + 1, D), (K,)), ((K, D), (K - 1,)), ((K * D,), (K,)),
     ((K, D), (K, 1))],
    ids=["few-rows", "many-rows", "short-bias", "flat-weight", "column-bias"],
)  # fmt: skip
def test_probe_refuses_a_weight_that_does_not_fit_the_names(weight, bias):
    with pytest.raises(ValueError, match="do not fit"):
        AttributeProbe(np.zeros(weight, np.float32), np.zeros(bias, np.float32), 1e-4)


# ---- tensors ----


def assert_same_probe(a: AttributeProbe | None, b: AttributeProbe) -> None:
    assert a is not None
    for f in fields(AttributeProbe):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(y, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def test_tensors_round_trip():
    probe = replace(random_probe(D, seed=3), photo_text_weight=0.7)
    tensors = probe.to_arrays()
    assert {f"{TENSOR_PREFIX}{k}" for k in ("weight", "bias", "l2")} <= set(tensors)
    assert all(k.startswith(TENSOR_PREFIX) for k in tensors)
    assert_same_probe(AttributeProbe.from_arrays(tensors), probe)


def test_tensors_without_a_photo_text_weight_read_as_zero():
    """Probes stored before ``compose`` existed leave photo queries alone."""
    tensors = replace(random_probe(D), photo_text_weight=0.7).to_arrays()
    del tensors[f"{TENSOR_PREFIX}photo_text_weight"]
    back = AttributeProbe.from_arrays(tensors)
    assert back is not None and back.photo_text_weight == 0.0


@pytest.mark.parametrize(
    "tensors",
    [{}, {"weight": np.zeros((K, D)), "bias": np.zeros(K)}, "head"],
    ids=["empty", "unprefixed", "head-state"],
)
def test_from_tensors_without_a_probe_is_none(tensors):
    if tensors == "head":
        tensors = {k: v.numpy() for k, v in tiny_head().state_dict().items()}
    assert AttributeProbe.from_arrays(tensors) is None


# ---- IRM weights ----


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_weights_carry_the_probe(tmp_path):
    head, probe = tiny_head(), replace(random_probe(TINY.out_dim), photo_text_weight=0.5)
    path = tmp_path / "irm.safetensors"
    save_head(head, path, {"backbone": "x"}, probe=probe)
    loaded, back, meta = load_weights(path)
    assert meta["backbone"] == "x" and loaded.cfg == TINY and not loaded.training
    assert_same_state(loaded, head)
    assert_same_probe(back, probe)
    old, old_meta = load_head(path)  # the head alone, as before probes
    assert_same_state(old, head) and old_meta == meta


def test_weights_without_a_probe(tmp_path):
    head = tiny_head()
    save_head(head, tmp_path / "irm.safetensors")
    loaded, probe, _ = load_weights(tmp_path / "irm.safetensors")
    assert probe is None
    assert_same_state(loaded, head)


def rewrite_weights(path, edit) -> None:
    """Write ``path`` again after ``edit(tensors, metadata)`` changed it in place, as another
    tool might have written it."""
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    edit(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def test_a_probe_of_another_space_is_refused(tmp_path):
    """Neither written with a head of another width, nor read from a file that has one, nor
    given to an embedder whose head gives other vectors."""
    path = tmp_path / "irm.safetensors"
    with pytest.raises(ValueError, match="attribute probe reads"):
        save_head(tiny_head(), path, probe=random_probe(TINY.out_dim + 1))
    save_head(tiny_head(), path, probe=random_probe(TINY.out_dim))
    wider = {k: torch.from_numpy(v) for k, v in random_probe(TINY.out_dim + 1).to_arrays().items()}
    rewrite_weights(path, lambda tensors, meta: tensors.update(wider))
    with pytest.raises(ModelInputError, match="attribute probe"):
        load_weights(path)
    with pytest.raises(ModelInputError, match="attribute probe reads"):
        embedder(random_probe(TINY.out_dim + 1))


@pytest.mark.parametrize("damage", ["other-read-outs", "no-bias"])
def test_an_unreadable_probe_is_a_clear_error(tmp_path, damage):
    def edit(tensors, meta):
        if damage == "other-read-outs":  # a probe of another version's attribute or colours
            meta["attribute_probe_names"] = '["top:red", "is_male"]'
        else:
            del tensors[f"{TENSOR_PREFIX}bias"]

    path = tmp_path / "irm.safetensors"
    save_head(tiny_head(), path, probe=random_probe(TINY.out_dim))
    rewrite_weights(path, edit)
    with pytest.raises(ModelInputError, match="unreadable attribute probe"):
        load_weights(path)


# ---- the text path ----


class RecordingText(FakeText):
    """test_irm's fake MiniLM, recording which texts it was asked to encode."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts):
        self.seen += list(texts)
        return super().__call__(texts)


def embedder(probe: AttributeProbe | None) -> IrmEmbedder:
    return IrmEmbedder(
        tiny_head(), FakeBackbone(), "irm-tiny", "cpu", batch_size=2, text=RecordingText(),
        compile_cpu=False, probe=probe,
    )  # fmt: skip


MIXED = [
    "a man in a red top",  # probe
    "someone suspicious",  # learned
    "with a backpack",  # probe
    "walking slowly near the door",  # learned
    "blue jeans",  # probe
    "the person from earlier",  # learned
    "without a hat",  # probe
]
READ_BY_PROBE = [True, False, True, False, True, False, True]  # as the comments above say


def test_embed_text_routes_named_attributes_through_the_probe():
    probe = random_probe(TINY.out_dim)
    with_probe, plain = embedder(probe), embedder(None)
    got = with_probe.embed_text(MIXED)
    learned = plain.embed_text(MIXED).vectors  # no probe: every text is learned
    assert got.vectors.shape == (len(MIXED), TINY.out_dim) and got.vectors.dtype == np.float32
    assert got.model_id == "irm-tiny"
    np.testing.assert_allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
    assert [probe.query_vector(t) is not None for t in MIXED] == READ_BY_PROBE
    for k, text in enumerate(MIXED):
        q = probe.query_vector(text)
        if q is None:
            np.testing.assert_allclose(got.vectors[k], learned[k], atol=1e-5, err_msg=text)
        else:
            np.testing.assert_array_equal(got.vectors[k], q, err_msg=text)
            assert not np.allclose(got.vectors[k], learned[k], atol=1e-3), text
    # only the texts the probe cannot read reach the text encoder, in order
    learned_texts = [t for t, read in zip(MIXED, READ_BY_PROBE, strict=True) if not read]
    assert with_probe.text.seen == learned_texts
    assert plain.text.seen == MIXED


def test_embed_text_order_and_batching_do_not_matter():
    emb = embedder(random_probe(TINY.out_dim))
    whole = emb.embed_text(MIXED).vectors
    single = np.concatenate([emb.embed_text([t]).vectors for t in MIXED])
    np.testing.assert_allclose(whole, single, atol=1e-5)
    order = np.random.default_rng(0).permutation(len(MIXED))
    shuffled = emb.embed_text([MIXED[k] for k in order]).vectors
    np.testing.assert_allclose(shuffled, whole[order], atol=1e-5)


def test_probe_only_texts_need_no_text_encoder():
    emb = embedder(random_probe(TINY.out_dim))
    out = emb.embed_text(["a red top", "a woman with a bag"])
    assert out.vectors.shape == (2, TINY.out_dim) and emb.text.seen == []
    assert emb.embed_text([]).vectors.shape == (0, TINY.out_dim)


def test_text_task_queries_use_the_probe():
    probe = random_probe(TINY.out_dim)
    emb = embedder(probe)
    q = emb.embed_query([], "text", "a man with a backpack").vectors
    np.testing.assert_array_equal(q[0], probe.query_vector("a man with a backpack"))


def test_probe_fitted_on_gallery_vectors_finds_the_described_crops():
    """End to end on the tiny embedder: a probe fitted on its gallery vectors of crops whose
    top half is red or blue turns "red top" into a query that ranks the red-topped crops first."""
    emb = embedder(None)
    rng = np.random.default_rng(0)
    n = 96
    red = rng.random(n) < 0.5
    images = []
    for k in range(n):
        img = rng.integers(0, 60, (48, 24, 3), dtype=np.uint8)
        img[:24, :, 2 if red[k] else 0] = rng.integers(170, 256)  # BGR: red or blue top
        images.append(img)
    vectors = emb(images).vectors
    tops = tuple("red" if r else "blue" for r in red)
    attrs = PersonAttributes(
        np.full((n, len(ATTRIBUTE_NAMES)), 0.5, np.float32), np.zeros((n, 3), np.uint8),
        np.zeros((n, 3), np.uint8), tops, ("black",) * n,
    )  # fmt: skip
    probe, report = fit_probe(vectors, attrs, [f"p{k // 4}" for k in range(n)], GRID, folds=3)
    assert report["cv_accuracy"]["top:red"] > 0.9
    emb.probe = probe
    scores = vectors @ emb.embed_text(["a red top"]).vectors[0]
    assert scores[red].min() > scores[~red].max()


@pytest.mark.parametrize(
    "weight, instruction, edited",
    [(0.6, "now wearing a red top", True), (0.0, "now wearing a red top", False),
     (0.6, "now wearing other clothes", False)],
    ids=["edited", "zero-weight", "names-nothing"],
)  # fmt: skip
def test_attribute_text_photo_queries_compose_with_the_probe(weight, instruction, edited):
    from tests.irm_builders import crops

    probe = replace(random_probe(TINY.out_dim), photo_text_weight=weight)
    x = crops(5)
    got = embedder(probe).embed_query(x, "attribute_text", instruction).vectors
    plain = embedder(None).embed_query(x, "attribute_text", instruction).vectors
    if edited:
        expected = probe.compose(plain, probe.query_vector(instruction))
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert not np.allclose(got, plain, atol=1e-3)
    else:
        np.testing.assert_allclose(got, plain, atol=1e-6)
    for task in ("reid", "clothes_change"):  # other tasks never compose
        np.testing.assert_allclose(
            embedder(probe).embed_query(x, task, instruction).vectors,
            embedder(None).embed_query(x, task, instruction).vectors, atol=1e-6,
        )  # fmt: skip


def test_teacher_probe_reads_the_teacher_space_as_the_irm_probe_reads_its_own(tmp_path):
    """For a teacher-only head, g = [t, t] / sqrt 2: the derived probe's logits on t equal the
    probe's on g, and its query vector ranks t as the IRM query ranks g."""
    from refind.models.attribute_probe import teacher_probe
    from tests.irm_builders import teacher_head

    head = teacher_head()
    probe = random_probe(TINY.out_dim)
    save_head(head, tmp_path / "irm.safetensors", {"backbone": "teacher-x"}, probe=probe)
    derived, teacher = teacher_probe(tmp_path / "irm.safetensors")
    assert teacher == "teacher-x" and derived.dim == TINY.teacher_dim
    t = unit(np.random.default_rng(2).normal(size=(6, TINY.teacher_dim))).astype(np.float32)
    g = np.concatenate([t, t], axis=1) / np.sqrt(2.0)
    np.testing.assert_allclose(derived.logits(t), probe.logits(g), atol=1e-5)
    np.testing.assert_allclose(
        np.argsort(-(t @ derived.query_vector(QUERY))), np.argsort(-(g @ probe.query_vector(QUERY)))
    )


def test_teacher_probe_refuses_a_trained_image_path_or_no_probe(tmp_path):
    from refind.models.attribute_probe import teacher_probe

    save_head(tiny_head(), tmp_path / "trained.safetensors", probe=random_probe(TINY.out_dim))
    with pytest.raises(ModelInputError, match="trained image path"):
        teacher_probe(tmp_path / "trained.safetensors")
    save_head(tiny_head(), tmp_path / "bare.safetensors")
    with pytest.raises(ModelInputError, match="no attribute probe"):
        teacher_probe(tmp_path / "bare.safetensors")
