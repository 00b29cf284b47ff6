"""EventBus and EventConsumer against a real Tansu broker (tests.servers), outages included."""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid

import pytest

from refind.streaming.bus import _CONNECT_TIMEOUT_MS, BusError, EventBus, client_args, ensure_topics
from refind.streaming.config import KafkaConfig
from refind.streaming.consumer import EventConsumer, tail_events
from refind.streaming.events import (
    CameraStatusEvent,
    DetectionEvent,
    TrackEvent,
    decode,
    topic_for,
)
from tests.servers import free_port

log = logging.getLogger(__name__)

CAMERAS = ("gate", "lobby")
SESSION_S = 6.0  # Tansu lets a consumer join its group after half the session timeout


def _cfg(bootstrap: str, **kw) -> KafkaConfig:
    prefix = f"t{uuid.uuid4().hex[:8]}"  # fresh topics per test
    fields = {"linger_ms": 5, "delivery_timeout_s": 60.0} | kw
    return KafkaConfig(enabled=True, bootstrap_servers=bootstrap, topic_prefix=prefix, **fields)


def _detection(camera: str, seq: int) -> DetectionEvent:
    return DetectionEvent(camera=camera, ts_ns=seq, frame_index=seq)


class Reader:
    """Reads events on a thread, as a live consumer would, keeping every one it saw."""

    def __init__(self, cfg: KafkaConfig, group: str | None) -> None:
        topic = topic_for(DetectionEvent, cfg.topic_prefix)
        self.consumer = EventConsumer(cfg, [topic], group, session_timeout_s=SESSION_S)
        self.events: list[DetectionEvent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            got = self.consumer.poll(0.2)
            with self._lock:
                self.events.extend(got)

    def ids(self) -> set[str]:
        with self._lock:
            return {e.event_id for e in self.events}

    def wait_for(self, ids: set[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ids <= self.ids():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.consumer.close()


@pytest.mark.parametrize("group", [None, "group"])
def test_events_arrive_in_order_per_camera(tansu, group):
    cfg = _cfg(tansu.bootstrap, topic_partitions=2)
    with EventBus(cfg) as bus:
        assert bus.wait_connected(10)  # its topics exist before the reader looks for them
        reader = Reader(cfg, group and f"g-{uuid.uuid4().hex}")
        sent = [_detection(CAMERAS[i % 2], i) for i in range(200)]
        assert all(bus.publish(e) for e in sent)
        assert bus.flush(10)
        try:
            assert reader.wait_for({e.event_id for e in sent}, timeout_s=20)
        finally:
            reader.close()
        assert bus.stats().sent == 200 and bus.stats().failed == 0
    for camera in CAMERAS:
        seen = [e.frame_index for e in reader.events if e.camera == camera]
        assert seen == [e.frame_index for e in sent if e.camera == camera]


@pytest.mark.parametrize("group", [None, "group"])
def test_broker_restart_loses_no_accepted_event(tansu, group):
    """Publish at a steady rate through a broker restart that wipes the broker's log."""
    cfg = _cfg(tansu.bootstrap, topic_partitions=2)
    bus = EventBus(cfg)
    assert bus.wait_connected(10)
    reader = Reader(cfg, group and f"g-{uuid.uuid4().hex}")
    sent: list[DetectionEvent] = []

    def publish(n: int) -> None:
        for _ in range(n):
            event = _detection(CAMERAS[len(sent) % 2], len(sent))
            assert bus.publish(event)
            sent.append(event)
            time.sleep(0.005)

    t0 = time.monotonic()
    try:
        publish(150)
        # Memory storage forgets on restart: the reader must have what the broker held.
        assert reader.wait_for({e.event_id for e in sent}, timeout_s=20)
        tansu.stop()
        publish(50)  # accepted into the buffer while the broker is down
        tansu.start()
        # Tansu (memory storage) comes back empty, and a write to a topic it does not have is
        # acknowledged yet unreadable: re-create the topics at once, as its operator would.
        ensure_topics(cfg)
        publish(50)
        assert bus.flush(30), bus.stats()
        all_ids = {e.event_id for e in sent}
        reader.wait_for(all_ids, timeout_s=30)
    finally:
        reader.close()
        stats = bus.close()
    took = time.monotonic() - t0
    missing = all_ids - reader.ids()
    duplicates = len(reader.events) - len(reader.ids())
    log.info("restart test (group=%s): %.1f s, %s, %d duplicates", group, took, stats, duplicates)
    assert not missing, f"{len(missing)} accepted events never arrived; {stats}"
    assert reader.ids() == all_ids
    assert (stats.accepted, stats.sent, stats.failed) == (250, 250, 0)


def test_a_failed_offset_commit_does_not_stop_the_consumer(tansu):
    """After a broker restart the group may have forgotten the consumer when its automatic
    offset commit runs inside a poll: kafka-python raises CommitFailedError there (seen in a CI
    run of the live fault test, whose reader thread died of it). The fault is injected once at
    the library's poll, on a real broker and group; the consumer goes on reading."""
    from kafka.errors import CommitFailedError

    cfg = _cfg(tansu.bootstrap)
    with EventBus(cfg) as bus:
        assert bus.wait_connected(10)
        reader = Reader(cfg, f"g-{uuid.uuid4().hex}")
        try:
            first = [_detection("gate", i) for i in range(20)]
            assert all(bus.publish(e) for e in first) and bus.flush(10)
            assert reader.wait_for({e.event_id for e in first}, timeout_s=30)
            library = reader.consumer._consumer
            real_poll = library.poll

            def failing_once(*args, **kwargs):
                library.poll = real_poll
                raise CommitFailedError("UnknownMemberIdError (injected)")

            library.poll = failing_once
            then = [_detection("gate", i) for i in range(20, 40)]
            assert all(bus.publish(e) for e in then) and bus.flush(10)
            assert reader.wait_for({e.event_id for e in then}, timeout_s=30)
            assert reader.consumer.commit_failures == 1
        finally:
            reader.close()


def test_a_position_beyond_the_new_log_reads_it_from_the_beginning(tansu, monkeypatch):
    """Tansu answers a fetch beyond a partition's end with nothing (Apache Kafka says
    OffsetOutOfRange): a consumer that did not see the topic's new id would wait at its old
    offset until the new log grew past it. The read position alone must bring it back. (A
    consumer in a group comes back through its rejoin either way, so it could not fail here:
    test_broker_restart_loses_no_accepted_event covers groups.)"""
    monkeypatch.setattr(EventConsumer, "_rewind_recreated", lambda self: None)  # the other sign
    cfg = _cfg(tansu.bootstrap, topic_partitions=1)
    bus = EventBus(cfg)
    assert bus.wait_connected(10)
    reader = Reader(cfg, None)
    try:
        before = [_detection("gate", i) for i in range(60)]
        assert all(bus.publish(e) for e in before)
        assert reader.wait_for({e.event_id for e in before}, timeout_s=20)
        tansu.stop()
        tansu.start()
        ensure_topics(cfg)
        after = [_detection("gate", 100 + i) for i in range(10)]  # far fewer than before
        assert all(bus.publish(e) for e in after)
        assert bus.flush(30), bus.stats()
        want = {e.event_id for e in after}
        assert reader.wait_for(want, timeout_s=30), f"{len(want - reader.ids())} of 10 unseen"
    finally:
        reader.close()
        bus.close()


def test_bus_starts_while_broker_is_down(tansu):
    tansu.stop()
    cfg = _cfg(tansu.bootstrap)
    t0 = time.monotonic()
    bus = EventBus(cfg)
    events = [CameraStatusEvent(camera="gate", ts_ns=i, state="connecting") for i in range(20)]
    assert all(bus.publish(e) for e in events)
    # neither the constructor nor publish waits for Kafka: one wait for the broker that is down
    # would take a whole connection attempt, far longer than this bound (loaded machines too)
    assert time.monotonic() - t0 < _CONNECT_TIMEOUT_MS / 1000 / 2
    assert not bus.connected and not bus.wait_connected(0.1) and bus.stats().pending == 20
    tansu.start()
    assert bus.flush(20), bus.stats()
    assert bus.connected and bus.wait_connected(1)
    bus.close()
    out = io.StringIO()
    assert tail_events(cfg, "camera-status", None, max_events=20, timeout_s=10, out=out) == 20
    assert [decode(line) for line in out.getvalue().splitlines()] == events


def test_full_buffer_refuses_new_events_and_close_counts_the_rest(tansu):
    tansu.stop()
    bus = EventBus(_cfg(tansu.bootstrap, buffer_mb=1))
    big = "x" * 2000
    accepted = 0
    while bus.publish(CameraStatusEvent(camera="gate", ts_ns=0, state="failed", message=big)):
        accepted += 1
    assert 300 < accepted < 1024 * 1024 // 2000
    assert not bus.publish(CameraStatusEvent(camera="gate", ts_ns=0, state="failed", message=big))
    t0 = time.monotonic()
    stats = bus.close(timeout_s=0.5)
    assert time.monotonic() - t0 < 6
    assert (stats.accepted, stats.failed, stats.rejected, stats.pending) == (accepted, accepted, 2, 0)
    with pytest.raises(BusError, match="after close"):
        bus.publish(CameraStatusEvent(camera="gate", ts_ns=0, state="live"))


def test_undeliverable_events_fail_after_delivery_timeout(caplog):
    bus = EventBus(_cfg(f"127.0.0.1:{free_port()}", delivery_timeout_s=0.5))
    for i in range(3):
        assert bus.publish(CameraStatusEvent(camera="gate", ts_ns=i, state="live"))
    assert not bus.flush(0.2)
    assert bus.flush(5)  # resolved: as failures
    assert (bus.stats().failed, bus.stats().sent) == (3, 0)
    assert sum("was not delivered" in r.message for r in caplog.records) == 3
    bus.close()


def test_detections_are_not_published_when_turned_off():
    bus = EventBus(_cfg(f"127.0.0.1:{free_port()}", publish_detections=False))
    assert bus.publish(_detection("gate", 0)) is False
    assert bus.stats().accepted == 0
    bus.close(timeout_s=0)


@pytest.mark.parametrize("servers", ["", "kafka", "kafka:port", "a:1,,b"])
def test_malformed_bootstrap_servers_are_named(servers):
    with pytest.raises(BusError, match=f"host:port.*got {servers!r}"):
        EventBus(_cfg(servers))


def test_tail_stops_when_idle_and_skips_undecodable(tansu):
    from kafka import KafkaProducer

    cfg = _cfg(tansu.bootstrap)
    assert sorted(ensure_topics(cfg, partitions=1)) == [
        f"{cfg.topic_prefix}.{k}" for k in ("alerts", "camera-status", "crops", "detections",
                                               "embeddings", "forget", "identities", "tracks")]
    assert ensure_topics(cfg) == []
    topic = topic_for(TrackEvent, cfg.topic_prefix)
    raw = KafkaProducer(bootstrap_servers=tansu.bootstrap)
    raw.send(topic, b"not an event")
    raw.flush()
    raw.close()
    event = TrackEvent(camera="gate", ts_ns=1, phase="start", track_id=1, first_ts_ns=1,
                       last_ts_ns=1, last_box=(0, 0, 1, 1))
    with EventBus(cfg) as bus:
        bus.publish(event)
    out = io.StringIO()
    t0 = time.monotonic()
    assert tail_events(cfg, f"{cfg.topic_prefix}.tracks", None, timeout_s=1.0, out=out) == 1
    assert time.monotonic() - t0 < 10
    assert decode(out.getvalue()) == event


@pytest.mark.parametrize(
    "use",
    [ensure_topics, lambda cfg: EventConsumer(cfg, [f"{cfg.topic_prefix}.tracks"], None)],
    ids=["ensure_topics", "EventConsumer"],
)
def test_an_unreachable_broker_is_named(use):
    cfg = _cfg(f"127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(BusError, match=f"cannot reach Kafka at {cfg.bootstrap_servers}"):
        use(cfg)
    assert time.monotonic() - t0 < 10



def test_a_private_ca_is_passed_on_for_tls_and_misuse_is_named(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    tls = KafkaConfig(enabled=True, bootstrap_servers="b:9093", security_protocol="SSL",
                      ssl_cafile=str(ca))
    assert client_args(tls)["ssl_cafile"] == str(ca)
    assert "ssl_cafile" not in client_args(KafkaConfig(enabled=True, bootstrap_servers="b:9092"))
    with pytest.raises(BusError, match="security_protocol is PLAINTEXT: use SSL or SASL_SSL"):
        client_args(KafkaConfig(enabled=True, bootstrap_servers="b:9092", ssl_cafile=str(ca)))
    with pytest.raises(BusError, match="no CA file at"):
        client_args(KafkaConfig(enabled=True, bootstrap_servers="b:9093",
                                security_protocol="SSL", ssl_cafile=str(tmp_path / "none.pem")))
