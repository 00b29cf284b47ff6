"""Attribute probe: linear read-outs of person attributes and clothing colours from gallery
vectors, so a text query becomes a vector in the gallery's own space.

    gallery vector g (D,) --W (K, D), b (K,)--> K logits: the 8 OMZ 0230 attributes, then
        "top:<colour>" and "bottom:<colour>" for the 11 colour names (K = 30)
    text --models.text_attributes.parse_attributes--> signs s (K,): +1 asked for, -1 asked
        against ("without a bag"), 0 not named
    query vector q = normalise(W^T s), so q . g = s . (W g) / |W^T s|: for one query the gallery
        ranks by the sum of the log-odds of what the text names (a naive-Bayes conjunction);
        s . b is the same for every crop and drops out of the ranking.

The read-outs are logistic regressions with soft targets (the attribute model's probabilities;
one-vs-rest colour indicators) fitted on gallery vectors of crops the attribute model described
(``fit_probe``). The L2 strength is chosen by k-fold cross-validation grouped by identity
(held-out log-loss): never on the people the probe is evaluated on. The probe is identity-free:
it learns what a red top or a backpack looks like in the gallery space, not who anyone is, so it
needs no labelled identities and carries over to unseen people as far as the attribute model does.

A photo query with attribute text (task attribute_text, "same person, now wearing a red top")
is ``normalise(photo + lambda * text vector)`` (``compose``): identity from the photo, clothes
from the text. lambda is chosen by cross-validation over training identities
(``models.train_probe``), 0 when no value helps.

Not named by a text, or unknown to the parser ("someone suspicious"), a text gives no vector
(``query_vector`` returns None) and the caller falls back to its own text path.

Example:
    >>> vectors, attrs = embedder(crops).vectors, attribute_model(crops)         # doctest: +SKIP
    >>> probe, report = fit_probe(vectors, attrs, identities)                   # doctest: +SKIP
    >>> q = probe.query_vector("a woman in a red top with a backpack")          # doctest: +SKIP
    >>> scores = gallery_vectors @ q                                            # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.base import ATTRIBUTE_NAMES, PersonAttributes
from models.colours import COLOUR_NAMES, colour_onehots
from models.text_attributes import WantedAttributes, parse_attributes

log = logging.getLogger(__name__)

PROBE_NAMES: tuple[str, ...] = (
    *ATTRIBUTE_NAMES,
    *(f"top:{c}" for c in COLOUR_NAMES),
    *(f"bottom:{c}" for c in COLOUR_NAMES),
)
MIN_POSITIVES = 10  # a read-out seen fewer times than this in training is left out (zero row)
L2_GRID: tuple[float, ...] = (1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
TENSOR_PREFIX = "attribute_probe."


@dataclass(frozen=True)
class AttributeProbe:
    """Read-outs ``names`` (K,) from D-d gallery vectors: weight (K, D), bias (K,) float32;
    ``l2`` the regularisation it was fitted with."""

    weight: np.ndarray
    bias: np.ndarray
    l2: float
    names: tuple[str, ...] = PROBE_NAMES
    photo_text_weight: float = 0.0  # lambda of ``compose``; 0: text does not change photo queries

    def __post_init__(self) -> None:
        k = len(self.names)
        if self.weight.ndim != 2 or self.weight.shape[0] != k or self.bias.shape != (k,):
            raise ValueError(
                f"AttributeProbe: weight {self.weight.shape} and bias {self.bias.shape} do not "
                f"fit {k} read-outs"
            )

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """(n, K) log-odds of every read-out for (n, D) gallery vectors."""
        return np.asarray(vectors, np.float32) @ self.weight.T + self.bias

    def signs(self, wanted: WantedAttributes) -> np.ndarray:
        """(K,) +1 / -1 for each attribute the text asks for / against, +1 for its colours."""
        s = np.zeros(len(self.names), np.float32)
        index = {name: k for k, name in enumerate(self.names)}
        for name, value in wanted.flags:
            s[index[name]] = 1.0 if value else -1.0
        for part, colour in (("top", wanted.top_colour), ("bottom", wanted.bottom_colour)):
            if colour is not None:
                s[index[f"{part}:{colour}"]] = 1.0
        return s

    def query_vector(self, text: str) -> np.ndarray | None:
        """The unit (D,) query vector of ``text``, or None when it names nothing the probe reads."""
        s = self.signs(parse_attributes(text)) * self.weight.any(axis=1)  # unfitted rows: 0
        q = s @ self.weight  # (D,)
        norm = float(np.linalg.norm(q))
        return None if not s.any() or norm == 0.0 else (q / norm).astype(np.float32)

    def compose(self, photo: np.ndarray, text_vector: np.ndarray) -> np.ndarray | None:
        """A photo query edited by attribute text ("now wearing a red top"): unit rows of
        ``photo + photo_text_weight * text_vector`` for (n, D) unit photo query vectors and the
        text's ``query_vector`` (D,); None when the weight is 0."""
        if self.photo_text_weight <= 0.0:
            return None
        photo = np.asarray(photo, np.float32)
        if photo.ndim != 2 or photo.shape[1] != self.dim or np.shape(text_vector) != (self.dim,):
            raise ValueError(
                f"compose: photo {photo.shape} and text vector {np.shape(text_vector)} must be "
                f"(n, {self.dim}) and ({self.dim},)"
            )
        out = photo + self.photo_text_weight * np.asarray(text_vector, np.float32)  # (n, D)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to store beside a model's own (keys under ``TENSOR_PREFIX``)."""
        return {
            f"{TENSOR_PREFIX}weight": torch.from_numpy(np.ascontiguousarray(self.weight)),
            f"{TENSOR_PREFIX}bias": torch.from_numpy(np.ascontiguousarray(self.bias)),
            f"{TENSOR_PREFIX}l2": torch.tensor([self.l2], dtype=torch.float64),
            f"{TENSOR_PREFIX}photo_text_weight": torch.tensor(
                [self.photo_text_weight], dtype=torch.float64
            ),
        }

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], names: Sequence[str] | None = None
    ) -> AttributeProbe | None:
        """The probe stored by ``to_tensors`` among ``tensors``, or None when there is none.

        names: the read-out names stored with it (None: files written before names were
        stored, read as ``PROBE_NAMES``); a ValueError when they are not this code's."""
        if f"{TENSOR_PREFIX}weight" not in tensors:
            return None
        if names is not None and tuple(names) != PROBE_NAMES:
            raise ValueError(
                f"its read-outs {list(names)[:4]}... are not this version's "
                f"{list(PROBE_NAMES)[:4]}... (refit it with refind train probe)"
            )
        return cls(
            weight=tensors[f"{TENSOR_PREFIX}weight"].float().numpy(),
            bias=tensors[f"{TENSOR_PREFIX}bias"].float().numpy(),
            l2=float(tensors[f"{TENSOR_PREFIX}l2"].item()),
            photo_text_weight=float(
                tensors.get(f"{TENSOR_PREFIX}photo_text_weight", torch.zeros(1)).item()
            ),
        )


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
