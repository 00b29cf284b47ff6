"""Referring-expression sets over real PETS09-S2L1 frames, with targets correct by construction.

Each record is one JSON line ``{"image", "boxes", "expression", "targets", "kind", "frame",
"ids"}``: ``boxes`` are the ground-truth boxes of the people MOT15 considers in that frame (scaled
from 768x576 to the 480x360 video), ``targets`` the indices of the boxes the expression refers to
(empty = nobody). How targets are decided:

- **Identity labels** (``label_identities``): OMZ 0230 runs on every ground-truth crop of a split;
  per identity, attribute probabilities are averaged and clothing-colour names counted over its
  track. A person *has* an attribute when the mean is >= 0.65 (``is_male`` >= 0.7), *lacks* it
  when <= 0.35 (0.3), and is *unsure* in between; a colour is *had* when >= 50 % of the crops
  name it, *lacked* when < 15 %, unsure otherwise.
- **Expressions** are drawn from templates (``generate_expressions``): attributes and colours,
  positions (leftmost, nearest the camera = tallest box, top of the image), relations (next to
  an anchor person, walking with someone = another person's feet within one body height),
  multi-instance (everyone in black, the two people on the left) and no-target expressions (a
  colour or attribute nobody has, things PETS never shows: a bicycle, a dog, an umbrella). An
  expression is kept only when every person in the frame is decided (nobody *unsure*, no position
  closer to a threshold than a margin), so its targets are exact given the labels.
- **Frames**: frames holding any flag-0 ("not considered") box are skipped, since an unlabelled
  person there could be the real "leftmost". Splits are by frame range and never mixed.

Labels come from a model, not from people: they are silver labels, consistent over a track.

Example:
    >>> scenes = load_scenes(Path("gt.txt"), range(401, 796), (480, 360))    # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from refind.datasets.pets_reid import FLAG, FRAME, ID, decode_mot_frames, read_mot_gt, scaled_xyxy
from refind.models.base import ATTRIBUTE_NAMES, AttributeModel
from refind.models.colours import COLOUR_NAMES

log = logging.getLogger(__name__)

TRAIN_FRAMES = range(1, 401)  # 1-based MOT frames
DEV_FRAMES = range(401, 796)


@dataclass(frozen=True)
class Scene:
    """One frame's considered people: ids (n,) and xyxy (n, 4) in video pixels."""

    frame: int
    ids: tuple[int, ...]
    xyxy: np.ndarray
    frame_wh: tuple[int, int]


@dataclass(frozen=True)
class IdentityLabels:
    """Track-averaged attribute probabilities and colour-name fractions of one identity."""

    probs: dict[str, float]
    top: dict[str, float]
    bottom: dict[str, float]

    def has(self, attribute: str) -> bool | None:
        hi, lo = (0.7, 0.3) if attribute == "is_male" else (0.65, 0.35)
        p = self.probs[attribute]
        return True if p >= hi else False if p <= lo else None

    def wears(self, part: str, colour: str) -> bool | None:
        frac = (self.top if part == "top" else self.bottom).get(colour, 0.0)
        return True if frac >= 0.5 else False if frac < 0.15 else None


@dataclass(frozen=True)
class Expression:
    text: str
    targets: tuple[int, ...]
    kind: str


def load_scenes(gt_path: Path, frames: Iterable[int], frame_wh: tuple[int, int],
                scale: float = 0.625) -> list[Scene]:
    """Scenes of the given 1-based frames that hold 2+ considered people and no flag-0 box."""
    rows = read_mot_gt(gt_path)
    wanted = set(frames)
    scenes = []
    for frame in sorted(wanted & set(rows[:, FRAME].astype(int).tolist())):
        mine = rows[rows[:, FRAME].astype(int) == frame]
        if (mine[:, FLAG] == 0).any() or len(mine) < 2:
            continue
        xyxy = scaled_xyxy(mine, scale)
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, frame_wh[0])
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, frame_wh[1])
        order = np.argsort(xyxy[:, 0])  # left to right, so box indices read naturally
        scenes.append(Scene(frame, tuple(int(i) for i in mine[order, ID]), xyxy[order], frame_wh))
    return scenes


