"""Benchmark: how soon a watch alerts in the live graph, from a person's first frame, with N live
cameras.

N live HTTP MPEG-TS cameras (Debian's ffmpeg serving PETS09-S2L1, 480x360, 10 fps, looped, as
``tests/cameras.py`` does for the tests) run through ``refind serve``'s whole Ray graph (decode,
sample, detect, track, crops, embed, index writers, the identity actor). One photo watch is set
with a threshold so low that every track matches it, so every track's alert is timed; which
tracks SHOULD alert is ``refind eval watch``'s measure, not this one's. A live frame's time is
the wall clock when it was received, so latency = the alert's ``emitted_ns`` (wall clock, when
the identity actor wrote it) - the track's ``first_ts_ns`` (its first tracked frame). The
tracker reports a track after ``tracker.min_hits`` detections, so the person's very first frame
is up to (min_hits - 1) / sample_fps earlier; that is added to the reported figures.

    python bench/watch_alerts.py [--cameras 4] [--fps 5] [--window 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from report import code_version  # noqa: E402  (bench/report.py)

from refind.actors.config import RayConfig  # noqa: E402
from refind.actors.runtime import init_ray, shutdown_ray  # noqa: E402
from refind.actors.supervisor import Supervisor  # noqa: E402
from refind.app.api_watch import alerts_path, newest_alerts  # noqa: E402
from refind.app.identity_commands import add_watch  # noqa: E402
from refind.config import parse_config  # noqa: E402
from refind.indexer.watchlist import WatchStore  # noqa: E402
from tests.cameras import PETS_VIDEO, HttpTsCamera  # noqa: E402


def a_person(video: Path) -> bytes:
    """A photo of someone: frame 100 of PETS around its first ground-truth person."""
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"cannot read {video}")
    crop = frame[90:200, 250:300]  # a walker near the middle at frame 100 (480x360)
    return cv2.imencode(".jpg", crop)[1].tobytes()


def run(n: int, fps: float, warmup: float, window: float, data_dir: Path) -> dict:
    cams = [HttpTsCamera(PETS_VIDEO) for _ in range(n)]
    for c in cams:
        c.start()
    cfg = parse_config({
        "data_dir": str(data_dir),
        "cameras": [{"name": f"cam{i}", "url": c.url, "sample_fps": fps}
                    for i, c in enumerate(cams)],
        "ray": {"num_cpus": os.cpu_count(), "detector_num_cpus": 0, "embedder_num_cpus": 0},
    })
    add_watch(cfg, WatchStore.in_data_dir(cfg.data_dir), "anyone", image=a_person(PETS_VIDEO),
              threshold=1e-6)
    sup = Supervisor(cfg)
    sup.start()
    try:
        time.sleep(warmup)
        start_ns = time.time_ns()
        time.sleep(window)
        identity = sup.identity_stats()
        status = {k: v for k, v in sup.status().items() if not isinstance(v, str)}
    finally:
        sup.stop()
        for c in cams:
            c.kill()
    alerts = [a for a in newest_alerts(alerts_path(cfg), 100_000)
              if a["first_ts_ns"] >= start_ns]
    lat = np.array([(a["emitted_ns"] - a["first_ts_ns"]) / 1e9 for a in alerts])
    confirm_s = (cfg.tracker.min_hits - 1) / fps
    return {
        "cameras": n, "alerts": len(alerts),
        "cameras_alerting": len({a["camera"] for a in alerts}),
        "latency_s": {
            "from_first_tracked_frame": {
                "p50": round(float(np.quantile(lat, 0.5)), 3) if len(lat) else None,
                "p95": round(float(np.quantile(lat, 0.95)), 3) if len(lat) else None,
                "max": round(float(lat.max()), 3) if len(lat) else None},
            "tracker_confirmation_added_s": round(confirm_s, 3),
            "p95_from_first_frame": round(float(np.quantile(lat, 0.95)) + confirm_s, 3)
            if len(lat) else None,
        },
        "dropped_frames": sum(r.frames_dropped for r in status.values()),
        "analysed_fps_per_camera": [round(r.rate_fps, 2) for r in status.values()],
        "identity_actor": identity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    init_ray(RayConfig(num_cpus=os.cpu_count()))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            r = run(args.cameras, args.fps, args.warmup, args.window, Path(tmp))
    finally:
        shutdown_ray()
    print(json.dumps({
        "benchmark": "watch_alerts",
        "stream": f"PETS09-S2L1 480x360 over live HTTP MPEG-TS, analysed at {args.fps:g} fps",
        "target_p95_s": 2.0,
        **r,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "commit": code_version(),
    }, indent=2))


if __name__ == "__main__":
    main()
