"""Benchmark: what detecting only every n-th frame saves, and what it costs in tracking.

Each clip is tracked by the same pipeline as `refind eval mot` (the default config, motion gate
on) with `tracker.detect_every` 1, 2 and 3: on the frames between detections the tracker
predicts each box by its motion model. Reported per setting: the share of frames the detector
ran on, frames/s, and how far the tracks are from detecting every frame (IDF1, MOTA and HOTA of
one scored against the other). On PETS09-S2L1 each is also scored against the ground truth, on
the whole clip, on frames 1-400 (development) and on frames 401-795 (held out from every tuned
choice). The settings are one run each, one after another, on whatever load the machine has:
compare frames/s within one run of this script only.

    python bench/detect_every.py [--out DIR] [--every 1,2,3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from motion_gate import INTEL, PETS, scores  # noqa: E402  (bench/motion_gate.py)
from report import code_version, write_result  # noqa: E402  (bench/report.py)

from refind.config import RefindConfig  # noqa: E402
from refind.evaluation.mot import track_video  # noqa: E402
from refind.evaluation.mot_metrics import load_mot  # noqa: E402


def clip(video: Path, every: list[int], gt: Path | None = None, gt_scale: float = 1.0) -> dict:
    base = RefindConfig()
    runs = {}
    for n in every:
        cfg = base.model_copy(update={"tracker": base.tracker.model_copy(
            update={"detect_every": n})})
        print(f"{video.name}: detect_every {n}", flush=True)
        runs[n] = track_video(video, cfg, progress=False)
    reference, _ = runs[min(every)]
    frames = int(runs[min(every)][1]["frames"])
    truth = load_mot(gt, scale=gt_scale, drop_flag0=True).frames(1, frames) if gt else None
    out = {}
    for n, (hyp, timing) in runs.items():
        row = {
            "detected_fraction": round(timing["detected_fraction"], 4),
            "fps": round(timing["fps"], 1),
            f"vs_detect_every_{min(every)}": scores(reference, hyp, 1, frames),
        }
        if truth is not None:
            row["vs_gt"] = {"frames_1_795": scores(truth, hyp, 1, frames),
                            "frames_1_400": scores(truth, hyp, 1, 400),
                            "frames_401_795": scores(truth, hyp, 401, frames)}
        out[f"detect_every_{n}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    parser.add_argument("--every", default="1,2,3", help="settings of tracker.detect_every")
    args = parser.parse_args()
    every = sorted({int(n) for n in args.every.split(",")})
    result = {
        "benchmark": "detect_every",
        "config": "the embedded default (person-detection-0202, motion gate on), "
                  "tracker.detect_every varied",
        "pets09_s2l1": clip(PETS / "vtest.avi", every, PETS / "gt.txt", 0.625),
        "intel_one_by_one": clip(INTEL, every),
        "target": "IDF1 within 0.01 of detecting every frame",
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "commit": code_version(),
    }
    write_result(args.out, "detect_every", result)


if __name__ == "__main__":
    main()
