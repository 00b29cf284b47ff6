"""What an operator's words ask for: free text -> a ``ReferQuery`` of checkable terms.

``parse_query`` reads English descriptions of people ("the two men in black walking towards the
camera", "woman with long dark hair in a bright red top", "not the one in black") into terms of
four kinds, each a thing the evidence of a person can confirm or refute:

- ``colour``: a colour on a part of the person (``top``, ``bottom``, ``shoes``, ``hair``,
  ``head``), on the clothing as a whole (``outfit``: "in black", "dressed in red"), or on
  something carried (``carried``: "holding a white paper");
- ``attribute``: an attribute of the 0230 model (man/woman, bag, backpack, hat, long hair, long
  sleeves), or ``light_hair`` / ``dark_hair`` / ``bald``;
- ``position``: where the person is in the frame (``left``, ``right``, ``top``, ``bottom``,
  ``near``, ``far``, ``middle``; ``superlative`` for "leftmost", "the closest"), or ``together``
  for people walking side by side or in a group;
- ``motion``: how the person moves over their tracklet (``left``, ``right``, ``towards``,
  ``away``, ``still``, ``fast``, ``moving``).

It also reads how many people are meant (``count``: "the two" -> 2; ``plural`` for "people",
"everyone", "all three") and negation ("without a bag", "not the one in black" flip a term).
Words it cannot use are kept in ``ignored`` so the answer can say so ("ignored: 'umbrella'").

Words outside the lexicon may still be understood: ``ConceptMap`` maps an unknown word to the
nearest known concept word with the MiniLM sentence encoder (cosine >= ``min_similarity``), so
"burgundy" can become a colour or "trainers" footwear without a list entry; the mapping is
reported in ``mapped``.

Example:
    >>> q = parse_query("a woman without a bag in a red top, walking left")
    >>> [(t.kind, t.value, t.part, t.negated) for t in q.terms]
    [('attribute', 'is_male', '', True), ('attribute', 'has_bag', '', True), \
('colour', 'red', 'top', False), ('motion', 'left', '', False)]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from refind.models.colours import COLOUR_NAMES, canonical_colour

# --- the lexicon -------------------------------------------------------------------------------

GARMENT_PART: dict[str, str] = {
    **dict.fromkeys((
        "top", "shirt", "t-shirt", "tshirt", "tee", "jacket", "coat", "sweater", "jumper",
        "hoodie", "blouse", "pullover", "cardigan", "vest", "sweatshirt", "parka", "anorak",
        "fleece", "raincoat", "overcoat", "gilet", "windbreaker", "suit", "uniform", "dress",
        "tunic", "hood", "upper", "tank", "polo", "mac", "trenchcoat", "blazer", "puffer",
    ), "top"),
    **dict.fromkeys((
        "trousers", "pants", "jeans", "shorts", "skirt", "bottoms", "leggings", "slacks", "chinos",
        "joggers", "tracksuit", "khakis", "cargos", "lower", "legs",
    ), "bottom"),
    **dict.fromkeys(("shoes", "trainers", "sneakers", "boots", "shoe", "footwear", "sandals"),
                    "shoes"),
    **dict.fromkeys(("hair", "haired"), "hair"),
    **dict.fromkeys(("hat", "cap", "beanie", "helmet", "headscarf", "hijab"), "head"),
}
CARRIED_WORDS = ("paper", "papers", "sheet", "folder", "bag", "bags", "carrier", "box", "package",
                 "parcel", "file", "document", "documents", "envelope", "cup", "bottle", "phone")
# word -> (attribute, value)
ATTRIBUTE_WORDS: dict[str, tuple[str, bool]] = {
    **dict.fromkeys(("man", "male", "guy", "gentleman", "men", "he", "his", "him", "bloke",
                     "gentlemen", "guys", "lad", "sir"), ("is_male", True)),
    **dict.fromkeys(("woman", "female", "lady", "women", "she", "her", "ladies", "girl", "madam"),
                    ("is_male", False)),
    **dict.fromkeys(("backpack", "rucksack", "knapsack", "backpacks"), ("has_backpack", True)),
    **dict.fromkeys(("bag", "handbag", "purse", "briefcase", "satchel", "bags", "tote",
                     "shoulderbag"), ("has_bag", True)),
    **dict.fromkeys(("hat", "cap", "beanie", "helmet"), ("has_hat", True)),
    **dict.fromkeys(("bald", "shaved"), ("bald", True)),
    **dict.fromkeys(("blonde", "blond", "fair-haired", "light-haired", "grey-haired", "fair",
                     "white-haired", "silver-haired"), ("light_hair", True)),
    **dict.fromkeys(("dark-haired", "brunette", "black-haired", "brown-haired"),
                    ("dark_hair", True)),
    "sleeveless": ("has_longsleeves", False),
    "long-haired": ("has_longhair", True), "short-haired": ("has_longhair", False),
    "long-sleeved": ("has_longsleeves", True), "short-sleeved": ("has_longsleeves", False),
}
PHRASE_ATTRIBUTES: dict[str, tuple[str, bool]] = {
    "long hair": ("has_longhair", True), "short hair": ("has_longhair", False),
    "long sleeves": ("has_longsleeves", True), "short sleeves": ("has_longsleeves", False),
    "on their back": ("has_backpack", True), "on his back": ("has_backpack", True),
    "on her back": ("has_backpack", True), "light hair": ("light_hair", True),
    "dark hair": ("dark_hair", True), "fair hair": ("light_hair", True),
    "blond hair": ("light_hair", True), "blonde hair": ("light_hair", True),
    "grey hair": ("light_hair", True), "white hair": ("light_hair", True),
    "black hair": ("dark_hair", True), "brown hair": ("dark_hair", True),
    "light haired": ("light_hair", True), "fair haired": ("light_hair", True),
    "grey haired": ("light_hair", True), "white haired": ("light_hair", True),
    "dark haired": ("dark_hair", True), "black haired": ("dark_hair", True),
}  # fmt: skip
SHADES = {"dark": "dark", "light": "light", "bright": "bright", "pale": "light", "deep": "dark",
          "navy": "dark"}
MOTION_VERBS = {
    "walking", "walk", "walks", "walked", "heading", "heads", "head", "moving", "moves", "move",
    "going", "goes", "go", "coming", "comes", "come", "crossing", "crosses", "strolling",
    "strolls", "running", "runs", "jogging", "jogs", "hurrying", "hurries", "stepping",
    "travelling", "traveling", "approaching", "approaches", "leaving", "leaves", "entering",
    "enters", "passing", "passes", "wandering", "wanders", "pacing", "marching", "striding",
    "rushing", "dashing", "sprinting", "making", "returning", "returns",
}  # fmt: skip
STILL_WORDS = {"standing", "stands", "stood", "still", "stationary", "waiting", "waits",
               "stopped", "idle", "loitering", "lingering", "motionless", "static", "paused",
               "pausing", "stopping", "stays", "staying", "immobile"}
FAST_WORDS = {"running", "runs", "jogging", "jogs", "hurrying", "hurries", "briskly", "fast",
              "quickly", "rushing", "dashing", "sprinting", "racing", "hastily", "rapidly"}
TOWARDS_WORDS = {"towards", "toward", "approaching", "approaches", "down"}
AWAY_WORDS = {"away", "up"}
CAMERA_WORDS = {"camera", "us", "viewer", "lens", "foreground"}
PLURAL_WORDS = {"people", "persons", "men", "women", "everyone", "everybody", "all", "both",
                "they", "them", "ones", "guys", "ladies", "those"}
TOGETHER_WORDS = {"together", "side-by-side", "group", "grouped", "clustered", "pair", "couple",
                  "beside", "alongside", "accompanied"}
NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "both": 2, "pair": 2,
           "couple": 2}
NEGATIONS = {"no", "not", "without", "never", "nor", "lacking", "isn't", "non", "except"}
STOPWORDS = {
    "a", "an", "the", "in", "on", "of", "with", "and", "or", "to", "who", "whom", "is", "are",
    "was", "were", "be", "been", "that", "which", "one", "person", "someone", "somebody",
    "anyone", "anybody", "individual", "figure", "pedestrian", "at", "by", "from", "into", "onto",
    "their", "there", "this", "these", "it", "its", "as", "for", "wearing", "wears", "dressed",
    "clothed", "clad", "has", "have", "having", "carrying", "carries", "holding", "holds",
    "just", "very", "quite", "fairly", "rather", "also", "some", "something", "thing", "while",
    "then", "over", "across", "along", "through", "around", "out", "off", "shows",
    "seen", "visible", "frame", "picture", "image", "scene", "view", "shot", "side", "edge",
    "part", "area", "half", "corner", "most", "only", "other", "another", "any", "can", "who's",
    "whose", "i", "me", "my", "find", "show", "look", "looking", "like", "kind", "type",
    "sort", "clothes", "clothing", "outfit", "colour", "color", "coloured", "colored", "tone",
    "two-tone", "plain", "mostly", "mainly", "partly", "all", "completely", "entirely",
    "totally", "head", "toe", "full", "wore", "worn", "sporting",
}  # fmt: skip


@dataclass(frozen=True)
class Term:
    """One checkable thing a query asks for.

    kind: colour | attribute | position | motion | unknown (a thing the person must be or have
    that no model here can see: "a child", "walking a dog"); value: a colour name (``COLOUR_NAMES``), an
    attribute, a position or a motion word (module docstring); part: where a colour is; shade:
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
        if self.kind == "colour":
            return f"{neg}{self.part} {(self.shade + ' ') if self.shade else ''}{self.value}"
        if self.kind == "motion":
            return f"{neg}{_MOTION_LABELS.get(self.value, self.value)}"
        if self.kind == "position":
            label = _SUPERLATIVES.get(self.value, self.value) if self.superlative else \
                _POSITIONS.get(self.value, self.value)
            return f"{neg}{label}"
        if self.kind == "unknown":
            return f"{neg}{self.value} (no model sees it)"
        if self.value == "is_male":
            return "woman" if self.negated else "man"
        return f"{neg}{_ATTRIBUTE_LABELS.get(self.value, self.value)}"


