"""Clip-level search evaluation (``refind eval search``): does the real search find the people a
query describes anywhere in a clip, and does it say "nobody" when nobody matches?

Queries: JSON lines ``{"text": str, "identities": [ground-truth ids], "kind": str}``; empty
``identities`` means nobody in the clip matches. Each stored tracklet is mapped to the
ground-truth identity its crops overlap most (IoU >= 0.5 at the crop's frame, a majority of its
crops; None when no identity wins), and each query's answer is judged over identities:

- the ranking: every tracklet the search scored, best first, read as the order in which
  identities first appear (a tracklet of no identity is a wrong identity of its own).
  ``recall_at_k`` is the share of the query's identities among the first k identities, over
  ``min(k, n_targets)`` (for one target: was it in the first k); ``map`` is the average
  precision of that identity ranking;
- the answer refind itself selects (the hits it returns): precision and recall over
  identities, F1, and DensityF1 = F1 x min(1, n_targets / n_selected) as in HumanRef; a query
  matching nobody is scored by ``rejection_rate`` (nothing selected) instead.

Example:
    >>> identity_metrics([3, None, 5], [3], {3, 5})["recall_at_1"]
    1.0
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refind.evaluation.mot_metrics import MotBoxes
from refind.streaming.matching import iou_matrix
from refind.streaming.records import CropRecord


@dataclass(frozen=True)
class ClipQuery:
    """One clip-level query: its text, the ground-truth identities that match, its kind."""

    text: str
    identities: tuple[int, ...]
    kind: str
    line: int


def read_queries(path: Path) -> list[ClipQuery]:
    """Parse and check a query file; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"queries not found: {path}")
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            text = str(rec["text"]).strip()
            ids = tuple(int(i) for i in rec["identities"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}:{number}: not a valid query line (need text and "
                             f"identities): {err}") from None
        if not text:
            raise ValueError(f"{path}:{number}: empty text")
        out.append(ClipQuery(text, ids, str(rec.get("kind", "all")), number))
    if not out:
        raise ValueError(f"{path}: no queries")
    return out


def track_identities(
    crops: Mapping[tuple[str, int], Sequence[CropRecord]], gt: MotBoxes, min_iou: float = 0.5,
) -> dict[tuple[str, int], int | None]:
    """The ground-truth identity of each tracklet: the one most of its crops overlap
    (IoU >= ``min_iou`` at the crop's frame; MOT frames are 1-based), None when none does."""
    out: dict[tuple[str, int], int | None] = {}
    for key, records in crops.items():
        votes: Counter[int] = Counter()
        for rec in records:
            here = gt.frame == rec.frame_index + 1
            if not here.any():
                continue
            iou = iou_matrix(np.asarray([rec.xyxy], np.float64), gt.xyxy[here])[0]  # (k,)
            j = int(np.argmax(iou))
            if iou[j] >= min_iou:
                votes[int(gt.track_id[here][j])] += 1
        best = votes.most_common(1)
        out[key] = best[0][0] if best and 2 * best[0][1] >= len(records) else None
    return out


def identity_metrics(ranking: Sequence[int | None], selected: Sequence[int | None],
                     targets: set[int]) -> dict[str, float]:
    """Metrics of one query (module docstring) from the identities of its ranked tracklets
    and of the tracklets it selected (None: a tracklet of no identity)."""
    order: list[object] = []
    for k, ident in enumerate(ranking):
        key = ident if ident is not None else ("none", k)
        if key not in order:
            order.append(key)
    out: dict[str, float] = {}
    if targets:
        for k in (1, 5):
            out[f"recall_at_{k}"] = len(targets & set(order[:k])) / min(k, len(targets))
        hits, precisions = 0, []
        for rank, key in enumerate(order, 1):
            if key in targets:
                hits += 1
                precisions.append(hits / rank)
        out["map"] = float(np.sum(precisions) / len(targets))
    picked = {ident if ident is not None else ("none", k) for k, ident in enumerate(selected)}
    if not targets:
        out["rejected"] = float(not picked)
        return out
    right = len(targets & picked)
    precision = right / len(picked) if picked else 0.0
    recall = right / len(targets)
    f1 = 2 * precision * recall / (precision + recall) if right else 0.0
    out |= {"precision": precision, "recall": recall,
            "density_f1": f1 * min(1.0, len(targets) / len(picked)) if picked else 0.0}
    return out


def summarise(rows: Sequence[tuple[ClipQuery, dict[str, float]]]) -> dict[str, object]:
    """Means over queries (each metric over the queries that have it), overall and per kind."""
    def mean(items: Sequence[dict[str, float]]) -> dict[str, float | int]:
        keys = ("recall_at_1", "recall_at_5", "map", "precision", "recall", "density_f1")
        out: dict[str, float | int] = {
            k: float(np.mean([m[k] for m in items if k in m]))
            if any(k in m for m in items) else float("nan") for k in keys}
        rejected = [m["rejected"] for m in items if "rejected" in m]
        out["rejection_rate"] = float(np.mean(rejected)) if rejected else float("nan")
        out["n_queries"] = len(items)
        return out

    kinds = sorted({q.kind for q, _ in rows})
    return mean([m for _, m in rows]) | {
        "by_kind": {k: mean([m for q, m in rows if q.kind == k]) for k in kinds}}


def format_table(result: Mapping[str, object]) -> str:
    """One line overall, one per kind."""
    keys = ("recall_at_1", "recall_at_5", "map", "density_f1", "rejection_rate")
    rows = [f"{'kind':<12} {'n':>3} " + " ".join(f"{k:>14}" for k in keys)]
    parts = [("all", result), *result["by_kind"].items()]  # type: ignore[union-attr]
    for name, m in parts:
        cells = " ".join(f"{m[k]:>14.3f}" if m[k] == m[k] else f"{'-':>14}" for k in keys)
        rows.append(f"{name:<12} {m['n_queries']:>3} {cells}")
    return "\n".join(rows)
