"""The attribute verifier: a re-ranker (``refind.models.base.Reranker``) that checks
candidates against the attributes and clothing colours a text names.

It reads what the text names (``refind.models.text_attributes.parse_attributes``), runs the OMZ
0230 attribute model on each candidate's crop, and scores agreement::

    score = sum(w_t * a_t) / sum(w_t)        over the terms t the text names

where a_t is the probability the model gives the wanted value (p, or 1 - p for "without a
bag") for an attribute, and ``refind.models.colours.colour_match`` (1 same name, 0.5 a
neighbouring name, 0 otherwise) for a colour. Weights: colours 2 (the strongest cue on small
crops), hat, bag, long hair, long sleeves 1, backpack 0.75 (the model misses many), man / woman
0.5 (near 0.5 on small crops). ``has_coat_jacket`` and ``has_longpants`` have weight 0: the
model does not tell them reliably, so they never drive a score. A candidate is selected when its
score reaches ``threshold``; its reason reads "backpack 0.93, red top (seen: red), long hair
0.12 ✗".

Example:
    >>> verifier = AttributeVerifier(OpenVinoAttributes(store))               # doctest: +SKIP
    >>> verifier("woman in a red top", regions).reasons[0]                    # doctest: +SKIP
    'woman 0.92, red top (seen: red)'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from refind.models.base import (
    ATTRIBUTE_NAMES,
    AttributeModel,
    Kept,
    PersonAttributes,
    Region,
    RerankResult,
    crop_key,
)
from refind.models.colours import colour_match
from refind.models.text_attributes import WantedAttributes, parse_attributes

COLOUR_WEIGHT = 2.0
ATTRIBUTE_WEIGHTS: dict[str, float] = {
    "is_male": 0.5, "has_bag": 1.0, "has_backpack": 0.75, "has_hat": 1.0,
    "has_longsleeves": 1.0, "has_longpants": 0.0, "has_longhair": 1.0, "has_coat_jacket": 0.0,
}  # fmt: skip
_LABELS: dict[tuple[str, bool], str] = {
    ("is_male", True): "man", ("is_male", False): "woman",
    ("has_bag", True): "bag", ("has_bag", False): "no bag",
    ("has_backpack", True): "backpack", ("has_backpack", False): "no backpack",
    ("has_hat", True): "hat", ("has_hat", False): "no hat",
    ("has_longsleeves", True): "long sleeves", ("has_longsleeves", False): "short sleeves",
    ("has_longpants", True): "long trousers", ("has_longpants", False): "short trousers",
    ("has_longhair", True): "long hair", ("has_longhair", False): "short hair",
    ("has_coat_jacket", True): "coat", ("has_coat_jacket", False): "no coat",
}  # fmt: skip
MISS = "✗"



@dataclass(frozen=True)
class Verdict:
    """One candidate against one text: score in [0, 1] and the terms as read."""

    score: float
    terms: tuple[str, ...]
    missed: tuple[str, ...]


def verify(wanted: WantedAttributes, attrs: PersonAttributes, i: int) -> Verdict:
    """Score row ``i`` of ``attrs`` against ``wanted`` (module docstring's formula)."""
    total = weight = 0.0
    terms, missed = [], []
    for name, value in wanted.flags:
        p = float(attrs.probs[i, ATTRIBUTE_NAMES.index(name)])
        a = p if value else 1.0 - p
        w = ATTRIBUTE_WEIGHTS[name]
        label = _LABELS[(name, value)]
        if w == 0.0:
            terms.append(f"{label} {a:.2f} (unreliable, not scored)")
            continue
        total, weight = total + w * a, weight + w
        term = f"{label} {a:.2f}" + (f" {MISS}" if a < 0.5 else "")
        terms.append(term)
        if a < 0.5:
            missed.append(term)
    for part, colour, seen in (("top", wanted.top_colour, attrs.top_colour[i]),
                               ("bottom", wanted.bottom_colour, attrs.bottom_colour[i])):
        if colour is None:
            continue
        a = colour_match(colour, seen)
        total, weight = total + COLOUR_WEIGHT * a, weight + COLOUR_WEIGHT
        term = f"{colour} {part} (seen: {seen}" + (", close)" if a == 0.5 else ")")
        term += f" {MISS}" if a == 0.0 else ""
        terms.append(term)
        if a < 0.5:
            missed.append(term)
    score = total / weight if weight else 0.0
    return Verdict(score, tuple(terms), tuple(missed))


def checkable(wanted: WantedAttributes) -> bool:
    """True when the text names something the attribute model can score."""
    return wanted.top_colour is not None or wanted.bottom_colour is not None or any(
        ATTRIBUTE_WEIGHTS[name] > 0 for name, _ in wanted.flags
    )


class AttributeVerifier:
    """Scores candidates against the attributes and colours a text names (OMZ 0230).

    A text naming nothing the model can check selects every candidate with score 1.0 (no
    evidence either way) and says so in the reasons. The model's answer for a crop does not
    depend on the text, so it is cached (by the crop's pixels, ``cache_size`` crops): a second
    query over the same candidates runs no inference.

    Example:
        >>> v = AttributeVerifier(OpenVinoAttributes(store), threshold=0.6)      # doctest: +SKIP
        >>> v("a man with a backpack", regions).selected                         # doctest: +SKIP
        array([ True, False])
    """

    name = "attributes"

    def __init__(
        self, model: AttributeModel, threshold: float = 0.6, cache_size: int = 50_000
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in 0..1, got {threshold}")
        self.model = model
        self.threshold = threshold
        self.cache_size = cache_size
        # per crop (by its pixels): probs, top and bottom BGR samples, their colour names
        self._kept: Kept[bytes, tuple[np.ndarray, np.ndarray, np.ndarray, str, str]] = Kept(
            cache_size)

    def attributes(self, crops: Sequence[np.ndarray]) -> PersonAttributes:
        """The model's attributes of ``crops``, from the cache where it has them."""
        keys = [crop_key(c) for c in crops]
        by_key = dict(zip(keys, crops, strict=True))

        def run(todo: list[bytes]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, str, str]]:
            fresh = self.model([by_key[k] for k in todo])
            return [(fresh.probs[j], fresh.top_bgr[j], fresh.bottom_bgr[j],
                     fresh.top_colour[j], fresh.bottom_colour[j]) for j in range(len(todo))]

        rows = self._kept(keys, run)
        if not rows:
            empty = np.zeros((0, 3), np.uint8)
            return PersonAttributes(np.zeros((0, len(ATTRIBUTE_NAMES)), np.float32), empty,
                                    empty, (), ())
        return PersonAttributes(
            probs=np.stack([r[0] for r in rows]).astype(np.float32),  # (n, 8)
            top_bgr=np.stack([r[1] for r in rows]),
            bottom_bgr=np.stack([r[2] for r in rows]),
            top_colour=tuple(r[3] for r in rows),
            bottom_colour=tuple(r[4] for r in rows),
        )

    @classmethod
    def from_store(cls, store: object, threshold: float = 0.6) -> AttributeVerifier:
        from refind.models.attributes import OpenVinoAttributes

        return cls(OpenVinoAttributes(store), threshold)  # type: ignore[arg-type]

    def __call__(self, expression: str, regions: Sequence[Region]) -> RerankResult:
        wanted = parse_attributes(expression)
        n = len(regions)
        if not checkable(wanted):
            reason = "the text names no attribute or colour the attribute model can check"
            return RerankResult(np.ones(n, np.float32), np.ones(n, bool), (reason,) * n)
        attrs = self.attributes([r.crop for r in regions])
        verdicts = [verify(wanted, attrs, i) for i in range(n)]
        scores = np.array([v.score for v in verdicts], np.float32)
        return RerankResult(scores, scores >= self.threshold,
                            tuple(", ".join(v.terms) for v in verdicts))
