"""Versioned event schemas that refind publishes to Kafka, and their JSON wire format.

Every event is a frozen pydantic model whose JSON carries ``"schema": "refind.<kind>.v<N>"``;
:func:`decode` dispatches on it and refuses a schema it does not know, naming the ones it does.
Readers forbid unknown fields, so any change to a schema is a new version (``v2``) with a new model
beside the old.
Times are integers in nanoseconds: ``ts_ns`` when the thing happened (frame time), ``emitted_ns``
when the event was made (wall clock). ``event_id`` (uuid4 hex) names one event for de-duplication.

Topics (``topic_for``), one per kind, under ``KafkaConfig.topic_prefix``:

- ``<prefix>.detections``: ``DetectionEvent``, the boxes of one analysed frame (the busiest
  topic; off when ``KafkaConfig.publish_detections`` is false);
- ``<prefix>.tracks``: ``TrackEvent``, a track started, was updated, or ended;
- ``<prefix>.crops``: ``CropEvent``, a crop was stored and its embedding added to the gallery;
- ``<prefix>.camera-status``: ``CameraStatusEvent``, a camera's connection state and counters;
- ``<prefix>.forget``: ``ForgetEvent``, a tombstone: a track was forgotten (its crops, vectors
  and metadata deleted); consumers delete what they hold of it and never store it again;
- ``<prefix>.identities``: ``IdentityEvent``, a track's global person id: assigned (every track
  with a stored crop gets one, at its first crop), and every revision: a merge of two global ids
  or a track split off one (``refind.indexer.identities``);
- ``<prefix>.alerts``: ``AlertEvent``, a watch matched a track (``refind.indexer.watchlist``);
- ``<prefix>.embeddings``: ``EmbeddingEvent``, a track's mean ReID vector with its ``model_id``
  and global id, at each update (only when ``KafkaConfig.publish_embeddings``).

Delivery guarantee (the same on every topic), as published by ``refind.streaming.bus.EventBus``:

- **At least once, for every event the bus accepted.** The producer waits for ``acks=all`` and
  retries until ``KafkaConfig.delivery_timeout_s`` has passed; an accepted event is delivered,
  or logged and counted as failed, never dropped silently. (With its buffer full, the bus
  refuses new events, counting them, rather than drop accepted ones.) A retry after a lost
  acknowledgement can deliver an event twice: **consumers de-duplicate by ``event_id``**.
- **Per-camera order.** The message key is the camera name, so one camera's events go to one
  partition, and ``max_in_flight_requests_per_connection=1`` keeps retries from reordering them.
  The one exception: an event re-sent after a broker error that the client does not retry itself
  (logged as a warning) lands after the camera's later events; order by ``ts_ns`` if it matters.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from refind.streaming.config import NAME_PATTERN
from refind.streaming.records import Box, CropRecord, Detections, TrackSpan


class CameraState(enum.StrEnum):
    """Where a live camera's reader is: the one definition (events, Redis, metrics, the reader).

    Example:
        >>> CameraState("live") is CameraState.LIVE and CameraState.LIVE == "live"
        True
    """

    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"
    FAILED = "failed"

TrackPhase = Literal["start", "update", "end"]


class EventDecodeError(ValueError):
    """Bytes that are not a known refind event; the message says what is wrong with them."""


def _check_box(box: Box, what: str) -> None:
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{what}: box must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1, got {box}")


class BaseEvent(BaseModel):
    """Fields every event carries. Subclasses set ``schema_id`` (JSON key ``schema``)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, validate_by_name=True,
        validate_by_alias=True, serialize_by_alias=True,
    )

    topic_kind: ClassVar[str]

    schema_id: str = Field(alias="schema", description="refind.<kind>.v<N>; set by each class.")
    event_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex, pattern=r"^[0-9a-f]{32}$",
        description="uuid4 hex; consumers de-duplicate on it.",
    )
    camera: str = Field(..., pattern=NAME_PATTERN, description="Camera name.")
    ts_ns: int = Field(..., ge=0, description="When it happened (frame time), ns.")
    emitted_ns: int = Field(
        default_factory=time.time_ns, ge=0, description="When the event was made, wall clock ns."
    )


