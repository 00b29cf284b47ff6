"""Config sections of the stream stages: tracker, crops, ingest, cameras, live reading, Kafka;
and what every section shares (``Section``, ``ConfigError``, ``NAME_PATTERN``).

The whole tree is ``refind.config.RefindConfig``; every section is a pydantic model with
``extra="forbid"`` (a typo is an error naming the key), every field has a default, bounds and a
description, and a plugin section is a union keyed on ``type:``. Each component receives only its
own section.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    field_validator,
)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and the problem."""


NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
"""Names that become keys, topics or paths (cameras, namespaces): 1-64 of A-Z a-z 0-9 _ . -"""


SECRET = {"secret": True}
"""``json_schema_extra`` of a field that may hold a secret: only such fields expand ``${VAR}``
placeholders from the environment when a config file is loaded (``refind.config``)."""


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@]*@")


def redact_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***``
    (``rtsp://viewer:pw@10.0.4.21/s`` -> ``rtsp://***@10.0.4.21/s``): for messages, logs,
    events and pages, where a camera's or a server's URL may appear.

    Example:
        >>> redact_credentials("opening rtsp://viewer:pw@10.0.4.21/s, then redis://:x@r:6379")
        'opening rtsp://***@10.0.4.21/s, then redis://***@r:6379'
    """
    return _USERINFO.sub(r"\1***@", text)


class Section(BaseModel):
    """What every config section is: frozen, and no key it does not declare."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def type_tag(default: str, by_model: Mapping[str, str] | None = None):
    """Discriminator for a `type:`-keyed plugin section whose `type` may be left out: then the
    type ``by_model`` gives the prefix of the section's `model` name, else ``default``."""

    def tag(value: object) -> str:
        if isinstance(value, dict):
            if "type" in value:
                return str(value["type"])
            model = str(value.get("model", ""))
            return next((t for p, t in (by_model or {}).items() if model.startswith(p)), default)
        return str(getattr(value, "type", default))

    return Discriminator(tag)


class TrackerConfig(Section):
    """ByteTrack settings. Thresholds are the ByteTrack paper's (high 0.6, low 0.1, new track
    0.7; IoU gates 0.2 / 0.5 / 0.3 of its code); times are in seconds, not frames. The
    appearance settings were chosen with the default detector, person-detection-0202 fitted to
    each frame's aspect: on PETS09-S2L1 frames 1-400, and on the narrow views cut from them
    (configs/mtmc-pets.yaml) between settings that tie there (docs/benchmarks.md#detectors;
    configs/yolox.yaml has YOLOX-Nano's)."""

    type: Literal["bytetrack"] = "bytetrack"
    high_threshold: float = Field(
        0.6, ge=0.0, le=1.0, description="Detections at or above this enter the first association."
    )
    low_threshold: float = Field(
        0.1, ge=0.0, le=1.0, description="Detections between this and high_threshold only extend "
        "existing tracks (second association)."
    )
    new_track_threshold: float = Field(
        0.7, ge=0.0, le=1.0, description="Lowest score that may start a new track."
    )
    match_iou: float = Field(
        0.2, ge=0.0, le=1.0, description="Lowest similarity for a first-stage match: IoU with "
        "the predicted box, times the detection score when fuse_score is set."
    )
    second_match_iou: float = Field(
        0.5, ge=0.0, le=1.0, description="Lowest IoU for a second-stage (low score) match."
    )
    unconfirmed_match_iou: float = Field(
        0.3, ge=0.0, le=1.0, description="Lowest similarity (as for match_iou) for matching an "
        "unconfirmed track to a detection left after the first stage."
    )
    fuse_score: bool = Field(
        True, description="Multiply IoU by the detection score in first-stage and unconfirmed "
        "matching (ByteTrack's fuse_score), so weak boxes lose ties."
    )
    max_lost_s: float = Field(
        3.0, gt=0.0, le=600.0, description="A track not seen for longer than this (by timestamp) "
        "is ended; until then it can be re-activated with its id."
    )
    min_hits: int = Field(
        2, ge=1, le=100, description="Matches, in consecutive frames, before a new track is "
        "confirmed, given an id and reported."
    )
    reid_max_distance: float = Field(
        0.6, ge=0.0, le=2.0, description="With appearance: a lost track missed by motion is "
        "re-identified by a high-score detection at most this cosine distance from its "
        "appearance (and within reach, see max_speed_hps)."
    )
    max_speed_hps: float = Field(
        2.0, gt=0.0, le=100.0, description="With appearance: fastest motion, in box heights per "
        "second, at which a lost track may have moved since last seen (re-identification gate)."
    )
    appearance_weight: float = Field(
        0.75, ge=0.0, le=1.0,
        description="Weight of appearance (cosine) distance in the association cost where the "
        "track and the detection both have an appearance; 0 = motion only (the appearance "
        "callback is then never called).",
    )
    detect_every: int = Field(
        1, ge=1, le=30, description="Run the detector on every n-th analysed frame; on the "
        "frames between, each track's box is predicted by its motion model (Kalman) and no "
        "crop is taken. 1: detect every analysed frame. 2 halves the detector's cost, at the "
        "tracking cost measured in docs/benchmarks.md#detect-every-n-th-frame.",
    )
    appearance_refresh_s: float = Field(
        1.0, gt=0.0, le=3600.0,
        description="With appearance: a confirmed track's appearance is re-learned from its "
        "motion-matched detection when older than this (appearance changes slowly, so a "
        "track is not embedded every frame).",
    )


class MotionGateConfig(Section):
    """Detect only when something moved (see refind.streaming.activity): a frame too like the
    last detected one reuses its detections. The defaults were set once, before measuring, and
    not tuned on any clip."""

    enabled: bool = Field(
        True, description="Skip the detector on frames where nothing moved since the last "
        "detected frame (its detections are reused); false: detect every analysed frame.",
    )
    frame_height: int = Field(
        120, ge=16, le=2160, description="Rows of the grey copy compared (smaller is cheaper "
        "and ignores finer motion).",
    )
    pixel_threshold: int = Field(
        20, ge=1, le=255, description="Grey levels a pixel must change by to count as moved.",
    )
    min_changed: float = Field(
        0.0005, ge=0.0, le=1.0, description="Fraction of the grey copy's pixels that must have "
        "moved for the frame to be detected (0.0005: 10 pixels of a 160x120 copy).",
    )
    max_skip_s: float = Field(
        2.0, gt=0.0, le=3600.0, description="A frame is detected at least this often, moved "
        "or not.",
    )


class CropConfig(Section):
    """Which crops of a track are kept (see refind.streaming.crops)."""

    max_per_track: int = Field(5, ge=1, le=100, description="Crops kept per track.")
    min_height_px: int = Field(48, ge=8, le=4096, description="Smaller crops are never kept.")
    min_width_px: int = Field(16, ge=4, le=4096, description="Narrower crops are never kept.")
    edge_margin_px: int = Field(
        2, ge=0, le=256, description="A box closer than this to the frame edge counts as cut."
    )
    min_gap_s: float = Field(
        1.0, ge=0.0, le=3600.0, description="Kept crops of one track are at least this far apart."
    )
    full_quality_height_px: int = Field(
        256, ge=8, le=4096, description="Crop height at which size stops adding quality (the "
        "ReID input height: a taller crop is downscaled anyway)."
    )
    sharpness_ref: float = Field(
        100.0, gt=0.0, le=1e6, description="Variance of the Laplacian (grey levels squared) at "
        "which the sharpness factor of quality is 0.5."
    )
    early_after_s: float = Field(
        0.5, ge=0.0, le=3600.0, description="A track's best crop so far is stored this long "
        "(in video time) after its first candidate, so a live person is searchable before the "
        "track ends; the same in ingest, live and evaluation.",
    )
    jpeg_quality: int = Field(90, ge=30, le=100, description="JPEG quality of stored crops.")
    context_px: int = Field(
        384, ge=0, le=4096, description="Longest side of the downscaled frame stored beside each "
        "crop with its box drawn (the UI's context view); 0 stores none.",
    )
    clip_px: int = Field(
        320, ge=0, le=4096, description="Longest side of each track's H.264 clip (its analysed "
        "frames with its box drawn, refind.streaming.clips); 0 records no clips.",
    )
    clip_max_frames: int = Field(
        48, ge=2, le=1000, description="Frames in a track's clip at most: a longer track is "
        "sampled evenly over its life.",
    )


class IngestConfig(Section):
    sample_fps: float | None = Field(
        None, gt=0.0, le=240.0, description="Frames per second analysed; None = every frame."
    )
    max_frames: int | None = Field(None, ge=1, description="Stop after this many frames.")
    open_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="Give up opening a source after this long."
    )
    referring_evidence: bool = Field(
        True, description="Read each stored crop for text search as it is stored (BlazePose "
        "mask and part colours, 0230 attributes; ~10 ms a crop) into <data_dir>/"
        "evidence.sqlite3, so a first text query does not wait for it.",
    )


