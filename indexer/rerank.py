"""Re-ranking: check the best candidates against what the query text says, explain each one, and
say "nobody matches" when no candidate passes.

``AttributeVerifier`` is the default re-ranker (a ``models.base.Reranker``): it reads the
attributes and clothing colours a text names (``models.text_attributes.parse_attributes``),
runs the OMZ 0230 attribute model on each candidate's crop, and scores agreement::

    score = sum(w_t * a_t) / sum(w_t)        over the terms t the text names

where a_t is the probability the model gives the wanted value (p, or 1 - p for "without a
bag") for an attribute, and ``models.colours.colour_match`` (1 same name, 0.5 a neighbouring
name, 0 otherwise) for a colour. Weights: colours 2 (the strongest cue on small crops), hat,
bag, long hair, long sleeves 1, backpack 0.75 (the model misses many), man / woman 0.5 (near
0.5 on small crops). ``has_coat_jacket`` and ``has_longpants`` have weight 0: the model does
not tell them reliably, so they never drive a score. A candidate is selected when its score
reaches ``threshold``; its reason reads "backpack 0.93, red top (seen: red), long hair 0.12 ✗".

``rerank_hits`` applies any re-ranker to ranked tracklets: a hit's score becomes
``(1 - weight) * retrieval + weight * rerank`` (the re-rank score alone when there is no
retrieval score, as in a text scan), only selected hits are kept, and when none is selected the
answer is empty with a message naming the best candidate and what it lacked.

``build_reranker(name, store)`` is a lazy registry: "none", "attributes", "refer"
(``models.refer:ReferReranker``), "mllm" (``models.mllm_refer:MllmReranker``).

Example:
    >>> verifier = AttributeVerifier(OpenVinoAttributes(store))               # doctest: +SKIP
    >>> verifier("woman in a red top", regions).reasons[0]                    # doctest: +SKIP
    'woman 0.92, red top (seen: red)'
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from indexer.blobs import CropStore, CropStoreError
from models.base import (
    ATTRIBUTE_NAMES,
    INT8_SUFFIX,
    AttributeModel,
    PersonAttributes,
    Region,
    Reranker,
    RerankResult,
    model_name,
)
from models.colours import colour_match
from models.text_attributes import WantedAttributes, parse_attributes
from streaming.records import TrackletHit

if TYPE_CHECKING:  # torch comes with it: imported only when a probe is used
    from models.attribute_probe import AttributeProbe

log = logging.getLogger(__name__)

RERANKERS: dict[str, str | None] = {
    "none": None,
    "attributes": "indexer.rerank:AttributeVerifier",
    "refer": "models.refer:ReferReranker",
    "mllm": "models.mllm_refer:MllmReranker",
}

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


class RerankerError(ValueError):
    """An unknown re-ranker name; the message lists the valid ones."""


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
        self._cache: OrderedDict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray, str, str]] = (
            OrderedDict()
        )

    def attributes(self, crops: Sequence[np.ndarray]) -> PersonAttributes:
        """The model's attributes of ``crops``, from the cache where it has them."""
        keys = [hashlib.blake2b(c.tobytes() + str(c.shape).encode(), digest_size=16).digest()
                for c in crops]
        todo = sorted({i for i, key in enumerate(keys) if key not in self._cache})
        if todo:
            fresh = self.model([crops[i] for i in todo])
            for j, i in enumerate(todo):
                self._cache[keys[i]] = (fresh.probs[j], fresh.top_bgr[j], fresh.bottom_bgr[j],
                                        fresh.top_colour[j], fresh.bottom_colour[j])
        rows = []
        for key in keys:
            self._cache.move_to_end(key)
            rows.append(self._cache[key])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
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
        from models.attributes import OpenVinoAttributes

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


def build_reranker(name: str, store: object, threshold: float = 0.6) -> Reranker | None:
    """The re-ranker registered as ``name`` (None for "none"), imported only when chosen.

    A class is built with ``Class.from_store(store)`` when it has that, else ``Class(store)``;
    the attribute verifier also takes ``threshold``. Import failures are raised.
    """
    if name not in RERANKERS:
        raise RerankerError(f"unknown re-ranker {name!r}; valid: {', '.join(RERANKERS)}")
    target = RERANKERS[name]
    if target is None:
        return None
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)  # ImportError propagates, never only logged
    cls = getattr(module, class_name)
    if name == "attributes":
        return cls.from_store(store, threshold)
    return cls.from_store(store) if hasattr(cls, "from_store") else cls(store)


