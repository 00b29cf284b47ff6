"""Index versions and the serving alias: which embedder's gallery answers searches.

A version is the gallery (SQLite metadata with vectors, FAISS views) of one embedder ``model_id``
over the crop store's crops, under a root directory with the usual shard layout
(``<root>/gallery``, ``<root>/gallery-<i>``). The first version is ``data_dir`` itself; a
re-index writes ``data_dir/versions/<stem>/`` beside it. A crop keeps its ``vector_id`` in every
version, so one index never mixes models and the same id names the same crop everywhere.

``data_dir/versions.json`` (the registry) lists the versions and names the one that serves::

    {"format": 1, "serving": "<model_id>",
     "versions": {"<model_id>": {"root": "versions/<stem>", "embedder": {type, model, ...},
                                 "dim": 256, "state": "building" | "ready", "updated_ns": ...}}}

It is replaced atomically (temp file, fsync, ``os.replace``) under ``data_dir/versions.lock``,
so readers see the old alias or the new one, never a mix; a reader notices a switch by the file's
identity changing (``registry_stamp``). Without the file, ``data_dir`` and the config's embedder
serve (a gallery made before versions existed).

Example:
    >>> serving_version(cfg).root                                            # doctest: +SKIP
    PosixPath('.refind/versions/person-reidentification-retail-0288_30f4-1a2b3c4d')
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from refind.config import RefindConfig
from refind.indexer.gallery_store import atomic_write, index_stem
from refind.indexer.shards import existing_shards
from refind.models.base import model_name
from refind.models.config import EmbedderConfig

log = logging.getLogger(__name__)

REGISTRY_FILE = "versions.json"
REGISTRY_FORMAT = 1
BASE_ROOT = "."
_EMBEDDER = TypeAdapter(EmbedderConfig)


class VersionError(ValueError):
    """A version that does not exist, is not ready, or cannot be used that way."""


@dataclass(frozen=True)
class Version:
    """One index version: its embedder, where its shards live, and whether it is complete."""

    model_id: str
    root: str  # relative to data_dir; "." for data_dir itself
    embedder: dict[str, Any]  # the embedder config section that makes model_id
    dim: int
    state: Literal["building", "ready"] = "ready"
    updated_ns: int = field(default_factory=time.time_ns)

    def path(self, data_dir: Path) -> Path:
        return Path(data_dir) if self.root == BASE_ROOT else Path(data_dir) / self.root

    @property
    def name(self) -> str:
        """The model store name (the model_id before its ``@`` checksum)."""
        return model_name(self.model_id)


@dataclass(frozen=True)
class Registry:
    serving: str
    versions: dict[str, Version]

    def to_json(self) -> dict[str, Any]:
        return {"format": REGISTRY_FORMAT, "serving": self.serving,
                "versions": {m: asdict(v) for m, v in sorted(self.versions.items())}}


@dataclass(frozen=True)
class Serving:
    """What answers searches: the config to build its embedder from, and its root."""

    cfg: RefindConfig  # the deployment's config with the serving version's embedder section
    root: Path
    model_id: str | None  # None without a registry (the config's embedder serves data_dir)


def embedder_config(section: dict[str, Any]) -> EmbedderConfig:
    """The embedder config section stored in the registry, validated."""
    try:
        return _EMBEDDER.validate_python(section)
    except ValidationError as err:
        raise VersionError(f"stored embedder config {section!r} is not valid: {err}") from None


def with_embedder(cfg: RefindConfig, section: dict[str, Any] | EmbedderConfig) -> RefindConfig:
    """``cfg`` with another embedder section."""
    if isinstance(section, dict):
        section = embedder_config(section)
    return cfg.model_copy(update={"embedder": section})


def with_model(cfg: RefindConfig, name: str) -> RefindConfig:
    """``cfg`` whose embedder loads model ``name``: an IRM head (a model store name ``irm-*`` or a
    ``.safetensors`` file) selects the IRM embedder; any other name replaces the model of the
    configured embedder type (an OMZ ReID model for ``openvino_reid``)."""
    if name.endswith(".safetensors") or name.startswith("irm-"):
        return with_embedder(cfg, {"type": "irm", "weights": name})
    data = cfg.embedder.model_dump()
    if "model" not in data:
        raise VersionError(f"embedder type {data.get('type')!r} has no model name to replace; "
                           "give the embedder section in --config instead of --model")
    return with_embedder(cfg, data | {"model": name})


def registry_path(data_dir: Path) -> Path:
    return Path(data_dir) / REGISTRY_FILE


def registry_stamp(data_dir: Path) -> tuple[int, int, int] | None:
    """Cheap identity of the registry file (inode, mtime, size); None when there is none."""
    try:
        st = os.stat(registry_path(data_dir))
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_registry(data_dir: Path) -> Registry | None:
    """The registry, None when ``data_dir`` has none."""
    path = registry_path(data_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise VersionError(f"{path} is unreadable: {err}") from None
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise VersionError(f"{path}: unknown format {data.get('format') if isinstance(data, dict) else data!r}")
    versions = {m: Version(**v) for m, v in data["versions"].items()}
    if data["serving"] not in versions:
        raise VersionError(f"{path}: serving version {data['serving']!r} is not listed")
    return Registry(data["serving"], versions)


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(data_dir) / "versions.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_registry(
    data_dir: Path, change: Callable[[Registry | None], Registry | None]
) -> Registry | None:
    """Read, change and atomically replace the registry, under its lock; returns the new one."""
    with _locked(data_dir):
        new = change(read_registry(data_dir))
        if new is not None:
            atomic_write(registry_path(data_dir), json.dumps(new.to_json(), indent=1).encode())
        return new


def serving_version(cfg: RefindConfig) -> Serving:
    """The version that answers searches and takes new crops."""
    registry = read_registry(cfg.data_dir)
    if registry is None:
        return Serving(cfg, Path(cfg.data_dir), None)
    v = registry.versions[registry.serving]
    return Serving(with_embedder(cfg, v.embedder), v.path(cfg.data_dir), v.model_id)


def find_version(registry: Registry | None, ref: str) -> Version:
    """The version named by a model_id or a model store name; VersionError lists the valid ones."""
    versions = registry.versions if registry else {}
    if ref in versions:
        return versions[ref]
    named = [v for v in versions.values() if v.name == ref]
    if len(named) == 1:
        return named[0]
    known = ", ".join(sorted(versions)) or "none (run `refind reindex` first)"
    raise VersionError(f"no index version {ref!r}; versions: {known}")


def use_version(data_dir: Path, ref: str) -> Version:
    """Switch the serving alias to a complete version (a rollback, or a switch by hand)."""
    chosen: list[Version] = []

    def change(reg: Registry | None) -> Registry:
        v = find_version(reg, ref)
        if v.state != "ready":
            raise VersionError(f"version {v.model_id} is still being built; finish it with "
                               f"`refind reindex --model {v.name}`")
        chosen.append(v)
        assert reg is not None
        return replace(reg, serving=v.model_id)

    update_registry(data_dir, change)
    log.info("%s: serving version is now %s", data_dir, chosen[0].model_id)
    return chosen[0]


def delete_version(data_dir: Path, ref: str) -> Version:
    """Delete a version that does not serve: its registry entry first, then its files."""
    gone: list[Version] = []

    def change(reg: Registry | None) -> Registry:
        v = find_version(reg, ref)
        assert reg is not None
        if v.model_id == reg.serving:
            raise VersionError(f"version {v.model_id} is serving; switch to another first "
                               "(`refind versions use MODEL`)")
        gone.append(v)
        return replace(reg, versions={m: x for m, x in reg.versions.items() if m != v.model_id})

    update_registry(data_dir, change)
    remove_root(data_dir, gone[0].root)
    return gone[0]


def remove_root(data_dir: Path, root: str) -> None:
    """Delete a version's shards (for the base root, only its ``gallery*`` shards)."""
    if root == BASE_ROOT:
        for shard in existing_shards(Path(data_dir)):
            shutil.rmtree(shard, ignore_errors=True)
    else:
        shutil.rmtree(Path(data_dir) / root, ignore_errors=True)


def version_root(model_id: str) -> str:
    """Where a new version of ``model_id`` is written, relative to data_dir."""
    return f"versions/{index_stem(model_id)}"


def all_version_shards(data_dir: Path) -> list[Path]:
    """Every gallery shard of every version (including ones being built): what forgetting and
    retention must reach."""
    shards = existing_shards(Path(data_dir))
    versions = Path(data_dir) / "versions"
    if versions.is_dir():
        for root in sorted(p for p in versions.iterdir() if p.is_dir()):
            shards += existing_shards(root)
    return shards