class PlaceConfig(Section):
    """A named place in a camera's view (a lamp post, a gate, a bench), drawn by the operator,
    so a text can say where a person is or goes by it: "just left of the lamp post", "walking
    towards the gate" (``refind.models.places``). Coordinates are fractions of the camera's
    analysed frame (after ``region``), so they hold at any resolution."""

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9' -]+$",
                      description="What operators call it, in words: 'lamp post', 'gate'.")
    also: tuple[str, ...] = Field(
        (), max_length=16, description="Other names for it: ['lamppost', 'street light']."
    )
    box: tuple[float, float, float, float] = Field(
        ..., description="Where it is: x1, y1, x2, y2 as fractions of the frame's width and "
        "height; for an area (a crossing, a doorway), the area.",
    )
    ground: tuple[float, float] | None = Field(
        None, description="Where it stands on the ground (x, y fractions), for a thing raised "
        "off it such as a sign on a post; None: the bottom centre of the box.",
    )

    @field_validator("box")
    @classmethod
    def _box_inside_frame(cls, box: tuple[float, float, float, float]):
        from refind.streaming.boxes import check_region

        return check_region(box)

    @field_validator("ground")
    @classmethod
    def _ground_inside_frame(cls, ground: tuple[float, float] | None):
        if ground is not None and not all(0.0 <= v <= 1.0 for v in ground):
            raise ValueError(f"ground {tuple(ground)} must be x, y fractions of the frame, "
                             "each in [0, 1]")
        return ground

    @property
    def names(self) -> tuple[str, ...]:
        """Every name it answers to, as ``place_key`` reads them."""
        return tuple(dict.fromkeys(place_key(n) for n in (self.name, *self.also)))

    @property
    def ground_xy(self) -> tuple[float, float]:
        """Where it stands on the ground, in fractions of the frame."""
        x1, _, x2, y2 = self.box
        return self.ground if self.ground is not None else ((x1 + x2) / 2, y2)


