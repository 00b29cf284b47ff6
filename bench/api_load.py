"""Benchmark: search latency and errors under N concurrent operators, while cameras ingest.

A real ``refind api`` process serves the ~100k-tracklet gallery of ``bench/ui_pages.py`` (800k
crops; built once and cached). Optionally (``--cameras 4``), ``refind serve`` runs that many
live cameras on this machine first (the PETS and Intel clips, looped at their own rate, 5
frames/s analysed, into a gallery of their own): they compete for the same two cores, as
cameras do. Then, for each concurrency in ``--clients`` (default 1, 8, 32), a bounded asyncio
client keeps that many operators searching for ``--seconds``: each sends its next search as
soon as its last one answered, alternating a text search and a photo search, with one key
whose search limit is off. Reports p50/p95/p99 latency, searches per second and errors per
concurrency. Writes ``bench/results/api_load-<date>.json``.

    python bench/api_load.py [--clients 1,8,32] [--seconds 30] [--cameras 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import code_version, write_result  # noqa: E402
from search_latency import DEFAULT_CACHE  # noqa: E402
from ui_pages import cached_gallery, start_api, wait_for  # noqa: E402

KEY = "bench-load-key"
TEXTS = ("a man in a black top", "a woman with a backpack", "someone in a red jacket",
         "a person in blue jeans walking left", "a man with a bag")
SHARED = REPO / ".." / "shared" / "data"
CLIPS = (SHARED / "pets09-s2l1" / "vtest.avi",
         SHARED / "intel-sample-videos" / "one-by-one-person-detection.mp4")


def start_cameras(n: int, work: Path, port: int) -> subprocess.Popen:
    cameras = [{"name": f"cam{i}", "url": str(CLIPS[i % len(CLIPS)].resolve()), "realtime": True,
                "loop": True, "sample_fps": 5} for i in range(n)]
    cfg = {"data_dir": str(work / "live"), "cameras": cameras, "ray": {"num_cpus": 2},
           "serve": {"port": port}}
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "refind.app.cli", "serve", "--config",
                             str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    wait_for(f"http://127.0.0.1:{port}/healthz", proc, "refind serve")
    return proc


def serve_report(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/cameras", timeout=10) as r:
        rows = json.loads(r.read())
    return {name: {k: row.get(k) for k in ("state", "rate_fps", "frames_in", "frames_dropped",
                                            "frames_processed")} for name, row in rows.items()}


async def operators(base: str, n: int, seconds: float, photo: bytes) -> dict[str, object]:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    end = time.monotonic() + seconds

    async def operator(i: int, client: httpx.AsyncClient) -> None:
        j = i
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                if j % 2:
                    r = await client.post("/v1/search/image", files={"image": ("q.jpg", photo)},
                                          data={"k": "10"})
                else:
                    r = await client.post("/v1/search/text",
                                          json={"text": TEXTS[j % len(TEXTS)], "k": 10})
                code = str(r.status_code)
            except httpx.HTTPError as err:
                code = type(err).__name__
            ms = (time.perf_counter() - t0) * 1e3
            if code == "200":
                latencies.append(ms)
            else:
                errors[code] = errors.get(code, 0) + 1
            j += 1

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": KEY}, timeout=120,
                                 limits=limits) as client:
        t0 = time.monotonic()
        await asyncio.gather(*(operator(i, client) for i in range(n)))
        took = time.monotonic() - t0
    v = np.array(latencies) if latencies else np.array([np.nan])
    return {"clients": n, "searches": len(latencies), "errors": errors,
            "searches_per_s": round(len(latencies) / took, 2),
            "p50_ms": round(float(np.percentile(v, 50)), 1),
            "p95_ms": round(float(np.percentile(v, 95)), 1),
            "p99_ms": round(float(np.percentile(v, 99)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--cameras", type=int, default=0, help="live cameras ingesting meanwhile")
    parser.add_argument("--crops", type=int, default=800_000)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE / "ui-pages")
    parser.add_argument("--port", type=int, default=8098)
    parser.add_argument("--serve-port", type=int, default=8099)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    data_dir, info = cached_gallery(args.cache, args.crops)
    photo = next((data_dir / "crops" / "pool").rglob("*.jpg")).read_bytes()
    result: dict[str, object] = {"benchmark": "api_load", "gallery": info,
                                 "seconds_each": args.seconds, "cameras": args.cameras}
    with tempfile.TemporaryDirectory(prefix="refind-load-") as tmp:
        serve = start_cameras(args.cameras, Path(tmp), args.serve_port) if args.cameras else None
        api = start_api(data_dir, args.port, KEY, "load", searches_per_min=0)
        try:
            if serve is not None:
                time.sleep(20)  # the cameras past their start
            base = f"http://127.0.0.1:{args.port}"
            asyncio.run(operators(base, 1, 5.0, photo))  # warm: models, caches
            runs = []
            for n in (int(c) for c in args.clients.split(",")):
                runs.append(asyncio.run(operators(base, n, args.seconds, photo)))
                print(json.dumps(runs[-1]), file=sys.stderr)
            result["runs"] = runs
            if serve is not None:
                result["camera_reports_after"] = serve_report(args.serve_port)
        finally:
            api.terminate()
            api.wait(timeout=30)
            if serve is not None:
                serve.terminate()
                serve.wait(timeout=60)
    result |= {"cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "commit": code_version()}
    write_result(args.out, "api_load", result)


if __name__ == "__main__":
    main()
