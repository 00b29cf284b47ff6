"""A multimodal LLM as a referring re-ranker: Qwen2.5-VL through ``transformers``, RexSeek-style.

The candidates' crops are laid out on one contact sheet; the prompt lists them as numbered
objects with their box on the sheet and their box in their own frame, then asks which match the
expression. The answer is parsed for indices (``<obj1><obj3>``, ``[1] [3]``, ``1, 3``) or a
refusal (``None``). Weights come from a local model directory (no download): the model's
``config.json`` + weights, a tokenizer and ``preprocessor_config.json``. Inputs are assembled
from the tokenizer and Qwen2-VL's PIL image processor directly (the packaged processor also
wants a video processor, which needs torchvision).

It degrades cleanly: a generation that runs past ``timeout_s`` (``max_time`` in ``generate``),
raises, or answers something unparsable falls back to the previous ranking (the order the
regions came in, everyone kept) and says why in every reason.

Example:
    >>> rr = MllmReranker(Path("/models/Qwen2.5-VL-3B-Instruct"), timeout_s=20)   # doctest: +SKIP
    >>> rr("the man with a backpack", regions).selected                          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from refind.models.base import ModelUnavailable, Region, RerankResult

log = logging.getLogger(__name__)

SYSTEM = "You are a helpful assistant."
_REFUSAL = re.compile(r"\b(none|nobody|no one|no match(es)?|no person)\b")
_BARE_LIST = re.compile(r"\s*\d+(\s*(,|;|and|&|\s)\s*\d+)*\s*\.?\s*")


def parse_indices(answer: str, n: int) -> list[int] | None:
    """Indices an answer names, [] for a refusal, None when it cannot be read.

    ``<objK>`` tags win, then ``[K]``, then an answer that is only a list of numbers; indices
    outside 0..n-1 are dropped (an answer naming only such indices is unreadable).
    """
    text = answer.strip().lower()
    for pattern in (r"<obj(\d+)>", r"\[(\d+)\]"):
        found = [int(k) for k in re.findall(pattern, text)]
        if found:
            break
    else:
        found = [int(k) for k in re.findall(r"\d+", text)] if _BARE_LIST.fullmatch(text) else []
    if not found:
        return [] if _REFUSAL.search(text) else None
    valid = sorted({k for k in found if 0 <= k < n})
    return valid or None


def contact_sheet(crops: Sequence[np.ndarray], cell_h: int = 112, per_row: int = 8,
                  ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """RGB sheet of the crops (each resized to ``cell_h`` high) and each crop's box on it."""
    cell_w = cell_h // 2
    rows = max(1, -(-len(crops) // per_row))
    cols = min(per_row, max(1, len(crops)))
    sheet = np.full((rows * cell_h, cols * cell_w, 3), 255, np.uint8)
    boxes = []
    for i, crop in enumerate(crops):
        h, w = crop.shape[:2]
        scale = min(cell_h / h, cell_w / w)
        nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
        y, x = (i // per_row) * cell_h, (i % per_row) * cell_w
        sheet[y : y + nh, x : x + nw] = cv2.cvtColor(cv2.resize(crop, (nw, nh)), cv2.COLOR_BGR2RGB)
        boxes.append((x, y, x + nw, y + nh))
    return sheet, boxes


def build_prompt(expression: str, regions: Sequence[Region],
                 sheet_boxes: Sequence[tuple[int, int, int, int]]) -> str:
    """The user turn: numbered objects with boxes (RexSeek's object list), then the question."""
    lines = [f"The image shows {len(regions)} candidate people, each a numbered object:"]
    for i, (r, b) in enumerate(zip(regions, sheet_boxes, strict=True)):
        x1, y1, x2, y2 = (round(v) for v in r.xyxy)
        lines.append(f"<obj{i}>: ({b[0]},{b[1]}),({b[2]},{b[3]}) in the image; seen at "
                     f"({x1},{y1}),({x2},{y2}) in a {r.frame_wh[0]}x{r.frame_wh[1]} camera frame "
                     f"(group {r.group})")
    lines.append(f'Which of them match the description "{expression}"? Answer with the matching '
                 'objects only, like <obj0><obj2>, or None if no one matches.')
    return "\n".join(lines)


class MllmReranker:
    """refind.models.base.Reranker over a local Qwen2.5-VL model directory; falls back, never fails."""

    name = "mllm"

    def __init__(self, model_dir: Path, timeout_s: float = 30.0, max_new_tokens: int = 32,
                 max_candidates: int = 24) -> None:
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no Qwen2.5-VL model directory at {model_dir} "
                                    "(config.json missing)")
        if timeout_s <= 0 or max_new_tokens < 1:
            raise ValueError(f"timeout_s must be > 0 and max_new_tokens >= 1, got {timeout_s}, "
                             f"{max_new_tokens}")
        self.model_id = f"mllm:{model_dir.name}"
        self.timeout_s, self.max_new_tokens, self.max_candidates = (
            timeout_s, max_new_tokens, max_candidates)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.images = Qwen2VLImageProcessorPil.from_pretrained(str(model_dir), local_files_only=True)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(model_dir), local_files_only=True).eval()
        self.merge = int(self.model.config.vision_config.spatial_merge_size)

    @classmethod
    def from_dir(cls, model_dir: Path | None) -> MllmReranker:
        """Built from a local model directory (``search.mllm_dir``; no such weights are
        distributed with refind); a clear error naming the setting when there is none."""
        if model_dir is None:
            raise ModelUnavailable("the mllm re-ranker needs a local Qwen2.5-VL model directory: set "
                             "search.mllm_dir in the config (refind eval refer also takes "
                             "--mllm-dir)")
        return cls(Path(model_dir))

    def _inputs(self, expression: str, regions: Sequence[Region]) -> dict:
        sheet, boxes = contact_sheet([r.crop for r in regions])
        from PIL import Image

        vision = self.images(images=[Image.fromarray(sheet)], return_tensors="pt")
        n_pad = int(vision["image_grid_thw"][0].prod()) // (self.merge**2)
        text = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                + "<|image_pad|>" * n_pad + "<|vision_end|>"
                + build_prompt(expression, regions, boxes) + "<|im_end|>\n<|im_start|>assistant\n")
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}

    def answer(self, expression: str, regions: Sequence[Region]) -> tuple[str, float]:
        """The model's raw answer and the seconds it took (greedy decoding, ``max_time``)."""
        import torch

        inputs = self._inputs(expression, regions)
        started = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, max_time=self.timeout_s)
        new = out[0, inputs["input_ids"].shape[1] :]
        text = str(self.tokenizer.decode(new, skip_special_tokens=True))
        return text, time.perf_counter() - started

    def __call__(self, expression: str, regions: Sequence[Region]) -> RerankResult:
        n = len(regions)
        if n == 0:
            return RerankResult(np.zeros(0, np.float32), np.zeros(0, bool), ())
        shown = list(regions[: self.max_candidates])
        try:
            text, seconds = self.answer(expression, shown)
        except Exception as err:  # any model failure degrades to the previous ranking
            log.warning("mllm re-ranker failed (%s: %s): keeping the previous ranking",
                        type(err).__name__, err)
            return fallback(n, f"model error {type(err).__name__}")
        if seconds >= self.timeout_s:
            log.warning("mllm re-ranker timed out after %.1f s: keeping the previous ranking",
                        seconds)
            return fallback(n, f"timed out after {seconds:.1f} s")
        picked = parse_indices(text, len(shown))
        if picked is None:
            log.info("mllm answer not understood: %r", text[:200])
            return fallback(n, f"answer not understood: {text[:60]!r}")
        selected = np.zeros(n, bool)
        selected[picked] = True
        scores = selected.astype(np.float32)
        why = "named by the model" if picked else "the model said nobody matches"
        return RerankResult(scores, selected,
                            tuple(why if (k or not picked) else "not named" for k in selected))


def fallback(n: int, why: str) -> RerankResult:
    """The previous ranking: scores falling with the input order, everyone kept."""
    scores = np.linspace(1.0, 0.5, n, dtype=np.float32) if n > 1 else np.ones(n, np.float32)
    return RerankResult(scores, np.ones(n, bool),
                        tuple(f"mllm fallback ({why}): previous rank {i + 1}" for i in range(n)))