class RerankerPool:
    """Query-time models built on first use and kept, each loaded once: the re-rankers, and the
    text probe a plain gallery is searched through when it is too large to scan."""

    def __init__(self, store: object, threshold: float = 0.6) -> None:
        self.store = store
        self.threshold = threshold
        self._built: dict[str, Reranker | None] = {}
        # a load failure is kept with its first traceback: raising the same exception again
        # would grow its traceback by a query's frames each time
        self._probes: dict[tuple[str, str], AttributeProbe | tuple[Exception, object] | None] = {}

    def get(self, name: str) -> Reranker | None:
        if name not in self._built:
            self._built[name] = build_reranker(name, self.store, self.threshold)
        return self._built[name]

    def text_probe(self, weights: str | None, model_id: str) -> AttributeProbe | None:
        """The attribute probe of the IRM weights named ``weights`` (model store) as it reads a
        plain gallery of ``model_id`` (``models.irm.teacher_probe``); None for no name, or when
        the weights' teacher is another model (then a plain gallery has no probe). A failure to
        load is kept and raised again, so weights are not read from disk on every query."""
        if weights is None:
            return None
        key = (weights, model_id)
        if key not in self._probes:
            try:
                self._probes[key] = _load_text_probe(self.store, weights, model_id)
            except Exception as err:
                self._probes[key] = (err, err.__traceback__)
        found = self._probes[key]
        if isinstance(found, tuple):
            err, tb = found
            raise err.with_traceback(tb)  # type: ignore[arg-type]
        return found


def _load_text_probe(store: object, weights: str, model_id: str) -> AttributeProbe | None:
    from models.irm import teacher_probe  # torch: imported only when a probe is used

    probe, teacher = teacher_probe(store.resolve(weights).path)  # type: ignore[attr-defined]
    if model_name(model_id).removesuffix(INT8_SUFFIX) != teacher:
        log.info("text probe of %s reads %s vectors, not %s: text queries scan",
                 weights, teacher, model_id)  # fmt: skip
        return None
    return probe


@dataclass(frozen=True)
class Reranked:
    """Hits after re-ranking, best first; ``message`` says why there are none (or None)."""

    hits: list[TrackletHit]
    message: str | None = None
    dropped: int = 0


def _regions(hits: Sequence[TrackletHit], crops: CropStore) -> tuple[list[Region], list[int]]:
    """Regions of the hits whose crop can be read, and their positions in ``hits``."""
    # The gallery keeps boxes, not frame sizes: a camera's frame is at least as large as the
    # union of its candidates' boxes, which is what position cues are judged against.
    extent: dict[str, tuple[float, float]] = {}
    for h in hits:
        w, ht = extent.get(h.camera, (1.0, 1.0))
        extent[h.camera] = (max(w, h.best_xyxy[2]), max(ht, h.best_xyxy[3]))
    groups: dict[tuple[str, int], int] = {}
    regions, kept = [], []
    for i, h in enumerate(hits):
        try:
            image = crops.read(h.thumbnail)
        except CropStoreError as err:  # removed by retention or forget since the search
            log.warning("re-rank skips %s track %d: %s", h.camera, h.track_id, err)
            continue
        w, ht = extent[h.camera]
        group = groups.setdefault((h.camera, h.best_frame_index), len(groups))
        regions.append(Region(crop=image, xyxy=h.best_xyxy,
                              frame_wh=(math.ceil(w), math.ceil(ht)), group=group))
        kept.append(i)
    return regions, kept


def rerank_hits(
    reranker: Reranker,
    expression: str,
    hits: Sequence[TrackletHit],
    crops: CropStore,
    *,
    weight: float,
    with_retrieval: bool,
) -> Reranked:
    """Re-score ``hits`` with ``reranker`` against ``expression``; keep the selected ones.

    With ``with_retrieval`` a hit's score is ``(1 - weight) * retrieval + weight * rerank``
    (retrieval clipped to [0, 1]); without, the re-rank score alone.
    """
    if not hits:
        return Reranked([])
    regions, kept = _regions(hits, crops)
    if not regions:
        return Reranked([], "no candidate crop could be read for re-ranking", len(hits))
    result = reranker(expression, regions)
    if len(result.scores) != len(regions) or len(result.reasons) != len(regions):
        raise RuntimeError(f"re-ranker {reranker.name} answered {len(result.scores)} scores for "
                           f"{len(regions)} regions")
    scored = []
    for j, i in enumerate(kept):
        hit, rr = hits[i], float(result.scores[j])
        if with_retrieval:
            score = (1.0 - weight) * min(max(hit.score, 0.0), 1.0) + weight * rr
            why = (f"appearance {hit.score:.2f}", f"{reranker.name} {rr:.2f}: {result.reasons[j]}")
        else:
            score, why = rr, (f"{reranker.name} {rr:.2f}: {result.reasons[j]}",)
        scored.append((bool(result.selected[j]), replace(hit, score=score, reasons=why), rr, j))
    scored.sort(key=lambda s: s[1].score, reverse=True)
    selected = [h for ok, h, _, _ in scored if ok]
    if selected:
        return Reranked(selected, dropped=len(hits) - len(selected))
    _, best, rr, j = max(scored, key=lambda s: s[2])
    reason = result.reasons[j]
    parts = re.split(r",\s(?![^()]*\))", reason)  # commas outside parentheses
    lacked = [t.replace(f" {MISS}", "") for t in parts if MISS in t]
    had = [t for t in parts if MISS not in t]
    what = f"was too weak a match: {reason}"
    if lacked:
        what = f"lacked {', '.join(lacked)}" + (f" (had {', '.join(had)})" if had else "")
    message = (f"no tracklet matches {expression!r}: the best candidate, {best.camera} track "
               f"{best.track_id} ({reranker.name} score {rr:.2f}), {what}")
    return Reranked([], message, len(hits))
