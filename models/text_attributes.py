"""What a caption or instruction asks for, in the attribute model's terms, and how far a crop
agrees with it.

``parse_attributes`` reads free text ("a man with a backpack in a blue top and black trousers",
"now wearing a red jacket, no hat") into ``WantedAttributes``: wanted values of the 0230
attributes and the wanted top / bottom clothing colours. ``agreement`` scores one crop's
``PersonAttributes`` row against it: the fraction of the named attributes and colours the model
confirms (an attribute counts when its probability is on the named side of 0.5; a colour counts
``refind.models.colours.colour_match``: 1 for the same name, 0.5 for a neighbour such as grey/white).

Not mapped, on purpose: "jacket", "coat", "trousers", "jeans" name a garment (its colour is
used) but not has_coat_jacket / has_longpants, which the 0230 model does not tell reliably.

Example:
    >>> w = parse_attributes("a woman with a backpack in a red top and blue jeans")
    >>> w.flags, w.top_colour, w.bottom_colour
    ((('has_backpack', True), ('is_male', False)), 'red', 'blue')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from refind.models.base import ATTRIBUTE_NAMES, PersonAttributes
from refind.models.colours import canonical_colour, colour_match

TOP_WORDS = (
    "top", "shirt", "t-shirt", "tshirt", "tee", "jacket", "coat", "sweater", "jumper", "hoodie",
    "blouse", "pullover", "cardigan", "vest", "upper", "sweatshirt", "parka", "anorak", "fleece",
)  # fmt: skip
BOTTOM_WORDS = (
    "trousers", "pants", "jeans", "shorts", "skirt", "bottoms", "bottom", "leggings", "slacks",
    "lower", "chinos",
)  # fmt: skip

# word (or two-word phrase) -> (attribute, value it asks for)
_ATTRIBUTE_WORDS: dict[str, tuple[str, bool]] = {
    **{w: ("is_male", True) for w in ("man", "male", "guy", "gentleman", "boy", "men", "he")},
    **{w: ("is_male", False) for w in ("woman", "female", "lady", "girl", "women", "she")},
    **{w: ("has_backpack", True) for w in ("backpack", "rucksack", "knapsack")},
    **{w: ("has_bag", True) for w in ("bag", "handbag", "purse", "briefcase", "satchel")},
    **{w: ("has_hat", True) for w in ("hat", "cap", "beanie")},
    "long sleeves": ("has_longsleeves", True), "long-sleeved": ("has_longsleeves", True),
    "long sleeved": ("has_longsleeves", True), "short sleeves": ("has_longsleeves", False),
    "short-sleeved": ("has_longsleeves", False), "short sleeved": ("has_longsleeves", False),
    "sleeveless": ("has_longsleeves", False),
    "long hair": ("has_longhair", True), "long-haired": ("has_longhair", True),
    "short hair": ("has_longhair", False), "short-haired": ("has_longhair", False),
    "bald": ("has_longhair", False),
}  # fmt: skip
_NEGATIONS = ("no", "without", "not", "never", "nor", "lacking")
_MODIFIERS = {"dark", "light", "bright", "pale", "deep"}  # "dark blue": blue; "dark" alone: black


@dataclass(frozen=True)
class WantedAttributes:
    """What a text asks for: flags ((attribute, wanted value), ...) sorted by name; the wanted
    top and bottom colour names (``refind.models.colours.COLOUR_NAMES``) or None."""

    flags: tuple[tuple[str, bool], ...] = ()
    top_colour: str | None = None
    bottom_colour: str | None = None

    def __post_init__(self) -> None:
        for name, _ in self.flags:
            if name not in ATTRIBUTE_NAMES:
                raise ValueError(f"unknown attribute {name!r}; valid: {', '.join(ATTRIBUTE_NAMES)}")

    @property
    def n_terms(self) -> int:
        """How many things the text names (attributes + colours)."""
        return len(self.flags) + (self.top_colour is not None) + (self.bottom_colour is not None)

    def as_dict(self) -> dict[str, object]:
        return {"flags": dict(self.flags), "top": self.top_colour, "bottom": self.bottom_colour}


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower())


def parse_attributes(text: str) -> WantedAttributes:
    """The attributes and clothing colours named in ``text`` (English, case-insensitive).

    A colour word belongs to the next garment word within three words ("blue denim jeans");
    a negation ("no", "without", "not") within the three words before an attribute word turns
    it to False ("without a bag"); the last mention of an attribute wins. Unknown words are
    ignored, so any text parses (possibly to nothing: ``n_terms == 0``).
    """
    words = _tokens(text)
    flags: dict[str, bool] = {}
    top = bottom = None
    i = 0
    while i < len(words):
        pair = " ".join(words[i : i + 2])
        key = (
            pair if pair in _ATTRIBUTE_WORDS else words[i] if words[i] in _ATTRIBUTE_WORDS else None
        )
        if key is not None:
            name, value = _ATTRIBUTE_WORDS[key]
            if any(w in _NEGATIONS for w in words[max(0, i - 3) : i]):
                value = not value
            flags[name] = value
        colour = _colour_at(words, i)
        if colour is not None:
            garment = _next_garment(words, i + 1)
            if garment == "top":
                top = colour
            elif garment == "bottom":
                bottom = colour
        i += 2 if key == pair and " " in key else 1
    return WantedAttributes(tuple(sorted(flags.items())), top, bottom)


def _colour_at(words: list[str], i: int) -> str | None:
    w = words[i]
    if w in _MODIFIERS:  # "dark blue" -> blue (read at the next word); "dark jacket" -> black
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if canonical_colour(nxt) is not None and nxt not in _MODIFIERS:
            return None
        return canonical_colour(w) if w == "dark" else None
    if "-" in w:  # "navy-blue": the last part
        w = w.rsplit("-", 1)[1]
    return canonical_colour(w)


def _next_garment(words: list[str], start: int) -> str | None:
    for w in words[start : start + 3]:
        if w in TOP_WORDS:
            return "top"
        if w in BOTTOM_WORDS:
            return "bottom"
        if w in ("and", "with", "or") or canonical_colour(w) is not None:
            return None  # "red and blue jeans": red is not the jeans' colour
    return None


def agreement(wanted: WantedAttributes, attrs: PersonAttributes, i: int) -> float:
    """Fraction in [0, 1] of the things ``wanted`` names that row ``i`` of ``attrs`` confirms.

    Attribute: 1 when its probability is on the wanted side of 0.5, else 0. Colour:
    ``colour_match(wanted, seen)`` (1, 0.5 for a neighbouring name, 0). A text that names
    nothing agrees with every crop (1.0).
    """
    scores = []
    for name, value in wanted.flags:
        p = float(attrs.probs[i, ATTRIBUTE_NAMES.index(name)])
        scores.append(1.0 if (p > 0.5) == value else 0.0)
    if wanted.top_colour is not None:
        scores.append(colour_match(wanted.top_colour, attrs.top_colour[i]))
    if wanted.bottom_colour is not None:
        scores.append(colour_match(wanted.bottom_colour, attrs.bottom_colour[i]))
    return float(np.mean(scores)) if scores else 1.0