class DetectionEvent(BaseEvent):
    """Person boxes found in one analysed frame.

    Example:
        >>> e = DetectionEvent(camera="gate", ts_ns=0, frame_index=3,
        ...                    boxes=((0, 0, 10, 20),), confidences=(0.9,))
        >>> decode(encode(e)) == e
        True
    """

    topic_kind: ClassVar[str] = "detections"

    schema_id: Literal["refind.detection.v1"] = Field("refind.detection.v1", alias="schema")
    frame_index: int = Field(..., ge=0, description="0-based frame index in the camera's stream.")
    boxes: tuple[Box, ...] = Field((), description="xyxy pixel boxes.")
    confidences: tuple[float, ...] = Field((), description="Detector score per box, in [0, 1].")

    @model_validator(mode="after")
    def _rows_match(self) -> DetectionEvent:
        if len(self.boxes) != len(self.confidences):
            raise ValueError(
                f"{len(self.boxes)} boxes but {len(self.confidences)} confidences: need one each"
            )
        for i, box in enumerate(self.boxes):
            _check_box(box, f"boxes[{i}]")
        bad = [c for c in self.confidences if not 0.0 <= c <= 1.0]
        if bad:
            raise ValueError(f"confidences must be in [0, 1], got {bad[:5]}")
        return self

    @classmethod
    def from_detections(
        cls, camera: str, frame_index: int, ts_ns: int, detections: Detections
    ) -> DetectionEvent:
        """The event for one frame's ``Detections`` record."""
        boxes = tuple(tuple(float(v) for v in row) for row in detections.xyxy)
        conf = tuple(float(c) for c in np.clip(detections.confidence, 0.0, 1.0))
        return cls(camera=camera, frame_index=frame_index, ts_ns=ts_ns, boxes=boxes,
                   confidences=conf)


class TrackEvent(BaseEvent):
    """A track started, was updated (new crops or box), or ended.

    ``ts_ns`` is the time of the frame that caused the event (usually ``last_ts_ns``).
    """

    topic_kind: ClassVar[str] = "tracks"

    schema_id: Literal["refind.track.v1"] = Field("refind.track.v1", alias="schema")
    phase: TrackPhase
    track_id: int = Field(..., ge=0, description="Unique within the camera.")
    first_ts_ns: int = Field(..., ge=0, description="First frame of the track, ns.")
    last_ts_ns: int = Field(..., ge=0, description="Last frame seen so far, ns.")
    last_box: Box = Field(..., description="xyxy pixel box at last_ts_ns.")
    n_crops: int = Field(0, ge=0, description="Crops kept so far.")
    best_crop: str | None = Field(None, description="Path or URL of the best crop so far.")
    vector_ids: tuple[int, ...] = Field((), description="Gallery ids of the track's embeddings.")
    model_id: str | None = Field(None, min_length=1, description="Embedder of vector_ids.")
    motion: dict[str, float | str] | None = Field(
        None, description="How the track moved (phase end): vx, vy (person heights per second, "
        "+x right, +y down), growth (d ln height / dt), speed, still (share of time standing), "
        "duration_s, height_px, and enter / exit (left, right, top, bottom: the frame edge the "
        "track began or ended at; empty when inside the frame, absent when the frame size was "
        "not known), frame_w, frame_h (that size, pixels) and path (where the feet, the box's "
        "bottom centre, were at up to 8 times over the track, first and last box included: "
        "'x,y x,y ...' in pixels); absent when too short to tell.")

    @classmethod
    def from_span(cls, span: TrackSpan, phase: TrackPhase, **fields: Any) -> TrackEvent:
        """The event of a track the tracker saw over ``span`` (at its last frame); ``fields``
        adds the crops (n_crops, best_crop, vector_ids, model_id)."""
        motion = span.motion.as_dict() if span.motion is not None else None
        return cls(camera=span.camera, ts_ns=span.last_ts_ns, phase=phase,
                   track_id=span.track_id, first_ts_ns=span.first_ts_ns,
                   last_ts_ns=span.last_ts_ns, last_box=span.last_xyxy, motion=motion, **fields)

    @model_validator(mode="after")
    def _consistent(self) -> TrackEvent:
        if self.last_ts_ns < self.first_ts_ns:
            raise ValueError(
                f"last_ts_ns {self.last_ts_ns} is before first_ts_ns {self.first_ts_ns}"
            )
        _check_box(self.last_box, "last_box")
        if self.vector_ids and self.model_id is None:
            raise ValueError("vector_ids given without the model_id that made them")
        return self


