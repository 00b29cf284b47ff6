"""What an operator's words ask for: free text -> a ``ReferQuery`` of checkable terms.

``parse_query`` reads English descriptions of people ("the two men in black walking towards the
camera", "woman with long dark hair in a bright red top", "not the one in black") into terms of
six kinds, each a thing the evidence of a person can confirm or refute:

- ``colour``: a colour on a part of the person (``top``, ``bottom``, ``shoes``, ``hair``,
  ``head``), on the clothing as a whole (``outfit``: "in black", "dressed in red"), or on
  something carried (``carried``: "holding a white paper");
- ``attribute``: an attribute of the 0230 model (man/woman, bag, backpack, hat, long hair, long
  sleeves), or ``light_hair`` / ``dark_hair`` / ``bald``;
- ``position``: where the person is in the frame (``left``, ``right``, ``top``, ``bottom``,
  ``near``, ``far``, ``middle``; ``superlative`` for "leftmost", "the closest"), ``together``
  for people walking side by side or in a group, or ``hidden`` for a person partly out of sight
  ("hidden behind the sign", "behind the lamp post", "partly visible");
- ``motion``: how the person moves over their tracklet (``left``, ``right``, ``towards``,
  ``away``, ``still``, ``fast``, ``moving``);
- ``place``: where the person is or goes by a named place of the view (``refind.models.places``:
  "just left of the lamp post", "walking towards the gate"); ``part`` holds the place's names;
- ``person``: where the person is by another person ("the man next to the woman in red",
  ``refind.models.relations``): the other person's words are read apart, as ``anchor``.

It also reads how many people are meant (``count``: "the two" -> 2; ``plural`` for "people",
"everyone", "all three") and negation ("without a bag", "not the one in black" flip a term).
Words it cannot use are kept in ``ignored`` so the answer can say so ("ignored: 'umbrella'").

Words outside the lexicon (``refind.models.lexicon``) may still be understood: ``ConceptMap``
maps an unknown word to the
nearest known concept word with the MiniLM sentence encoder (cosine >= ``min_similarity``), so
"burgundy" can become a colour or "trainers" footwear without a list entry; the mapping is
reported in ``mapped``.

Example:
    >>> q = parse_query("a woman without a bag in a red top, walking left near the fountain")
    >>> [t.label() for t in q.terms], q.ignored
    (['top red', 'woman', 'not bag', 'next to the fountain', 'walking left'], ())
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from refind.models.colours import COLOUR_NAMES, canonical_colour
from refind.models.lexicon import (
    ATTRIBUTE_WORDS,
    AWAY_WORDS,
    CAMERA_WORDS,
    CARRIED_WORDS,
    EDGE_SIDES,
    ENTER_VERBS,
    EXIT_VERBS,
    FAST_WORDS,
    FRAME_WORDS,
    GARMENT_PART,
    GLUE,
    GROUND_COLOUR,
    HAVING,
    HIDDEN_WORDS,
    IN_OUT,
    INTENSIFIED,
    MOTION_VERBS,
    NEGATIONS,
    NUMBERS,
    ON_GROUND,
    PART_OF_THING,
    PARTLY,
    PERSON_WORDS,
    PHRASE_ATTRIBUTES,
    PLACES,
    PLURAL_WORDS,
    POSTURE_WORDS,
    SCENE_WORDS,
    SHADES,
    STILL_WORDS,
    TOGETHER_WORDS,
    TOWARDS_WORDS,
    WHOLLY,
    known,
)
from refind.models.places import LABELS as PLACE_LABELS
from refind.models.places import read_places
from refind.models.relations import LABELS as PERSON_LABELS
from refind.models.relations import split_relation

# --- what a text asks for -----------------------------------------------------------------------

@dataclass(frozen=True)
class Term:
    """One checkable thing a query asks for.

    kind: colour | attribute | position | motion | unknown (a thing the person must be or have
    that no model here can see: "a child", "walking a dog"); value: a colour name
    (``COLOUR_NAMES``), an attribute, a position or a motion word (module docstring); part:
    where a colour is, or the edge a track enters or leaves by; shade:
    "dark" / "light" / "bright" or ""; superlative: "leftmost", "the closest" (judged against
    the other candidates of the same frame); negated: "without", "not"; words: the words read.
    """

    kind: str
    value: str
    part: str = ""
    shade: str = ""
    superlative: bool = False
    negated: bool = False
    words: str = ""

    def label(self) -> str:
        """Short words for reasons: "top red", "no bag", "walking left", "leftmost"."""
        neg = "not " if self.negated else ""
        if self.kind == "colour" and self.part == "ground":
            return f"{neg}on {self.value} ground"
        if self.kind == "colour":
            value = self.value.replace("|", "-")  # a blend: "grey-brown"
            return f"{neg}{self.part} {(self.shade + ' ') if self.shade else ''}{value}"
        if self.kind == "motion":
            side = f" {self.part}" if self.part else ""
            return f"{neg}{MOTION_LABELS.get(self.value, self.value)}{side}"
        if self.kind == "position":
            label = _SUPERLATIVES.get(self.value, self.value) if self.superlative else \
                _POSITIONS.get(self.value, self.value)
            return f"{neg}{label}"
        if self.kind == "unknown":
            return f"{neg}{self.value} (no model sees it)"
        if self.kind == "person":
            return f"{neg}{PERSON_LABELS[self.value]} {self.words}"
        if self.kind == "place":
            closest = "closest to" if self.superlative else PLACE_LABELS[self.value]
            return f"{neg}{closest} the {self.words}"
        if self.value == "is_male":
            return "woman" if self.negated else "man"
        return f"{neg}{ATTRIBUTE_LABELS.get(self.value, self.value)}"


MOTION_LABELS = {"left": "walking left", "right": "walking right", "towards": "coming closer",
                  "enter": "entering from the", "exit": "leaving at the",
                  "away": "going away", "still": "standing still", "fast": "moving fast",
                  "moving": "moving"}
_POSITIONS = {"left": "on the left", "right": "on the right", "top": "up the frame",
              "bottom": "low in the frame", "near": "near the camera", "far": "far away",
              "middle": "in the middle", "together": "with others", "hidden": "partly hidden"}
_SUPERLATIVES = {"left": "leftmost", "right": "rightmost", "top": "highest", "bottom": "lowest",
                 "near": "closest", "far": "furthest", "middle": "most central"}
ATTRIBUTE_LABELS = {"is_male": "man", "has_bag": "bag", "has_backpack": "backpack",
                     "has_hat": "hat", "has_longhair": "long hair",
                     "has_longsleeves": "long sleeves", "light_hair": "light hair",
                     "dark_hair": "dark hair", "bald": "bald"}


@dataclass(frozen=True)
class ReferQuery:
    """What a text asks for: terms, how many people (``count``: an exact number or None;
    ``plural``: several may match), the words not understood, words mapped by MiniLM, and the
    part of the person the text is about, when it names a part before any person ("the red
    bag", "his jacket", "her trousers": ``top``, ``bottom``, ``shoes``, ``hair``, ``head``)."""

    text: str
    terms: tuple[Term, ...] = ()
    count: int | None = None
    plural: bool = False
    ignored: tuple[str, ...] = ()
    mapped: tuple[tuple[str, str], ...] = ()
    part: str | None = None  # the text is about this part of a person ("her trousers")
    anchor: ReferQuery | None = None  # the other person a "person" term relates this one to

    @property
    def checkable(self) -> bool:
        return bool(self.terms)

    def as_dict(self) -> dict[str, object]:
        return {
            "terms": [t.label() for t in self.terms], "count": self.count, "plural": self.plural,
            "ignored": list(self.ignored), "mapped": dict(self.mapped), "part": self.part,
            **({"anchor": self.anchor.as_dict()} if self.anchor is not None else {}),
        }  # fmt: skip


# --- mapping unknown words onto the lexicon ------------------------------------------------------

def concept_words() -> tuple[str, ...]:
    """The words an unknown word may be mapped onto (colours, garments, carried things, motion,
    attribute words), each a plain English word MiniLM knows."""
    words = set(COLOUR_NAMES) | set(GARMENT_PART) | set(ATTRIBUTE_WORDS) | set(CARRIED_WORDS)
    words |= MOTION_VERBS | STILL_WORDS | FAST_WORDS | {"left", "right", "towards", "away"}
    return tuple(sorted(w for w in words if "-" not in w))


@dataclass
class ConceptMap:
    """Maps a word the lexicon lacks onto its nearest concept word by MiniLM cosine similarity.

    embed: texts -> (n, d) L2-normalised vectors (``minilm_embedder``); words below
    ``min_similarity`` to every concept stay unknown. Results are kept per word.
    """

    embed: Callable[[Sequence[str]], np.ndarray]
    min_similarity: float = 0.55
    _concepts: tuple[str, ...] = field(default_factory=concept_words)
    _matrix: np.ndarray | None = None
    _seen: dict[str, str | None] = field(default_factory=dict)

    def __call__(self, word: str) -> str | None:
        if word not in self._seen:
            if self._matrix is None:
                self._matrix = self.embed(self._concepts)  # (c, d)
            sims = self._matrix @ self.embed([word])[0]  # (c,)
            best = int(np.argmax(sims))
            self._seen[word] = self._concepts[best] if sims[best] >= self.min_similarity else None
        return self._seen[word]


def minilm_embedder() -> Callable[[Sequence[str]], np.ndarray] | None:
    """Mean-pooled, normalised all-MiniLM-L6-v2 sentence vectors, or None when the torch extra
    is not installed (then only the lexicon is used, and unknown words are reported)."""
    from refind.extras import missing_modules

    if missing_modules("torch"):
        return None
    from refind.models.minilm import MiniLmTokens

    tokens = MiniLmTokens(max_tokens=16)

    def embed(texts: Sequence[str]) -> np.ndarray:
        states = tokens(list(texts))
        vecs = np.stack([s[1:-1].mean(axis=0) if len(s) > 2 else s.mean(axis=0) for s in states])
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)

    return embed


