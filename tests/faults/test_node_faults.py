"""A Ray worker node lost mid-stream: a cluster of two nodes on this machine (`ray start --head`
and a second `ray start --address`, each in a session of its own), `refind serve` joined to it
with two cameras, two detectors, two embedders and two index writers spread over the nodes, then
every process of the second node killed with -9. The camera that ran there dies with it (it is
placed on that node only); the supervisor places a new one on the head node, which resumes; Ray
restarts the pool actors and the writer of the lost node on the head node (their files are on
storage both nodes see); every crop recorded before the loss is in the gallery once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from refind.indexer.verify import check_gallery
from tests.cameras import INTEL_VIDEO
from tests.conftest import (
    LIGHT_DETECTOR,
    MODELS_DIR,
    PETS_VIDEO,
    STARTS_RAY,
    http_get,
    need_models,
    need_pets,
)
from tests.faults.test_process_faults import Serve, _kill_group, _row
from tests.servers import free_port

pytestmark = [pytest.mark.slow, STARTS_RAY]

RAY = Path(sys.executable).with_name("ray")


def _cluster_env() -> dict[str, str]:
    # a cluster of several nodes needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, even on Linux
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "disabled"}


def _ray_node(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen([str(RAY), "start", "--block", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=_cluster_env(),
                                start_new_session=True)


def _alive_nodes(address: str) -> int:
    done = subprocess.run([str(RAY), "status", f"--address={address}"], capture_output=True,
                          text=True, env=_cluster_env(), timeout=60)
    block = done.stdout.split("Active:")[-1].split("Pending:")[0]
    return sum(1 for line in block.splitlines() if "node_" in line)


def _head_node(address: str) -> str:
    """The head node's id, asked by a driver of its own."""
    code = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
            "print([n['NodeID'] for n in ray.nodes() if n['Alive'] "
            "and 'node:__internal_head__' in n['Resources']][0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_cluster_env(), timeout=120)
    return done.stdout.strip().splitlines()[-1]


def _pool_nodes(port: int) -> dict[str, list[str | None]]:
    """The node of each pool actor and writer, from `refind serve`'s /actors (None: down)."""
    try:
        _, body = http_get(f"http://127.0.0.1:{port}/actors")
    except OSError:
        return {}
    pools = json.loads(body).get("pools", {})
    return {pool: [row.get("node_id") for row in rows] for pool, rows in pools.items()}


def _cameras(port: int) -> dict:
    try:
        code, body = http_get(f"http://127.0.0.1:{port}/cameras")
    except OSError:
        return {}
    return json.loads(body) if code == 200 else {}


def test_a_worker_node_lost_mid_stream(http_camera_factory, tmp_path, fault_table) -> None:
    need_models()
    need_pets()
    if not RAY.is_file():
        pytest.skip(f"the ray command is not installed beside {sys.executable}")
    address = f"127.0.0.1:{free_port()}"
    # a temp dir of its own keeps the cluster out of /tmp/ray/ray_current_cluster, which a
    # later `ray.init()` on this machine would try to join (short: Ray's socket paths)
    temp = Path(tempfile.mkdtemp(prefix="rf-ray-", dir="/tmp"))
    head = _ray_node(["--head", f"--port={address.split(':')[1]}", "--num-cpus=2",
                      "--include-dashboard=false", f"--temp-dir={temp}"], tmp_path / "head.log")
    node = None
    serve = None
    try:
        deadline = time.monotonic() + 60
        while _alive_nodes(address) < 1:
            assert time.monotonic() < deadline, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(1)
        node = _ray_node([f"--address={address}", "--num-cpus=1"], tmp_path / "node.log")
        while _alive_nodes(address) < 2:
            assert time.monotonic() < deadline, (tmp_path / "node.log").read_text()[-2000:]
            time.sleep(1)
        pets, intel = http_camera_factory(PETS_VIDEO), http_camera_factory(INTEL_VIDEO)
        port = free_port()
        config = tmp_path / "serve.yaml"
        config.write_text(yaml.safe_dump({
            "data_dir": str(tmp_path / "data"), "models": {"dir": str(MODELS_DIR)},
            "cameras": [{"name": "pets", "url": pets.url, "sample_fps": 5},
                        {"name": "intel", "url": intel.url, "sample_fps": 5}],
            "crops": {"early_after_s": 0.5},
            "ray": {"address": address, "detector_num_cpus": 0, "embedder_num_cpus": 0,
                    "detector_actors": 2, "embedder_actors": 2, "index_writers": 2},
            "serve": {"host": "127.0.0.1", "port": port, "save_interval_s": 1.0},
            "identities": {"enabled": False},
            "detector": LIGHT_DETECTOR,
            "live": {"reconnect": {"initial_backoff_s": 0.2, "max_backoff_s": 1.0}},
        }))
        serve = Serve(config, tmp_path / "serve.log", env=_cluster_env())
        serve.wait_for_crops(8)
        cams = _cameras(port)
        nodes = {c["node_id"] for c in cams.values()}
        assert len(nodes) == 2, f"the cameras did not spread over the two nodes: {cams}"
        head_node = _head_node(address)
        assert head_node in nodes, (head_node, nodes)
        pools = _pool_nodes(port)
        for pool in ("detector", "embedder", "writer"):
            assert set(pools[pool]) == nodes, f"the {pool}s did not spread: {pools}"
        lost = {name for name, c in cams.items() if c["node_id"] != head_node}
        before = serve.recorded()
        t0 = time.monotonic()
        os.killpg(node.pid, signal.SIGKILL)  # the node's raylet and every worker of it
        seen: list[str] = []

        def moved() -> bool:
            now = _cameras(port)
            states = ",".join(sorted(f"{n}:{c.get('state', 'not answering')}" for n, c in now.items()))
            if not seen or seen[-1] != states:
                seen.append(states)
            return all(now.get(n, {}).get("node_id") == head_node
                       and now[n].get("state") == "live" for n in lost)

        took = None
        while time.monotonic() - t0 < 120:
            if moved() and len(serve.recorded()) > len(before) + 3:
                took = time.monotonic() - t0
                break
            time.sleep(0.5)
        # the pool actors and the writer of the lost node answer again, from the head node
        pools_deadline = time.monotonic() + 60
        while time.monotonic() < pools_deadline:
            pools = _pool_nodes(port)
            if pools and all(n == head_node for rows in pools.values() for n in rows):
                break
            time.sleep(0.5)
        serve.signal(signal.SIGTERM)
        code = serve.wait(120)
    finally:
        for proc in (serve.proc if serve else None, node, head):
            if proc is not None:
                _kill_group(proc)
        shutil.rmtree(temp, ignore_errors=True)
    row = _row(f"kill -9 of a Ray worker node (its raylet and workers) running camera "
               f"{', '.join(sorted(lost))}", serve, before, took,
               "camera states: " + "; then ".join(seen)
               + f"; moved to the head node; serve's exit status {code}")
    fault_table.add(row)
    assert took is not None, seen
    assert pools and all(rows and all(n == head_node for n in rows)
                         for rows in pools.values()), pools
    assert code == 0, serve.output()[-3000:]
    assert row.lost == 0 and row.duplicates == 0, row
    report = check_gallery(serve.cfg)
    assert report.ok, report.summary()
