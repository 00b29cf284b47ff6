"""The composing referrer: each thing a text asks for checked against evidence, then combined.

A re-ranker (``refind.models.base.Reranker``, registered as ``compose``) that reads the text into
terms (``refind.models.language.parse_query``) and gives each candidate a probability per term
from the evidence that bears on it:

- colour of a part: the share f of the part's pixels (inside the BlazePose mask,
  ``refind.models.body``) named that colour, a neighbouring name counting half (a chromatic
  name next to an achromatic one, 0.15; black for a "dark" or "navy" colour, half), through
  ``p = sigmoid((f - mid) / 0.07)``. ``mid`` is 0.25 for a garment, 0.35 for the outfit as a
  whole ("in black": the mean of top and bottom) and 0.04 (scale 0.015) for a carried thing
  ("holding something white"), which covers little of a person; black, grey and white must
  dominate (``mid`` 0.6), since shadows, dim light and the road give them everywhere; "in red",
  a chromatic colour, is named by the garment that shows it: the better of top and bottom;
- the ground someone stands on ("on the grass", "crossing the road"): the colour of the pixels
  in the bottom 15 % of the crop, around the feet, outside the person's mask
  (``refind.models.body.ground_colours``), scored as a garment's colour is (green grass, grey
  road); unknown where no ground shows or the evidence was stored before it was read;
- attributes: the 0230 model's probability, weighted by how far it can be trusted
  (``refind.models.attribute_verifier.ATTRIBUTE_WEIGHTS``); hair shade from the hair pixels;
- position: where the box stands in its frame (``left``: ``sigmoid((0.4 - cx / W) / 0.08)``);
  superlatives against the other candidates of the same frame (1 for the extreme one, falling
  with the gap); ``together`` from the distance to the nearest other person, in heights;
  ``hidden`` from BlazePose's presence (how sure it is a whole person is in the crop, mean over
  the crops), ``sigmoid((0.5 - presence) / 0.12)``, unknown without a pose model;
- motion: the candidate's ``TrackMotion`` (``refind.streaming.motion``): ``left`` is
  ``sigmoid((-vx - 0.15) / 0.08)`` in heights per second, ``still`` and ``fast`` from the
  speed, entering and leaving from the frame edges the track began and ended at. A candidate
  whose motion is unknown is not judged on it (weight 0, "unknown"; with nothing else to judge
  it on, it scores 0.5, below the selection threshold);
- a thing the person must be or have that no model here sees ("a child"): ``UNKNOWN_P``.

A negated term uses ``1 - p``. The composed score is the weighted geometric mean of the terms'
probabilities (``exp(sum w log p / sum w)``): one failed term pulls it well down whatever the
number of terms. The score returned is that composition calibrated into the probability that
the candidate is meant (Platt scaling, ``CALIBRATION``).

Selection compares the composition with ``threshold`` (0.5; a calibrated probability of about
0.18, since most candidates of a frame are not meant), within each frame (``Region.group``):
every candidate above it when the text speaks of several people, the best one when it speaks
of one, the best ``count`` when it names a number ("the two ...") as long as each reaches
``count_floor``. Across frames or tracklets (in search each tracklet is its own group), a text
about one person keeps the candidates within ``singular_margin`` of the best: one person seen as
several tracklets scores alike, a weaker match is someone else; a number holds across them as
well ("the two people" keeps the best two tracklets, even when two are one person's: refind's
global ids are not known here). Nobody is selected when no
candidate passes, or when the text holds nothing checkable, only words it could not read.
Reasons read ``top red 0.82, backpack 0.71, walking left 0.90``; a term under 0.5 is marked ✗,
and the words not understood end the reason ("ignored: 'umbrella'").

Example:
    >>> referrer = ComposingReferrer.from_store(store)                   # doctest: +SKIP
    >>> referrer("the woman in a red top walking left", regions).selected # doctest: +SKIP
    array([False,  True, False])
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from refind.models.attribute_verifier import ATTRIBUTE_WEIGHTS, MISS
from refind.models.base import (
    ATTRIBUTE_NAMES,
    AttributeModel,
    Kept,
    PartRegion,
    PersonAttributes,
    Region,
    RerankResult,
    crop_key,
)
from refind.models.body import Body, PoseModel, ground_colours, part_colours, stand_in
from refind.models.colours import COLOUR_NAMES, colour_match
from refind.models.language import (
    ATTRIBUTE_LABELS,
    MOTION_LABELS,
    ConceptMap,
    ReferQuery,
    Term,
    parse_query,
)
from refind.models.places import find_places, place_distance, place_probability
from refind.models.relations import relation_probability
from refind.streaming.config import PlaceConfig
from refind.streaming.motion import TrackMotion

COLOUR_MID = {"top": 0.25, "bottom": 0.25, "shoes": 0.25, "head": 0.25, "outfit": 0.35,
              "carried": 0.04, "person": 0.25}
COLOUR_SCALE = {"carried": 0.015}
# Black, grey and white pixels are everywhere (shadows, dim light, road): they only say a garment
# is black, grey or white when they dominate it, so their midpoint is higher; a chromatic colour
# is rare off its garment, so a smaller share is evidence.
ACHROMATIC = ("black", "grey", "white")
ACHROMATIC_MID = 0.6
# credit for a neighbouring colour name: a camera mixes chromatic neighbours (red/orange), but
# a dark chromatic garment only reads black under a "dark" or "navy" shade
NEIGHBOUR_CREDIT, ACROSS_CREDIT, DARK_CREDIT = 0.5, 0.15, 0.5
UNKNOWN_P = 0.2  # prior that a person has a thing the text asks for but no model can see
# Platt scaling of the composed score into the probability that a candidate is meant:
# sigmoid(a * logit(score) + b), fitted by `refind eval refer --calibrate` on the development
# half (--split even) of the hand-written PETS expressions (422 candidates). Expected
# calibration error on the held-out half (466 candidates): 0.183 before, 0.059 after.
CALIBRATION = (0.5487, -1.5285)
LIGHT = ("white", "grey", "yellow", "orange", "pink")  # hair shades read as light
WEIGHTS = {"colour": 1.0, "position": 1.0, "motion": 1.0, "hair": 0.75}
DESCRIBE_MIN_FRACTION = 0.25  # a part's main colour is named when it covers this much of it
# "hidden behind the sign": BlazePose's presence of a whole person, low for a partly hidden one
HIDDEN_MID, HIDDEN_SCALE = 0.5, 0.12
EVIDENCE_VERSION = "e3"  # e2: BlazePose's presence unsquashed; e3: the ground's colours
P_MIN = 0.02  # a term's probability is floored here, so one term cannot zero a candidate
PLACE_SIMILARITY = 0.6  # MiniLM cosine at which a word names a place of another name


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 50.0), -50.0)))


@dataclass(frozen=True)
class Evidence:
    """What is known of one candidate: colour fractions per part, 0230 attributes, its region
    (box, frame size, motion) and the outlines of its parts."""

    colours: dict[str, np.ndarray]
    attrs: np.ndarray  # (8,) float32 0230 probabilities
    region: Region
    outlines: dict = field(default_factory=dict)  # part -> (box, polygon) in its crop's pixels
    presence: float | None = None  # BlazePose's presence, mean over the crops; None: unknown

    def part_region(self, part: str) -> PartRegion | None:
        """Where ``part`` is in the frame: its box and outline mapped from the crop."""
        if part not in self.outlines:
            return None
        (bx1, by1, bx2, by2), polygon = self.outlines[part]
        x1, y1, x2, y2 = self.region.xyxy
        h, w = self.region.crop.shape[:2]
        sx, sy = (x2 - x1) / max(w, 1), (y2 - y1) / max(h, 1)
        return PartRegion(part, (x1 + bx1 * sx, y1 + by1 * sy, x1 + bx2 * sx, y1 + by2 * sy),
                          tuple((x1 + px * sx, y1 + py * sy) for px, py in polygon))


@dataclass(frozen=True)
class Scored:
    """One term's probability for one candidate; ``why`` says why it is unknown, if it is."""

    term: Term
    p: float
    weight: float
    why: str = ""

    def text(self) -> str:
        if self.weight == 0.0:
            return f"{self.term.label()} unknown" + (f" ({self.why})" if self.why else "")
        mark = f" {MISS}" if self.p < 0.5 else ""
        return f"{self.term.label()} {self.p:.2f}{mark}" + (f" ({self.why})" if self.why else "")


