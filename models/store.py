"""Model store: resolve a model name to verified weight files on disk.

Files are looked for in the configured directory (default ``../shared/models`` when it exists),
then in the download cache; missing files are fetched from their upstream release. Every file is
checked against its sha256 before use, so a truncated or swapped file is never loaded.

Example:
    >>> store = ModelStore.from_config(ModelStoreConfig())          # doctest: +SKIP
    >>> store.resolve("yolox_nano").path                              # doctest: +SKIP
    PosixPath('../shared/models/yolox_nano.onnx')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from refind.models.base import INT8_SUFFIX, model_id_for
from refind.models.config import ModelStoreConfig

log = logging.getLogger(__name__)

_OMZ = "https://storage.openvinotoolkit.org/repositories/open_model_zoo/2023.0/models_bin/1"
_YOLOX = "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0"


class ModelStoreError(RuntimeError):
    """A model's files cannot be found, fetched or verified; the message says what to do."""


@dataclass(frozen=True)
class ModelFile:
    relpath: str
    sha256: str
    url: str | None


@dataclass(frozen=True)
class ModelSpec:
    """Files that make up one model; the first file is the one loaded."""

    name: str
    files: tuple[ModelFile, ...]
    licence: str


@dataclass(frozen=True)
class ResolvedModel:
    """A model whose files exist and match their checksums."""

    name: str
    paths: tuple[Path, ...]
    model_id: str

    @property
    def path(self) -> Path:
        return self.paths[0]


def _omz(name: str, precision: str, xml_sha: str, bin_sha: str) -> ModelSpec:
    base = f"{_OMZ}/{name}/{precision}/{name}"
    return ModelSpec(
        name=name,
        files=(
            ModelFile(f"omz/{name}/{name}.xml", xml_sha, f"{base}.xml"),
            ModelFile(f"omz/{name}/{name}.bin", bin_sha, f"{base}.bin"),
        ),
        licence="Apache-2.0 (Intel Open Model Zoo)",
    )


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "yolox_nano",
            (
                ModelFile(
                    "yolox_nano.onnx",
                    "e8af074932d4ed7e232278e3055cefcdea3edf178874a3694ae292649fb464dd",
                    f"{_YOLOX}/yolox_nano.onnx",
                ),
            ),
            "Apache-2.0 (Megvii YOLOX), COCO 2017",
        ),
        # the OMZ person detectors: checksums of the FP16 IR in ../shared/models (the OMZ 2023.0
        # release files are expected to be the same; not verifiable from this machine)
        _omz(
            "person-detection-0200",
            "FP16",
            "9e606417b926e9f4ef25cd0da52c0f610fa699f906a110745dee6ea79de55c8f",
            "4f2905754c76c9495bcbc6c15e2a37a0ea155f700b3dd03ebcbfee64ba056dc0",
        ),
        _omz(
            "person-detection-0202",
            "FP16",
            "8f74065c0ceeb05f4821c007fe0afc4c571621e2259e3955c2b23db3c4e6e261",
            "7308b43b533777a15de372d79c7d06cf099aa25a5515589dbd1193e29d5db49c",
        ),
        _omz(
            "person-detection-retail-0013",
            "FP16",
            "6b9e969a0e8144c399424bbc2aae3796bd3455832600885aa126c7514c00b643",
            "4f7b51a97be06dbd6f4171832b3413e56bae3e71b89f60f3579949635ae53534",
        ),
        _omz(
            "person-reidentification-retail-0277",
            "FP16",
            "82039b1bb986231c50345550e59def94e63579998e9cddbd1a312f293eb87729",
            "6bb69e09d07733cc3896b29081d2627f92db7b9aacd50f1a8c3df491cb10f1b7",
        ),
        _omz(
            "person-reidentification-retail-0286",
            "FP16",
            "cc547e622d8aeabf97938213f68171bf59ac7d01c910ceadfea984aa96e5d1b5",
            "d06beb9e2b2661d42b233f64ef623f3518fc46dc11f6b7dd53cda8962d9d1bd9",
        ),
        _omz(
            "person-reidentification-retail-0287",
            "FP32",
            "09af746c1068a3e89355e1f0226d3d6982dc1cd77634b1f70a40f1f654a94be1",
            "7f53d18d11253455e0e11646b2176cf6509cc7c97cb5376f9b91b4c41e09a06c",
        ),
        _omz(
            "person-reidentification-retail-0288",
            "FP32",
            "30f452b2ed2763f7bf429eea23f8f243ad0e7f3cdd7226db6888f1660efb3424",
            "6496b8d51741703c9e9c7f6474cb96c60de1856d7b4fd77235e48cea146066a5",
        ),
        ModelSpec(
            "blazepose-full",
            (
                ModelFile(
                    "mediapipe/pose_landmark_full.tflite",
                    "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
                    "https://storage.googleapis.com/mediapipe-assets/pose_landmark_full.tflite",
                ),
            ),
            "Apache-2.0 (Google MediaPipe BlazePose GHUM full)",
        ),
        _omz(
            "person-attributes-recognition-crossroad-0230",
            "FP32",
            "ca288994e74a27bc1912e610460054ca79165ad68c2ec555ccda2738591c1502",
            "9a2c20aa88b282219d31b67c9252cdf844d6ce387090eb676e79e284fa3a25d8",
        ),
    )
}


