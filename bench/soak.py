"""Soak: N live cameras and a search every second for a long while; does anything grow?

N live HTTP MPEG-TS cameras (Debian's ffmpeg looping PETS09-S2L1 and the Intel clip, as
``tests/cameras.py`` serves them) run through ``refind serve``'s Ray graph, with a Tansu Kafka
broker taking every event (a consumer group reads the tracks topic, so its lag is known), the
identity actor and one watch. A search by photo runs every second through the live gallery
(``LiveSearch``, as ``refind api`` does). Every ``--every`` seconds it samples:

- the resident memory (RSS) of this process and every process under it (Ray's workers, the
  broker), and their open file descriptors;
- each camera's frames analysed and dropped, and its freshness (a track's first crop searchable
  after its capture, the latest ones);
- the identity actor's counters; refind's events not yet acknowledged by the broker
  (``kafka_unsent``) and, after a consumer group has read the tracks topic to its end, what
  arrived meanwhile (``kafka_lag``);
- the searches' latency and errors.

Growth is measured from the end of the warm-up (``--warmup``) to the end: the JSON says whether
RSS and descriptors grew less than 5 %, and a PNG plots them over time.

    python bench/soak.py [--cameras 4] [--minutes 30] [--warmup 300] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from report import code_version  # noqa: E402  (bench/report.py)
from watch_alerts import a_person  # noqa: E402  (bench/watch_alerts.py)

from refind.actors.config import RayConfig  # noqa: E402
from refind.actors.runtime import init_ray, shutdown_ray  # noqa: E402
from refind.actors.supervisor import Supervisor  # noqa: E402
from refind.app.identity_commands import add_watch  # noqa: E402
from refind.config import parse_config  # noqa: E402
from refind.indexer.live_search import LiveSearch  # noqa: E402
from refind.indexer.watchlist import WatchStore  # noqa: E402
from refind.streaming.records import ImageQuery  # noqa: E402
from tests.cameras import INTEL_VIDEO, PETS_VIDEO, HttpTsCamera  # noqa: E402
from tests.servers import TansuServer, _tansu_bin, free_port  # noqa: E402


def tree(root: psutil.Process) -> list[psutil.Process]:
    return [root, *root.children(recursive=True)]


def resources() -> tuple[float, int, dict[str, float]]:
    """(RSS in MiB, open fds) of this process and everything under it, and the RSS per kind of
    process (Ray names its workers after the actor they run: ``ray::CameraActor``)."""
    rss, fds = 0, 0
    by_kind: dict[str, float] = {}
    for p in tree(psutil.Process()):
        try:
            mine = p.memory_info().rss
            fds += p.num_fds()
            title = (p.cmdline() or [p.name()])[0]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += mine
        # Ray titles a worker "ray::Actor.method" while a method runs: the actor is the kind
        kind = title.split()[0].rsplit("/", 1)[-1].split(".")[0][:40]
        by_kind[kind] = round(by_kind.get(kind, 0.0) + mine / 2**20, 1)
    return rss / 2**20, fds, by_kind


class Searcher(threading.Thread):
    """A search by photo every second; latencies and errors."""

    def __init__(self, live: LiveSearch, query: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.live, self.query = live, query
        self.stop = threading.Event()
        self.ms: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(1.0):
            t0 = time.perf_counter()
            try:
                self.live.search(ImageQuery(image=self.query, k=10))
                self.ms.append(1e3 * (time.perf_counter() - t0))
            except Exception as err:  # counted: a soak reports, it does not stop
                if "no gallery" not in str(err).lower():
                    self.errors.append(f"{type(err).__name__}: {err}")


def consumer_lag(topic: str, consumer: object) -> int | None:
    """Messages of ``topic`` the consumer group has not committed yet."""
    from kafka import TopicPartition

    try:
        parts = consumer.partitions_for_topic(topic) or set()  # type: ignore[attr-defined]
        tps = [TopicPartition(topic, p) for p in parts]
        ends = consumer.end_offsets(tps)  # type: ignore[attr-defined]
        return int(sum(ends[tp] - (consumer.committed(tp) or 0) for tp in tps))  # type: ignore[attr-defined]
    except Exception:
        return None


def run(args: argparse.Namespace, data: Path) -> dict:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = TansuServer("tansu", [_tansu_bin(), "broker", "--listener-url", url,
                                   "--advertised-listener-url", url, "--storage-engine",
                                   "memory://tansu/"], port, data / "tansu.log", grace_s=0.2)
    broker.start()
    clips = [PETS_VIDEO, INTEL_VIDEO]
    cams = [HttpTsCamera(clips[i % 2]) for i in range(args.cameras)]
    for c in cams:
        c.start()
    cfg = parse_config({
        "data_dir": str(data / "data"),
        "cameras": [{"name": f"cam{i}", "url": c.url, "sample_fps": args.fps}
                    for i, c in enumerate(cams)],
        "kafka": {"enabled": True, "bootstrap_servers": broker.bootstrap,
                  "publish_detections": False},
        "ray": {"num_cpus": os.cpu_count(), "detector_num_cpus": 0, "embedder_num_cpus": 0},
    })
    jpeg = a_person(PETS_VIDEO)
    query = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    add_watch(cfg, WatchStore.in_data_dir(cfg.data_dir), "soak", image=jpeg, threshold=0.9)
    from kafka import KafkaConsumer

    group = f"soak-{uuid.uuid4().hex[:8]}"
    topic = "refind.tracks"
    sup = Supervisor(cfg)
    sup.start()
    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group,
                           auto_offset_reset="earliest", enable_auto_commit=False,
                           session_timeout_ms=6000, fetch_max_wait_ms=100,
                           consumer_timeout_ms=1000)  # idle longer than a fetch waits
    reader.subscribe([topic])
    live = LiveSearch.from_config(cfg)
    searcher = Searcher(live, query)
    searcher.start()
    samples = []
    start = time.monotonic()
    end = start + args.minutes * 60
    try:
        while time.monotonic() < end:
            for _ in reader:  # a consumer reading as fast as it can: what is left is lag
                pass
            reader.commit()
            rss, fds, by_kind = resources()
            reports = {n: r for n, r in sup.status().items() if not isinstance(r, str)}
            writers = sup.pool_stats()["writer"]
            published = (sum(r.events_published for r in reports.values())
                         + sum(w["events_published"] for w in writers))
            sent = (sum(r.events_sent for r in reports.values())
                    + sum(w["events_sent"] for w in writers))
            fresh = [s for r in reports.values() for s in r.freshness_s[-20:]]
            ident = sup.identity_stats() or {}
            samples.append({
                "t_s": round(time.monotonic() - start, 1), "rss_mib": round(rss, 1), "fds": fds,
                "frames": sum(r.frames_processed for r in reports.values()),
                "dropped": sum(r.frames_dropped for r in reports.values()),
                "crops": sum(r.crops_stored for r in reports.values()),
                "freshness_p95_s": round(float(np.quantile(fresh, 0.95)), 3) if fresh else None,
                "kafka_lag": consumer_lag(topic, reader),
                "kafka_unsent": published - sent,
                "identity_open_tracks": ident.get("open_tracks"),
                "alerts": ident.get("alerts"),
                "search_p95_ms": round(float(np.quantile(searcher.ms[-60:], 0.95)), 1)
                if searcher.ms else None,
                "search_errors": len(searcher.errors),
                "rss_mib_by_process": by_kind,
            })
            print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
            time.sleep(args.every)
    finally:
        searcher.stop.set()
        searcher.join(30)
        reader.close()
        sup.stop()
        live.close()
        for c in cams:
            c.kill()
        broker.stop()
    return summarise(samples, args, searcher)


def growth(samples: list[dict], key: str, after_s: float) -> float | None:
    """Relative change of ``key`` from the first sample after ``after_s`` to the mean of the
    last five."""
    rest = [s[key] for s in samples if s["t_s"] >= after_s and s[key] is not None]
    if len(rest) < 6:
        return None
    return round(float(np.mean(rest[-5:]) / rest[0] - 1.0), 4)


def summarise(samples: list[dict], args: argparse.Namespace, searcher: Searcher) -> dict:
    rss, fds = growth(samples, "rss_mib", args.warmup), growth(samples, "fds", args.warmup)
    after = [x for x in samples if x["t_s"] >= args.warmup]
    growers = {}
    if len(after) >= 6:
        first, last = after[0]["rss_mib_by_process"], after[-1]["rss_mib_by_process"]
        growers = dict(sorted(((k, round(last[k] - first.get(k, 0.0), 1)) for k in last),
                              key=lambda kv: -kv[1])[:6])
    return {
        "rss_growth_after_warmup": rss, "fds_growth_after_warmup": fds,
        "rss_mib_growth_by_process": growers,
        "target_growth": 0.05,
        "growth_under_target": rss is not None and fds is not None and max(rss, fds) < 0.05,
        "frames_analysed": samples[-1]["frames"] if samples else 0,
        "frames_dropped": samples[-1]["dropped"] if samples else 0,
        "crops_stored": samples[-1]["crops"] if samples else 0,
        "searches": len(searcher.ms), "search_errors": searcher.errors[:5],
        "search_p95_ms": round(float(np.quantile(searcher.ms, 0.95)), 1) if searcher.ms else None,
        "samples": samples,
    }


def plot(result: dict, path: Path, warmup: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    t = [x["t_s"] / 60 for x in s]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    series = (("rss_mib", "resident memory, MiB (all processes)"), ("fds", "open descriptors"),
              ("freshness_p95_s", "capture to searchable p95, s"),
              ("kafka_lag", "Kafka consumer lag, events"))
    for ax, (key, title) in zip(axes.flat, series, strict=True):
        ax.plot(t, [x[key] if x[key] is not None else np.nan for x in s], lw=1.5)
        ax.axvline(warmup / 60, color="grey", ls="--", lw=1)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("minutes (dashed: end of warm-up)")
    fig.suptitle(f"refind soak: {result['cameras']} live cameras + a search a second; RSS "
                 f"{100 * (result['rss_growth_after_warmup'] or 0):+.1f} %, fds "
                 f"{100 * (result['fds_growth_after_warmup'] or 0):+.1f} % after warm-up")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=300.0, help="seconds")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    init_ray(RayConfig(num_cpus=os.cpu_count()))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, Path(tmp))
    finally:
        shutdown_ray()
    result = {"benchmark": "soak", "cameras": args.cameras, "fps": args.fps,
              "minutes": args.minutes, "warmup_s": args.warmup, **result,
              "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "commit": code_version()}
    stem = f"soak-{time.strftime('%Y-%m-%d')}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / f"{stem}.png", args.warmup)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
