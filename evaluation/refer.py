"""Referring-expression evaluation with HumanRef's metrics (``refind eval refer``).

Annotations: JSON lines ``{"image": path, "boxes": [[x1, y1, x2, y2], ...], "expression": str,
"targets": [box indices]}``; an empty ``targets`` means nobody matches. A relative ``image`` is
read relative to the annotation file.

Metrics follow HumanRef's ``metric/recall_precision_densityf1.py`` (IDEA-Research/HumanRef on
Hugging Face; "Referring to Any Person", Jiang et al., arXiv 2503.08507):

- per expression with targets and per IoU threshold t in 0.50, 0.55, ..., 0.95: each target box
  in turn takes the unused predicted box of highest IoU >= t (greedy, one-to-one);
  recall = matches / targets, precision = matches / predictions (both 0 when nothing is
  predicted); DensityF1 = F1 x min(1, targets / predictions) (0 when nothing is predicted; the
  paper writes the penalty as a ratio of densities over the image's people, which cancels);
- each metric is averaged over the 10 thresholds, then over expressions;
- expressions with no target are left out of those three and scored by the rejection rate: the
  fraction of them for which nothing at all is predicted.

Candidate boxes are the annotation's boxes (``boxes="gt"``: a chosen box has IoU 1 with its
target, so the IoU sweep changes nothing) or the configured detector's person boxes
(``boxes="detector"``: the realistic setting, where targets are matched by IoU).

Example:
    >>> expression_metrics([[0, 0, 10, 10]], [[0, 0, 10, 10]])               # doctest: +SKIP
    {'recall': 1.0, 'precision': 1.0, 'density_f1': 1.0}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import ArrayLike

from refind.models.base import Region, Reranker, RerankResult
from refind.streaming.config import PlaceConfig
from refind.streaming.matching import iou_matrix
from refind.streaming.motion import TrackMotion, track_motion

log = logging.getLogger(__name__)

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass(frozen=True)
class ReferItem:
    """One annotated expression: image path, (n, 4) float32 boxes, target indices."""

    image: Path
    boxes: np.ndarray
    expression: str
    targets: tuple[int, ...]
    line: int
    extra: dict


def read_annotations(path: Path) -> list[ReferItem]:
    """Parse and check an annotation file; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotations not found: {path}")
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            image, boxes, expr = rec["image"], rec["boxes"], rec["expression"]
            targets = [int(t) for t in rec["targets"]]
            arr = np.asarray(boxes, np.float32).reshape(-1, 4) if boxes else np.zeros((0, 4))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}:{number}: not a valid annotation line "
                             f"(need image, boxes, expression, targets): {err}") from None
        if len(np.asarray(boxes).reshape(-1)) != 4 * len(arr) or (arr[:, 2:] <= arr[:, :2]).any():
            raise ValueError(f"{path}:{number}: boxes must be [[x1, y1, x2, y2], ...] with x2 > x1 "
                             "and y2 > y1")
        bad = [t for t in targets if not 0 <= t < len(arr)]
        if bad:
            raise ValueError(f"{path}:{number}: target indices {bad} out of range for "
                             f"{len(arr)} boxes")
        img = Path(image) if Path(image).is_absolute() else path.parent / image
        if not img.is_file():
            raise FileNotFoundError(f"{path}:{number}: image not found: {img}")
        extra = {k: v for k, v in rec.items() if k not in ("image", "boxes", "expression", "targets")}
        items.append(ReferItem(img, arr.astype(np.float32), str(expr), tuple(targets), number, extra))
    if not items:
        raise ValueError(f"{path}: no annotations")
    return items


def _recall_precision(targets: np.ndarray, preds: np.ndarray, thr: float) -> tuple[float, float]:
    if len(preds) == 0:
        return 0.0, 0.0
    iou = iou_matrix(np.asarray(targets).reshape(-1, 4), np.asarray(preds).reshape(-1, 4))  # (t, p)
    used: set[int] = set()
    matches = 0
    for row in iou:  # each target in turn takes its best unused prediction (HumanRef's order)
        best, best_iou = -1, 0.0
        for j, v in enumerate(row):
            if j not in used and v >= thr and v > best_iou:
                best, best_iou = j, v
        if best >= 0:
            used.add(best)
            matches += 1
    return matches / len(targets), matches / len(preds)


