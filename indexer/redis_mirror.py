"""Live metadata mirrored to Redis by the parts that know it, without ever stopping them.

``RedisMirror`` wraps ``RedisMetadata`` with one typed method per fact: a camera registered,
its status, a track seen, a track's crops stored, a track ended. A write that still fails after
the client's retries (``MetadataUnavailable``) is logged and skipped: the gallery keeps the
crops, and the next write of the same track or camera replaces it. A Redis restarted without
persistence forgets its cameras; a status write then registers the camera again.

Example:
    >>> mirror = RedisMirror.open(cfg)            # None unless metadata.type is redis  # doctest: +SKIP
    >>> mirror.track_seen(span)                                                         # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from refind.config import RefindConfig
from refind.indexer.metadata import TrackSummary
from refind.indexer.redis_meta import CameraCounters, MetadataUnavailable, RedisMetadata, TrackState
from refind.streaming.events import CameraState
from refind.streaming.records import TrackSpan

log = logging.getLogger(__name__)


class RedisMirror:
    """Outage-tolerant, typed writes of cameras and tracks to Redis (module docstring)."""

    def __init__(self, redis: RedisMetadata) -> None:
        self.redis = redis
        self.skipped = 0  # writes given up on while Redis was unreachable

    @classmethod
    def open(cls, cfg: RefindConfig) -> RedisMirror | None:
        """A mirror when the config keeps metadata in Redis, else None."""
        if cfg.metadata.type != "redis":
            return None
        return cls(RedisMetadata(cfg.metadata))  # type: ignore[arg-type]

    def _skip(self, what: str, err: MetadataUnavailable) -> None:
        self.skipped += 1
        log.warning("redis: %s skipped: %s", what, err)

    def camera(self, name: str, url: str) -> None:
        try:
            self.redis.register_camera(name, url)
        except MetadataUnavailable as err:
            self._skip(f"registering camera {name}", err)

    def camera_status(self, name: str, url: str, state: CameraState, message: str,
                      counters: CameraCounters) -> None:
        try:
            try:
                self.redis.set_camera_status(name, state, message, counters)
            except ValueError:  # Redis forgot the camera (restarted without persistence)
                self.redis.register_camera(name, url)
                self.redis.set_camera_status(name, state, message, counters)
        except MetadataUnavailable as err:
            self._skip(f"status of camera {name}", err)

    def track_seen(self, span: TrackSpan) -> None:
        """A track the tracker reports, before any crop of it is stored."""
        try:
            self.redis.upsert_track(span.camera, span.track_id, span.first_ts_ns,
                                    span.last_ts_ns, 0, None, "active")
        except MetadataUnavailable as err:
            self._skip(f"track {span.camera}/{span.track_id}", err)

    def track_stored(self, summary: TrackSummary, vector_ids: Sequence[int], shard: int,
                     state: TrackState = "active", span: TrackSpan | None = None) -> None:
        """A track's stored crops (its summary after a write) and its vectors' shard."""
        start, end = summary.start_ts_ns, summary.end_ts_ns
        if span is not None:
            start, end = min(start, span.first_ts_ns), max(end, span.last_ts_ns)
        try:
            self.redis.upsert_track(summary.camera, summary.track_id, start, end,
                                    summary.n_crops, summary.best.crop_path, state)
            self.redis.map_vectors(vector_ids, summary.camera, summary.track_id, shard)
        except MetadataUnavailable as err:
            self._skip(f"track {summary.camera}/{summary.track_id}", err)

    def track_ended(self, span: TrackSpan, summary: TrackSummary | None, shard: int,
                    vector_ids: Sequence[int] = ()) -> None:
        if summary is not None:
            self.track_stored(summary, vector_ids, shard, "ended", span)
            return
        try:
            self.redis.upsert_track(span.camera, span.track_id, span.first_ts_ns,
                                    span.last_ts_ns, 0, None, "ended")
        except MetadataUnavailable as err:
            self._skip(f"track {span.camera}/{span.track_id}", err)

    def close(self) -> None:
        self.redis.close()
