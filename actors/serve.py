"""``refind serve``: run the live system, with health, metrics and camera control over HTTP.

Endpoints (``serve.host``:``serve.port``):
- ``GET /healthz``: 200 with every camera's state and the index version live ingestion writes
  (``model_id``, ``alias_switches``) while the system runs; 503 when a camera actor does not
  answer or a switch to a new serving version failed (``alias_error``).
- ``GET /metrics``: Prometheus text: per camera frames in / dropped / processed, reconnects,
  state, sample rate, tracks, crops, events, freshness; per pool batches and busy seconds; the
  model of the version written (``refind_serving_model_info``) and the alias switches followed
  (``refind_alias_switches_total``).
- ``GET /cameras``: camera reports as JSON. ``POST /cameras`` with a camera's config as JSON
  adds it; ``DELETE /cameras/NAME`` removes it.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from actors.camera import CameraReport
from actors.supervisor import Supervisor
from streaming.config import CameraConfig, RefindConfig
from streaming.metrics import CAMERA_STATES

log = logging.getLogger(__name__)

ALIAS_POLL_S = 1.0  # how often the serving alias is checked (one stat of versions.json)
CHECK_EVERY_S = 2.0  # how often camera and writer actors are checked


class _SnapshotCollector:
    """Prometheus families built from the supervisor's latest snapshot (no global state)."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self._snap = snapshot

    def collect(self):
        reports: dict[str, CameraReport | str] = self._snap.get("cameras", {})
        counters = {
            "frames_in": "Frames received from the camera",
            "frames_dropped": "Frames dropped because a stage fell behind",
            "frames_processed": "Frames detected and tracked",
            "reconnects": "Reconnections to the camera",
            "tracks_started": "Tracks started",
            "crops_stored": "Crops embedded and stored",
            "events_published": "Events handed to Kafka",
            "events_sent": "Events Kafka acknowledged",
            "events_failed": "Events given up on (not delivered to Kafka)",
        }
        for key, doc in counters.items():
            fam = CounterMetricFamily(f"refind_camera_{key}", doc, labels=["camera"])
            for name, r in reports.items():
                if isinstance(r, CameraReport):
                    fam.add_metric([name], getattr(r, key))
            yield fam
        state = GaugeMetricFamily("refind_camera_state", "1 for the camera's state",
                                  labels=["camera", "state"])
        rate = GaugeMetricFamily("refind_camera_sample_fps", "Current sample rate",
                                 labels=["camera"])
        fresh = GaugeMetricFamily("refind_freshness_seconds",
                                  "Capture to searchable, per camera (p50, p95)",
                                  labels=["camera", "quantile"])
        stage = CounterMetricFamily("refind_stage_seconds", "Seconds spent per stage",
                                    labels=["camera", "stage"])
        latency = GaugeMetricFamily("refind_frame_latency_seconds",
                                    "Frame received to tracked, last 1000 frames (p50, p95)",
                                    labels=["camera", "quantile"])
        depth = GaugeMetricFamily("refind_queue_depth", "Frames waiting per camera and stage",
                                  labels=["camera", "stage"])
        for name, r in reports.items():
            current = r.state if isinstance(r, CameraReport) else "failed"
            for s in CAMERA_STATES:
                state.add_metric([name, s], 1.0 if s == current else 0.0)
            if isinstance(r, CameraReport):
                rate.add_metric([name], r.rate_fps)
                if r.freshness_s:
                    for q in (0.5, 0.95):
                        fresh.add_metric([name, str(q)], float(np.quantile(r.freshness_s, q)))
                for st, sec in r.stage_seconds.items():
                    stage.add_metric([name, st], sec)
                for q, v in (("0.5", r.latency_p50_s), ("0.95", r.latency_p95_s)):
                    if v is not None:
                        latency.add_metric([name, q], v)
                depth.add_metric([name, "camera_queue"], r.queue_depth)
                depth.add_metric([name, "detector_in_flight"], r.in_flight)
        yield from (state, rate, fresh, stage, latency, depth)
        version = self._snap.get("version", {})
        if version.get("model_id"):
            info = GaugeMetricFamily("refind_serving_model_info",
                                     "1 for the embedder model of the index version written",
                                     labels=["model_id"])
            info.add_metric([version["model_id"]], 1.0)
            yield info
        switches = CounterMetricFamily("refind_alias_switches",
                                       "Serving alias switches live ingestion has followed")
        switches.add_metric([], version.get("alias_switches", 0))
        yield switches
        for pool, rows in self._snap.get("pools", {}).items():
            for key in ("batches", "items", "busy_s"):
                fam = CounterMetricFamily(f"refind_{pool}_{key}", f"{pool} pool {key}",
                                          labels=["actor"])
                for i, row in enumerate(rows):
                    if key in row:
                        fam.add_metric([str(i)], row[key])
                yield fam