def expression_metrics(targets: ArrayLike, preds: ArrayLike) -> dict[str, float]:
    """Recall, precision and DensityF1 of one expression with targets, averaged over IoU 0.5:0.95."""
    t = np.asarray(targets, np.float64).reshape(-1, 4)
    p = np.asarray(preds, np.float64).reshape(-1, 4)
    if len(t) == 0:
        raise ValueError("expression_metrics is for expressions with targets; use rejection")
    rs, ps, fs = [], [], []
    for thr in IOU_THRESHOLDS:
        r, pr = _recall_precision(t, p, thr)
        f1 = 2 * r * pr / (r + pr) if r + pr > 0 else 0.0
        fs.append(f1 * min(1.0, len(t) / len(p)) if len(p) else 0.0)
        rs.append(r)
        ps.append(pr)
    return {"recall": float(np.mean(rs)), "precision": float(np.mean(ps)),
            "density_f1": float(np.mean(fs))}


def summarise(pairs: Sequence[tuple[ArrayLike, ArrayLike]]) -> dict[str, float | int]:
    """HumanRef metrics over (target boxes, predicted boxes) pairs, one per expression."""
    boxes = [(np.asarray(t).reshape(-1, 4), np.asarray(p).reshape(-1, 4)) for t, p in pairs]
    scored = [expression_metrics(t, p) for t, p in boxes if len(t)]
    rejections = [len(p) == 0 for t, p in boxes if not len(t)]
    out: dict[str, float | int] = {
        k: float(np.mean([m[k] for m in scored])) if scored else float("nan")
        for k in ("recall", "precision", "density_f1")
    }
    out["rejection_rate"] = float(np.mean(rejections)) if rejections else float("nan")
    out["n_expressions"] = len(pairs)
    out["n_no_target"] = len(rejections)
    return out


# --- re-ranker options -------------------------------------------------------------------------

class KeepAll:
    """"none": no re-ranking keeps every candidate (HumanRef's "all persons" reference row)."""

    name = "none"

    def __call__(self, expression: str, regions: Sequence[Region]) -> RerankResult:
        n = len(regions)
        return RerankResult(np.ones(n, np.float32), np.ones(n, bool), ("kept: no re-ranking",) * n)


# --- running an option over the annotations ---------------------------------------------------