def place_key(name: str) -> str:
    """A place's name as matched against a text's words: lower case, letters only, a plural
    's' cut ("Lamp posts" and "lamppost" -> "lamppost")."""
    key = re.sub(r"[^a-z]", "", name.lower())
    return key[:-1] if len(key) > 3 and key.endswith("s") and not key.endswith("ss") else key


class CameraConfig(Section):
    """One camera (or a file played as one)."""

    name: str = Field(..., pattern=NAME_PATTERN, description="Unique camera name.")
    url: str = Field(..., min_length=1, json_schema_extra=SECRET,
                     description="rtsp://, http(s)://, udp:// URL or a file; credentials as "
                     "${VAR} placeholders (rtsp://viewer:${CAM_PASSWORD}@host/stream).")
    sample_fps: float | None = Field(
        5.0, gt=0.0, le=240.0, description="Frames per second analysed; None = every frame."
    )
    realtime: bool = Field(
        False, description="Files only: play at the file's own rate, like a live camera."
    )
    loop: bool = Field(False, description="Files only: start again at the end.")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    retention_days: float | None = Field(
        None, gt=0.0, le=36_500.0,
        description="Delete this camera's crops older than this; None = retention.default_days.",
    )
    region: tuple[float, float, float, float] | None = Field(
        None, description="Analyse only this part of the source's frame: x1, y1, x2, y2 as "
        "fractions of its width and height (e.g. [0, 0, 0.5, 1], the left half); one wide view "
        "split into several cameras. None: the whole frame.",
    )

    places: tuple[PlaceConfig, ...] = Field(
        (), max_length=256, description="Named places in the view, which text queries may "
        "name ('left of the lamp post'); see PlaceConfig.",
    )

    @field_validator("region")
    @classmethod
    def _region_inside_frame(cls, region: tuple[float, float, float, float] | None):
        from refind.streaming.boxes import check_region

        return None if region is None else check_region(region)

    @field_validator("places")
    @classmethod
    def _names_unique(cls, places: tuple[PlaceConfig, ...]):
        seen: dict[str, str] = {}
        for p in places:
            for key in p.names:
                if key in seen and seen[key] != p.name:
                    raise ValueError(f"place name {key!r} is given to both {seen[key]!r} and "
                                     f"{p.name!r}; a name must say which place it is")
                seen[key] = p.name
        return places