@dataclass(frozen=True)
class CropEvidence:
    """What the referrer reads from one crop: colour fractions per part (``part_colours`` plus
    ``outfit`` and ``carried``), each part's box and outline (crop pixels), the 0230
    attribute probabilities ((8,) float32) and BlazePose's presence (how much of a whole person
    is seen; None when no pose model ran). Serialised by ``to_bytes`` for an evidence store."""

    colours: dict[str, np.ndarray]
    outlines: dict
    attrs: np.ndarray
    presence: float | None = None

    def to_bytes(self) -> bytes:
        return json.dumps({
            "colours": {k: [round(float(x), 5) for x in v] for k, v in self.colours.items()},
            "outlines": {k: [list(box), [list(pt) for pt in poly]]
                         for k, (box, poly) in self.outlines.items()},
            "attrs": [round(float(x), 5) for x in self.attrs],
            "presence": None if self.presence is None else round(float(self.presence), 5),
        }, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> CropEvidence:
        d = json.loads(data)
        return cls({k: np.asarray(v, np.float32) for k, v in d["colours"].items()},
                   {k: (tuple(box), tuple(tuple(pt) for pt in poly))
                    for k, (box, poly) in d["outlines"].items()},
                   np.asarray(d["attrs"], np.float32), d.get("presence"))


class EvidenceCache(Protocol):
    """Crop evidence kept outside the process (``refind.indexer.evidence.EvidenceStore``)."""

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]: ...

    def put_many(self, rows: Sequence[tuple[bytes, bytes, str | None]]) -> None: ...


