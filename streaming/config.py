"""The one typed config tree of refind, loaded from YAML.

Every section is a pydantic model with ``extra="forbid"``: a typo is an error naming the key.
Every field has a default, bounds and a description; a plugin section is a union keyed on
``type:``. Each component receives only its own section.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and the problem."""


NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
"""Names that become keys, topics or paths (cameras, namespaces): 1-64 of A-Z a-z 0-9 _ . -"""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelStoreConfig(_Section):
    dir: Path | None = Field(
        None,
        description="Directory holding model files. Default: ../shared/models when it exists, "
        "else ~/.cache/refind/models.",
    )
    allow_download: bool = Field(
        True, description="Download missing weights from their upstream release (sha256-checked)."
    )


class YoloxDetectorConfig(_Section):
    type: Literal["yolox"] = "yolox"
    model: str = Field("yolox_nano", description="Model store name of the YOLOX ONNX file.")
    input_size: int = Field(
        416, ge=32, le=1920, multiple_of=32,
        description="Longest side of the network input. Frames whose longer side fits run at "
        "native scale (padded to a multiple of 32); larger frames are scaled down to it.",
    )
    conf_threshold: float = Field(
        0.1, ge=0.0, le=1.0, description="Lowest score kept (the tracker uses low boxes too)."
    )
    nms_iou: float = Field(0.45, gt=0.0, le=1.0, description="IoU above which NMS suppresses.")
    classes: tuple[int, ...] = Field((0,), description="COCO class ids kept; 0 is person.")
    batch_size: int = Field(4, ge=1, le=64, description="Frames per inference call.")
    threads: int = Field(0, ge=0, le=256, description="onnxruntime intra-op threads; 0 = auto.")


# Plugin sections: each holds one type today; a second type turns these into unions
# discriminated on `type:` (with the current type as the default tag).
DetectorConfig = YoloxDetectorConfig


class TrackerConfig(_Section):
    """ByteTrack settings. Thresholds are the ByteTrack paper's (high 0.6, low 0.1, new track
    0.7; IoU gates 0.2 / 0.5 / 0.3 of its code); times are in seconds, not frames. The
    appearance settings were chosen on PETS09-S2L1 frames 1-400 (see models/eval_mot.py)."""

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
        0.4, ge=0.0, le=2.0, description="With appearance: a lost track missed by motion is "
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
    appearance_refresh_s: float = Field(
        1.0, gt=0.0, le=3600.0,
        description="With appearance: a confirmed track's appearance is re-learned from its "
        "motion-matched detection when older than this (appearance changes slowly, so a "
        "track is not embedded every frame).",
    )


class CropConfig(_Section):
    """Which crops of a track are kept (see streaming.crops)."""

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


class OpenVinoReidConfig(_Section):
    type: Literal["openvino_reid"] = "openvino_reid"
    model: str = Field(
        "person-reidentification-retail-0277",
        description="Model store name of an OMZ person ReID model (0277, 0286, 0287, 0288), or "
        "of its INT8 copy made by `refind quantize` (NAME-int8).",
    )
    batch_size: int = Field(32, ge=1, le=1024, description="Crops per inference call.")
    threads: int = Field(0, ge=0, le=256, description="OpenVINO inference threads; 0 = auto.")


class IrmEmbedderConfig(_Section):
    """The instruction-editable ReID model (models/irm.py, run by models/irm_embedder.py): 512-d
    vectors, queries may carry an instruction (text or a garment photo). Its weights were
    trained on one backbone's features."""

    type: Literal["irm"] = "irm"
    weights: str = Field(
        "irm-pets-v3", description="Model store name (or path of a .safetensors file) of the head."
    )
    backbone: str = Field(
        "person-reidentification-retail-0277",
        description="Model store name of the frozen backbone; must be the one the head was "
        "trained on, or its INT8 copy (NAME-int8, CPU only, made by `refind quantize`).",
    )
    batch_size: int = Field(32, ge=1, le=1024, description="Crops per inference call.")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="auto = a CUDA GPU when torch sees one, else the CPU (OpenVINO).",
    )
    threads: int = Field(0, ge=0, le=256, description="OpenVINO backbone threads; 0 = auto.")


