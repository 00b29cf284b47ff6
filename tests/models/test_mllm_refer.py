"""MLLM re-ranker: answer parsing, and a tiny random Qwen2.5-VL run end to end, offline."""

from __future__ import annotations

import numpy as np
import pytest

from refind.models.base import Region
from refind.models.mllm_refer import MllmReranker, contact_sheet, fallback, parse_indices


@pytest.mark.parametrize(
    ("answer", "n", "expected"),
    [
        ("<obj1><obj3>", 5, [1, 3]),
        ("The matching people are <obj0> and <obj2>.", 3, [0, 2]),
        ("[2] [0]", 3, [0, 2]),
        ("1, 3", 4, [1, 3]),
        ("1 and 2", 4, [1, 2]),
        ("2", 4, [2]),
        ("None", 4, []),
        ("No one matches the description.", 4, []),
        ("<obj7>", 3, None),  # only out-of-range indices
        ("the person at (12, 40, 50, 90)", 4, None),  # numbers that are not a list of indices
        ("banana", 4, None),
        ("", 4, None),
        ("<obj1><obj1>", 3, [1]),
    ],
)
def test_parse_indices(answer: str, n: int, expected: list[int] | None) -> None:
    assert parse_indices(answer, n) == expected


def test_contact_sheet_boxes_hold_each_crop() -> None:
    crops = [np.full((80, 30, 3), 10 * i, np.uint8) for i in range(10)]
    sheet, boxes = contact_sheet(crops, cell_h=56, per_row=4)
    assert sheet.shape == (3 * 56, 4 * 28, 3)
    assert len(boxes) == 10 and boxes[5][0] == 28 and boxes[5][1] == 56
    assert all(x2 - x1 <= 28 and y2 - y1 <= 56 for x1, y1, x2, y2 in boxes)


def test_fallback_keeps_previous_order() -> None:
    r = fallback(3, "timed out")
    assert r.selected.all() and list(np.argsort(-r.scores)) == [0, 1, 2]
    assert all("timed out" in why for why in r.reasons)


def _tiny_qwen(path) -> None:
    """A randomly initialised Qwen2.5-VL (2 text layers, 1 vision block) with a word-level
    tokenizer, saved like a real model directory."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    torch = pytest.importorskip("torch")
    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    words = [*specials, *(str(d) for d in range(10)), ",", ".", "(", ")", "[", "]", "none", "and",
             "the", "person"]
    words += [f"<obj{i}>" for i in range(8)]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>",
        additional_special_tokens=specials[2:],
    )
    fast.add_tokens([f"<obj{i}>" for i in range(8)])
    cfg = transformers.Qwen2_5_VLConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 2048,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": 32, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "fullatt_block_indexes": [0], "window_size": 56},
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"], eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    transformers.Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 32).save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen25vl")
    _tiny_qwen(path)
    return path


def _regions(n: int) -> list[Region]:
    rng = np.random.default_rng(0)
    return [Region(rng.integers(0, 255, (64, 28, 3), dtype=np.uint8),
                   (10.0 * i, 5.0, 10.0 * i + 20, 60.0), (480, 360), 0) for i in range(n)]


def test_tiny_qwen_runs_end_to_end(tiny_dir) -> None:
    rr = MllmReranker(tiny_dir, timeout_s=60, max_new_tokens=6)
    text, seconds = rr.answer("the person on the left", _regions(3))
    assert isinstance(text, str) and seconds < 60
    result = rr("the person on the left", _regions(3))
    assert result.scores.shape == (3,) and result.selected.shape == (3,)
    parsed = parse_indices(text, 3)
    if parsed is None:  # random weights: garbage is the expected answer, and it must fall back
        assert result.selected.all() and "not understood" in result.reasons[0]
    else:
        assert sorted(np.flatnonzero(result.selected).tolist()) == (parsed or [])


def test_timeout_falls_back(tiny_dir) -> None:
    rr = MllmReranker(tiny_dir, timeout_s=1e-6, max_new_tokens=32)
    result = rr("the person on the left", _regions(2))
    assert result.selected.all() and "timed out" in result.reasons[0]


def test_model_error_falls_back(tiny_dir, monkeypatch) -> None:
    rr = MllmReranker(tiny_dir, timeout_s=60, max_new_tokens=4)

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(rr.model, "generate", boom)
    result = rr("anyone", _regions(2))
    assert result.selected.all() and "model error RuntimeError" in result.reasons[0]


def test_missing_model_dir_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        MllmReranker(tmp_path)