class ComposingReferrer:
    """Scores candidates against a text by composing per-term evidence (module docstring).

    A crop's evidence is computed once: kept in memory (``cache_size`` crops) and, with a
    ``store``, on disk, where ingest may already have put it (``ingest.referring_evidence``).
    """

    name = "compose"

    def __init__(self, attributes: AttributeModel, pose: PoseModel | None,
                 concepts: ConceptMap | None = None, threshold: float = 0.5,
                 count_floor: float = 0.3, singular_margin: float = 0.1,
                 calibration: tuple[float, float] | None = CALIBRATION,
                 cache_size: int = 50_000, store: EvidenceCache | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.calibration = calibration
        self.attributes = attributes
        self.pose = pose
        self.concepts = concepts
        self.threshold = threshold
        self.count_floor = count_floor
        self.singular_margin = singular_margin
        self.cache_size = cache_size
        self.store = store
        self._kept: Kept[bytes, CropEvidence] = Kept(cache_size)  # by key_of
        self._similar_seen: dict[tuple[str, tuple[str, ...]], int | None] = {}
        # EVIDENCE_VERSION: evidence stored by an earlier reading of the same models is not reused
        models = f"{getattr(pose, 'model_id', 'no-pose')}|{attributes.model_id}|{EVIDENCE_VERSION}"
        self._models = models.encode()

    @classmethod
    def from_store(cls, store: object, threshold: float = 0.5,
                   evidence: EvidenceCache | None = None) -> ComposingReferrer:
        from refind.models.attributes import OpenVinoAttributes
        from refind.models.language import minilm_embedder

        embed = minilm_embedder()
        return cls(OpenVinoAttributes(store), PoseModel(store),  # type: ignore[arg-type]
                   ConceptMap(embed) if embed is not None else None, threshold, store=evidence)

    # --- evidence --------------------------------------------------------------------------

    def key_of(self, crop: np.ndarray) -> bytes:
        """A crop's evidence key: its pixels and the models that read them."""
        return crop_key(crop, self._models)

    def crop_evidence(self, crops: Sequence[np.ndarray],
                      paths: Sequence[str | None] | None = None) -> list[CropEvidence]:
        """The evidence of each crop: from memory, else the store, else computed (and kept in
        both, with the stored crop's path when ``paths`` gives it)."""
        keys = [self.key_of(c) for c in crops]
        crop_of = dict(zip(keys, crops, strict=True))
        path_of = dict(zip(keys, paths or [None] * len(keys), strict=True))
        return self._kept(keys, lambda todo: self._read(todo, crop_of, path_of))

    def _read(self, keys: list[bytes], crop_of: dict[bytes, np.ndarray],
              path_of: dict[bytes, str | None]) -> list[CropEvidence]:
        """Evidence of crops not in memory: from the store, else computed and stored."""
        stored = self.store.get_many(keys) if self.store is not None else {}
        todo = [k for k in keys if k not in stored]
        fresh = dict(zip(todo, self._compute([crop_of[k] for k in todo]), strict=True))
        if self.store is not None and fresh:
            self.store.put_many([(k, ev.to_bytes(), path_of[k]) for k, ev in fresh.items()])
        return [fresh[k] if k in fresh else CropEvidence.from_bytes(stored[k]) for k in keys]

    def _compute(self, crops: Sequence[np.ndarray]) -> list[CropEvidence]:
        bodies: list[Body] = (self.pose(crops) if self.pose is not None
                              else [stand_in(c) for c in crops])
        attrs: PersonAttributes = self.attributes(crops)
        return [CropEvidence(_with_outfit(part_colours(c, body))
                             | {"ground": ground_colours(c, body)}, body.part_outlines(),
                             attrs.probs[i].astype(np.float32),
                             body.presence if self.pose is not None else None)
                for i, (c, body) in enumerate(zip(crops, bodies, strict=True))]

    def describe(self, crops: Sequence[np.ndarray],
                 paths: Sequence[str | None] | None = None) -> list[str]:
        """What a tracklet looks like, in words, from its crops (averaged): each part's main
        colour ("top: red 46%") and the attributes more likely than not ("man 81%")."""
        found = self.crop_evidence(crops, paths)
        if not found:
            return []
        out = []
        for part, word in (("top", "top"), ("bottom", "bottom"), ("shoes", "shoes"),
                           ("hair", "hair")):
            fractions = [e.colours[part] for e in found if part in e.colours]
            if not fractions:
                continue
            mean = np.mean(fractions, axis=0)
            best = int(np.argmax(mean))
            if mean[best] >= DESCRIBE_MIN_FRACTION:
                out.append(f"{word}: {COLOUR_NAMES[best]} {mean[best]:.0%}")
        attrs = np.mean([e.attrs for e in found], axis=0)
        for name, p in zip(ATTRIBUTE_NAMES, attrs, strict=True):
            label = ATTRIBUTE_LABELS.get(name)
            if label is not None and p >= 0.5:
                out.append(f"{label} {p:.0%}")
        if "is_male" in ATTRIBUTE_NAMES and attrs[ATTRIBUTE_NAMES.index("is_male")] < 0.5:
            out.append(f"woman {1 - attrs[ATTRIBUTE_NAMES.index('is_male')]:.0%}")
        return out

    def evidence(self, regions: Sequence[Region]) -> list[Evidence]:
        """Colours per part and attributes of each region, averaged over its crop and its
        ``views`` (other crops of the same tracklet)."""
        crops = [c for r in regions for c in (r.crop, *r.views)]
        owner = np.array([i for i, r in enumerate(regions) for _ in range(1 + len(r.views))])
        paths = [p for r in regions for p in (r.paths if len(r.paths) == 1 + len(r.views)
                                               else (None,) * (1 + len(r.views)))]
        per_crop = self.crop_evidence(crops, paths)
        out = []
        for i, region in enumerate(regions):
            mine = np.nonzero(owner == i)[0]
            colours = {part: np.mean([per_crop[j].colours[part] for j in mine], axis=0)
                       for part in per_crop[mine[0]].colours}
            attrs = np.mean([per_crop[j].attrs for j in mine], axis=0)
            seen = [per_crop[j].presence for j in mine if per_crop[j].presence is not None]
            out.append(Evidence(colours, attrs, region, per_crop[mine[0]].outlines,
                                float(np.mean(seen)) if seen else None))
        return out

    # --- scoring ---------------------------------------------------------------------------

    def read(self, expression: str) -> ReferQuery:
        """What ``expression`` asks for, with this referrer's word mapping."""
        return parse_query(expression, self.concepts)

    def __call__(self, expression: str, regions: Sequence[Region]) -> RerankResult:
        return self.score(self.read(expression), regions)

    def score(self, query: ReferQuery, regions: Sequence[Region]) -> RerankResult:
        n = len(regions)
        tail = _tail(query)
        if not query.checkable:
            why = ("nothing in the text can be checked" + (f"; {tail}" if tail else "")
                   if query.ignored else "the text names nothing to check: everyone kept")
            keep = not query.ignored
            return RerankResult(self._calibrated(np.full(n, 1.0 if keep else 0.0, np.float32)),
                                np.full(n, keep, bool), (why,) * n)
        evidence = self.evidence(regions)
        scored = self._scored(query, evidence)
        scores = np.array([_combine(s) for s in scored], np.float32)
        selected = self._select(query, scores, [r.group for r in regions])
        reasons = tuple(", ".join([*(s.text() for s in row), *([tail] if tail else [])])
                        for row in scored)
        parts = tuple(e.part_region(query.part) for e in evidence) if query.part else ()
        return RerankResult(self._calibrated(scores), selected, reasons, parts)

    def _scored(self, query: ReferQuery, evidence: Sequence[Evidence]) -> list[list[Scored]]:
        """Each candidate's scored terms: the plain ones, then those judged against the other
        candidates of its frame (another person the text names, superlatives)."""
        plain = [t for t in query.terms if not t.superlative and t.kind != "person"]
        scored = [[self._place(t, e) if t.kind == "place" else _score_term(t, e, evidence)
                   for t in plain] for e in evidence]
        for t in (t for t in query.terms if t.kind == "person"):
            fits = (np.array([_combine(row) for row in self._scored(query.anchor, evidence)])
                    if query.anchor is not None and query.anchor.terms
                    else np.full(len(evidence), 0.5))
            for row, s in zip(scored, self._beside(t, fits, evidence), strict=True):
                row.append(s)
        base = np.array([_combine(s) for s in scored], np.float32)
        for t in (t for t in query.terms if t.superlative):
            found = [self._places_of(t, e) for e in evidence] if t.kind == "place" else None
            ps = _superlative(t, evidence, base, self.threshold, found)
            for i in range(len(evidence)):
                scored[i].append(Scored(t, ps[i], WEIGHTS["position"]) if found is None or found[i]
                                 else _no_place(t))
        return scored

    def _beside(self, term: Term, fits: np.ndarray,
                evidence: Sequence[Evidence]) -> list[Scored]:
        """"next to the woman in red": per candidate, the best over the others of its frame of
        how well they fit the other person's words (``fits``, per candidate) times the
        relation between the two."""
        out = []
        for i, e in enumerate(evidence):
            others = [j for j, o in enumerate(evidence) if j != i and o.region.group ==
                      e.region.group]
            if not others:  # judged alone (a tracklet in search): it cannot be told
                out.append(Scored(term, 0.5, 0.0, "nobody else in view to judge it by"))
                continue
            p = max(float(fits[j]) * relation_probability(term.value, e.region.xyxy,
                                                          evidence[j].region.xyxy)
                    for j in others)
            out.append(Scored(term, 1.0 - p if term.negated else p, WEIGHTS["position"]))
        return out

    def _places_of(self, term: Term, e: Evidence) -> list[PlaceConfig]:
        """The places of the candidate's camera that a place term names."""
        return find_places(term.part.split("|"), e.region.places, term.words, self._similar)

    def _place(self, term: Term, e: Evidence) -> Scored:
        """A place term's probability; unknown where the camera has no such place, or the
        track does not tell (going towards it without the track's ends)."""
        places = self._places_of(term, e)
        if not places and term.value == "behind" and e.presence is not None:
            # behind a thing this camera has not named: most likely partly hidden by it
            p = _hidden_p(e.presence)
            return Scored(term, 1.0 - p if term.negated else p, WEIGHTS["position"],
                          "no such place: judged as partly hidden")
        if not places:
            return _no_place(term)
        p = place_probability(term.value, places, e.region.xyxy, e.region.frame_wh,
                              e.region.motion)
        if p is None:
            return Scored(term, 0.5, 0.0, "the track's path is not known")
        return Scored(term, 1.0 - p if term.negated else p, WEIGHTS["position"])

    def _similar(self, written: str, names: Sequence[str]) -> int | None:
        """The index of the place name nearest in meaning to ``written`` (MiniLM cosine >=
        ``PLACE_SIMILARITY``), None without the encoder or when none is near."""
        if self.concepts is None:
            return None
        key = (written, tuple(names))
        if key not in self._similar_seen:
            vecs = self.concepts.embed([written, *names])  # (1 + k, d) unit vectors
            sims = vecs[1:] @ vecs[0]
            best = int(np.argmax(sims))
            self._similar_seen[key] = best if sims[best] >= PLACE_SIMILARITY else None
        return self._similar_seen[key]

    def _calibrated(self, scores: np.ndarray) -> np.ndarray:
        """Composed scores as match probabilities (``CALIBRATION``; unchanged without one)."""
        return scores if self.calibration is None else platt(scores, self.calibration)

    def _select(self, query: ReferQuery, scores: np.ndarray, groups: Sequence[int]) -> np.ndarray:
        selected = np.zeros(len(scores), bool)
        for g in set(groups):
            idx = np.array([i for i, x in enumerate(groups) if x == g])
            order = idx[np.argsort(-scores[idx], kind="stable")]
            if query.count is not None:
                top = order[: query.count]
                selected[top[scores[top] >= self.count_floor]] = True
            elif query.plural:
                selected[order[scores[order] > self.threshold]] = True
            elif scores[order[0]] > self.threshold:
                selected[order[0]] = True
        if not query.plural and query.count is None and selected.any():
            # one person, possibly seen as several tracklets: those about as good as the best
            selected &= scores >= scores[selected].max() - self.singular_margin
        if query.count is not None and selected.sum() > query.count:
            # "the two people" across frames or tracklets: still two, the best two
            best = np.nonzero(selected)[0]
            selected[:] = False
            selected[best[np.argsort(-scores[best], kind="stable")[: query.count]]] = True
        return selected


def platt(scores: np.ndarray, ab: tuple[float, float]) -> np.ndarray:
    """``sigmoid(a * logit(score) + b)`` of (n,) scores in [0, 1], as float32."""
    a, b = ab
    s = np.clip(np.asarray(scores, np.float64), 1e-3, 1 - 1e-3)
    return (1.0 / (1.0 + np.exp(-(a * np.log(s / (1 - s)) + b)))).astype(np.float32)


def _tail(query: ReferQuery) -> str:
    parts = []
    if query.mapped:
        parts.append("read " + ", ".join(f"'{a}' as {b}" for a, b in query.mapped))
    if query.ignored:
        parts.append("ignored: " + ", ".join(f"'{w}'" for w in query.ignored))
    return "; ".join(parts)


def _combine(scored: Sequence[Scored]) -> float:
    """The weighted geometric mean of the terms' probabilities. Where no term could be judged
    (every one unknown for this candidate, such as motion without a track), the candidate gets
    the terms' neutral probabilities, never a perfect score: a candidate nothing is known of
    must not outrank one whose evidence fits."""
    total = sum(s.weight for s in scored)
    if total <= 0:
        return float(np.mean([s.p for s in scored])) if scored else 1.0
    return float(math.exp(sum(s.weight * math.log(max(s.p, P_MIN)) for s in scored) / total))


def _with_outfit(colours: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add ``outfit`` (the mean of top and bottom shares) and ``carried`` (the whole person:
    what is held is somewhere on them)."""
    out = dict(colours)
    out["outfit"] = (colours["top"] + colours["bottom"]) / 2.0
    out["carried"] = colours["person"]
    return out


def _credit(term: Term, seen: str) -> float:
    """How much a pixel named ``seen`` counts for the colour ``term`` asks for."""
    match = colour_match(term.value, seen)
    if match in (0.0, 1.0):
        return match
    if (term.value in ACHROMATIC) == (seen in ACHROMATIC):
        return NEIGHBOUR_CREDIT
    return DARK_CREDIT if term.shade == "dark" and seen == "black" else ACROSS_CREDIT


def _colour_p(term: Term, colours: dict[str, np.ndarray]) -> float:
    if term.part == "outfit" and not set(term.value.split("|")) & set(ACHROMATIC) \
            and "top" in colours and "bottom" in colours:
        # "in red": a chromatic colour is named by the garment that shows it, top or bottom;
        # black, grey and white by the outfit as a whole (they are everywhere)
        return max(_colour_p(replace(term, part=part), colours) for part in ("top", "bottom"))
    fractions = colours.get(term.part, colours["person"])
    names = [replace(term, value=v) for v in term.value.split("|")]  # a blend: either name
    f = sum(float(fractions[i]) * max(_credit(t, name) for t in names)
            for i, name in enumerate(COLOUR_NAMES))
    mid = COLOUR_MID.get(term.part, 0.25)
    if term.value in ACHROMATIC and term.part != "carried":
        mid = max(mid, ACHROMATIC_MID)
    return _sigmoid((f - mid) / COLOUR_SCALE.get(term.part, 0.07))


def _hair_p(light: bool, colours: dict[str, np.ndarray]) -> float:
    hair = colours["hair"]
    if hair.sum() <= 0:
        return 0.5
    f = float(sum(hair[COLOUR_NAMES.index(c)] for c in LIGHT))
    return _sigmoid(((f if light else 1.0 - f) - 0.4) / 0.1)


def _position_p(term: Term, e: Evidence, evidence: Sequence[Evidence]) -> float:
    x1, y1, x2, y2 = e.region.xyxy
    w, h = e.region.frame_wh
    cx, cy = (x1 + x2) / 2 / max(w, 1), (y1 + y2) / 2 / max(h, 1)
    foot = y2 / max(h, 1)
    if term.value == "left":
        return _sigmoid((0.4 - cx) / 0.08)
    if term.value == "right":
        return _sigmoid((cx - 0.6) / 0.08)
    if term.value == "middle":
        return _sigmoid((0.15 - abs(cx - 0.5)) / 0.06)
    if term.value in ("near", "bottom"):
        return _sigmoid(((foot if term.value == "near" else cy) - 0.65) / 0.08)
    if term.value in ("far", "top"):
        return _sigmoid((0.45 - (foot if term.value == "far" else cy)) / 0.08)
    if term.value == "together":
        height = max(y2 - y1, 1.0)
        others = [o.region.xyxy for o in evidence
                  if o is not e and o.region.group == e.region.group]
        if not others:
            return 0.1
        d = min(math.hypot((o[0] + o[2] - x1 - x2) / 2, o[3] - y2) for o in others) / height
        return _sigmoid((1.0 - d) / 0.25)
    return 0.5


def _motion_p(term: Term, e: Evidence) -> float | None:
    """The probability of a motion term, None when the track does not tell (no motion, or
    no frame edges for entering and leaving)."""
    m = e.region.motion
    if m is None:
        return None
    if term.value in ("enter", "exit"):
        seen = m.enter if term.value == "enter" else m.exit
        if seen is None:
            return None
        return 0.9 if seen == term.part else 0.3 if seen == "" else 0.1
    return motion_probabilities(m).get(term.value)


def motion_probabilities(m: TrackMotion) -> dict[str, float]:
    """How likely each motion word is of a track that moved as ``m`` does."""
    return {
        "left": _sigmoid((-m.vx - 0.15) / 0.08),
        "right": _sigmoid((m.vx - 0.15) / 0.08),
        "towards": _sigmoid((m.towards - 0.1) / 0.06),
        "away": _sigmoid((-m.towards - 0.1) / 0.06),
        "still": _sigmoid((m.still - 0.5) / 0.15),
        "fast": _sigmoid((m.speed - 0.9) / 0.15),
        "moving": _sigmoid((0.5 - m.still) / 0.15),
    }


def describe_motion(m: TrackMotion) -> list[str]:
    """A track's motion in words, by the same rules a text query is checked with: the motion
    words more likely than not ("walking left"), and the edges it entered and left at."""
    words = [MOTION_LABELS[w] for w, p in motion_probabilities(m).items()
             if p >= 0.5 and w != "moving"]
    if m.enter:
        words.append(f"{MOTION_LABELS['enter']} {m.enter}")
    if m.exit:
        words.append(f"{MOTION_LABELS['exit']} {m.exit}")
    return words


def _hidden_p(presence: float) -> float:
    """How likely a person is partly hidden, from BlazePose's presence of a whole person."""
    return _sigmoid((HIDDEN_MID - presence) / HIDDEN_SCALE)


def _no_place(term: Term) -> Scored:
    return Scored(term, 0.5, 0.0, f"no place called '{term.words}' on this camera")


def _score_term(term: Term, e: Evidence, evidence: Sequence[Evidence]) -> Scored:
    weight = WEIGHTS.get(term.kind, 1.0)
    if term.kind == "colour" and term.part == "ground" and e.colours.get(
            "ground", np.zeros(1)).sum() <= 0:  # read before the ground was, or none shows
        p, weight = 0.5, 0.0  # not judged
    elif term.kind == "colour":
        p = _colour_p(term, e.colours)
    elif term.kind == "position" and term.value == "hidden":
        p, weight = (0.5, 0.0) if e.presence is None else (  # unknown: not judged
            _hidden_p(e.presence), weight)
    elif term.kind == "position":
        p = _position_p(term, e, evidence)
    elif term.kind == "motion":
        found = _motion_p(term, e)
        p, weight = (0.5, 0.0) if found is None else (found, weight)  # unknown: not judged
    elif term.kind == "unknown":
        p = UNKNOWN_P
    elif term.value in ("light_hair", "dark_hair", "bald"):
        p, weight = _hair_p(term.value != "dark_hair", e.colours), WEIGHTS["hair"]
    else:
        p = float(e.attrs[ATTRIBUTE_NAMES.index(term.value)])
        weight = ATTRIBUTE_WEIGHTS[term.value]
    return Scored(term, 1.0 - p if term.negated else p, weight)


def _superlative(term: Term, evidence: Sequence[Evidence], base: np.ndarray,
                 threshold: float, places: Sequence[list[PlaceConfig]] | None = None,
                 ) -> list[float]:
    """Superlative position per candidate, against the others of its frame that match the
    rest of the text (all of them when none does): 1 for the extreme one, falling with the gap
    (in fractions of the frame, scale 0.06; "closest to the bench": ``places`` per candidate,
    in person heights, scale 0.5)."""
    def key(i: int) -> float:
        e = evidence[i]
        if places is not None:  # a candidate without the place is never the closest to it
            return (-place_distance(places[i], e.region.xyxy, e.region.frame_wh) * 0.12
                    if places[i] else -1e6)
        x1, _, x2, y2 = e.region.xyxy
        w, h = e.region.frame_wh
        cx = (x1 + x2) / 2 / max(w, 1)
        return {"left": -cx, "right": cx, "near": y2 / max(h, 1), "bottom": y2 / max(h, 1),
                "far": -y2 / max(h, 1), "top": -y2 / max(h, 1)}.get(term.value, 0.0)

    out = [0.5] * len(evidence)
    for g in {e.region.group for e in evidence}:
        idx = [i for i, e in enumerate(evidence) if e.region.group == g]
        pool = [i for i in idx if base[i] > threshold] or idx
        if term.value == "middle":
            mean = float(np.mean([sum(evidence[i].region.xyxy[0::2]) / 2 for i in pool]))
            values = {i: -abs(sum(evidence[i].region.xyxy[0::2]) / 2 - mean)
                      / max(evidence[i].region.frame_wh[0], 1) for i in idx}
        else:
            values = {i: key(i) for i in idx}
        best = max(values[i] for i in pool)
        for i in idx:
            p = math.exp(-max(best - values[i], 0.0) / 0.06)
            out[i] = 1.0 - p if term.negated else p
    return out
