"""ReID evaluation: metrics on hand-made vectors, identity folders, the PETS split end to end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from refind.datasets.pets_reid import PetsReidOptions, build_pets_reid, max_overlap, split_track
from refind.evaluation.reid import (
    evaluate_reid,
    identity_bootstrap_ci,
    load_identity_folder,
    rank_queries,
    reid_metrics,
)
from refind.streaming.records import Embeddings

PETS = Path(__file__).resolve().parents[2] / "../shared/data/pets09-s2l1"


def _unit(*angles_deg: float) -> np.ndarray:
    """(n, 2) unit vectors at the given angles: cosine similarity = cos(angle difference)."""
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


# Each case: queries (angles, ids, names), gallery (angles, ids, names), expected metrics.
METRIC_CASES = {
    "perfect separation": (
        (_unit(0, 90), ["a", "b"], ["a/q1", "b/q1"]),
        (_unit(5, 85, -5), ["a", "b", "a"], ["a/g1", "b/g1", "a/g2"]),
        {"mAP": 1.0, "rank1": 1.0, "rank5": 1.0, "rank10": 1.0, "n_queries_skipped": 0},
    ),
    "true match at rank 2": (
        (_unit(0), ["a"], ["a/q1"]),
        (_unit(10, 40, 90), ["b", "a", "c"], ["b/g1", "a/g1", "c/g1"]),
        {"mAP": 0.5, "rank1": 0.0, "rank5": 1.0, "rank10": 1.0, "n_queries_skipped": 0},
    ),
    "true matches at ranks 1 and 3": (
        (_unit(0), ["a"], ["a/q1"]),
        (_unit(5, 10, 20, 90), ["a", "b", "a", "c"], ["a/g1", "b/g1", "a/g2", "c/g1"]),
        {"mAP": (1 / 1 + 2 / 3) / 2, "rank1": 1.0, "n_queries_skipped": 0},
    ),
    "same file name excluded (else a perfect hit)": (
        (_unit(0), ["a"], ["a/f0001.jpg"]),
        (_unit(0, 10, 40), ["a", "b", "a"], ["a/f0001.jpg", "b/f0001.jpg", "a/f0090.jpg"]),
        {"mAP": 0.5, "rank1": 0.0, "rank5": 1.0, "n_queries_skipped": 0},
    ),
    "query without a true match is skipped": (
        (_unit(0, 90), ["a", "z"], ["a/q1", "z/q1"]),
        (_unit(0, 90), ["a", "b"], ["a/g1", "b/g1"]),
        {"mAP": 1.0, "rank1": 1.0, "n_queries_evaluated": 1, "n_queries_skipped": 1},
    ),
    "only true match has the query's name: skipped": (
        (_unit(0, 90), ["a", "b"], ["a/x", "b/x"]),
        (_unit(0, 80, 0), ["a", "b", "c"], ["a/x", "b/y", "c/y"]),
        {"mAP": 1.0, "rank1": 1.0, "n_queries_evaluated": 1, "n_queries_skipped": 1},
    ),
    "rank 6 of 10": (
        (_unit(0), ["a"], ["a/q"]),
        (
            _unit(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
            [*"bcdef", "a", *"ghij"],
            [f"g{i}" for i in range(10)],
        ),
        {"mAP": 1 / 6, "rank1": 0.0, "rank5": 0.0, "rank10": 1.0, "n_queries_skipped": 0},
    ),
}


@pytest.mark.parametrize(("query", "gallery", "expected"), METRIC_CASES.values(), ids=METRIC_CASES)
def test_reid_metrics(query: tuple, gallery: tuple, expected: dict) -> None:
    got = reid_metrics(*query, *gallery)
    assert {k: got[k] for k in expected} == pytest.approx(expected)


# Each case: per-query values, their identities, the expected 95 % identity-bootstrap interval.
CI_CASES = {
    "every identity the same": ([0.5, 0.5, 0.5, 0.5], ["a", "a", "b", "b"], (0.5, 0.5)),
    "one identity": ([0.2, 0.4], ["a", "a"], (0.3, 0.3)),
    # two people, ten queries each: a query bootstrap would say ~0.5 +- 0.2; resampling the
    # people gives 0, 0.5 or 1 with chances 1/4, 1/2, 1/4
    "two clusters": ([1.0] * 10 + [0.0] * 10, ["a"] * 10 + ["b"] * 10, (0.0, 1.0)),
}


@pytest.mark.parametrize(("values", "ids", "expected"), CI_CASES.values(), ids=CI_CASES)
def test_identity_bootstrap_ci(values: list, ids: list, expected: tuple) -> None:
    assert identity_bootstrap_ci(np.asarray(values), ids) == pytest.approx(expected)


def test_identity_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    rng = np.random.default_rng(1)
    values, ids = rng.random(60), [f"id{k % 12}" for k in range(60)]
    lo, hi = identity_bootstrap_ci(values, ids)
    assert lo < values.mean() < hi
    assert identity_bootstrap_ci(values, ids) == (lo, hi)
    assert identity_bootstrap_ci(values, ids, seed=2) != (lo, hi)
    narrow = identity_bootstrap_ci(values, ids, level=0.5)
    assert lo < narrow[0] < narrow[1] < hi


def test_reid_metrics_report_the_interval() -> None:
    # a's queries rank a's crop first (AP 1), b's rank it second (AP 0.5): mAP 0.75
    q = (_unit(0, 0, 80, 80), ["a", "a", "b", "b"], ["a/1", "a/2", "b/1", "b/2"])
    g = (_unit(0, 40, 70), ["a", "b", "x"], ["a/g", "b/g", "x/g"])
    got = reid_metrics(*q, *g)
    assert got["mAP"] == pytest.approx(0.75)
    assert (got["mAP_ci95_lo"], got["mAP_ci95_hi"]) == pytest.approx((0.5, 1.0))
    per_query = rank_queries(*q, *g).per_query()
    assert per_query["names"] == q[2] and per_query["ids"] == q[1]
    assert per_query["ap"] == pytest.approx([1.0, 1.0, 0.5, 0.5])
    no_match = rank_queries(_unit(0, 0), ["a", "z"], ["a/1", "z/1"], *g).per_query()
    assert no_match["names"] == ["a/1"]  # a query without a true match is left out


ERROR_CASES = {
    "dims differ": ((np.ones((1, 2)), ["a"], ["q"]), (np.ones((1, 3)), ["a"], ["g"]), "2-d"),
    "ids short": (
        (np.ones((2, 2)), ["a"], ["q", "r"]),
        (np.ones((1, 2)), ["a"], ["g"]),
        "1 identities",
    ),
    "empty gallery": ((np.ones((1, 2)), ["a"], ["q"]), (np.ones((0, 2)), [], []), "non-empty"),
    "no query has a match": ((_unit(0), ["a"], ["q"]), (_unit(0), ["b"], ["g"]), "none of the 1"),
}


@pytest.mark.parametrize(("query", "gallery", "message"), ERROR_CASES.values(), ids=ERROR_CASES)
def test_reid_metrics_errors(query: tuple, gallery: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        reid_metrics(*query, *gallery)


def _write_image(path: Path, bgr: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((64, 32, 3), bgr, np.uint8))


def test_load_identity_folder_reads_sorted_images(tmp_path: Path) -> None:
    _write_image(tmp_path / "b" / "f0002.png", (0, 0, 255))
    _write_image(tmp_path / "a" / "f0010.jpg", (255, 0, 0))
    _write_image(tmp_path / "a" / "f0001.JPG", (255, 0, 0))
    (tmp_path / ".DS_Store").write_bytes(b"ignored")
    images, ids, names = load_identity_folder(tmp_path)
    assert ids == ["a", "a", "b"]
    assert names == ["a/f0001.JPG", "a/f0010.jpg", "b/f0002.png"]
    assert all(im.shape == (64, 32, 3) and im.dtype == np.uint8 for im in images)


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# Each case: files to create under the folder (None = a directory), what the error names.
LOAD_ERRORS = {
    "missing folder": ({}, "does not exist"),
    "empty folder": ({".hidden": b""}, "is empty"),
    "corrupt jpg": ({"a/f0001.jpg": b"not a jpeg"}, "a/f0001.jpg is not a decodable image"),
    "text file": ({"a/notes.txt": b"hi"}, "a/notes.txt is not an image file"),
    "empty identity": ({"a": None}, "a holds no images"),
    "loose file": ({"readme.md": b"hi"}, "readme.md is a file"),
}


@pytest.mark.parametrize(("files", "message"), LOAD_ERRORS.values(), ids=LOAD_ERRORS)
def test_load_identity_folder_errors(tmp_path: Path, files: dict, message: str) -> None:
    root = tmp_path / "ids"
    if files:
        root.mkdir()
    for rel, data in files.items():
        if data is None:
            (root / rel).mkdir(parents=True)
        else:
            _put(root / rel, data)
    with pytest.raises(ValueError, match=message):
        load_identity_folder(root)


class ChannelEmbedder:
    """Fake embedder: the unit vector of a crop's mean B, G, R (plus 1, never zero)."""

    model_id = "fake@0"
    dim = 3

    def __call__(self, crops: Sequence[np.ndarray]) -> Embeddings:
        v = np.stack([c.reshape(-1, 3).mean(axis=0) for c in crops]) + 1.0
        return Embeddings(v / np.linalg.norm(v, axis=1, keepdims=True), self.model_id)


