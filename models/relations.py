"""One person described by another: "the man next to the woman in red", "the person behind the
guy with the backpack", "the man to the left of the woman with the bag".

``split_relation`` finds where a text relates the person it asks for (the target) to another
person (the anchor), and cuts it into the target's words, the relation and the anchor's words,
so that each is read on its own: the woman in red is the anchor, not the one asked for. The
referrer then scores each candidate as the best, over the other people of the same frame, of
how well that other person fits the anchor's words times how well the pair stands in the
relation (``relation_probability``), judged from their boxes:

- ``near`` ("next to", "beside", "alongside", "close to"): the gap between the two boxes across
  the image and between their feet down it (counted twice: depth is foreshortened), in person
  heights, ``d``; ``sigmoid((0.75 - d) / 0.25)``;
- ``behind`` / ``front`` ("behind", "following" / "in front of", "ahead of"): the target's feet
  above / below the anchor's (further / nearer), ``sigmoid(dy / (0.15 h))``, with the boxes
  lined up across the image (gap under half a height);
- ``left`` / ``right`` ("to the left of"): the target's centre beyond the anchor's by a margin,
  ``sigmoid(dx / (0.5 h))``, while within about three heights of each other.

Where nobody else is in the frame (in search, a tracklet is judged alone) the relation is
unknown, not false.

Example:
    >>> split_relation("the man next to the woman in red".split())
    (['the', 'man'], 'near', ['the', 'woman', 'in', 'red'])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from refind.models.lexicon import PERSON_WORDS
from refind.streaming.boxes import box_gaps

LABELS = {"near": "next to", "behind": "behind", "front": "in front of", "left": "left of",
          "right": "right of"}
# relation phrases, longest first: words -> relation
_PHRASES: tuple[tuple[tuple[str, ...], str], ...] = tuple(sorted((
    (("next", "to"), "near"), (("close", "to"), "near"), (("beside",), "near"),
    (("alongside",), "near"),
    (("behind",), "behind"), (("following",), "behind"), (("in", "front", "of"), "front"),
    (("ahead", "of"), "front"), (("to", "the", "left", "of"), "left"),
    (("on", "the", "left", "of"), "left"), (("left", "of"), "left"),
    (("to", "the", "right", "of"), "right"), (("on", "the", "right", "of"), "right"),
    (("right", "of"), "right"),
), key=lambda p: -len(p[0])))
_DETERMINERS = ("the", "a", "an", "another", "that", "this", "his", "her", "their", "some")
_NOT_ANCHORS = ("each", "one", "other", "another")  # "next to each other": no one person
_ANCHOR_REACH = 5  # words after the relation within which the anchor's person word must come


def split_relation(words: Sequence[str]) -> tuple[list[str], str, list[str]] | None:
    """(the target's words, the relation, the anchor's words), or None when the text relates
    its person to no other person. The anchor runs to the next comma; what follows the comma
    is the target's again ("the man next to the woman in red, carrying a bag")."""
    for i in range(1, len(words)):
        found = _relation_at(words, i)
        if found is None:
            continue
        relation, start = found
        if not _names_a_person(words, start):
            continue
        end = words.index(",", start) if "," in words[start:] else len(words)
        return list(words[:i]) + list(words[end + 1 :]), relation, list(words[start:end])
    return None


def _relation_at(words: Sequence[str], i: int) -> tuple[str, int] | None:
    """The relation that begins at ``i`` and where its object begins. Not "with": it mostly
    says what a person has, and "walking together with" names both people of a group, which a
    tracklet judged alone cannot show."""
    for phrase, relation in _PHRASES:
        if tuple(words[i : i + len(phrase)]) == phrase:
            return relation, i + len(phrase)
    return None


def _names_a_person(words: Sequence[str], start: int) -> bool:
    """Do the words at ``start`` name one other person ("the woman in red", "a tall man"),
    before a comma, not "each other"?"""
    if start >= len(words) or words[start] in _NOT_ANCHORS:
        return False
    j = start
    while j < len(words) and words[j] in _DETERMINERS:
        j += 1
    for w in words[j : j + _ANCHOR_REACH]:
        if w == ",":
            return False
        if w in PERSON_WORDS and w not in ("who", "he", "she", "one", "everyone", "anyone"):
            return True
    return False


def relation_probability(relation: str, target: Sequence[float],
                         anchor: Sequence[float]) -> float:
    """How likely a person with box ``target`` stands in ``relation`` to one with box
    ``anchor`` (frame pixels; module docstring)."""
    tx1, ty1, tx2, ty2 = (float(v) for v in target)
    ax1, ay1, ax2, ay2 = (float(v) for v in anchor)
    h = max(((ty2 - ty1) + (ay2 - ay1)) / 2, 1.0)
    across = box_gaps(target, anchor)[0] / h
    d = math.hypot(across, 2.0 * (ty2 - ay2) / h)
    if relation == "near":
        return _sigmoid((0.75 - d) / 0.25)
    if relation in ("behind", "front"):
        dy = (ay2 - ty2) if relation == "behind" else (ty2 - ay2)
        return _sigmoid(dy / (0.15 * h)) * _sigmoid((0.5 - across) / 0.2)
    dx = ((ax1 + ax2) - (tx1 + tx2)) / 2 if relation == "left" else ((tx1 + tx2) - (ax1 + ax2)) / 2
    return _sigmoid(dx / (0.5 * h)) * _sigmoid((3.0 - d) / 0.75)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 50.0), -50.0)))
