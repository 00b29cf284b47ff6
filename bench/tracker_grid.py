"""Tracker settings per detector, chosen on PETS09-S2L1 frames 1-400 and judged on 401-795.

Each detector's scores are calibrated differently, so ByteTrack's thresholds are chosen for each
one before detectors are compared. Per detector the clip is detected once (the time of that pass
gives the detector's frames/s); then every combination of the grid below tracks frames 1-400
with the same ``CameraPipeline`` as ingest and `refind eval mot` (lazy appearance on; a crop is
embedded once and remembered, which changes no result, only the time). The combination with the
highest MOTA + IDF1 on frames 1-400 is kept; it then tracks the whole clip, scored on 401-795
(held out: never used to choose) and on 1-795. The config's defaults are scored the same way
beside it.

``--stage appearance`` searches the tracker's appearance settings instead (how much the ReID
distance weighs in association, how far a lost track may be re-identified, how long it is kept),
with ByteTrack's thresholds at the config's defaults, chosen and judged the same way.

    python bench/tracker_grid.py [--stage bytetrack|appearance]
                                 [--detectors yolox_nano person-detection-0202 ...] [--out DIR]
    python bench/tracker_grid.py --plot RESULT.json PNG   # an appearance stage's IDF1 curves

Writes ``tracker_grid-<date>.json`` (``tracker_appearance-<date>.json`` for the appearance stage)
under ``--out`` (default bench/results) and prints it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from report import code_version, write_result  # noqa: E402  (bench/report.py)

from refind.config import RefindConfig  # noqa: E402
from refind.evaluation.mot_metrics import MotBoxes, load_mot, mot_metrics  # noqa: E402
from refind.models.config import OmzPersonDetectorConfig, YoloxDetectorConfig  # noqa: E402
from refind.models.registry import build_detector, build_embedder  # noqa: E402
from refind.models.store import ModelStore  # noqa: E402
from refind.streaming.config import TrackerConfig  # noqa: E402
from refind.streaming.pipeline import CameraPipeline  # noqa: E402
from refind.streaming.records import Detections, Embeddings, Frame  # noqa: E402
from refind.streaming.sources import VideoSource  # noqa: E402

DATA = REPO / "../shared/data/pets09-s2l1"
DETECTORS = ("yolox_nano", "person-detection-0202", "person-detection-0200",
             "person-detection-retail-0013")
TUNE, HELD_OUT, WHOLE = (1, 400), (401, 795), (1, 795)
GRID = {
    "high_threshold": (0.4, 0.5, 0.6, 0.7),
    "new_track_offset": (0.0, 0.1),  # new_track_threshold = high_threshold + this
    "low_threshold": (0.1, 0.2),
    "min_hits": (2, 3),
    "match_iou": (0.2, 0.3),
}
APPEARANCE_GRID = {
    "appearance_weight": (0.5, 0.75, 0.9, 1.0),
    "reid_max_distance": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "max_lost_s": (3.0, 5.0),
}


class RememberingEmbedder:
    """The configured ReID embedder, each distinct crop embedded once (keyed by its pixels)."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self.model_id = embedder.model_id
        self._seen: dict[tuple[tuple[int, ...], int], np.ndarray] = {}

    def __call__(self, crops: Sequence[np.ndarray]) -> Embeddings:
        keys = [(c.shape, hash(np.ascontiguousarray(c).tobytes())) for c in crops]
        new = [i for i, k in enumerate(keys) if k not in self._seen]
        if new:
            vectors = self.embedder([crops[i] for i in new]).vectors
            for i, v in zip(new, vectors, strict=True):
                self._seen[keys[i]] = v
        return Embeddings(np.stack([self._seen[k] for k in keys]), self.model_id)


def detector_config(name: str, batch: int):
    if name.startswith("yolox"):
        return YoloxDetectorConfig(model=name, batch_size=batch)
    return OmzPersonDetectorConfig(model=name, batch_size=batch)


def detect_all(detector, images: list[np.ndarray], batch: int) -> tuple[list[Detections], float]:
    """Every frame's detections and the detector's frames/s over the clip (after a warm-up)."""
    detector(images[:batch])
    t0 = time.perf_counter()
    found: list[Detections] = []
    for i in range(0, len(images), batch):
        found += detector(images[i : i + batch])
    return found, len(images) / (time.perf_counter() - t0)


def track(frames: list[Frame], dets: list[Detections], tracker: TrackerConfig, cfg: RefindConfig,
          embedder: RememberingEmbedder, last: int) -> MotBoxes:
    """Confirmed track boxes of frames 1..last, MOT numbering."""
    pipe = CameraPipeline("pets", tracker, cfg.crops, embedder=embedder, select_crops=False)
    rows_f, rows_id, rows_box = [], [], []
    for frame, d in zip(frames[:last], dets[:last], strict=True):
        tracks = pipe.process(frame, d).tracks
        assert tracks is not None
        rows_f.append(np.full(len(tracks), frame.index + 1, np.int64))
        rows_id.append(tracks.track_id)
        rows_box.append(tracks.xyxy.astype(np.float64))
    return MotBoxes(np.concatenate(rows_f), np.concatenate(rows_id), np.concatenate(rows_box))


def score(truth: MotBoxes, hyp: MotBoxes, window: tuple[int, int]) -> dict[str, float]:
    first, last = window
    m = mot_metrics(truth.window(first, last), hyp.window(first, last),
                    num_frames=last - first + 1)
    return {k: round(float(m[k]), 4) for k in ("HOTA", "MOTA", "IDF1", "IDSW")}