class GalleryConfig(_Section):
    index_factory: str = Field(
        "Flat",
        description="FAISS index_factory string, e.g. 'Flat', 'HNSW32', 'IVF1024,Flat'. Inner "
        "product on unit vectors (cosine).",
    )
    nprobe: int = Field(16, ge=1, le=65536, description="IVF lists visited per query.")
    ef_search: int = Field(128, ge=1, le=65536, description="HNSW candidate list size per query.")
    ef_construction: int = Field(
        200,
        ge=8,
        le=4096,
        description="HNSW candidate list size while adding (FAISS's own default is 40; higher "
        "adds slower and gives a better graph).",
    )
    train_min_vectors: int = Field(
        0, ge=0, description="IVF/PQ indexes: vectors buffered before training (0 = 40 x nlist)."
    )
    exact_filter_max: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="HNSW indexes: a filtered search allowing at most this many ids scores just "
        "those vectors exactly; a wider filter walks the graph with an IDSelector and an "
        "efSearch scaled up by 1/selectivity.",
    )


class SqliteMetadataConfig(_Section):
    """Track metadata only in the gallery's embedded SQLite file (no server)."""

    type: Literal["sqlite"] = "sqlite"


class RedisMetadataConfig(_Section):
    """Camera registry and status, track metadata and id mappings in Redis (shared by all
    nodes); the gallery's SQLite file still holds each shard's vectors."""

    type: Literal["redis"] = "redis"
    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL; put a password in ${REDIS_PASSWORD}-style placeholders.",
    )
    key_prefix: str = Field("refind", pattern=NAME_PATTERN, description="Key namespace.")
    socket_timeout_s: float = Field(2.0, gt=0.0, le=60.0, description="Per-command timeout.")
    retries: int = Field(
        5, ge=0, le=100, description="Retries of a command after a connection error or timeout "
        "(Redis restarting), with exponential backoff; then the call raises MetadataUnavailable."
    )
    retry_backoff_max_s: float = Field(
        1.0, gt=0.0, le=60.0, description="Longest wait between retries (the first is 0.1 s, "
        "doubling each time)."
    )


def _type_tag(default: str):
    """Discriminator for a `type:`-keyed plugin section whose `type` may be left out."""

    def tag(value: object) -> str:
        if isinstance(value, dict):
            return str(value.get("type", default))
        return str(getattr(value, "type", default))

    return Discriminator(tag)


MetadataConfig = Annotated[
    Annotated[SqliteMetadataConfig, Tag("sqlite")] | Annotated[RedisMetadataConfig, Tag("redis")],
    _type_tag("sqlite"),
]

EmbedderConfig = Annotated[
    Annotated[OpenVinoReidConfig, Tag("openvino_reid")] | Annotated[IrmEmbedderConfig, Tag("irm")],
    _type_tag("openvino_reid"),
]


class IngestConfig(_Section):
    sample_fps: float | None = Field(
        None, gt=0.0, le=240.0, description="Frames per second analysed; None = every frame."
    )
    max_frames: int | None = Field(None, ge=1, description="Stop after this many frames.")
    open_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="Give up opening a source after this long."
    )


class SearchConfig(_Section):
    overfetch: int = Field(
        20, ge=1, le=1000, description="Crops fetched per requested tracklet before aggregation."
    )
    aggregation: Literal["max", "mean_top2"] = Field(
        "mean_top2",
        description="How a tracklet's crop scores become one score: the best, or the mean of the "
        "best two (steadier against one lucky crop).",
    )
    # Text queries are checked by the attribute verifier by default: on a plain ReID model it is
    # the only way to read a description, and on an instructable one it explains each hit and
    # says "nobody matches". Image queries are ranked by appearance alone unless asked.
    rerank: Literal["none", "attributes", "refer", "mllm"] = Field(
        "attributes", description="Re-ranker of text queries (indexer.rerank.RERANKERS)."
    )
    image_rerank: Literal["none", "attributes", "refer", "mllm"] = Field(
        "none", description="Re-ranker of image queries (applied when they carry text)."
    )
    rerank_top: int = Field(
        50, ge=1, le=1000, description="Best tracklets handed to the re-ranker per query."
    )
    rerank_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of the re-ranker's score in a hit's score; the "
        "rest is the retrieval (appearance) score.",
    )
    match_threshold: float = Field(
        0.6, ge=0.0, le=1.0, description="Re-ranker score a tracklet needs to be returned; when "
        "none reaches it the answer is 'no tracklet matches'.",
    )
    text_scan_tracks: int = Field(
        2000, ge=1, le=100_000, description="Plain ReID models cannot embed text: a text query "
        "then scores the best crop of at most this many most recent tracks within its filters.",
    )
    text_probe: str | None = Field(
        "irm-pets-v3", min_length=1, max_length=200,
        description="Model store name of IRM weights whose attribute probe reads a plain OMZ "
        "0277 gallery (models.irm.teacher_probe): when more tracks than text_scan_tracks are "
        "within a text query's filters, the whole gallery is searched through the probe and "
        "its best tracks re-ranked, instead of scanning only the most recent. null: always scan.",
    )
    timezone: str = Field(
        "UTC", min_length=1, max_length=64,
        description="Time zone of clock times in queries ('after 14:00'), an IANA name.",
    )

    @model_validator(mode="after")
    def _known_timezone(self) -> SearchConfig:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if self.timezone.upper() != "UTC":
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"search.timezone {self.timezone!r} is no IANA time zone "
                                 "(e.g. UTC, Europe/Paris)") from None
        return self


