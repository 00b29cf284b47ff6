"""Embeds detection boxes of a frame on demand: the tracker's lazy appearance callback.

``BoxEmbedder`` wraps any ReID embedder (``refind.models.base.ReidEmbedder``, or an actor pool seen as
one); ``callback(image, detections)`` gives the function
``ByteTracker.update`` takes as ``appearance``: it crops the asked detections from the frame and
embeds them in one model call. The embedder counts crops, calls and seconds, so evaluation and
ingest can report what lazy appearance cost.

Example:
    >>> boxes = BoxEmbedder(embedder)                                               # doctest: +SKIP
    >>> tracker.update(f.index, f.ts_ns, dets, boxes.callback(f.image, dets))     # doctest: +SKIP
    >>> boxes.crops / frames                                                        # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from refind.streaming.boxes import box_pixels
from refind.streaming.records import Detections, Embeddings

EmbedFn = Callable[[Sequence[np.ndarray]], Embeddings]
"""Any ReID embedder (``refind.models.base.ReidEmbedder``): person crops in, unit vectors out."""


class BoxEmbedder:
    """Crops and embeds boxes of one frame in one call of a ReID embedder; counts the cost.

    Example:
        >>> boxes = BoxEmbedder(embedder)                                       # doctest: +SKIP
        >>> boxes(image, np.array([[10, 20, 60, 140]])).shape                   # doctest: +SKIP
        (1, 256)
    """

    def __init__(self, embedder: EmbedFn) -> None:
        self.embedder = embedder
        self.crops = 0
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        """(n, d) float32 unit embeddings of boxes ``xyxy`` (n, 4) in ``image``."""
        t0 = time.perf_counter()
        vectors = self.embedder([box_pixels(image, b) for b in xyxy]).vectors  # (n, d)
        self.seconds += time.perf_counter() - t0
        self.crops += len(xyxy)
        self.calls += 1
        return vectors

    def callback(
        self, image: np.ndarray, detections: Detections
    ) -> Callable[[np.ndarray], np.ndarray]:
        """``appearance(indices)`` for ``ByteTracker.update``: embeds those detections."""

        def appearance(indices: np.ndarray) -> np.ndarray:
            return self(image, detections.xyxy[indices])

        return appearance
