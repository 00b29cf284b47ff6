"""End to end through the command line on real footage with real models.

Ingests PETS09-S2L1, then searches with a ground-truth crop of one person and checks the best
tracklet is that person; bad inputs get one clear error and exit status 2; a kill -9 during an
ingest leaves a gallery that opens, searches and keeps every fully written batch.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from refind.app.cli import main
from tests.conftest import REPO, light_config, need_models, need_pets, pets_gt_boxes

pytestmark = pytest.mark.slow


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_models()
    need_pets()
    data = tmp_path_factory.mktemp("refind")
    video = REPO / "../shared/data/pets09-s2l1/vtest.avi"
    # the queries come from frame 400; `refind demo`'s test ingests the whole clip
    argv = ["ingest", str(video), "--camera", "pets", "--data-dir", str(data), "--max-frames",
            "450", "--json"]
    assert main(argv) == 0
    return data


def _query_crop(tmp: Path, gt_frame: int, identity: int) -> Path:
    import av

    with av.open(str(REPO / "../shared/data/pets09-s2l1/vtest.avi")) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == gt_frame - 1:
                image = f.to_ndarray(format="bgr24")
                break
    x1, y1, x2, y2 = (round(v) for v in pets_gt_boxes(gt_frame)[identity])
    path = tmp / f"query_{identity}.jpg"
    cv2.imwrite(str(path), image[y1:y2, x1:x2])
    return path


def test_ingest_then_find_person_by_photo(
    ingested: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    gt_frame = 400
    boxes = pets_gt_boxes(gt_frame)
    # the tallest person not overlapping anyone: a clean query photo
    identity = max(boxes, key=lambda i: boxes[i][3] - boxes[i][1])
    query = _query_crop(tmp_path, gt_frame, identity)
    code = main(["search", "--image", str(query), "--k", "5", "--data-dir", str(ingested), "--json"])
    assert code == 0
    hits = json.loads(capsys.readouterr().out)
    assert 1 <= len(hits) <= 5
    for key in ("track_id", "camera", "score", "start_ts", "end_ts", "thumbnail"):
        assert key in hits[0]
    assert all(isinstance(h["global_id"], int) for h in hits)  # ingest linked every track
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all(Path(h["thumbnail"]).is_file() for h in hits)
    top = hits[0]
    truth = pets_gt_boxes(top["best_frame_index"] + 1).get(identity)
    assert truth is not None, f"identity {identity} is not in frame {top['best_frame_index']}"
    assert _iou(truth, np.array(top["best_xyxy"])) >= 0.5, "top hit is another person"


def test_camera_filter_inside_search(
    ingested: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query = _query_crop(tmp_path, 400, next(iter(pets_gt_boxes(400))))
    capsys.readouterr()
    args = ["search", "--image", str(query), "--data-dir", str(ingested), "--json"]
    assert main([*args, "--camera", "elsewhere"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main([*args, "--camera", "pets", "--since", "0", "--until", "10"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits and all(h["start_ts"] <= 10 for h in hits)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "/nonexistent.avi", "--camera", "c"], "video file not found"),
        (["ingest", "rtsp://127.0.0.1:9/none", "--camera", "c"], "cannot open video source"),
        (["search", "--image", "README.md"], "not an image"),
        (["search", "--image", "/nonexistent.jpg"], "query image not found"),
        (["search", "--image", "{query}", "--box", "5,5,5,9"], "zero or negative size"),
        (["search", "--image", "{query}", "--box", "900,900,990,990"], "empty inside"),
        (["search", "--image", "{query}", "--since", "9", "--until", "1"], "wrong way round"),
        (["ingest", "x.avi", "--camera", "c", "--config", "{typo}"], "unknown key"),
    ],
)
def test_bad_input_is_one_clear_error(
    ingested: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
    message: str,
) -> None:
    query = _query_crop(tmp_path, 400, next(iter(pets_gt_boxes(400))))
    typo = tmp_path / "typo.yaml"
    typo.write_text("detector:\n  conf_treshold: 0.3\n")
    argv = [a.format(query=query, typo=typo) for a in argv]
    if argv[0] == "search":
        argv += ["--data-dir", str(ingested)]
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse refuses malformed arguments itself
            code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert message in err


def _vector_rows(data: Path) -> int:
    with sqlite3.connect(data / "gallery" / "metadata.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM crops").fetchone()[0]


def test_kill_during_ingest_leaves_a_usable_gallery(
    ingested: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "g"
    video = str(REPO / "../shared/data/pets09-s2l1/vtest.avi")
    base = ["--data-dir", str(data), "--json"]
    # durability, not detection: the tests' lighter detector
    ingest = ["--config", str(light_config(tmp_path)), *base]
    assert main(["ingest", video, "--camera", "a", "--max-frames", "200", *ingest]) == 0
    before = _vector_rows(data)
    assert before > 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "refind.app.cli", "ingest", video, "--camera", "b", *ingest],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _vector_rows(data) == before and time.monotonic() < deadline:  # a batch was written
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    after = _vector_rows(data)
    assert after > before, "no batch was written before the kill"
    query = _query_crop(tmp_path, 400, next(iter(pets_gt_boxes(400))))
    capsys.readouterr()
    assert main(["search", "--image", str(query), "--k", "50", *base]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert {h["camera"] for h in hits} <= {"a", "b"} and hits
    from refind.indexer.config import GalleryConfig
    from refind.indexer.gallery_store import GalleryStore

    store_dir = data / "gallery"
    model_id = next(iter({h for h in _model_ids(store_dir)}))
    with GalleryStore(store_dir, GalleryConfig(), model_id, 256, read_only=True) as g:
        assert len(g) == after  # the FAISS view caught up with every committed row


def _model_ids(store_dir: Path) -> list[str]:
    with sqlite3.connect(store_dir / "metadata.sqlite3") as db:
        return [r[0] for r in db.execute("SELECT DISTINCT model_id FROM crops")]


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "refind"  # the venv running the tests
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "ingest" in out.stdout and "search" in out.stdout