class CameraConfig(_Section):
    """One camera (or a file played as one)."""

    name: str = Field(..., pattern=NAME_PATTERN, description="Unique camera name.")
    url: str = Field(..., min_length=1, description="rtsp://, http(s)://, udp:// URL or a file.")
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


class ReconnectConfig(_Section):
    initial_backoff_s: float = Field(0.5, gt=0.0, le=60.0, description="First retry delay.")
    max_backoff_s: float = Field(30.0, gt=0.0, le=3600.0, description="Cap of the retry delay.")
    jitter: float = Field(
        0.2, ge=0.0, le=1.0, description="Each delay is scaled by a random factor in 1 +- jitter."
    )
    stall_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="A stream with no frame for this long is reconnected."
    )


class LiveConfig(_Section):
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
    reconnect: ReconnectConfig = ReconnectConfig()


class KafkaConfig(_Section):
    enabled: bool = Field(False, description="Publish events to Kafka.")
    bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port[,host:port...]")
    topic_prefix: str = Field(
        "refind", pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="Topic names start with this."
    )
    publish_detections: bool = Field(
        True, description="Also publish per-frame detections (the busiest topic)."
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
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = Field(None, description="Use a ${ENV} placeholder.")
    sasl_password: str | None = Field(None, description="Use a ${ENV} placeholder.")


class RayConfig(_Section):
    address: str | None = Field(
        None, description="Ray cluster: None starts a local Ray; 'auto' or 'ray://head:10001'."
    )
    num_cpus: int | None = Field(None, ge=1, le=4096, description="Local Ray only: CPUs to use.")
    namespace: str = Field("refind", pattern=NAME_PATTERN)
    detector_actors: int = Field(1, ge=1, le=1024, description="Detector pool size.")
    embedder_actors: int = Field(1, ge=1, le=1024, description="Embedder pool size.")
    index_writers: int = Field(
        1, ge=1, le=1024, description="Gallery shards; cameras are assigned by hash of name."
    )
    detector_num_gpus: float = Field(0.0, ge=0.0, le=8.0, description="GPUs per detector actor.")
    embedder_num_gpus: float = Field(0.0, ge=0.0, le=8.0, description="GPUs per embedder actor.")
    detector_num_cpus: float = Field(1.0, ge=0.0, le=256.0, description="CPUs per detector actor.")
    embedder_num_cpus: float = Field(0.5, ge=0.0, le=256.0, description="CPUs per embedder actor.")
    max_restarts: int = Field(-1, ge=-1, le=1000, description="Actor restarts; -1 = unlimited.")


class BlobStoreConfig(_Section):
    url: str | None = Field(
        None, description="Where crops go: None = <data_dir>/crops; else an fsspec URL (s3://...)."
    )


class RetentionConfig(_Section):
    default_days: float | None = Field(
        None, gt=0.0, le=36_500.0,
        description="Crops older than this are deleted, for cameras without retention_days; "
        "None = keep forever.",
    )
    interval_s: float = Field(
        3600.0, gt=0.0, le=7 * 86_400.0, description="How often `refind serve` enforces it."
    )


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="Address of the health and metrics endpoint.")
    port: int = Field(8080, ge=0, le=65535, description="Port; 0 picks a free one.")
    save_interval_s: float = Field(
        5.0, gt=0.0, le=3600.0, description="Index writers persist their shard this often."
    )