class ReconnectConfig(Section):
    initial_backoff_s: float = Field(0.5, gt=0.0, le=60.0, description="First retry delay.")
    max_backoff_s: float = Field(30.0, gt=0.0, le=3600.0, description="Cap of the retry delay.")
    jitter: float = Field(
        0.2, ge=0.0, le=1.0, description="Each delay is scaled by a random factor in 1 +- jitter."
    )
    stall_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="A stream with no frame for this long is reconnected."
    )


class LiveConfig(Section):
    queue_frames: int = Field(
        4, ge=1, le=1000, description="Frames waiting per camera; when full the oldest is dropped."
    )
    adaptive_rate: bool = Field(
        True, description="Lower a camera's sample rate while its frames are being dropped."
    )
    min_fps: float = Field(1.0, gt=0.0, le=240.0, description="Lowest adaptive sample rate.")
    max_in_flight: int = Field(
        4, ge=1, le=256, description="Detector batches in flight per camera (ray.wait bound)."
    )
    max_stores_in_flight: int = Field(
        4, ge=1, le=256, description="Crop batches being embedded and written per camera; "
        "when this many are in flight the camera waits for the oldest (counted as store_waits)."
    )
    unresponsive_s: float = Field(
        60.0, gt=0.0, le=3600.0, description="A camera actor that answers no status call for "
        "this long (starting, or Ray restarting it) is replaced; one whose loop failed or that "
        "died for good is replaced at once.",
    )
    reconnect: ReconnectConfig = ReconnectConfig()


class KafkaConfig(Section):
    enabled: bool = Field(False, description="Publish events to Kafka.")
    bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port[,host:port...]")
    topic_prefix: str = Field(
        "refind", pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="Topic names start with this."
    )
    publish_detections: bool = Field(
        True, description="Also publish per-frame detections (the busiest topic)."
    )
    publish_embeddings: bool = Field(
        False, description="Also publish each track's mean ReID vector with its model_id and "
        "global id (topic <prefix>.embeddings), for consumers who build on refind's ReID."
    )
    linger_ms: int = Field(20, ge=0, le=10_000, description="Producer batching delay.")
    delivery_timeout_s: float = Field(
        600.0, gt=0.0, le=86_400.0,
        description="How long an accepted event is retried (broker down) before it counts as lost.",
    )
    buffer_mb: int = Field(64, ge=1, le=4096, description="Producer memory for unsent events.")
    topic_partitions: int = Field(
        3, ge=1, le=10_000, description="Partitions of each topic the bus creates (it creates "
        "missing topics when it connects; one camera's events stay in one partition)."
    )
    replication_factor: int = Field(
        1, ge=1, le=16, description="Replicas of each topic the bus creates."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: str | None = Field(
        None, description="CA certificate (PEM) that signed the brokers' certificates, for SSL "
        "and SASL_SSL with a private CA; unset: the system's CAs."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = Field(None, json_schema_extra=SECRET,
                                      description="Use a ${ENV} placeholder.")
    sasl_password: str | None = Field(None, json_schema_extra=SECRET,
                                      description="Use a ${ENV} placeholder.")