class ShuffledEmbedder:
    """A broken embedder: another embedder's vectors handed to the wrong crops."""

    def __init__(self, inner, seed: int = 0) -> None:
        self.inner, self.seed = inner, seed
        self.model_id, self.dim = inner.model_id, inner.dim

    def __call__(self, crops: Sequence[np.ndarray]) -> Embeddings:
        emb = self.inner(crops)
        rows = np.random.default_rng(self.seed).permutation(len(emb))
        return Embeddings(emb.vectors[rows], emb.model_id)


def test_evaluate_reid_with_fake_embedder(tmp_path: Path) -> None:
    colours = {"blue": (255, 0, 0), "green": (0, 255, 0), "red": (0, 0, 255)}
    for ident, bgr in colours.items():
        _write_image(tmp_path / "query" / ident / "f0001.png", bgr)
        _write_image(tmp_path / "gallery" / ident / "f0100.png", bgr)
    _write_image(tmp_path / "gallery" / "grey" / "f0100.png", (90, 90, 90))
    got = evaluate_reid(tmp_path / "query", tmp_path / "gallery", ChannelEmbedder())
    assert got["mAP"] == pytest.approx(1.0) and got["rank1"] == pytest.approx(1.0)
    assert (got["n_query"], got["n_gallery"], got["n_identities"]) == (3, 4, 4)
    assert got["model_id"] == "fake@0" and got["crops_per_s"] > 0


