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
    b, g, r = (float(v) / 255.0 for v in np.asarray(bgr, dtype=np.float32).reshape(3))
    mx, mn = max(r, g, b), min(r, g, b)
    v, s = mx, (mx - mn) / mx if mx > 0 else 0.0
    if v < 0.22:
        return "black"
    if s < 0.18 or (s < 0.28 and v < 0.45):
        return "white" if v > 0.78 else "grey" if v > 0.32 else "black"
    delta = mx - mn
    if mx == r:
        hue = 60.0 * (((g - b) / delta) % 6)
    elif mx == g:
        hue = 60.0 * ((b - r) / delta + 2)
    else:
        hue = 60.0 * ((r - g) / delta + 4)
    if hue < 15 or hue >= 340:
        return "pink" if s < 0.45 and v > 0.6 else "red"
    if hue < 40:
        return "brown" if v < 0.6 else "orange"
    if hue < 70:
        return "brown" if v < 0.45 else "yellow"
    if hue < 165:
        return "green"
    if hue < 255:
        return "blue"
    if hue < 290:
        return "purple"
    return "pink"


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