def render_metrics(snapshot: dict[str, Any]) -> bytes:
    registry = CollectorRegistry()
    registry.register(_SnapshotCollector(snapshot))  # type: ignore[arg-type]
    return generate_latest(registry)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("http: " + fmt, *args)

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj, default=str).encode())

    def do_GET(self) -> None:
        snap = self.server.snapshot()
        cams = snap["cameras"]
        if self.path == "/healthz":
            broken = [n for n, r in cams.items() if not isinstance(r, CameraReport)]
            states = {n: (r.state if isinstance(r, CameraReport) else r) for n, r in cams.items()}
            version = snap.get("version", {})
            bad = bool(broken or version.get("alias_error"))
            self._json(503 if bad else 200, {"status": "degraded" if bad else "ok",
                                             "cameras": states, **version})
        elif self.path == "/metrics":
            self._send(200, render_metrics(snap), "text/plain; version=0.0.4")
        elif self.path == "/cameras":
            rows = {n: (asdict(r) if isinstance(r, CameraReport) else {"error": r})
                    for n, r in cams.items()}
            for row in rows.values():
                row.pop("freshness_s", None)
            self._json(200, rows)
        else:
            self._json(404, {"error": f"no such path {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/cameras":
            return self._json(404, {"error": f"no such path {self.path}"})
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if length > 65536:
                raise ValueError("camera config larger than 64 KiB")
            cam = CameraConfig.model_validate(json.loads(self.rfile.read(length) or b"{}"))
            self.server.supervisor.add_camera(cam)
        except (ValueError, json.JSONDecodeError) as err:
            return self._json(400, {"error": str(err)})
        self.server.invalidate()
        self._json(201, {"added": cam.name})

    def do_DELETE(self) -> None:
        prefix = "/cameras/"
        if not self.path.startswith(prefix):
            return self._json(404, {"error": f"no such path {self.path}"})
        try:
            self.server.supervisor.remove_camera(self.path[len(prefix):])
        except KeyError as err:
            return self._json(404, {"error": str(err.args[0])})
        self.server.invalidate()
        self._json(200, {"removed": self.path[len(prefix):]})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], supervisor: Supervisor) -> None:
        super().__init__(addr, _Handler)
        self.supervisor = supervisor
        self._lock = threading.Lock()
        self._snap: dict[str, Any] = {}
        self._at = 0.0

    def snapshot(self, max_age_s: float = 1.0) -> dict[str, Any]:
        """Camera reports and pool stats, cached briefly so scrapes do not flood the actors."""
        with self._lock:
            if time.monotonic() - self._at > max_age_s:
                self._snap = {"cameras": self.supervisor.status(),
                              "pools": self.supervisor.pool_stats(),
                              "version": self.supervisor.version_info()}
                self._at = time.monotonic()
            return self._snap

    def invalidate(self) -> None:
        with self._lock:
            self._at = 0.0


def start_http(supervisor: Supervisor, host: str, port: int) -> _Server:
    server = _Server((host, port), supervisor)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("health and metrics on http://%s:%d", host, server.server_address[1])
    return server


def run_serve(
    cfg: RefindConfig, stop: threading.Event | None = None,
    on_start: Callable[[Supervisor], None] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set): supervise, save shards, serve HTTP.
    ``on_start(supervisor)`` is called once everything runs."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    supervisor = Supervisor(cfg)
    supervisor.start()
    if on_start is not None:
        on_start(supervisor)
    server = start_http(supervisor, cfg.serve.host, cfg.serve.port)
    print(f"refind serving {len(supervisor.cameras())} cameras; health and metrics on "
          f"http://{cfg.serve.host}:{server.server_address[1]}/healthz and /metrics", flush=True)
    try:
        supervise(supervisor, cfg, stop)
    finally:
        server.shutdown()
        supervisor.stop()


def supervise(supervisor: Supervisor, cfg: RefindConfig, stop: threading.Event) -> None:
    """The serve loop until ``stop``: follow the serving alias, check actors, save shards."""
    last_check = last_save = time.monotonic()
    while not stop.wait(ALIAS_POLL_S):
        supervisor.follow_alias()
        now = time.monotonic()
        if now - last_check >= CHECK_EVERY_S:
            supervisor.check()
            last_check = now
        if now - last_save >= cfg.serve.save_interval_s:
            supervisor.save()
            last_save = time.monotonic()
