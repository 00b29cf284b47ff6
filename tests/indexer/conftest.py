"""Builders for the gallery tests: clustered unit vectors and the crop records beside them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from refind.streaming.records import CropRecord, Embeddings

DIM = 64
MODEL = "reid-test-v1"
CAMERAS = ("gate", "lobby", "yard", "dock")
N_CLUSTERS = 50
SIGMA = 0.15  # per-dimension noise: a point's cosine to its cluster centre is ~0.75


@dataclass(frozen=True)
class Clustered:
    """Gallery and query vectors drawn from the same 50 gaussian clusters on the unit sphere.

    vectors: (n, DIM) float32 unit rows; queries: (q, DIM) float32 unit rows (not in vectors);
    noisy: (q, DIM) queries with twice the noise (a poor photo of someone in the gallery).
    """

    vectors: np.ndarray
    queries: np.ndarray
    noisy: np.ndarray


def clustered(n: int, n_queries: int = 100, seed: int = 0) -> Clustered:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLUSTERS, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int, sigma: float = SIGMA) -> np.ndarray:
        x = centres[rng.integers(0, N_CLUSTERS, m)] + sigma * rng.standard_normal((m, DIM))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return Clustered(vectors=draw(n), queries=draw(n_queries), noisy=draw(n_queries, 2 * SIGMA))


def crop_records(ids: np.ndarray, model_id: str = MODEL) -> list[CropRecord]:
    """One record per id: cameras round-robin, 5 crops per track, one second apart."""
    out = []
    for vid in ids.tolist():
        out.append(
            CropRecord(
                vector_id=vid,
                camera=CAMERAS[vid % len(CAMERAS)],
                track_id=1 + vid // (5 * len(CAMERAS)),
                frame_index=vid,
                ts_ns=vid * 1_000_000_000,
                xyxy=(1.0, 2.0, 30.0, 90.0),
                confidence=0.9,
                quality=float(vid % 7),
                crop_path=f"crops/{vid}.jpg",
                model_id=model_id,
            )
        )
    return out


def fill(store, vectors: np.ndarray, batch: int = 1000, model_id: str = MODEL) -> np.ndarray:
    """Add ``vectors`` to a GalleryStore in batches; returns their ids."""
    ids = []
    for start in range(0, len(vectors), batch):
        chunk = vectors[start : start + batch]
        first = store.next_vector_id()
        chunk_ids = np.arange(first, first + len(chunk), dtype=np.int64)
        store.add(crop_records(chunk_ids, model_id), Embeddings(chunk, model_id))
        ids.append(chunk_ids)
    return np.concatenate(ids)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's true ids (-1 excluded) that ``found`` contains."""
    shares = []
    for f, t in zip(found, truth, strict=True):
        t = t[t >= 0]
        shares.append(len(set(f.tolist()) & set(t.tolist())) / max(len(t), 1))
    return float(np.mean(shares))


@pytest.fixture(scope="session")
def data12k() -> Clustered:
    """12,000 vectors: enough to train IVF256 (40 x 256 = 10,240)."""
    return clustered(12_000)


@pytest.fixture(scope="session")
def data3k() -> Clustered:
    return clustered(3_000, seed=1)

