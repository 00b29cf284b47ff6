"""Benchmark: what the tracker's appearance costs, and what cheaper ways of getting it would lose.

The tracker embeds a few detections per frame (`streaming/tracker.py`: ambiguous ones, a stale
appearance refreshed every `appearance_refresh_s`, re-identification of lost tracks). Measured on
PETS09-S2L1, the clip detected once and tracked again per setting (as `bench/tracker_grid.py`):

- how many crops are embedded, by why;
- one ReID call's cost per crop at batch sizes 1-16 (how much batching could save);
- tracking quality with the appearance refreshed every 1, 2 and 3 s;
- tracking quality with each OMZ ReID model as the tracker's appearance (the gallery keeps 0277),
  and each model's cost for one crop.

Quality on frames 1-400 (where the tracker's settings were chosen) and 401-795 (held out).

    python bench/appearance_cost.py [--out DIR] [--models NAME ...] [--no-refresh]

``--models`` names the tracker's models to compare (an INT8 copy made by ``refind quantize`` is
``person-reidentification-retail-0277-int8``); ``--no-refresh`` skips the refresh settings.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import code_version, write_result  # noqa: E402  (bench/report.py)
from tracker_grid import (  # noqa: E402  (bench/tracker_grid.py)
    DATA,
    HELD_OUT,
    TUNE,
    RememberingEmbedder,
    detect_all,
    score,
)

from refind.config import RefindConfig  # noqa: E402
from refind.evaluation.mot_metrics import MotBoxes, load_mot  # noqa: E402
from refind.models.config import OpenVinoReidConfig  # noqa: E402
from refind.models.registry import build_detector, build_embedder  # noqa: E402
from refind.models.store import ModelStore  # noqa: E402
from refind.streaming.pipeline import CameraPipeline  # noqa: E402
from refind.streaming.sources import VideoSource  # noqa: E402

REID_MODELS = ("person-reidentification-retail-0277", "person-reidentification-retail-0286",
               "person-reidentification-retail-0287", "person-reidentification-retail-0288")


def ms_per_crop(embedder, crops: list[np.ndarray], batch: int, seconds: float = 2.0) -> float:
    embedder(crops[:batch])  # warm-up
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        embedder(crops[:batch])
        n += batch
    return round(1000 * (time.perf_counter() - t0) / n, 2)


def tracked(frames, dets, tracker, cfg, embedder) -> tuple[MotBoxes, dict[str, int]]:
    pipe = CameraPipeline("pets", tracker, cfg.crops, embedder=embedder, select_crops=False)
    rows = []
    for frame, d in zip(frames, dets, strict=True):
        t = pipe.process(frame, d).tracks
        rows.append((np.full(len(t), frame.index + 1, np.int64), t.track_id, t.xyxy))
    hyp = MotBoxes(*(np.concatenate([r[k] for r in rows]) for k in range(3)))
    return hyp, pipe.appearance_asked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    parser.add_argument("--models", nargs="+", default=list(REID_MODELS),
                        help="the tracker's ReID models to compare (default: the four OMZ ones)")
    parser.add_argument("--no-refresh", action="store_true",
                        help="skip tracking with the appearance refreshed every 1, 2 and 3 s")
    args = parser.parse_args()
    cfg = RefindConfig()
    store = ModelStore.from_config(cfg.models)
    frames = list(VideoSource(DATA / "vtest.avi", camera="pets"))
    truth = load_mot(DATA / "gt.txt", scale=0.625, drop_flag0=True).frames(1, len(frames))
    dets, _ = detect_all(build_detector(cfg.detector, store), [f.image for f in frames],
                         cfg.detector.batch_size)
    # real person crops of the clip, for timing
    crops = [f.image[int(b[1]):int(b[3]), int(b[0]):int(b[2])]
             for f, d in zip(frames[::40], dets[::40], strict=True) for b in d.xyxy[:2]
             if b[3] - b[1] > 20 and b[2] - b[0] > 8][:16]

    def quality(hyp: MotBoxes) -> dict[str, dict[str, float]]:
        return {"frames_1_400": score(truth, hyp, TUNE),
                "frames_401_795": score(truth, hyp, HELD_OUT)}

    gallery = build_embedder(cfg.embedder, store)
    result: dict[str, object] = {
        "benchmark": "appearance_cost", "video": str(DATA / "vtest.avi"),
        "ms_per_crop_by_batch": {b: ms_per_crop(gallery, crops, b) for b in (1, 2, 4, 8, 16)},
    }
    remembered = RememberingEmbedder(gallery)
    refresh = {}
    for seconds in () if args.no_refresh else (1.0, 2.0, 3.0):
        tracker = cfg.tracker.model_copy(update={"appearance_refresh_s": seconds})
        hyp, asked = tracked(frames, dets, tracker, cfg, remembered)
        refresh[str(seconds)] = {"asked": asked, "crops_per_frame": round(
            sum(asked.values()) / len(frames), 3)} | quality(hyp)
        print("refresh", seconds, refresh[str(seconds)], flush=True)
    if refresh:
        result["refresh_s"] = refresh
    models = {}
    for name in args.models:
        embedder = build_embedder(OpenVinoReidConfig(model=name), store)
        hyp, _ = tracked(frames, dets, cfg.tracker, cfg, RememberingEmbedder(embedder))
        models[name] = {"ms_per_crop_single": ms_per_crop(embedder, crops, 1)} | quality(hyp)
        print(name, models[name], flush=True)
    result["tracker_reid_model"] = models
    result |= {"cpu_count": os.cpu_count(),
               "machine": platform.processor() or platform.machine(), "commit": code_version()}
    write_result(args.out, "appearance_cost", result)


if __name__ == "__main__":
    main()