_MOTION_LABELS = {"left": "walking left", "right": "walking right", "towards": "coming closer",
                  "away": "going away", "still": "standing still", "fast": "moving fast",
                  "moving": "moving"}
_POSITIONS = {"left": "on the left", "right": "on the right", "top": "up the frame",
              "bottom": "low in the frame", "near": "near the camera", "far": "far away",
              "middle": "in the middle", "together": "with others"}
_SUPERLATIVES = {"left": "leftmost", "right": "rightmost", "top": "highest", "bottom": "lowest",
                 "near": "closest", "far": "furthest", "middle": "most central"}
_ATTRIBUTE_LABELS = {"is_male": "man", "has_bag": "bag", "has_backpack": "backpack",
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

    @property
    def checkable(self) -> bool:
        return bool(self.terms)

    def as_dict(self) -> dict[str, object]:
        return {
            "terms": [t.label() for t in self.terms], "count": self.count, "plural": self.plural,
            "ignored": list(self.ignored), "mapped": dict(self.mapped), "part": self.part,
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
        elif "-" in w and not (w in GARMENT_PART or w in ATTRIBUTE_WORDS or w in _GLUE):
            out += w.split("-")
        else:
            out.append(w)
    return out


def _known(word: str) -> bool:
    return (word == "," or word in STOPWORDS or word in GARMENT_PART or word in ATTRIBUTE_WORDS
            or word in CARRIED_WORDS or word in MOTION_VERBS or word in STILL_WORDS
            or word in FAST_WORDS or word in NUMBERS or word in NEGATIONS or word in SHADES
            or word in PLURAL_WORDS or word in TOGETHER_WORDS or word in _POSITION_WORDS
            or word in CAMERA_WORDS or canonical_colour(word) is not None
            or word in _GLUE)


_POSITION_WORDS = {"left", "right", "leftmost", "rightmost", "middle", "centre", "center",
                   "central", "closest", "nearest", "close", "near", "front", "furthest",
                   "farthest", "far", "distance", "distant", "back", "background", "top",
                   "bottom", "upper", "lower", "towards", "toward", "away", "up", "down",
                   "foreground", "behind"}
_INTENSIFIED = {"next", "behind", "beside", "by", "in", "at", "there", "past", "up", "under",
                "above", "below", "near"}
_FRAME_WORDS = ("picture", "frame", "image", "screen", "view")
_GLUE = {"than", "whose", "where", "when", "s", "hand", "hands", "dark", "light", "long",
         "short", "sleeves", "sleeved", "hi-vis", "high-visibility", "back", "next", "between"}


def parse_query(text: str, concepts: ConceptMap | None = None) -> ReferQuery:
    """Read ``text`` into a ``ReferQuery`` (module docstring). Never raises on words it does not
    know: they end in ``ignored`` (after ``concepts`` had a chance to map them)."""
    raw = _tokens(text)
    words: list[str] = []
    mapped: list[tuple[str, str]] = []
    for w in raw:
        base = w.split("'")[0]
        if not _known(base) and concepts is not None and len(base) > 2:
            m = concepts(base)
            if m is not None and m != base:
                mapped.append((base, m))
                words.append(m)
                continue
        words.append(base)
    used = [False] * len(words)
    terms: list[Term] = []

    def negated_at(i: int) -> bool:
        window = words[max(0, i - 4) : i]
        if "not" in window and "only" not in window:  # "not the one in black"
            return True
        return any(w in NEGATIONS for w in words[max(0, i - 3) : i])

    def take(*idx: int) -> None:
        for j in idx:
            if 0 <= j < len(words):
                used[j] = True

    # phrases first ("long hair", "on their back")
    i = 0
    while i < len(words) - 1:
        for n in (3, 2):
            phrase = " ".join(words[i : i + n])
            if phrase in PHRASE_ATTRIBUTES:
                name, value = PHRASE_ATTRIBUTES[phrase]
                terms.append(Term("attribute", name, negated=negated_at(i) != (not value),
                                  words=phrase))
                take(*range(i, i + n))
                if phrase.endswith(" hair") and i > 0 and words[i - 1] == "long":
                    terms.append(Term("attribute", "has_longhair", words="long hair"))
                    take(i - 1)
                i += n - 1
                break
        i += 1

    # colours with what they colour
    for i, w in enumerate(words):
        if used[i]:
            continue
        colour, shade = _colour_word(w), _shade_before(words, i)
        if w == "dark" and _colour_word(words[i + 1] if i + 1 < len(words) else "") is None:
            colour, shade = "black", "dark"  # "dark jacket"
        if colour is None:
            continue
        part, end = _coloured_part(words, i + 1)
        if part is None:
            held = any(x in ("something", "holding", "carrying", "holds", "carries")
                       for x in words[max(0, i - 2) : i])
            part = "carried" if held else "outfit"
        elif part == "hair":
            # "dark hair" / "light-haired": a hair shade rather than a colour
            attr = "dark_hair" if colour in ("black", "brown") or shade == "dark" else "light_hair"
            terms.append(Term("attribute", attr, negated=negated_at(i), words=w + " hair"))
            if "long" in words[max(0, i - 2) : i]:
                terms.append(Term("attribute", "has_longhair", words="long hair"))
            take(i, *(j for j in range(i - 2, end) if 0 <= j < i and words[j] in
                      ("long", "short", *SHADES)), end - 1)
            continue
        terms.append(Term("colour", colour, part, shade, negated=negated_at(i),
                          words=" ".join([words[i], *words[end - 1 : end]]) if end > i + 1
                          else words[i]))
        # the colour word, its shade, and the garment; a colour between them is read in turn
        take(i, *([i - 1] if shade and i > 0 and words[i - 1] in SHADES else []))
        if end > i + 1:
            take(end - 1, *(j for j in range(i + 1, end - 1) if words[j] in ("and", "-")))

    # a garment alone still says something: "the guy in jeans" (jeans are blue)
    for i, w in enumerate(words):
        if not used[i] and w in ("jeans", "denim"):
            terms.append(Term("colour", "blue", "bottom", negated=negated_at(i), words=w))
            used[i] = True

    # attributes
    for i, w in enumerate(words):
        if used[i] or w not in ATTRIBUTE_WORDS:
            continue
        name, value = ATTRIBUTE_WORDS[w]
        if w in ("bag", "bags") and i > 0 and words[i - 1] in ("carrier", "plastic", "shopping"):
            used[i] = True  # a carrier bag is held, not worn: its colour was read above
            continue
        if name == "is_male" and w in ("his", "him", "her") and any(
                t.kind == "attribute" and t.value == "is_male" for t in terms):
            used[i] = True
            continue
        terms.append(Term("attribute", name, negated=negated_at(i) != (not value), words=w))
        used[i] = True

    terms += _motion_terms(words, used, negated_at)
    terms += _position_terms(words, used, negated_at)

    count = next((NUMBERS[w] for i, w in enumerate(words)
                  if w in NUMBERS and (i == 0 or words[i - 1] != "of")), None)
    plural = (count is not None and count > 1) or any(w in PLURAL_WORDS for w in words)
    for i, w in enumerate(words):
        if w in NUMBERS or w in PLURAL_WORDS:
            used[i] = True
    unknown = [i for i, w in enumerate(words) if not used[i] and not _known(w) and len(w) > 1]
    ignored = tuple(dict.fromkeys(words[i] for i in unknown))
    required = tuple(dict.fromkeys(words[i] for i in unknown if _required(words, i)))
    terms += [Term("unknown", w, words=w) for w in required]
    # duplicates (the last word wins for the same kind, value, part and superlative)
    seen: dict[tuple[str, str, str, bool], Term] = {}
    for t in terms:
        seen[(t.kind, t.value, t.part, t.superlative)] = t
    return ReferQuery(text, tuple(seen.values()), count, plural, ignored, tuple(mapped),
                      _part_asked(words))


PERSON_WORDS = {"person", "someone", "somebody", "one", "man", "woman", "guy", "lady", "people",
                "men", "women", "individual", "pedestrian", "figure", "anyone", "everyone",
                "gentleman", "girl", "boy", "child", "he", "she", "who"}
# what a carried or worn thing's region is taken to be: a bag or backpack on the torso
_PART_OF_THING = {"backpack": "top", "rucksack": "top", "knapsack": "top", "bag": "top",
                  "handbag": "top", "purse": "top", "satchel": "top", "briefcase": "top",
                  "hat": "head", "cap": "head", "beanie": "head", "helmet": "head"}


def _part_asked(words: list[str]) -> str | None:
    """The part a text is about: a garment or carried thing named before any person word."""
    for w in words:
        if w in PERSON_WORDS or (w in ATTRIBUTE_WORDS and ATTRIBUTE_WORDS[w][0] == "is_male" \
                and w not in ("his", "her", "him")):
            return None
        if w in _PART_OF_THING:
            return _PART_OF_THING[w]
        if w in GARMENT_PART and w not in ("haired", "upper", "lower"):
            return GARMENT_PART[w]
    return None


_HAVING = {"with", "carrying", "holding", "walking", "pushing", "pulling", "riding", "in",
           "wearing", "using", "leading", "has", "having", "carries", "holds", "rides",
           "pushes", "sitting", "lying", "kneeling", "playing", "eating", "drinking",
           "smoking"}
_PLACES = {"near", "behind", "beside", "of", "at", "by", "around", "along", "past", "across",
           "next", "front", "between", "towards", "toward", "from", "to", "under", "above",
           "below", "over", "against", "into", "onto", "than", "up", "down", "through"}


def _required(words: list[str], i: int) -> bool:
    """Does the unknown word at ``i`` name something the person must be or have? Yes for what
    the person is ("a child", "a police officer": unknown words before any known content, after
    the opening article) and what they hold or use ("walking a dog", "in a wheelchair"), unless
    a place word comes first ("near the cones" describes a landmark, not the person) or a known
    thing follows (then it says what that thing is like: "plastic bag", "knee-length coat")."""
    if any(w in GARMENT_PART or w in CARRIED_WORDS or w in ATTRIBUTE_WORDS
           for w in words[i + 1 : i + 4]):
        return False
    before = words[max(0, i - 3) : i]
    for w in reversed(before):
        if w in _PLACES:
            return False
        if w in _HAVING:
            return True
    lead = 0
    while lead < len(words) and words[lead] in ("a", "an", "the", "some", "any"):
        lead += 1
    return lead > 0 and all(not _known(w) for w in words[lead : i + 1])


def _colour_word(w: str) -> str | None:
    if w == "dark":
        return None
    return canonical_colour(w)


def _shade_before(words: list[str], i: int) -> str:
    if i > 0 and words[i - 1] in SHADES:
        return SHADES[words[i - 1]]
    if words[i] == "navy":
        return "dark"
    return ""


def _coloured_part(words: list[str], start: int) -> tuple[str | None, int]:
    """The part the colour at ``start - 1`` colours, and the index after the words read."""
    for j in range(start, min(start + 4, len(words))):
        w = words[j]
        if w in GARMENT_PART:
            return GARMENT_PART[w], j + 1
        if w in CARRIED_WORDS:
            return "carried", j + 1
        if w in ("with", "or", "who", "walking", "standing", "on", "in", "at", "near", "by",
                 ","):
            return None, start
        if w == "and" and j + 1 < len(words) and _colour_word(words[j + 1]) is None \
                and words[j + 1] not in SHADES:
            return None, start
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
    verb_at = [i for i, w in enumerate(words) if w in MOTION_VERBS or w in STILL_WORDS]
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
                terms.append(Term("motion", w, negated=negated_at(v), words=f"{words[v]} {w}"))
                used[j] = used[v] = found = True
                break
            if w in TOWARDS_WORDS and not used[j]:
                terms.append(Term("motion", "towards", negated=negated_at(v),
                                  words=f"{words[v]} {w}"))
                used[j] = used[v] = found = True
                _take_camera(words, used, j)
                break
            if w in AWAY_WORDS and not used[j]:
                terms.append(Term("motion", "away", negated=negated_at(v),
                                  words=f"{words[v]} {w}"))
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


def _take_camera(words: list[str], used: list[bool], j: int) -> None:
    for k in range(j + 1, min(j + 4, len(words))):
        if words[k] in CAMERA_WORDS or words[k] == "from":
            used[k] = True


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
        elif w == "right" and nxt in _INTENSIFIED:
            used[i] = True  # "right next to", "right behind": not a side
            continue
        elif w in ("left", "right"):
            if nxt == "of" and prev not in ("far", "the", "extreme", "very"):
                continue  # "just left of the lamp post": relative to a landmark
            value, sup = w, prev in ("far", "furthest", "farthest", "extreme", "very")
        elif w in ("closest", "nearest"):
            value, sup = "near", True
        elif (w in ("near", "close") and nxt in ("to", "the") and \
                any(c in words[i + 1 : i + 4] for c in CAMERA_WORDS)) or (w in ("front", "foreground") and prev not in ("in",)):
            value = "near"
        elif w in ("furthest", "farthest") and nxt not in ("left", "right"):
            value, sup = "far", True
        elif w in ("distance", "distant", "background") or (w == "far" and nxt not in ("left", "right", "side")):
            value = "far"
        elif w in ("middle", "centre", "center", "central"):
            value = "middle"
            sup = "group" in words[i : i + 5] or nxt == "of"
        elif w in ("top", "bottom") and any(x in words[i : i + 4] for x in _FRAME_WORDS):
            value = w
        elif w in TOGETHER_WORDS or (w == "each" and nxt == "other"):
            if not any(t.value == "together" for t in terms):
                terms.append(Term("position", "together", negated=negated_at(i), words=w))
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
