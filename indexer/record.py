"""The durable record: what refind stored, as events, written the same way by every path.

``EventRecord`` is the one place where crops stored, tracks ended and tracks forgotten are
recorded. ``refind ingest``, the live index writers (``actors/writer.py``) and ``refind forget``
all append through it, so ``refind rebuild`` restores exactly what was searchable whatever path
stored it:

- the local journal (``refind.indexer.journal``, under ``data_dir/events``) always: appended and
  fsync'ed before the gallery commits the rows, so it never holds less than the gallery;
- Kafka too when ``kafka.enabled``: the same events, at least once, for consumers and for
  rebuilding a deployment whose data volume was lost (``refind rebuild --from-kafka``). Kafka is
  written after the journal and asynchronously (``refind.streaming.bus``); an event it never took is
  counted in ``stats()`` and logged.

Example:
    >>> record = EventRecord.open(cfg)                                         # doctest: +SKIP
    >>> record.append([CropEvent.from_record(r) for r in stored])              # doctest: +SKIP
    >>> record.close()                                                         # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from refind.config import RefindConfig
from refind.indexer.journal import EventJournal, journal_dir
from refind.streaming.bus import BusStats, EventBus
from refind.streaming.events import BaseEvent

log = logging.getLogger(__name__)

FLUSH_S = 30.0  # how long closing waits for Kafka to take what was handed to it


class EventRecord:
    """The journal, plus Kafka when enabled: ``append`` writes both (see the module docstring)."""

    def __init__(self, journal: EventJournal, bus: EventBus | None = None) -> None:
        self.journal = journal
        self.bus = bus

    @classmethod
    def open(cls, cfg: RefindConfig) -> EventRecord:
        """The record of a deployment: its journal, and a Kafka producer when Kafka is on."""
        bus = EventBus(cfg.kafka) if cfg.kafka.enabled else None
        return cls(EventJournal(journal_dir(cfg.data_dir)), bus)

    def append(self, events: Sequence[BaseEvent], stream: Sequence[BaseEvent] = ()) -> None:
        """Journal ``events`` (fsync'ed), then hand them to Kafka; ``stream`` goes to Kafka
        only (derived data, such as each track's vector, that a rebuild does not need)."""
        self.journal.append(events)
        if self.bus is not None:
            sent = [*events, *stream]
            refused = sum(not self.bus.publish(e) for e in sent)
            if refused:
                log.error("Kafka refused %d of %d events (its buffer is full); all but the "
                          "stream-only ones are in the journal %s", refused, len(sent),
                          self.journal.dir)

    def stats(self) -> BusStats | None:
        """Kafka delivery counters, None without Kafka."""
        return self.bus.stats() if self.bus is not None else None

    def flush(self, timeout_s: float = FLUSH_S) -> bool:
        """Wait until Kafka took every event handed to it (True at once without Kafka)."""
        return self.bus.flush(timeout_s) if self.bus is not None else True

    def close(self, timeout_s: float = FLUSH_S) -> BusStats | None:
        """Flush Kafka for up to ``timeout_s`` and close it; its final counters."""
        if self.bus is None:
            return None
        return self.bus.close(timeout_s=timeout_s)