class CropEvent(BaseEvent):
    """One crop stored and embedded into the gallery (``vector_id``, within its shard)."""

    topic_kind: ClassVar[str] = "crops"

    schema_id: Literal["refind.crop.v1"] = Field("refind.crop.v1", alias="schema")
    vector_id: int = Field(..., ge=0, description="Gallery id of the crop's embedding.")
    track_id: int = Field(..., ge=0, description="Unique within the camera.")
    frame_index: int = Field(..., ge=0, description="Frame the crop was cut from.")
    crop_path: str = Field(..., min_length=1, description="Path or URL of the stored crop.")
    box: Box = Field(..., description="xyxy pixel box of the crop in its frame.")
    quality: float = Field(..., description="Crop quality score; higher is better.")
    model_id: str = Field(..., min_length=1, description="Embedder that made the vector.")

    @model_validator(mode="after")
    def _box_ok(self) -> CropEvent:
        _check_box(self.box, "box")
        return self

    @classmethod
    def from_record(cls, record: CropRecord) -> CropEvent:
        """The event for a crop stored in the gallery."""
        return cls(
            camera=record.camera, ts_ns=record.ts_ns, vector_id=record.vector_id,
            track_id=record.track_id, frame_index=record.frame_index, crop_path=record.crop_path,
            box=tuple(float(v) for v in record.xyxy), quality=float(record.quality),
            model_id=record.model_id,
        )


class CameraStatusEvent(BaseEvent):
    """A camera's connection state and running counters (since the camera was started)."""

    topic_kind: ClassVar[str] = "camera-status"

    schema_id: Literal["refind.camera-status.v1"] = Field(
        "refind.camera-status.v1", alias="schema"
    )
    state: CameraState
    message: str = Field("", max_length=2000, description="Why, for reconnecting/failed.")
    frames_in: int = Field(0, ge=0, description="Frames decoded.")
    frames_dropped: int = Field(0, ge=0, description="Frames dropped by full queues.")
    reconnects: int = Field(0, ge=0, description="Reconnections so far.")


class ForgetEvent(BaseEvent):
    """A tombstone: a track was forgotten; its crops, vectors and metadata are deleted.

    ``ts_ns`` is when it was forgotten. ``vector_ids`` are the gallery ids removed (each within
    its shard, of every model).

    Example:
        >>> e = ForgetEvent(camera="gate", ts_ns=0, track_id=7, vector_ids=(3, 4))
        >>> decode(encode(e)) == e
        True
    """

    topic_kind: ClassVar[str] = "forget"

    schema_id: Literal["refind.forget.v1"] = Field("refind.forget.v1", alias="schema")
    track_id: int = Field(..., ge=0, description="Unique within the camera.")
    vector_ids: tuple[int, ...] = Field((), description="Gallery ids removed.")
    reason: str = Field("", max_length=2000, description="Why, as the operator gave it.")


class IdentityEvent(BaseEvent):
    """A track's global person id, or a revision of it (``refind.indexer.identities``).

    ``kind``: ``assigned`` (track ``track_id`` is person ``global_id``; ``previous_global_id``
    is set when it was someone else before), ``merged`` (every track of ``previous_global_id``
    is now ``global_id``; ``track_id`` names the track whose news caused it) or ``split`` (the track
    left ``previous_global_id``; an ``assigned`` follows). ``ts_ns``: the track's last frame.

    Example:
        >>> e = IdentityEvent(camera="gate", ts_ns=5, kind="assigned", track_id=7, global_id=3,
        ...                   model_id="m@1")
        >>> decode(encode(e)) == e
        True
    """

    topic_kind: ClassVar[str] = "identities"

    schema_id: Literal["refind.identity.v1"] = Field("refind.identity.v1", alias="schema")
    kind: Literal["assigned", "merged", "split"]
    track_id: int = Field(..., ge=0, description="Unique within the camera.")
    global_id: int = Field(..., ge=1, description="The person's id across cameras.")
    previous_global_id: int | None = Field(None, ge=1, description="The id before the change.")
    similarity: float | None = Field(None, ge=-1.0, le=1.0,
                                     description="Cosine that decided it, when one did.")
    model_id: str = Field(..., min_length=1, description="ReID model the ids are made with.")


class AlertEvent(BaseEvent):
    """A watch (standing query) matched a track, as soon as the track had a good crop.

    Example:
        >>> e = AlertEvent(camera="gate", ts_ns=9, watch="visitor", track_id=7, global_id=3,
        ...                first_ts_ns=1, score=0.93, reasons=("photo watch",))
        >>> decode(encode(e)) == e
        True
    """

    topic_kind: ClassVar[str] = "alerts"

    schema_id: Literal["refind.alert.v1"] = Field("refind.alert.v1", alias="schema")
    watch: str = Field(..., pattern=NAME_PATTERN, description="The watch's name.")
    track_id: int = Field(..., ge=0, description="Unique within the camera.")
    global_id: int | None = Field(None, ge=1, description="The person's id across cameras.")
    first_ts_ns: int = Field(..., ge=0, description="First frame of the track, ns.")
    score: float = Field(..., ge=0.0, le=1.0,
                         description="Probability that the track is the person watched.")
    reasons: tuple[str, ...] = Field((), description="Why, in words.")
    thumbnail: str | None = Field(None, description="Path or URL of the crop that matched.")


