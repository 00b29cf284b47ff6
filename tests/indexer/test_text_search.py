"""Text search end to end: a real gallery ingested from the first 200 PETS09-S2L1 frames (camera
"pets") and its first 60 frames again (camera "gate"), the default plain ReID model (OMZ 0277),
the real attribute verifier. Filters read from the text restrict results inside the search; the
plain model's bounded scan says so; an instruction on a plain model is a clear error. Also the
minimum-track-length filter inside FAISS on a synthetic gallery of 3,000 vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from refind.app.cli import main
from refind.config import RefindConfig, parse_config
from refind.indexer.blobs import CropStore
from refind.indexer.config import GalleryConfig
from refind.indexer.gallery_store import GalleryStore
from refind.indexer.query_plan import plan_query
from refind.indexer.rerank import RerankerPool
from refind.indexer.search import QueryError, SearchEngine
from refind.indexer.shards import ShardedGallery
from refind.models.registry import build_embedder
from refind.streaming.records import NO_FILTER, ImageQuery, SearchFilter, TextQuery, TrackSpan
from tests.conftest import MODELS_DIR, PETS_VIDEO, need_models, need_pets
from tests.indexer.conftest import CAMERAS, MODEL, fill

EPOCH_NOW = datetime(1970, 1, 1, 1, 0, tzinfo=UTC)  # file timestamps start at 0 s


def test_min_track_filter_is_applied_inside_the_search(tmp_path: Path, data3k) -> None:
    with GalleryStore(tmp_path, GalleryConfig(), MODEL, 64) as store:
        fill(store, data3k.vectors)
        # every track spans 16 s of crops; the tracker saw three of them for a minute
        long = [(CAMERAS[0], 3), (CAMERAS[1], 70), (CAMERAS[2], 141)]
        for camera, track in long:
            crops = store.track(camera, track)
            assert (crops.end_ts_ns - crops.start_ts_ns) / 1e9 == 16
            store.metadata.set_track_spans([TrackSpan(
                camera, track, crops.start_ts_ns - 22 * 10**9, crops.end_ts_ns + 22 * 10**9)])
        [hits] = store.search(data3k.queries[:1], 12, SearchFilter(min_track_s=30))
        assert len(hits) == 12  # 15 eligible crops among 3,000: still k of them
        assert {(h.record.camera, h.record.track_id) for h in hits} <= set(long)
        [every] = store.search(data3k.queries[:1], 12)
        assert {(h.record.camera, h.record.track_id) for h in every} - set(long)  # it filtered
        assert store.search(data3k.queries[:1], 5, SearchFilter(min_track_s=61)) == [[]]
        recent = store.recent_tracks(2, SearchFilter(min_track_s=30))
        assert [(t.summary.camera, t.summary.track_id) for t in recent] == [long[2], long[1]]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> RefindConfig:
    need_models()
    need_pets()
    data = tmp_path_factory.mktemp("text-gallery")
    for camera, frames in (("pets", "200"), ("gate", "60")):
        argv = ["ingest", str(PETS_VIDEO), "--camera", camera, "--data-dir", str(data),
                "--max-frames", frames, "--json"]
        assert main(argv) == 0
    return parse_config({"data_dir": str(data),
                         "models": {"dir": str(MODELS_DIR), "allow_download": False}})


@pytest.fixture(scope="module")
def engine(cfg: RefindConfig, model_store) -> Iterator[SearchEngine]:
    embedder = build_embedder(cfg.embedder, model_store)
    with ShardedGallery.open(cfg.data_dir, cfg.gallery, embedder.model_id, embedder.dim) as g:
        yield SearchEngine(cfg.search, embedder, g, CropStore.from_config(cfg),
                           RerankerPool(model_store, cfg.search.match_threshold))


def with_search(engine: SearchEngine, **update: object) -> SearchEngine:
    """The same engine with some ``search:`` settings changed."""
    return SearchEngine(engine.cfg.model_copy(update=update), engine.embedder, engine.gallery,
                        engine.crops, engine.rerankers)  # fmt: skip


def _query(text: str, k: int = 50) -> TextQuery:
    plan = plan_query(text, now=EPOCH_NOW, known_cameras=("pets", "gate"))
    return plan.text_query(k)


def _span_s(hit) -> float:
    return (hit.end_ts_ns - hit.start_ts_ns) / 1e9


@pytest.mark.slow
def test_filters_in_the_text_restrict_the_results(engine: SearchEngine) -> None:
    every = engine.search_text(_query("someone in a black top"))
    assert every.hits and every.scanned_tracks and not every.scan_bounded
    assert {h.camera for h in every.hits} == {"pets", "gate"}
    assert min(_span_s(h) for h in every.hits) < 10  # so the next filter has work to do
    assert all(h.reasons[0].startswith("compose") and "top black" in h.reasons[0]
               for h in every.hits)

    long = engine.search_text(_query("someone in a black top, seen for at least 10 s"))
    assert long.hits and all(_span_s(h) >= 10 for h in long.hits)
    assert long.scanned_tracks < every.scanned_tracks

    gate = engine.search_text(_query("someone in a black top near camera gate"))
    assert gate.hits and {h.camera for h in gate.hits} == {"gate"}

    late = engine.search_text(_query("someone in a black top after 00:00:15"))
    assert late.hits and all(h.end_ts_ns >= 15 * 10**9 for h in late.hits)
    assert any(h.end_ts_ns < 15 * 10**9 for h in every.hits)

    nothing = engine.search_text(_query("someone in a black top before 00:00:00"))
    assert nothing.hits == [] and "no track" in nothing.message


@pytest.mark.slow
def test_nobody_matches_is_said_not_padded(engine: SearchEngine) -> None:
    ranked = engine.search_text(_query("a person in a yellow coat with a hat", k=10))
    assert ranked.hits == []
    assert ranked.message.startswith("no tracklet matches 'a person in a yellow coat with a hat'")
    assert ranked.reranker == "compose"


@pytest.mark.slow
def test_a_bounded_scan_says_so(engine: SearchEngine) -> None:
    small = with_search(engine, text_scan_tracks=3, text_probe=None)
    ranked = small.search_text(_query("a person with long hair"))
    assert ranked.scanned_tracks == 3 and ranked.scan_bounded
    assert "scanned only the 3 most recent tracks" in ranked.message
    newest = max(t.summary.end_ts_ns for t in engine.gallery.recent_tracks(100, NO_FILTER))
    assert all(h.end_ts_ns >= newest - 10 * 10**9 for h in ranked.hits)


@pytest.mark.parametrize(("weights", "model_id", "has_probe"), [
    ("irm-pets-v3", "person-reidentification-retail-0277@abc", True),
    ("irm-pets-v3", "person-reidentification-retail-0277-int8@abc", True),
    ("irm-pets-v3", "person-reidentification-retail-0288@abc", False),  # another space
    (None, "person-reidentification-retail-0277@abc", False),
])  # fmt: skip
def test_a_plain_gallery_gets_the_probe_of_its_own_model(
    model_store, weights: str | None, model_id: str, has_probe: bool
) -> None:
    probe = RerankerPool(model_store).text_probe(weights, model_id)
    assert (probe is not None) == has_probe
    if probe is not None:
        assert probe.dim == 256 and probe.query_vector("a red top").shape == (256,)


@pytest.mark.slow
def test_too_many_tracks_to_scan_are_searched_through_the_probe(engine: SearchEngine) -> None:
    """Over text_scan_tracks tracks within the filters, with search.text_probe (the default
    irm-pets-v3): the whole gallery is retrieved by the probe's vector in the 0277 space and the
    best re-ranked, so older tracks are reachable; the answer says how it was searched."""
    small = with_search(engine, text_scan_tracks=3)
    assert small.cfg.text_probe == "irm-pets-v3"
    ranked = small.search_text(_query("someone in a black top"))
    assert ranked.hits and ranked.scanned_tracks is None and not ranked.scan_bounded
    assert "through the attribute probe of irm-pets-v3" in ranked.message
    # retrieved (a probe score: "appearance"), then confirmed by the composing referrer
    assert all(h.reasons[0].startswith("appearance") for h in ranked.hits)
    assert all("top black" in h.reasons[-1] for h in ranked.hits)
    newest = max(t.summary.end_ts_ns for t in engine.gallery.recent_tracks(100, NO_FILTER))
    assert any(h.end_ts_ns < newest - 10 * 10**9 for h in ranked.hits)  # not only recent ones
    assert len(ranked.hits) > 3  # more than the scan could have scored
    vague = small.search_text(_query("a man"))  # the probe reads it: still retrieved by it
    assert "attribute probe" in (vague.message or "")


@pytest.mark.slow
@pytest.mark.parametrize(("query", "message"), [
    (dict(instruction="ignore clothes"), "does not take instructions"),
    (dict(instruction="now wearing a black jacket"), "configure embedder type irm"),
    (dict(task="visible_infrared"), "does not take instructions"),
    (dict(instruction_image=np.full((40, 20, 3), 128, np.uint8)), "clothes_template"),
    (dict(task="text"), "unknown image query task 'text'"),
    (dict(task="dance"), "unknown image query task"),
])
def test_a_plain_model_refuses_instructions(
    engine: SearchEngine, query: dict[str, object], message: str
) -> None:
    photo = np.full((128, 64, 3), 90, np.uint8)
    with pytest.raises(QueryError, match=message):
        engine.rank_image(ImageQuery(image=photo, **query))  # type: ignore[arg-type]


@pytest.mark.slow
def test_text_the_attribute_model_cannot_check_is_refused(engine: SearchEngine) -> None:
    with pytest.raises(QueryError, match="names nothing refind can check"):
        engine.search_text(_query("a person smiling"))


@pytest.mark.slow
def test_image_search_takes_the_min_track_filter(engine: SearchEngine) -> None:
    [recent] = engine.gallery.recent_tracks(1, SearchFilter(cameras=("pets",), min_track_s=10))
    summary = recent.summary
    photo = engine.crops.read(summary.best.crop_path)
    plain = engine.rank_image(ImageQuery(image=photo, k=20))
    assert min(_span_s(h) for h in plain.hits) < 10
    long = engine.rank_image(ImageQuery(image=photo, k=20, min_track_s=10))
    assert long.hits and all(_span_s(h) >= 10 for h in long.hits)
    assert long.hits[0].track_id == summary.track_id and long.hits[0].camera == "pets"
    assert long.task == "reid" and long.reranker == "none"
