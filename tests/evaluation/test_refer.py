"""HumanRef metrics on hand-made tables, annotation checks, and `refind eval refer` bad input."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from refind.app.cli import main
from refind.evaluation.refer import (
    IOU_THRESHOLDS,
    KeepAll,
    expression_metrics,
    read_annotations,
    summarise,
)

A, B, C = [0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]


@pytest.mark.parametrize(
    ("targets", "preds", "recall", "precision", "density_f1"),
    [
        ([A], [A], 1.0, 1.0, 1.0),  # perfect
        ([A, B], [B, A], 1.0, 1.0, 1.0),  # perfect, multi-target, any order
        ([A], [], 0.0, 0.0, 0.0),  # nothing predicted
        ([A], [C], 0.0, 0.0, 0.0),  # wrong person
        ([A, B], [A], 0.5, 1.0, 2 / 3),  # half the targets: F1 2/3, no density penalty
        ([A], [A, B, C], 1.0, 1 / 3, 0.5 / 3),  # F1 0.5 x min(1, 1/3)
        ([A, B], [A, C, B, [60, 0, 70, 10]], 1.0, 0.5, 2 / 3 * 0.5),  # F1 2/3 x 2/4
        ([A], [[0, 0, 10, 8]], 0.7, 0.7, 0.7),  # IoU 0.8: matched at 0.50..0.80, 7 of 10
        ([A], [[0, 0, 10, 8], A], 1.0, 0.5, 2 / 3 * 0.5),  # the exact box is taken first
    ],
)
def test_expression_metrics(targets, preds, recall, precision, density_f1) -> None:
    m = expression_metrics(targets, preds)
    assert m["recall"] == pytest.approx(recall)
    assert m["precision"] == pytest.approx(precision)
    assert m["density_f1"] == pytest.approx(density_f1)


def test_thresholds_are_humanrefs() -> None:
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_summarise_averages_per_expression_and_scores_rejection_apart() -> None:
    pairs = [
        ([A], [A]),  # 1, 1, 1
        ([A, B], [A]),  # .5, 1, 2/3
        ([], []),  # rejected correctly
        ([], [C]),  # should have rejected
        ([], []),
    ]
    m = summarise(pairs)
    assert m["recall"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(1.0)
    assert m["density_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["rejection_rate"] == pytest.approx(2 / 3)
    assert (m["n_expressions"], m["n_no_target"]) == (5, 3)


def test_keep_all_is_the_no_rerank_reference() -> None:
    r = KeepAll()("anyone", [])
    assert r.selected.shape == (0,)


def _write(tmp_path, lines: list[str]):
    img = tmp_path / "f.png"
    cv2.imwrite(str(img), np.zeros((40, 60, 3), np.uint8))
    path = tmp_path / "ann.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"image": "f.png", "boxes": [A, B], "expression": "the left one",
                   "targets": [0], "kind": "position"})


def test_read_annotations_resolves_relative_images(tmp_path) -> None:
    items = read_annotations(_write(tmp_path, [GOOD]))
    assert items[0].image == tmp_path / "f.png" and items[0].targets == (0,)
    assert items[0].boxes.shape == (2, 4) and items[0].extra == {"kind": "position"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"ann\.jsonl:2: not a valid annotation line"),
        (json.dumps({"image": "f.png", "boxes": [A], "expression": "x"}), r":2: not a valid"),
        (json.dumps({"image": "f.png", "boxes": [A], "expression": "x", "targets": [3]}),
         r":2: target indices \[3\] out of range for 1 boxes"),
        (json.dumps({"image": "f.png", "boxes": [[5, 5, 1, 1]], "expression": "x",
                     "targets": []}), r":2: boxes must be"),
        (json.dumps({"image": "gone.png", "boxes": [A], "expression": "x", "targets": []}),
         r":2: image not found"),
    ],
)
def test_bad_annotations_name_the_line(tmp_path, line: str, message: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_annotations(_write(tmp_path, [GOOD, line]))


@pytest.mark.parametrize(
    "line",
    [
        "{not json",
        json.dumps({"image": "f.png", "boxes": [A], "expression": "x", "targets": [1]}),
        json.dumps({"image": "missing.png", "boxes": [A], "expression": "x", "targets": [0]}),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, capsys, line: str) -> None:
    path = _write(tmp_path, [GOOD, line])
    assert main(["eval", "refer", "--annotations", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refind: error:") and ":2:" in err


def test_cli_missing_file_exits_2(tmp_path, capsys) -> None:
    assert main(["eval", "refer", "--annotations", str(tmp_path / "none.jsonl")]) == 2
    assert "annotations not found" in capsys.readouterr().err


def test_calibration_helpers() -> None:
    """ECE of perfectly calibrated scores is ~0; Platt scaling fixes an over-confident one."""
    from refind.evaluation.refer import expected_calibration_error, fit_platt, is_target
    from refind.models.referring import platt

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 4000)
    y = (rng.uniform(0, 1, 4000) < p).astype(int)
    assert expected_calibration_error(list(zip(p, y, strict=True))) < 0.03
    p = np.clip(p, 0.01, 0.99)
    over = 1 / (1 + np.exp(-3 * np.log(p / (1 - p))))  # too sure both ways
    pairs = list(zip(over, y, strict=True))
    ab = fit_platt(pairs)
    assert ab[0] == pytest.approx(1 / 3, abs=0.05) and ab[1] == pytest.approx(0, abs=0.1)
    fixed = list(zip(platt(over, ab), y, strict=True))
    assert expected_calibration_error(fixed) < expected_calibration_error(pairs) - 0.1
    assert np.isnan(expected_calibration_error([]))
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    assert is_target(boxes, boxes[1:]).tolist() == [0, 1]
    assert is_target(boxes, np.zeros((0, 4))).tolist() == [0, 0]