SPLIT_CASES = {
    "long track": (np.arange(10, 400, 10), 60, 30),
    "two segments": (np.r_[10, 20, 30, 200, 210], 60, 30),
    "gap 0": (np.arange(10, 60, 10), 0, 20),
    "too short: distractor": (np.arange(10, 60, 10), 60, 30),
}


@pytest.mark.parametrize(("frames", "gap", "span"), SPLIT_CASES.values(), ids=SPLIT_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_track_keeps_the_gap(frames: np.ndarray, gap: int, span: int, seed: int) -> None:
    query, gallery = split_track(frames, gap, span, np.random.default_rng(seed))
    assert len(gallery) > 0 and not set(query) & set(gallery)
    if frames.max() - frames.min() < gap:
        assert len(query) == 0 and list(gallery) == sorted(frames)
    else:
        assert len(query) > 0 and np.ptp(query) < span
        assert np.abs(query[:, None] - gallery[None, :]).min() >= gap


def test_max_overlap_is_fraction_of_own_area() -> None:
    xyxy = np.array([[0, 0, 10, 10], [5, 0, 25, 10], [100, 100, 110, 110]], float)
    got = max_overlap(xyxy, np.array([1, 1, 1]))
    assert got == pytest.approx([0.5, 0.25, 0.0])
    assert max_overlap(xyxy, np.array([1, 2, 1])) == pytest.approx([0.0, 0.0, 0.0])


def _frames_by_identity(root: Path) -> dict[str, np.ndarray]:
    return {d.name: np.array([int(f.stem[1:]) for f in d.iterdir()]) for d in root.iterdir()}


@pytest.mark.slow
def test_pets_split_and_reid_accuracy(tmp_path: Path) -> None:
    if not (PETS / "vtest.avi").is_file() or not (PETS / "gt.txt").is_file():
        pytest.skip(
            f"PETS09-S2L1 data not found at {PETS.resolve()} (see ../shared/data/README.md)"
        )
    from refind.models.config import ModelStoreConfig, OpenVinoReidConfig
    from refind.models.openvino_reid import OpenVinoReidEmbedder
    from refind.models.store import ModelStore, ModelStoreError

    opts = PetsReidOptions(min_gap=60, seed=0)
    summary = build_pets_reid(PETS / "vtest.avi", PETS / "gt.txt", tmp_path, opts)
    query, gallery = (
        _frames_by_identity(tmp_path / "query"),
        _frames_by_identity(tmp_path / "gallery"),
    )
    assert summary["identities"] == len(query) >= 15 and summary["n_query"] >= 40
    for ident, q in query.items():
        g = gallery.get(ident, np.array([10_000]))
        assert np.abs(q[:, None] - g[None, :]).min() >= 60, f"identity {ident} breaks the gap"

    try:
        store = ModelStore.from_config(ModelStoreConfig(allow_download=False))
        embedder = OpenVinoReidEmbedder(OpenVinoReidConfig(), store)
    except ModelStoreError as err:
        pytest.skip(f"default ReID model not available offline: {err}")
    got = evaluate_reid(tmp_path / "query", tmp_path / "gallery", embedder)
    # Measured with 0277, seed 0: mAP 0.484, rank-1 0.391, rank-10 0.804; random vectors give
    # mAP 0.07 (0.10 at most over 200 draws).
    assert got["mAP"] > 0.35 and got["rank1"] > 0.25 and got["rank10"] > 0.6
    broken = evaluate_reid(tmp_path / "query", tmp_path / "gallery", ShuffledEmbedder(embedder))
    assert broken["mAP"] < 0.2 < got["mAP"] - broken["mAP"]
