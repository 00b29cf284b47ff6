"""The local event journal: the durable record of what was stored, as JSON lines on disk.

Every path that stores crops (``refind ingest``, the live index writers, a forget) appends the
same events here through ``refind.indexer.record.EventRecord``: every crop stored, every track ended,
every track forgotten, in ``<data_dir>/events/<kind>.jsonl`` (``crops.jsonl``, ``tracks.jsonl``,
``forget.jsonl``), in the Kafka wire format (``refind.streaming.events.encode``). Together with the crop
store's JPEGs this is what ``refind rebuild`` rebuilds the gallery and metadata from; vectors are
derived (re-embedded).

A batch of crop events is written and fsync'ed *before* its rows are committed to SQLite, so the
journal always holds at least what the gallery holds: a crash between the two leaves events whose
rows were never committed, which a rebuild stores (their JPEGs exist), never the other way round.
Several writers (one per gallery shard, a forget meanwhile) append under an exclusive ``flock``,
so their lines never interleave. A torn last line (a crash mid-write) is skipped with a warning
when read, and the next append starts on a line of its own.

Example:
    >>> journal = EventJournal(Path(".refind/events"))                     # doctest: +SKIP
    >>> journal.append([CropEvent.from_record(record)])                      # doctest: +SKIP
    >>> list(journal.read("crops"))[0].vector_id                             # doctest: +SKIP
    0
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from refind.streaming.events import BaseEvent, Event, EventDecodeError, decode, encode

log = logging.getLogger(__name__)

JOURNAL_KINDS = ("crops", "tracks", "forget")


def journal_dir(data_dir: Path) -> Path:
    """Where a deployment's local journal lives."""
    return Path(data_dir) / "events"


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a file created or renamed there) durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class EventJournal:
    """Append-only JSON-lines files of refind events, one file per topic kind."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def append(self, events: Sequence[BaseEvent]) -> None:
        """Append ``events`` (grouped by kind) and fsync each file written."""
        by_kind: dict[str, list[bytes]] = {}
        for event in events:
            by_kind.setdefault(event.topic_kind, []).append(encode(event) + b"\n")
        if not by_kind:
            return
        made = not self.dir.is_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        for kind, lines in by_kind.items():
            path = self.dir / f"{kind}.jsonl"
            made = made or not path.exists()
            with open(path, "a+b") as f:  # read: the last byte
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file closes
                end = os.fstat(f.fileno()).st_size
                if end and os.pread(f.fileno(), 1, end - 1) != b"\n":
                    f.write(b"\n")  # a torn line left by a crash stays alone on its line
                f.write(b"".join(lines))
                f.flush()
                os.fsync(f.fileno())
        if made:  # a new file (or folder) is durable once its folder is
            fsync_dir(self.dir)
            fsync_dir(self.dir.parent)

    def read(self, kind: str) -> Iterator[Event]:
        """The events of one kind, oldest first; undecodable lines are skipped and logged."""
        path = self.dir / f"{kind}.jsonl"
        if not path.is_file():
            return
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield decode(line)
                except EventDecodeError as err:
                    log.warning("%s:%d: skipped: %s", path, n, err)
