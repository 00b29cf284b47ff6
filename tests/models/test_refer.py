"""The referring re-ranker: shapes, determinism, rejection, a training smoke test, and the shipped
weights against "no re-ranking" on real PETS DEV frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from refind.models.base import PersonAttributes, Region
from refind.models.refer import (
    REGION_DIM,
    TEXT_DIM,
    ReferConfig,
    ReferNet,
    ReferReranker,
    decide,
    geometry_features,
    load_weights,
    save_weights,
)
from refind.training.refer import step_loss

TINY = ReferConfig(d_model=32, layers=1, heads=2, dropout=0.0)
ROOT = Path(__file__).resolve().parents[2]
PETS = ROOT / "../shared/data/pets09-s2l1"
WEIGHTS = ROOT / "models/weights/refer-pets-v1.safetensors"


def _inputs(b: int = 3, length: int = 5, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, length, TEXT_DIM, generator=g)
    regions = torch.randn(b, n, REGION_DIM, generator=g)
    t_mask = torch.ones(b, length, dtype=torch.bool)
    r_mask = torch.ones(b, n, dtype=torch.bool)
    r_mask[0, -1] = False  # a padded region
    return text, t_mask, regions, r_mask


def test_shapes_masking_and_determinism() -> None:
    torch.manual_seed(0)
    net = ReferNet(TINY).eval()
    inputs = _inputs()
    logits, none = net(*inputs)
    assert logits.shape == (3, 4) and none.shape == (3,)
    assert logits[0, -1] < -1e3  # padded regions can never be selected
    again, none2 = net(*inputs)
    assert torch.equal(logits, again) and torch.equal(none, none2)


def test_regions_are_a_set_not_a_sequence() -> None:
    torch.manual_seed(0)
    net = ReferNet(TINY).eval()
    text, t_mask, regions, r_mask = _inputs()
    r_mask[:] = True
    perm = torch.tensor([2, 0, 3, 1])
    a, _ = net(text, t_mask, regions, r_mask)
    b, _ = net(text, t_mask, regions[:, perm], r_mask)
    assert torch.allclose(a[:, perm], b, atol=1e-5)


@pytest.mark.parametrize(
    ("scores", "none", "expected"),
    [
        ([0.9, 0.2, 0.7], 0.1, [True, False, True]),  # multi-select
        ([0.9, 0.2, 0.7], 0.8, [False, False, False]),  # NONE wins: reject
        ([0.3, 0.2], 0.1, [False, False]),  # nobody over the threshold
    ],
)
def test_decide(scores, none, expected) -> None:
    cfg = ReferConfig(region_threshold=0.5, none_threshold=0.5)
    assert decide(np.array(scores), none, cfg).tolist() == expected


def test_geometry_ranks_within_groups() -> None:
    boxes = np.array([[300, 0, 320, 50], [10, 0, 30, 100], [100, 0, 120, 20], [0, 0, 10, 10]])
    g = geometry_features(boxes, [(400, 200)] * 4, [0, 0, 0, 1])
    assert g[:3, 8].tolist() == [1.0, 0.0, 0.5]  # rank from the left among group 0
    assert g[:3, 10].tolist() == pytest.approx([0.5, 1.0, 0.2])  # height / tallest
    assert g[3, 8] == 0.5 and g[3, 11] == pytest.approx(0.1)  # alone in its group


class _Attrs:
    model_id = "stub"

    def __call__(self, crops):
        n = len(crops)
        grey = np.full((n, 3), 120, np.uint8)
        return PersonAttributes(np.full((n, 8), 0.5, np.float32), grey, grey, ("grey",) * n,
                                ("grey",) * n)


class _Text:
    def padded(self, texts):
        return torch.zeros(len(texts), 4, TEXT_DIM), torch.ones(len(texts), 4, dtype=torch.bool)


def _regions(n: int) -> list[Region]:
    crop = np.zeros((40, 20, 3), np.uint8)
    return [Region(crop, (30.0 * i, 10.0, 30.0 * i + 20, 90.0), (320, 240), 0) for i in range(n)]


def test_reranker_reject_path() -> None:
    torch.manual_seed(0)
    net = ReferNet(TINY)
    with torch.no_grad():
        net.none_head.bias.fill_(10.0)  # the NONE token is certain: nobody matches
    rr = ReferReranker(net, TINY, _Attrs(), _Text())  # type: ignore[arg-type]
    result = rr("the child on a bicycle", _regions(3))
    assert not result.selected.any() and result.scores.shape == (3,)
    assert "nobody matches" in result.reasons[0]
    assert rr("anyone", []).selected.shape == (0,)


def test_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    net = ReferNet(TINY)
    text, t_mask, regions, r_mask = _inputs(b=8, n=4, seed=1)
    labels = torch.zeros(8, 4)
    labels[torch.arange(8), torch.arange(8) % 4] = 1.0
    labels[::4] = 0.0  # every fourth expression: nobody
    none = (labels.sum(1) == 0).float()
    batch = (text, t_mask, regions, r_mask, labels, none)
    optim = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = step_loss(net, batch)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0]


def test_weights_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    net = ReferNet(TINY).eval()
    save_weights(net, TINY, tmp_path / "w.safetensors")
    loaded, cfg = load_weights(tmp_path / "w.safetensors")
    assert cfg == TINY
    inputs = _inputs()
    assert torch.equal(net(*inputs)[0], loaded(*inputs)[0])
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a refer re-ranker weights file"):
        load_weights(tmp_path / "other.safetensors")


@pytest.mark.slow
def test_shipped_weights_beat_no_reranking_on_pets_dev() -> None:
    """Position and no-target expressions (exact from the boxes alone) on 12 DEV frames."""
    if not (PETS / "vtest.avi").is_file():
        pytest.skip(f"PETS09-S2L1 not found at {PETS} (../shared/data is a local fixture)")
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} missing: run `refind train refer`")
    from refind.datasets.pets_reid import video_size
    from refind.datasets.refer import (
        DEV_FRAMES,
        NOBODY,
        decode_frames,
        load_scenes,
        position_expressions,
    )
    from refind.evaluation.refer import KeepAll, summarise
    from refind.models.attributes import OpenVinoAttributes
    from refind.models.config import ModelStoreConfig
    from refind.models.store import ModelStore

    scenes = load_scenes(PETS / "gt.txt", DEV_FRAMES, video_size(PETS / "vtest.avi"))[::33][:12]
    images = decode_frames(PETS / "vtest.avi", {s.frame for s in scenes})
    store = ModelStore.from_config(ModelStoreConfig())
    refer = ReferReranker.from_store(store, attributes=OpenVinoAttributes(store, threads=1))
    rng = np.random.default_rng(0)
    pairs: dict[str, list] = {"none": [], "refer": []}
    for s in scenes:
        h, w = images[s.frame].shape[:2]
        regions = [Region(images[s.frame][int(b[1]):int(b[3]) + 1, int(b[0]):int(b[2]) + 1],
                          tuple(b), (w, h), 0) for b in s.xyxy]
        exprs = [(e.text, e.targets) for e in position_expressions(s, rng)[:3]]
        exprs.append((NOBODY[s.frame % len(NOBODY)], ()))
        for text, targets in exprs:
            for name, rr in (("none", KeepAll()), ("refer", refer)):
                chosen = rr(text, regions).selected
                pairs[name].append((s.xyxy[list(targets)], s.xyxy[chosen]))
    none, ours = summarise(pairs["none"]), summarise(pairs["refer"])
    assert ours["density_f1"] > none["density_f1"] + 0.2
    assert ours["rejection_rate"] >= 0.5 > none["rejection_rate"]


def test_store_resolves_the_bundled_weights(tmp_path) -> None:
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} missing: run `refind train refer`")
    from refind.models.store import ModelStore

    resolved = ModelStore([], tmp_path, allow_download=False).resolve("refer-pets-v1")
    assert resolved.path == WEIGHTS and resolved.model_id.startswith("refer-pets-v1@")
    _net, cfg = load_weights(resolved.path)
    assert 0 < cfg.region_threshold < 1 and 0 < cfg.none_threshold < 1
