"""Shared metadata in Redis: the camera registry and status, track metadata, vector id mappings.

Every node of a deployment reads and writes the same Redis; each gallery shard's SQLite file
still holds its vectors (see ``refind.indexer.metadata``). Keys, under ``cfg.key_prefix`` (``P``):

- ``P:cameras`` set of camera names; ``P:camera:<name>`` hash: url, state, message, counters;
- ``P:track:<camera>:<track_id>`` hash: time span, crop count, best crop, state;
  ``P:tracks:<camera>`` sorted set of track ids scored by start time;
- ``P:vectors:<shard>`` hash: vector id -> ``<camera>:<track_id>`` (ids are unique per shard).

Writes that touch several keys run in one MULTI/EXEC transaction; a write whose reply was lost is
retried whole, which is safe because every write sets values (no increments).

Outages: every command is retried on a connection error or timeout with exponential backoff
(``cfg.retries`` times, waits 0.1 s doubling up to ``cfg.retry_backoff_max_s``), reconnecting
to a restarted Redis transparently. When Redis is still unreachable after the retries, the call
raises ``MetadataUnavailable`` (within about ``retries x (socket_timeout_s + backoff)``); the
caller keeps what it meant to write and tries again later. A Redis restarted without
persistence comes back empty: a status write for a camera it no longer knows raises ValueError,
the owner's cue to register the camera again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

from refind.indexer.config import RedisMetadataConfig
from refind.streaming.config import NAME_PATTERN, redact_credentials
from refind.streaming.events import CameraState

log = logging.getLogger(__name__)

TrackState = Literal["active", "ended"]
_NAME = re.compile(NAME_PATTERN)
_T = TypeVar("_T")

# KEYS: registry set, camera hash. ARGV: name, then field/value pairs.
# The status of a camera not in the registry is refused, so a late status write cannot bring
# back a camera that was just removed.
_SET_STATUS = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""


class MetadataUnavailable(RuntimeError):
    """Redis did not answer after the retries; keep the write and try it again later."""


@dataclass(frozen=True)
class CameraCounters:
    """Running counters of one camera since it was started."""

    frames_in: int = 0
    frames_dropped: int = 0
    reconnects: int = 0


@dataclass(frozen=True)
class CameraEntry:
    """A registered camera and its last reported status (``updated_ns``: wall clock)."""

    name: str
    url: str
    state: CameraState
    message: str
    counters: CameraCounters
    registered_ns: int
    updated_ns: int


@dataclass(frozen=True)
class TrackMeta:
    """One track of one camera; ``best_crop_path`` is None until a crop is stored."""

    camera: str
    track_id: int
    start_ts_ns: int
    end_ts_ns: int
    n_crops: int
    best_crop_path: str | None
    state: TrackState
    updated_ns: int


@dataclass(frozen=True)
class VectorRef:
    """Where a gallery vector came from: the track of a camera, and the shard that holds it."""

    vector_id: int
    camera: str
    track_id: int
    shard: int


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"camera name must match {_NAME.pattern}, got {name!r}")


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(choices)}")


class RedisMetadata:
    """Camera registry, track metadata and vector id mappings in one Redis database.

    Example:
        >>> meta = RedisMetadata(RedisMetadataConfig(url="redis://127.0.0.1:6379/0"))  # doctest: +SKIP
        >>> meta.register_camera("gate", "rtsp://cam-gate/stream")  # doctest: +SKIP
        >>> meta.set_camera_status("gate", "live", counters=CameraCounters(frames_in=10))  # doctest: +SKIP
        >>> [c.state for c in meta.cameras()]  # doctest: +SKIP
        ['live']
    """

    def __init__(self, cfg: RedisMetadataConfig) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self.cfg = cfg
        self._errors = (redis.ConnectionError, redis.TimeoutError)
        retry = Retry(ExponentialBackoff(cap=cfg.retry_backoff_max_s, base=0.05), cfg.retries)
        self._redis = redis.Redis.from_url(
            cfg.url, decode_responses=True, socket_timeout=cfg.socket_timeout_s,
            socket_connect_timeout=cfg.socket_timeout_s, retry=retry,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=30,
        )
        self._set_status = self._redis.register_script(_SET_STATUS)
        self._p = cfg.key_prefix

    def _call(self, op: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except self._errors as err:
            raise MetadataUnavailable(
                f"Redis at {redact_credentials(self.cfg.url)} unavailable for {op} after "
                f"{self.cfg.retries} retries: {err}"
            ) from err

    def ping(self) -> bool:
        """True if Redis answers (after the retries), False if not."""
        try:
            return bool(self._call("ping", self._redis.ping))
        except MetadataUnavailable as err:
            log.warning("%s", err)
            return False

    def close(self) -> None:
        self._redis.close()

    # -- cameras -----------------------------------------------------------------------------

    def register_camera(self, name: str, url: str) -> None:
        """Add a camera (state ``stopped``) or change its URL, keeping its status."""
        _check_name(name)
        if not url:
            raise ValueError(f"camera {name!r}: url must not be empty")
        key = f"{self._p}:camera:{name}"

        def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.sadd(f"{self._p}:cameras", name)
            pipe.hset(key, mapping={"name": name, "url": url})
            for field, value in (("state", "stopped"), ("message", ""), ("frames_in", 0),
                                 ("frames_dropped", 0), ("reconnects", 0),
                                 ("registered_ns", time.time_ns()), ("updated_ns", time.time_ns())):
                pipe.hsetnx(key, field, value)
            pipe.execute()

        self._call(f"register_camera({name!r})", write)

    def set_camera_status(self, name: str, state: CameraState, message: str = "",
                          counters: CameraCounters | None = None) -> None:
        """Record a registered camera's state; raises ValueError for an unregistered one."""
        _check_name(name)
        _check_choice(state, tuple(s.value for s in CameraState), "camera state")
        fields: dict[str, object] = {"state": state, "message": message,
                                     "updated_ns": time.time_ns()}
        if counters is not None:
            fields |= {"frames_in": counters.frames_in, "frames_dropped": counters.frames_dropped,
                       "reconnects": counters.reconnects}
        args = [name, *(str(x) for kv in fields.items() for x in kv)]
        keys = [f"{self._p}:cameras", f"{self._p}:camera:{name}"]
        done = self._call(f"set_camera_status({name!r})",
                          lambda: self._set_status(keys=keys, args=args))
        if not done:
            raise ValueError(f"camera {name!r} is not registered; register_camera() it first")

    def cameras(self) -> list[CameraEntry]:
        """Every registered camera with its last status, sorted by name."""

        def read() -> list[dict[str, str]]:
            names = sorted(self._redis.smembers(f"{self._p}:cameras"))
            pipe = self._redis.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(f"{self._p}:camera:{name}")
            return [h for h in pipe.execute() if h]

        return [_camera(h) for h in self._call("cameras()", read)]

    def remove_camera(self, name: str) -> bool:
        """Drop a camera from the registry (its tracks stay); False if it was not registered."""
        _check_name(name)

        def write() -> bool:
            pipe = self._redis.pipeline(transaction=True)
            pipe.srem(f"{self._p}:cameras", name)
            pipe.delete(f"{self._p}:camera:{name}")
            return bool(pipe.execute()[0])

        return self._call(f"remove_camera({name!r})", write)

    # -- tracks ------------------------------------------------------------------------------

    def upsert_track(self, camera: str, track_id: int, start_ts_ns: int, end_ts_ns: int,
                     n_crops: int, best_crop_path: str | None, state: TrackState) -> None:
        """Create or replace one track's metadata."""
        _check_name(camera)
        _check_choice(state, get_args(TrackState), "track state")
        if track_id < 0 or n_crops < 0:
            raise ValueError(f"track_id and n_crops must be >= 0, got {track_id}, {n_crops}")
        if end_ts_ns < start_ts_ns:
            raise ValueError(f"track {camera}/{track_id}: end_ts_ns {end_ts_ns} is before "
                             f"start_ts_ns {start_ts_ns}")
        fields = {"camera": camera, "track_id": track_id, "start_ts_ns": start_ts_ns,
                  "end_ts_ns": end_ts_ns, "n_crops": n_crops, "best_crop_path": best_crop_path or "",
                  "state": state, "updated_ns": time.time_ns()}

        def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(f"{self._p}:track:{camera}:{track_id}", mapping=fields)
            pipe.zadd(f"{self._p}:tracks:{camera}", {str(track_id): start_ts_ns})
            pipe.execute()

        self._call(f"upsert_track({camera!r}, {track_id})", write)

    def track(self, camera: str, track_id: int) -> TrackMeta | None:
        """One track's metadata, None if unknown."""
        _check_name(camera)
        h = self._call(f"track({camera!r}, {track_id})",
                       lambda: self._redis.hgetall(f"{self._p}:track:{camera}:{track_id}"))
        return _track(h) if h else None

    def tracks(self, camera: str) -> list[TrackMeta]:
        """Every track of a camera, by start time."""
        _check_name(camera)

        def read() -> list[dict[str, str]]:
            ids = self._redis.zrange(f"{self._p}:tracks:{camera}", 0, -1)
            pipe = self._redis.pipeline(transaction=False)
            for tid in ids:
                pipe.hgetall(f"{self._p}:track:{camera}:{tid}")
            return [h for h in pipe.execute() if h]

        return [_track(h) for h in self._call(f"tracks({camera!r})", read)]

    def remove_track(self, camera: str, track_id: int,
                     vector_ids: Mapping[int, Sequence[int]] | None = None) -> bool:
        """Delete one track's metadata and its vector mappings (``{shard: ids}``), in one
        transaction; True if the track was known."""
        _check_name(camera)
        ids = {shard: [str(int(v)) for v in vs] for shard, vs in (vector_ids or {}).items() if vs}

        def write() -> bool:
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(f"{self._p}:track:{camera}:{track_id}")
            pipe.zrem(f"{self._p}:tracks:{camera}", str(track_id))
            for shard, keys in ids.items():
                pipe.hdel(f"{self._p}:vectors:{shard}", *keys)
            deleted, unlisted, *_ = pipe.execute()
            return bool(deleted or unlisted)

        return self._call(f"remove_track({camera!r}, {track_id})", write)

    # -- vector ids --------------------------------------------------------------------------

    def map_vectors(self, vector_ids: Sequence[int], camera: str, track_id: int,
                    shard: int) -> None:
        """Record that these vectors of ``shard`` were embedded from a track of ``camera``."""
        _check_name(camera)
        if shard < 0 or track_id < 0:
            raise ValueError(f"shard and track_id must be >= 0, got {shard}, {track_id}")
        bad = [v for v in vector_ids if int(v) < 0]
        if bad:
            raise ValueError(f"vector ids must be >= 0, got {bad[:5]}")
        if not vector_ids:
            return
        ref = f"{camera}:{track_id}"
        mapping = {str(int(v)): ref for v in vector_ids}
        self._call(f"map_vectors(shard {shard})",
                   lambda: self._redis.hset(f"{self._p}:vectors:{shard}", mapping=mapping))

    def lookup_vectors(self, ids: Sequence[int], shard: int) -> list[VectorRef | None]:
        """Where each vector of ``shard`` came from, in the order given; None where unknown."""
        if not ids:
            return []
        keys = [str(int(v)) for v in ids]
        refs = self._call(f"lookup_vectors(shard {shard})",
                          lambda: self._redis.hmget(f"{self._p}:vectors:{shard}", keys))
        out: list[VectorRef | None] = []
        for vid, ref in zip(keys, refs, strict=True):
            if ref is None:
                out.append(None)
                continue
            camera, track_id = ref.rsplit(":", 1)
            out.append(VectorRef(int(vid), camera, int(track_id), shard))
        return out


def _camera(h: Mapping[str, str]) -> CameraEntry:
    counters = CameraCounters(int(h["frames_in"]), int(h["frames_dropped"]), int(h["reconnects"]))
    return CameraEntry(
        name=h["name"], url=h["url"], state=CameraState(h["state"]), message=h["message"],
        counters=counters, registered_ns=int(h["registered_ns"]), updated_ns=int(h["updated_ns"]),
    )


def _track(h: Mapping[str, str]) -> TrackMeta:
    return TrackMeta(
        camera=h["camera"], track_id=int(h["track_id"]), start_ts_ns=int(h["start_ts_ns"]),
        end_ts_ns=int(h["end_ts_ns"]), n_crops=int(h["n_crops"]),
        best_crop_path=h["best_crop_path"] or None, state=h["state"],  # type: ignore[arg-type]
        updated_ns=int(h["updated_ns"]),
    )