# --- parsing -----------------------------------------------------------------------------------

def _tokens(text: str) -> list[str]:
    """Lower-case words; a hyphenated word the lexicon lacks is split ("red-and-blue" -> "red",
    "and", "blue"), one it has is kept ("t-shirt", "long-haired")."""
    out: list[str] = []
    for w in re.findall(r"[a-z]+(?:['-][a-z]+)*|[,.;:!?]", text.lower()):
        if w in ",.;:!?":
            out.append(",")  # a clause boundary: colours do not reach across it
        elif _blend(w) is not None:
            out.append(w)  # "grey-brown": one colour between two names, kept as one word
        elif "-" in w and not (w in GARMENT_PART or w in ATTRIBUTE_WORDS or w in GLUE):
            out += w.split("-")
        else:
            out.append(w)
    return out


def parse_query(text: str, concepts: ConceptMap | None = None) -> ReferQuery:
    """Read ``text`` into a ``ReferQuery`` (module docstring). Never raises on words it does not
    know: they end in ``ignored`` (after ``concepts`` had a chance to map them)."""
    raw = _tokens(text)
    words, mapped = _mapped(raw, concepts)
    related = split_relation(words)
    if related is not None:  # "the man next to the woman in red": two people, read apart
        mine, relation, theirs = related
        target, anchor = parse_query(" ".join(mine)), parse_query(" ".join(theirs))
        term = Term("person", relation, words=" ".join(theirs))
        return replace(target, text=text, terms=(*target.terms, term),
                       ignored=tuple(dict.fromkeys(target.ignored + anchor.ignored)),
                       mapped=tuple(mapped), anchor=anchor)
    reader = _Reader(words)
    reader.phrases()
    reader.colours()
    reader.garments_alone()
    reader.attributes()
    reader.terms += [Term("place", p.relation, "|".join(p.names), superlative=p.superlative,
                          negated=p.negated, words=p.place)
                     for p in read_places(words, reader.used, reader.negated_at)]
    reader.terms += _motion_terms(words, reader.used, reader.negated_at)
    reader.terms += _position_terms(words, reader.used, reader.negated_at)
    count = next((NUMBERS[w] for i, w in enumerate(words)
                  if w in NUMBERS and (i == 0 or words[i - 1] != "of")), None)
    plural = (count is not None and count > 1) or any(w in PLURAL_WORDS for w in words)
    reader.take(*(i for i, w in enumerate(words) if w in NUMBERS or w in PLURAL_WORDS))
    unknown = [i for i, w in enumerate(words)
               if not reader.used[i] and not known(w) and len(w) > 1]
    # a garment or a held thing named without a colour ("in a suit", "on his phone") is known
    # but says nothing refind can check: it is reported, not dropped silently
    unread = [i for i, w in enumerate(words)
              if not reader.used[i] and (w in GARMENT_PART or w in CARRIED_WORDS
                                         or _colour_word(w) is not None)
              and w not in _PART_GLUE]
    ignored = tuple(dict.fromkeys(words[i] for i in sorted(unknown + unread)))
    # "not a child", "not sitting": nothing here can check it either way; reported, not asked
    required = tuple(dict.fromkeys(words[i] for i in unknown
                                   if _required(words, i) and not reader.negated_at(i)))
    reader.terms += [Term("unknown", w, words=w) for w in required]
    # duplicates (the last word wins for the same kind, value, part and superlative)
    seen: dict[tuple[str, str, str, bool], Term] = {}
    for t in reader.terms:
        seen[(t.kind, t.value, t.part, t.superlative)] = t
    return ReferQuery(text, tuple(seen.values()), count, plural, ignored, tuple(mapped),
                      _part_asked(words))


