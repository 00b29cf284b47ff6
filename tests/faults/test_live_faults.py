"""Faults inside the live graph: kill -9 of each actor kind mid-stream, then a Redis and a Kafka
broker restart, one after another in one `refind serve` loop with a real camera (PETS09-S2L1 over
HTTP MPEG-TS), Kafka (Tansu) and Redis. After each fault: service again, and in the end every
crop recorded before a fault is in the gallery exactly once (tests/faults/conftest.py)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time

import pytest

from refind.indexer.verify import check_gallery
from refind.streaming.events import CropEvent, topic_for
from tests.actors.test_live_ingest import _config, _consume, _pid
from tests.conftest import PETS_VIDEO, STARTS_RAY, need_models, need_pets
from tests.faults.conftest import LiveRun

pytestmark = [pytest.mark.slow, STARTS_RAY]


def _camera_pid(run: LiveRun) -> int | None:
    report = run.sup.status(timeout_s=5).get("pets")
    return None if isinstance(report, str) or report is None else report.pid


def _kill(pid: int | None) -> None:
    assert pid, "the actor did not say its process"
    os.kill(pid, signal.SIGKILL)


def _event_counts(sup) -> list[dict]:
    """Each writer's event counters (published, sent, failed), to say where events stopped."""
    return [{k: v for k, v in w.items() if k.startswith("events")}
            for w in sup.pool_stats()["writer"]]


def _crops_since(run: LiveRun, n: int) -> bool:
    return len(run.recorded()) > n


def test_kill_each_actor_kind_then_restart_redis_and_kafka(
    ray_local, http_camera_factory, tansu, redis_server, tmp_path, fault_table
) -> None:
    need_models()
    need_pets()
    from refind.indexer.config import RedisMetadataConfig
    from refind.indexer.redis_meta import RedisMetadata

    cam = http_camera_factory(PETS_VIDEO)
    cfg = _config(tmp_path, {"pets": cam.url}, tansu.bootstrap, redis_server.url)
    seen: list = []
    stop = threading.Event()
    run = LiveRun(cfg)
    reader = threading.Thread(target=_consume,
                              args=(tansu.bootstrap, [topic_for(CropEvent)], stop, seen))
    reader.start()
    try:
        sup = run.sup
        run.wait_for_crops(5)

        def actor_fault(name: str, pid_of) -> None:
            run.wait_for_crops(3)  # mid-stream
            old = pid_of()
            n = len(run.recorded())
            run.inject(f"kill -9 {name}", lambda: _kill(old),
                       lambda: pid_of() not in (None, old) and _crops_since(run, n))

        actor_fault("camera actor", lambda: _camera_pid(run))
        actor_fault("detector actor", lambda: _pid(sup.detectors[0]))
        actor_fault("embedder actor", lambda: _pid(sup.embedders[0]))
        actor_fault("index writer actor", lambda: _pid(sup.writers[0]))
        actor_fault("identity actor", lambda: _pid(sup.identity))

        # Redis restarted (no persistence: it comes back empty); refind writes to it again
        meta = RedisMetadata(RedisMetadataConfig(url=redis_server.url))
        run.wait_for_crops(3)
        n = len(run.recorded())

        def redis_back() -> bool:
            try:
                return bool(meta.tracks("pets")) and _crops_since(run, n)
            except Exception:
                return False

        run.inject("Redis restart", lambda: (redis_server.stop(), time.sleep(3),
                                             redis_server.start()), redis_back)
        # the Kafka broker restarted: crop events wait in the producers, then arrive
        run.wait_for_crops(3)

        def events_sent() -> int:  # a writer that does not answer counts none
            return sum(w.get("events_sent", 0) for w in sup.pool_stats()["writer"])

        sent = events_sent()

        def kafka_back() -> bool:
            return events_sent() > sent

        from refind.streaming.bus import ensure_topics

        down: list[set] = []

        def kafka_down_and_up() -> None:
            tansu.stop()
            down.append(run.recorded())  # after this, nothing can have been acknowledged
            time.sleep(3)
            tansu.start()
            ensure_topics(cfg.kafka)  # Tansu's memory storage forgets its topics

        run.inject("Kafka broker restart", kafka_down_and_up, kafka_back)
        run.wait_for_crops(3)
        # every crop recorded once the broker was down reaches a consumer: its event waited in
        # the producer (ones acknowledged just before the stop may be forgotten by Tansu's
        # memory storage, which Apache Kafka would keep: tests/actors/test_live_ingest.py)
        since = run.recorded() - down[0]
        assert since

        def consumed() -> set:
            return {(e.camera, e.track_id, e.frame_index, e.ts_ns) for e in list(seen)
                    if isinstance(e, CropEvent)}

        # the consumer's group rejoins the restarted broker first: slower on a loaded machine
        # (the suite on two workers), as in tests/actors/test_live_ingest.py
        deadline = time.monotonic() + 180
        while since - consumed():
            assert time.monotonic() < deadline, (
                f"{len(since - consumed())} crop events unseen; writers: {_event_counts(sup)}")
            time.sleep(0.5)
    finally:
        run.stop()
        stop.set()
        reader.join(timeout=10)
    run.account(fault_table)


def _mount_tmpfs(path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk fault (needs root): {done.stderr}")


def _fill(path) -> None:
    """Take every byte left on the filesystem of ``path``."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC, err


def test_crop_store_disk_full_then_freed(ray_local, http_camera_factory, tmp_path,
                                         fault_table) -> None:
    need_models()
    need_pets()
    cam = http_camera_factory(PETS_VIDEO)
    cfg = _config(tmp_path, {"pets": cam.url}, None, None)
    crops_dir = cfg.data_dir / "crops"
    _mount_tmpfs(crops_dir, "16m")
    filler = crops_dir / "filler"
    try:
        run = LiveRun(cfg)
        try:
            run.wait_for_crops(5)
            failed_before = run.sup.status()["pets"].crops_failed
            _fill(filler)

            def failing() -> bool:
                report = run.sup.status()["pets"]
                return not isinstance(report, str) and report.crops_failed > failed_before

            full = run.inject("crop store's disk full", lambda: None, failing, timeout_s=60)
            assert full.recovery_s is not None, "no store failed on a full disk"
            time.sleep(3)  # full for a while
            n = len(run.recorded())
            freed = run.inject("crop store's disk freed again", filler.unlink,
                               lambda: _crops_since(run, n) and "200" in run.health())
            report = run.sup.status()["pets"]
            lost_while_full = report.crops_failed - failed_before
            run.wait_for_crops(3)
        finally:
            run.stop()
        rows = run.rows()
    finally:
        subprocess.run(["umount", "-l", str(crops_dir)], check=False)
    # one row: full, then freed; what was chosen while full is named and counted, never
    # half-stored
    seen = f"{full.seen}; after freeing: {freed.seen}".replace(str(cfg.data_dir), "DATA_DIR")
    row = rows[0]
    row.fault = "crop store's disk full (a tmpfs), then space freed"
    row.recovery_s = freed.recovery_s
    row.duplicates += rows[1].duplicates
    row.seen = (f"{seen}. {lost_while_full} crops chosen while it was full were refused "
                "(counted in refind_camera_crops_failed_total, logged at ERROR)")
    fault_table.add(row)
    assert "No space left on device" in full.seen, full.seen
    assert freed.recovery_s is not None, freed
    assert all(r.lost == 0 and r.duplicates == 0 for r in rows), rows
    assert check_gallery(run.cfg).ok, check_gallery(run.cfg).summary()
