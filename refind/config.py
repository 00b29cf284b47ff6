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
from typing import get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from refind.actors.config import RayConfig
from refind.app.config import ApiConfig, ServeConfig
from refind.indexer.config import (
    BlobStoreConfig,
    GalleryConfig,
    IdentityConfig,
    MetadataConfig,
    RetentionConfig,
    SearchConfig,
    SqliteMetadataConfig,
)
from refind.models.config import (
    DetectorConfig,
    EmbedderConfig,
    ModelStoreConfig,
    OmzPersonDetectorConfig,
    OpenVinoReidConfig,
)
from refind.streaming.config import (
    CameraConfig,
    ConfigError,
    CropConfig,
    IngestConfig,
    KafkaConfig,
    LiveConfig,
    MotionGateConfig,
    PlaceConfig,
    Section,
    TrackerConfig,
)


class RefindConfig(Section):
    data_dir: Path = Field(
        Path(".refind"), description="Where the gallery, metadata and crops are stored."
    )
    models: ModelStoreConfig = ModelStoreConfig()
    detector: DetectorConfig = OmzPersonDetectorConfig()
    tracker: TrackerConfig = TrackerConfig()
    motion_gate: MotionGateConfig = MotionGateConfig()
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
    identities: IdentityConfig = IdentityConfig()

    def places(self) -> dict[str, tuple[PlaceConfig, ...]]:
        """Each camera's named places (``CameraConfig.places``), by camera name."""
        return {c.name: c.places for c in self.cameras if c.places}

    @model_validator(mode="after")
    def _unique_camera_names(self) -> RefindConfig:
        names = [c.name for c in self.cameras]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"camera names must be unique; repeated: {', '.join(dupes)}")
        return self


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: str, where: str, source: str) -> str:
    """``value`` with every ``${VAR}`` replaced by the environment's value."""

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{source}: {where}: environment variable ${{{name}}} is not set")
        return os.environ[name]

    return _ENV.sub(repl, value)


def _section_classes(annotation: object) -> list[type[BaseModel]]:
    """The config section classes an annotation allows (through unions and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [c for arg in get_args(annotation) for c in _section_classes(arg)]


def _pick(classes: list[type[BaseModel]], value: dict) -> type[BaseModel] | None:
    """The section class of a plugin section's value, by its ``type:`` (default: the first)."""
    for cls in classes:
        field = cls.model_fields.get("type")
        if field is not None and value.get("type", field.default) == field.default:
            return cls
    return classes[0] if classes else None


def _substitute_env(value: object, cls: type[BaseModel], source: str, where: str = "") -> object:
    """Expand ``${VAR}`` placeholders in the secret fields (``SECRET``) of parsed YAML; a
    placeholder anywhere else is a ConfigError naming the key."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        path = f"{where}.{key}" if where else str(key)
        field = cls.model_fields.get(str(key))
        if field is None:
            out[key] = item  # unknown key: validation names it
            continue
        secret = _is_secret(field)
        classes = _section_classes(field.annotation)
        if isinstance(item, dict) and (sub := _pick(classes, item)) is not None:
            out[key] = _substitute_env(item, sub, source, path)
        elif isinstance(item, list):
            out[key] = [
                _substitute_env(x, _pick(classes, x) or classes[0], source, f"{path}[{i}]")
                if isinstance(x, dict) and classes else _scalar(x, secret, f"{path}[{i}]", source)
                for i, x in enumerate(item)]
        else:
            out[key] = _scalar(item, secret, path, source)
    return out


def _is_secret(field: FieldInfo) -> bool:
    return (field.json_schema_extra or {}).get("secret") is True  # type: ignore[union-attr]


def _scalar(item: object, secret: bool, path: str, source: str) -> object:
    """A YAML scalar: placeholders expanded in a secret, refused anywhere else."""
    if not isinstance(item, str):
        return item
    if secret:
        return _expand(item, path, source)
    if _ENV.search(item):
        raise ConfigError(
            f"{source}: {path}: ${{VAR}} placeholders are only for secrets "
            f"({', '.join(_secret_paths(RefindConfig))}): write the value itself")
    return item


def _secret_paths(cls: type[BaseModel], where: str = "") -> list[str]:
    """The keys of every secret field under ``cls``, as a config names them."""
    out: list[str] = []
    for name, field in cls.model_fields.items():
        path = f"{where}{name}"
        if _is_secret(field):
            out.append(path)
        many = get_origin(field.annotation) in (list, tuple)
        for sub in _section_classes(field.annotation):
            out += [p for p in _secret_paths(sub, f"{path}{'[]' if many else ''}.")
                    if p not in out]
    return out


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
        data = _substitute_env(yaml.safe_load(p.read_text(encoding="utf-8")), RefindConfig,
                               str(p))
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    return parse_config(data, str(p))
