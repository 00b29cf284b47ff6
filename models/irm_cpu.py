"""The IRM embedder without torch: served on a CPU by OpenVINO alone.

Parts, each behind plain numpy:

- ``OpenVinoBackbone``: OMZ 0277 with its feature map as an extra output (patch tokens and the
  teacher embedding of each crop);
- ``OpenVinoHead``: the head of ``refind.models.irm`` (its gallery, photo-query, garment-query and
  text-query paths) and the all-MiniLM-L6-v2 text encoder, as OpenVINO IR, exported **once** by
  ``export_irm`` (which needs torch: ``pip install 'refind[torch]'``) into the model store's
  cache (``<cache>/derived/<weights>-openvino/``, with a checksum manifest); the tokenizer is
  the ``tokenizers`` library's, from the encoder's own ``tokenizer.json``;
- the attribute probe (``refind.models.attribute_probe``), numpy.

``IrmCpuEmbedder`` puts them together behind the ``InstructableEmbedder`` protocol and gives the
vectors of the torch ``IrmEmbedder`` (``refind.models.irm_embedder``, for GPUs and training) to
float rounding; ``tests/models/test_irm_cpu.py`` checks each graph against torch. With no export
in the cache, building one needs torch; without torch the error says how to make it.

Example:
    >>> emb = IrmCpuEmbedder.from_config(IrmEmbedderConfig(device="cpu"), store)   # doctest: +SKIP
    >>> emb.embed_query([photo], "attribute_text", "now wearing a red top").vectors.shape  # doctest: +SKIP
    (1, 512)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from refind.extras import missing_modules
from refind.models.attribute_probe import IRM_TEACHER, AttributeProbe
from refind.models.base import (
    INT8_SUFFIX,
    TASKS,
    Kept,
    ModelInputError,
    check_bgr_image,
    crops_to_batch,
    model_id_for,
    model_name,
)
from refind.models.store import (
    ManifestMissing,
    ModelStoreError,
    derived_dir,
    sha256_of,
    verified_manifest,
)
from refind.streaming.records import Embeddings

if TYPE_CHECKING:
    from refind.models.config import IrmEmbedderConfig

log = logging.getLogger(__name__)

TEACHER = IRM_TEACHER  # the backbone weights name when none is stored
BACKBONE_NODE = "1126"  # OMZ 0277's last feature map, (B, 512, 16, 8) after ReLU
INPUT_HW = (256, 128)  # OMZ ReID input, BGR 0-255
TEXT_DIM = 384  # all-MiniLM-L6-v2 hidden size
EXPORT_FORMAT = 1
GRAPHS = ("gallery", "query", "query_garment", "text", "minilm")
NVIDIA_DRIVERS = (Path("/proc/driver/nvidia"), Path("/dev/nvidiactl"))  # one is there with a GPU

# Instructions used when a query names a task but no instruction (the first phrasing of each task
# in refind.datasets.irm.instruction_for); the gallery always uses the "reid" one.
DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "reid": "same person, same clothes",
    "clothes_change": "ignore the clothes",
    "clothes_template": "someone wearing this garment",
    "attribute_text": "same person, now wearing other clothes",
    "visible_infrared": "the query is an infrared image",
    "text": "",
}


@dataclass(frozen=True)
class IrmConfig:
    """Sizes of the IRM head (the frozen backbone and text encoder are not part of it)."""

    token_dim: int = 512  # backbone feature channels
    n_patches: int = 32  # (16, 8) feature map avg-pooled 2x2 -> 8 x 4
    teacher_dim: int = 256  # OMZ 0277 embedding
    text_dim: int = 384  # all-MiniLM-L6-v2 hidden size
    dim: int = 128  # transformer width (the head's CPU cost: 128 keeps it ~10 ms per 32 crops)
    heads: int = 4
    encoder_layers: int = 2
    editing_layers: int = 2
    mlp_ratio: float = 2.0
    part_dim: int = 256  # each of the id and clothes parts; the vector is 2 * part_dim
    max_text_tokens: int = 32
    n_attributes: int = 8

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"IrmConfig.dim {self.dim} is not a multiple of heads {self.heads}")
        if self.part_dim != self.teacher_dim:  # the id part is a residual on the teacher
            raise ValueError(
                f"IrmConfig.part_dim {self.part_dim} must equal teacher_dim {self.teacher_dim}"
            )

    @property
    def out_dim(self) -> int:
        return 2 * self.part_dim


class Backbone(Protocol):
    """Crops -> (patches (B, N, 512) float32, teacher (B, 256) float32, not normalised)."""

    model_id: str

    def __call__(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...


class OpenVinoBackbone:
    """OMZ 0277 on CPU with OpenVINO, an extra output at node 1126."""

    def __init__(self, xml_path: Path, model_id: str, threads: int = 0,
                 resize_threads: int = 0) -> None:
        import openvino as ov

        from refind.models.openvino_util import CpuRunner, read_dynamic_batch

        self.model_id = model_id
        self.resize_threads = resize_threads
        core = ov.Core()
        model, _ = read_dynamic_batch(
            core, xml_path, INPUT_HW, extra_outputs=(BACKBONE_NODE,), pool=2
        )  # the feature map comes out pooled to (B, 512, 8, 4)
        self._run_model = CpuRunner(core, model, threads)
        ranks = [len(o.get_partial_shape()) for o in self._run_model.outputs]
        self._map_out, self._emb_out = ranks.index(4), ranks.index(2)

    def __call__(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = self._run_model([crops_to_batch(crops, INPUT_HW, "IRM crop",
                                              resize_threads=self.resize_threads)])
        pooled = np.asarray(out[self._map_out], np.float32)  # (B, 512, 8, 4)
        tokens = np.ascontiguousarray(pooled.reshape(*pooled.shape[:2], -1).transpose(0, 2, 1))
        return tokens, np.asarray(out[self._emb_out], np.float32)  # (B, 32, 512), (B, 256)


def resolve_weights(weights: str, store: object) -> tuple[Path, str]:
    """(path, model_id) of IRM weights named by a model store name or a ``.safetensors`` path."""
    if weights.endswith(".safetensors"):
        path = Path(weights)
        if not path.is_file():
            raise ModelInputError(f"IRM weights {path} not found")
        return path, model_id_for(path.stem, sha256_of(path))
    resolved = store.resolve(weights)  # type: ignore[attr-defined]
    return resolved.path, resolved.model_id


# ---- the export (torch) and its cache --------------------------------------------------------


def export_name(weights_model_id: str) -> str:
    """The model store cache folder name of a weights file's OpenVINO export."""
    digest = hashlib.sha256(weights_model_id.encode()).hexdigest()[:12]
    return f"{model_name(weights_model_id)}-openvino-{digest}"