class ApiKeyConfig(_Section):
    """One client of the search API: its name (for the audit log), its key's hash, its cameras."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="Client name, logged.")
    key_sha256: str = Field(
        ..., pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the key, lowercase hex (`printf %s KEY | sha256sum`); never the "
        "key itself.",
    )
    cameras: tuple[str, ...] = Field(
        (), description="Cameras this key may search and view; empty = every camera."
    )


class ApiConfig(_Section):
    """The HTTP search API (`refind api`): who may call it, what it logs, how much it accepts."""

    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8090, ge=0, le=65535, description="Port; 0 picks a free one.")
    keys: tuple[ApiKeyConfig, ...] = Field(
        (), description="API keys (sent as the X-API-Key header). With none, the API refuses to "
        "start unless allow_anonymous is set."
    )
    allow_anonymous: bool = Field(
        False, description="Serve without keys (every caller sees every camera); only allowed "
        "when `keys` is empty. For loopback development only."
    )
    audit_log: Path | None = Field(
        None, description="JSON-lines file recording every search; None = <data_dir>/audit.jsonl."
    )
    max_upload_mb: float = Field(
        20.0, gt=0.0, le=20.0,
        description="Largest query image accepted, in MiB (the query decoder's cap is 20).",
    )

    @model_validator(mode="after")
    def _keys_are_distinct(self) -> ApiConfig:
        for attr in ("name", "key_sha256"):
            values = [getattr(k, attr) for k in self.keys]
            if len(set(values)) != len(values):
                raise ValueError(f"api.keys: every key needs a distinct {attr}")
        if self.allow_anonymous and self.keys:
            raise ValueError("api.allow_anonymous needs an empty api.keys (keys are then unused)")
        return self


class RefindConfig(_Section):
    data_dir: Path = Field(
        Path(".refind"), description="Where the gallery, metadata and crops are stored."
    )
    models: ModelStoreConfig = ModelStoreConfig()
    detector: DetectorConfig = YoloxDetectorConfig()
    tracker: TrackerConfig = TrackerConfig()
    crops: CropConfig = CropConfig()
    embedder: EmbedderConfig = OpenVinoReidConfig()
    gallery: GalleryConfig = GalleryConfig()
    metadata: MetadataConfig = SqliteMetadataConfig()
    ingest: IngestConfig = IngestConfig()
    search: SearchConfig = SearchConfig()
    cameras: tuple[CameraConfig, ...] = Field((), description="Live cameras for `refind serve`.")
    live: LiveConfig = LiveConfig()
    kafka: KafkaConfig = KafkaConfig()
    ray: RayConfig = RayConfig()
    blobs: BlobStoreConfig = BlobStoreConfig()
    serve: ServeConfig = ServeConfig()
    retention: RetentionConfig = RetentionConfig()
    api: ApiConfig = ApiConfig()

    @model_validator(mode="after")
    def _unique_camera_names(self) -> RefindConfig:
        names = [c.name for c in self.cameras]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"camera names must be unique; repeated: {', '.join(dupes)}")
        return self


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute_env(value: object, source: str) -> object:
    """Expand ``${VAR}`` in every string value of parsed YAML (comments are never touched)."""
    if isinstance(value, dict):
        return {k: _substitute_env(v, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, source) for v in value]
    if not isinstance(value, str):
        return value

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{source}: environment variable ${{{name}}} is not set")
        return os.environ[name]

    return _ENV.sub(repl, value)


def _plugin_tags() -> frozenset[str]:
    """The ``type:`` tags of plugin sections; pydantic puts them in error paths of unions."""
    tags = set()
    for cls in _Section.__subclasses__():
        field = cls.model_fields.get("type")
        if field is not None and isinstance(field.default, str):
            tags.add(field.default)
    return frozenset(tags)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config ({err.error_count()} problem(s))"]
    tags = _plugin_tags()
    for e in err.errors():
        # "embedder.openvino_reid.batch_size" names the key as the user wrote it: embedder.batch_size
        loc = [p for i, p in enumerate(e["loc"]) if not (i > 0 and p in tags)]
        where = ".".join(str(p) for p in loc) or "(top level)"
        got = e.get("input")
        hint = ""
        if e["type"] == "extra_forbidden":
            hint = " (unknown key: check its spelling)"
        lines.append(f"  {where}: {e['msg']}{hint}; got {got!r}")
    return "\n".join(lines)


def parse_config(data: dict | None, source: str = "<config>") -> RefindConfig:
    """Validate a mapping (as read from YAML) into a RefindConfig, or raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return RefindConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None = None) -> RefindConfig:
    """Load and validate a YAML config; ``None`` gives the embedded defaults."""
    if path is None:
        return RefindConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = _substitute_env(yaml.safe_load(p.read_text(encoding="utf-8")), str(p))
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    return parse_config(data, str(p))
