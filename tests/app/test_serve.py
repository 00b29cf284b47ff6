"""`refind serve`'s control surface on a real local Ray: health, Prometheus metrics, cameras
added and removed at run time over HTTP, and a crashed camera actor replaced by the supervisor."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from refind.actors.supervisor import Supervisor, wait_until
from refind.app.serve import start_http
from refind.config import parse_config
from tests.conftest import http_get, need_models

pytestmark = pytest.mark.slow


def _send(url: str, method: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_health_metrics_and_cameras_at_run_time(ray_local, tiny_video: Path, tmp_path) -> None:
    need_models()
    camera = {"name": "a", "url": str(tiny_video), "realtime": True, "loop": True,
              "sample_fps": 5}
    cfg = parse_config({"data_dir": str(tmp_path), "cameras": [camera],
                        "ray": {"detector_num_cpus": 0, "embedder_num_cpus": 0}})
    sup = Supervisor(cfg)
    sup.start()
    server = start_http(sup, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert wait_until(lambda: sup.status()["a"].frames_processed > 0, 60)
        code, body = http_get(f"{base}/healthz")
        assert code == 200 and json.loads(body)["cameras"] == {"a": "live"}
        code, body = http_get(f"{base}/metrics")
        text = body.decode()
        assert code == 200 and 'refind_camera_frames_in_total{camera="a"}' in text
        assert 'refind_camera_state{camera="a",state="live"} 1.0' in text
        assert 'refind_pool_batches_total{actor="0",pool="detector"}' in text
        assert 'refind_writer_vectors{shard="0"}' in text
        assert 'refind_frame_latency_seconds{camera="a",quantile="0.95"}' in text
        assert 'refind_queue_depth{camera="a",stage="camera_queue"}' in text
        # add a camera at run time, refuse a bad one, remove one
        assert _send(f"{base}/cameras", "POST", camera | {"name": "b"})[0] == 201
        code, err = _send(f"{base}/cameras", "POST", camera | {"name": "b"})
        assert code == 400 and "already exists" in err["error"]
        code, err = _send(f"{base}/cameras", "POST", {"name": "c", "url": "x", "fps": 3})
        assert code == 400 and "fps" in err["error"]
        assert wait_until(lambda: sup.status()["b"].frames_processed > 0, 60)
        assert _send(f"{base}/cameras/a", "DELETE")[0] == 200
        assert _send(f"{base}/cameras/a", "DELETE")[0] == 404
        assert sorted(json.loads(http_get(f"{base}/cameras")[1])) == ["b"]
        # a camera actor that dies is replaced by the supervisor's check
        import ray

        _, actor = sup._cameras["b"]
        ray.kill(actor, no_restart=True)
        assert wait_until(lambda: isinstance(sup.status(timeout_s=2)["b"], str), 30)
        server.invalidate()  # past the cached snapshot: healthz sees the dead camera
        assert http_get(f"{base}/healthz")[0] == 503
        assert sup.check() == ["b"]
        assert wait_until(lambda: not isinstance(sup.status()["b"], str)
                          and sup.status()["b"].frames_processed > 0, 60)
        assert sup.restarts() == {"b": 1}
    finally:
        server.shutdown()
        sup.stop()
