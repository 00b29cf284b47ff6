"""Checking a gallery against its durable record: what was recorded but not stored, what was
stored twice, what was stored without a record.

The durable record (``indexer/journal.py``) is written before the gallery commits, so after any
crash it holds at least what the gallery holds. ``check_gallery`` compares the serving version's
shards (SQLite, the gallery's source of truth) with the journal's crop events of the serving
model, crop by crop, keyed by (camera, track, frame):

- ``missing``: recorded, not forgotten, yet in no shard (a rebuild from the record would bring
  them back when their JPEGs exist; ``missing_jpeg`` counts those whose JPEG is gone too);
- ``duplicates``: one crop stored under two vector ids (a retried write stored twice);
- ``unrecorded``: rows the record lacks (the record was written after the gallery: a bug);
- ``retried``: one crop recorded under two vector ids, of which one was stored (a write that
  failed after its record was written, then retried: the gallery is right, and so is a rebuild,
  which stores each crop once).

``refind check`` prints it and exits 2 when a crop is missing, duplicated or unrecorded; the fault
suite (``tests/faults``) runs it after every fault.

Example:
    >>> report = check_gallery(cfg)                                        # doctest: +SKIP
    >>> report.ok, report.recorded, report.stored
    (True, 412, 412)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from refind.config import RefindConfig
from refind.indexer.blobs import CropStore
from refind.indexer.journal import EventJournal, journal_dir
from refind.indexer.metadata import SqliteMetadata
from refind.indexer.shards import existing_shards
from refind.indexer.versions import serving_version
from refind.streaming.events import CropEvent, ForgetEvent

CropKey = tuple[str, int, int]  # (camera, track id, frame index)

SHOWN = 5  # keys named per problem in the summary


@dataclass
class GalleryCheck:
    """What ``check_gallery`` found (module docstring); keys are (camera, track, frame)."""

    model_id: str
    recorded: int = 0  # distinct crops the record holds for the model (forgotten ones aside)
    stored: int = 0  # rows in the shards
    missing: list[CropKey] = field(default_factory=list)
    missing_jpeg: int = 0
    duplicates: list[CropKey] = field(default_factory=list)
    unrecorded: list[CropKey] = field(default_factory=list)
    retried: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.unrecorded)

    def summary(self) -> str:
        def some(keys: list[CropKey]) -> str:
            return ", ".join(f"{c}/{t}/{f}" for c, t, f in keys[:SHOWN]) + (
                " ..." if len(keys) > SHOWN else "")

        lines = [f"model {self.model_id}: {self.recorded} crops recorded, {self.stored} stored"]
        if self.missing:
            lines.append(f"{len(self.missing)} recorded crops are not in the gallery "
                         f"({self.missing_jpeg} of them without their JPEG): {some(self.missing)}"
                         " - `refind rebuild` restores the ones whose JPEG is there")
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
                "duplicates": len(self.duplicates), "unrecorded": len(self.unrecorded),
                "retried": self.retried, "ok": self.ok}


def recorded_crops(data_dir: Path, model_id: str) -> tuple[Counter[CropKey], dict[CropKey, str]]:
    """The record's crops of ``model_id`` with how many vector ids each was recorded under, and
    each one's crop path; forgotten tracks are left out."""
    journal = EventJournal(journal_dir(data_dir))
    gone = {(e.camera, e.track_id) for e in journal.read("forget") if isinstance(e, ForgetEvent)}
    ids: dict[CropKey, set[int]] = {}
    paths: dict[CropKey, str] = {}
    for e in journal.read("crops"):
        if isinstance(e, CropEvent) and e.model_id == model_id and (
                (e.camera, e.track_id) not in gone):
            key = (e.camera, e.track_id, e.frame_index)
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


def check_gallery(cfg: RefindConfig) -> GalleryCheck:
    """The serving version's shards against the durable record (module docstring)."""
    serving = serving_version(cfg)
    model_id = serving.model_id or _only_model(serving.root)
    recorded, paths = recorded_crops(Path(cfg.data_dir), model_id)
    stored = stored_crops(serving.root, model_id)
    report = GalleryCheck(model_id, recorded=len(recorded), stored=sum(stored.values()))
    report.missing = sorted(k for k in recorded if k not in stored)
    blobs = CropStore.from_config(cfg)
    report.missing_jpeg = sum(not blobs.exists(paths[k]) for k in report.missing)
    report.duplicates = sorted(k for k, n in stored.items() if n > 1)
    report.unrecorded = sorted(k for k in stored if k not in recorded)
    report.retried = sum(1 for k, n in recorded.items() if n > 1 and k in stored)
    return report


def _only_model(root: Path) -> str:
    """The one model stored under ``root`` (a data dir never re-indexed); '' when empty."""
    models: set[str] = set()
    for shard in existing_shards(root):
        with SqliteMetadata(shard / "metadata.sqlite3", read_only=True) as meta:
            models |= {m.model_id for m in meta.models()}
    if len(models) > 1:
        raise ValueError(f"{root} holds crops of several models ({', '.join(sorted(models))}) "
                         "and no versions.json names the serving one")
    return next(iter(models), "")
