"""Attribute probe: linear read-outs of person attributes and clothing colours from gallery
vectors, so a text query becomes a vector in the gallery's own space.

    gallery vector g (D,) --W (K, D), b (K,)--> K logits: the 8 OMZ 0230 attributes, then
        "top:<colour>" and "bottom:<colour>" for the 11 colour names (K = 30)
    text --refind.models.text_attributes.parse_attributes--> signs s (K,): +1 asked for, -1 asked
        against ("without a bag"), 0 not named
    query vector q = normalise(W^T s), so q . g = s . (W g) / |W^T s|: for one query the gallery
        ranks by the sum of the log-odds of what the text names (a naive-Bayes conjunction);
        s . b is the same for every crop and drops out of the ranking.

The read-outs are logistic regressions with soft targets (the attribute model's probabilities;
one-vs-rest colour indicators) fitted on gallery vectors of crops the attribute model described
(``refind.training.probe_fit.fit_probe``). The L2 strength is chosen by k-fold cross-validation grouped by identity
(held-out log-loss): never on the people the probe is evaluated on. The probe is identity-free:
it learns what a red top or a backpack looks like in the gallery space, not who anyone is, so it
needs no labelled identities and carries over to unseen people as far as the attribute model does.

A photo query with attribute text (task attribute_text, "same person, now wearing a red top")
is ``normalise(photo + lambda * text vector)`` (``compose``): identity from the photo, clothes
from the text. lambda is chosen by cross-validation over training identities
(``refind.training.probe``), 0 when no value helps.

Not named by a text, or unknown to the parser ("someone suspicious"), a text gives no vector
(``query_vector`` returns None) and the caller falls back to its own text path.

Example:
    >>> vectors, attrs = embedder(crops).vectors, attribute_model(crops)         # doctest: +SKIP
    >>> probe, report = fit_probe(vectors, attrs, identities)                   # doctest: +SKIP
    >>> q = probe.query_vector("a woman in a red top with a backpack")          # doctest: +SKIP
    >>> scores = gallery_vectors @ q                                            # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from refind.models.base import ATTRIBUTE_NAMES, ModelInputError
from refind.models.colours import COLOUR_NAMES
from refind.models.text_attributes import WantedAttributes, parse_attributes

log = logging.getLogger(__name__)

PROBE_NAMES: tuple[str, ...] = (
    *ATTRIBUTE_NAMES,
    *(f"top:{c}" for c in COLOUR_NAMES),
    *(f"bottom:{c}" for c in COLOUR_NAMES),
)
TENSOR_PREFIX = "attribute_probe."
IRM_FORMAT = "refind-irm-v1"  # the format of IRM weights files (refind.models.irm.save_head)
IRM_TEACHER = "person-reidentification-retail-0277"  # the backbone when none is stored


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

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays to store beside a model's own (keys under ``TENSOR_PREFIX``)."""
        return {
            f"{TENSOR_PREFIX}weight": np.ascontiguousarray(self.weight, np.float32),
            f"{TENSOR_PREFIX}bias": np.ascontiguousarray(self.bias, np.float32),
            f"{TENSOR_PREFIX}l2": np.array([self.l2], np.float64),
            f"{TENSOR_PREFIX}photo_text_weight": np.array([self.photo_text_weight], np.float64),
        }

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], names: Sequence[str] | None = None
    ) -> AttributeProbe | None:
        """The probe stored by ``to_arrays`` among ``arrays``, or None when there is none.

        names: the read-out names stored with it (None: files written before names were
        stored, read as ``PROBE_NAMES``); a ValueError when they are not this code's."""
        if f"{TENSOR_PREFIX}weight" not in arrays:
            return None
        if names is not None and tuple(names) != PROBE_NAMES:
            raise ValueError(
                f"its read-outs {list(names)[:4]}... are not this version's "
                f"{list(PROBE_NAMES)[:4]}... (refit it with refind train probe)"
            )
        ptw = arrays.get(f"{TENSOR_PREFIX}photo_text_weight")
        return cls(
            weight=np.asarray(arrays[f"{TENSOR_PREFIX}weight"], np.float32),
            bias=np.asarray(arrays[f"{TENSOR_PREFIX}bias"], np.float32),
            l2=float(np.asarray(arrays[f"{TENSOR_PREFIX}l2"]).reshape(-1)[0]),
            photo_text_weight=0.0 if ptw is None else float(np.asarray(ptw).reshape(-1)[0]),
        )


# The output residuals of an IRM head whose image path is the teacher's when all are zero.
_IMAGE_RESIDUALS = ("id_out.weight", "clo_out.weight", "query_id_out.weight",
                    "query_clo_out.weight")


def teacher_probe(path: Path) -> tuple[AttributeProbe, str]:
    """The attribute probe of the IRM weights at ``path`` (``refind.models.irm.save_head``), as
    it reads the teacher's own unit embedding t (an OMZ 0277 gallery), and the teacher's model
    name. Reads the file with numpy: searching a plain gallery by text needs no torch.

    Valid only for weights whose image path is the teacher's (every image output residual zero,
    ``clo_teacher`` the identity): their gallery vector is g = [t, t] / sqrt 2, so
    W g = (W_id + W_clo) t / sqrt 2, exactly (W_id, W_clo: the probe's columns on the id and
    clothes parts). ModelInputError otherwise, or without a probe."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != IRM_FORMAT:
            raise ModelInputError(f"{path} is not a refind IRM head (format {meta.get('format')!r})")
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    try:
        probe = AttributeProbe.from_arrays(arrays, json.loads(meta.get("attribute_probe_names",
                                                                       "null")))
    except (KeyError, ValueError) as err:
        raise ModelInputError(f"{path}: unreadable attribute probe ({err})") from None
    if probe is None:
        raise ModelInputError(f"IRM weights {path} carry no attribute probe")
    clo = arrays["clo_teacher.weight"]
    if any(arrays[k].any() for k in _IMAGE_RESIDUALS) or not np.array_equal(
            clo, np.eye(*clo.shape, dtype=clo.dtype)):
        raise ModelInputError(
            f"IRM weights {path} have a trained image path: their probe reads IRM vectors, not "
            "the teacher's"
        )
    p = int(json.loads(meta["irm_config"])["part_dim"])
    weight = (probe.weight[:, :p] + probe.weight[:, p:]) / math.sqrt(2.0)  # (K, teacher_dim)
    teacher = meta.get("backbone", IRM_TEACHER)
    return replace(probe, weight=np.ascontiguousarray(weight, np.float32)), teacher
