"""What the API tests share: their keys, config and a uvicorn server on a free loopback port.

The fixtures built on it (``gallery``, ``server``) are in ``tests/actors/conftest.py``.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path

import uvicorn

from tests.conftest import MODELS_DIR

KEYS = {"desk": "desk-secret-1", "other": "other-secret-2", "pets-only": "pets-secret-3"}
SCOPES = {"desk": [], "other": ["other"], "pets-only": ["pets"]}
MAX_UPLOAD_MB = 2


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_configs() -> list[dict[str, object]]:
    """``api.keys`` entries of every key in KEYS, scoped by SCOPES."""
    return [{"name": n, "key_sha256": sha(k), "cameras": SCOPES[n]} for n, k in KEYS.items()]


def api_config(data_dir: Path, **api: object) -> dict[str, object]:
    return {
        "data_dir": str(data_dir),
        "models": {"dir": str(MODELS_DIR), "allow_download": False},
        # the API tests search and sign in far faster than operators: no rate limits unless a
        # test sets them
        "api": {"max_upload_mb": MAX_UPLOAD_MB, "searches_per_min": 0, "key_failures_per_min": 0,
                **api},
    }


class Server:
    """The API app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: object) -> None:
        # proto IPPROTO_TCP, as uvicorn's own sockets have: asyncio then sets TCP_NODELAY (else
        # Nagle and delayed ACKs add 40 ms to every keep-alive request)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, args=([self.sock],), daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
