"""Person ReID evaluation: mAP and CMC rank-k of an embedder on query / gallery identity folders.

A folder holds one sub-folder per identity, each with that person's crops (.jpg, .jpeg, .png):

    query/<identity>/<file>.jpg        gallery/<identity>/<file>.jpg

Every query is ranked against the whole gallery by cosine similarity (inner product of unit
vectors). A gallery entry with the same name as the query (``<identity>/<file>``, the path relative
to its folder) is left out of that query's ranking, so a folder used as both query and gallery does
not match each crop with itself. A query with no true match left in the gallery is skipped and
counted in ``n_queries_skipped``.

Example:
    >>> emb = OpenVinoReidEmbedder(OpenVinoReidConfig(), store)        # doctest: +SKIP
    >>> evaluate_reid(Path("reid/query"), Path("reid/gallery"), emb)["mAP"]  # doctest: +SKIP
    0.83
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from refind.models.base import ReidEmbedder

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
RANKS = (1, 5, 10)


def load_identity_folder(directory: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Read ``directory/<identity>/<image>`` into (BGR uint8 images, identities, names).

    Names are ``<identity>/<file name>``; files are returned sorted by identity, then name.
    Hidden entries (starting with ".") are ignored. Raises ValueError naming the path for a missing
    or empty folder, a loose file beside the identity folders, an empty identity folder, or a file
    that is not a decodable image.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"identity folder {directory} does not exist or is not a directory")
    entries = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    if not entries:
        raise ValueError(
            f"identity folder {directory} is empty: expected one sub-folder per identity"
        )
    images: list[np.ndarray] = []
    identities: list[str] = []
    names: list[str] = []
    for entry in entries:
        if not entry.is_dir():
            raise ValueError(
                f"{entry} is a file; {directory} must hold only one sub-folder per identity"
            )
        for path in _identity_files(entry):
            images.append(_read_image(path))
            identities.append(entry.name)
            names.append(f"{entry.name}/{path.name}")
    return images, identities, names


def _identity_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not files:
        raise ValueError(f"identity folder {folder} holds no images")
    return files


def _read_image(path: Path) -> np.ndarray:
    if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(
            f"{path} is not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})"
        )
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ValueError(f"{path} is not a decodable image")
    return image


def reid_metrics(
    q_vecs: np.ndarray,
    q_ids: Sequence[str],
    q_names: Sequence[str],
    g_vecs: np.ndarray,
    g_ids: Sequence[str],
    g_names: Sequence[str],
) -> dict[str, float | int]:
    """mAP and CMC rank-1/5/10 of queries ranked against a gallery by cosine similarity
    (``rank_queries`` then ``QueryRanks.metrics``).

    q_vecs: (nq, d), g_vecs: (ng, d), unit rows. Gallery entries whose name equals the query's
    are left out of its ranking; queries with no true match left are skipped (counted in
    ``n_queries_skipped``). Ties keep gallery order. AP of a query is the mean, over its true
    matches, of the precision at each match's rank; mAP is the mean AP over evaluated queries,
    with a 95 % interval over identities (``mAP_ci95_lo`` / ``_hi``, ``identity_bootstrap_ci``).
    Raises ValueError for mismatched lengths or dims, or when no query can be evaluated.
    """
    return rank_queries(q_vecs, q_ids, q_names, g_vecs, g_ids, g_names).metrics()


@dataclass(frozen=True)
class QueryRanks:
    """How each evaluated query ranked (``rank_queries``; queries without a true match left out).

    Example:
        >>> ranks = rank_queries(q, q_ids, q_names, g, g_ids, g_names)       # doctest: +SKIP
        >>> ranks.metrics()["mAP"], ranks.per_query()["ap"][:2]               # doctest: +SKIP
    """

    names: list[str]  # (nk,) the evaluated queries, in query order
    ids: list[str]  # (nk,)
    ap: np.ndarray  # (nk,) average precision
    first_hit: np.ndarray  # (nk,) 0-based rank of the best true match
    n_skipped: int  # queries with no true match left

    def metrics(self) -> dict[str, float | int]:
        """mAP with its 95 % interval over identities, rank-1/5/10, the query counts."""
        result: dict[str, float | int] = {"mAP": float(self.ap.mean())}
        lo, hi = identity_bootstrap_ci(self.ap, self.ids)
        result |= {"mAP_ci95_lo": lo, "mAP_ci95_hi": hi}
        for k in RANKS:
            result[f"rank{k}"] = float((self.first_hit < k).mean())
        result["n_queries_evaluated"] = len(self.ap)
        result["n_queries_skipped"] = self.n_skipped
        return result

    def per_query(self) -> dict[str, list]:
        """Columns ``names``, ``ids`` and ``ap``, for comparing two models query by query
        (``refind.evaluation.irm.paired_difference``)."""
        return {"names": self.names, "ids": self.ids, "ap": [float(a) for a in self.ap]}


def rank_queries(
    q_vecs: np.ndarray,
    q_ids: Sequence[str],
    q_names: Sequence[str],
    g_vecs: np.ndarray,
    g_ids: Sequence[str],
    g_names: Sequence[str],
) -> QueryRanks:
    """Rank the gallery for each query as ``reid_metrics`` describes; the per-query results."""
    q = _as_matrix(q_vecs, q_ids, q_names, "query")
    g = _as_matrix(g_vecs, g_ids, g_names, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query vectors are {q.shape[1]}-d but gallery vectors are {g.shape[1]}-d")
    q_id, g_id = np.asarray(q_ids, dtype=str), np.asarray(g_ids, dtype=str)
    q_name, g_name = np.asarray(q_names, dtype=str), np.asarray(g_names, dtype=str)

    sim = q @ g.T  # (nq, ng)
    allowed = q_name[:, None] != g_name[None, :]  # (nq, ng) same-name pairs are left out
    sim = np.where(allowed, sim, -np.inf)  # left-out entries sort last and are never counted
    order = np.argsort(-sim, axis=1, kind="stable")  # (nq, ng) best first
    hits = np.take_along_axis((q_id[:, None] == g_id[None, :]) & allowed, order, axis=1)
    keep = hits.any(axis=1)  # (nq,)
    if not keep.any():
        raise ValueError(
            f"none of the {len(q)} queries has a true match in the gallery of {len(g)} "
            f"(query identities {sorted(set(q_id.tolist()))[:10]}...)"
        )
    hits = hits[keep]  # (nk, ng)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)  # (nk, ng)
    return QueryRanks(
        names=q_name[keep].tolist(),
        ids=q_id[keep].tolist(),
        ap=(precision * hits).sum(axis=1) / hits.sum(axis=1),
        first_hit=hits.argmax(axis=1),
        n_skipped=int((~keep).sum()),
    )


def identity_bootstrap_ci(
    values: np.ndarray, ids: Sequence[str], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean of per-query ``values`` (n,) when the *identities* are
    resampled with replacement (a cluster bootstrap: one person's queries are not independent,
    so resampling queries alone would give too narrow an interval). Seeded: the same inputs
    give the same interval. With one identity the interval is that identity's mean, twice."""
    values = np.asarray(values, np.float64)
    groups, inverse = np.unique(np.asarray(ids, dtype=str), return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(groups))  # (g,)
    counts = np.bincount(inverse, minlength=len(groups)).astype(np.float64)  # (g,)
    picks = np.random.default_rng(seed).integers(0, len(groups), (n_boot, len(groups)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)  # (n_boot,)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _as_matrix(vecs: np.ndarray, ids: Sequence[str], names: Sequence[str], what: str) -> np.ndarray:
    mat = np.asarray(vecs, dtype=np.float32)
    if mat.ndim != 2 or mat.shape[0] == 0:
        raise ValueError(f"{what} vectors must be a non-empty (n, d) array, got shape {mat.shape}")
    if not len(ids) == len(names) == mat.shape[0]:
        raise ValueError(
            f"{what}: {mat.shape[0]} vectors but {len(ids)} identities and {len(names)} names"
        )
    return mat


def evaluate_reid(query_dir: Path, gallery_dir: Path, embedder: ReidEmbedder) -> dict:
    """Embed two identity folders with ``embedder`` and score the gallery ranking of each query.

    Returns mAP (and its 95 % interval over identities), rank1, rank5, rank10, n_query,
    n_gallery, n_identities (distinct identities in query and gallery together),
    n_queries_skipped, model_id and crops_per_s (embedding only).
    """
    q_images, q_ids, q_names = load_identity_folder(query_dir)
    g_images, g_ids, g_names = load_identity_folder(gallery_dir)
    start = time.perf_counter()
    embeddings = embedder([*q_images, *g_images])
    elapsed = time.perf_counter() - start
    vecs = embeddings.vectors
    if vecs.shape[0] != len(q_images) + len(g_images):
        raise ValueError(
            f"embedder {embeddings.model_id} returned {vecs.shape[0]} vectors for "
            f"{len(q_images) + len(g_images)} crops"
        )
    metrics = reid_metrics(
        vecs[: len(q_images)], q_ids, q_names, vecs[len(q_images) :], g_ids, g_names
    )
    log.info(
        "reid eval %s: %d query, %d gallery crops, mAP %.3f",
        embeddings.model_id,
        len(q_images),
        len(g_images),
        metrics["mAP"],
    )
    return {
        "mAP": metrics["mAP"],
        "mAP_ci95_lo": metrics["mAP_ci95_lo"],
        "mAP_ci95_hi": metrics["mAP_ci95_hi"],
        "rank1": metrics["rank1"],
        "rank5": metrics["rank5"],
        "rank10": metrics["rank10"],
        "n_query": len(q_images),
        "n_gallery": len(g_images),
        "n_identities": len(set(q_ids) | set(g_ids)),
        "n_queries_skipped": metrics["n_queries_skipped"],
        "model_id": embeddings.model_id,
        "crops_per_s": len(vecs) / elapsed if elapsed > 0 else float("inf"),
    }
