"""Benchmark: what a camera-hour costs on disk, and what the UI's frames and clips cost in ingest.

Ingests each clip twice with the default config, in one run: as configured (a downscaled frame
beside every crop, ``crops.context_px``; an H.264 clip per track, ``crops.clip_px``) and with
both off. For each, it sums the bytes written by kind (crops, context frames, clips, the FAISS
index and SQLite metadata, the text-search evidence) and scales them to one hour of that
footage (bytes x 3600 / the clip's seconds); the cost grows with the people seen, so it also
gives bytes per track. The frames/s of both ingests show what the frames and clips cost.

    python bench/storage.py [--video V --camera NAME ...] [--out bench/results]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from report import code_version, write_result  # noqa: E402  (bench/report.py)

from refind.config import RefindConfig  # noqa: E402
from refind.indexer.ingest import IngestPipeline  # noqa: E402
from refind.indexer.sink import open_sink  # noqa: E402
from refind.streaming.sources import VideoSource  # noqa: E402

SHARED = REPO / ".." / "shared" / "data"
VIDEOS = {"pets09-s2l1": SHARED / "pets09-s2l1" / "vtest.avi",
          "intel-one-by-one": SHARED / "intel-sample-videos" / "one-by-one-person-detection.mp4"}


def kind_of(path: Path) -> str:
    name = path.name
    if name.endswith(".ctx.jpg"):
        return "context_frames"
    if name == "clip.mp4":
        return "clips"
    if name.endswith(".jpg"):
        return "crops"
    if name.startswith("evidence"):
        return "evidence"
    return "gallery"  # FAISS index, SQLite metadata, the journal


def frame_rate(video: Path) -> float:
    import av

    with av.open(str(video)) as f:
        return float(f.streams.video[0].average_rate or 25)


def measure(cfg: RefindConfig, video: Path) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = cfg.model_copy(update={"data_dir": Path(tmp)})
        pipeline = IngestPipeline.from_config(run_cfg)
        source = VideoSource(video, camera="bench")
        with open_sink(run_cfg, pipeline.embedder.model_id, pipeline.embedder.dim) as sink:
            report = pipeline.run(source, sink)
        sizes: dict[str, int] = {}
        for path in Path(tmp).rglob("*"):
            if path.is_file():
                sizes[kind_of(path)] = sizes.get(kind_of(path), 0) + path.stat().st_size
    seconds = report.frames / frame_rate(video)
    total = sum(sizes.values())
    per_hour = {k: round(v * 3600 / seconds / 2**20, 1) for k, v in sorted(sizes.items())}
    return {
        "frames": report.frames, "video_seconds": round(seconds, 1),
        "tracks": report.tracks, "crops": report.crops, "ingest_fps": report.to_json()["fps"],
        "bytes": dict(sorted(sizes.items())), "total_bytes": total,
        "mib_per_camera_hour": per_hour | {"total": round(total * 3600 / seconds / 2**20, 1)},
        "kib_per_track": round(total / max(report.tracks, 1) / 1024, 1),
        "stage_seconds": report.stage_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, action="append", help="default: both clips")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    videos = {p.stem: p for p in args.video} if args.video else VIDEOS
    base = RefindConfig()
    off = base.model_copy(update={"crops": base.crops.model_copy(
        update={"context_px": 0, "clip_px": 0})})
    out: dict[str, object] = {"benchmark": "storage", "config": {
        "context_px": base.crops.context_px, "clip_px": base.crops.clip_px,
        "clip_max_frames": base.crops.clip_max_frames}}
    for name, video in videos.items():
        if not video.is_file():
            raise SystemExit(f"video not found: {video}")
        on, without = measure(base, video), measure(off, video)
        out[name] = {"with_frames_and_clips": on, "without": without,
                     "ingest_fps_cost": round(1 - on["ingest_fps"] / without["ingest_fps"], 3)}
    out |= {"cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "commit": code_version()}
    write_result(args.out, "storage", out)


if __name__ == "__main__":
    main()
