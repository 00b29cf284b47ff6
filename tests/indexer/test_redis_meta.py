"""RedisMetadata against a real redis-server (tests.servers), including a restart."""

from __future__ import annotations

import threading
import time

import pytest

from refind.indexer.config import RedisMetadataConfig
from refind.indexer.redis_meta import (
    CameraCounters,
    MetadataUnavailable,
    RedisMetadata,
    TrackMeta,
    VectorRef,
)


@pytest.fixture
def meta(redis_server):
    cfg = RedisMetadataConfig(type="redis", url=redis_server.url, key_prefix="t1",
                              socket_timeout_s=1.0, retries=3, retry_backoff_max_s=0.2)
    m = RedisMetadata(cfg)
    yield m
    m.close()


def test_camera_registry_and_status(meta):
    meta.register_camera("gate", "rtsp://cam/gate")
    meta.register_camera("lobby", "file.mp4")
    meta.set_camera_status("gate", "live", "", CameraCounters(frames_in=10, frames_dropped=2))
    meta.register_camera("gate", "rtsp://cam/gate2")  # new URL keeps the status
    gate, lobby = meta.cameras()
    assert (gate.name, gate.url, gate.state, gate.counters) == (
        "gate", "rtsp://cam/gate2", "live", CameraCounters(10, 2, 0))
    assert (lobby.name, lobby.state, lobby.counters) == ("lobby", "stopped", CameraCounters())
    assert gate.updated_ns >= gate.registered_ns > 0

    meta.set_camera_status("gate", "reconnecting", "EOF")  # counters left as they were
    assert meta.cameras()[0].message == "EOF" and meta.cameras()[0].counters.frames_in == 10
    assert meta.remove_camera("gate") is True
    assert meta.remove_camera("gate") is False
    assert [c.name for c in meta.cameras()] == ["lobby"]
    with pytest.raises(ValueError, match="camera 'gate' is not registered"):
        meta.set_camera_status("gate", "live")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.register_camera("gate 1", "x"), "camera name must match"),
        (lambda m: m.register_camera("gate", ""), "url must not be empty"),
        (lambda m: m.set_camera_status("gate", "napping"), "unknown camera state 'napping'; "
         "valid: connecting, live, reconnecting, stopped, failed"),
        (lambda m: m.upsert_track("gate", 1, 5, 4, 0, None, "ended"), "end_ts_ns 4 is before"),
        (lambda m: m.upsert_track("gate", 1, 1, 4, 0, None, "gone"),
         "unknown track state 'gone'; valid: active, ended"),
        (lambda m: m.upsert_track("gate", -1, 1, 4, 0, None, "active"), "must be >= 0"),
        (lambda m: m.map_vectors([1, -2], "gate", 1, 0), r"vector ids must be >= 0, got \[-2\]"),
    ],
)
def test_bad_values_are_refused(meta, call, message):
    with pytest.raises(ValueError, match=message):
        call(meta)


def test_tracks_by_start_time(meta):
    meta.upsert_track("gate", 7, 300, 400, 0, None, "active")
    meta.upsert_track("gate", 2, 100, 900, 3, "crops/gate/2/1.jpg", "ended")
    meta.upsert_track("lobby", 7, 5, 6, 1, "x.jpg", "ended")
    meta.upsert_track("gate", 7, 300, 500, 1, "crops/gate/7/0.jpg", "ended")  # replaces
    assert [t.track_id for t in meta.tracks("gate")] == [2, 7]
    t = meta.track("gate", 7)
    assert t == TrackMeta("gate", 7, 300, 500, 1, "crops/gate/7/0.jpg", "ended", t.updated_ns)
    assert meta.track("gate", 3) is None
    assert meta.tracks("yard") == []


def test_vector_mappings_per_shard(meta):
    meta.map_vectors([0, 1, 2], "gate", 7, shard=0)
    meta.map_vectors([0, 5], "lobby.2", 3, shard=1)
    meta.map_vectors([], "gate", 8, shard=0)
    assert meta.lookup_vectors([2, 9, 0], shard=0) == [
        VectorRef(2, "gate", 7, 0), None, VectorRef(0, "gate", 7, 0)]
    assert meta.lookup_vectors([0], shard=1) == [VectorRef(0, "lobby.2", 3, 1)]
    assert meta.lookup_vectors([], shard=0) == []


def test_key_prefix_separates_deployments(meta, redis_server):
    other = RedisMetadata(RedisMetadataConfig(type="redis", url=redis_server.url, key_prefix="t2"))
    meta.register_camera("gate", "a")
    assert other.cameras() == []
    other.close()


def test_survives_a_redis_restart(meta, redis_server):
    meta.register_camera("gate", "rtsp://cam/gate")
    assert meta.ping()
    redis_server.stop()

    t0 = time.monotonic()
    with pytest.raises(MetadataUnavailable, match=r"Redis at redis://127.0.0.1:\d+/0 unavailable "
                       r"for upsert_track\('gate', 1\) after 3 retries"):
        meta.upsert_track("gate", 1, 0, 10, 1, "c.jpg", "active")
    waited = time.monotonic() - t0
    assert waited < 3.0, f"an outage took {waited:.2f} s to report"
    with pytest.raises(MetadataUnavailable):
        meta.cameras()
    assert meta.ping() is False

    redis_server.start()  # no persistence: it comes back empty
    meta.upsert_track("gate", 1, 0, 10, 1, "c.jpg", "active")  # the caller's retry
    assert meta.track("gate", 1).n_crops == 1
    with pytest.raises(ValueError, match="not registered"):  # the cue to register again
        meta.set_camera_status("gate", "live")
    meta.register_camera("gate", "rtsp://cam/gate")
    meta.set_camera_status("gate", "live")  # the status script is loaded again
    assert [c.state for c in meta.cameras()] == ["live"]


def test_password_is_not_in_errors():
    cfg = RedisMetadataConfig(type="redis", url="redis://user:s3cret@127.0.0.1:1/0",
                              socket_timeout_s=0.2, retries=0)
    with pytest.raises(MetadataUnavailable) as err:
        RedisMetadata(cfg).cameras()
    assert "s3cret" not in str(err.value) and "//***@127.0.0.1:1/0" in str(err.value)


def test_a_write_waits_out_a_short_restart(redis_server):
    """Within the retries, a restart is invisible to the caller."""
    cfg = RedisMetadataConfig(type="redis", url=redis_server.url, retries=5,
                              retry_backoff_max_s=0.5)
    meta = RedisMetadata(cfg)
    meta.register_camera("gate", "a")
    redis_server.stop()
    restart = threading.Timer(0.3, redis_server.start)
    restart.start()
    meta.register_camera("gate", "b")  # retried until the server is back
    restart.join()
    assert [c.url for c in meta.cameras()] == ["b"]
    meta.close()