def settings(base: TrackerConfig, grid: dict[str, tuple[float, ...]]) -> list[TrackerConfig]:
    """Every combination of ``grid`` over ``base`` (ByteTrack's grid gives the new-track
    threshold as an offset from the high one)."""
    out = []
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        p = dict(zip(keys, values, strict=True))
        if "new_track_offset" in p:
            high = p["high_threshold"]
            p["new_track_threshold"] = round(min(high + p.pop("new_track_offset"), 0.95), 2)
        out.append(base.model_copy(update=p))
    return out


SHOWN = ("high_threshold", "new_track_threshold", "low_threshold", "min_hits", "match_iou",
         *APPEARANCE_GRID)  # the tracker settings a result names


def choose(frames: list[Frame], dets: list[Detections], truth: MotBoxes,
           grid: list[TrackerConfig], cfg: RefindConfig, embedder: RememberingEmbedder,
           name: str) -> dict[str, object]:
    """Every setting of ``grid`` scored on the tuning frames, the best (MOTA + IDF1) kept, and it
    and the config's defaults scored on every window."""
    tried = []
    for tracker in tqdm(grid, desc=name, unit="setting"):
        hyp = track(frames, dets, tracker, cfg, embedder, TUNE[1])
        tried.append((score(truth, hyp, TUNE), tracker))
    best_score, best = max(tried, key=lambda t: (t[0]["MOTA"] + t[0]["IDF1"], t[0]["HOTA"]))
    entry: dict[str, object] = {}
    for label, tracker in (("defaults", cfg.tracker), ("tuned", best)):
        hyp = track(frames, dets, tracker, cfg, embedder, len(frames))
        entry[label] = {
            "tracker": {k: getattr(tracker, k) for k in SHOWN},
            "frames_1_400": score(truth, hyp, TUNE),
            "frames_401_795": score(truth, hyp, HELD_OUT),
            "frames_1_795": score(truth, hyp, WHOLE),
        }
    entry["tuned_on_1_400"] = best_score
    entry["tried_on_1_400"] = [{**{k: getattr(t, k) for k in SHOWN}, **s} for s, t in tried]
    return entry


def plot(result_json: Path, png: Path) -> None:
    """IDF1 on the tuning frames against ``reid_max_distance``, one line per detector and
    appearance weight (``max_lost_s`` 3), from an appearance stage's result file."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads(result_json.read_text())
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for (name, entry), colour in zip(result["detectors"].items(), ("C0", "C1", "C2", "C3"),
                                     strict=False):
        for weight, style in ((0.75, "-"), (1.0, ":")):
            rows = sorted((r["reid_max_distance"], r["IDF1"]) for r in entry["tried_on_1_400"]
                          if r["appearance_weight"] == weight and r["max_lost_s"] == 3.0)
            if rows:
                x, y = zip(*rows, strict=True)
                ax.plot(x, y, style, color=colour, marker="o", ms=3,
                        label=f"{name}, appearance weight {weight}")
    ax.set_xlabel("reid_max_distance (cosine distance a lost track is re-identified within)")
    ax.set_ylabel("IDF1, PETS09-S2L1 frames 1-400")
    ax.set_title("Tracker appearance settings per detector (tuning frames only)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    print(png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("bytetrack", "appearance"), default="bytetrack")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    parser.add_argument("--video", type=Path, default=DATA / "vtest.avi")
    parser.add_argument("--gt", type=Path, default=DATA / "gt.txt")
    parser.add_argument("--gt-scale", type=float, default=0.625)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    parser.add_argument("--plot", nargs=2, type=Path, metavar=("RESULT_JSON", "PNG"),
                        help="draw an appearance stage's result instead of running one")
    args = parser.parse_args()
    if args.plot:
        plot(*args.plot)
        return
    cfg = RefindConfig()
    store = ModelStore.from_config(cfg.models)
    frames = list(VideoSource(args.video, camera="pets"))
    truth = load_mot(args.gt, scale=args.gt_scale, drop_flag0=True).frames(1, len(frames))
    embedder = RememberingEmbedder(build_embedder(cfg.embedder, store))
    space = GRID if args.stage == "bytetrack" else APPEARANCE_GRID
    grid = settings(cfg.tracker, space)
    result: dict[str, object] = {"benchmark": "tracker_grid", "stage": args.stage,
                                 "video": str(args.video), "tune_frames": TUNE,
                                 "held_out_frames": HELD_OUT,
                                 "grid": {k: list(v) for k, v in space.items()}, "detectors": {}}
    batch = cfg.detector.batch_size
    for name in args.detectors:
        detector = build_detector(detector_config(name, batch), store)
        dets, fps = detect_all(detector, [f.image for f in frames], batch)
        dets = [d.select(d.confidence >= 0.1) for d in dets]  # the lowest low_threshold
        entry = {"detector_fps": round(fps, 1),
                 **choose(frames, dets, truth, grid, cfg, embedder, name)}
        result["detectors"][name] = entry  # type: ignore[index]
        print(name, entry, flush=True)
    result |= {"cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "commit": code_version()}
    write_result(args.out, "tracker_grid" if args.stage == "bytetrack" else "tracker_appearance",
                 result)


if __name__ == "__main__":
    main()
