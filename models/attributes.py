"""Person attributes and clothing colours: OMZ person-attributes-recognition-crossroad-0230.

Input: person crops, (h, w, 3) uint8 BGR, resized to 80x160 (w x h) BGR 0-255. Outputs: 8
attribute probabilities (``refind.models.base.ATTRIBUTE_NAMES``) and two points (x, y in 0..1 of the
crop) where the top and bottom clothing colours can be sampled; the colours are sampled from the
crop at those points and named (``refind.models.colours``).

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

import numpy as np
import openvino as ov

from refind.models.base import PersonAttributes, crops_to_batch
from refind.models.colours import name_colour, sample_colour
from refind.models.openvino_util import CpuRunner, read_dynamic_batch
from refind.models.store import ModelStore

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
        net, (self._h, self._w) = read_dynamic_batch(core, resolved.path)  # 160, 80
        self._run_model = CpuRunner(core, net, threads)
        # Outputs by shape: (B, 8, 1, 1) attributes, then two (B, 2, 1, 1) points: top, bottom.
        widths = [o.get_partial_shape()[1].get_length() for o in self._run_model.outputs]
        self._attr_out = widths.index(8)
        self._top_out, self._bottom_out = (i for i, w in enumerate(widths) if w == 2)

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
        batch = crops_to_batch(
            crops, (self._h, self._w), "attribute crop", offset
        )  # (B, 3, 160, 80)
        out = self._run_model([batch])
        probs = np.asarray(out[self._attr_out], np.float32).reshape(len(crops), 8)  # (B, 8)
        top_xy = np.asarray(out[self._top_out], np.float32).reshape(len(crops), 2)  # (B, 2)
        bottom_xy = np.asarray(out[self._bottom_out], np.float32).reshape(len(crops), 2)
        top = np.stack([sample_colour(c, tuple(p)) for c, p in zip(crops, top_xy, strict=True)])
        bottom = np.stack(
            [sample_colour(c, tuple(p)) for c, p in zip(crops, bottom_xy, strict=True)]
        )
        return np.clip(probs, 0.0, 1.0), top, bottom