def label_identities(
    scenes: list[Scene], frames: dict[int, np.ndarray], model: AttributeModel
) -> dict[int, IdentityLabels]:
    """Average the attribute model over every crop of each identity in ``scenes``."""
    crops, owners = [], []
    for s in scenes:
        for pid, box in zip(s.ids, s.xyxy, strict=True):
            x1, y1, x2, y2 = (round(v) for v in box)
            if x2 - x1 >= 4 and y2 - y1 >= 8:
                crops.append(frames[s.frame][y1:y2, x1:x2])
                owners.append(pid)
    attrs = model(crops)
    owners_arr = np.asarray(owners)
    labels = {}
    for pid in np.unique(owners_arr).tolist():
        idx = np.flatnonzero(owners_arr == pid)
        mean = attrs.probs[idx].mean(axis=0)
        top = [attrs.top_colour[i] for i in idx]
        bottom = [attrs.bottom_colour[i] for i in idx]
        labels[int(pid)] = IdentityLabels(
            probs={n: float(p) for n, p in zip(ATTRIBUTE_NAMES, mean, strict=True)},
            top={c: top.count(c) / len(top) for c in set(top)},
            bottom={c: bottom.count(c) / len(bottom) for c in set(bottom)},
        )
    return labels


# Descriptors: (phrase after "the person", predicate on labels). Phrases read after a noun.
Predicate = Callable[[IdentityLabels], "bool | None"]


def _both_black(lab: IdentityLabels) -> bool | None:
    a, b = lab.wears("top", "black"), lab.wears("bottom", "black")
    if a is True and b is True:
        return True
    return False if a is False or b is False else None


def _wears(part: str, colour: str, lab: IdentityLabels) -> bool | None:
    return lab.wears(part, colour)


def _negate(value: bool | None) -> bool | None:
    return None if value is None else not value


def descriptors(rng: np.random.Generator) -> list[tuple[str, Predicate]]:
    """Every attribute / colour descriptor, phrased with a seeded choice of wording."""
    def pick(*options: str) -> str:
        return options[int(rng.integers(len(options)))]

    out: list[tuple[str, Predicate]] = [
        (pick("who is a man", "who is male"), lambda lab: lab.has("is_male")),
        (pick("who is a woman", "who is female"), lambda lab: _negate(lab.has("is_male"))),
    ]
    for c in COLOUR_NAMES:
        a = "an" if c[0] in "aeiou" else "a"
        out.append((pick(f"in {a} {c} top", f"wearing {a} {c} top", f"with {a} {c} shirt",
                         f"dressed in {c} on top"), partial(_wears, "top", c)))
        out.append((pick(f"in {c} trousers", f"wearing {c} trousers", f"with {c} pants"),
                    partial(_wears, "bottom", c)))
    out += [
        (pick("with a backpack", "carrying a backpack", "wearing a rucksack"),
         lambda lab: lab.has("has_backpack")),
        (pick("carrying a bag", "with a handbag", "holding a bag"), lambda lab: lab.has("has_bag")),
        (pick("wearing a hat", "with a cap", "in a hat"), lambda lab: lab.has("has_hat")),
        (pick("with long hair", "who has long hair"), lambda lab: lab.has("has_longhair")),
        (pick("in long sleeves", "wearing long sleeves"), lambda lab: lab.has("has_longsleeves")),
        (pick("in short sleeves", "wearing a t-shirt with short sleeves"),
         lambda lab: _negate(lab.has("has_longsleeves"))),
        (pick("in dark clothes", "dressed all in black", "in black from head to toe"),
         _both_black),
    ]
    return out


NOUNS = ("person", "pedestrian", "one")
NOBODY = (
    "the child on a bicycle", "the person riding a bike", "the cyclist", "the dog on a leash",
    "the person holding an umbrella", "the person pushing a pram", "the person in a purple coat",
    "the person lying on the ground", "the man in a suit and tie", "the person on a skateboard",
)  # fmt: skip


