"""Person ReID embedder over Intel Open Model Zoo networks (OpenVINO IR), batched.

Input: person crops, (h, w, 3) uint8 BGR, resized to 128x256 (w x h) BGR 0-255 as OMZ expects.
Output: (n, 256) float32 L2-normalised; cosine similarity = inner product.

Example:
    >>> emb = OpenVinoReidEmbedder(OpenVinoReidConfig(), store)    # doctest: +SKIP
    >>> emb([crop]).vectors.shape                                    # doctest: +SKIP
    (1, 256)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import openvino as ov

from refind.models.base import crops_to_batch
from refind.models.config import OpenVinoReidConfig
from refind.models.openvino_util import CpuRunner, read_dynamic_batch
from refind.models.store import ModelStore
from refind.streaming.records import Embeddings


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit length ((n, d) float32)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


class OpenVinoReidEmbedder:
    """OMZ person-reidentification-retail-02xx with a dynamic batch dimension."""

    @classmethod
    def from_config(cls, cfg: OpenVinoReidConfig, store: ModelStore) -> OpenVinoReidEmbedder:
        """The model of its config section (``refind.models.registry`` builds it so)."""
        return cls(cfg, store)

    def __init__(self, cfg: OpenVinoReidConfig, store: ModelStore) -> None:
        self.cfg = cfg
        resolved = store.resolve(cfg.model)
        self.model_id = resolved.model_id
        core = ov.Core()
        model, (self._h, self._w) = read_dynamic_batch(core, resolved.path)
        self._run_model = CpuRunner(core, model, cfg.threads)
        self.dim = int(model.outputs[0].get_partial_shape()[1].get_length())

    def __call__(self, crops: Sequence[np.ndarray]) -> Embeddings:
        if len(crops) == 0:
            return Embeddings(np.zeros((0, self.dim), np.float32), self.model_id)
        chunks = [
            self._run(crops[i : i + self.cfg.batch_size])
            for i in range(0, len(crops), self.cfg.batch_size)
        ]
        return Embeddings(np.concatenate(chunks), self.model_id)

    def _run(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        batch = crops_to_batch(crops, (self._h, self._w), "ReID crop",
                               resize_threads=self.cfg.resize_threads)  # (B, 3, 256, 128)
        (out,) = self._run_model([batch])  # (B, D)
        return l2_normalise(np.asarray(out, dtype=np.float32))
