"""Person attributes and clothing colours: OMZ person-attributes-recognition-crossroad-0230.

Input: person crops, (h, w, 3) uint8 BGR, resized to 80x160 (w x h) BGR 0-255. Outputs: 8
attribute probabilities (``models.base.ATTRIBUTE_NAMES``) and two points (x, y in 0..1 of the
crop) where the top and bottom clothing colours can be sampled; the colours are sampled from the
crop at those points and named (``models.colours``).

Known weak spots (seen on street crops): ``has_coat_jacket`` is near 0 almost everywhere and
``has_longpants`` is low under long coats, so neither should drive a decision; ``is_male`` sits
near 0.5 on small crops; the top point can land on a backpack seen from behind.

Example:
    >>> attrs = OpenVinoAttributes(store)                          # doctest: +SKIP
    >>> attrs([crop]).top_colour                                   # doctest: +SKIP
    ('red',)
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import openvino as ov

from models.base import ModelInputError, PersonAttributes, check_bgr_image
from models.colours import name_colour, sample_colour
from models.store import ModelStore

MODEL_NAME = "person-attributes-recognition-crossroad-0230"


class OpenVinoAttributes:
    """OMZ 0230 with a dynamic batch dimension; one call = one batch of crops."""

    def __init__(
        self, store: ModelStore, model: str = MODEL_NAME, batch_size: int = 32, threads: int = 0
    ) -> None:
        resolved = store.resolve(model)
        self.model_id = resolved.model_id
        self.batch_size = batch_size
        core = ov.Core()
        net = core.read_model(str(resolved.path))
        shape = net.inputs[0].get_partial_shape()
        self._h, self._w = int(shape[2].get_length()), int(shape[3].get_length())  # 160, 80
        net.reshape({net.inputs[0].get_any_name(): ov.PartialShape([-1, 3, self._h, self._w])})
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(net, "CPU", config)
        self._request = self._compiled.create_infer_request()
        # Outputs by shape: (B, 8, 1, 1) attributes, then two (B, 2, 1, 1) points: top, bottom.
        outs = list(self._compiled.outputs)
        self._attr_out = next(o for o in outs if o.get_partial_shape()[1].get_length() == 8)
        self._top_out, self._bottom_out = (
            o for o in outs if o.get_partial_shape()[1].get_length() == 2
        )

    def __call__(self, crops: Sequence[np.ndarray]) -> PersonAttributes:
        probs, tops, bottoms = [], [], []
        for start in range(0, len(crops), self.batch_size):
            p, t, b = self._run(crops[start : start + self.batch_size], start)
            probs.append(p)
            tops.append(t)
            bottoms.append(b)
        if not probs:
            empty = np.zeros((0, 3), np.uint8)
            return PersonAttributes(np.zeros((0, 8), np.float32), empty, empty, (), ())
        top_bgr, bottom_bgr = np.concatenate(tops), np.concatenate(bottoms)
        return PersonAttributes(
            probs=np.concatenate(probs),
            top_bgr=top_bgr,
            bottom_bgr=bottom_bgr,
            top_colour=tuple(name_colour(c) for c in top_bgr),
            bottom_colour=tuple(name_colour(c) for c in bottom_bgr),
        )

    def _run(
        self, crops: Sequence[np.ndarray], offset: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = np.empty((len(crops), 3, self._h, self._w), np.float32)  # (B, 3, 160, 80)
        for i, crop in enumerate(crops):
            check_bgr_image(crop, f"attribute crop {offset + i}")
            if min(crop.shape[:2]) < 2:
                raise ModelInputError(f"attribute crop {offset + i} is too small: {crop.shape}")
            batch[i] = cv2.resize(crop, (self._w, self._h), interpolation=cv2.INTER_LINEAR).transpose(
                2, 0, 1
            )
        out = self._request.infer({0: batch})
        probs = np.asarray(out[self._attr_out], np.float32).reshape(len(crops), 8)  # (B, 8)
        top_xy = np.asarray(out[self._top_out], np.float32).reshape(len(crops), 2)  # (B, 2)
        bottom_xy = np.asarray(out[self._bottom_out], np.float32).reshape(len(crops), 2)
        top = np.stack([sample_colour(c, tuple(p)) for c, p in zip(crops, top_xy, strict=True)])
        bottom = np.stack(
            [sample_colour(c, tuple(p)) for c, p in zip(crops, bottom_xy, strict=True)]
        )
        return np.clip(probs, 0.0, 1.0), top, bottom