# Weights trained by refind itself ship inside the package (models/weights/, each with a model
# card); the store finds them there after every other place.
PACKAGED_DIR = Path(__file__).resolve().parent / "weights"
REGISTRY["irm-pets-v3"] = ModelSpec(
    "irm-pets-v3",
    (
        ModelFile(
            "irm-pets-v3.safetensors",
            "eeae1c66c9ff7fe06e96b2626f1302e40370744adaabc41c1636ae03ebc0a8a3",
            None,
        ),
    ),
    "Apache-2.0 (refind; trained on PETS09-S2L1 and the Intel sample clip, see its model card)",
)
REGISTRY["refer-pets-v1"] = ModelSpec(
    "refer-pets-v1",
    (ModelFile("refer-pets-v1.safetensors",
               "912332785d9ad3d719c5ed64d4b72f9069e60a2628a73bd087a93f6c5c2ab67b", None),),
    "Apache-2.0 (refind; referring re-ranker trained on PETS09-S2L1 frames 1-400, see its card)",
)


def derived_dir(cache_dir: Path, name: str) -> Path:
    """Folder of a model derived on this machine (an INT8 copy by `refind quantize`, named
    NAME + ``INT8_SUFFIX``, with a checksum manifest) in a store cache."""
    return cache_dir / "derived" / name


class ManifestMissing(ModelStoreError):
    """A folder made on this machine has no readable manifest (it was never made)."""


