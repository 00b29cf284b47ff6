"""`refind serve`'s control surface on a real local Ray: health, Prometheus metrics, cameras
added and removed at run time over HTTP, and a crashed camera actor replaced by the supervisor."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import ray

from refind.actors.supervisor import Supervisor, wait_until
from refind.app.serve import start_http
from refind.config import parse_config
from tests.conftest import STARTS_RAY, camera_count, http_get, need_models

pytestmark = [pytest.mark.slow, STARTS_RAY]


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
        assert wait_until(lambda: camera_count(sup, "a", "frames_processed") > 0, 60)
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
        assert 'refind_camera_frames_detected_total{camera="a"}' in text
        # where each pool actor and writer runs: this one node
        code, body = http_get(f"{base}/actors")
        pools = json.loads(body)["pools"]
        assert code == 200 and sorted(pools) == ["detector", "embedder", "writer"]
        node = ray.get_runtime_context().get_node_id()
        assert all(row["node_id"] == node and row["pid"] > 0
                   for rows in pools.values() for row in rows), pools
        # add a camera at run time, refuse a bad one, remove one
        assert _send(f"{base}/cameras", "POST", camera | {"name": "b"})[0] == 201
        code, err = _send(f"{base}/cameras", "POST", camera | {"name": "b"})
        assert code == 400 and "already exists" in err["error"]
        code, err = _send(f"{base}/cameras", "POST", {"name": "c", "url": "x", "fps": 3})
        assert code == 400 and "fps" in err["error"]
        assert wait_until(lambda: camera_count(sup, "b", "frames_processed") > 0, 60)
        assert _send(f"{base}/cameras/a", "DELETE")[0] == 200
        assert _send(f"{base}/cameras/a", "DELETE")[0] == 404
        assert sorted(json.loads(http_get(f"{base}/cameras")[1])) == ["b"]
        # a pool whose retirement is due stays while a camera still embeds with it
        live_pool, due = list(sup.embedders), time.monotonic()
        sup._retiring.append((due, live_pool))
        sup._retire_due()
        assert sup._retiring == [(due, live_pool)]
        assert ray.get(live_pool[0].info.remote(), timeout=30)[0] == sup.live.model_id
        sup._retiring.clear()
        # a camera actor that dies is replaced by the supervisor's check
        _, actor = sup._cameras["b"]
        ray.kill(actor, no_restart=True)
        assert wait_until(lambda: isinstance(sup.status(timeout_s=2)["b"], str), 30)
        server.invalidate()  # past the cached snapshot: healthz sees the dead camera
        assert http_get(f"{base}/healthz")[0] == 503
        assert sup.check() == ["b"]
        assert wait_until(lambda: camera_count(sup, "b", "frames_processed") > 0, 60)
        assert sup.restarts() == {"b": 1}
    finally:
        server.shutdown()
        sup.stop()


def test_the_ui_shows_serve_cameras_live_and_adds_and_removes_them(
    ray_local, tiny_video: Path, tmp_path
) -> None:
    """The API linked to a running serve (api.serve_url): its cameras page reads each camera's
    live report, and a key allowed to manage cameras adds and removes them through serve."""
    pytest.importorskip("fastapi", reason="the API extra is not installed")
    import httpx

    from refind.app.api import create_app
    from tests.app.api_server import Server, sha

    need_models()
    camera = {"name": "a", "url": str(tiny_video), "realtime": True, "loop": True,
              "sample_fps": 5}
    live_cfg = {"data_dir": str(tmp_path), "cameras": [camera],
                "ray": {"detector_num_cpus": 0, "embedder_num_cpus": 0}}
    sup = Supervisor(parse_config(live_cfg))
    sup.start()
    server = start_http(sup, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    keys = [{"name": "admin", "key_sha256": sha("admin-key"), "manage_cameras": True},
            {"name": "viewer", "key_sha256": sha("viewer-key")}]
    # the test cameras are files on this machine: allowed here, refused by default
    api_cfg = parse_config(live_cfg | {"api": {"keys": keys, "serve_url": base,
                                               "camera_url_schemes": ["file", "rtsp"]}})
    try:
        assert wait_until(lambda: camera_count(sup, "a", "frames_processed") > 0, 60)
        with Server(create_app(api_cfg)) as api, httpx.Client(base_url=api.url,
                                                              timeout=60) as c:
            assert c.post("/login", data={"key": "admin-key"}).status_code == 303
            status = c.get("/v1/cameras/status").json()
            (row,) = status["cameras"]
            assert status["live_link"] and row["camera"] == "a" and row["state"] == "live"
            assert row["rate_fps"] > 0 and row["frames_in"] > 0
            page = c.get("/cameras").text
            assert 'class="state state-live">live' in page and 'id="add-camera"' in page
            added = c.post("/cameras/add", data={"name": "b", "url": str(tiny_video),
                                                 "sample_fps": "5"})
            assert added.status_code == 303 and added.headers["location"] == "/cameras?added=b"
            assert "Added camera b" in c.get("/cameras?added=b").text
            assert wait_until(lambda: "b" in sup.status(), 30)
            again = c.post("/cameras/add", data={"name": "b", "url": str(tiny_video)})
            assert again.status_code == 400 and "already exists" in again.text  # serve's words
            refused = c.post("/cameras/add", data={"name": "c", "url": "rtsp://127.0.0.1/x"})
            assert refused.status_code == 400 and "internal address" in refused.text
            assert c.post("/cameras/a/remove").status_code == 303
            assert "a" not in sup.status()
            viewer = httpx.Client(base_url=api.url, timeout=60)
            assert viewer.post("/login", data={"key": "viewer-key"}).status_code == 303
            refused = viewer.delete("/v1/cameras/b")
            assert refused.status_code == 403 and "manage_cameras" in refused.json()["error"]
            assert "b" in sup.status()
        server.shutdown()
        # serve gone: the page says so and still shows what is stored
        with Server(create_app(api_cfg)) as api, httpx.Client(base_url=api.url,
                                                              timeout=60) as c:
            c.post("/login", data={"key": "admin-key"})
            page = c.get("/cameras").text
            assert "did not answer" in page
    finally:
        server.shutdown()
        sup.stop()
