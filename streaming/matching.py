"""Box matching for tracking: IoU between box sets and a thresholded linear assignment."""

from __future__ import annotations

import lap
import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) xyxy with every box in ``b`` (m, 4): (n, m) float64."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (n, m, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)  # (n, m)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def assign(cost: np.ndarray, max_cost: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Minimum-cost matching keeping pairs with cost <= max_cost: (pairs, free rows, free cols)."""
    n, m = cost.shape
    if n == 0 or m == 0:
        return [], list(range(n)), list(range(m))
    _, row_to_col, col_to_row = lap.lapjv(cost, extend_cost=True, cost_limit=max_cost + 1e-9)
    pairs = [(int(r), int(c)) for r, c in enumerate(row_to_col) if c >= 0]
    return (
        pairs,
        [r for r in range(n) if row_to_col[r] < 0],
        [c for c in range(m) if col_to_row[c] < 0],
    )
