"""One local Ray for all integration tests that need it (loopback only, no auth in tests)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[live]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="refind-tests")
    yield
    ray.shutdown()
