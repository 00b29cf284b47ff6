"""refind.models.base.crops_to_batch: big batches resize on threads, with the same pixels and errors."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import refind.models.base as base
from refind.models.base import PARALLEL_RESIZE_MIN, ModelInputError, crops_to_batch

THREE = 3  # resize threads asked for, whatever the machine's CPU count (one CPU: no pool)


def varied_crops(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (int(rng.integers(20, 300)), int(rng.integers(10, 150)), 3), np.uint8)
        for _ in range(n)
    ]


def test_a_threaded_batch_equals_the_crops_resized_one_by_one(monkeypatch) -> None:
    crops = varied_crops(PARALLEL_RESIZE_MIN * 2 + 3)
    threads: set[str] = set()
    resize = cv2.resize

    def spy(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return resize(*args, **kwargs)

    pools = []
    make_pool = base._resize_pool
    monkeypatch.setattr(base, "_resize_pool", lambda n: pools.append(n) or make_pool(n))
    monkeypatch.setattr(base.cv2, "resize", spy)
    batch = crops_to_batch(crops, (256, 128), "crop", resize_threads=THREE)
    # split for a pool of three (a free worker may take two parts, so not always three threads),
    # resized on the pool's threads, never on the caller's
    assert pools == [THREE] and threads and all(t.startswith("resize") for t in threads)
    monkeypatch.setattr(base.cv2, "resize", resize)
    assert batch.shape == (len(crops), 3, 256, 128) and batch.dtype == np.float32
    for i, crop in enumerate(crops):  # each row is its own crop, in order
        want = cv2.resize(crop, (128, 256), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        np.testing.assert_array_equal(batch[i], want)
    small = crops_to_batch(crops[:5], (256, 128), "crop")  # below the threshold: one thread
    np.testing.assert_array_equal(small, batch[:5])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((40, 20), np.uint8), "crop 70 must be"),
        (np.zeros((1, 9, 3), np.uint8), "crop 70 is too small"),
    ],
)
def test_a_bad_crop_in_a_big_batch_is_named_before_any_resize(bad, message, monkeypatch) -> None:
    crops = varied_crops(PARALLEL_RESIZE_MIN + 10)
    crops[70] = bad
    calls = []
    monkeypatch.setattr(base.cv2, "resize", lambda *a, **k: calls.append(1))
    with pytest.raises(ModelInputError, match=message):
        crops_to_batch(crops, (256, 128), "crop")
    assert calls == []


def test_first_big_batches_of_several_threads_share_one_pool(monkeypatch) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    made = []

    class SlowToMake(ThreadPoolExecutor):  # widens the window in which a race would show
        def __init__(self, *args, **kwargs) -> None:
            made.append(1)
            time.sleep(0.05)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(base, "ThreadPoolExecutor", SlowToMake)
    monkeypatch.setattr(base, "_pools", {})
    crops = varied_crops(PARALLEL_RESIZE_MIN)
    callers = [threading.Thread(target=crops_to_batch, args=(crops, (256, 128), "c"),
                                kwargs={"resize_threads": THREE}) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(made) == 1 and list(base._pools) == [(os.getpid(), 3)]
    base._pools[(os.getpid(), 3)].shutdown()


# Run in a fresh interpreter: forked from a pytest-xdist worker that had started Ray, the child
# never exited and hung CI for 13 min on 2026-12-07 (py-spy: in CPython's concurrent.futures
# exit hook; most likely a pool lock one of Ray's threads held at the fork). Here the parent
# holds only refind's own resize pool, which is what is tested.
FORKED_CHILD = """
import multiprocessing, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from tests.models.test_crops_to_batch import THREE, varied_crops
from refind.models.base import PARALLEL_RESIZE_MIN, crops_to_batch
crops = varied_crops(PARALLEL_RESIZE_MIN)
want = crops_to_batch(crops, (256, 128), "crop", resize_threads=THREE)  # the parent's pool
with multiprocessing.get_context("fork").Pool(1) as pool:
    got = pool.apply_async(crops_to_batch, (crops, (256, 128), "crop"),
                           {"resize_threads": THREE}).get(timeout=60)
np.testing.assert_array_equal(got, want)
print("same batch in the child")
"""


def test_a_forked_child_resizes_big_batches_too() -> None:
    """The parent's pool threads do not exist in a fork: the child must not wait on them."""
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", FORKED_CHILD, repo], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0 and "same batch in the child" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize(("setting", "cpus", "expected"), [
    (3, 32, 3), (1, 32, 1), (64, 2, 64),  # a setting is taken as it is
    (0, 3, 3), (0, 32, base.PARALLEL_RESIZE_THREADS),  # 0: the usable CPUs, at most the cap
])
def test_resize_threads_setting(monkeypatch, setting: int, cpus: int, expected: int) -> None:
    monkeypatch.setattr(base, "usable_cpus", lambda: cpus)
    assert base.resize_workers(setting) == expected


def test_a_negative_resize_threads_is_refused() -> None:
    with pytest.raises(ModelInputError, match="resize_threads must be >= 0"):
        crops_to_batch(varied_crops(PARALLEL_RESIZE_MIN), (256, 128), "crop", resize_threads=-1)


@pytest.mark.parametrize(("cpu_max", "cap"), [("50000 100000\n", 1), ("150000 100000\n", 2),
                                              ("max 100000\n", None)])  # fmt: skip
def test_a_cgroup_cpu_quota_caps_the_cpus(tmp_path, monkeypatch, cpu_max: str, cap) -> None:
    limit = tmp_path / "cpu.max"
    limit.write_text(cpu_max)
    monkeypatch.setattr(base, "CGROUP_CPU_MAX", limit)
    base.usable_cpus.cache_clear()
    try:
        affinity = len(os.sched_getaffinity(0))
        assert base.usable_cpus() == (affinity if cap is None else min(cap, affinity))
    finally:
        base.usable_cpus.cache_clear()