def verified_manifest(folder: Path, digest: Callable[[Path], str] | None = None) -> dict:
    """The ``manifest.json`` of a folder made on this machine (an INT8 copy, an IRM export),
    after checking every file it lists against its sha256. ManifestMissing when there is no
    usable manifest, ModelStoreError naming the first file that does not match."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ManifestMissing(f"{folder}: {err}") from None
    for name, sha in files.items():
        path = folder / name
        got = (digest or sha256_of)(path) if path.is_file() else "missing"
        if got != sha:
            raise ModelStoreError(f"{path} has sha256 {got}, expected {sha}")
    return manifest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_model_dirs() -> list[Path]:
    """Where models are looked for when the config names no directory, in order."""
    dirs = []
    if env := os.environ.get("REFIND_MODEL_DIR"):
        dirs.append(Path(env))
    repo_root = Path(__file__).resolve().parents[1]
    for candidate in (Path.cwd() / "../shared/models", repo_root / "../shared/models"):
        if candidate.is_dir():
            dirs.append(candidate.resolve())
    return dirs


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "refind" / "models"


class ModelStore:
    """Finds, verifies and (if allowed) downloads model files by name."""

    def __init__(
        self,
        search_dirs: list[Path],
        cache_dir: Path,
        allow_download: bool = True,
        registry: dict[str, ModelSpec] | None = None,
    ) -> None:
        self.search_dirs = list(search_dirs)
        self.cache_dir = cache_dir
        self.allow_download = allow_download
        self.registry = REGISTRY if registry is None else registry
        self._verified: dict[Path, str] = {}

    @classmethod
    def from_config(cls, cfg: ModelStoreConfig) -> ModelStore:
        dirs = [cfg.dir] if cfg.dir is not None else default_model_dirs()
        return cls(dirs, default_cache_dir(), cfg.allow_download)

    def resolve(self, name: str) -> ResolvedModel:
        """Return verified local paths for ``name``, downloading missing files if allowed."""
        spec = self.registry.get(name)
        base = name.removesuffix(INT8_SUFFIX)
        if spec is None and name.endswith(INT8_SUFFIX) and base in self.registry:
            return self._resolve_derived(name)
        if spec is None:
            raise ModelStoreError(
                f"unknown model {name!r}; known models: {', '.join(sorted(self.registry))}"
            )
        paths = tuple(self._resolve_file(spec, f) for f in spec.files)
        return ResolvedModel(name, paths, model_id_for(name, spec.files[0].sha256))

    def _resolve_derived(self, name: str) -> ResolvedModel:
        """An INT8 copy made here by ``refind quantize`` (training/quantize.py), checked against
        the checksums of its manifest."""
        folder = derived_dir(self.cache_dir, name)
        base = name.removesuffix(INT8_SUFFIX)
        try:
            manifest = verified_manifest(folder, self._digest)
        except ManifestMissing as err:
            raise ModelStoreError(
                f"model {name!r} is an INT8 copy of {base!r} made on this machine, not "
                f"downloaded: run `refind quantize --model {base} --video CLIP` ({err})"
            ) from None
        except ModelStoreError as err:
            raise ModelStoreError(f"model {name!r}: {err}; run `refind quantize --model {base}` "
                                  "again") from None
        paths = sorted((folder / f for f in manifest["files"]),
                       key=lambda p: p.suffix != ".xml")  # the .xml is the file loaded
        return ResolvedModel(name, tuple(paths), model_id_for(name, manifest["files"][f"{name}.bin"]))

    def _resolve_file(self, spec: ModelSpec, mf: ModelFile) -> Path:
        problems: list[str] = []
        for root in [*self.search_dirs, self.cache_dir, PACKAGED_DIR]:
            candidate = root / mf.relpath
            if not candidate.is_file():
                continue
            digest = self._digest(candidate)
            if digest == mf.sha256:
                return candidate
            problems.append(f"{candidate} has sha256 {digest}, expected {mf.sha256}")
        if self.allow_download and mf.url:
            return self._download(mf, problems)
        where = ", ".join(str(d) for d in self.search_dirs) or "(no model directory configured)"
        reason = "; ".join(problems) if problems else "file not found"
        fetch = f"download it from {mf.url}" if mf.url else "it has no upstream release to download"
        raise ModelStoreError(
            f"model {spec.name!r}: {mf.relpath}: {reason}. Put the file at <models dir>/"
            f"{mf.relpath} (models dir searched: {where}; set models.dir in the config or "
            f"REFIND_MODEL_DIR), or allow downloads and {fetch}."
        )

    def _digest(self, path: Path) -> str:
        digest = self._verified.get(path)
        if digest is None:
            digest = sha256_of(path)
            self._verified[path] = digest
        return digest

    def _download(self, mf: ModelFile, problems: list[str]) -> Path:
        assert mf.url is not None
        target = self.cache_dir / mf.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s -> %s", mf.url, target)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mf.url, timeout=60) as resp:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
            digest = sha256_of(tmp)
            if digest != mf.sha256:
                raise ModelStoreError(
                    f"downloaded {mf.url} has sha256 {digest}, expected {mf.sha256}; "
                    "refusing to use it"
                )
            tmp.replace(target)
        except OSError as err:
            earlier = ("; " + "; ".join(problems)) if problems else ""
            raise ModelStoreError(
                f"could not download {mf.url}: {err}{earlier}. Put the file at "
                f"<models dir>/{mf.relpath} and set models.dir or REFIND_MODEL_DIR."
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        self._verified[target] = mf.sha256
        return target
