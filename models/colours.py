"""Colour names for clothing samples, and tolerant matching of colour words.

Names come from HSV of a small patch: dark/light by value, grey by saturation, else the hue band.
Under dim or overcast light a camera reads white as grey and orange as brown, so ``colour_match``
gives partial credit to neighbouring names instead of a hard yes/no.

Example:
    >>> name_colour(np.array([30, 30, 200], np.uint8))    # BGR
    'red'
    >>> colour_match("orange", "brown")
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COLOUR_NAMES: tuple[str, ...] = (
    "black", "grey", "white", "red", "orange", "brown", "yellow", "green", "blue", "purple", "pink",
)  # fmt: skip

# Words operators use for the same colours.
SYNONYMS: dict[str, str] = {
    "gray": "grey", "dark": "black", "navy": "blue", "beige": "brown", "tan": "brown",
    "khaki": "brown", "maroon": "red", "violet": "purple", "silver": "grey", "cream": "white",
    "teal": "green", "olive": "green", "crimson": "red", "golden": "yellow", "gold": "yellow",
    "burgundy": "red", "scarlet": "red", "wine": "red", "cherry": "red", "rust": "orange",
    "amber": "orange", "coral": "orange", "peach": "orange", "mustard": "yellow",
    "lemon": "yellow", "ochre": "brown", "camel": "brown", "chocolate": "brown", "coffee": "brown",
    "bronze": "brown", "ivory": "white", "charcoal": "grey", "ash": "grey", "slate": "grey",
    "turquoise": "blue", "cyan": "blue", "azure": "blue", "indigo": "blue", "denim": "blue",
    "cobalt": "blue", "royal": "blue", "lime": "green", "emerald": "green", "mint": "green",
    "khakis": "brown", "lilac": "purple", "lavender": "purple", "magenta": "pink",
    "fuchsia": "pink", "rose": "pink", "ebony": "black",
    "jet": "black",
}  # fmt: skip

# Pairs a camera confuses (partial credit 0.5 for a match across the pair).
_NEIGHBOURS: frozenset[frozenset[str]] = frozenset(
    frozenset(p)
    for p in (
        ("black", "grey"), ("grey", "white"), ("orange", "brown"), ("red", "orange"),
        ("red", "pink"), ("purple", "pink"), ("blue", "purple"), ("yellow", "orange"),
        ("green", "blue"), ("brown", "black"), ("red", "brown"), ("purple", "black"),
        ("blue", "black"),
    )
)  # fmt: skip


def canonical_colour(word: str) -> str | None:
    """The canonical colour name of ``word`` ("Gray" -> "grey"), or None if it is no colour."""
    w = word.lower().strip()
    w = SYNONYMS.get(w, w)
    return w if w in COLOUR_NAMES else None


def name_colour(bgr: np.ndarray) -> str:
    """Name the colour of one BGR sample ((3,) uint8)."""
    return COLOUR_NAMES[int(name_colours(np.asarray(bgr).reshape(1, 3))[0])]


# Hue bands (degrees, upper bound exclusive) and the name of each, after the grey/black/white test.
_HUE_BANDS = ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (255, "blue"),
              (290, "purple"), (340, "pink"), (361, "red"))  # fmt: skip
_INDEX = {name: i for i, name in enumerate(COLOUR_NAMES)}
_BAND_LIMITS = np.array([limit for limit, _ in _HUE_BANDS], np.float64)
_BAND_NAMES = np.array([_INDEX[name] for _, name in _HUE_BANDS])


def name_colours(bgr: np.ndarray) -> np.ndarray:
    """Indices into ``COLOUR_NAMES`` of (n, 3) uint8 BGR pixels, (n,) int64.

    Dark by value first, then grey by saturation (a low-saturation dim pixel is black or grey),
    then the hue band; dim orange and yellow are brown, pale red is pink.
    """
    px = np.asarray(bgr, np.float64).reshape(-1, 3) / 255.0
    b, g, r = px[:, 0], px[:, 1], px[:, 2]
    mx, mn = px.max(axis=1), px.min(axis=1)
    delta = mx - mn
    v = mx
    s = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    safe = np.maximum(delta, 1e-6)
    hue = np.where(
        mx == r, 60.0 * np.mod((g - b) / safe, 6),
        np.where(mx == g, 60.0 * ((b - r) / safe + 2), 60.0 * ((r - g) / safe + 4)),
    )  # fmt: skip
    index = _INDEX
    out = _BAND_NAMES[np.searchsorted(_BAND_LIMITS, hue, side="right")]
    out = np.where((out == index["red"]) & (s < 0.45) & (v > 0.6), index["pink"], out)
    out = np.where((out == index["orange"]) & (v < 0.6), index["brown"], out)
    out = np.where((out == index["yellow"]) & (v < 0.45), index["brown"], out)
    greyish = (s < 0.18) | ((s < 0.28) & (v < 0.45))
    grey = np.where(v > 0.78, index["white"], np.where(v > 0.32, index["grey"], index["black"]))
    out = np.where(greyish, grey, out)
    return np.where(v < 0.22, index["black"], out).astype(np.int64)


def sample_colour(crop: np.ndarray, point_xy: tuple[float, float], frac: float = 0.08) -> np.ndarray:
    """Median BGR of a small patch of ``crop`` centred at ``point_xy`` (0..1 of the crop)."""
    h, w = crop.shape[:2]
    cx, cy = point_xy[0] * w, point_xy[1] * h
    rx, ry = max(1, round(frac * w)), max(1, round(frac * h))
    x1, x2 = int(np.clip(cx - rx, 0, w - 1)), int(np.clip(cx + rx + 1, 1, w))
    y1, y2 = int(np.clip(cy - ry, 0, h - 1)), int(np.clip(cy + ry + 1, 1, h))
    patch = crop[y1:y2, x1:x2].reshape(-1, 3)
    return np.median(patch, axis=0).astype(np.uint8)


def colour_match(wanted: str, seen: str) -> float:
    """1.0 when the seen colour is the wanted one, 0.5 for a neighbour, else 0.0."""
    a, b = canonical_colour(wanted), canonical_colour(seen)
    if a is None or b is None:
        return 0.0
    if a == b:
        return 1.0
    return 0.5 if frozenset((a, b)) in _NEIGHBOURS else 0.0


def colour_onehots(top: Sequence[str], bottom: Sequence[str]) -> np.ndarray:
    """(n, 2 * len(COLOUR_NAMES)) float32: one-hot top colour names, then bottom ones."""
    n, nc = len(top), len(COLOUR_NAMES)
    out = np.zeros((n, 2 * nc), np.float32)
    rows = np.arange(n)
    out[rows, [COLOUR_NAMES.index(c) for c in top]] = 1.0
    out[rows, [nc + COLOUR_NAMES.index(c) for c in bottom]] = 1.0
    return out
