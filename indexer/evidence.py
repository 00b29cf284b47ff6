"""Crop evidence kept on disk: what the composing referrer reads from each stored crop.

Reading a crop for a text query (BlazePose mask and part colours, the 0230 attributes) takes
about 10 ms; a text query re-ranks 50 tracklets of 4 crops each. ``EvidenceStore`` keeps each
crop's evidence (``refind.models.referring.CropEvidence``) in one SQLite file beside the gallery
(``<data_dir>/evidence.sqlite3``), keyed by the crop's pixels and the models that read them:
ingest fills it as it stores crops (``ingest.referring_evidence``), and a query fills in what is
missing, so a crop is read once. Each row names the crop it was read from: forgetting a person
or retention deletes it with the crop (``refind.indexer.forget.delete_files``). It is derived
data: deleting the file loses nothing that cannot be computed again from the stored crops, and
a change of model makes new keys.

Example:
    >>> store = EvidenceStore(Path("refind-data/evidence.sqlite3"))          # doctest: +SKIP
    >>> referrer = ComposingReferrer.from_store(models, evidence=store)      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

FILENAME = "evidence.sqlite3"
_IN_CHUNK = 500


class EvidenceStore:
    """A key -> bytes table in SQLite (WAL: ingest and search processes may share it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # crop_path: the stored crop the evidence was read from (NULL for a query photo), so
        # forgetting or retention deletes it with the crop
        self._conn.execute("CREATE TABLE IF NOT EXISTS evidence (key BLOB PRIMARY KEY, "
                           "crop_path TEXT, data BLOB NOT NULL) WITHOUT ROWID")
        self._conn.execute("CREATE INDEX IF NOT EXISTS evidence_path ON evidence (crop_path)")
        self._conn.commit()

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> EvidenceStore | None:
        """The store of ``data_dir``; None (evidence then lives in memory only, and a warning
        says why) when the directory cannot be written, as on a read-only volume."""
        try:
            return cls(Path(data_dir) / FILENAME)
        except (OSError, sqlite3.Error) as err:
            log.warning("crop evidence kept in memory only: %s cannot be written (%s)",
                        Path(data_dir) / FILENAME, err)
            return None

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The stored evidence of those ``keys`` that have some."""
        out: dict[bytes, bytes] = {}
        with self._lock:
            for chunk, marks in _chunks(list(dict.fromkeys(keys))):
                out.update(self._conn.execute(
                    f"SELECT key, data FROM evidence WHERE key IN ({marks})", chunk))
        return out

    def put_many(self, rows: Sequence[tuple[bytes, bytes, str | None]]) -> None:
        """Keep (key, evidence, crop path) rows; a key already stored keeps its first value
        (the same crop and models give the same evidence)."""
        if not rows:
            return
        with self._lock:
            self._conn.executemany(
                "INSERT OR IGNORE INTO evidence (key, data, crop_path) VALUES (?, ?, ?)", rows)
            self._conn.commit()

    def forget_paths(self, paths: Sequence[str]) -> int:
        """Delete the evidence read from these stored crops (forget, retention); how many."""
        removed = 0
        with self._lock:
            for chunk, marks in _chunks(sorted(set(paths))):
                removed += self._conn.execute(
                    f"DELETE FROM evidence WHERE crop_path IN ({marks})", chunk).rowcount
            self._conn.commit()
        return removed

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _chunks(values: list) -> Iterator[tuple[list, str]]:
    """``values`` in chunks of ``_IN_CHUNK``, each with its "?,?,..." placeholders."""
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start : start + _IN_CHUNK]
        yield chunk, ",".join("?" * len(chunk))
