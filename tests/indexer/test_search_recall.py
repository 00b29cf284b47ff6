"""The recommended approximate index keeps recall, filters fill k, and aggregation stays lean.

Vectors are clustered like ReID output (people -> tracks -> crops; see bench/search_latency.py,
which measures the same at 100k and 1M): queries are new tracks of gallery people.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refind.indexer.config import GalleryConfig, SearchConfig
from refind.indexer.gallery import FaissGallery
from refind.indexer.gallery_store import GalleryStore
from refind.indexer.search import SearchEngine
from refind.streaming.records import CropRecord, Embeddings, ImageQuery, SearchFilter, TrackSpan

DIM = 128
MODEL = "reid-recall-v1"
N = 20_000
K = 10
# The large-gallery setting at this scale: ~4 sqrt(n) lists (bench: IVF4096 at 1M), and the
# nprobe the bench's curve picks for recall@10 >= 0.95 with the engine's 200-crop fetch. Trained
# on all N vectors (39 per list; the default 40 per list would leave it untrained at N).
RECOMMENDED = GalleryConfig(index_factory="IVF512,Flat", nprobe=16, train_min_vectors=N)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def people() -> dict[str, np.ndarray]:
    """N crops: 700 people with anisotropic centres, tracks of 8 crops (cosine ~0.85 within a
    track, ~0.65 across a person's tracks), 8 cameras; 100 queries from new tracks."""
    rng = np.random.default_rng(5)
    centres = _unit(0.5 / np.sqrt(DIM) + _unit(rng.standard_normal((700, DIM))
                                               * (1.0 + np.arange(DIM)) ** -0.6))
    s_track, s_crop = np.sqrt((0.85 / 0.65 - 1) / DIM), np.sqrt((1 / 0.85 - 1) / DIM)
    person = rng.integers(0, 700, N // 8)
    tracks = _unit(centres[person] + s_track * rng.standard_normal((N // 8, DIM)))
    vectors = _unit(np.repeat(tracks, 8, axis=0) + s_crop * rng.standard_normal((N, DIM)))
    q_person = rng.choice(person, 100)
    queries = _unit(_unit(centres[q_person] + s_track * rng.standard_normal((100, DIM)))
                    + s_crop * rng.standard_normal((100, DIM)))
    return {"vectors": vectors, "queries": queries, "camera": np.repeat(np.arange(N // 8) % 8, 8)}


def _gallery(cfg: GalleryConfig, vectors: np.ndarray) -> FaissGallery:
    g = FaissGallery(cfg, MODEL, DIM)
    g.add(np.arange(len(vectors), dtype=np.int64), Embeddings(vectors, MODEL))
    return g


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in
                          zip(found.tolist(), truth.tolist(), strict=True)]))


@pytest.fixture(scope="module")
def galleries(people) -> dict[str, FaissGallery]:
    return {"exact": _gallery(GalleryConfig(), people["vectors"]),
            "approx": _gallery(RECOMMENDED, people["vectors"])}


@pytest.mark.parametrize("camera", [None, 3])
def test_recommended_index_reaches_recall_of_exact_search(galleries, people, camera):
    k = K
    allowed = None if camera is None else np.flatnonzero(people["camera"] == camera)
    _, truth = galleries["exact"].search(people["queries"], k, allowed)
    _, found = galleries["approx"].search(people["queries"], k, allowed)
    assert galleries["approx"].is_trained and galleries["approx"].kind == "ivf"
    assert (found >= 0).all()  # k hits for every query, filtered or not
    if allowed is not None:
        assert np.isin(found, allowed).all()
    assert _recall(found, truth) >= 0.95


def _records(n: int, camera: np.ndarray) -> list[CropRecord]:
    return [CropRecord(vector_id=i, camera=f"cam{camera[i]}", track_id=1 + i // 8,
                       frame_index=i % 8, ts_ns=(i // 8) * 10**9 + (i % 8) * 2 * 10**8,
                       xyxy=(0.0, 0.0, 10.0, 30.0), confidence=0.9, quality=0.5,
                       crop_path=f"c/{i}.jpg", model_id=MODEL) for i in range(n)]


@pytest.fixture(scope="module")
def store(tmp_path_factory, people) -> GalleryStore:
    n = 4_000  # 500 tracks; enough for the engine path, quick to write
    s = GalleryStore(Path(tmp_path_factory.mktemp("g")), RECOMMENDED.model_copy(
        update={"index_factory": "Flat"}), MODEL, DIM)
    s.add(_records(n, people["camera"]), Embeddings(people["vectors"][:n], MODEL))
    yield s
    s.close()


@pytest.mark.parametrize(
    ("cameras", "window"),
    [((), None), (("cam3",), None), ((), (100, 149)), (("cam3", "cam5"), (0, 249))],
)
def test_filtered_tracklet_search_fills_k_from_the_subset(store, people, cameras, window):
    start, end = (None, None) if window is None else (window[0] * 10**9, window[1] * 10**9 + 1)
    query = ImageQuery(image=np.zeros((4, 4, 3), np.uint8), k=K, cameras=cameras,
                       start_ts_ns=start, end_ts_ns=end)
    engine = SearchEngine(SearchConfig(), store, store)  # the store stands in for the embedder
    for q in people["queries"][:10]:
        hits = engine.search_vector(q[None], query)
        assert len(hits) == K
        assert not cameras or {h.camera for h in hits} <= set(cameras)
        assert window is None or all(h.start_ts_ns <= end and h.end_ts_ns >= start for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_summaries_are_read_for_the_returned_tracklets_only(store, people, monkeypatch):
    engine = SearchEngine(SearchConfig(overfetch=20), store, store)
    query = ImageQuery(image=np.zeros((4, 4, 3), np.uint8), k=3)
    [crops] = store.search(people["queries"][:1], 3 * 20)
    assert len({(h.record.camera, h.record.track_id) for h in crops}) > 3  # more than returned
    every = engine._tracklets(crops)
    looked_up: list[tuple[str, int]] = []
    track = store.track
    monkeypatch.setattr(store, "track", lambda c, t: looked_up.append((c, t)) or track(c, t))
    hits = engine.search_vector(people["queries"][:1], query)
    assert hits == every[:3]
    assert looked_up == [(h.camera, h.track_id) for h in hits]


@pytest.mark.parametrize("min_track_s", [1.0, 3.0])
def test_min_track_search_equals_exact_search_of_the_long_tracks(tmp_path, people, min_track_s):
    """Crops 1.4 s long everywhere; every third track's tracker span widened to 3.4 s: a 3 s
    minimum keeps those tracks alone, and the search equals exact search over their crops."""
    n = 4_000
    records = _records(n, people["camera"])
    store = GalleryStore(tmp_path, GalleryConfig(index_factory="Flat"), MODEL, DIM)
    try:
        store.add(records, Embeddings(people["vectors"][:n], MODEL))
        store.metadata.set_track_spans(
            TrackSpan(r.camera, r.track_id, r.ts_ns - 2 * 10**9, r.ts_ns + 14 * 10**8)
            for r in records if r.frame_index == 0 and r.track_id % 3 == 0)
        long = np.array([r.track_id % 3 == 0 or min_track_s <= 1.4 for r in records])
        allowed = np.flatnonzero(long)
        scores = people["queries"][:20] @ people["vectors"][allowed].T
        truth = allowed[np.argsort(-scores, axis=1)[:, :K]]
        hits = store.search(people["queries"][:20], K, SearchFilter(min_track_s=min_track_s))
        found = np.array([[h.record.vector_id for h in row] for row in hits])
        assert np.isin(found, allowed).all()
        assert _recall(found, truth) == 1.0
    finally:
        store.close()
