"""``refind serve``: run the live system, with health, metrics and camera control over HTTP.

Endpoints (``serve.host``:``serve.port``):
- ``GET /healthz``: 200 with every camera's state and the index version live ingestion writes
  (``model_id``, ``alias_switches``) while the system runs; 503 ("degraded") when a camera actor
  does not answer, a pool, writer or identity actor is down (``actors_down``: Ray is restarting
  it), a camera's latest crop store failed (``store_errors``: a full disk, say) or a switch to a
  new serving version failed (``alias_error``).
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

from refind.actors.camera import CameraReport
from refind.actors.runtime import ACTOR_ERRORS
from refind.actors.supervisor import Supervisor
from refind.config import RefindConfig
from refind.streaming.config import CameraConfig
from refind.streaming.live import QUEUE_STAGE
from refind.streaming.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

ALIAS_POLL_S = 1.0  # how often the serving alias is checked (one stat of versions.json)
CHECK_EVERY_S = 2.0  # how often camera and writer actors are checked


def render_metrics(snapshot: dict[str, Any]) -> bytes:
    """The Prometheus text of the supervisor's latest snapshot: a fresh ``Metrics`` (the one
    set of definitions) filled from the actors' reports, whose counters live in their own
    processes and are set here, not added to."""
    m = Metrics()
    reports: dict[str, CameraReport | str] = snapshot.get("cameras", {})
    for name, r in reports.items():
        if not isinstance(r, CameraReport):
            m.set_camera_state(name, "failed")  # the actor did not answer
            continue
        m.set_camera_state(name, r.state)
        for key, counter in m.camera.items():
            counter.labels(camera=name).inc(getattr(r, key))
        m.frames_dropped.labels(camera=name, stage=QUEUE_STAGE).inc(r.frames_dropped)
        m.sample_fps.labels(camera=name).set(r.rate_fps)
        for stage, seconds in r.stage_seconds.items():
            m.add_stage(name, stage, seconds)
        for q, v in (("0.5", r.latency_p50_s), ("0.95", r.latency_p95_s)):
            if v is not None:
                m.frame_latency.labels(camera=name, quantile=q).set(v)
        m.set_freshness(name, r.freshness)
        m.queue_depth.labels(camera=name, stage=QUEUE_STAGE).set(r.queue_depth)
        m.queue_depth.labels(camera=name, stage="detector_in_flight").set(r.in_flight)
        m.queue_depth.labels(camera=name, stage="stores_in_flight").set(r.stores_in_flight)
    version = snapshot.get("version", {})
    if version.get("model_id"):
        m.serving_model.labels(model_id=version["model_id"]).set(1.0)
    m.alias_switches.inc(version.get("alias_switches", 0))
    for pool, rows in snapshot.get("pools", {}).items():
        for i, row in enumerate(rows):
            if "error" in row:  # down (Ray restarting it): /healthz says so
                continue
            if pool == "writer":
                m.writer_vectors.labels(shard=str(i)).set(row["vectors"])
                m.writer_crops.labels(shard=str(i)).inc(row["added"])
                for outcome in ("published", "sent", "failed"):
                    m.writer_events.labels(shard=str(i), outcome=outcome).inc(
                        row[f"events_{outcome}"])
                continue
            m.pool_batches.labels(pool=pool, actor=str(i)).inc(row["batches"])
            m.pool_items.labels(pool=pool, actor=str(i)).inc(row["items"])
            m.pool_busy.labels(pool=pool, actor=str(i)).inc(row["busy_s"])
    identity = snapshot.get("identity")
    if identity and "error" not in identity:
        for key, counter in m.identity.items():
            counter.inc(identity.get(key, 0))
        m.identity_open.set(identity.get("open_tracks", 0))
        m.watches.set(identity.get("watches", 0))
    return m.render()


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
            down = {f"{pool} {i}": row["error"] for pool, rows in snap.get("pools", {}).items()
                    for i, row in enumerate(rows) if "error" in row}
            if "error" in (snap.get("identity") or {}):
                down["identity"] = snap["identity"]["error"]
            failing = {n: r.store_error for n, r in cams.items()
                       if isinstance(r, CameraReport) and r.store_error}
            bad = bool(broken or down or failing or version.get("alias_error"))
            body = {"status": "degraded" if bad else "ok", "cameras": states, **version}
            if down:
                body["actors_down"] = down
            if failing:  # crops are being lost: a full disk, a crop store that refuses writes
                body["store_errors"] = failing
            self._json(503 if bad else 200, body)
        elif self.path == "/metrics":
            self._send(200, render_metrics(snap), CONTENT_TYPE)
        elif self.path == "/actors":  # where each pool actor and writer runs, and its counters
            self._json(200, {"pools": snap.get("pools", {}), "identity": snap.get("identity")})
        elif self.path == "/cameras":
            rows = {n: (asdict(r) if isinstance(r, CameraReport) else {"error": r})
                    for n, r in cams.items()}
            for row in rows.values():
                row.pop("freshness_s", None)  # the counts stay
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
                              "version": self.supervisor.version_info(),
                              "identity": self.supervisor.identity_stats()}
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
    on_signal(stop)
    supervisor = Supervisor(cfg)
    supervisor.start()
    on_signal(stop)  # again: starting Ray installed its own handlers (stack dumps, exit 15)
    if on_start is not None:
        on_start(supervisor)
    server = start_http(supervisor, cfg.serve.host, cfg.serve.port)
    print(f"refind serving {len(supervisor.cameras())} cameras; health and metrics on "
          f"http://{cfg.serve.host}:{server.server_address[1]}/healthz and /metrics", flush=True)
    try:
        supervise(supervisor, cfg, stop)
    finally:
        server.shutdown()
        finals = supervisor.stop()
        reports = [r for r in finals.values() if r is not None]
        stored = sum(r.crops_stored for r in reports)
        failed = sum(r.crops_failed for r in reports)
        silent = len(finals) - len(reports)
        outcome = ("every accepted crop stored and recorded" if not failed and not silent else
                   f"{failed} crops failed to store, {silent} cameras did not report")
        print(f"refind serve stopped: {len(finals)} cameras, {stored} crops stored this run "
              f"({outcome})", flush=True)


def on_signal(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` (from the main thread only: Python's rule)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())


def supervise(supervisor: Supervisor, cfg: RefindConfig, stop: threading.Event) -> None:
    """The serve loop until ``stop``: follow the serving alias, check actors, save shards."""
    last_check = last_save = time.monotonic()
    while not stop.wait(ALIAS_POLL_S):
        try:
            supervisor.follow_alias()
            now = time.monotonic()
            if now - last_check >= CHECK_EVERY_S:
                last_check = now
                supervisor.check()
            if now - last_save >= cfg.serve.save_interval_s:
                last_save = time.monotonic()
                supervisor.save()
        except ACTOR_ERRORS as err:  # an actor down meanwhile: Ray restarts it
            log.warning("supervision: %s (trying again)", err)
        except Exception:  # anything else: logged; supervision must go on
            log.exception("supervision failed; trying again")
