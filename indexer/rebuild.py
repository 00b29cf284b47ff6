"""Rebuild the serving gallery and its metadata from the durable record.

The durable record is the crop store's JPEGs plus the events (``refind.streaming.events``) that every
path that stores crops writes through ``refind.indexer.record.EventRecord``: ``refind ingest``, the
live index writers and ``refind forget`` alike. They are read from the local journal
(``refind.indexer.journal``) by default, or from Kafka (``<prefix>.crops``, ``.tracks``, ``.forget``)
with ``from_kafka``. The SQLite metadata and the FAISS indexes are views of it:

- from the ``CropEvent`` of each crop: vector id, camera, track, frame, time, box, quality and
  crop path (the detector's confidence is not in ``refind.crop.v1``; rebuilt rows carry 0.0);
- from the crop store: the pixels, re-embedded with the serving version's embedder (the vectors
  are derived, never stored in the record);
- from ``TrackEvent`` (phase ``end``): when the tracker saw each track (its span);
- from ``ForgetEvent`` tombstones: tracks forgotten. Their crops are dropped, the tombstones are
  recorded so that no late event stores them again; the tombstones are read again just before
  the switch, so a track forgotten during the rebuild stays gone.

Events are de-duplicated by ``event_id`` and crops by (shard, vector id); a crop goes to shard
``shard_of(camera, ray.index_writers)``. A crop whose JPEG is missing or unreadable (removed by
retention, say) is counted and left out.

The rebuild writes a fresh root (``data_dir/versions/.rebuild-*``), builds its FAISS indexes,
renames it into place and switches the registry's root for the serving model in one atomic
replace; searches answer from the old root until then. It holds the old root's writer locks
throughout (an ingest meanwhile is refused), then deletes the old root.

A rebuild never silently shrinks the gallery: when the record holds fewer of the serving
model's crops than the gallery does (before embedding), or fewer could be rebuilt (missing
JPEGs), it stops with ``RebuildRefused`` and changes nothing, unless ``force``.

Example:
    >>> rebuild_gallery(cfg).crops                                           # doctest: +SKIP
    412
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from refind.config import RefindConfig
from refind.indexer.gallery_store import GalleryStore, index_stem, lock_gallery
from refind.indexer.journal import JOURNAL_KINDS, EventJournal, journal_dir
from refind.indexer.metadata import ForgottenTrack, SqliteMetadata
from refind.indexer.reindex import EmbedCrops, embed_copies
from refind.indexer.shards import existing_shards, shard_name, shard_of
from refind.indexer.versions import (
    BASE_ROOT,
    Registry,
    Version,
    remove_root,
    serving_version,
    update_registry,
)
from refind.models.base import model_name
from refind.models.registry import build_embedder
from refind.models.store import ModelStore
from refind.streaming.config import KafkaConfig
from refind.streaming.events import CropEvent, Event, ForgetEvent, TrackEvent, resolve_topic
from refind.streaming.motion import TrackMotion
from refind.streaming.records import CropRecord, TrackSpan

log = logging.getLogger(__name__)

_BATCH = 64


class RebuildRefused(RuntimeError):
    """A rebuild would leave the gallery with fewer crops than it holds; nothing was changed."""


@dataclass
class DurableRecord:
    """The events folded: crops per shard, track spans, tombstones, the highest id seen."""

    crops: dict[str, dict[int, CropEvent]] = field(default_factory=dict)
    spans: dict[tuple[str, int], TrackSpan] = field(default_factory=dict)
    forgotten: dict[tuple[str, int], int] = field(default_factory=dict)
    max_vector_id: int = -1

    def tombstones(self) -> list[ForgottenTrack]:
        return [ForgottenTrack(c, t, ns) for (c, t), ns in sorted(self.forgotten.items())]

    def forget(self, camera: str, track_id: int, ns: int) -> None:
        """Keep a track forgotten, since the earliest time it was."""
        key = (camera, track_id)
        self.forgotten[key] = min(self.forgotten.get(key, ns), ns)


@dataclass
class RebuildReport:
    """What a rebuild did: crops rebuilt, left out (forgotten tracks, missing JPEGs), what the
    gallery and the record held before, where the new root is and which root it replaced."""

    model_id: str
    source: str
    gallery_crops: int = 0
    record_crops: int = 0
    crops: int = 0
    skipped_forgotten: int = 0
    skipped_missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    root: str = ""
    replaced: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"model_id": self.model_id, "source": self.source,
                "gallery_crops": self.gallery_crops, "record_crops": self.record_crops,
                "crops": self.crops, "skipped_forgotten": self.skipped_forgotten,
                "skipped_missing": self.skipped_missing,
                "missing_examples": list(self.missing_examples), "root": self.root,
                "replaced": self.replaced, "seconds": round(self.seconds, 3)}


def read_journal(data_dir: Path, kinds: Iterable[str] = JOURNAL_KINDS) -> list[Event]:
    """Every event of the local journal (of ``kinds``)."""
    journal = EventJournal(journal_dir(data_dir))
    return [e for kind in kinds for e in journal.read(kind)]


def read_kafka(cfg: KafkaConfig, idle_s: float = 5.0, kinds: Iterable[str] = JOURNAL_KINDS,
               ) -> list[Event]:
    """Every event on the crops, tracks and forget topics, from their beginning, until none
    has arrived for ``idle_s`` seconds."""
    from refind.streaming.consumer import EventConsumer

    topics = [resolve_topic(k, cfg.topic_prefix) for k in kinds]
    events: list[Event] = []
    last = time.monotonic()
    with EventConsumer(cfg, topics, group_id=None) as consumer:
        while time.monotonic() - last < idle_s:
            got = consumer.poll(0.5)
            if got:
                events += got
                last = time.monotonic()
    return events


def fold(events: Iterable[Event], n_shards: int) -> DurableRecord:
    """The durable record of ``events`` (in any order, duplicates allowed)."""
    record = DurableRecord()
    seen: set[str] = set()
    # one crop recorded under two ids (its first write failed after the record, then was
    # retried: only the retry was stored) is rebuilt once, under the later id
    crop_ids: dict[tuple[str, int, int, int], tuple[str, int]] = {}
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        if isinstance(e, CropEvent):
            shard = shard_name(shard_of(e.camera, n_shards))
            record.max_vector_id = max(record.max_vector_id, e.vector_id)
            key = (e.camera, e.track_id, e.frame_index, e.ts_ns)
            if key in crop_ids:
                other_shard, other = crop_ids[key]
                if other >= e.vector_id:
                    continue
                record.crops[other_shard].pop(other, None)
            crop_ids[key] = (shard, e.vector_id)
            record.crops.setdefault(shard, {}).setdefault(e.vector_id, e)
        elif isinstance(e, TrackEvent) and e.phase == "end":
            key = (e.camera, e.track_id)
            motion = TrackMotion.from_dict(e.motion) if e.motion else None
            span = TrackSpan(e.camera, e.track_id, e.first_ts_ns, e.last_ts_ns, e.last_box,
                             motion=motion)
            record.spans[key] = record.spans[key].widened(span) if key in record.spans else span
        elif isinstance(e, ForgetEvent):
            record.forget(e.camera, e.track_id, e.ts_ns)
            record.max_vector_id = max([record.max_vector_id, *e.vector_ids])
    return record


def _record(e: CropEvent, model_id: str) -> CropRecord:
    return CropRecord(
        vector_id=e.vector_id, camera=e.camera, track_id=e.track_id, frame_index=e.frame_index,
        ts_ns=e.ts_ns, xyxy=e.box, confidence=0.0, quality=e.quality, crop_path=e.crop_path,
        model_id=model_id,
    )


def _read_events(cfg: RefindConfig, from_kafka: bool, idle_s: float,
                 kinds: Iterable[str] = JOURNAL_KINDS) -> list[Event]:
    if from_kafka:
        return read_kafka(cfg.kafka, idle_s, kinds)
    return read_journal(cfg.data_dir, kinds)


def rebuild_gallery(
    cfg: RefindConfig, *, from_kafka: bool = False, idle_s: float = 5.0, quiet: bool = True,
    force: bool = False,
) -> RebuildReport:
    """Rebuild the serving version from the durable record and switch to it; RebuildRefused
    (nothing changed) when that would hold fewer crops than the gallery, unless ``force``."""
    from tqdm import tqdm

    serving = serving_version(cfg)
    embedder = build_embedder(serving.cfg.embedder, ModelStore.from_config(cfg.models))
    data_dir = Path(cfg.data_dir)
    old_shards = existing_shards(serving.root)
    locks = [lock_gallery(s) for s in old_shards]  # no writer meanwhile
    source = "Kafka" if from_kafka else f"the journal in {journal_dir(data_dir)}"
    report = RebuildReport(embedder.model_id, source)
    tmp: Path | None = None
    try:
        start = time.perf_counter()
        record = fold(_read_events(cfg, from_kafka, idle_s), cfg.ray.index_writers)
        for gone in _forgotten_in(old_shards):  # forgotten here, whatever the record lacks
            record.forget(gone.camera, gone.track_id, gone.forgotten_ns)
        todo = {s: [e for _, e in sorted(c.items()) if (e.camera, e.track_id) not in
                    record.forgotten] for s, c in record.crops.items()}
        report.record_crops = sum(len(c) for c in todo.values())
        report.skipped_forgotten = sum(len(c) for c in record.crops.values()) - report.record_crops
        report.gallery_crops = _gallery_crops(old_shards, embedder.model_id)
        _check_not_smaller(report, report.record_crops, force, "the record holds")
        stem = index_stem(embedder.model_id)
        _remove_crashed_rebuilds(data_dir, stem)
        tmp = data_dir / "versions" / f".rebuild-{stem}-{os.getpid()}"
        embed = EmbedCrops(serving.cfg, embedder)
        with tqdm(total=report.record_crops, unit="crop", disable=quiet,
                  desc=f"rebuild {model_name(embedder.model_id)}", file=sys.stderr) as bar:
            for name in sorted(set(todo) | {s.name for s in old_shards}):
                (tmp / name).mkdir(parents=True, exist_ok=True)
                with SqliteMetadata(tmp / name / "metadata.sqlite3") as meta:
                    _rebuild_shard(meta, todo.get(name, []), record, embed, report, bar)
        _check_not_smaller(report, report.crops, force, "could be rebuilt from the record "
                           "(the others' JPEGs are missing or unreadable)")
        # tombstones written while we worked: their tracks must not come back
        late = fold(_read_events(cfg, from_kafka, min(idle_s, 1.0), kinds=("forget",)),
                    cfg.ray.index_writers)
        for shard in existing_shards(tmp):
            with SqliteMetadata(shard / "metadata.sqlite3") as meta:
                meta.mark_forgotten(late.tombstones())
            with GalleryStore(shard, cfg.gallery, embedder.model_id, embedder.dim) as store:
                store.save()
        final = data_dir / "versions" / f"{stem}-rebuilt-{time.time_ns()}"
        os.rename(tmp, final)
        tmp = None
        old_root = _switch_root(cfg, serving.cfg, embedder.model_id, embedder.dim,
                                str(final.relative_to(data_dir)))
    finally:
        for fd in locks:
            os.close(fd)
        if tmp is not None and tmp.exists():  # refused or failed: nothing is switched
            remove_root(data_dir, str(tmp.relative_to(data_dir)))
    remove_root(data_dir, old_root)
    report.root, report.replaced = str(final), old_root
    report.seconds = time.perf_counter() - start
    log.info("rebuilt %s: %s", embedder.model_id, report.to_json())
    return report


def _gallery_crops(shards: list[Path], model_id: str) -> int:
    """Crops of ``model_id`` the gallery's shards hold now."""
    total = 0
    for shard in shards:
        with SqliteMetadata(shard / "metadata.sqlite3", read_only=True) as meta:
            total += meta.count(model_id)
    return total


