"""Where a camera's chosen crops end up: JPEGs, vectors and metadata, the durable record, Redis.

``CropSink`` is the storing half of every ingest path: ``refind ingest`` calls it directly and
each live index writer (``actors/writer.py``) wraps one. For a batch of embedded crops it writes
the JPEGs, then records the crop events and commits vectors and metadata in one gallery
transaction (``GalleryStore.add``: the durable record first), then mirrors the tracks it
touched to Redis when metadata lives there. ``end_tracks`` records ended tracks the same way.
Crops of a forgotten track are refused by the gallery and their JPEGs deleted again.

Example:
    >>> with open_sink(cfg, embedder.model_id, embedder.dim, cfg.data_dir) as sink:  # doctest: +SKIP
    ...     stored = sink.store(crops, embedder([c.image for c in crops]))
    ...     sink.end_tracks(result.ended)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from refind.config import RefindConfig
from refind.indexer.blobs import CropStore
from refind.indexer.gallery_store import GalleryStore
from refind.indexer.record import EventRecord
from refind.indexer.redis_mirror import RedisMirror
from refind.indexer.shards import shard_dir
from refind.streaming.clips import TrackClip
from refind.streaming.events import TrackEvent
from refind.streaming.records import Crop, CropRecord, Embeddings, TrackSpan

log = logging.getLogger(__name__)


class CropSink:
    """Stores embedded crops and ended tracks of one gallery shard (module docstring)."""

    def __init__(
        self,
        gallery: GalleryStore,
        crops: CropStore,
        record: EventRecord | None = None,
        redis: RedisMirror | None = None,
        shard: int = 0,
    ) -> None:
        self.gallery = gallery
        self.crops = crops
        self.record = record
        self.redis = redis
        self.shard = shard
        self.stored = 0

    @property
    def model_id(self) -> str:
        return self.gallery.model_id

    def max_track_id(self, camera: str) -> int:
        """Largest track id stored for ``camera`` (0 if none): the id offset of a new run."""
        return self.gallery.max_track_id(camera)

    def store(self, crops: Sequence[Crop], embeddings: Embeddings) -> list[CropRecord]:
        """Write crops as JPEG, then record and commit them with their vectors; returns the
        records stored, in the order of ``crops`` (a forgotten track's crops are refused and
        their JPEGs deleted).

        Idempotent: a crop already stored (same camera, track, frame and time, by this model: a
        write retried after a writer died between its commit and its answer) is not stored
        again; its stored record is returned. When a JPEG cannot be written (a full disk), the
        batch's JPEGs written so far are deleted and nothing is recorded."""
        if len(crops) != len(embeddings):
            raise ValueError(f"{len(crops)} crops but {len(embeddings)} embeddings")
        if not crops:
            return []
        def key(c: Crop | CropRecord) -> tuple[str, int, int, int]:
            return c.camera, int(c.track_id), int(c.frame_index), int(c.ts_ns)

        before = self.gallery.metadata.stored_already([key(c) for c in crops],
                                                      embeddings.model_id)
        new = [i for i, c in enumerate(crops) if key(c) not in before]
        if before:
            log.info("shard %d: %d crops were stored already (a retried write); kept once",
                     self.shard, len(crops) - len(new))
        first_id = self.gallery.next_vector_id()
        records: list[CropRecord] = []
        try:
            for n, c in enumerate(crops[i] for i in new):
                path = self.crops.put(c.camera, c.track_id, c.frame_index, c.image, c.jpeg,
                                      c.context_jpeg)
                records.append(CropRecord(
                    vector_id=first_id + n, camera=c.camera, track_id=c.track_id,
                    frame_index=c.frame_index, ts_ns=c.ts_ns,
                    xyxy=tuple(float(v) for v in c.xyxy),  # type: ignore[arg-type]
                    confidence=float(c.confidence), quality=float(c.quality), crop_path=path,
                    model_id=embeddings.model_id,
                ))
        except BaseException:  # a full disk, say: nothing of this batch was recorded
            for r in records:
                self.crops.delete(r.crop_path)
            raise
        vectors = Embeddings(embeddings.vectors[new], embeddings.model_id)
        stored = self.gallery.add(records, vectors) if records else []
        if len(stored) < len(records):
            kept = {r.vector_id for r in stored}
            for r in records:
                if r.vector_id not in kept:
                    self.crops.delete(r.crop_path)
        self.stored += len(stored)
        if self.redis is not None:
            self._mirror(stored)
        by_key = {key(r): r for r in stored} | before
        return [by_key[key(c)] for c in crops if key(c) in by_key]

    def put_clip(self, clip: TrackClip) -> str | None:
        """Store an ended track's clip; a forgotten track's is refused (None)."""
        if self.gallery.is_forgotten(clip.camera, clip.track_id):
            return None
        return self.crops.put_clip(clip.camera, clip.track_id, clip.data)

    def end_tracks(self, spans: Sequence[TrackSpan]) -> list[TrackEvent]:
        """Tracks ended (after their crops were stored): recorded, spans kept, Redis told."""
        if not spans:
            return []
        events = self.gallery.end_tracks(list(spans))
        if self.redis is not None:  # a forgotten track's span has no event
            by_track = {(s.camera, s.track_id): s for s in spans}
            for event in events:
                summary = self.gallery.track(event.camera, event.track_id)
                self.redis.track_ended(by_track[event.camera, event.track_id], summary,
                                       self.shard, event.vector_ids)
        return events

    def _mirror(self, stored: list[CropRecord]) -> None:
        assert self.redis is not None
        by_track: dict[tuple[str, int], list[int]] = {}
        for r in stored:
            by_track.setdefault((r.camera, r.track_id), []).append(r.vector_id)
        for (camera, track_id), ids in by_track.items():
            summary = self.gallery.track(camera, track_id)
            if summary is not None:
                self.redis.track_stored(summary, ids, self.shard)

    def save(self) -> None:
        self.gallery.save()

    def close(self) -> None:
        """Save the index, flush Kafka, close the gallery and Redis."""
        try:
            self.gallery.save()
        finally:
            self.gallery.close()
            if self.record is not None:
                self.record.close()
            if self.redis is not None:
                self.redis.close()

    def __enter__(self) -> CropSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_sink(
    cfg: RefindConfig, model_id: str, dim: int, root: Path | None = None, shard: int = 0,
) -> CropSink:
    """The sink of shard ``shard`` of the version under ``root`` (default ``cfg.data_dir``),
    with the deployment's durable record (journal, and Kafka when on) and Redis mirror."""
    root = Path(cfg.data_dir) if root is None else Path(root)
    record = EventRecord.open(cfg)
    try:
        gallery = GalleryStore(shard_dir(root, shard), cfg.gallery, model_id, dim, record=record)
    except BaseException:
        record.close(timeout_s=1.0)
        raise
    return CropSink(gallery, CropStore.from_config(cfg), record, RedisMirror.open(cfg), shard)
