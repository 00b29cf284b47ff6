"""IRM evaluation: chance levels, mAP_tau, query files, a tiny PETS set with the 0277 baseline,
and the ``refind eval reid/text/irm`` command lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refind.app.cli import main
from refind.datasets.pets_reid import PetsReidOptions
from refind.evaluation.irm import (
    Gallery,
    attribute_scan_metrics,
    chance_metrics,
    chance_p_values,
    evaluate_irm,
    paired_difference,
    read_jsonl,
    tau_metrics,
)
from refind.evaluation.reid import reid_metrics
from refind.models.base import TASKS, InstructableEmbedder, PersonAttributes
from refind.streaming.records import Embeddings
from tests.conftest import PETS_GT, PETS_VIDEO, need_models, need_pets


@pytest.mark.parametrize(("n_true", "n_gallery"), [(1, 10), (3, 20), (7, 40), (40, 40)])
def test_chance_matches_random_rankings(n_true: int, n_gallery: int) -> None:
    rng = np.random.default_rng(0)
    ids = ["+"] * n_true + ["-"] * (n_gallery - n_true)
    names = [f"g{j}" for j in range(n_gallery)]
    runs = [
        reid_metrics(np.ones((1, 1)), ["+"], ["q"], np.ones((n_gallery, 1)),
                     list(rng.permutation(ids)), names)  # ties keep order: a random ranking
        for _ in range(1000)
    ]  # fmt: skip
    expected = chance_metrics([n_true], n_gallery)
    for key in ("mAP", "rank1", "rank5", "rank10"):
        simulated = float(np.mean([r[key] for r in runs]))
        assert expected[f"chance_{key}"] == pytest.approx(simulated, abs=0.03), key


@pytest.mark.parametrize(
    ("n_true", "n_gallery", "rate", "p"),
    [
        ([1], 10, 1.0, 0.5),  # rank-5 chance of 1 match in 10 is 0.5
        ([1], 10, 0.0, 1.0),  # nothing observed: chance always does at least as well
        ([1, 1], 10, 1.0, 0.25),  # two independent 0.5 queries both hit
        ([1, 1], 10, 0.5, 0.75),  # at least one of them hits
        ([10, 1], 10, 1.0, 0.5),  # a query with every entry true always hits
        ([1, 1], 4, 1.0, 1.0),  # k > gallery size: every query hits by chance
        ([0, 0], 10, 0.0, 1.0),  # no query has a true match: nothing to test
    ],
)
def test_chance_p_value_of_rank5(n_true, n_gallery, rate, p) -> None:
    assert chance_p_values(n_true, n_gallery, {5: rate})["chance_p_rank5"] == pytest.approx(p)


def test_chance_p_value_refuses_a_rate_outside_0_1() -> None:
    with pytest.raises(ValueError, match="not in"):
        chance_p_values([1], 10, {5: 1.5})


def test_chance_p_value_matches_random_rankings() -> None:
    """The Poisson-binomial p-value against the share of 4000 random rankings of 12 queries
    that reach the observed rank-5 rate."""
    rng = np.random.default_rng(1)
    n_true, n_gallery, observed = [1, 2, 3, 1, 2, 4, 1, 1, 2, 3, 1, 2], 30, 8 / 12
    ids = [["+"] * r + ["-"] * (n_gallery - r) for r in n_true]
    reached = 0
    for _ in range(4000):
        hits = sum("+" in list(rng.permutation(g))[:5] for g in ids)
        reached += hits >= round(observed * len(n_true))
    expected = chance_p_values(n_true, n_gallery, {5: observed})["chance_p_rank5"]
    assert expected == pytest.approx(reached / 4000, abs=0.015)
    assert 0.0 < expected < 0.2


def _gallery_with_attributes() -> Gallery:
    vecs = np.eye(4, dtype=np.float32)
    attrs = PersonAttributes(
        np.full((4, 8), 0.5, np.float32), np.zeros((4, 3), np.uint8), np.zeros((4, 3), np.uint8),
        ("red", "blue", "red", "green"), ("black",) * 4,
    )  # fmt: skip
    return Gallery(vecs, ["a", "a", "a", "b"], ["1", "2", "3", "4"], attrs)


def test_attribute_scan_ranks_by_what_the_attribute_model_sees() -> None:
    """Gallery tops red, blue, red, green (ids a, a, a, b): "green" finds b's only crop first,
    "blue" a's blue crop; "red" ties two red crops of a (either order is right); a text naming
    nothing ties every crop, so it scores as a random ranking would."""
    gallery = _gallery_with_attributes()
    named = attribute_scan_metrics(["a green top", "a blue top", "a red top"], ["b", "a", "a"],
                                   gallery)  # fmt: skip
    assert named["attribute_scan_rank1"] == named["attribute_scan_rank5"] == 1.0
    # later true crops of a tie with b's green one (agreement 0): mAP below 1, above chance
    assert 0.8 < named["attribute_scan_mAP"] < 1.0
    vague = attribute_scan_metrics(["someone"], ["b"], gallery, orders=400)
    assert vague["attribute_scan_rank1"] == pytest.approx(0.25, abs=0.06)


def test_tau_metrics_keep_only_hits_that_agree() -> None:
    gallery = _gallery_with_attributes()
    # ranked: gallery 1 (a, blue top), 0 (a, red), 2 (a, red), 3 (b)
    q = np.array([[0.6, 0.8, 0.4, 0.0]], np.float32)
    plain = reid_metrics(q, ["a"], ["q"], gallery.vectors, gallery.ids, gallery.names)
    assert plain["rank1"] == 1.0
    got = tau_metrics(q, ["a"], ["a man in a red top"], gallery, tau=0.5)
    assert got["rank1_tau"] == 0.0  # the blue-top crop is not a true match for "red top"
    assert got["mAP_tau"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    none = tau_metrics(q, ["a"], ["a yellow top"], gallery, tau=0.5)
    assert none["n_queries_tau_skipped"] == 1


JSONL_ERRORS = {
    "bad json on line 3": ('{"text": "a", "identity": "1"}\n\n{oops\n', "line 3: not valid JSON"),
    "not an object": ('["a"]\n', "line 1: expected a JSON object"),
    "missing identity": ('{"text": "a"}\n', "line 1: missing key(s) identity"),
    "empty text": ('{"text": "", "identity": "1"}\n', "line 1: 'text' must be"),
    "empty file": ("\n\n", "holds no queries"),
}


@pytest.mark.parametrize(("body", "message"), JSONL_ERRORS.values(), ids=JSONL_ERRORS)
def test_read_jsonl_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(body)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_jsonl(path, ("text", "identity"))


def _run(names: list[str], ids: list[str], ap: list[float]) -> dict:
    return {"supported": True, "query_ap": {"names": names, "ids": ids, "ap": ap}}


def test_paired_difference_is_per_query_and_resamples_people() -> None:
    names, ids = ["a/1", "a/2", "b/1", "b/2"], ["a", "a", "b", "b"]
    model = {"reid": _run(names, ids, [1.0, 0.5, 1.0, 1.0]), "text": {"supported": False}}
    base = {"reid": _run(names, ids, [0.5, 0.5, 1.0, 0.5]), "text": _run(["t"], ["a"], [1.0])}
    diff = paired_difference(model, base)
    assert set(diff) == {"reid"}  # a task one of them cannot do is left out
    d = diff["reid"]
    # each person gains 0.25 on average: every resample of the people gives 0.25
    assert (d["mAP_diff"], d["ci95_lo"], d["ci95_hi"]) == pytest.approx((0.25, 0.25, 0.25))
    assert (d["n_queries"], d["n_identities"]) == (4, 2)
    for other in (_run(["a/1", "a/2", "b/1", "b/3"], ids, [1.0] * 4),
                  _run(names, ["a", "b", "b", "b"], [1.0] * 4)):  # fmt: skip
        with pytest.raises(ValueError, match="different queries"):
            paired_difference(model, {"reid": other})
    with pytest.raises(ValueError, match="per_query=True"):
        paired_difference(model, {"reid": {"supported": True, "mAP": 0.5}})


def _build_script():
    from refind.datasets import build_irm_eval

    return build_irm_eval


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory: pytest.TempPathFactory, model_store) -> Path:
    """The six task folders from PETS held-out identities, every 20th frame (a small set)."""
    need_pets()
    out = tmp_path_factory.mktemp("irm-eval")
    summary = _build_script().build(
        out, PETS_VIDEO, PETS_GT, PetsReidOptions(stride=20), model_store, cache=None,
        progress=False,
    )  # fmt: skip
    assert set(summary["heldout_identities"]) <= {str(i) for i in range(2, 19, 2)}
    return out


def test_tiny_sets_layout(tiny_sets: Path) -> None:
    gallery = sorted(p.relative_to(tiny_sets / "reid") for p in (tiny_sets / "reid").rglob("*.png"))
    assert gallery
    for task in ("clothes_change", "visible_infrared", "attribute_text", "clothes_template"):
        rows = read_jsonl(tiny_sets / task / "queries.jsonl", ("query",))
        assert all((tiny_sets / task / "query" / r["query"]).is_file() for r in rows)
    texts = read_jsonl(tiny_sets / "text" / "queries.jsonl", ("text", "identity"))
    assert all((tiny_sets / "text" / "gallery" / r["identity"]).is_dir() for r in texts)
    ids = {p.name for p in (tiny_sets / "reid" / "gallery").iterdir()}
    assert all(int(i) % 2 == 0 for i in ids), "a training identity leaked into the held-out sets"


def test_eval_irm_cli_with_the_0277_baseline(
    tiny_sets: Path, capsys: pytest.CaptureFixture
) -> None:
    need_models()
    args = ["eval", "irm", "--sets", str(tiny_sets), "--json"]
    assert main(args) == 0
    alone = json.loads(capsys.readouterr().out)
    assert "query_ap" not in alone["reid"]  # per-query APs only when a baseline is paired
    assert main([*args, "--baseline", "no-such-model"]) == 2
    assert "--baseline no-such-model: unknown model" in capsys.readouterr().err
    assert main([*args, "--baseline", "person-reidentification-retail-0277"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["reid"]["mAP"] == alone["reid"]["mAP"]
    results, baseline = out["model"], out["baseline"]
    # the same model against itself: the same queries, a difference of exactly 0 on each task
    assert set(out["difference"]) == set(TASKS[:-1])  # text: 0277 cannot embed text
    for task, d in out["difference"].items():
        assert d["mAP_diff"] == d["ci95_lo"] == d["ci95_hi"] == 0.0, task
        assert d["n_queries"] == len(results[task]["query_ap"]["ap"]) > 0
        assert results[task]["mAP"] == baseline[task]["mAP"]
    assert results["text"]["supported"] is False
    for task in TASKS[:-1]:
        r = results[task]
        assert 0.0 <= r["mAP"] <= 1.0 and 0.0 <= r["rank1"] <= r["rank5"] <= r["rank10"] <= 1.0
    assert results["reid"]["mAP"] > results["reid"]["chance_mAP"] + 0.1
    assert 0.0 <= results["attribute_text"]["mAP_tau"] <= 1.0


def test_eval_reid_cli_task_and_instruction(tiny_sets: Path, capsys: pytest.CaptureFixture) -> None:
    need_models()
    q, g = tiny_sets / "visible_infrared" / "query", tiny_sets / "visible_infrared" / "gallery"
    args = ["eval", "reid", "--query", str(q), "--gallery", str(g)]
    assert main([*args, "--task", "visible_infrared", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["instructed"] is False
    assert main([*args, "--instruction", "ignore the clothes"]) == 2
    assert "takes no instruction" in capsys.readouterr().err
    assert main([*args, "--task", "text"]) == 2
    assert "refind eval text" in capsys.readouterr().err


def test_eval_text_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    need_models()
    need_pets()
    gallery = tmp_path / "gallery" / "2"
    gallery.mkdir(parents=True)
    import cv2

    cv2.imwrite(str(gallery / "f0001.png"), np.full((64, 32, 3), 128, np.uint8))
    good = tmp_path / "q.jsonl"
    good.write_text('{"text": "a man in a black top", "identity": "2"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a man", "identity": "2"}\n{"text": "x"\n')
    cases = {
        (str(good), str(tmp_path / "gallery")): "cannot embed text",
        (str(bad), str(tmp_path / "gallery")): "bad.jsonl line 2: not valid JSON",
        (str(tmp_path / "none.jsonl"), str(tmp_path / "gallery")): "does not exist",
        (str(good), str(tmp_path / "nowhere")): "gallery folder",
    }
    for (queries, gallery_dir), message in cases.items():
        assert main(["eval", "text", "--queries", queries, "--gallery", gallery_dir]) == 2
        err = capsys.readouterr().err
        assert err.startswith("refind: error: ") and message in err, err


class FakeIrm:
    """An instructable embedder of mean-colour vectors that records its query calls."""

    model_id = "fake-irm"
    dim = 4

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []

    def __call__(self, crops) -> Embeddings:
        vecs = np.array([[*c.reshape(-1, 3).mean(axis=0), 40.0] for c in crops], np.float32)
        return Embeddings(vecs / np.linalg.norm(vecs, axis=1, keepdims=True), self.model_id)

    def embed_query(self, crops, task="reid", instruction=None) -> Embeddings:
        kind = "image" if isinstance(instruction, np.ndarray) else type(instruction).__name__
        self.calls.append((task, len(crops), kind))
        return self(crops)

    def embed_text(self, texts) -> Embeddings:
        rng = np.random.default_rng(len(texts))
        vecs = rng.normal(size=(len(texts), self.dim)).astype(np.float32)
        return Embeddings(vecs / np.linalg.norm(vecs, axis=1, keepdims=True), self.model_id)


def test_evaluate_irm_with_an_instructable_model(tiny_sets: Path, model_store) -> None:
    from refind.models.attributes import OpenVinoAttributes

    fake = FakeIrm()
    assert isinstance(fake, InstructableEmbedder)
    results = evaluate_irm(tiny_sets, fake, OpenVinoAttributes(model_store))
    assert all(r["supported"] and 0.0 <= r["mAP"] <= 1.0 for r in results.values())
    assert {"mAP_tau", "rank1_tau"} <= results["text"].keys() & results["attribute_text"].keys()
    n_query = results["clothes_template"]["n_query"]
    templates = [c for c in fake.calls if c[0] == "clothes_template"]
    assert len(templates) == n_query and {c[1:] for c in templates} == {(1, "image")}
    for task in ("reid", "clothes_change", "visible_infrared"):  # grouped by instruction text
        calls = [c for c in fake.calls if c[0] == task]
        assert sum(c[1] for c in calls) == results[task]["n_query"] and len(calls) <= 4


def test_training_side_sets_hold_only_training_identities() -> None:
    """``--identities train`` sets (for choosing settings) never hold a held-out person."""
    need_pets()
    script = _build_script()
    opts = PetsReidOptions(stride=20)
    train = script.plan_side(PETS_VIDEO, PETS_GT, opts, "train")
    heldout = script.plan_side(PETS_VIDEO, PETS_GT, opts, "heldout")
    assert train and heldout
    assert all(p.identity % 2 == 1 for p in train)
    assert all(p.identity % 2 == 0 for p in heldout)
    assert {p.role for p in train} == {"query", "gallery"}