def _forgotten_in(shards: list[Path]) -> list[ForgottenTrack]:
    """The tracks the gallery's shards keep forgotten."""
    out: list[ForgottenTrack] = []
    for shard in shards:
        with SqliteMetadata(shard / "metadata.sqlite3", read_only=True) as meta:
            out += meta.forgotten()
    return out


def _check_not_smaller(report: RebuildReport, crops: int, force: bool, what: str) -> None:
    """RebuildRefused when ``crops`` is below what the gallery holds (unless ``force``)."""
    if crops >= report.gallery_crops:
        return
    lost = report.gallery_crops - crops
    message = (f"rebuild refused: the gallery holds {report.gallery_crops} crops of "
               f"{report.model_id}, but only {crops} {what} ({report.source}); rebuilding would "
               f"lose {lost}. Nothing was changed.")
    if report.skipped_missing:
        message += f" Missing, e.g.: {'; '.join(report.missing_examples[:3])}."
    if force:
        log.warning("%s Going on anyway (--force).", message.removeprefix("rebuild refused: "))
        return
    other = "without --from-kafka" if report.source == "Kafka" else "with --from-kafka"
    raise RebuildRefused(f"{message} Rebuild from the other record ({other}) if it holds "
                         "them, or pass --force to rebuild anyway and lose them.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_crashed_rebuilds(data_dir: Path, stem: str) -> None:
    """Delete the temporary folders of earlier rebuilds of ``stem`` whose process is gone (a
    crash or a kill); a live rebuild's folder (its pid still running) is left alone."""
    for left in (data_dir / "versions").glob(f".rebuild-{stem}-*"):
        pid = left.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        log.warning("rebuild: removing %s, left by a rebuild that did not finish", left)
        remove_root(data_dir, str(left.relative_to(data_dir)))


def _rebuild_shard(meta: SqliteMetadata, events: list[CropEvent], record: DurableRecord,
                   embed: EmbedCrops, report: RebuildReport, bar) -> None:  # type: ignore[no-untyped-def]
    """Embed and store one shard's crops; tombstones, spans and the id floor with them."""
    model_id = embed.embedder.model_id
    meta.mark_forgotten(record.tombstones())
    meta.raise_id_floor(record.max_vector_id + 1)
    for i in range(0, len(events), _BATCH):
        chunk = [_record(e, model_id) for e in events[i : i + _BATCH]]
        added, failed = embed_copies(embed, meta, chunk)
        report.crops += added
        for r in chunk:
            if r.vector_id in failed:
                report.skipped_missing += 1
                if len(report.missing_examples) < 5:
                    report.missing_examples.append(f"{r.crop_path}: {failed[r.vector_id]}")
        bar.update(len(chunk))
    meta.set_track_spans(span for _, span in sorted(record.spans.items()))  # forgotten: left out


def _switch_root(cfg: RefindConfig, serving_cfg: RefindConfig, model_id: str, dim: int,
                 root: str) -> str:
    """Point the serving version at ``root`` (creating the registry if needed); returns the
    root it had."""
    old: list[str] = []

    def change(reg: Registry | None) -> Registry:
        if reg is None:
            old.append(BASE_ROOT)
            v = Version(model_id, root, serving_cfg.embedder.model_dump(), dim)
            return Registry(model_id, {model_id: v})
        if reg.serving != model_id:
            raise RuntimeError(f"the serving version changed to {reg.serving} during the rebuild "
                               f"of {model_id}; nothing was switched")
        current = reg.versions[model_id]
        old.append(current.root)
        versions = dict(reg.versions)
        versions[model_id] = replace(current, root=root, state="ready", updated_ns=time.time_ns())
        return replace(reg, versions=versions)

    update_registry(cfg.data_dir, change)
    return old[0]
