"""The one typed config tree of refind (``RefindConfig``), loaded from YAML.

Each folder owns its sections (``refind.streaming.config``, ``refind.models.config``,
``refind.indexer.config``, ``refind.actors.config``, ``refind.app.config``); this module puts
them together, reads YAML and reports every problem with the key's path. ``${VAR}``
placeholders are expanded only in fields meant for secrets (see ``Secret``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

from refind.actors.config import RayConfig
from refind.app.config import ApiConfig, ServeConfig
from refind.indexer.config import (
    BlobStoreConfig,
    GalleryConfig,
    MetadataConfig,
    RetentionConfig,
    SearchConfig,
    SqliteMetadataConfig,
)
from refind.models.config import (
    DetectorConfig,
    EmbedderConfig,
    ModelStoreConfig,
    OpenVinoReidConfig,
    YoloxDetectorConfig,
)
from refind.streaming.config import (
    CameraConfig,
    ConfigError,
    CropConfig,
    IngestConfig,
    KafkaConfig,
    LiveConfig,
    Section,
    TrackerConfig,
)


class RefindConfig(Section):
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
    for cls in Section.__subclasses__():
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
