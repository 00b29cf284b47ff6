"""Signals to refind's own processes: SIGTERM and SIGINT of `refind serve` (a clean stop that
flushes what was accepted, exit status 0, no stack dumps) and kill -9 of it (the supervisor),
three runs one after another on the same data; and SIGTERM and SIGINT of `refind api`. Each runs the real command in
a process of its own, on a camera serving PETS09-S2L1 over HTTP MPEG-TS."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from refind.config import load_config
from refind.indexer.verify import check_gallery, recorded_crops, serving_model_id, stored_crops
from refind.indexer.versions import serving_version
from tests.conftest import (
    LIGHT_DETECTOR,
    MODELS_DIR,
    PETS_VIDEO,
    STARTS_RAY,
    http_get,
    need_models,
    need_pets,
)
from tests.faults.conftest import FaultRow
from tests.servers import free_port

pytestmark = [pytest.mark.slow, STARTS_RAY]

DUMPS = ("SIGTERM received", "SIGINT received", "Traceback", "Fatal Python error")


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
            "PYTHONUNBUFFERED": "1"}


def _config(tmp: Path, url: str, port: int) -> Path:
    data = {
        "data_dir": str(tmp / "data"),
        "models": {"dir": str(MODELS_DIR)},
        "cameras": [{"name": "pets", "url": url, "sample_fps": 5}],
        "crops": {"early_after_s": 0.5},
        "ray": {"num_cpus": 2, "detector_num_cpus": 0, "embedder_num_cpus": 0},
        "serve": {"host": "127.0.0.1", "port": port, "save_interval_s": 1.0},
        "identities": {"enabled": False},
        "detector": LIGHT_DETECTOR,
    }
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Serve:
    """`refind serve --config C` in a session of its own (so a signal to its group is what a
    terminal's Ctrl-C sends), its output in a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.log = config, log
        self.cfg = load_config(config)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "refind.app.cli", "serve", "--config", str(config)],
                stdout=out, stderr=subprocess.STDOUT, env=env or _env(), start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def recorded(self) -> set:
        return set(recorded_crops(Path(self.cfg.data_dir))[0])

    def wait_for_crops(self, n: int, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.recorded()) < n:
            assert self.proc.poll() is None, f"refind serve exited:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"{n} crops not recorded:\n{self.output()[-3000:]}"
            time.sleep(0.5)

    def healthy(self) -> bool:
        try:
            return http_get(f"http://127.0.0.1:{self.cfg.serve.port}/healthz")[0] == 200
        except OSError:
            return False

    def signal(self, sig: signal.Signals, group: bool = False) -> None:
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 120) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            _kill_group(self.proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """Whatever the test left of the process's session (Ray's processes included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _row(name: str, serve: Serve, before: set, took: float | None, seen: str) -> FaultRow:
    stored = stored_crops(serving_version(serve.cfg).root, serving_model_id(serve.cfg))
    return FaultRow(name, len(before), sum(1 for k in before if k not in stored),
                    sum(1 for n in stored.values() if n > 1), took, seen)


@pytest.fixture
def camera_url(http_camera_factory) -> str:
    need_models()
    need_pets()
    return http_camera_factory(PETS_VIDEO).url


def _stop_cleanly(serve: Serve, sig: signal.Signals, group: bool, fault_table) -> None:
    """Signal a running serve; it must exit 0 with everything it recorded stored, no dumps."""
    serve.wait_for_crops(len(serve.recorded()) + 5)
    before = serve.recorded()
    t0 = time.monotonic()
    serve.signal(sig, group)
    try:
        code = serve.proc.wait(120)
    finally:
        serve.wait(10)
    took = time.monotonic() - t0
    out = serve.output()
    how = "to its process group (Ctrl-C)" if group else "to its process"
    last = [line for line in out.splitlines() if line.startswith("refind serve stopped")]
    fault_table.add(_row(f"{sig.name} of `refind serve` {how}", serve, before, took,
                         f"exit status {code} after {took:.1f} s; " + (last[-1] if last else
                                                                         "no stop line")))
    assert code == 0, out[-3000:]
    assert last and "every accepted crop stored and recorded" in last[-1], out[-3000:]
    assert not [d for d in DUMPS if d in out], out[-3000:]
    report = check_gallery(serve.cfg)
    assert report.ok and report.stored >= len(before), report.summary()


def test_serve_signals_and_a_hard_kill_on_the_same_data(camera_url, tmp_path,
                                                        fault_table) -> None:
    """SIGTERM stops a serve cleanly; a serve started again on its data is killed with -9 (and
    its Ray); a third starts on the same data, loses nothing, and stops cleanly on Ctrl-C."""
    config = _config(tmp_path, camera_url, free_port())
    _stop_cleanly(Serve(config, tmp_path / "serve-1.log"), signal.SIGTERM, False, fault_table)
    second = Serve(config, tmp_path / "serve-2.log")
    try:
        second.wait_for_crops(len(second.recorded()) + 5)
        before = second.recorded()
        t0 = time.monotonic()
        second.signal(signal.SIGKILL)
        second.proc.wait(30)
    finally:
        _kill_group(second.proc)  # Ray's processes go with it, as with a lost pod
    third = Serve(config, tmp_path / "serve-3.log")
    try:
        third.wait_for_crops(len(before) + 3)
        took = time.monotonic() - t0
        healthy = third.healthy()
        fault_table.add(_row("kill -9 of `refind serve` (the supervisor) and its Ray, then "
                             "restarted", third, before, took,
                             f"restart healthy: {healthy}; crops recorded again after "
                             f"{took:.1f} s (includes the restart)"))
        assert healthy, third.output()[-3000:]
        assert not [k for k in before if k not in stored_crops(
            serving_version(third.cfg).root, serving_model_id(third.cfg))]
        _stop_cleanly(third, signal.SIGINT, True, fault_table)
    finally:
        _kill_group(third.proc)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_api_stops_cleanly_on_a_signal(tmp_path, fault_table, sig) -> None:
    port = free_port()
    config = tmp_path / "api.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "models": {"dir": str(MODELS_DIR)},
        "api": {"host": "127.0.0.1", "port": port, "allow_anonymous": True}}))
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "refind.app.cli", "api", "--config",
                                 str(config)], stdout=out, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(30)
        took = time.monotonic() - t0
    finally:
        _kill_group(proc)
    out = log.read_text(errors="replace")
    fault_table.add(FaultRow(f"{sig.name} of `refind api`", None, 0, 0, None if code else took,
                             f"exit status {code} after {took:.1f} s"))
    assert code == 0, out[-3000:]
    assert not [d for d in DUMPS if d in out], out[-3000:]
