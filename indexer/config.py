"""Config sections of the gallery side: the FAISS index, metadata (SQLite or Redis), search,
the crop store and retention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    Tag,
    model_validator,
)

from refind.models.registry import RERANKER_NAMES
from refind.streaming.config import NAME_PATTERN, SECRET, Section, type_tag


class GalleryConfig(Section):
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


class SqliteMetadataConfig(Section):
    """Track metadata only in the gallery's embedded SQLite file (no server)."""

    type: Literal["sqlite"] = "sqlite"


class RedisMetadataConfig(Section):
    """Camera registry and status, track metadata and id mappings in Redis (shared by all
    nodes); the gallery's SQLite file still holds each shard's vectors."""

    type: Literal["redis"] = "redis"
    url: str = Field(
        "redis://127.0.0.1:6379/0", json_schema_extra=SECRET,
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


MetadataConfig = Annotated[
    Annotated[SqliteMetadataConfig, Tag("sqlite")] | Annotated[RedisMetadataConfig, Tag("redis")],
    type_tag("sqlite"),
]


class SearchConfig(Section):
    overfetch: int = Field(
        20, ge=1, le=1000, description="Crops fetched per requested tracklet before aggregation."
    )
    aggregation: Literal["max", "mean_top2"] = Field(
        "mean_top2",
        description="How a tracklet's crop scores become one score: the best, or the mean of the "
        "best two (steadier against one lucky crop).",
    )
    # Text queries are checked by the composing referrer by default: it reads the operator's
    # words into terms and checks each against the evidence of every candidate (part colours in
    # the person mask, attributes, position, motion), explains each hit and says "nobody
    # matches"; on hand-written expressions it leads the others (docs/refer.md). Image queries
    # are ranked by appearance alone unless asked.
    rerank: Literal[RERANKER_NAMES] = Field(  # type: ignore[valid-type]
        "compose", description="Re-ranker of text queries (refind.models.registry.RERANKERS)."
    )
    image_rerank: Literal[RERANKER_NAMES] = Field(  # type: ignore[valid-type]
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
        0.6, ge=0.0, le=1.0, description="Attribute-verifier score a tracklet needs to be "
        "returned (rerank: attributes); when none reaches it the answer is 'no tracklet "
        "matches'. The composing referrer selects by its own match probability (> 0.5).",
    )
    text_scan_tracks: int = Field(
        2000, ge=1, le=100_000, description="Plain ReID models cannot embed text: a text query "
        "then scores the best crop of at most this many most recent tracks within its filters.",
    )
    text_probe: str | None = Field(
        "irm-pets-v3", min_length=1, max_length=200,
        description="Model store name of IRM weights whose attribute probe reads a plain OMZ "
        "0277 gallery (refind.models.attribute_probe.teacher_probe): when more tracks than text_scan_tracks are "
        "within a text query's filters, the whole gallery is searched through the probe and "
        "its best tracks re-ranked, instead of scanning only the most recent. null: always scan.",
    )
    mllm_dir: Path | None = Field(
        None, description="Local directory of a Qwen2.5-VL-style model for rerank: mllm (none "
        "is distributed with refind).",
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


class BlobStoreConfig(Section):
    url: str | None = Field(
        None, json_schema_extra=SECRET, description="Where crops go: None = <data_dir>/crops; else an fsspec URL (s3://...)."
    )


class RetentionConfig(Section):
    default_days: float | None = Field(
        None, gt=0.0, le=36_500.0,
        description="`refind retention` (run it on a schedule) deletes crops older than this, "
        "for cameras without retention_days; None = keep forever.",
    )


class CameraLink(Section):
    """Two cameras a person walks between, and how long that takes."""

    a: str = Field(..., pattern=NAME_PATTERN, description="One camera.")
    b: str = Field(..., pattern=NAME_PATTERN, description="The other camera (either way).")
    min_s: float = Field(0.0, ge=0.0, le=86_400.0, description="Shortest walk between them.")
    max_s: float = Field(600.0, gt=0.0, le=86_400.0, description="Longest walk between them.")

    @model_validator(mode="after")
    def _ordered(self) -> CameraLink:
        if self.a == self.b:
            raise ValueError(f"camera link {self.a}-{self.b}: a link joins two cameras (one "
                             "camera is always walkable to itself)")
        if self.max_s < self.min_s:
            raise ValueError(f"camera link {self.a}-{self.b}: max_s {self.max_s} < min_s "
                             f"{self.min_s}")
        return self


class IdentityConfig(Section):
    """Global person ids across cameras (``refind.indexer.identities``)."""

    enabled: bool = Field(True, description="Give every tracklet a global person id.")
    link_threshold: float = Field(
        0.5, ge=-1.0, le=1.0, description="Cosine between a tracklet's mean ReID vector and an "
        "identity's nearest tracklet at which the tracklet joins the identity.",
    )
    merge_threshold: float = Field(
        0.65, ge=-1.0, le=1.0, description="Cosine between two identities' nearest tracklets at "
        "which they are merged (when nothing in time or the camera graph forbids it).",
    )
    split_threshold: float = Field(
        0.4, ge=-1.0, le=1.0, description="A tracklet whose vector, updated, falls below this "
        "cosine to every other tracklet of its identity is split off.",
    )
    overlap_tolerance_s: float = Field(
        0.5, ge=0.0, le=60.0, description="Two tracklets of one identity may overlap in time by "
        "this much (a track's end is reported late) in cameras whose views do not overlap.",
    )
    overlapping_views: tuple[tuple[str, str], ...] = Field(
        (), description="Pairs of cameras whose views overlap: one person may be in both at once.",
    )
    links: tuple[CameraLink, ...] = Field(
        (), description="The camera graph: which cameras a person walks between, and how long "
        "it takes. Empty: any camera to any other, any time apart. With links, a person may "
        "go from one camera to another only along a link within its travel times (or stay in "
        "one camera).",
    )
    window_s: float = Field(
        3600.0, gt=0.0, le=31_536_000.0, description="Identities not seen for this long are no "
        "longer candidates for new tracklets (bounds the cost per tracklet).",
    )
    photo_calibration: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Platt scaling (a, b) of photo watches' cosines per "
        "ReID model name, as `refind eval watch --calibrate` prints it; added to the built-in "
        "ones (refind.indexer.watchlist.PHOTO_CALIBRATION).",
    )

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> IdentityConfig:
        if not self.split_threshold <= self.link_threshold <= self.merge_threshold:
            raise ValueError(
                f"need split_threshold ({self.split_threshold}) <= link_threshold "
                f"({self.link_threshold}) <= merge_threshold ({self.merge_threshold}): else a "
                "tracklet could be split off and linked back at every update")
        return self
