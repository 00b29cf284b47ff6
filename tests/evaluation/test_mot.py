from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refind.evaluation.mot_metrics import MotBoxes, load_mot, mot_metrics, save_mot

pytest.importorskip("trackeval", reason="MOT metrics need the trackeval package (extra 'eval')")

PETS = Path(__file__).resolve().parents[2] / "../shared/data/pets09-s2l1"


def walk(track_id: int, frames: range, x0: float, step: float, y: float = 50.0) -> list[list]:
    """Rows (frame, id, x1, y1, x2, y2) of one 20 x 50 box moving ``step`` px per frame."""
    return [[f, track_id, x0 + step * f, y, x0 + step * f + 20, y + 50] for f in frames]


def boxes(rows: list[list]) -> MotBoxes:
    a = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return MotBoxes(a[:, 0], a[:, 1], a[:, 2:])


GT = walk(1, range(1, 11), 0, 5) + walk(2, range(1, 11), 200, -5)


def relabel(rows: list[list], mapping: dict[tuple[int, int], int]) -> list[list]:
    """Copy of ``rows`` with the id of (frame, id) replaced where ``mapping`` says."""
    return [[r[0], mapping.get((r[0], r[1]), r[1]), *r[2:]] for r in rows]


@pytest.mark.parametrize(
    ("hyp", "expected"),
    [
        (GT, {"MOTA": 1.0, "IDF1": 1.0, "HOTA": 1.0, "IDSW": 0, "FP": 0, "FN": 0}),
        (  # track ids are arbitrary labels
            relabel(GT, {(f, 1): 7 for f in range(1, 11)} | {(f, 2): 3 for f in range(1, 11)}),
            {"MOTA": 1.0, "IDF1": 1.0, "HOTA": 1.0, "IDSW": 0},
        ),
        (  # person 1 gets a new id from frame 6 on: one switch, 5 of 20 boxes wrongly labelled
            relabel(GT, {(f, 1): 9 for f in range(6, 11)}),
            {"IDSW": 1, "MOTA": 1 - 1 / 20, "IDF1": 15 / 20, "FP": 0, "FN": 0},
        ),
        (  # person 2 never found
            walk(1, range(1, 11), 0, 5),
            {"FN": 10, "FP": 0, "MOTA": 0.5, "recall": 0.5, "precision": 1.0},
        ),
        ([], {"MOTA": 0.0, "IDF1": 0.0, "HOTA": 0.0, "FN": 20, "FP": 0}),  # nothing tracked
        (  # a ghost box in every frame
            GT + walk(3, range(1, 11), 400, 0),
            {"FP": 10, "FN": 0, "MOTA": 0.5, "precision": 2 / 3},
        ),
    ],
)
def test_metrics_on_hand_made_sequences(hyp: list[list], expected: dict[str, float]) -> None:
    got = mot_metrics(boxes(GT), boxes(hyp))
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_metrics_report_counts() -> None:
    got = mot_metrics(boxes(GT), boxes(GT), num_frames=12)
    assert (got["gt_dets"], got["hyp_dets"], got["gt_ids"], got["hyp_ids"]) == (20, 20, 2, 2)
    assert got["num_frames"] == 12
    assert got["DetA"] == pytest.approx(1.0) and got["AssA"] == pytest.approx(1.0)


def test_a_box_below_half_iou_is_a_miss_and_a_false_positive() -> None:
    shifted = [[r[0], r[1], r[2] + 12, r[3], r[4] + 12, r[5]] for r in GT]  # IoU 8/32
    got = mot_metrics(boxes(GT), boxes(shifted))
    assert (got["FP"], got["FN"], got["TP"]) == (20, 20, 0)


def test_repeated_id_in_a_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="repeated id in frame 1"):
        mot_metrics(boxes(GT), boxes([*GT, [1, 1, 0, 0, 10, 10]]))


MOT15_TEXT = """\
1,1,100,50,20,40,1,-1,-1,-1
1,2,300,60,10,30,0,-1,-1,-1
2,1,104,50,20,40,1,-1,-1,-1
"""


