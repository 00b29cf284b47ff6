"""The one typed config tree of refind, loaded from YAML.

Every section is a pydantic model with ``extra="forbid"``: a typo is an error naming the key.
Every field has a default, bounds and a description; a plugin section is a union keyed on
``type:``. Each component receives only its own section.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and the problem."""


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
        description="Weight of appearance (cosine) distance in the first-stage and unconfirmed "
        "association cost when embeddings are given; 0 = motion only (embeddings are then "
        "ignored and need not be computed).",
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
    jpeg_quality: int = Field(90, ge=30, le=100, description="JPEG quality of stored crops.")


class OpenVinoReidConfig(_Section):
    type: Literal["openvino_reid"] = "openvino_reid"
    model: str = Field(
        "person-reidentification-retail-0277",
        description="Model store name of an OMZ person ReID model (0277, 0286, 0287, 0288).",
    )
    batch_size: int = Field(32, ge=1, le=1024, description="Crops per inference call.")
    threads: int = Field(0, ge=0, le=256, description="OpenVINO inference threads; 0 = auto.")


EmbedderConfig = OpenVinoReidConfig


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
    type: Literal["sqlite"] = "sqlite"


MetadataConfig = SqliteMetadataConfig


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


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute_env(text: str, source: str) -> str:
    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{source}: environment variable ${{{name}}} is not set")
        return os.environ[name]

    return _ENV.sub(repl, text)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config ({err.error_count()} problem(s))"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
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
        text = _substitute_env(p.read_text(encoding="utf-8"), str(p))
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    return parse_config(data, str(p))