def _regions(image: np.ndarray, boxes: np.ndarray,
             motions: Sequence[TrackMotion | None] | None = None,
             places: tuple[PlaceConfig, ...] = ()) -> list[Region]:
    h, w = image.shape[:2]
    out = []
    for k, b in enumerate(boxes):
        x1, y1 = max(int(np.floor(b[0])), 0), max(int(np.floor(b[1])), 0)
        x2, y2 = min(int(np.ceil(b[2])), w), min(int(np.ceil(b[3])), h)
        x2, y2 = max(x2, x1 + 2), max(y2, y1 + 2)
        box = (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
        out.append(Region(image[y1:y2, x1:x2], box, (w, h), 0,
                          motions[k] if motions is not None else None, places=places))
    return out


def split_items(items: Sequence[ReferItem], split: str) -> list[ReferItem]:
    """``all``, or alternate annotated frames in frame order: ``even`` keeps the 1st, 3rd, ...
    frame (development: choices may be tuned on it), ``odd`` the 2nd, 4th, ... (held out).
    A frame is the line's ``frame`` field, else its image."""
    if split == "all":
        return list(items)
    if split not in ("even", "odd"):
        raise ValueError(f"split must be all, even or odd, got {split!r}")
    key = [str(it.extra.get("frame", it.image)) for it in items]
    frames = sorted(set(key), key=lambda f: (len(f), f))
    keep = set(frames[0 if split == "even" else 1 :: 2])
    return [it for it, k in zip(items, key, strict=True) if k in keep]


def track_motions(video: Path, cfg: object, window_s: float = 1.2, progress: bool = False,
                  ) -> Callable[[ReferItem, np.ndarray], list[TrackMotion | None]]:
    """Motion of each candidate from refind's own tracks of ``video``: the confirmed track whose
    box overlaps the candidate most (IoU >= 0.3) at the item's ``frame`` (1-based), over
    ``window_s`` seconds either side. Tracking runs once, with the configured detector and
    tracker (``refind.evaluation.mot.track_video``)."""
    from refind.evaluation.mot import track_video
    from refind.streaming.sources import VideoSource

    hyp, _ = track_video(video, cfg, progress=progress)  # type: ignore[arg-type]
    source = VideoSource(video, camera=video.stem)
    fps = source.frame_rate()
    frame_wh = source.frame_size()
    if not fps:
        raise ValueError(f"{video}: its header gives no frame rate, so motion cannot be timed")
    half = max(round(window_s * fps), 2)

    def run(item: ReferItem, boxes: np.ndarray) -> list[TrackMotion | None]:
        frame = int(item.extra.get("frame", 0))
        here = hyp.frame == frame
        if frame <= 0 or not here.any() or not len(boxes):
            return [None] * len(boxes)
        iou = iou_matrix(np.asarray(boxes, np.float64), hyp.xyxy[here])  # (m, k)
        ids = hyp.track_id[here]
        out: list[TrackMotion | None] = []
        for row in iou:
            j = int(np.argmax(row))
            if row[j] < 0.3:
                out.append(None)
                continue
            near = (hyp.track_id == ids[j]) & (np.abs(hyp.frame - frame) <= half)
            order = np.argsort(hyp.frame[near])
            m = track_motion(hyp.frame[near][order] / fps, hyp.xyxy[near][order])
            # the frame's size for where the window began and ended, not for the edges: a
            # window's ends are not where the track entered or left the view
            out.append(m if m is None else replace(m, frame_wh=frame_wh))
        return out

    return run


def evaluate_refer(
    items: Sequence[ReferItem],
    rerankers: dict[str, Reranker],
    candidates: Callable[[np.ndarray, ReferItem], np.ndarray] | None = None,
    progress: bool = False,
    motions: Callable[[ReferItem, np.ndarray], list[TrackMotion | None]] | None = None,
    scores_out: dict[str, list[tuple[float, int]]] | None = None,
    places: tuple[PlaceConfig, ...] = (),
) -> dict[str, dict[str, object]]:
    """HumanRef metrics per re-ranker; ``candidates(image, item)`` gives the (m, 4) boxes to choose
    from (default: the annotation's boxes), ``motions(item, boxes)`` their tracks' motion
    (``track_motions``; default: unknown). Where a re-ranker located the part an expression is
    about, ``parts`` lists it per line for the selected candidates. ``ece`` is the expected
    calibration error of the scores as probabilities that a candidate is a target;
    ``scores_out``, when given, receives every (score, is target) pair per re-ranker;
    ``places``: the named places of the camera the frames come from."""
    from tqdm import tqdm

    images: dict[Path, np.ndarray] = {}
    labelled = scores_out if scores_out is not None else {}
    for name in rerankers:
        labelled[name] = []
    parts: dict[str, list[dict[str, object]]] = {k: [] for k in rerankers}
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in rerankers}
    by_kind: dict[str, dict[str, list]] = {k: {} for k in rerankers}
    for item in tqdm(items, desc="eval refer", unit="expr", disable=not progress):
        if item.image not in images:
            img = cv2.imread(str(item.image))
            if img is None:
                raise ValueError(f"line {item.line}: {item.image} is not an image")
            images[item.image] = img
        image = images[item.image]
        boxes = item.boxes if candidates is None else candidates(image, item)
        regions = _regions(image, boxes, motions(item, boxes) if motions else None, places)
        target_boxes = item.boxes[list(item.targets)]
        for name, rr in rerankers.items():
            result = rr(item.expression, regions) if regions else None
            chosen = result.selected if result is not None else np.zeros(0, bool)
            if result is not None and result.parts:  # the text was about a part: where it is
                parts[name].append({"line": item.line, "parts": [
                    result.parts[i].to_json() for i in np.nonzero(chosen)[0]
                    if result.parts[i] is not None]})
            pair = (target_boxes, boxes[np.asarray(chosen, bool)])
            pairs[name].append(pair)
            if result is not None:  # each candidate's score against whether it is a target
                labelled[name] += zip(result.scores.tolist(),
                                      is_target(boxes, target_boxes).tolist(), strict=True)
            by_kind[name].setdefault(str(item.extra.get("kind", "all")), []).append(pair)
    return {
        name: summarise(p) | {"by_kind": {k: summarise(v) for k, v in sorted(by_kind[name].items())}}
        | ({"parts": parts[name]} if parts[name] else {})
        | {"ece": expected_calibration_error(labelled[name])}
        for name, p in pairs.items()
    }


