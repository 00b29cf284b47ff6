"""Captions and instructions for the IRM tasks, written from attribute-model outputs.

``describe`` writes a caption of one person from several templates, naming only what the OMZ
0230 attribute model is confident about (p > 0.7 or < 0.3; never has_coat_jacket or
has_longpants, which it does not tell reliably) and the top / bottom colour names.
``aggregate_attributes`` first pools a track's or identity's crops (mean probabilities, majority
colour), so a caption describes the person rather than one frame. ``instruction_for`` words the
instruction of each task. ``refind.models.text_attributes.parse_attributes`` reads every caption back
into the attributes it was written from (tested as a round trip).

Example:
    >>> ids, per_id = aggregate_attributes(attribute_model(crops), labels)    # doctest: +SKIP
    >>> describe(per_id, 0, np.random.default_rng(0))                         # doctest: +SKIP
    'a man with a backpack in a blue top and black trousers'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from refind.models.base import ATTRIBUTE_NAMES, TASKS, PersonAttributes

CONFIDENT_HIGH, CONFIDENT_LOW = 0.7, 0.3
UNRELIABLE = ("has_coat_jacket", "has_longpants")  # see models/attributes.py
_COL = {name: k for k, name in enumerate(ATTRIBUTE_NAMES)}


def _confident(p: float) -> bool | None:
    return True if p > CONFIDENT_HIGH else False if p < CONFIDENT_LOW else None


def aggregate_attributes(
    attrs: PersonAttributes, labels: Sequence[str]
) -> tuple[list[str], PersonAttributes]:
    """One attribute row per label (identity or track): mean probabilities, the majority colour
    name of its crops (ties: the first seen) with the median BGR of the crops that had it."""
    keys = list(dict.fromkeys(labels))
    labels_arr = np.asarray(labels)
    probs: list[np.ndarray] = []
    tops: list[np.ndarray] = []
    bottoms: list[np.ndarray] = []
    top_names: list[str] = []
    bottom_names: list[str] = []
    for key in keys:
        idx = np.flatnonzero(labels_arr == key)
        probs.append(attrs.probs[idx].mean(axis=0))
        for names, bgr, out_n, out_c in (
            (attrs.top_colour, attrs.top_bgr, top_names, tops),
            (attrs.bottom_colour, attrs.bottom_bgr, bottom_names, bottoms),
        ):
            seen = [names[i] for i in idx]
            best = max(dict.fromkeys(seen), key=seen.count)
            out_n.append(best)
            out_c.append(np.median(bgr[[i for i in idx if names[i] == best]], axis=0))
    return keys, PersonAttributes(
        probs=np.asarray(probs, np.float32).reshape(-1, len(ATTRIBUTE_NAMES)),
        top_bgr=np.asarray(tops, np.uint8).reshape(-1, 3),
        bottom_bgr=np.asarray(bottoms, np.uint8).reshape(-1, 3),
        top_colour=tuple(top_names),
        bottom_colour=tuple(bottom_names),
    )


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _phrases(attrs: PersonAttributes, i: int, rng: np.random.Generator) -> dict[str, str]:
    """Confident pieces of a caption: subject, colours, carried things, hair, sleeves."""
    p = attrs.probs[i]
    male = _confident(float(p[_COL["is_male"]]))
    subject = (
        _pick(rng, ["man", "guy", "male pedestrian"]) if male is True
        else _pick(rng, ["woman", "lady", "female pedestrian"]) if male is False
        else _pick(rng, ["person", "pedestrian", "passer-by"])
    )  # fmt: skip
    carried = []
    for name, yes, no in (
        ("has_backpack", "a backpack", "no backpack"),
        ("has_bag", "a bag", "no bag"),
        ("has_hat", "a hat", "no hat"),
    ):
        c = _confident(float(p[_COL[name]]))
        if c is True:
            carried.append(yes)
        elif c is False and rng.random() < 0.2:  # an occasional negative, honest but not chatty
            carried.append(no)
    hair = {True: "long hair", False: "short hair", None: ""}[
        _confident(float(p[_COL["has_longhair"]]))
    ]
    sleeves = {True: "long-sleeved ", False: "short-sleeved ", None: ""}[
        _confident(float(p[_COL["has_longsleeves"]]))
    ]
    top = f"{attrs.top_colour[i]} {sleeves if rng.random() < 0.5 else ''}" + _pick(
        rng, ["top", "shirt", "top", "upper garment", "jacket"] if not sleeves.startswith("short")
        else ["top", "shirt", "t-shirt"]
    )  # fmt: skip
    bottom = f"{attrs.bottom_colour[i]} " + _pick(rng, ["trousers", "pants", "bottoms"])
    having = [x for x in carried if not x.startswith("no ")]
    lacking = [f"without a {x[3:]}" for x in carried if x.startswith("no ")]
    with_text = [f"with {' and '.join(having)}"] if having else []
    return {
        "subject": subject,
        "top": top,
        "bottom": bottom,
        "with": " and ".join(with_text + lacking),
        "hair": hair,
    }


_CAPTION_TEMPLATES = (
    "a {subject} {with} in a {top} and {bottom}",
    "{subject} wearing a {top} and {bottom} {with}",
    "{top}, {bottom}, {subject} {with}",
    "a {subject} with {hair}, dressed in a {top} and {bottom} {with}",
    "the {subject} in the {top} and {bottom} {with}",
    "looking for a {subject} {with}: {top}, {bottom}",
)


def describe(attrs: PersonAttributes, i: int, rng: np.random.Generator) -> str:
    """A caption of row ``i`` of ``attrs`` from one of several templates, e.g. "a man with a
    backpack in a blue top and black trousers". Only confident attributes (p > 0.7 or < 0.3)
    are named; has_coat_jacket and has_longpants never are. Colours are the colour names."""
    parts = _phrases(attrs, i, rng)
    templates = [t for t in _CAPTION_TEMPLATES if "{hair}" not in t or parts["hair"]]
    text = _pick(rng, templates).format(**parts)
    text = " ".join(text.split()).replace(" ,", ",").replace(" :", ":")
    return text.strip(" ,:")


_FIXED_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "reid": ("same person, same clothes", "find this person", "the same person as in the photo"),
    "clothes_change": (
        "ignore the clothes", "same person in different clothes",
        "the same person, whatever they wear", "match the person, not the outfit",
    ),
    "clothes_template": (
        "someone wearing this garment", "people wearing these clothes",
        "find a person dressed in this",
    ),
    "visible_infrared": (
        "the query is an infrared image", "match this infrared image to colour footage",
        "a thermal camera view of the person",
    ),
}  # fmt: skip


def instruction_for(
    task: str,
    rng: np.random.Generator | None,
    attrs: PersonAttributes | None = None,
    i: int | None = None,
) -> str:
    """An instruction for ``task`` (one of ``TASKS``), drawn from a few phrasings.

    attribute_text and text need ``attrs`` and ``i``: attribute_text describes the clothes of
    row ``i`` ("now wearing a red top and blue trousers"), text is ``describe(attrs, i, rng)``.
    The first phrasing of each fixed task is its canonical instruction (``rng=None`` picks it).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if task in _FIXED_INSTRUCTIONS:
        options = _FIXED_INSTRUCTIONS[task]
        return options[0] if rng is None else _pick(rng, options)
    if attrs is None or i is None:
        raise ValueError(f"task {task!r} needs the attributes it describes (attrs and i)")
    rng = rng if rng is not None else np.random.default_rng(0)
    if task == "text":
        return describe(attrs, i, rng)
    parts = _phrases(attrs, i, rng)
    lead = _pick(rng, ["now wearing a", "wearing a", "same person but in a", "dressed in a"])
    text = f"{lead} {parts['top']} and {parts['bottom']}"
    if parts["with"] and rng.random() < 0.5:
        text += f" {parts['with']}"
    return text