def _mapped(raw: list[str], concepts: ConceptMap | None,
            ) -> tuple[list[str], list[tuple[str, str]]]:
    """The words with possessives cut ("man's" -> "man") and unknown ones mapped by
    ``concepts``; and the mappings made."""
    words: list[str] = []
    mapped: list[tuple[str, str]] = []
    for w in raw:
        base = w.split("'")[0]
        if not known(base) and _blend(base) is None and concepts is not None and len(base) > 2:
            m = concepts(base)
            if m is not None and m != base:
                mapped.append((base, m))
                words.append(m)
                continue
        words.append(base)
    return words, mapped


class _Reader:
    """The words of one text, which of them are read, and the terms read so far."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.used = [False] * len(words)
        self.terms: list[Term] = []

    def negated_at(self, i: int) -> bool:
        """Is the word at ``i`` negated: "not" up to four words before ("not the one in
        black"), or another negation up to three before ("without a bag")?"""
        window = self.words[max(0, i - 4) : i]
        if "," in window:  # a negation ends where a new clause begins ("not hidden, in red"),
            cut = len(window) - window[::-1].index(",")  # not in a list ("no hat, bag or coat")
            if cut < len(window) and window[cut] in _CLAUSE_STARTS:
                window = window[cut:]
        if "not" in window and "only" not in window:
            return True
        return any(w in NEGATIONS for w in window[-3:])

    def take(self, *idx: int) -> None:
        for j in idx:
            if 0 <= j < len(self.words):
                self.used[j] = True

    def phrases(self) -> None:
        """Fixed phrases first ("long hair", "on their back", "light haired")."""
        words, i = self.words, 0
        while i < len(words) - 1:
            for n in (3, 2):
                phrase = " ".join(words[i : i + n])
                if phrase in PHRASE_ATTRIBUTES:
                    name, value = PHRASE_ATTRIBUTES[phrase]
                    self.terms.append(Term("attribute", name, words=phrase,
                                           negated=self.negated_at(i) != (not value)))
                    self.take(*range(i, i + n))
                    if phrase.endswith(" hair") and i > 0 and words[i - 1] == "long":
                        self.terms.append(Term("attribute", "has_longhair", words="long hair"))
                        self.take(i - 1)
                    i += n - 1
                    break
            i += 1

    def colours(self) -> None:
        """Colours with what they colour: a garment within four words, else something held
        ("holding something white") or the outfit ("in black"); hair colours are hair shades."""
        words = self.words
        for i, w in enumerate(words):
            if self.used[i]:
                continue
            colour, shade = _colour_word(w), _shade_before(words, i)
            if w == "dark" and _colour_word(words[i + 1] if i + 1 < len(words) else "") is None:
                colour, shade = "black", "dark"  # "dark jacket"
            if colour is None:
                continue
            part, end = _coloured_part(words, i + 1)
            if part == "scene":
                continue  # left unread: reported with the answer
            if part == "hair":
                self._hair(i, colour, shade, end)
                continue
            if part is None:
                held = any(x in ("something", "holding", "carrying", "holds", "carries")
                           for x in words[max(0, i - 2) : i])
                part = "carried" if held else "outfit"
            read = " ".join([w, words[end - 1]]) if end > i + 1 else w
            self.terms.append(Term("colour", colour, part, shade, negated=self.negated_at(i),
                                   words=read))
            # the colour word, its shade, and the garment; a colour between them is read in turn
            self.take(i, *([i - 1] if shade and i > 0 and words[i - 1] in SHADES else []))
            if end > i + 1:
                self._coloured_thing(i, end - 1)
                self.take(end - 1, *(j for j in range(i + 1, end - 1) if words[j] in ("and", "-")))

    def _coloured_thing(self, i: int, noun: int) -> None:
        """A coloured bag, backpack or hat is first of all a bag, backpack or hat: "a white bag"
        asks for the thing (an attribute model sees it) as well as its colour. Not when negated
        ("without a black bag" allows a red one), nor for a carrier bag: it is held, not worn,
        and its colour alone is read."""
        name, value = ATTRIBUTE_WORDS.get(self.words[noun], ("", False))
        if name not in ("has_bag", "has_backpack", "has_hat") or self.negated_at(i) or any(
                w in ("carrier", "plastic", "shopping") for w in self.words[i:noun]):
            return
        if name == "has_bag" and any(t.kind == "attribute" and t.value == "has_backpack"
                                     and t.words.startswith("on ") for t in self.terms):
            return  # "a dark bag on their back" is the backpack that phrase read
        self.terms.append(Term("attribute", name, words=self.words[noun], negated=not value))

    def _hair(self, i: int, colour: str, shade: str, end: int) -> None:
        """"dark hair" / "long blonde hair": a hair shade (and length) rather than a colour."""
        words = self.words
        attr = "dark_hair" if colour in ("black", "brown") or shade == "dark" else "light_hair"
        self.terms.append(Term("attribute", attr, negated=self.negated_at(i),
                               words=words[i] + " hair"))
        if "long" in words[max(0, i - 2) : i]:
            self.terms.append(Term("attribute", "has_longhair", words="long hair"))
        self.take(i, end - 1, *(j for j in range(max(0, i - 2), i)
                                if words[j] in ("long", "short", *SHADES)))

    def garments_alone(self) -> None:
        """A garment alone still says something: "the guy in jeans" (jeans are blue)."""
        for i, w in enumerate(self.words):
            if not self.used[i] and w in ("jeans", "denim"):
                self.terms.append(Term("colour", "blue", "bottom", negated=self.negated_at(i),
                                       words=w))
                self.used[i] = True

    def attributes(self) -> None:
        """Attribute words: man / woman, bag, backpack, hat, hair, sleeves."""
        words = self.words
        for i, w in enumerate(words):
            if self.used[i] or w not in ATTRIBUTE_WORDS:
                continue
            name, value = ATTRIBUTE_WORDS[w]
            self.used[i] = True
            if w in ("bag", "bags") and i > 0 and words[i - 1] in ("carrier", "plastic",
                                                                      "shopping"):
                continue  # a carrier bag is held, not worn: its colour was read above
            if name == "is_male" and w in ("his", "him", "her") and any(
                    t.kind == "attribute" and t.value == "is_male" for t in self.terms):
                continue
            self.terms.append(Term("attribute", name, words=w,
                                   negated=self.negated_at(i) != (not value)))


# words that begin a new clause after a comma, where a negation before the comma ends
_CLAUSE_STARTS = HAVING | PLACES | MOTION_VERBS | STILL_WORDS | HIDDEN_WORDS | PERSON_WORDS


def _part_asked(words: list[str]) -> str | None:
    """The part a text is about: a garment or carried thing named before any person word."""
    for w in words:
        if w in PERSON_WORDS or (w in ATTRIBUTE_WORDS and ATTRIBUTE_WORDS[w][0] == "is_male" \
                and w not in ("his", "her", "him")):
            return None
        if w in PART_OF_THING:
            return PART_OF_THING[w]
        if w in GARMENT_PART and w not in _PART_GLUE:
            return GARMENT_PART[w]
    return None


def _required(words: list[str], i: int) -> bool:
    """Does the unknown word at ``i`` name something the person must be or have? Yes for what
    the person is ("a child", "a police officer": unknown words before any known content, after
    the opening article) and what they hold or use ("walking a dog", "in a wheelchair"), unless
    a place word comes first ("near the cones" describes a landmark, not the person), it names a
    part of the scene ("walking on the grass") or a known thing follows (then it says what that
    thing is like: "plastic bag", "knee-length coat"). What the person is doing that no model
    sees ("sitting", "cycling") is required."""
    if words[i] in POSTURE_WORDS:
        return True  # what the person is doing ("sitting", "cycling")
    if words[i] in SCENE_WORDS:
        return False  # a place in the scene, not something the person is or has
    if any(w in GARMENT_PART or w in CARRIED_WORDS or w in ATTRIBUTE_WORDS
           for w in words[i + 1 : i + 4]):
        return False
    before = words[max(0, i - 3) : i]
    for w in reversed(before):
        if w in PLACES:
            return False
        if w in HAVING:
            return True
    lead = 0
    while lead < len(words) and words[lead] in ("a", "an", "the", "some", "any"):
        lead += 1
    return lead > 0 and all(not known(w) for w in words[lead : i + 1])


def _colour_word(w: str) -> str | None:
    """The colour ``w`` names: a colour name, ``"a|b"`` for a blend ("grey-brown"), or None."""
    if w == "dark":
        return None
    return _blend(w) or canonical_colour(w)


def _blend(w: str) -> str | None:
    """"grey-brown", "blue-green": a colour between two names, as ``"grey|brown"`` (either
    name's pixels count for it); None for anything else ("red-and-blue" names two colours)."""
    parts = w.split("-")
    if len(parts) != 2:
        return None
    names = [canonical_colour(p) for p in parts]
    if None in names or names[0] == names[1]:
        return None
    return "|".join(names)  # type: ignore[arg-type]


def _shade_before(words: list[str], i: int) -> str:
    if i > 0 and words[i - 1] in SHADES:
        return SHADES[words[i - 1]]
    if words[i] == "navy":
        return "dark"
    return ""


_PART_GLUE = ("haired", "upper", "lower")  # name a part only with another word ("upper body")
_OWNERS = ("whose", "his", "her", "their", "its", "the", "a", "my", "your")
_GARMENT_REACH = 6  # words after a colour that may still name what it colours
_COLOUR_STOPS = ("or", "who", "whose", "which", "is", "are", "was", "on", "at", "near", "by",
                 ",")


def _coloured_part(words: list[str], start: int) -> tuple[str | None, int]:
    """The part the colour at ``start - 1`` colours, and the index after the words read.

    The garment may come a few words on, past other colours joined by "and" and adjectives ("red
    and navy two-tone padded jacket"); a verb ("in red carrying a black bag", "in black wearing a
    red cap"), a place or clause word ("in blue next to a bag") or another colour of its own ends
    the search: the colour is then the outfit's (or what is held, see ``_Reader.colours``). A
    part of the scene ("a red bench") takes the colour away from the person: ``"scene"``."""
    for j in range(start, min(start + _GARMENT_REACH, len(words))):
        w = words[j]
        if w in GARMENT_PART:
            return GARMENT_PART[w], j + 1
        if w in CARRIED_WORDS:
            return "carried", j + 1
        if w in SCENE_WORDS:
            return "scene", j + 1  # "a red bench": the scene's colour, not the person's
        if (w in _COLOUR_STOPS or w in HAVING or w in PLACES or w in MOTION_VERBS
                or w in STILL_WORDS):
            return None, start
        if w == "and" and j + 1 < len(words) and _colour_word(words[j + 1]) is None \
                and words[j + 1] not in SHADES:
            return None, start
        if j > start and _colour_word(w) is not None and words[j - 1] not in ("and", "-", "or") \
                and words[j - 1] not in SHADES:
            return None, start  # "blue ... white hat": the garment is the other colour's
    return None, start


def _motion_terms(words: list[str], used: list[bool], negated_at: Callable[[int], bool],
                  ) -> list[Term]:
    terms: list[Term] = []
    # "from right to left" / "from left to right"
    for i in range(len(words) - 3):
        if words[i] == "from" and words[i + 1] in ("left", "right") and words[i + 2] == "to" \
                and words[i + 3] in ("left", "right"):
            terms.append(Term("motion", words[i + 3], words=" ".join(words[i : i + 4])))
            used[i + 1] = used[i + 3] = True
    terms += _enter_exit_terms(words, used, negated_at)
    terms += _facing_terms(words, used, negated_at)
    verb_at = [i for i, w in enumerate(words)
               if (w in MOTION_VERBS or w in STILL_WORDS) and not used[i]
               and not (w in ("head", "heads") and i and words[i - 1] in _OWNERS)]  # "whose head"
    for i, w in enumerate(words):
        if w in STILL_WORDS and not used[i]:
            terms.append(Term("motion", "still", negated=negated_at(i), words=w))
            used[i] = True
        elif w in FAST_WORDS and not used[i]:
            terms.append(Term("motion", "fast", negated=negated_at(i), words=w))
            used[i] = True
    for v in verb_at:
        found = False
        for j in range(v + 1, min(v + 6, len(words))):
            w = words[j]
            if w in ("left", "right") and not used[j]:
                # "to the left" after a verb is a direction; "on the left" a position
                if words[j - 1] in ("on",) or (j >= 2 and words[j - 2] == "on"):
                    break
                # "walks from the right (side)" names where the walk began: it goes the other way
                origin = words[j - 1] == "from" or words[j - 2 : j] == ["from", "the"]
                way = {"left": "right", "right": "left"}[w] if origin else w
                terms.append(Term("motion", way, negated=negated_at(v),
                                  words=" ".join(words[v : j + 1]) if origin else f"{words[v]} {w}"))
                if origin:  # "... to the left": the same walk's end, not a position
                    for k in range(j + 1, min(j + 4, len(words))):
                        if words[k] == way and words[j + 1] in ("to", "towards", "toward"):
                            used[k] = True
                            break
                used[j] = used[v] = found = True
                break
            way = "towards" if w in TOWARDS_WORDS else "away" if w in AWAY_WORDS else None
            if way is not None and not used[j]:
                terms.append(Term("motion", way, negated=negated_at(v), words=f"{words[v]} {w}"))
                used[j] = used[v] = found = True
                _take_camera(words, used, j)
                break
            if w in MOTION_VERBS or w in ("and", "with", "in", "wearing"):
                break
        if not found and words[v] in ("approaching", "approaches"):
            terms.append(Term("motion", "towards", negated=negated_at(v), words=words[v]))
            used[v] = found = True
            _take_camera(words, used, v)
        if not found and not used[v] and words[v] in MOTION_VERBS and words[v] not in (
                "coming", "comes", "come", "going", "goes", "go", "making", "passing", "passes"):
            terms.append(Term("motion", "moving", negated=negated_at(v), words=words[v]))
            used[v] = True
        elif not found and words[v] in MOTION_VERBS:
            used[v] = True
    if any(t.value in ("left", "right", "towards", "away", "fast") for t in terms):
        terms = [t for t in terms if t.value != "moving"]  # a direction says it moves
    return terms


def _facing_terms(words: list[str], used: list[bool], negated_at: Callable[[int], bool],
                  ) -> list[Term]:
    """Which way a person faces, read as which way they walk (people face where they go; a
    still person's direction is unknown): "with his back to us / the camera", "back turned",
    "facing / turned / looking away" -> going away; "facing us / the camera" -> coming closer."""
    terms: list[Term] = []
    for i, w in enumerate(words):
        rest = words[i + 1 : i + 4]
        if used[i] or not rest:
            continue
        if w == "back" and rest[0] == "turned":
            n, way = 2, "away"
        elif w == "back" and rest[0] == "to" and _camera_named(rest[1:]):
            n, way = 2 + _camera_named(rest[1:]), "away"
        elif w in ("facing", "faces", "turned", "looking") and rest[0] == "away":
            n, way = 2, "away"
        elif w in ("facing", "faces") and _camera_named(rest):
            n, way = 1 + _camera_named(rest), "towards"
        else:
            continue
        terms.append(Term("motion", way, negated=negated_at(i), words=" ".join(words[i : i + n])))
        used[i : i + n] = [True] * n
    return terms


def _camera_named(words: list[str]) -> int:
    """How many leading ``words`` name the camera ("us", "the camera"); 0 if they do not."""
    if words[:1] and words[0] in CAMERA_WORDS:
        return 1
    return 2 if words[:1] == ["the"] and words[1:2] and words[1] in CAMERA_WORDS else 0


def _enter_exit_terms(words: list[str], used: list[bool], negated_at: Callable[[int], bool],
                      ) -> list[Term]:
    """"comes in from the left", "enters from the bottom", "leaves at the right edge", "walks
    out on the left": the edge of the view a track began or ended at."""
    terms: list[Term] = []
    for i, w in enumerate(words):
        if used[i]:
            continue
        kind = "enter" if w in ENTER_VERBS else "exit" if w in EXIT_VERBS else None
        if kind is None and w in MOTION_VERBS and i + 1 < len(words) and words[i + 1] in IN_OUT:
            kind = IN_OUT[words[i + 1]]
        if kind is None:
            continue
        for j in range(i + 1, min(i + 7, len(words))):
            if words[j] in EDGE_SIDES and not used[j]:
                terms.append(Term("motion", kind, EDGE_SIDES[words[j]], negated=negated_at(i),
                                  words=f"{w} {words[j]}"))
                used[i] = used[j] = True
                if i + 1 < len(words) and words[i + 1] in IN_OUT:
                    used[i + 1] = True
                break
            if words[j] in ("and", ",", "then", "while", "but"):
                break
    return terms


def _take_camera(words: list[str], used: list[bool], j: int) -> None:
    for k in range(j + 1, min(j + 4, len(words))):
        if words[k] in CAMERA_WORDS or words[k] == "from":
            used[k] = True


def _once(terms: list[Term], term: Term) -> None:
    """Add ``term`` unless one asking the same thing was read first ("hidden ... behind the
    sign", "on the grass ... across the lawn" are each one thing asked)."""
    if not any((t.kind, t.part, t.value) == (term.kind, term.part, term.value) for t in terms):
        terms.append(term)


def _scene_after(words: list[str], i: int) -> bool:
    """Does a part of the scene follow ``i`` ("behind the lamp post", "behind a parked van"),
    not a person, a verb or another place ("walking behind, crossing the road")?"""
    for w in words[i + 1 : i + 4]:
        if w in PERSON_WORDS or w in MOTION_VERBS or w in PLACES or w in ("on", "in", ","):
            return False
        if w in SCENE_WORDS:
            return True
    return False


def _on_ground(words: list[str], i: int) -> bool:
    """Is the ground word at ``i`` what someone stands on ("on the grass", "across the road"),
    not a thing named ("the road sign", "to the road")?"""
    before = words[max(0, i - 2) : i]
    return bool(before) and (before[-1] in ON_GROUND
                             or (before[-1] in ("the", "a", "an") and before[0] in ON_GROUND))


def _near_camera(words: list[str], i: int) -> bool:
    """"near the camera", "close to the camera" at ``i``."""
    return (words[i] in ("near", "close") and words[i + 1 : i + 2] in (["to"], ["the"])
            and any(c in words[i + 1 : i + 4] for c in CAMERA_WORDS))


def _position_terms(words: list[str], used: list[bool], negated_at: Callable[[int], bool],
                    ) -> list[Term]:
    terms: list[Term] = []
    for i, w in enumerate(words):
        if used[i]:
            continue
        prev = words[i - 1] if i else ""
        nxt = words[i + 1] if i + 1 < len(words) else ""
        value, sup = None, False
        if w in ("leftmost", "rightmost"):
            value, sup = w[:-4], True
        elif w == "right" and nxt in INTENSIFIED:
            used[i] = True  # "right next to", "right behind": not a side
            continue
        elif w in ("left", "right"):
            if nxt == "of" and prev not in ("far", "the", "extreme", "very"):
                continue  # "just left of the lamp post": relative to a landmark
            value, sup = w, prev in ("far", "furthest", "farthest", "extreme", "very")
        elif w in ("closest", "nearest"):
            value, sup = "near", True
        elif _near_camera(words, i) or (w in ("front", "foreground") and prev != "in"):
            value = "near"
        elif w in ("furthest", "farthest") and nxt not in ("left", "right"):
            value, sup = "far", True
        elif w in ("distance", "distant", "background") or (
                w == "far" and nxt not in ("left", "right")):  # "the far side": away from us
            value = "far"
        elif w in ("middle", "centre", "center", "central"):
            value = "middle"
            sup = "group" in words[i : i + 5] or nxt == "of"
        elif w in ("top", "bottom") and any(x in words[i : i + 4] for x in FRAME_WORDS):
            value = w
        elif w in HIDDEN_WORDS or (w == "behind" and _scene_after(words, i)):
            _once(terms, Term("position", "hidden", negated=negated_at(i), words=w))
            used[i] = True
            continue
        elif w == "visible" and prev in PARTLY | WHOLLY:  # "partly visible" is hidden
            _once(terms, Term("position", "hidden", words=f"{prev} {w}",
                              negated=(prev not in PARTLY) != negated_at(i)))
            used[i - 1] = used[i] = True
            continue
        elif w in GROUND_COLOUR and _on_ground(words, i):  # "walking on the grass"
            _once(terms, Term("colour", GROUND_COLOUR[w], "ground", negated=negated_at(i), words=w))
            used[i] = True
            continue
        elif w in TOGETHER_WORDS or (w == "each" and nxt == "other"):
            _once(terms, Term("position", "together", negated=negated_at(i), words=w))
            used[i] = True
            continue
        if value is None:
            continue
        terms.append(Term("position", value, superlative=sup, negated=negated_at(i), words=w))
        used[i] = True
        if prev in ("far", "furthest", "farthest", "very", "extreme"):
            used[i - 1] = True
        _take_camera(words, used, i)
    return terms
