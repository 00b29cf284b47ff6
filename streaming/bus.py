"""The Kafka event bus: publish refind events without blocking the live pipeline, and read them.

``EventBus`` never blocks its caller and never waits for the broker to start: ``publish`` puts the
encoded event in a bounded in-memory buffer (``KafkaConfig.buffer_mb`` for every accepted event
not yet acknowledged) and one background thread connects, sends and re-sends. While Kafka is down
(at start or later) events are held and retried with ``acks=all``; when it is back they are
delivered, in order per camera. An accepted event ends as exactly one of *sent* (acknowledged) or
*failed* (logged at ERROR and counted: its ``delivery_timeout_s`` passed, a broker error that
cannot succeed on retry, or the bus was closed before Kafka came back). When the buffer is full,
``publish`` refuses the new event (returns False, counted as *rejected*) instead of dropping an
accepted one. Delivery guarantees per topic are in ``refind.streaming.events``.

Topics: the bus creates its missing topics (``topic_partitions``, ``replication_factor``) when it
connects, and checks again when sends stall (a broker that lost its storage comes back without
them). Its producer asks the broker not to auto-create topics (they would get the broker's
default partition count). Tansu ignores that request, and after a restart with memory storage
it can acknowledge writes to a topic it re-created on the fly that no consumer can then read:
against such a broker, re-create the topics (``ensure_topics``) as soon as it is back.

Counts: ``stats()`` (``BusStats``: accepted, sent, failed, rejected, resent, pending), which the
camera actors and index writers report and ``refind serve`` exports (``camera_events_*``,
``writer_events``).

Reading events: ``refind.streaming.consumer``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from refind.streaming.config import KafkaConfig, ReconnectConfig
from refind.streaming.events import (
    EVENT_TYPES,
    BaseEvent,
    DetectionEvent,
    encode,
    topic_for,
)
from refind.streaming.flow import Backoff

log = logging.getLogger(__name__)


_MAX_RESENDS = 5  # re-sends of one event after errors the Kafka client does not retry itself
_CONNECT_TIMEOUT_MS = 3_000  # one connection attempt; the worker retries with backoff
# waits between connection attempts: 0.2 s doubling up to 5 s
_BACKOFF = ReconnectConfig(initial_backoff_s=0.2, max_backoff_s=5.0, jitter=0.0)
_MAX_BLOCK_MS = 1_000  # longest producer.send may block (metadata unknown); then retried
_RECHECK_S = 5.0  # stalled sends make the bus check its topics again, at most this often


class BusError(RuntimeError):
    """Kafka cannot be used; the message names the bootstrap servers and the cause."""


@dataclass(frozen=True)
class BusStats:
    """Counts of one EventBus since it was made (events, not bytes)."""

    accepted: int = 0
    sent: int = 0
    failed: int = 0
    rejected: int = 0
    resent: int = 0
    pending: int = 0


@dataclass(frozen=True)
class _Item:
    topic: str
    key: bytes
    value: bytes
    event_id: str
    deadline: float  # time.monotonic() after which the event counts as failed
    attempts: int = 0


def client_args(cfg: KafkaConfig) -> dict[str, Any]:
    """Connection settings shared by producer, consumer and admin clients."""
    servers = [s.strip() for s in cfg.bootstrap_servers.split(",") if s.strip()]
    bad = [s for s in servers if ":" not in s or not s.rsplit(":", 1)[1].isdigit()]
    if not servers or bad:
        raise BusError(f"kafka.bootstrap_servers must be host:port[,host:port...], got "
                       f"{cfg.bootstrap_servers!r}")
    args: dict[str, Any] = {
        "bootstrap_servers": servers, "security_protocol": cfg.security_protocol,
        "reconnect_backoff_max_ms": 1_000, "bootstrap_timeout_ms": _CONNECT_TIMEOUT_MS,
    }
    if cfg.ssl_cafile is not None:
        if cfg.security_protocol not in ("SSL", "SASL_SSL"):
            raise BusError(f"kafka.ssl_cafile is set, but kafka.security_protocol is "
                           f"{cfg.security_protocol}: use SSL or SASL_SSL")
        if not Path(cfg.ssl_cafile).is_file():
            raise BusError(f"kafka.ssl_cafile: no CA file at {cfg.ssl_cafile}")
        args["ssl_cafile"] = cfg.ssl_cafile
    if cfg.sasl_mechanism is not None:
        args.update(sasl_mechanism=cfg.sasl_mechanism, sasl_plain_username=cfg.sasl_username,
                    sasl_plain_password=cfg.sasl_password)
    return args


def _producer_args(cfg: KafkaConfig) -> dict[str, Any]:
    from kafka import KafkaProducer

    delivery_ms = int(cfg.delivery_timeout_s * 1000)
    args = client_args(cfg) | {
        "client_id": "refind-bus",
        "acks": "all",
        "retries": 2_147_483_647,  # bounded by delivery_timeout_ms, not by a count
        "max_in_flight_requests_per_connection": 1,  # a retried batch cannot overtake the next
        # Idempotence is off: at-least-once with de-duplication by event_id is the contract,
        # and an idempotent producer fails in-flight batches when a broker loses its state.
        "enable_idempotence": False,
        "linger_ms": cfg.linger_ms,
        "max_block_ms": _MAX_BLOCK_MS,
        # Topics come from ensure_topics (with their partition count), never as a side effect
        # of a send: a broker's auto-created topic gets its default partitions.
        "allow_auto_create_topics": False,
        # delivery_timeout_ms must be >= request_timeout_ms + linger_ms.
        "request_timeout_ms": max(1, min(30_000, delivery_ms - cfg.linger_ms)),
    }
    if "delivery_timeout_ms" in KafkaProducer.DEFAULT_CONFIG:
        args["delivery_timeout_ms"] = delivery_ms
    return args


def _resendable(err: BaseException) -> bool:
    """True for errors that may pass on a later try although the client gave up on them."""
    from kafka.errors import UnknownError

    # UnknownError: UNKNOWN_SERVER_ERROR; Tansu returns it for a write to a topic it lost in a
    # restart and is re-creating.
    return bool(getattr(err, "retriable", False)) or isinstance(err, UnknownError)


class EventBus:
    """Publishes refind events to Kafka from a bounded buffer and a background sender thread.

    Example:
        >>> bus = EventBus(KafkaConfig(enabled=True, bootstrap_servers="kafka:9092"))  # doctest: +SKIP
        >>> bus.publish(CameraStatusEvent(camera="gate", ts_ns=0, state="live"))  # doctest: +SKIP
        True
        >>> bus.close(timeout_s=10)  # doctest: +SKIP
    """

    def __init__(self, cfg: KafkaConfig) -> None:
        self.cfg = cfg
        self._args = _producer_args(cfg)  # raises BusError for malformed bootstrap_servers
        self._limit_bytes = cfg.buffer_mb * 1024 * 1024
        self._delivery_s = cfg.delivery_timeout_s
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()  # accepted, not yet handed to the producer
        self._retry: deque[_Item] = deque()  # handed back for another try; goes first
        self._bytes = 0  # value bytes of every unresolved event
        self._counts = {k: 0 for k in ("accepted", "sent", "failed", "rejected", "resent")}
        self._refusing = False
        self._warned = False
        self._topics_at: float | None = None  # when topics were last checked
        self._topics_checked = threading.Event()  # set after the first check, made or failed
        self._topics_suspect = False  # sends suggest a topic is missing
        self._progress_at = time.monotonic()  # when an event was last resolved
        self._closing = False
        self._producer: Any = None
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="refind-event-bus", daemon=True)
        self._worker.start()

    @property
    def connected(self) -> bool:
        """True once the producer has reached the broker (it stays True through later outages)."""
        return self._producer is not None

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until the bus has reached Kafka and created its missing topics; False on timeout.

        Never needed before ``publish``; for callers that start a consumer or report health.
        """
        return self._topics_checked.wait(timeout_s)

    def stats(self) -> BusStats:
        with self._cond:
            return BusStats(**self._counts, pending=self._pending())

    def _pending(self) -> int:
        c = self._counts
        return c["accepted"] - c["sent"] - c["failed"]

    def publish(self, event: BaseEvent) -> bool:
        """Accept an event for delivery without blocking; False if it was not accepted.

        Not accepted: the buffer (``buffer_mb``) is full, or the event is a detection and
        ``publish_detections`` is off. Raises ``BusError`` after ``close``.
        """
        if isinstance(event, DetectionEvent) and not self.cfg.publish_detections:
            return False
        value = encode(event)  # TypeError for anything but a refind event
        topic = topic_for(event, self.cfg.topic_prefix)
        item = _Item(topic, event.camera.encode(), value, event.event_id,
                     time.monotonic() + self._delivery_s)
        with self._cond:
            if self._closing:
                raise BusError("publish() after close(): the event bus is closed")
            if self._bytes + len(value) > self._limit_bytes:
                self._count("rejected")
                if not self._refusing:
                    log.warning("event buffer full (%d MiB unsent, Kafka at %s): refusing new "
                                "events until it drains", self.cfg.buffer_mb,
                                self.cfg.bootstrap_servers)
                self._refusing = True
                return False
            self._refusing = False
            if not self._pending():
                self._progress_at = time.monotonic()
            self._bytes += len(value)
            self._queue.append(item)
            self._count("accepted")
            self._cond.notify_all()
        return True

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every accepted event is sent or failed; False if some are still pending."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            producer = self._producer
            if producer is not None and remaining > 0:
                try:
                    producer.flush(timeout=min(remaining, 0.2))
                except Exception as err:  # KafkaTimeoutError while the broker is down
                    log.debug("producer flush: %r", err)
            with self._cond:
                if self._pending() == 0:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))

    def close(self, timeout_s: float = 10.0) -> BusStats:
        """Flush for up to ``timeout_s``, stop the sender; events still unsent count as failed."""
        flushed = self.flush(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._stop.set()
        # A send blocked on metadata ends within max_block_ms; a connection attempt still under
        # way is not waited for: the worker closes what it opens once it sees the stop.
        self._worker.join(_MAX_BLOCK_MS / 1000 + 0.5)
        if self._producer is not None:
            self._producer.close(timeout=0 if not flushed else 1.0)  # errbacks fail the rest
        with self._cond:
            left = list(self._retry) + list(self._queue)
            self._retry.clear()
            self._queue.clear()
        for item in left:
            self._fail(item, BusError("closed before Kafka accepted it"))
        stats = self.stats()
        if stats.pending:
            log.error("event bus closed with %d events unresolved", stats.pending)
        return stats

    def __enter__(self) -> EventBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_topics(self, partitions: int | None = None) -> list[str]:
        """Create this bus's topics where missing now; see :func:`ensure_topics`."""
        return ensure_topics(self.cfg, partitions)

    # -- the sender thread and the producer's callbacks ---------------------------------------

    def _count(self, outcome: str) -> None:
        self._counts[outcome] += 1

    def _run(self) -> None:
        backoff = Backoff(_BACKOFF)
        while not self._stop.is_set():
            if self._producer is None and not self._connect():
                self._expire()
                self._stop.wait(backoff.next_delay())
                continue
            self._check_topics()
            item = self._next(timeout_s=0.2)
            if item is not None:
                self._send(item)

    def _check_topics(self) -> None:
        """Create missing topics on connecting, and again (at most every few seconds) when
        sends stall: a broker that lost its storage comes back without them."""
        now = time.monotonic()
        with self._cond:
            if self._pending() and now - self._progress_at > _RECHECK_S:
                self._topics_suspect = True
        due = self._topics_at is None or (self._topics_suspect and now - self._topics_at > _RECHECK_S)
        if not due:
            return
        self._topics_at, self._topics_suspect = now, False
        try:
            ensure_topics(self.cfg)
        except Exception as err:  # unreachable, or not allowed to create topics: keep sending
            log.warning("could not check Kafka topics at %s (%r); will try again",
                        self.cfg.bootstrap_servers, err)
            self._topics_suspect = True
        self._topics_checked.set()

    def _connect(self) -> bool:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(**self._args)
        except Exception as err:  # NoBrokersAvailable, KafkaError, OSError
            level = logging.DEBUG if self._warned else logging.WARNING
            log.log(level, "Kafka at %s is unreachable (%r); holding events (up to %d MiB) and "
                    "retrying", self.cfg.bootstrap_servers, err, self.cfg.buffer_mb)
            self._warned = True
            return False
        if self._stop.is_set():  # closed while connecting
            producer.close(timeout=0)
            return False
        self._producer = producer
        log.info("event bus connected to Kafka at %s", self.cfg.bootstrap_servers)
        with self._cond:
            self._cond.notify_all()
        return True

    def _expire(self) -> None:
        """Fail the held events whose delivery_timeout_s has passed (Kafka unreachable)."""
        now = time.monotonic()
        with self._cond:
            late = [i for i in (*self._retry, *self._queue) if i.deadline <= now]
            if not late:
                return
            self._retry = deque(i for i in self._retry if i.deadline > now)
            self._queue = deque(i for i in self._queue if i.deadline > now)
        for item in late:
            self._fail(item, BusError(f"Kafka at {self.cfg.bootstrap_servers} unreachable for "
                                      f"delivery_timeout_s={self._delivery_s}"))

    def _next(self, timeout_s: float) -> _Item | None:
        with self._cond:
            if not self._retry and not self._queue:
                self._cond.wait(timeout_s)
            if self._retry:
                return self._retry.popleft()
            return self._queue.popleft() if self._queue else None

    def _send(self, item: _Item) -> None:
        from kafka.errors import KafkaTimeoutError

        try:
            future = self._producer.send(item.topic, key=item.key, value=item.value)
        except KafkaTimeoutError as err:  # the topic is unknown: Kafka is down or lost it
            self._topics_suspect = True
            if time.monotonic() >= item.deadline:
                self._fail(item, err)
            else:
                with self._cond:
                    self._retry.appendleft(item)
            self._expire()
            return
        except Exception as err:  # too large, producer closed: cannot succeed later
            self._fail(item, err)
            return
        future.add_callback(self._on_sent, item)
        future.add_errback(self._on_error, item)

    def _on_sent(self, item: _Item, _metadata: object) -> None:
        with self._cond:
            self._resolve(item, "sent")

    def _on_error(self, item: _Item, err: BaseException) -> None:
        late = time.monotonic() >= item.deadline
        if self._closing or late or item.attempts >= _MAX_RESENDS or not _resendable(err):
            self._fail(item, err)
            return
        log.warning("re-sending event %s to %s after %r (try %d of %d)", item.event_id,
                    item.topic, err, item.attempts + 1, _MAX_RESENDS)
        with self._cond:
            self._count("resent")
            self._retry.append(replace(item, attempts=item.attempts + 1))
            self._cond.notify_all()

    def _fail(self, item: _Item, err: BaseException) -> None:
        log.error("event %s to %s (camera %s) was not delivered: %r", item.event_id, item.topic,
                  item.key.decode(errors="replace"), err)
        with self._cond:
            self._resolve(item, "failed")

    def _resolve(self, item: _Item, outcome: str) -> None:
        self._progress_at = time.monotonic()
        self._bytes -= len(item.value)
        self._count(outcome)
        self._cond.notify_all()


def ensure_topics(cfg: KafkaConfig, partitions: int | None = None) -> list[str]:
    """Create refind's topics that do not exist yet; returns the names created.

    ``partitions`` defaults to ``cfg.topic_partitions``; replicas are ``cfg.replication_factor``.
    Raises ``BusError`` naming the bootstrap servers when Kafka cannot be reached.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    partitions = cfg.topic_partitions if partitions is None else partitions
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    try:
        admin = KafkaAdminClient(client_id="refind-admin", **client_args(cfg))
    except Exception as err:
        raise BusError(f"cannot reach Kafka at {cfg.bootstrap_servers}: {err!r}") from err
    created = []
    try:
        existing = set(admin.list_topics())
        for name in (topic_for(t, cfg.topic_prefix) for t in EVENT_TYPES):
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, cfg.replication_factor)])
                created.append(name)
            except TopicAlreadyExistsError:  # made by someone else meanwhile
                pass
    finally:
        admin.close()
    if created:
        log.info("created Kafka topics %s (%d partitions)", ", ".join(created), partitions)
    return created
