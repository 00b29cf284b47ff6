"""The attribute verifier with the real OMZ 0230 model on real PETS09-S2L1 crops (ground-truth
boxes), the scoring formula on hand-made attribute rows, and the re-ranker registry.

What is true on these crops was checked by eye first: in frame 700, identity 6 wears a red top,
identity 7 a light blue jacket, identity 4 a black coat; nobody in frames 500 and 700 wears a
purple top with a hat.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refind.indexer.blobs import CropStore
from refind.indexer.rerank import RerankerPool, rerank_hits
from refind.models.attribute_verifier import AttributeVerifier, checkable, verify
from refind.models.base import ATTRIBUTE_NAMES, ModelUnavailable, PersonAttributes, Region
from refind.models.registry import RERANKERS, RegistryError, build_reranker
from refind.models.text_attributes import WantedAttributes, parse_attributes
from refind.streaming.records import TrackletHit
from tests.conftest import PETS_GT, PETS_GT_SCALE, PETS_VIDEO, need_pets

RED, BLUE, BLACK = (700, 6), (700, 7), (700, 4)  # (frame, identity)


def _attrs(probs: dict[str, float], top: str = "black", bottom: str = "blue") -> PersonAttributes:
    row = np.array([[probs.get(n, 0.5) for n in ATTRIBUTE_NAMES]], np.float32)
    bgr = np.zeros((1, 3), np.uint8)
    return PersonAttributes(row, bgr, bgr, (top,), (bottom,))


@pytest.mark.parametrize(
    ("text", "probs", "top", "score", "terms"),
    [
        ("a man with a backpack", {"is_male": 0.9, "has_backpack": 0.8}, "black",
         (0.5 * 0.9 + 0.75 * 0.8) / 1.25, ["man 0.90", "backpack 0.80"]),
        ("red top", {}, "red", 1.0, ["red top (seen: red)"]),
        ("red top", {}, "orange", 0.5, ["red top (seen: orange, close)"]),
        ("red top", {}, "blue", 0.0, ["red top (seen: blue) ✗"]),
        ("woman with long hair, red top", {"is_male": 0.2, "has_longhair": 0.1}, "red",
         (0.5 * 0.8 + 0.1 + 2.0) / 3.5, ["long hair 0.10 ✗", "red top (seen: red)", "woman 0.80"]),
        ("no hat", {"has_hat": 0.1}, "black", 0.9, ["no hat 0.90"]),
    ],
)
def test_verdict_formula_and_reasons(
    text: str, probs: dict[str, float], top: str, score: float, terms: list[str]
) -> None:
    verdict = verify(parse_attributes(text), _attrs(probs, top), 0)
    assert verdict.score == pytest.approx(score, abs=1e-6)
    assert sorted(verdict.terms) == sorted(terms)
    assert all("✗" in t for t in verdict.missed)


def test_unreliable_attributes_never_drive_the_score() -> None:
    coat = WantedAttributes(flags=(("has_coat_jacket", True), ("has_longpants", True)))
    assert not checkable(coat)
    low, high = _attrs({"has_coat_jacket": 0.0}), _attrs({"has_coat_jacket": 1.0})
    assert verify(coat, low, 0).score == verify(coat, high, 0).score == 0.0
    assert "unreliable, not scored" in verify(coat, low, 0).terms[0]
    both = WantedAttributes(flags=(("has_coat_jacket", True), ("has_hat", True)))
    assert verify(both, _attrs({"has_coat_jacket": 0.0, "has_hat": 0.7}), 0).score == \
        pytest.approx(0.7)


def test_registry_lists_valid_names_and_raises_import_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(RegistryError, match="unknown re-ranker 'clip'; valid: none, attributes, compose, "
                       "refer, mllm"):
        build_reranker("clip", store=None)
    with pytest.raises(ModelUnavailable, match=r"set search\.mllm_dir"):
        build_reranker("mllm", store=None)
    assert build_reranker("none", store=None) is None
    monkeypatch.setitem(RERANKERS, "broken", "refind.models.no_such_module:Nothing")
    with pytest.raises(ImportError, match="no_such_module"):
        build_reranker("broken", store=None)


# ---- the real model on real crops -----------------------------------------------------------


@pytest.fixture(scope="module")
def gt_crops() -> dict[tuple[int, int], np.ndarray]:
    """Ground-truth person crops of frames 500 and 700, by (frame, identity)."""
    import av

    need_pets()
    gt = np.loadtxt(PETS_GT, delimiter=",")
    wanted = {500, 700}
    out: dict[tuple[int, int], np.ndarray] = {}
    with av.open(str(PETS_VIDEO)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i + 1 not in wanted:
                continue
            img = f.to_ndarray(format="bgr24")
            for r in gt[(gt[:, 0] == i + 1) & (gt[:, 6] != 0)]:
                x1, y1, x2, y2 = (np.array([r[2], r[3], r[2] + r[4], r[3] + r[5]]) *
                                  PETS_GT_SCALE).round().astype(int)
                crop = img[max(y1, 0):y2, max(x1, 0):x2]
                if crop.shape[0] >= 40:
                    out[(i + 1, int(r[1]))] = np.ascontiguousarray(crop)
            if i + 1 >= max(wanted):
                break
    return out


@pytest.fixture(scope="module")
def verifier(model_store) -> AttributeVerifier:
    return AttributeVerifier.from_store(model_store, threshold=0.6)


def _regions(crops: list[np.ndarray]) -> list[Region]:
    return [Region(crop=c, xyxy=(0.0, 0.0, c.shape[1], c.shape[0]), frame_wh=(768, 576))
            for c in crops]


@pytest.mark.slow
@pytest.mark.parametrize(("text", "truth", "others"), [
    ("a person in a red top", RED, (BLUE, BLACK)),
    ("someone wearing a blue jacket", BLUE, (RED, BLACK)),
    ("a girl in a red jumper", RED, (BLUE,)),
])
def test_named_top_colour_ranks_the_right_person_first(
    verifier: AttributeVerifier, gt_crops: dict, text: str, truth: tuple[int, int],
    others: tuple[tuple[int, int], ...],
) -> None:
    keys = [truth, *others]
    result = verifier(text, _regions([gt_crops[k] for k in keys]))
    assert result.scores[0] > max(result.scores[1:]), (text, result.scores, result.reasons)
    assert result.selected[0]
    colour = parse_attributes(text).top_colour
    assert f"{colour} top (seen: {colour})" in result.reasons[0]


@pytest.mark.slow
def test_nobody_matches_an_absurd_query(
    verifier: AttributeVerifier, gt_crops: dict, tmp_path: Path
) -> None:
    store = CropStore(tmp_path / "crops")
    hits = []
    for i, ((frame, ident), crop) in enumerate(sorted(gt_crops.items())):
        rel = store.put("pets", ident, frame, crop)
        hits.append(TrackletHit(camera="pets", track_id=ident, score=0.9 - i * 0.01,
                                start_ts_ns=0, end_ts_ns=1, n_crops=1, best_frame_index=frame,
                                best_xyxy=(0.0, 0.0, 20.0, 60.0), thumbnail=rel))
    absurd = rerank_hits(verifier, "a person in a purple coat with a hat", hits, store,
                         weight=0.5, with_retrieval=True)
    assert absurd.hits == [] and absurd.dropped == len(hits) >= 10
    assert absurd.message.startswith("no tracklet matches 'a person in a purple coat with a hat'")
    assert "purple top (seen:" in absurd.message and "hat" in absurd.message

    red = rerank_hits(verifier, "a person in a red top", hits, store, weight=0.5,
                      with_retrieval=True)
    assert red.message is None and red.hits
    assert all("red top (seen: red)" in h.reasons[1] for h in red.hits)  # only the red tops
    assert {h.track_id for h in red.hits} >= {RED[1]}
    top = red.hits[0]
    assert top.reasons[0].startswith("appearance 0.") and top.reasons[1].startswith("attributes")
    # the documented formula: (1 - w) * retrieval + w * attribute score
    retrieval = next(h.score for h in hits if h.track_id == top.track_id)
    attribute = float(top.reasons[1].split()[1].rstrip(":"))
    assert top.score == pytest.approx(0.5 * retrieval + 0.5 * attribute, abs=0.006)


@pytest.mark.slow
def test_attributes_are_computed_once_per_crop(model_store, gt_crops: dict) -> None:
    from refind.models.attributes import OpenVinoAttributes

    class Counting:
        def __init__(self, model: OpenVinoAttributes) -> None:
            self.model, self.crops = model, 0
            self.model_id = model.model_id

        def __call__(self, crops):
            self.crops += len(crops)
            return self.model(crops)

    counting = Counting(OpenVinoAttributes(model_store))
    v = AttributeVerifier(counting, threshold=0.6)
    regions = _regions(list(gt_crops.values()))
    first = v("a man with a backpack", regions)
    second = v("a woman in a red top", regions)
    assert counting.crops == len(regions)  # the second query ran no inference
    again = AttributeVerifier(counting.model)("a woman in a red top", regions)
    np.testing.assert_allclose(second.scores, again.scores, atol=1e-6)
    assert first.reasons != second.reasons


def test_pool_builds_each_reranker_once(model_store) -> None:
    pool = RerankerPool(model_store, threshold=0.7)
    first = pool.get("attributes")
    assert isinstance(first, AttributeVerifier) and first.threshold == 0.7
    assert pool.get("attributes") is first and pool.get("none") is None


class _Recording:
    """A re-ranker that keeps the regions it was given and selects everyone."""

    name = "recording"

    def __call__(self, expression: str, regions):
        from refind.models.base import RerankResult

        self.regions = list(regions)
        n = len(regions)
        return RerankResult(np.ones(n, np.float32), np.ones(n, bool), ("kept",) * n)


def test_regions_carry_their_cameras_places_and_the_frame_size_of_their_motion(
        tmp_path: Path) -> None:
    from refind.streaming.config import PlaceConfig
    from refind.streaming.motion import track_motion

    store = CropStore(tmp_path / "crops")
    crop = np.full((60, 20, 3), 128, np.uint8)
    t = np.linspace(0.0, 2.0, 10)
    boxes = np.stack([t * 10, t * 0 + 100, t * 10 + 20, t * 0 + 160], axis=1)
    moved = track_motion(t, boxes, (640, 480))
    hits = [TrackletHit(camera=cam, track_id=1, score=0.9, start_ts_ns=0, end_ts_ns=1,
                        n_crops=1, best_frame_index=5, best_xyxy=(10.0, 100.0, 30.0, 160.0),
                        thumbnail=store.put(cam, 1, 5, crop), motion=motion)
            for cam, motion in (("gate", moved), ("hall", None))]
    post = PlaceConfig(name="lamp post", box=(0.5, 0.1, 0.52, 0.7))
    recording = _Recording()
    rerank_hits(recording, "next to the lamp post", hits, store, weight=0.5,
                with_retrieval=False, places={"gate": (post,)})
    gate, hall = recording.regions
    assert gate.places == (post,) and hall.places == ()
    # the frame's size from the track's motion; without it, the extent of the boxes seen
    assert gate.frame_wh == (640, 480) and hall.frame_wh == (30, 160)
