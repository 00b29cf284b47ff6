"""Multi-camera evaluation on real footage: PETS cut into two cameras, the Intel clip beside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refind.app.cli import main
from refind.app.identity_commands import parse_frames, parse_gts
from refind.evaluation.mot_metrics import MotBoxes
from refind.evaluation.mtmc import region_truth
from tests.conftest import LIGHT_DETECTOR, PETS_GT, PETS_VIDEO, need_pets

INTEL = Path(PETS_VIDEO).parents[1] / "intel-sample-videos" / "one-by-one-person-detection.mp4"


def test_region_truth_keeps_boxes_mostly_inside_cut_and_shifted() -> None:
    gt = MotBoxes(np.array([1, 1, 1]), np.array([1, 2, 3]),
                  np.array([[10, 10, 30, 50], [90, 10, 130, 50], [150, 0, 170, 40.0]]))
    # region: the right half of a 200 x 100 frame (x from 100)
    cut = region_truth(gt, (0.5, 0.0, 1.0, 1.0), (200, 100))
    assert cut.track_id.tolist() == [2, 3]  # 1 is outside; 2 is 75 % inside
    assert cut.xyxy.tolist() == [[0, 10, 30, 50], [50, 0, 70, 40]]
    assert region_truth(gt, None, (200, 100)) is gt


@pytest.mark.parametrize("text, expected", [("401:795", (401, 795)), (None, None)])
def test_parse_frames(text, expected) -> None:
    assert parse_frames(text) == expected


@pytest.mark.parametrize("text", ["400", "a:b", "9:3", "0:5"])
def test_parse_frames_refuses(text) -> None:
    with pytest.raises(ValueError, match="--frames"):
        parse_frames(text)


def test_parse_gts(tmp_path: Path) -> None:
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,0,0,1,1,1\n")
    assert parse_gts([f"left={gt}"]) == {"left": gt}
    with pytest.raises(ValueError, match=r"CAMERA=GT\.txt"):
        parse_gts(["left"])
    with pytest.raises(FileNotFoundError, match="not found"):
        parse_gts([f"left={tmp_path / 'none.txt'}"])


@pytest.mark.integration
def test_eval_mtmc_and_watch_on_real_cameras(tmp_path: Path, capsys) -> None:
    """Two cameras cut from PETS and the Intel clip, 250 frames each: global ids score against
    the shared ground truth, and no PETS person is merged with an Intel one."""
    need_pets()
    if not INTEL.is_file():
        pytest.skip(f"{INTEL} is absent (../shared/data/intel-sample-videos)")
    cfg = tmp_path / "cams.yaml"
    cfg.write_text(f"""
ingest: {{max_frames: 250}}
detector: {json.dumps(LIGHT_DETECTOR)}
cameras:
  - {{name: left, url: "{PETS_VIDEO}", region: [0.0, 0.0, 0.47, 1.0], sample_fps: null}}
  - {{name: right, url: "{PETS_VIDEO}", region: [0.53, 0.0, 1.0, 1.0], sample_fps: null}}
  - {{name: intel, url: "{INTEL}", sample_fps: null}}
""")
    gts = ["--gt", f"left={PETS_GT}", "--gt", f"right={PETS_GT}"]
    assert main(["eval", "mtmc", "--config", str(cfg), *gts, "--gt-scale", "0.625",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["per_camera_IDF1"]) == {"left", "right"}
    assert 0.4 < r["IDF1"] <= 1.0 and r["IDP"] > 0.4 and r["IDR"] > 0.4
    assert r["false_merges_no_gt"] == 0
    assert r["people"] >= 5 and r["tracklets"] > r["people"]
    assert r["linker"]["updates"] > r["tracklets"] and r["linker"]["link_ms_per_update"] < 50
    assert r["camera_frames"] == {"left": 250, "right": 250, "intel": 250}

    assert main(["eval", "watch", "--config", str(cfg), *gts, "--gt-scale", "0.625",
                 "--threshold", "0.3", "--json"]) == 0
    w = json.loads(capsys.readouterr().out)
    for part in ("development", "held_out"):
        assert w[part]["watches"] >= 1 and w[part]["checks"] > 0, w
        assert 0.0 <= w[part]["ece"] < 0.5
    assert any(w[p]["alerts"] for p in ("development", "held_out"))
