"""Shared builders and locations for refind's tests, and the kinds of test.

Every test is one of three kinds (README, "Tests"), marked here when it is collected:

- ``unit``: no Ray, no servers, no footage and no weights beyond the small ones (tiny random
  models, our own committed heads): ``pytest -m unit`` runs them alone, in under 2 minutes;
- ``integration``: real Ray, Kafka (Tansu), Redis or test cameras (the fixtures that start them
  mark the test);
- ``slow``: real models over real footage (marked in their files, or by the ``model_store`` and
  ``pets_video`` fixtures).
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

# Fixtures: live cameras (tests.cameras); real Kafka (Tansu) and Redis servers (tests.servers).
pytest_plugins = ["tests.servers", "tests.cameras"]  # servers first: cameras imports it

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / "../shared").resolve()
MODELS_DIR = SHARED / "models"
PETS_DIR = SHARED / "data" / "pets09-s2l1"
PETS_VIDEO = PETS_DIR / "vtest.avi"
PETS_GT = PETS_DIR / "gt.txt"
PETS_GT_SCALE = 480 / 768

# The detector of the tests of serving, faults, storage and the UI, which need real people found
# but do not measure how well: the default's OpenVINO runner with person-detection-0200
# (256x256). On this 2-core machine its whole ingest of PETS09-S2L1 ran at 26.8 frames/s against
# the default person-detection-0202's 18.7 (bench/ingest_fps.py, 2026-12-07), and a live camera
# costs its neighbours less CPU. The tests that guard tracking quality, the demo and the plain
# CLI run keep the default (tests/evaluation/test_mot.py, tests/app/test_demo.py,
# tests/app/test_cli_end_to_end.py); the evaluation commands' own tests check their plumbing
# and loose bounds only, on this detector.
LIGHT_DETECTOR = {"model": "person-detection-0200"}


def light_config(folder: Path) -> Path:
    """A config file in ``folder`` that sets only ``LIGHT_DETECTOR`` (for a CLI's --config)."""
    path = folder / "light.yaml"
    path.write_text(f"detector: {json.dumps(LIGHT_DETECTOR)}\n")
    return path


def need_models() -> None:
    if not (MODELS_DIR / "yolox_nano.onnx").is_file():
        pytest.skip(f"pretrained weights not found in {MODELS_DIR} (../shared/models)")


def need_pets() -> None:
    if not PETS_VIDEO.is_file() or not PETS_GT.is_file():
        pytest.skip(f"PETS09-S2L1 clip and ground truth not found in {PETS_DIR}")


def pets_gt_boxes(frame: int) -> dict[int, np.ndarray]:
    """Considered ground-truth boxes of 1-based frame ``frame`` in video pixels, by identity."""
    rows = np.loadtxt(PETS_GT, delimiter=",")
    rows = rows[(rows[:, 0] == frame) & (rows[:, 6] != 0)]
    return {
        int(r[1]): np.array([r[2], r[3], r[2] + r[4], r[3] + r[5]]) * PETS_GT_SCALE for r in rows
    }


def http_get(url: str) -> tuple[int, bytes]:
    """(status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def camera_count(sup: object, camera: str, counter: str) -> int:
    """A counter of ``camera``'s report from a live ``Supervisor``, or -1 while the camera does
    not answer (``status`` gives a string then: a camera starting or switching on a busy
    machine), so a ``wait_until`` predicate waits instead of failing."""
    report = sup.status()[camera]  # type: ignore[attr-defined]
    return -1 if isinstance(report, str) else int(getattr(report, counter))


def answered_count(sup: object, camera: str, counter: str, timeout_s: float = 60.0) -> int:
    """``camera_count`` once the camera answers; fails with the status after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (n := camera_count(sup, camera, counter)) < 0:
        assert time.monotonic() < deadline, sup.status()  # type: ignore[attr-defined]
        time.sleep(0.5)
    return n


@pytest.fixture(scope="module")
def one_thread():
    """For tests of tiny tensors: torch's worker threads only spin on a shared, busy CPU (a
    module of them ran ~10x slower with the default thread count)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_store():
    from refind.models.store import ModelStore

    need_models()
    return ModelStore([MODELS_DIR], REPO / ".pytest_cache" / "models", allow_download=False)


@pytest.fixture(scope="session")
def pets_video() -> Path:
    need_pets()
    return PETS_VIDEO


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2 s, 10 fps, 64x48 H.264 clip written with PyAV (frame i is grey level 10 i)."""
    import av

    path = tmp_path_factory.mktemp("video") / "tiny.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            img = np.full((48, 64, 3), i * 10, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """A real HTTP server for the files in ``root`` on a free loopback port; yields its URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray for every integration test that needs it (loopback only, no auth)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[live]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="refind-tests")
    yield
    ray.shutdown()


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], object]) -> Path:
    """A folder that ``build(folder)`` fills once per test run, whichever pytest-xdist worker
    asks first; the others wait for it and get the same folder. Read it, or copy it before
    changing it. (Three modules ingested the same 150 PETS frames, ~35 s each.)"""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder = root / f"built-{name}"
    with (root / f"built-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed half way
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


# The whole suite runs on two pytest-xdist workers (scripts/test.sh: `-n 2`). Each module stays
# on one worker, so its module fixtures are built once. The modules that start Ray (a fixture's
# cluster, `refind serve` or `refind reindex`, `ray start`) carry this mark and share one
# worker, one after another: two Ray clusters starting at once on two cores can miss Ray's
# fixed 30 s wait for its raylet. (`--dist loadgroup` would read the mark itself, but
# pytest-xdist 3.8 cannot rename tests under pytest 9.2, so the scheduler below does it.)
STARTS_RAY = pytest.mark.xdist_group("ray")


def _starts_ray(module: Path) -> bool:
    """Does ``module`` set ``pytestmark`` with ``STARTS_RAY`` on one line? (The scheduler runs
    before any test is collected, so it reads the mark from the source.)"""
    return any(line.startswith("pytestmark") and "STARTS_RAY" in line
               for line in module.read_text().splitlines())


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook, unknown without it
def pytest_configure(config: pytest.Config) -> None:
    """On a pytest-xdist worker: torch's CPU threads are the cores over the workers (one each
    on this 2-core machine). Torch's threads spin while they wait, so a worker whose torch ran
    on both cores beside another busy worker ran ~3x slower: the IRM training test took 90 s
    against 27 s with one thread, beside one busy process (2026-12-07). A single-process run
    keeps torch's default; subprocesses and Ray actors keep theirs."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """pytest-xdist's per-file scheduling, with every module marked ``STARTS_RAY`` in one scope."""
    from functools import cache

    from xdist.scheduler import LoadScopeScheduling

    starts_ray = cache(_starts_ray)

    class ByModuleRayTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "ray" if starts_ray(config.rootpath / module) else module

    config.option.loadscopereorder = False  # in collection order: Ray's long unit starts first
    return ByModuleRayTogether(config, log)


# Fixtures that start a server, Ray or a camera, and fixtures that bring real weights or footage.
INTEGRATION_FIXTURES = frozenset({
    "ray_local", "tansu", "redis_server", "rtsp_camera_factory", "http_camera_factory",
    "http_camera",
})
SLOW_FIXTURES = frozenset({"model_store", "pets_video"})


# What a test (or a fixture it uses) calls when it needs ../shared's weights or footage, or a
# server of its own.
SLOW_CALLS = ("need_models(", "need_pets(", "PETS_VIDEO", "INTEL_VIDEO", "ingest_small_gallery(",
              "shared_small_gallery(")
INTEGRATION_CALLS = ("ffmpeg", "serve_directory(", "rtsp_server")


def _sources(item: pytest.Item) -> str:
    """The source of a test function and of every fixture it uses."""
    import inspect

    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        funcs += [d.func for d in defs]
    texts = []
    for f in funcs:
        try:
            texts.append(inspect.getsource(f))  # type: ignore[arg-type]
        except (OSError, TypeError):
            continue
    return "\n".join(texts)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its kind (module docstring); ``unit`` is what is neither."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        source = _sources(item)
        if names & INTEGRATION_FIXTURES or any(c in source for c in INTEGRATION_CALLS):
            item.add_marker(pytest.mark.integration)
        if names & SLOW_FIXTURES or any(c in source for c in SLOW_CALLS):
            item.add_marker(pytest.mark.slow)
        if not any(item.get_closest_marker(k) for k in ("integration", "slow")):
            item.add_marker(pytest.mark.unit)
        if "ray_local" in names and not _starts_ray(item.path):  # what the scheduler reads
            raise pytest.UsageError(f"{item.nodeid} starts Ray: mark its module with STARTS_RAY")
