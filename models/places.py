"""Where a person is, or goes, by a named place of the camera's view: read from the words,
judged from the boxes.

An operator names the places of a view in the camera's config (``PlaceConfig``: a lamp post, a
gate, a bench, each a box in fractions of the frame). ``read_places`` finds the words that relate
a person to a place ("just left of the lamp post", "next to the sign", "behind the van",
"walking towards the gate", "closest to the bench") whether or not any camera has that place:
the place is only looked up when a candidate is judged, among the places of the camera that saw
it (``find_places``). A place no camera names is reported ("unknown"), never read as something
else ("towards the gate" is not "towards the camera").

Relations are judged in the image, as the operator sees it ("next to the sign" of someone whose
box touches the sign's, however far behind it they stand), for a person whose box is ``x1, y1,
x2, y2`` (height ``h``, feet at the bottom centre) and a place whose box is ``bx1, by1, bx2,
by2``, standing on the ground at ``(gx, gy)``; ``gap`` is the distance between the two boxes (0
when they overlap), in person heights:

- ``near`` ("next to", "by", "beside", "around", "at"): ``sigmoid((0.5 - gap) / 0.2)``;
- ``left`` / ``right`` ("left of", "to the right of"): the person's centre beyond the place's
  edge, ``sigmoid((bx1 - cx) / (0.25 h))``, times a loose nearness (``gap`` under about 1.5);
- ``behind`` / ``front``: the feet above (further) or below (nearer) the place's ground point,
  ``sigmoid((gy - y2) / (0.15 h))``, times the boxes lining up across the image (gap across
  under half a height);
- ``inside`` ("in the doorway", "on the crossing"): the feet inside the place's box;
- ``towards`` / ``away`` (over the tracklet's path): how much nearer the place's ground point
  the track came than where it began (``towards``), or how much further it ended than where
  it was nearest (``away``), in heights (depth counted twice: it is foreshortened),
  ``sigmoid((moved - 0.5) / 0.3)``; unknown without the track's path.

A place named by several boxes (three "cone" places) counts as the best of them.

Example:
    >>> [(p.relation, p.names, p.place) for p in read_places("just left of the lamp post".split())]
    [('left', ('lamppost', 'post'), 'lamp post')]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from refind.models.colours import canonical_colour
from refind.models.lexicon import (
    CAMERA_WORDS,
    GROUND_COLOUR,
    HIDDEN_WORDS,
    PERSON_WORDS,
    SCENE_WORDS,
    SHADES,
    known,
)
from refind.streaming.boxes import box_gaps
from refind.streaming.config import PlaceConfig, place_key
from refind.streaming.motion import TrackMotion

LABELS = {"near": "next to", "left": "left of", "right": "right of", "behind": "behind",
          "front": "in front of", "inside": "in", "towards": "going towards",
          "away": "going away from"}
NEAR_HEIGHTS, NEAR_SCALE = 0.5, 0.2  # "next to": boxes within half a person's height
LOOSE_HEIGHTS, LOOSE_SCALE = 1.5, 0.4  # "left of the lamp post" still means around it
APPROACH_HEIGHTS, APPROACH_SCALE = 0.5, 0.3
_DETERMINERS = ("the", "a", "an", "that", "this", "those", "these", "some")
_NEAR_WORDS = ("near", "nearby", "beside", "besides", "by", "around", "at", "alongside", "past")
_TO_WORDS = ("towards", "toward", "to", "into")
_MAX_NAME_WORDS = 4
# relation words that also say other things ("in red", "on his phone", "listening to music"):
# the place after them must be a scene word
_STRICT = ("in", "inside", "within", "on", "to", "into", "at", "from")
_NOT_PLACES = ("each", "other", "one", "ones", "someone", "somebody", "everyone", "him", "her",
               "them", "me", "it", "himself", "herself", "themselves")


@dataclass(frozen=True)
class PlacePhrase:
    """Words relating a person to a place: the relation (a key of ``LABELS``), the place's names to
    look up (``place_key`` form, most specific first: "lamppost", then "post"), the place as
    written ("lamp post"), the words read, and whether it is negated or a superlative ("the
    closest to the bench")."""

    relation: str
    names: tuple[str, ...]
    place: str
    words: str
    negated: bool = False
    superlative: bool = False


def read_places(words: Sequence[str], used: list[bool] | None = None,
                negated_at: Callable[[int], bool] | None = None) -> list[PlacePhrase]:
    """Every relation to a named place in ``words`` (lower-case tokens); marks the words read
    in ``used`` (the relation and the place's name; a verb before it is left to the motion
    reader: "walks from the building towards the camera" also comes closer)."""
    used = used if used is not None else [False] * len(words)
    out: list[PlacePhrase] = []
    i = 0
    while i < len(words):
        found = None if used[i] else _relation_at(words, i)
        if found is None:
            i += 1
            continue
        relation, start, superlative = found
        names, end, place = _place_name(words, start, used, strict=words[i] in _STRICT)
        if not names:
            i += 1
            continue
        out.append(PlacePhrase(relation, names, place, " ".join(words[i:end]),
                               negated_at(i) if negated_at else False, superlative))
        used[i:end] = [True] * (end - i)
        i = end
    return out


def _relation_at(words: Sequence[str], i: int) -> tuple[str, int, bool] | None:
    """The relation that begins at ``i``, the index where its place's name may begin, and
    whether it is a superlative; None when no relation begins there."""
    w, nxt = words[i], (words[i + 1] if i + 1 < len(words) else "")
    if w in ("left", "right"):
        j = i + 1
        if words[j : j + 1] == ["hand"]:
            j += 1
        if words[j : j + 1] == ["side"]:
            j += 1
        return (w, j + 1, False) if words[j : j + 1] == ["of"] else None
    if w in ("next", "close", "near") and nxt == "to":
        return "near", i + 2, False
    if w in ("closest", "nearest") and nxt == "to":
        return "near", i + 2, True
    if w == "by" and i > 0 and words[i - 1] in HIDDEN_WORDS:
        return "behind", i + 1, False  # "half obscured by a parked van"
    if w in _NEAR_WORDS:
        return "near", i + 1, False
    if w in ("behind", "beyond"):
        return "behind", i + 1, False
    if w == "in" and words[i + 1 : i + 3] == ["front", "of"]:
        return "front", i + 3, False
    if w in ("in", "inside", "within", "on"):
        return "inside", i + 1, False
    if w == "away" and nxt == "from":
        return "away", i + 2, False
    if w in ("leaving", "leaves", "from"):
        return "away", i + 1, False
    if w in _TO_WORDS or w in ("approaching", "approaches", "entering", "enters"):
        return "towards", i + 1, False
    return None


def _place_name(words: Sequence[str], start: int, used: Sequence[bool], strict: bool = False,
                ) -> tuple[tuple[str, ...], int, str]:
    """The names a place phrase at ``start`` may be looked up by ("the white van" ->
    "whitevan", "van"), the index after it and the place as written; ``()`` when no place is
    named there (a person, the camera, a colour of clothing, a part of the body, the ground
    someone walks on, which its colour tells). ``strict``: the place must be a word of the
    scene's lexicon, not any unknown word ("in a hoodie" is clothing, "listening to music" no
    place)."""
    j = start
    while j < len(words) and words[j] in _DETERMINERS:
        j += 1
    taken: list[str] = []
    while j < len(words) and len(taken) < _MAX_NAME_WORDS and not used[j]:
        w = words[j]
        if w in PERSON_WORDS or w in CAMERA_WORDS or w in _NOT_PLACES or w == ",":
            break
        if w in SCENE_WORDS or not known(w) or w in SHADES or canonical_colour(w) is not None:
            taken.append(w)
            j += 1
            continue
        break
    # a shade or colour says what the place is like ("the white van"), unless it ends the name
    # ("the street light")
    nouns = [w for k, w in enumerate(taken) if k == len(taken) - 1
             or (w not in SHADES and canonical_colour(w) is None)]
    head = nouns[-1] if nouns else ""
    if not nouns or not (head in SCENE_WORDS or (not strict and not known(head))
                         or (len(nouns) > 1 and nouns[-2] in SCENE_WORDS)) \
            or head in GROUND_COLOUR:
        return (), start, ""
    names = [place_key("".join(taken)), place_key("".join(nouns)), place_key(nouns[-1])]
    # "the sign on the lamp post": the place may be named by either
    if j + 1 < len(words) and words[j] in ("on", "of", "at", "by"):
        more, after, _ = _place_name(words, j + 1, used)
        if more:
            names += list(more)
            j = after
    return tuple(dict.fromkeys(names)), j, " ".join(taken)


def find_places(names: Sequence[str], places: Sequence[PlaceConfig], written: str = "",
                similar: Callable[[str, Sequence[str]], int | None] | None = None,
                ) -> list[PlaceConfig]:
    """The places a phrase's ``names`` name: those answering to the first name any place
    answers to; else, with ``similar`` (MiniLM: the index of the place name nearest in
    meaning to the ``written`` words, or None), the nearest; else none."""
    for name in names:
        hits = [p for p in places if name in p.names]
        if hits:
            return hits
    if similar is not None and places and written:
        best = similar(written, [p.name for p in places])
        if best is not None:
            return [p for p in places if p.name == places[best].name]
    return []


def place_probability(relation: str, places: Sequence[PlaceConfig],
                      xyxy: Sequence[float], frame_wh: tuple[int, int],
                      motion: TrackMotion | None = None) -> float | None:
    """How likely a person with box ``xyxy`` (frame pixels, frames of ``frame_wh``) and track
    ``motion`` stands in ``relation`` to the best of ``places`` (module docstring); None when
    it cannot be told (a motion relation without the track's ends)."""
    best: float | None = None
    for place in places:
        p = _one(relation, place, xyxy, frame_wh, motion)
        if p is not None:
            best = p if best is None else max(best, p)
    return best


def place_distance(places: Sequence[PlaceConfig], xyxy: Sequence[float],
                   frame_wh: tuple[int, int]) -> float:
    """The gap ``near`` is judged on, to the nearest of ``places``, in person heights."""
    return min(_gap(_pixels(p, frame_wh)[0], xyxy) for p in places)


def _one(relation: str, place: PlaceConfig, xyxy: Sequence[float], frame_wh: tuple[int, int],
         motion: TrackMotion | None) -> float | None:
    x1, _, x2, y2 = (float(v) for v in xyxy)
    h = max(float(xyxy[3]) - float(xyxy[1]), 1.0)
    box, (_, gy) = _pixels(place, frame_wh)
    bx1, by1, bx2, by2 = box
    cx = (x1 + x2) / 2
    gap = _gap(box, xyxy)
    loose = _sigmoid((LOOSE_HEIGHTS - gap) / LOOSE_SCALE)
    across = box_gaps(box, xyxy)[0] / h  # gap between the boxes across the image
    if relation == "near":
        return _sigmoid((NEAR_HEIGHTS - gap) / NEAR_SCALE)
    if relation == "left":
        return _sigmoid((bx1 - cx) / (0.25 * h)) * loose
    if relation == "right":
        return _sigmoid((cx - bx2) / (0.25 * h)) * loose
    if relation in ("behind", "front"):
        depth = (gy - y2) if relation == "behind" else (y2 - gy)
        return _sigmoid(depth / (0.15 * h)) * _sigmoid((0.5 - across) / 0.2)
    if relation == "inside":
        margin = min(cx - bx1, bx2 - cx, y2 - by1, by2 - y2) / h
        return _sigmoid(margin / 0.1)
    return _approach(relation, place.ground_xy, motion)


def _approach(relation: str, ground: tuple[float, float], m: TrackMotion | None) -> float | None:
    """``towards``: how much nearer the place (``ground``: fractions of the frame) the track
    came than where it began ("walks over to the lamp post and then leaves" went to it);
    ``away``: how much further it ended than where it was nearest."""
    if m is None or len(m.path) < 2 or m.frame_wh is None:
        return None
    gx, gy = ground[0] * m.frame_wh[0], ground[1] * m.frame_wh[1]  # fractions -> pixels
    d = [math.hypot(x - gx, 2 * (y - gy)) for x, y in m.path]  # depth counted twice
    moved = (d[0] - min(d)) if relation == "towards" else (d[-1] - min(d))
    return _sigmoid((moved / max(m.height_px, 1.0) - APPROACH_HEIGHTS) / APPROACH_SCALE)


def _pixels(place: PlaceConfig, frame_wh: tuple[int, int],
            ) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
    w, h = frame_wh
    x1, y1, x2, y2 = place.box
    gx, gy = place.ground_xy
    return (x1 * w, y1 * h, x2 * w, y2 * h), (gx * w, gy * h)


def _gap(box: tuple[float, float, float, float], xyxy: Sequence[float]) -> float:
    """The distance between a place's box and a person's in the image (0 where they overlap),
    in the person's heights."""
    return math.hypot(*box_gaps(box, xyxy)) / max(float(xyxy[3]) - float(xyxy[1]), 1.0)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 50.0), -50.0)))