class EmbeddingEvent(BaseEvent):
    """A track's ReID vector (the unit mean of its stored crops' vectors), for consumers who
    build on refind's ReID; ``final`` when the track has ended.

    Example:
        >>> e = EmbeddingEvent(camera="gate", ts_ns=9, track_id=7, global_id=3, model_id="m@1",
        ...                    vector=(0.6, 0.8), crops=2, final=True)
        >>> decode(encode(e)) == e
        True
    """

    topic_kind: ClassVar[str] = "embeddings"

    schema_id: Literal["refind.embedding.v1"] = Field("refind.embedding.v1", alias="schema")
    track_id: int = Field(..., ge=0, description="Unique within the camera.")
    global_id: int | None = Field(None, ge=1, description="The person's id across cameras.")
    model_id: str = Field(..., min_length=1, description="The ReID model (vectors of two "
                          "models do not compare).")
    vector: tuple[float, ...] = Field(..., min_length=1, max_length=8192,
                                      description="Unit-length float32 values.")
    crops: int = Field(..., ge=1, description="Crops the vector averages.")
    final: bool = Field(False, description="The track has ended.")


Event = (DetectionEvent | TrackEvent | CropEvent | CameraStatusEvent | ForgetEvent
         | IdentityEvent | AlertEvent | EmbeddingEvent)
EVENT_TYPES: tuple[type[BaseEvent], ...] = (
    DetectionEvent, TrackEvent, CropEvent, CameraStatusEvent, ForgetEvent, IdentityEvent,
    AlertEvent, EmbeddingEvent,
)
_BY_SCHEMA: dict[str, type[BaseEvent]] = {
    t.model_fields["schema_id"].default: t for t in EVENT_TYPES
}
TOPIC_KINDS: tuple[str, ...] = tuple(t.topic_kind for t in EVENT_TYPES)


def topic_for(event_type: type[BaseEvent] | BaseEvent, prefix: str = "refind") -> str:
    """The topic an event type (or event) is published to, e.g. ``refind.tracks``."""
    kind = event_type.topic_kind
    return f"{prefix}.{kind}"


def resolve_topic(name: str, prefix: str = "refind") -> str:
    """A full topic name from a kind (``tracks``) or a full name (``refind.tracks``)."""
    if name in TOPIC_KINDS:
        return f"{prefix}.{name}"
    known = [f"{prefix}.{k}" for k in TOPIC_KINDS]
    if name in known:
        return name
    raise ValueError(
        f"unknown topic {name!r}; valid: {', '.join(TOPIC_KINDS)} or {', '.join(known)}"
    )


def encode(event: BaseEvent) -> bytes:
    """The event as compact UTF-8 JSON (the Kafka message value)."""
    if not isinstance(event, EVENT_TYPES):
        raise TypeError(f"not a refind event: {type(event).__name__}")
    return event.model_dump_json().encode("utf-8")


def _schema_error(schema: object) -> EventDecodeError:
    known = sorted(_BY_SCHEMA)
    if isinstance(schema, str) and schema.count(".") >= 2:
        base = schema.rsplit(".", 1)[0]
        versions = [s.rsplit(".", 1)[1] for s in known if s.rsplit(".", 1)[0] == base]
        if versions:
            return EventDecodeError(
                f"event schema {schema!r} is not supported by this reader (it reads {base} "
                f"{', '.join(versions)}); upgrade refind to read it"
            )
    return EventDecodeError(f"unknown event schema {schema!r}; known: {', '.join(known)}")


def decode(data: bytes | str) -> Event:
    """The event in ``data`` (as made by :func:`encode`); ``EventDecodeError`` if it is not one."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EventDecodeError(f"event is not valid UTF-8 JSON: {err}") from None
    if not isinstance(obj, dict):
        raise EventDecodeError(f"event must be a JSON object, got {type(obj).__name__}")
    if "schema" not in obj:
        raise EventDecodeError(f"event has no 'schema' field; known: {', '.join(sorted(_BY_SCHEMA))}")
    model = _BY_SCHEMA.get(obj["schema"]) if isinstance(obj["schema"], str) else None
    if model is None:
        raise _schema_error(obj["schema"])
    try:
        return model.model_validate(obj)  # type: ignore[return-value]
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(event)'}: {e['msg']}" for e in err.errors()
        )
        raise EventDecodeError(f"invalid {obj['schema']} event: {problems}") from None