def _feet(s: Scene) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) bottom-centre points and (n,) box heights."""
    b = s.xyxy
    return np.stack([(b[:, 0] + b[:, 2]) / 2, b[:, 3]], axis=1), b[:, 3] - b[:, 1]


def neighbours(s: Scene, near: float = 1.0, far: float = 1.8) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) bools: feet within ``near`` mean body heights, and beyond ``far`` (clearly apart)."""
    feet, h = _feet(s)
    d = np.linalg.norm(feet[:, None] - feet[None], axis=2)  # (n, n)
    scale = (h[:, None] + h[None]) / 2
    eye = np.eye(len(h), dtype=bool)
    return (d <= near * scale) & ~eye, (d > far * scale) | eye


def _decide(pred: Predicate, labels: list[IdentityLabels]) -> tuple[int, ...] | None:
    """Indices where ``pred`` holds, or None when anyone is unsure."""
    values = [pred(lab) for lab in labels]
    if any(v is None for v in values):
        return None
    return tuple(i for i, v in enumerate(values) if v)


def attribute_expressions(s: Scene, labels: list[IdentityLabels], rng: np.random.Generator,
                          ) -> list[Expression]:
    """Attribute / colour descriptors: 1 target, several ("everyone ..."), or none."""
    out = []
    for phrase, pred in descriptors(rng):
        targets = _decide(pred, labels)
        if targets is None:
            continue
        noun = NOUNS[int(rng.integers(len(NOUNS)))]
        if len(targets) == 0:
            out.append(Expression(f"the {noun} {phrase}", (), "attribute-none"))
        elif len(targets) == 1:
            out.append(Expression(f"the {noun} {phrase}", targets, "attribute"))
        else:
            lead = ("everyone", "all people", "the people")[int(rng.integers(3))]
            out.append(Expression(f"{lead} {phrase}", targets, "attribute-multi"))
    return out


def position_expressions(s: Scene, rng: np.random.Generator) -> list[Expression]:
    """Leftmost / rightmost, nearest / farthest from the camera, top / bottom, the two on a side."""
    w, hgt = s.frame_wh
    cx = (s.xyxy[:, 0] + s.xyxy[:, 2]) / 2
    h = s.xyxy[:, 3] - s.xyxy[:, 1]
    cy = (s.xyxy[:, 1] + s.xyxy[:, 3]) / 2
    n = len(cx)
    out = []

    def extreme(values: np.ndarray, gap: float, texts: tuple[str, ...], kind: str, k: int = 1,
                ) -> None:
        order = np.argsort(values)
        if n > k and values[order[k]] - values[order[k - 1]] >= gap:
            text = texts[int(rng.integers(len(texts)))]
            out.append(Expression(text, tuple(sorted(int(i) for i in order[:k])), kind))

    extreme(cx, 0.03 * w, ("the leftmost person", "the person furthest to the left",
                           "the person on the far left"), "position")
    extreme(-cx, 0.03 * w, ("the rightmost person", "the person furthest to the right",
                            "the person on the far right"), "position")
    extreme(-h, 0.12 * h.max(), ("the person nearest the camera", "the person closest to the camera",
                                 "the biggest person in the image"), "position")
    extreme(h, 0.1 * h.min(), ("the person farthest from the camera",
                               "the smallest person in the image"), "position")
    extreme(cy, 0.05 * hgt, ("the person at the top of the image", "the person highest in the frame"),
            "position")
    extreme(-cy, 0.05 * hgt, ("the person at the bottom of the image",
                              "the person lowest in the frame"), "position")
    if n >= 3:
        extreme(cx, 0.03 * w, ("the two people on the left", "the two leftmost people"),
                "position-multi", k=2)
        extreme(-cx, 0.03 * w, ("the two people on the right", "the two rightmost people"),
                "position-multi", k=2)
    if n >= 4:
        extreme(cx, 0.03 * w, ("the three leftmost people",), "position-multi", k=3)
    if np.all(np.abs(cx - w / 2) >= 0.04 * w):
        for side, mask in (("left", cx < w / 2), ("right", cx > w / 2)):
            targets = tuple(int(i) for i in np.flatnonzero(mask))
            phrase = ("in the {} half of the image", "on the {} side of the image")[
                int(rng.integers(2))].format(side)
            lead = "everyone" if len(targets) > 1 else "the person"
            kind = ("position-none", "position")[len(targets)] if len(targets) < 2 else (
                "position-multi")
            out.append(Expression(f"{lead} {phrase}", targets, kind))
    return out


