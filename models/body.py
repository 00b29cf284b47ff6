"""A person's body in a crop: BlazePose mask and keypoints, body-part regions, colour per part.

``PoseModel`` runs BlazePose GHUM full (MediaPipe's ``pose_landmark_full.tflite``, read by
OpenVINO) on person crops: each crop is centred on a square canvas with a margin, resized to
256x256 RGB 0-1, and gives 33 keypoints and a person segmentation mask, both mapped back to the
crop's pixels. ``Body.part_masks`` cuts the mask into parts by the keypoints' heights: ``hair``
(above the nose), ``head`` (above the shoulders), ``top`` (shoulders to hips, arms included),
``bottom`` (hips to ankles), ``shoes`` (below the ankles), and ``person`` (all of it). Where the
keypoints are not trusted (visibility < 0.5, or out of order) the parts are fixed fractions of
the mask's height instead, and where the mask is missing the middle of the crop stands in.

``part_colours`` names every pixel of each part (``refind.models.colours.name_colours``) and
returns the fraction of the part per colour name: a backpack or the background beside the person
does not decide the colour of a top, and a two-tone jacket shows both colours.

Example:
    >>> pose = PoseModel(store)                                          # doctest: +SKIP
    >>> body = pose([crop])[0]                                           # doctest: +SKIP
    >>> part_colours(crop, body)["top"][COLOUR_NAMES.index("red")]       # doctest: +SKIP
    0.64
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from refind.models.colours import COLOUR_NAMES, name_colours

MODEL_NAME = "blazepose-full"
PARTS = ("hair", "head", "top", "bottom", "shoes", "person")
SIZE = 256  # BlazePose's input side
MARGIN = 1.25  # canvas side / the crop's longer side
NOSE, SHOULDERS, HIPS, ANKLES, FEET = 0, (11, 12), (23, 24), (27, 28), (29, 30, 31, 32)
# part bands as fractions of the mask's height, used when the keypoints are not trusted
_BANDS = {"hair": (0.0, 0.08), "head": (0.0, 0.17), "top": (0.17, 0.52),
          "bottom": (0.52, 0.93), "shoes": (0.93, 1.0), "person": (0.0, 1.0)}


@dataclass(frozen=True)
class Body:
    """One person's pose in a crop of (h, w) pixels.

    keypoints: (33, 2) float32 x, y in crop pixels; visibility: (33,) float32 in 0..1; mask:
    (h, w) bool person pixels; presence: BlazePose's confidence (0..1) that a whole person is
    there: it drops towards 0 for a person partly hidden (behind a sign, by another person);
    from_pose: False when the mask is a stand-in (no person's outline found).
    """

    keypoints: np.ndarray = field(repr=False)
    visibility: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    presence: float
    from_pose: bool = True

    def _rows(self) -> dict[str, tuple[float, float]]:
        """The y range (crop pixels) of each part."""
        h = self.mask.shape[0]
        ys = np.nonzero(self.mask.any(axis=1))[0]
        top, bottom = (float(ys[0]), float(ys[-1] + 1)) if len(ys) else (0.0, float(h))
        span = bottom - top
        rows = {p: (top + a * span, top + b * span) for p, (a, b) in _BANDS.items()}
        k, v = self.keypoints, self.visibility
        trusted = self.from_pose and all(v[i] >= 0.5 for i in (NOSE, *SHOULDERS, *HIPS))
        if not trusted:
            return rows
        nose, shoulder = float(k[NOSE, 1]), float(k[list(SHOULDERS), 1].mean())
        hip = float(k[list(HIPS), 1].mean())
        if not top <= nose < shoulder < hip <= bottom:
            return rows
        ankle = float(k[list(ANKLES), 1].mean()) if min(v[list(ANKLES)]) >= 0.5 else \
            top + _BANDS["bottom"][1] * span
        ankle = min(max(ankle, hip + 1.0), bottom)
        rows.update(hair=(top, nose), head=(top, shoulder), top=(shoulder, hip),
                    bottom=(hip, ankle), shoes=(ankle - 0.02 * span, bottom))
        return rows

    def part_masks(self) -> dict[str, np.ndarray]:
        """(h, w) bool pixels of each part in ``PARTS`` (possibly empty)."""
        h = self.mask.shape[0]
        y = np.arange(h, dtype=np.float32)[:, None]  # (h, 1)
        return {part: self.mask & (y >= a) & (y < b) for part, (a, b) in self._rows().items()}

    def part_outlines(self) -> dict[str, tuple[tuple[float, float, float, float],
                                               tuple[tuple[float, float], ...]]]:
        """Box and outline (the largest contour of its mask, simplified to ~1.5 px) of each
        non-empty part, in crop pixels."""
        out = {}
        for part, m in self.part_masks().items():
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            if not contours:
                continue
            c = cv2.approxPolyDP(max(contours, key=cv2.contourArea), 1.5, True).reshape(-1, 2)
            x, y, w, h = cv2.boundingRect(m.astype(np.uint8))
            out[part] = ((float(x), float(y), float(x + w), float(y + h)),
                         tuple((float(px), float(py)) for px, py in c))
        return out

    def part_boxes(self) -> dict[str, tuple[float, float, float, float]]:
        """The box (crop pixels, x1 y1 x2 y2) of each non-empty part."""
        out = {}
        for part, m in self.part_masks().items():
            ys, xs = np.nonzero(m)
            if len(xs):
                out[part] = (float(xs.min()), float(ys.min()), float(xs.max() + 1),
                             float(ys.max() + 1))
        return out


def stand_in(crop: np.ndarray, presence: float = 0.0) -> Body:
    """A body for a crop where no person's outline was found: the middle 60 % of its width
    (``presence``: BlazePose's, when it ran)."""
    h, w = crop.shape[:2]
    mask = np.zeros((h, w), bool)
    mask[:, int(0.2 * w) : max(int(0.8 * w), int(0.2 * w) + 1)] = True
    return Body(np.zeros((33, 2), np.float32), np.zeros(33, np.float32), mask, presence, False)


def part_colours(crop: np.ndarray, body: Body) -> dict[str, np.ndarray]:
    """Per part, (len(COLOUR_NAMES),) float32 fractions of its pixels named each colour (all
    zero for an empty part)."""
    return {part: _name_shares(crop[m]) for part, m in body.part_masks().items()}


def _name_shares(pixels: np.ndarray) -> np.ndarray:
    """(len(COLOUR_NAMES),) float32 fractions of (k, 3) BGR pixels named each colour."""
    counts = np.bincount(name_colours(pixels), minlength=len(COLOUR_NAMES)).astype(np.float32)
    return counts / max(len(pixels), 1)


GROUND_BAND = 0.15  # the bottom of a crop, around the feet, where the ground shows


def ground_colours(crop: np.ndarray, body: Body) -> np.ndarray:
    """(len(COLOUR_NAMES),) float32 fractions of the ground's pixels named each colour: the
    bottom ``GROUND_BAND`` of the crop, outside the person's mask (all zero when the person
    fills it)."""
    top = max(min(round(crop.shape[0] * (1.0 - GROUND_BAND)), crop.shape[0] - 1), 0)
    return _name_shares(crop[top:][~body.mask[top:]])


class PoseModel:
    """BlazePose GHUM full on OpenVINO's CPU runner; one call = a list of crops.

    A crop whose presence is under ``min_presence`` gets the stand-in mask. It is 0 by default:
    the mask of a partly hidden person (presence near 0) still outlines what is seen of them,
    and colours read inside it did better on the development expressions (per-frame DensityF1
    0.788, against 0.755 with the stand-in under 0.5).

    Example:
        >>> bodies = PoseModel(store)([crop_a, crop_b])                   # doctest: +SKIP
    """

    def __init__(self, store: object, model: str = MODEL_NAME, min_presence: float = 0.0) -> None:
        import openvino as ov

        resolved = store.resolve(model)  # type: ignore[attr-defined]
        self.model_id = resolved.model_id
        self.min_presence = min_presence
        core = ov.Core()
        self._model = core.compile_model(core.read_model(str(resolved.path)), "CPU",
                                         {"PERFORMANCE_HINT": "LATENCY"})
        outs = self._model.outputs
        # Identity: landmarks (1, 195); Identity_1: presence (1, 1); Identity_2: mask (1, S, S, 1)
        self._landmarks, self._presence, self._mask = outs[0], outs[1], outs[2]

    def __call__(self, crops: Sequence[np.ndarray]) -> list[Body]:
        return [self._one(c) for c in crops]

    def _one(self, crop: np.ndarray) -> Body:
        if crop.ndim != 3 or crop.shape[2] != 3 or min(crop.shape[:2]) < 2:
            raise ValueError(f"pose crop must be (h, w, 3) BGR with h, w >= 2, got {crop.shape}")
        h, w = crop.shape[:2]
        scale = SIZE / (MARGIN * max(h, w))
        # crop pixels -> canvas pixels: centre the crop on the square canvas
        affine = np.array([[scale, 0, SIZE / 2 - scale * w / 2],
                           [0, scale, SIZE / 2 - scale * h / 2]], np.float32)
        canvas = cv2.warpAffine(crop, affine, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT)
        x = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)[None].astype(np.float32) / 255.0  # (1,S,S,3)
        out = self._model([x])
        # the presence flag is a probability already (MediaPipe thresholds it at 0.5 as it is)
        presence = float(np.clip(np.asarray(out[self._presence]).reshape(-1)[0], 0.0, 1.0))
        if presence < self.min_presence:
            return stand_in(crop, presence)
        marks = np.asarray(out[self._landmarks], np.float32).reshape(39, 5)[:33]  # (33, 5)
        keypoints = (marks[:, :2] - affine[:, 2]) / scale  # canvas -> crop pixels
        logits = np.asarray(out[self._mask], np.float32).reshape(SIZE, SIZE)
        back = cv2.invertAffineTransform(affine)
        mask = cv2.warpAffine(logits, back, (w, h), flags=cv2.INTER_LINEAR) > 0.0  # (h, w)
        if mask.mean() < 0.05:  # a sliver is not a person's outline
            return stand_in(crop, presence)
        return Body(keypoints.astype(np.float32), _sigmoid(marks[:, 3]).astype(np.float32), mask,
                    presence)


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))
