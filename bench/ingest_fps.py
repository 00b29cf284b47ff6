"""Benchmark: frames/s of the whole ingest against detection alone on the PETS09-S2L1 clip.

Detection alone is the bound: frames are decoded into memory first and only the detector runs,
in the same batches as the pipeline. The whole ingest decodes, detects, tracks, picks crops,
embeds and writes the gallery. It runs twice: with the default tracker (lazy appearance: the
ReID model is also called for ambiguous detections) and motion only (`appearance_weight: 0`),
so the cost of each part is visible. Prints one JSON object and writes it under bench/results;
`ratio` = ingest fps / detector fps. ``--config`` measures another setting
(configs/yolox.yaml: YOLOX-Nano) the same way.

    python bench/ingest_fps.py [--video V] [--repeats 2] [--config CONFIG.yaml]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from report import code_version, write_result  # noqa: E402  (bench/report.py)

from refind.config import RefindConfig, load_config  # noqa: E402
from refind.indexer.ingest import IngestPipeline  # noqa: E402
from refind.indexer.sink import open_sink  # noqa: E402
from refind.streaming.sources import VideoSource  # noqa: E402

DEFAULT_VIDEO = REPO / "../shared/data/pets09-s2l1/vtest.avi"


def detector_alone(pipeline: IngestPipeline, video: Path) -> tuple[float, int]:
    images = [f.image for f in VideoSource(video, camera="bench")]
    bs = pipeline.cfg.detector.batch_size
    pipeline.detector(images[:bs])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(images), bs):
        pipeline.detector(images[i : i + bs])
    return len(images) / (time.perf_counter() - t0), len(images)


def whole_ingest(pipeline: IngestPipeline, cfg: RefindConfig, video: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = cfg.model_copy(update={"data_dir": Path(tmp)})
        emb = pipeline.embedder
        with open_sink(run_cfg, emb.model_id, emb.dim) as sink:
            report = pipeline.run(VideoSource(video, camera="bench"), sink)
    return report.to_json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs of each")
    parser.add_argument("--config", type=Path, help="YAML config (default: embedded defaults)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    args = parser.parse_args()
    if not args.video.is_file():
        raise SystemExit(f"video not found: {args.video}")
    cfg = load_config(args.config) if args.config else RefindConfig()
    pipeline = IngestPipeline.from_config(cfg)
    det = max(detector_alone(pipeline, args.video)[0] for _ in range(args.repeats))
    motion_cfg = cfg.model_copy(
        update={"tracker": cfg.tracker.model_copy(update={"appearance_weight": 0.0})}
    )
    motion = IngestPipeline(motion_cfg, pipeline.detector, pipeline.embedder)
    out: dict[str, object] = {
        "benchmark": "ingest_fps",
        "video": str(args.video.resolve()),
        "config": str(args.config) if args.config else "embedded defaults",
        "detector": pipeline.detector.model_id,
        "detector_alone_fps": round(det, 2),
        "target_ratio": 0.9,
    }
    for name, pipe, run_cfg in (("default", pipeline, cfg), ("motion_only", motion, motion_cfg)):
        runs = [whole_ingest(pipe, run_cfg, args.video) for _ in range(args.repeats)]
        best = max(runs, key=lambda r: r["fps"])
        out[name] = {
            "ingest_fps": best["fps"],
            "ratio": round(best["fps"] / det, 3),
            "frames": best["frames"],
            "tracks": best["tracks"],
            "crops": best["crops"],
            "stage_seconds": best["stage_seconds"],
            "all_ingest_fps": [r["fps"] for r in runs],
        }
    out |= {
        "detector_batch": cfg.detector.batch_size,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "commit": code_version(),
    }
    suffix = f"-{args.config.stem}" if args.config else ""
    write_result(args.out, "ingest_fps", out, suffix=suffix)


if __name__ == "__main__":
    main()