def is_target(boxes: np.ndarray, targets: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """(m,) int: 1 for a candidate box that overlaps a target box (IoU >= ``min_iou``)."""
    if not len(boxes) or not len(targets):
        return np.zeros(len(boxes), np.int64)
    iou = iou_matrix(np.asarray(boxes, np.float64).reshape(-1, 4),
                     np.asarray(targets, np.float64).reshape(-1, 4))  # (m, t)
    return (iou.max(axis=1) >= min_iou).astype(np.int64)


def expected_calibration_error(labelled: Sequence[tuple[float, int]], bins: int = 10) -> float:
    """Mean |score - share of targets| over ``bins`` equal score bins, weighted by their size
    (NaN when empty)."""
    if not labelled:
        return float("nan")
    s = np.array([x for x, _ in labelled], np.float64)
    y = np.array([t for _, t in labelled], np.float64)
    idx = np.clip((s * bins).astype(int), 0, bins - 1)
    return float(sum(abs(s[idx == b].mean() - y[idx == b].mean()) * (idx == b).sum()
                     for b in range(bins) if (idx == b).any()) / len(s))


def fit_platt(labelled: Sequence[tuple[float, int]]) -> tuple[float, float]:
    """Platt scaling: (a, b) with ``sigmoid(a * logit(score) + b)`` the probability that a
    candidate is a target, by Newton's method on the log loss."""
    s = np.clip(np.array([x for x, _ in labelled], np.float64), 1e-3, 1 - 1e-3)
    y = np.array([t for _, t in labelled], np.float64)
    x = np.log(s / (1 - s))

    def loss(ab: np.ndarray) -> float:
        z = ab[0] * x + ab[1]
        return float(np.sum(np.logaddexp(0.0, z) - y * z))

    ab = np.array([1.0, 0.0])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(ab[0] * x + ab[1])))
        grad = np.array([np.sum((p - y) * x), np.sum(p - y)])
        w = p * (1 - p)
        hess = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]])
        step = np.linalg.solve(hess + 1e-6 * np.eye(2), grad)
        t, before = 1.0, loss(ab)
        while t > 1e-4 and loss(ab - t * step) > before:  # a full Newton step can overshoot
            t /= 2
        ab = ab - t * step
        if np.abs(t * step).max() < 1e-8:
            break
    return float(ab[0]), float(ab[1])


def detector_candidates(detector: object, min_conf: float = 0.3,
                        ) -> Callable[[np.ndarray, ReferItem], np.ndarray]:
    """The detector's person boxes at ``min_conf`` as candidates, cached per image."""
    cache: dict[Path, np.ndarray] = {}

    def run(image: np.ndarray, item: ReferItem) -> np.ndarray:
        if item.image not in cache:
            det = detector([image])[0]  # type: ignore[operator]
            keep = (det.confidence >= min_conf) & (det.class_id == 0)
            cache[item.image] = det.xyxy[keep].astype(np.float32)
        return cache[item.image]

    return run


def format_table(results: dict[str, dict]) -> str:
    """Overall figures per re-ranker, then DensityF1 (rejection for ``none``) per kind."""
    rows = [f"{'re-ranker':<12} {'recall':>7} {'precision':>9} {'DensityF1':>9} {'rejection':>9}"]
    for name, m in results.items():
        rows.append(f"{name:<12} {m['recall']:>7.3f} {m['precision']:>9.3f} "
                    f"{m['density_f1']:>9.3f} {m['rejection_rate']:>9.3f}")
    kinds = sorted({k for m in results.values() for k in m.get("by_kind", {})})
    if len(kinds) > 1:
        rows.append("")
        rows.append(f"{'by kind':<12} " + " ".join(f"{k:>10}" for k in kinds))
        for name, m in results.items():
            cells = []
            for k in kinds:
                km = m["by_kind"].get(k, {})
                v = km.get("rejection_rate") if km.get("n_no_target") == km.get(
                    "n_expressions") else km.get("density_f1")
                cells.append(f"{v:>10.3f}" if v is not None else f"{'-':>10}")
            rows.append(f"{name:<12} " + " ".join(cells))
    return "\n".join(rows)