def export_folder(store: object, weights_model_id: str) -> Path:
    return derived_dir(store.cache_dir, export_name(weights_model_id))  # type: ignore[attr-defined]


def export_irm(weights: Path, weights_model_id: str, out: Path) -> Path:
    """Export the head at ``weights`` and the MiniLM text encoder to OpenVINO IR in ``out``
    (replaced whole, written beside in a folder of its own and renamed into place), with a
    manifest of checksums. Needs torch, transformers and openvino."""
    from refind.models.irm_export import export_graphs  # torch: only here

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        export_graphs(weights, tmp)
        files = {p.name: sha256_of(p) for p in sorted(tmp.iterdir())}
        manifest = {"format": EXPORT_FORMAT, "weights": weights_model_id, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to OpenVINO in %s", weights_model_id, out)
    return out


def checked_export(folder: Path, weights_model_id: str) -> Path:
    """``folder`` when it holds a complete export of ``weights_model_id`` whose files match
    their checksums; ModelStoreError otherwise."""
    try:
        manifest = verified_manifest(folder)
    except ManifestMissing as err:
        raise ModelStoreError(f"no OpenVINO export of {weights_model_id} in {err}") from None
    except ModelStoreError as err:
        raise ModelStoreError(f"{err}: export it again") from None
    if manifest.get("format") != EXPORT_FORMAT or manifest.get("weights") != weights_model_id:
        raise ModelStoreError(f"{folder} holds an export of {manifest.get('weights')!r} "
                              f"(format {manifest.get('format')}), not of {weights_model_id}")
    return folder


def ensure_export(store: object, weights: Path, weights_model_id: str) -> Path:
    """The cached OpenVINO export of the weights, made now (once, by one process: the others
    wait for it) if missing and the torch extra is installed; a ModelStoreError naming the fix
    otherwise."""
    folder = export_folder(store, weights_model_id)
    try:
        return checked_export(folder, weights_model_id)
    except ModelStoreError as missing:
        lacking = missing_modules("torch")
        if lacking:
            raise ModelStoreError(
                f"the IRM embedder runs on a CPU from an OpenVINO export of its head and text "
                f"encoder, made once with torch ({missing}). Install the torch extra once "
                f"({', '.join(lacking)} missing: pip install 'refind[torch]') and search or "
                "ingest again, or copy that folder from a machine that has it."
            ) from None
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.with_name(f".{folder.name}.lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
            try:
                return checked_export(folder, weights_model_id)  # made while we waited
            except ModelStoreError:
                log.warning("exporting %s to OpenVINO once (%s)", weights_model_id, missing)
                return export_irm(weights, weights_model_id, folder)


# ---- running the export ----------------------------------------------------------------------


class OpenVinoHead:
    """The exported head graphs and text encoder of one IRM weights file (numpy in and out)."""

    def __init__(self, folder: Path, threads: int = 0) -> None:
        import openvino as ov

        from refind.models.openvino_util import CpuRunner

        core = ov.Core()
        self._graphs = {
            name: CpuRunner(core, core.read_model(str(folder / f"{name}.xml")), threads,
                            INFERENCE_PRECISION_HINT="f32")
            for name in GRAPHS if (folder / f"{name}.xml").is_file()
        }
        self.config = IrmConfig(**json.loads((folder / "irm_config.json").read_text()))
        self.text: TextStates | None = None  # the text encoder, when the export has one
        if "minilm" in self._graphs:
            self.text = OpenVinoText(self._graphs["minilm"], folder / "tokenizer.json",
                                     self.config.max_text_tokens)

    def _run(self, graph: str, *inputs: np.ndarray) -> np.ndarray:
        (out,) = self._graphs[graph](list(inputs))
        return np.asarray(out, np.float32)

    def gallery(self, patches: np.ndarray, teacher: np.ndarray) -> np.ndarray:
        """(B, 2P) gallery vectors under the default instruction."""
        return self._run("gallery", patches, teacher)

    def query(self, patches: np.ndarray, teacher: np.ndarray, task_ids: np.ndarray,
              text: np.ndarray, mask: np.ndarray,
              garment: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """(B, 2P) photo-query vectors; ``garment``: (patches, teacher) of a garment photo."""
        if garment is None:
            return self._run("query", patches, teacher, task_ids, text, mask)
        return self._run("query_garment", patches, teacher, task_ids, text, mask, *garment)

    def text_query(self, task_ids: np.ndarray, text: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, 2P) text-only query vectors."""
        return self._run("text", task_ids, text, mask)


class TextStates(Protocol):
    """A text encoder as the head reads it: padded (B, T, text_dim) states and a (B, T) mask."""

    def padded(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...


TEXTS_KEPT = 4096  # encoded texts an encoder keeps (about 50 KB each), least recently used go


class KeptTexts(Kept[str, np.ndarray]):
    """Encoded texts by text, at most ``size`` of them (least recently used dropped first)."""

    def __init__(self, size: int = TEXTS_KEPT) -> None:
        super().__init__(size)


class OpenVinoText:
    """all-MiniLM-L6-v2 as OpenVINO IR: last hidden states per text, (T, 384) float32, cached by
    text, tokenized by the ``tokenizers`` library from the encoder's own ``tokenizer.json``."""

    def __init__(self, runner: object, tokenizer_json: Path, max_tokens: int = 32) -> None:
        from tokenizers import Tokenizer

        self._run = runner
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.no_padding()
        self._kept = KeptTexts()

    def __call__(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One (T_i, 384) float32 array per text, T_i its real tokens."""
        return self._kept(texts, lambda todo: [self._encode(t) for t in todo])

    def _encode(self, text: str) -> np.ndarray:
        ids = np.asarray([self.tokenizer.encode(text).ids], np.int64)  # (1, T)
        (states,) = self._run([ids, np.ones_like(ids), np.zeros_like(ids)])  # type: ignore[operator]
        return np.asarray(states, np.float32)[0]

    def padded(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B, T, 384) float32 states and (B, T) bool mask of real tokens."""
        return pad_states(self(texts), TEXT_DIM)


def pad_states(states: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length (T_i, dim) arrays -> padded (B, T, dim) float32 and mask (B, T) bool."""
    longest = max((len(s) for s in states), default=0)
    out = np.zeros((len(states), longest, dim), np.float32)
    mask = np.zeros((len(states), longest), bool)
    for i, s in enumerate(states):
        out[i, : len(s)] = s
        mask[i, : len(s)] = True
    return out, mask


# ---- what both IRM embedders (this one, and the torch one) read from a query ---------------


def read_instruction(task: str, instruction: str | np.ndarray | None,
                     n_crops: int) -> tuple[str, np.ndarray | None]:
    """(instruction text, garment photo or None) of a query for ``task``: a text, a BGR garment
    photo (task clothes_template; the text is then the task's default phrasing) or None (the
    default phrasing). ModelInputError for an unknown task, or task "text" with crops or with
    no text."""
    if task not in TASKS:
        raise ModelInputError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    if task == "text":
        if not isinstance(instruction, str) or n_crops:
            raise ModelInputError("task 'text' takes no crops and a text instruction")
        return instruction, None
    if isinstance(instruction, np.ndarray):
        check_bgr_image(instruction, "instruction image")
        return DEFAULT_INSTRUCTIONS[task], instruction
    return (DEFAULT_INSTRUCTIONS[task] if instruction is None else instruction), None


def probe_edit(probe: AttributeProbe | None, task: str, text: str) -> np.ndarray | None:
    """The attribute probe's text vector that edits an attribute_text photo query ("now
    wearing a red top"), or None when this query is not edited through the probe."""
    if probe is None or task != "attribute_text" or probe.photo_text_weight <= 0:
        return None
    return probe.query_vector(text)


def probe_texts(probe: AttributeProbe | None, texts: Sequence[str],
                dim: int) -> tuple[np.ndarray, list[int]]:
    """(n, D) query vectors of the texts the attribute probe reads (zero rows elsewhere), and the
    rows it cannot read, which go through the head's learned text path."""
    vectors = np.zeros((len(texts), dim), np.float32)
    learned = []
    for k, text in enumerate(texts):
        q = None if probe is None else probe.query_vector(text)
        if q is None:
            learned.append(k)
        else:
            vectors[k] = q
    return vectors, learned


class UneditedWarning:
    """Once per embedder: a teacher-only image path ignores an instructed photo query's
    instruction (unless the attribute probe edited it), and the log says so."""

    def __init__(self, model_id: str, teacher_only: bool, logger: logging.Logger) -> None:
        self.model_id, self.teacher_only, self.logger = model_id, teacher_only, logger
        self.warned = False

    def __call__(self, task: str, edited: bool) -> None:
        if task != "reid" and self.teacher_only and not edited and not self.warned:
            self.warned = True
            self.logger.warning(
                "%s: this instruction does not change photo queries (its image path is the "
                "0277 teacher's, see its model card; only attribute text naming attributes or "
                "colours does): this %s query ranks as plain ReID", self.model_id, task)


# ---- the embedder ----------------------------------------------------------------------------


class IrmCpuEmbedder:
    """An InstructableEmbedder on a CPU without torch (module docstring).

    Example:
        >>> emb = IrmCpuEmbedder.from_config(IrmEmbedderConfig(device="cpu"), store)  # doctest: +SKIP
        >>> emb.embed_text(["a woman in a red top"]).vectors.shape                  # doctest: +SKIP
        (1, 512)
    """

    def __init__(self, head: OpenVinoHead, backbone: Backbone, model_id: str,
                 batch_size: int = 32, probe: AttributeProbe | None = None,
                 teacher_only: bool = False) -> None:
        if probe is not None and probe.dim != head.config.out_dim:
            raise ModelInputError(f"attribute probe reads {probe.dim}-d vectors; this head gives "
                                  f"{head.config.out_dim}-d")
        self.head = head
        self.backbone = backbone
        self.model_id = model_id
        self.dim = head.config.out_dim
        self.batch_size = batch_size
        self.probe = probe
        # a teacher-only image path: the gallery vector is [t, t] / sqrt 2 (IrmHead.parts)
        self.teacher_shortcut = teacher_only
        self._warn_unedited = UneditedWarning(model_id, teacher_only, log)

    @classmethod
    def from_config(cls, cfg: IrmEmbedderConfig, store: object) -> object:
        """The embedder of an ``embedder: {type: irm}`` section: this one on a CPU, the torch
        ``IrmEmbedder`` on a GPU (``device: cuda``, or ``auto`` where torch sees one)."""
        if cfg.device != "cpu" and _gpu_wanted(cfg.device):
            from refind.models.irm_embedder import IrmEmbedder

            return IrmEmbedder.from_config(cfg, store)
        weights, weights_id = resolve_weights(cfg.weights, store)
        folder = ensure_export(store, weights, weights_id)
        head = OpenVinoHead(folder, cfg.threads)
        meta = json.loads((folder / "weights_meta.json").read_text())
        trained_on = meta.get("backbone", TEACHER)
        backbone = cfg.backbone
        if backbone.removesuffix(INT8_SUFFIX) != trained_on:
            raise ModelInputError(
                f"IRM weights {weights} were trained on backbone {trained_on!r}, not {backbone!r}")
        resolved = store.resolve(backbone)  # type: ignore[attr-defined]
        net = OpenVinoBackbone(resolved.path, resolved.model_id, cfg.threads, cfg.resize_threads)
        model_id = weights_id if backbone == trained_on else f"{weights_id}+{net.model_id}"
        probe = None
        if meta.get("has_probe"):
            probe = AttributeProbe.from_arrays(dict(np.load(folder / "probe.npz")),
                                               meta.get("probe_names"))
        return cls(head, net, model_id, cfg.batch_size, probe, bool(meta["teacher_only"]))

    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, min(n, i + self.batch_size)) for i in range(0, n, self.batch_size)]

    def __call__(self, crops: Sequence[np.ndarray]) -> Embeddings:
        """Gallery vectors (n, 2P): the default instruction, no task."""
        out = [np.zeros((0, self.dim), np.float32)]
        for s in self._chunks(len(crops)):
            patches, teacher = self.backbone(crops[s])
            if self.teacher_shortcut:  # the head would return [n(t), n(t)] / sqrt 2
                t = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
                out.append(np.concatenate([t, t], axis=1) / math.sqrt(2.0))
            else:
                out.append(self.head.gallery(patches, teacher))
        return Embeddings(np.concatenate(out).astype(np.float32), self.model_id)

    def embed_query(self, crops: Sequence[np.ndarray], task: str = "reid",
                    instruction: str | np.ndarray | None = None) -> Embeddings:
        """Query crops for ``task`` with one instruction (text, a garment photo, or None for the
        task's default phrasing); task "text" takes no crops and a text instruction."""
        text, photo = read_instruction(task, instruction, len(crops))
        if task == "text":
            return self.embed_text([text])
        garment = None if photo is None else self.backbone([photo])
        probe = self.probe
        text_vector = probe_edit(probe, task, text)
        self._warn_unedited(task, edited=text_vector is not None)
        states, mask = self._text().padded([text])  # (1, T, 384), (1, T)
        out = [np.zeros((0, self.dim), np.float32)]
        for s in self._chunks(len(crops)):
            patches, teacher = self.backbone(crops[s])
            b = len(patches)
            tasks = np.full(b, TASKS.index(task), np.int64)
            g = None if garment is None else tuple(np.repeat(x, b, axis=0) for x in garment)
            out.append(self.head.query(patches, teacher, tasks, np.repeat(states, b, axis=0),
                                       np.repeat(mask, b, axis=0), g))  # type: ignore[arg-type]
        vectors = np.concatenate(out).astype(np.float32)
        if text_vector is not None and len(vectors):
            vectors = probe.compose(vectors, text_vector)  # type: ignore[union-attr,assignment]
        return Embeddings(vectors, self.model_id)

    def embed_text(self, texts: Sequence[str]) -> Embeddings:
        """Text-only queries into the gallery space: through the attribute probe when the text
        names what it reads, else through the head's learned text path."""
        vectors, learned = probe_texts(self.probe, texts, self.dim)
        for s in self._chunks(len(learned)):
            rows = learned[s]
            states, mask = self._text().padded([texts[k] for k in rows])
            tasks = np.full(len(rows), TASKS.index("text"), np.int64)
            vectors[rows] = self.head.text_query(tasks, states, mask)
        return Embeddings(vectors, self.model_id)

    def _text(self) -> TextStates:
        if self.head.text is None:
            raise ModelInputError(f"{self.model_id}: this export has no text encoder")
        return self.head.text


def _gpu_wanted(device: str) -> bool:
    """True for ``cuda[:N]``, and for ``auto`` where torch is installed and sees a GPU (torch
    is imported only where an NVIDIA driver is loaded)."""
    if device.startswith("cuda"):
        return True
    if device != "auto" or missing_modules("torch") or not any(
            p.exists() for p in NVIDIA_DRIVERS):
        return False
    import torch

    return bool(torch.cuda.is_available())


__all__ = ["BACKBONE_NODE", "DEFAULT_INSTRUCTIONS", "INPUT_HW", "TEACHER", "IrmConfig",
           "IrmCpuEmbedder", "OpenVinoBackbone", "OpenVinoHead", "ensure_export", "export_irm",
           "resolve_weights"]
