"""Choosing the weight of attribute text on photo queries (training/probe.py) on synthetic
people whose identity and clothes are separate pixels, and the ``refind train probe`` guard.

Each synthetic crop is 8 x 4 pixels: the left half is the clothes (top rows the top colour,
bottom rows the bottom colour), the right half the person's own two colours, which a recolouring
leaves alone. test_irm's fake backbone reads the 2 x 2 cell colours, so a recoloured photo query
keeps the identity half and loses the clothes half: text naming the real clothes can only help.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from refind.app.cli import main
from refind.models.attribute_probe import PROBE_NAMES
from refind.models.base import PersonAttributes
from refind.models.irm import load_weights, save_head
from refind.models.irm_embedder import IrmEmbedder
from refind.training import probe as tp
from refind.training.probe import VIEWS, WEIGHT_GRID, choose_photo_text_weight
from tests.irm_builders import FakeBackbone, FakeText, teacher_head

BGR = {"red": (0, 0, 220), "blue": (220, 0, 0), "green": (0, 200, 0), "yellow": (0, 220, 220),
       "white": (235, 235, 235), "black": (15, 15, 15)}  # fmt: skip
NAMES = tuple(BGR)


def person(top: str, bottom: str, own: tuple[np.ndarray, np.ndarray], rng) -> np.ndarray:
    img = np.zeros((8, 4, 3), np.float32)
    img[:4, :2], img[4:, :2] = BGR[top], BGR[bottom]
    img[:4, 2:], img[4:, 2:] = own
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def synthetic_people(recolour: bool, n_ids: int = 8, per_id: int = 6, seed: int = 0):
    """(images, groups, tops, bottoms): ``VIEWS`` per crop, in order; with ``recolour`` False
    the "recoloured" views keep the clothes."""
    rng = np.random.default_rng(seed)
    images, groups, tops, bottoms = [], [], [], []
    for k in range(n_ids):
        own = (rng.uniform(40, 215, 3), rng.uniform(40, 215, 3))
        top, bottom = NAMES[k % len(NAMES)], NAMES[(k * 5 + 1) % len(NAMES)]
        for _ in range(per_id):
            for view in range(len(VIEWS)):
                t, b = top, bottom
                if view and recolour:
                    t, b = (NAMES[int(i)] for i in rng.integers(0, len(NAMES), 2))
                images.append(person(t, b, own, rng))
                groups.append(f"pets:{k}")
                tops.append(t)
                bottoms.append(b)
    return images, groups, tops, bottoms


def teacher_embedder() -> IrmEmbedder:
    return IrmEmbedder(teacher_head(), FakeBackbone(), "irm-tiny", "cpu", batch_size=8,
                       text=FakeText(), compile_cpu=False)  # fmt: skip


@pytest.mark.parametrize(("recolour", "helps"), [(True, True), (False, False)])
def test_text_weight_is_chosen_where_text_helps(recolour: bool, helps: bool, one_thread) -> None:
    images, groups, tops, bottoms = synthetic_people(recolour)
    attrs = synthetic_attributes(tops, bottoms)
    embedder = teacher_embedder()
    vectors = embedder(images).vectors
    weight, table = choose_photo_text_weight(embedder, images, groups, vectors, attrs, l2=1e-3)
    assert [row["weight"] for row in table] == list(WEIGHT_GRID)
    assert table[0]["mean_gain"] == 0.0 and all(len(row["mAPs"]) == 2 for row in table)
    best = max(table, key=lambda row: (row["mean_gain"], -row["weight"]))  # ties: the smaller
    assert weight == (best["weight"] if best["mean_gain"] > 0 else 0.0), table
    if helps:  # recoloured queries lose their clothes: the text puts them back
        assert weight > 0 and best["mean_gain"] > 0.05, table
    else:  # queries already wear the gallery's clothes: no weight may beat 0 by chance
        assert weight == 0.0 or best["mean_gain"] < 0.01, table


def synthetic_attributes(tops: list[str], bottoms: list[str]) -> PersonAttributes:
    n = len(tops)
    return PersonAttributes(np.full((n, 8), 0.5, np.float32), np.zeros((n, 3), np.uint8),
                            np.zeros((n, 3), np.uint8), tuple(tops), tuple(bottoms))  # fmt: skip


def fitted_teacher(weight: float):
    """(images, groups, tops, bottoms, embedder): the recoloured synthetic people and a
    teacher-only embedder carrying a probe fitted on them, with ``photo_text_weight``."""
    images, groups, tops, bottoms = synthetic_people(recolour=True)
    embedder = teacher_embedder()
    probe = tp.fit_at(embedder(images).vectors, synthetic_attributes(tops, bottoms), 1e-3)
    embedder.probe = dataclasses.replace(probe, photo_text_weight=weight)
    return images, groups, tops, bottoms, embedder


def test_train_probe_writes_the_model_again_with_its_probe(tmp_path, monkeypatch, one_thread):
    """The command's whole path on the synthetic people (crops and attribute readings stand in
    for PETS and the 0230 model): the new file holds the source's head tensors unchanged plus a
    probe whose weight the CV chose, and its report says so."""
    images, groups, tops, bottoms, embedder = fitted_teacher(weight=5.0)  # a stale probe
    source = tmp_path / "irm-src.safetensors"
    save_head(embedder.head, source, {"note": "kept"})
    probes_seen = []  # the probe each CV photo query met: the stale one must not edit them
    embed_query = embedder.embed_query
    monkeypatch.setattr(embedder, "embed_query", lambda *a, **k: (
        probes_seen.append(embedder.probe), embed_query(*a, **k))[1])  # fmt: skip
    monkeypatch.setattr(tp.IrmEmbedder, "from_pretrained", lambda *a, **k: embedder)
    monkeypatch.setattr(tp, "probe_crops", lambda store, seed, progress: (images, groups))
    monkeypatch.setattr(tp, "_describe", lambda imgs, emb, store, progress: (
        emb(imgs).vectors, synthetic_attributes(tops, bottoms)))  # fmt: skip

    out = tmp_path / "irm-new.safetensors"
    report = tp.train_probe(source, out, store=None, folds=3, progress=False)  # type: ignore[arg-type]
    head, probe, meta = load_weights(out)
    for name, tensor in embedder.head.state_dict().items():
        assert torch.equal(head.state_dict()[name], tensor), name
    assert probes_seen and all(p is None for p in probes_seen)
    assert probe is not None and probe.names == PROBE_NAMES and probe.l2 == report["l2"]
    assert probe.photo_text_weight == report["photo_text_weight"] > 0
    assert probe.photo_text_weight in WEIGHT_GRID
    assert meta["note"] == "kept" and json.loads(meta["attribute_probe"])["l2"] == probe.l2
    written = json.loads(out.with_suffix(".probe.json").read_text())
    assert written["weights"] == out.name and written["from"] == source.name
    assert written["n_crops"] == len(images) and written["folds"] == 3
    assert [row["weight"] for row in written["photo_text_cv_table"]] == list(WEIGHT_GRID)


def test_train_probe_refuses_to_overwrite_its_input(tmp_path, capsys) -> None:
    weights = tmp_path / "irm.safetensors"
    weights.write_bytes(b"not read")
    assert main(["train", "probe", "--weights", str(weights), "--out", str(weights)]) != 0
    assert "would overwrite" in capsys.readouterr().err
    assert weights.read_bytes() == b"not read"


@pytest.mark.parametrize(
    ("task", "instruction", "warns"),
    [("attribute_text", "now wearing a red top", False),  # edited through the probe
     ("attribute_text", "now wearing other clothes", True),  # names nothing it reads
     ("clothes_change", "ignore the clothes", True),
     ("reid", None, False)],
)  # fmt: skip
def test_a_teacher_only_model_warns_when_an_instruction_is_ignored(
    task, instruction, warns, caplog, one_thread
) -> None:
    images, *_, embedder = fitted_teacher(weight=0.75)
    with caplog.at_level("WARNING", logger="refind.models.irm_embedder"):
        embedder.embed_query(images[:2], task, instruction)
    assert ("does not change photo queries" in caplog.text) == warns, caplog.text
