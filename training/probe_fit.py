"""Fitting the attribute probe (``refind.models.attribute_probe``): logistic read-outs of the
OMZ 0230 attributes and clothing colours from gallery vectors, with soft targets, the L2
strength chosen by k-fold cross-validation grouped by identity (held-out log-loss). Training
only: torch's LBFGS does the fitting.

Example:
    >>> probe, report = fit_probe(vectors, attrs, identities)                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from refind.models.attribute_probe import PROBE_NAMES, AttributeProbe
from refind.models.base import PersonAttributes
from refind.models.colours import colour_onehots

log = logging.getLogger(__name__)

MIN_POSITIVES = 10  # a read-out seen fewer times than this in training is left out (zero row)
L2_GRID: tuple[float, ...] = (1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3)


def probe_targets(attrs: PersonAttributes) -> np.ndarray:
    """(n, K) soft targets: the attribute probabilities, then top and bottom colour indicators."""
    colours = colour_onehots(attrs.top_colour, attrs.bottom_colour)  # (n, 2 * colours)
    return np.concatenate([attrs.probs.astype(np.float32), colours], axis=1)  # (n, K)


def _fit(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regressions, one per column of y (n, K) in [0, 1], on x (n, D): full-batch L-BFGS
    of the mean binary cross-entropy + l2 * |W|^2 (the bias is not penalised)."""
    w = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)  # (K, D)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)  # (K,)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w.T + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _check_rows(vectors: np.ndarray, attrs: PersonAttributes, n_groups: int) -> None:
    shape = np.shape(vectors)
    if len(shape) != 2 or not shape[0] or shape[0] != len(attrs) or n_groups != len(attrs):
        raise ValueError(
            f"attribute probe: {shape} vectors, {len(attrs)} attribute rows and {n_groups} "
            "groups must have one row per crop, at least one"
        )


def fit_at(vectors: np.ndarray, attrs: PersonAttributes, l2: float) -> AttributeProbe:
    """The probe fitted on all of (n, D) ``vectors`` and their attributes at L2 strength ``l2``;
    read-outs with fewer than ``MIN_POSITIVES`` positive rows get a zero weight row, so a text
    naming only them gives no query vector."""
    _check_rows(vectors, attrs, len(attrs))
    x = torch.from_numpy(np.asarray(vectors, np.float32)).double()
    y = probe_targets(attrs)
    w, b = _fit(x, torch.from_numpy(y).double(), l2)
    rare = (y > 0.5).sum(0) < MIN_POSITIVES  # too few examples to read: no query may use it
    w[torch.from_numpy(rare)] = 0.0
    return AttributeProbe(w.float().numpy(), b.float().numpy(), l2)


def grouped_folds(groups: Sequence[str], k: int, seed: int = 0) -> list[np.ndarray]:
    """k boolean masks (n,) of held-out rows; every group (identity) in exactly one fold."""
    keys = sorted(set(groups))
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, not {k}")
    if len(keys) < k:
        raise ValueError(f"{len(keys)} identities cannot be split into {k} folds")
    order = np.random.default_rng(seed).permutation(len(keys))
    fold_of = {keys[j]: rank % k for rank, j in enumerate(order)}
    g = np.array([fold_of[x] for x in groups])
    return [g == f for f in range(k)]


def fit_probe(
    vectors: np.ndarray,
    attrs: PersonAttributes,
    groups: Sequence[str],
    l2_grid: Sequence[float] = L2_GRID,
    folds: int = 5,
    seed: int = 0,
) -> tuple[AttributeProbe, dict[str, object]]:
    """Fit the probe on (n, D) gallery vectors and the attribute model's outputs on the same crops.

    groups: (n,) identity of each crop (augmented views share their crop's); the L2 strength with
    the lowest held-out log-loss over ``folds`` identity-grouped folds is refitted on all rows.
    Returns the probe and a report: the CV log-loss per L2, the chosen one, and the held-out
    accuracy of each read-out at that L2 (a read-out is right when its logit is on the side of
    0 its target is on of 0.5)."""
    _check_rows(vectors, attrs, len(groups))
    vectors = np.asarray(vectors, np.float32)
    x = torch.from_numpy(vectors).double()
    y = torch.from_numpy(probe_targets(attrs)).double()
    masks = [torch.from_numpy(m) for m in grouped_folds(groups, folds, seed)]
    cv: dict[float, float] = {}
    right: dict[float, torch.Tensor] = {}
    for l2 in l2_grid:
        losses, hits = [], torch.zeros(y.shape[1], dtype=torch.float64)
        for held in masks:
            w, b = _fit(x[~held], y[~held], l2)
            z = x[held] @ w.T + b  # (h, K)
            losses.append(F.binary_cross_entropy_with_logits(z, y[held]).item() * int(held.sum()))
            hits += ((z > 0) == (y[held] > 0.5)).double().sum(0)
        cv[l2] = sum(losses) / len(x)
        right[l2] = hits / len(x)
        log.info("attribute probe: l2 %.0e, held-out log-loss %.4f", l2, cv[l2])
    best = min(cv, key=cv.__getitem__)
    probe = fit_at(vectors, attrs, best)
    report = {
        "n_crops": len(x), "n_identities": len(set(groups)), "folds": folds,
        "cv_log_loss": {f"{k:g}": round(v, 5) for k, v in cv.items()}, "l2": best,
        "cv_accuracy": dict(zip(PROBE_NAMES, right[best].numpy().round(4).tolist(), strict=True)),
        "positives": dict(zip(PROBE_NAMES, (y > 0.5).sum(0).tolist(), strict=True)),
    }  # fmt: skip
    return probe, report
