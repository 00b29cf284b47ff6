"""Shared builders of the model tests: a tiny IRM configuration, heads and fakes of its frozen
parts (no data, no OpenVINO), used by test_irm.py, test_attribute_probe.py and
test_train_probe.py."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from refind.models.irm import IrmHead
from refind.models.irm_cpu import IrmConfig
from refind.models.irm_embedder import IrmEmbedder

TINY = IrmConfig(
    token_dim=16, n_patches=4, teacher_dim=8, text_dim=12, dim=16, heads=2,
    encoder_layers=1, editing_layers=1, part_dim=8, max_text_tokens=8,
)  # fmt: skip


def tiny_head(seed: int = 0) -> IrmHead:
    torch.manual_seed(seed)
    head = IrmHead(TINY)
    # Trained-like: non-zero output projections and gate, so the instruction matters.
    for p in (head.id_out.weight, head.clo_out.weight, head.gate.weight):
        torch.nn.init.normal_(p, std=0.5)
    head.set_gallery_text(torch.randn(3, TINY.text_dim))
    return head.eval()


def teacher_head(seed: int = 0) -> IrmHead:
    """An untrained head: every image vector is the (fake) teacher's, [t, t] / sqrt 2."""
    torch.manual_seed(seed)
    head = IrmHead(TINY)
    head.set_gallery_text(torch.randn(3, TINY.text_dim))
    return head.eval()


class FakeBackbone:
    """Deterministic features from pixels: 2x2 patch colours through fixed random projections."""

    model_id = "fake-backbone"

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.tok = rng.normal(size=(3, TINY.token_dim)).astype(np.float32)
        self.tea = rng.normal(size=(12, TINY.teacher_dim)).astype(np.float32)

    def __call__(self, crops):
        import cv2

        cells = np.stack([cv2.resize(c, (2, 2), interpolation=cv2.INTER_AREA) for c in crops])
        cells = cells.reshape(len(crops), 4, 3).astype(np.float32) / 255.0  # (B, 4, 3)
        return np.maximum(cells @ self.tok, 0), cells.reshape(len(crops), 12) @ self.tea


class FakeText:
    """Deterministic per-word states, (n_words + 1, text_dim) per text."""

    def __call__(self, texts):
        out = []
        for t in texts:
            rows = [np.random.default_rng(zlib.crc32(w.encode())).normal(size=TINY.text_dim)
                    for w in ["[CLS]", *t.split()]]  # fmt: skip
            out.append(np.asarray(rows, np.float32))
        return out


def tiny_embedder(seed: int = 0) -> IrmEmbedder:
    return IrmEmbedder(
        tiny_head(seed), FakeBackbone(), "irm-tiny", "cpu", batch_size=4, text=FakeText(),
        compile_cpu=False,
    )  # fmt: skip


def crops(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` random BGR crops of growing height."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 4 * i, 20, 3), dtype=np.uint8) for i in range(n)]
