"""Rebuild the serving gallery and its metadata from the durable record.

The durable record is the crop store's JPEGs plus the events (``streaming.events``): from Kafka
(``<prefix>.crops``, ``.tracks``, ``.forget``) with ``from_kafka``, else from the local journal
(``indexer.journal``, what ``refind ingest`` writes). The SQLite metadata and the FAISS indexes
are views of it:

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

Example:
    >>> rebuild_gallery(cfg)["crops"]                                        # doctest: +SKIP
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

from indexer.gallery_store import GalleryStore, index_stem, lock_gallery
from indexer.ingest import build_embedder
from indexer.journal import JOURNAL_KINDS, EventJournal, journal_dir
from indexer.metadata import SqliteMetadata, spans_by_camera
from indexer.reindex import EmbedCrops, embed_copies
from indexer.shards import existing_shards, shard_name, shard_of
from indexer.versions import (
    BASE_ROOT,
    Registry,
    Version,
    remove_root,
    serving_version,
    update_registry,
)
from models.base import model_name
from models.store import ModelStore
from streaming.config import KafkaConfig, RefindConfig
from streaming.events import CropEvent, Event, ForgetEvent, TrackEvent, resolve_topic
from streaming.records import CropRecord

log = logging.getLogger(__name__)

_BATCH = 64


@dataclass
class DurableRecord:
    """The events folded: crops per shard, track spans, tombstones, the highest id seen."""

    crops: dict[str, dict[int, CropEvent]] = field(default_factory=dict)
    spans: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    forgotten: dict[tuple[str, int], int] = field(default_factory=dict)
    max_vector_id: int = -1


def read_journal(data_dir: Path) -> list[Event]:
    """Every event of the local journal."""
    journal = EventJournal(journal_dir(data_dir))
    return [e for kind in JOURNAL_KINDS for e in journal.read(kind)]


def read_kafka(cfg: KafkaConfig, idle_s: float = 5.0, kinds: Iterable[str] = JOURNAL_KINDS,
               ) -> list[Event]:
    """Every event on the crops, tracks and forget topics, from their beginning, until none
    has arrived for ``idle_s`` seconds."""
    from streaming.consumer import EventConsumer

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
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        if isinstance(e, CropEvent):
            shard = shard_name(shard_of(e.camera, n_shards))
            record.crops.setdefault(shard, {}).setdefault(e.vector_id, e)
            record.max_vector_id = max(record.max_vector_id, e.vector_id)
        elif isinstance(e, TrackEvent) and e.phase == "end":
            key = (e.camera, e.track_id)
            a, b = record.spans.get(key, (e.first_ts_ns, e.last_ts_ns))
            record.spans[key] = (min(a, e.first_ts_ns), max(b, e.last_ts_ns))
        elif isinstance(e, ForgetEvent):
            key = (e.camera, e.track_id)
            record.forgotten[key] = min(record.forgotten.get(key, e.ts_ns), e.ts_ns)
            record.max_vector_id = max([record.max_vector_id, *e.vector_ids])
    return record


def _record(e: CropEvent, model_id: str) -> CropRecord:
    return CropRecord(
        vector_id=e.vector_id, camera=e.camera, track_id=e.track_id, frame_index=e.frame_index,
        ts_ns=e.ts_ns, xyxy=e.box, confidence=0.0, quality=e.quality, crop_path=e.crop_path,
        model_id=model_id,
    )


def _read_events(cfg: RefindConfig, from_kafka: bool, idle_s: float) -> list[Event]:
    return read_kafka(cfg.kafka, idle_s) if from_kafka else read_journal(cfg.data_dir)


def rebuild_gallery(
    cfg: RefindConfig, *, from_kafka: bool = False, idle_s: float = 5.0, quiet: bool = True,
) -> dict[str, object]:
    """Rebuild the serving version from the durable record and switch to it; returns a report."""
    from tqdm import tqdm

    serving = serving_version(cfg)
    embedder = build_embedder(serving.cfg, ModelStore.from_config(cfg.models))
    data_dir = Path(cfg.data_dir)
    old_shards = existing_shards(serving.root)
    locks = [lock_gallery(s) for s in old_shards]  # no writer meanwhile
    try:
        start = time.perf_counter()
        record = fold(_read_events(cfg, from_kafka, idle_s), cfg.ray.index_writers)
        stem = index_stem(embedder.model_id)
        _remove_crashed_rebuilds(data_dir, stem)
        tmp = data_dir / "versions" / f".rebuild-{stem}-{os.getpid()}"
        embed = EmbedCrops(serving.cfg, embedder)
        report = {"model_id": embedder.model_id, "crops": 0, "skipped_forgotten": 0,
                  "skipped_missing": 0, "missing_examples": [], "events": 0}
        todo = {s: [e for _, e in sorted(c.items()) if (e.camera, e.track_id) not in
                    record.forgotten] for s, c in record.crops.items()}
        report["skipped_forgotten"] = sum(len(c) for c in record.crops.values()) - sum(
            len(c) for c in todo.values())
        with tqdm(total=sum(len(c) for c in todo.values()), unit="crop", disable=quiet,
                  desc=f"rebuild {model_name(embedder.model_id)}", file=sys.stderr) as bar:
            for name in sorted(set(todo) | {s.name for s in old_shards}):
                (tmp / name).mkdir(parents=True, exist_ok=True)
                with SqliteMetadata(tmp / name / "metadata.sqlite3") as meta:
                    _rebuild_shard(meta, todo.get(name, []), record, embed, report, bar)
        # tombstones written while we worked: their tracks must not come back
        late = fold(_read_events(cfg, from_kafka, min(idle_s, 1.0)), cfg.ray.index_writers)
        for shard in existing_shards(tmp):
            with SqliteMetadata(shard / "metadata.sqlite3") as meta:
                meta.mark_forgotten((c, t, ns) for (c, t), ns in late.forgotten.items())
            with GalleryStore(shard, cfg.gallery, embedder.model_id, embedder.dim) as store:
                store.save()
        final = data_dir / "versions" / f"{stem}-rebuilt-{time.time_ns()}"
        os.rename(tmp, final)
        old_root = _switch_root(cfg, serving.cfg, embedder.model_id, embedder.dim,
                                str(final.relative_to(data_dir)))
    finally:
        for fd in locks:
            os.close(fd)
    remove_root(data_dir, old_root)
    report |= {"root": str(final), "replaced": old_root,
               "seconds": round(time.perf_counter() - start, 3)}
    log.info("rebuilt %s: %s", embedder.model_id, report)
    return report


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
                   embed: EmbedCrops, report: dict, bar) -> None:  # type: ignore[type-arg]
    """Embed and store one shard's crops; tombstones, spans and the id floor with them."""
    model_id = embed.embedder.model_id
    meta.mark_forgotten((c, t, ns) for (c, t), ns in record.forgotten.items())
    meta.raise_id_floor(record.max_vector_id + 1)
    for i in range(0, len(events), _BATCH):
        chunk = [_record(e, model_id) for e in events[i : i + _BATCH]]
        added, failed = embed_copies(embed, meta, chunk)
        report["crops"] += added
        for r in chunk:
            if r.vector_id in failed:
                report["skipped_missing"] += 1
                if len(report["missing_examples"]) < 5:
                    report["missing_examples"].append(f"{r.crop_path}: {failed[r.vector_id]}")
        bar.update(len(chunk))
    spans = spans_by_camera((c, t, a, b) for (c, t), (a, b) in record.spans.items()
                            if (c, t) not in record.forgotten)
    for camera, rows in spans.items():
        meta.set_track_spans(camera, rows)


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