def relation_expressions(s: Scene, labels: list[IdentityLabels], rng: np.random.Generator,
                         ) -> list[Expression]:
    """Next to / left of an anchor person named by a unique descriptor; walking together / alone."""
    near, apart = neighbours(s)
    decided = near | apart
    cx = (s.xyxy[:, 0] + s.xyxy[:, 2]) / 2
    out = []
    for phrase, pred in descriptors(rng):
        found = _decide(pred, labels)
        if found is None:
            continue
        if len(found) == 0:  # the anchor does not exist: nobody is next to it
            out.append(Expression(f"the person next to the person {phrase}", (), "relation-none"))
            continue
        if len(found) != 1:
            continue
        a = found[0]
        if decided[a].all() and near[a].any():
            targets = tuple(int(i) for i in np.flatnonzero(near[a]))
            lead = "the person" if len(targets) == 1 else "the people"
            out.append(Expression(f"{lead} next to the person {phrase}", targets,
                                  "relation" if len(targets) == 1 else "relation-multi"))
        others = np.delete(np.arange(len(cx)), a)
        if np.all(np.abs(cx[others] - cx[a]) >= 0.02 * s.frame_wh[0]):
            left = tuple(int(i) for i in others if cx[i] < cx[a])
            if left:
                lead = "the person" if len(left) == 1 else "everyone"
                out.append(Expression(f"{lead} to the left of the person {phrase}", left,
                                      "relation" if len(left) == 1 else "relation-multi"))
    if decided.all():
        together = tuple(int(i) for i in np.flatnonzero(near.any(axis=1)))
        alone = tuple(int(i) for i in np.flatnonzero(~near.any(axis=1)))
        text = ("the people walking together", "everyone walking with someone",
                "people walking in a group")[int(rng.integers(3))]
        out.append(Expression(text, together, "relation-multi" if together else "relation-none"))
        if alone:
            text = "the person walking alone" if len(alone) == 1 else "everyone walking alone"
            out.append(Expression(text, alone, "relation" if len(alone) == 1 else "relation-multi"))
    return out


def generate_expressions(s: Scene, labs: list[IdentityLabels], rng: np.random.Generator,
                         per_frame: int) -> list[Expression]:
    """Up to ``per_frame`` expressions: about 25 % no target, 25 % several, 50 % exactly one.

    ``labs``: the labels of ``s``'s people, in box order.
    """
    pool = (attribute_expressions(s, labs, rng) + position_expressions(s, rng)
            + relation_expressions(s, labs, rng))
    pool += [Expression(t, (), "absurd-none") for t in NOBODY]
    buckets: dict[str, list[Expression]] = {"none": [], "single": [], "multi": []}
    for e in pool:
        buckets["none" if not e.targets else "single" if len(e.targets) == 1 else "multi"].append(e)
    chosen: list[Expression] = []
    seen: set[str] = set()
    for _ in range(per_frame * 4):
        if len(chosen) == per_frame:
            break
        bucket = buckets[str(rng.choice(["none", "single", "multi"], p=[0.25, 0.5, 0.25]))]
        if not bucket:
            continue
        # A family (attribute, position, relation, absurd) first, so positions do not dominate.
        families = sorted({e.kind.split("-")[0] for e in bucket})
        family = families[int(rng.integers(len(families)))]
        mine = [i for i, e in enumerate(bucket) if e.kind.split("-")[0] == family]
        e = bucket.pop(mine[int(rng.integers(len(mine)))])
        if e.text not in seen:
            seen.add(e.text)
            chosen.append(e)
    return chosen


# A typical BGR of each colour name, for feature-level recolouring of TRAIN people.
PROTOTYPE_BGR: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25), "grey": (125, 125, 125), "white": (230, 230, 230),
    "red": (40, 40, 200), "orange": (30, 140, 240), "brown": (40, 75, 110),
    "yellow": (40, 215, 225), "green": (60, 160, 50), "blue": (190, 90, 40),
    "purple": (150, 40, 120), "pink": (190, 150, 240),
}  # fmt: skip
AUGMENTED_ATTRIBUTES = ("is_male", "has_bag", "has_backpack", "has_hat", "has_longsleeves",
                        "has_longhair")


