"""Reading refind's events from Kafka: ``EventConsumer`` and ``refind events tail``.

``EventConsumer`` reads decoded events for tools such as ``refind events tail``. A broker that
loses its log (a restart without durable storage) recreates the topic with a new topic id and
offsets from 0. The consumer notices either sign of that, the new id or a read position beyond
the partition's end, and reads the topic again from its beginning: it misses nothing and may see
events twice (de-duplicate by ``event_id``). The restarted broker has also forgotten the
consumer's group: an offset commit then fails, and the consumer rejoins instead of stopping. Apache Kafka reports a position beyond the end as
OffsetOutOfRange; some brokers (Tansu with memory storage) answer such a fetch with nothing, which
would leave the consumer waiting for an offset the new log may take minutes to reach.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

from refind.streaming.bus import BusError, client_args
from refind.streaming.config import KafkaConfig
from refind.streaming.events import Event, EventDecodeError, decode, encode, resolve_topic

log = logging.getLogger(__name__)

PAST_END_S = 3.0  # a position beyond its partition's end this long means the log was lost


class EventConsumer:
    """Decoded refind events from Kafka topics, oldest first unless ``from_beginning`` is False.

    ``group_id`` None reads every partition without committing offsets; with a group, offsets
    are committed and a restart resumes after the last committed event.

    Example:
        >>> with EventConsumer(cfg, ["refind.tracks"], group_id=None) as events:  # doctest: +SKIP
        ...     for event in events.poll(timeout_s=1.0):
        ...         print(event.event_id)
    """

    def __init__(self, cfg: KafkaConfig, topics: Sequence[str], group_id: str | None,
                 from_beginning: bool = True, session_timeout_s: float = 10.0) -> None:
        from kafka import KafkaConsumer

        if not topics:
            raise ValueError("EventConsumer needs at least one topic")
        self.topics = tuple(topics)
        session_ms = int(session_timeout_s * 1000)
        try:
            self._consumer = KafkaConsumer(
                *self.topics, group_id=group_id, client_id="refind-consumer",
                auto_offset_reset="earliest" if from_beginning else "latest",
                enable_auto_commit=group_id is not None, allow_auto_create_topics=False,
                session_timeout_ms=session_ms, heartbeat_interval_ms=max(100, session_ms // 4),
                **client_args(cfg),
            )
        except BusError:
            raise
        except Exception as err:
            raise BusError(f"cannot reach Kafka at {cfg.bootstrap_servers}: {err!r}") from err
        self.undecodable = 0
        self.commit_failures = 0
        self._topic_ids: dict[str, object] = {}
        self._rewind: set[str] = set()
        self._beyond: dict[object, float] = {}  # partition -> when its position passed its end

    def poll(self, timeout_s: float = 1.0, max_events: int | None = None) -> list[Event]:
        """Events that arrived, waiting up to ``timeout_s`` for the first; [] if none."""
        from kafka.errors import CommitFailedError

        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000),
                                          max_records=max_events)
        except CommitFailedError as err:
            # the group forgot this member (a broker restart, or a rebalance while it was slow):
            # what was read since the last commit may come again; the next poll rejoins
            self.commit_failures += 1
            log.warning("offsets not committed (%s): the group is rejoined on the next poll; "
                        "events read since the last commit may arrive again", err)
            return []
        events: list[Event] = []
        for tp, records in batches.items():
            for rec in records:
                try:
                    events.append(decode(rec.value))
                except EventDecodeError as err:
                    self.undecodable += 1
                    log.warning("skipping %s[%d]@%d: %s", tp.topic, tp.partition, rec.offset, err)
        self._rewind_recreated()
        self._rewind_past_end()
        return events

    def __iter__(self) -> Iterator[Event]:
        while True:
            yield from self.poll(1.0)

    def _rewind_recreated(self) -> None:
        """Read a topic again from its beginning when the broker made it anew (new topic id)."""
        cluster = getattr(getattr(self._consumer, "_client", None), "cluster", None)
        if cluster is None or not hasattr(cluster, "topic_id"):
            return  # this kafka-python does not report topic ids
        for topic in self.topics:
            tid = cluster.topic_id(topic)
            if tid is None:
                continue
            old = self._topic_ids.get(topic)
            self._topic_ids[topic] = tid
            if old is not None and old != tid:
                log.warning("topic %s was re-created (its log is new): reading it from the "
                            "beginning", topic)
                self._rewind.add(topic)
        for topic in list(self._rewind):
            parts = [tp for tp in self._consumer.assignment() if tp.topic == topic]
            if parts:  # else wait for the group to assign them
                self._consumer.seek_to_beginning(*parts)
                self._rewind.discard(topic)

    def _rewind_past_end(self) -> None:
        """Read a partition again from its beginning when the position has stayed beyond its
        end (the high watermark of the last fetch) for ``PAST_END_S``: the log the position came
        from is gone. A new leader's high watermark can lag for a moment in a healthy cluster:
        that passes well within the wait."""
        from kafka.errors import KafkaError

        now = time.monotonic()
        beyond: dict[object, float] = {}
        for tp in list(self._consumer.assignment()):
            try:  # the library may reassign partitions on its network thread meanwhile
                end = self._consumer.highwater(tp)  # None until a fetch from it answered
                if end is None:
                    continue
                position = self._consumer.position(tp, timeout_ms=0)
                if position is None or position <= end:
                    continue
                since = beyond[tp] = self._beyond.get(tp, now)
                if now - since < PAST_END_S:
                    continue
                log.warning("%s[%d]: read position %d has been beyond the log's end %d for %.0f "
                            "s (the broker lost its log): reading it from the beginning",
                            tp.topic, tp.partition, position, end, now - since)
                self._consumer.seek_to_beginning(tp)
                del beyond[tp]
            except (KafkaError, ValueError) as err:  # not assigned any more, or being reset
                log.debug("%s: %r", tp, err)
        self._beyond = beyond

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tail_events(cfg: KafkaConfig, topic: str, group: str | None, max_events: int | None = None,
                timeout_s: float | None = None, out: TextIO | None = None) -> int:
    """Print one JSON line per event of ``topic`` (a kind like ``tracks`` or a full name).

    Stops after ``max_events`` events, or after ``timeout_s`` seconds without a new event, or
    never; returns the number printed. ``group`` None reads from the beginning without
    committing; a group resumes where it stopped.
    """
    out = out or sys.stdout  # looked up now: sys.stdout may have been replaced since import
    name = resolve_topic(topic, cfg.topic_prefix)
    printed = 0
    last = time.monotonic()
    with EventConsumer(cfg, [name], group) as consumer:
        while max_events is None or printed < max_events:
            left = None if max_events is None else max_events - printed
            events = consumer.poll(0.5, max_events=left)
            for event in events:
                out.write(encode(event).decode("utf-8") + "\n")
            printed += len(events)
            if events:
                out.flush()
                last = time.monotonic()
            elif timeout_s is not None and time.monotonic() - last >= timeout_s:
                break
    return printed
