"""Checking a gallery against its durable record: what was recorded but not stored, what was
stored twice, what was stored without a record.

The durable record (``indexer/journal.py``) is written before the gallery commits, so after any
crash it holds at least what the gallery holds. ``check_gallery`` compares the serving version's
shards (SQLite, the gallery's source of truth) with the journal's crop events, crop by crop,
keyed by (camera, track, frame, time); events of any model count, since a re-index copies crops
into a new version without recording them again:

- ``missing``: recorded, not forgotten, not expired, yet in no shard (``refind rebuild``
  brings back those whose JPEG is there; ``missing_jpeg`` counts those whose JPEG is gone too);
- ``expired``: recorded, older than their camera's retention and gone with their JPEG: removed
  by ``refind retention``, which records nothing (not a problem);
- ``duplicates``: one crop stored under two vector ids (a retried write stored twice);
- ``unrecorded``: rows the record lacks (the record was written after the gallery: a bug);
- ``retried``: one crop recorded under two vector ids, of which one was stored (a write that
  failed after its record was written, then retried: the gallery is right, and a rebuild
  stores the crop once).

``refind check`` prints it and exits 2 when a crop is missing, duplicated or unrecorded; the
fault suite (``tests/faults``) runs it after its faults.

Example:
    >>> report = check_gallery(cfg)                                        # doctest: +SKIP
    >>> report.ok, report.recorded, report.stored
    (True, 412, 412)
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from refind.config import RefindConfig
from refind.indexer.blobs import CropStore
from refind.indexer.journal import EventJournal, journal_dir
from refind.indexer.metadata import SqliteMetadata
from refind.indexer.retention import retention_days
from refind.indexer.shards import existing_shards
from refind.indexer.versions import serving_version
from refind.streaming.events import CropEvent, ForgetEvent

CropKey = tuple[str, int, int, int]  # (camera, track id, frame index, time ns)

SHOWN = 5  # keys named per problem in the summary
_DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class GalleryCheck:
    """What ``check_gallery`` found (module docstring)."""

    model_id: str
    recorded: int  # distinct crops the record holds (forgotten ones aside)
    stored: int  # rows of the serving model in the shards
    missing: tuple[CropKey, ...] = ()
    missing_jpeg: int = 0
    expired: int = 0
    duplicates: tuple[CropKey, ...] = ()
    unrecorded: tuple[CropKey, ...] = ()
    retried: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.unrecorded)

    def summary(self) -> str:
        def some(keys: tuple[CropKey, ...]) -> str:
            return ", ".join(f"{c}/{t}/{f}" for c, t, f, _ in keys[:SHOWN]) + (
                " ..." if len(keys) > SHOWN else "")

        lines = [f"model {self.model_id or '(none)'}: {self.recorded} crops recorded, "
                 f"{self.stored} stored"]
        if self.missing:
            lines.append(f"{len(self.missing)} recorded crops are not in the gallery "
                         f"({self.missing_jpeg} of them without their JPEG): {some(self.missing)}"
                         " - `refind rebuild` restores the ones whose JPEG is there")
        if self.expired:
            lines.append(f"{self.expired} recorded crops were removed by retention")
        if self.duplicates:
            lines.append(f"{len(self.duplicates)} crops are stored twice: "
                         f"{some(self.duplicates)}")
        if self.unrecorded:
            lines.append(f"{len(self.unrecorded)} stored crops are not in the record: "
                         f"{some(self.unrecorded)}")
        if self.retried:
            lines.append(f"{self.retried} crops were recorded twice by a retried write "
                         "(stored once: harmless)")
        lines.append("ok: every recorded crop is stored once" if self.ok else "NOT OK")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {"model_id": self.model_id, "recorded": self.recorded, "stored": self.stored,
                "missing": len(self.missing), "missing_jpeg": self.missing_jpeg,
                "expired": self.expired, "duplicates": len(self.duplicates),
                "unrecorded": len(self.unrecorded), "retried": self.retried, "ok": self.ok}


def recorded_crops(data_dir: Path) -> tuple[Counter[CropKey], dict[CropKey, str]]:
    """The record's crops (of every model) with how many vector ids each was recorded under,
    and each one's crop path; forgotten tracks are left out."""
    journal = EventJournal(journal_dir(data_dir))
    gone = {(e.camera, e.track_id) for e in journal.read("forget") if isinstance(e, ForgetEvent)}
    ids: dict[CropKey, set[int]] = {}
    paths: dict[CropKey, str] = {}
    for e in journal.read("crops"):
        if isinstance(e, CropEvent) and (e.camera, e.track_id) not in gone:
            key = (e.camera, e.track_id, e.frame_index, e.ts_ns)
            ids.setdefault(key, set()).add(e.vector_id)
            paths[key] = e.crop_path
    return Counter({k: len(v) for k, v in ids.items()}), paths


def stored_crops(root: Path, model_id: str) -> Counter[CropKey]:
    """How many rows each crop of ``model_id`` has over the shards under ``root``."""
    rows: Counter[CropKey] = Counter()
    for shard in existing_shards(root):
        with SqliteMetadata(shard / "metadata.sqlite3", read_only=True) as meta:
            rows.update(meta.crop_keys(model_id))
    return rows


def check_gallery(cfg: RefindConfig, now_ns: int | None = None) -> GalleryCheck:
    """The serving version's shards against the durable record (module docstring)."""
    serving = serving_version(cfg)
    model_id = serving_model_id(cfg)
    recorded, paths = recorded_crops(Path(cfg.data_dir))
    stored = stored_crops(serving.root, model_id)
    blobs = CropStore.from_config(cfg)
    now = time.time_ns() if now_ns is None else now_ns
    missing, expired, without_jpeg = [], 0, 0
    for k in sorted(k for k in recorded if k not in stored):
        if blobs.exists(paths[k]):
            missing.append(k)
            continue
        days = retention_days(cfg, k[0])
        if days is not None and k[3] < now - int(days * _DAY_NS):
            expired += 1
            continue
        missing.append(k)
        without_jpeg += 1
    return GalleryCheck(
        model_id, recorded=len(recorded), stored=sum(stored.values()), missing=tuple(missing),
        missing_jpeg=without_jpeg, expired=expired,
        duplicates=tuple(sorted(k for k, n in stored.items() if n > 1)),
        unrecorded=tuple(sorted(k for k in stored if k not in recorded)),
        retried=sum(1 for k, n in recorded.items() if n > 1 and k in stored),
    )


def serving_model_id(cfg: RefindConfig) -> str:
    """The serving version's model: as versions.json names it, else the one model stored in a
    data dir never re-indexed ('' when it holds none)."""
    serving = serving_version(cfg)
    if serving.model_id:
        return serving.model_id
    models: set[str] = set()
    for shard in existing_shards(serving.root):
        with SqliteMetadata(shard / "metadata.sqlite3", read_only=True) as meta:
            models |= {m.model_id for m in meta.models()}
    if len(models) > 1:
        raise ValueError(f"{serving.root} holds crops of several models ({', '.join(sorted(models))}) "
                         "and no versions.json names the serving one")
    return next(iter(models), "")