@pytest.mark.parametrize(
    ("scale", "drop_flag0", "ids", "first_xyxy"),
    [
        (1.0, True, [1, 1], [100, 50, 120, 90]),
        (0.5, True, [1, 1], [50, 25, 60, 45]),
        (1.0, False, [1, 2, 1], [100, 50, 120, 90]),
    ],
)
def test_load_mot(
    tmp_path: Path, scale: float, drop_flag0: bool, ids: list[int], first_xyxy: list[float]
) -> None:
    path = tmp_path / "gt.txt"
    path.write_text(MOT15_TEXT)
    got = load_mot(path, scale=scale, drop_flag0=drop_flag0)
    assert got.track_id.tolist() == ids
    np.testing.assert_allclose(got.xyxy[0], first_xyxy)


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    original = boxes(GT)
    save_mot(tmp_path / "hyp.txt", original)
    again = load_mot(tmp_path / "hyp.txt", drop_flag0=False)
    np.testing.assert_array_equal(again.frame, original.frame)
    np.testing.assert_array_equal(again.track_id, original.track_id)
    np.testing.assert_allclose(again.xyxy, original.xyxy, atol=0.01)


def test_frames_selects_an_inclusive_range() -> None:
    assert sorted(set(boxes(GT).frames(3, 5).frame.tolist())) == [3, 4, 5]


def test_a_window_is_scored_as_a_sequence_of_its_own() -> None:
    part = boxes(GT).window(3, 5)
    assert sorted(set(part.frame.tolist())) == [1, 2, 3]
    assert len(part) == len(boxes(GT).frames(3, 5))
    # the same hypothesis against the same truth scores the same, whatever the window
    perfect = mot_metrics(part, part, num_frames=3)
    assert perfect["IDF1"] == perfect["MOTA"] == 1.0 and perfect["num_frames"] == 3


@pytest.mark.slow
def test_eval_mot_scores_only_the_frames_asked_for() -> None:
    """Tracked from the start, scored on frames 101-150 only (the held-out half is judged this
    way); the motion gate's share of frames detected comes with the result."""
    if not (PETS / "vtest.avi").is_file():
        pytest.skip(f"PETS09-S2L1 data not found at {PETS.resolve()}")
    from refind.config import RefindConfig
    from refind.evaluation.mot import evaluate_mot

    result = evaluate_mot(PETS / "vtest.avi", PETS / "gt.txt", 0.625, RefindConfig(),
                          progress=False, frames=(101, 150))
    assert result["frames"] == 150 and result["num_frames"] == 50
    assert result["scored_frames"] == [101, 150]
    assert 0.5 < result["MOTA"] <= 1.0 and 0.5 < result["IDF1"] <= 1.0
    assert 0.9 <= result["detected_fraction"] <= 1.0  # people walk in every part of PETS


@pytest.mark.slow
def test_pets_tracking_quality() -> None:
    """The default (person-detection-0202 fitted to the frame's aspect) meets issue 19's MOTA
    0.80 on the whole clip (0.822 measured on 2026-12-07; IDF1 0.861 against its 0.85). This
    guards the measured level, with IDF1's margin for the 0.03 it moves between CPUs."""
    if not (PETS / "vtest.avi").is_file() or not (PETS / "gt.txt").is_file():
        pytest.skip(f"PETS09-S2L1 data not found at {PETS.resolve()} (see ../shared/data/README)")
    from refind.config import RefindConfig
    from refind.evaluation.mot import evaluate_mot
    from refind.models.store import ModelStoreError

    try:
        result = evaluate_mot(
            PETS / "vtest.avi", PETS / "gt.txt", 0.625, RefindConfig(), progress=False
        )
    except ModelStoreError as err:  # model files absent and no download possible
        pytest.skip(f"models unavailable: {err}")
    assert result["frames"] == 795
    assert result["IDF1"] >= 0.82, result
    assert result["MOTA"] >= 0.80, result
    assert result["IDSW"] <= 30, result