def augment(labs: list[IdentityLabels], rng: np.random.Generator,
            ) -> tuple[list[IdentityLabels], list[dict | None]]:
    """Recolour and re-attribute some people at the feature level (TRAIN only).

    PETS frames 1-400 show almost only black and blue clothes and few confident attributes, so a
    model trained on them alone never sees "red" or "backpack" paired with a person. For each
    person, with probability 0.4 per part, a clothing colour is replaced by a jittered prototype
    of a random colour name (its label is that sample's name, as ``refind.models.colours`` reads it),
    and with probability 0.3 one attribute probability is set clearly high or low. The returned
    overrides (one per person or None) say which attribute-model outputs the trainer replaces.
    """
    from refind.models.colours import name_colour

    new_labs, overrides = [], []
    for lab in labs:
        ov: dict = {}
        top, bottom, probs = dict(lab.top), dict(lab.bottom), dict(lab.probs)
        for part, target in (("top", top), ("bottom", bottom)):
            if rng.random() < 0.4:
                proto = np.array(PROTOTYPE_BGR[COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]])
                bgr = np.clip(proto + rng.normal(0, 12, 3), 0, 255).astype(np.uint8)
                ov[f"{part}_bgr"] = [int(v) for v in bgr]
                target.clear()
                target[name_colour(bgr)] = 1.0
        if rng.random() < 0.3:
            name = AUGMENTED_ATTRIBUTES[int(rng.integers(len(AUGMENTED_ATTRIBUTES)))]
            p = float(rng.uniform(0.75, 0.97) if rng.random() < 0.5 else rng.uniform(0.03, 0.25))
            ov["probs"] = {name: round(p, 3)}
            probs[name] = p
        new_labs.append(IdentityLabels(probs, top, bottom))
        overrides.append(ov or None)
    return new_labs, overrides


def decode_frames(video: Path, frames: set[int]) -> dict[int, np.ndarray]:
    """BGR images of the given 1-based frames (GT frame N = decoded index N-1)."""
    return {f: image for f, image in decode_mot_frames(video, max(frames)) if f in frames}


def relayout(s: Scene, rng: np.random.Generator) -> Scene:
    """The same people at random places (TRAIN only): feet anywhere on the lower 65 % of the
    frame, height growing towards the bottom as in the PETS view, so position words are learnt
    from the geometry and not from where people happen to walk in frames 1-400."""
    w, h = s.frame_wh
    n = len(s.ids)
    y2 = rng.uniform(0.35, 1.0, n) * h
    height = h * (0.1 + 0.22 * (y2 / h - 0.35) / 0.65) * rng.uniform(0.85, 1.15, n)
    width = height * rng.uniform(0.3, 0.45, n)
    cx = rng.uniform(width / 2, w - width / 2)
    xyxy = np.stack([cx - width / 2, y2 - height, cx + width / 2, y2], axis=1)
    order = np.argsort(xyxy[:, 0])
    return Scene(s.frame, tuple(s.ids[i] for i in order), xyxy[order], s.frame_wh)


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def scene_records(s: Scene, image: str, exprs: list[Expression],
                  overrides: list[dict | None] | None = None,
                  crop_boxes: np.ndarray | None = None) -> list[dict]:
    """JSON-able records of one frame's expressions (boxes rounded to 0.1 px).

    ``crop_boxes`` (TRAIN relayouts only): where each person's crop really is, when ``s.xyxy``
    is a made-up layout.
    """
    boxes = [[round(float(v), 1) for v in b] for b in s.xyxy]
    extra: dict = {"overrides": overrides} if overrides and any(overrides) else {}
    if crop_boxes is not None:
        extra["crop_boxes"] = [[round(float(v), 1) for v in b] for b in crop_boxes]
    return [
        {"image": image, "boxes": boxes, "expression": e.text, "targets": list(e.targets),
         "kind": e.kind, "frame": s.frame, "ids": list(s.ids), **extra}
        for e in exprs
    ]
