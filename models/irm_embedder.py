"""The IRM embedder the pipeline runs (``embedder: {type: irm}``): the frozen backbone (OMZ 0277,
OpenVINO on CPU, torch on a GPU), the head of models/irm.py (its gallery path compiled by
OpenVINO on CPU), and the text encoder, behind the InstructableEmbedder protocol.

Example:
    >>> path = store.resolve("irm-pets-v3").path                                  # doctest: +SKIP
    >>> emb = IrmEmbedder.from_pretrained(path, store)                            # doctest: +SKIP
    >>> emb.embed_query([crop], task="clothes_change").vectors.shape               # doctest: +SKIP
    (1, 512)
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from refind.models.attribute_probe import AttributeProbe
from refind.models.base import INT8_SUFFIX, TASKS, ModelInputError, crops_to_batch
from refind.models.irm import IrmHead, check_probe, load_weights, resolve_device
from refind.models.irm_cpu import (
    BACKBONE_NODE,
    INPUT_HW,
    TEACHER,
    Backbone,
    OpenVinoBackbone,
    UneditedWarning,
    probe_edit,
    probe_texts,
    read_instruction,
    resolve_weights,
)
from refind.models.irm_export import GalleryGraph
from refind.models.minilm import MiniLmTokens, pad_states
from refind.streaming.records import Embeddings

if TYPE_CHECKING:  # pydantic is not needed to run the model (a GPU box may lack it)
    from refind.models.config import IrmEmbedderConfig

log = logging.getLogger(__name__)


# ---- frozen parts: backbone (OMZ 0277) and text encoder (all-MiniLM-L6-v2) ----


class TorchBackbone:
    """OMZ 0277 converted to torch (refind.models.ov_torch), for GPUs; same outputs as OpenVinoBackbone."""

    def __init__(self, xml_path: Path, model_id: str, device: torch.device,
                 resize_threads: int = 0) -> None:
        from refind.models import ov_torch  # written beside this model; imported only when chosen

        self.model_id = model_id
        self.device = device
        self.resize_threads = resize_threads
        net = ov_torch.from_openvino(xml_path, outputs=(BACKBONE_NODE, "reid_embedding"))
        self._net = net.to(device).eval()
        self._half = device.type == "cuda"
        if self._half:
            self._net = self._net.half()

    @torch.no_grad()
    def __call__(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(crops_to_batch(crops, INPUT_HW, "IRM crop",
                                            resize_threads=self.resize_threads)).to(self.device)
        out = self._net(x.half() if self._half else x)
        fmap, emb = out[BACKBONE_NODE], out["reid_embedding"]  # (B, 512, 16, 8), (B, 256)
        tokens = F.avg_pool2d(fmap.float(), 2).flatten(2).transpose(1, 2)  # (B, 32, 512)
        return tokens.cpu().numpy(), emb.float().cpu().numpy()


def build_backbone(store: object, name: str, device: torch.device, threads: int = 0,
                   resize_threads: int = 0) -> Backbone:
    """The frozen backbone for ``device``: OpenVINO on CPU, torch (refind.models.ov_torch) on a GPU."""
    resolved = store.resolve(name)  # type: ignore[attr-defined]
    if device.type == "cpu":
        return OpenVinoBackbone(resolved.path, resolved.model_id, threads, resize_threads)
    return TorchBackbone(resolved.path, resolved.model_id, device, resize_threads)


# ---- the embedder the pipeline uses ----


class OpenVinoGallery:
    """The head's gallery path converted to OpenVINO (dynamic batch), for CPU inference."""

    def __init__(self, head: IrmHead, threads: int = 0) -> None:
        import openvino as ov

        from refind.models.openvino_util import CpuRunner

        cfg = head.cfg
        example = (torch.zeros(2, cfg.n_patches, cfg.token_dim), torch.zeros(2, cfg.teacher_dim))
        shapes = [
            ov.PartialShape([-1, cfg.n_patches, cfg.token_dim]),
            ov.PartialShape([-1, cfg.teacher_dim]),
        ]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed per call
            warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO traces with torch.jit
            model = ov.convert_model(
                GalleryGraph(head.cpu().eval()), example_input=example, input=shapes
            )
        self._run_model = CpuRunner(ov.Core(), model, threads, INFERENCE_PRECISION_HINT="f32")

    def __call__(self, patches: np.ndarray, teacher: np.ndarray) -> np.ndarray:
        (out,) = self._run_model([patches, teacher])
        return np.asarray(out, np.float32)  # (B, 2P)


def compile_gallery(head: IrmHead) -> OpenVinoGallery | None:
    """OpenVINO gallery path, or None (eager torch) when OpenVINO cannot convert the head."""
    try:
        return OpenVinoGallery(head)
    except Exception as err:  # conversion is an optimisation: fall back, loudly
        log.warning("IRM gallery head stays in torch (OpenVINO conversion failed: %s)", err)
        return None


class IrmEmbedder:
    """An InstructableEmbedder: gallery crops with ``__call__``, queries with a task/instruction.

    Example:
        >>> emb = IrmEmbedder.from_pretrained(path, store)                        # doctest: +SKIP
        >>> g = emb(gallery_crops)                                                # doctest: +SKIP
        >>> q = emb.embed_query([photo], "attribute_text", "now wearing a red top")  # doctest: +SKIP
        >>> scores = q.vectors @ g.vectors.T                                      # doctest: +SKIP
    """

    def __init__(
        self,
        head: IrmHead,
        backbone: Backbone,
        model_id: str,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        text: MiniLmTokens | None = None,
        compile_cpu: bool = True,
        probe: AttributeProbe | None = None,
    ) -> None:
        self.device = torch.device(device)
        check_probe(probe, head)
        self.probe = probe  # text queries that name attributes or colours go through it
        self.head = head.to(self.device).eval()
        self.backbone = backbone
        self.model_id = model_id
        self.dim = head.cfg.out_dim
        self.batch_size = batch_size
        self._text = text
        # With a teacher-only image path the gallery vector is the normalised 0277 embedding,
        # twice, / sqrt 2 (see IrmHead.parts): computed directly, the head is not run.
        self.teacher_shortcut = head.image_path_is_teacher()
        self._warn_unedited = UneditedWarning(self.model_id, self.teacher_shortcut, log)
        self._compile_cpu = compile_cpu and self.device.type == "cpu"

    @functools.cached_property
    def _ov_gallery(self) -> OpenVinoGallery | None:
        """On CPU the gallery head runs compiled by OpenVINO (~4x faster than eager torch here);
        compiled on first use, since with the teacher shortcut it is never needed."""
        return compile_gallery(self.head) if self._compile_cpu else None

    @classmethod
    def from_pretrained(
        cls,
        weights: Path,
        store: object,
        backbone: str | None = None,
        device: str = "auto",
        batch_size: int = 32,
        threads: int = 0,
        model_id: str | None = None,
        resize_threads: int = 0,
    ) -> IrmEmbedder:
        """Load a head written by ``save_head`` and the backbone it was trained on."""
        head, probe, meta = load_weights(Path(weights))
        trained_on = meta.get("backbone", TEACHER)
        backbone = backbone or trained_on
        if backbone.removesuffix(INT8_SUFFIX) != trained_on:  # an INT8 copy is the same network
            raise ModelInputError(
                f"IRM weights {weights} were trained on backbone {trained_on!r}, not {backbone!r}"
            )
        dev = resolve_device(device)
        if backbone != trained_on and dev.type != "cpu":
            raise ModelInputError(f"backbone {backbone!r} is an OpenVINO CPU network; use cpu")
        net = build_backbone(store, backbone, dev, threads, resize_threads)
        model_id = model_id or f"irm:{Path(weights).stem}"
        if backbone != trained_on:  # its vectors differ a little: never mixed with the float's
            model_id = f"{model_id}+{net.model_id}"
        return cls(head, net, model_id, dev, batch_size, probe=probe)

    @classmethod
    def from_config(cls, cfg: IrmEmbedderConfig, store: object) -> IrmEmbedder:
        """The embedder of an ``embedder: {type: irm}`` config section."""
        path, model_id = resolve_weights(cfg.weights, store)
        return cls.from_pretrained(
            path, store, cfg.backbone, cfg.device, cfg.batch_size, cfg.threads, model_id,
            cfg.resize_threads,
        )

    @property
    def text(self) -> MiniLmTokens:
        if self._text is None:
            self._text = MiniLmTokens(self.head.cfg.max_text_tokens, self.device)
        return self._text

    def _features(self, crops: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        patches, teacher = self.backbone(crops)  # (B, N, 512), (B, 256)
        return torch.from_numpy(patches).to(self.device), torch.from_numpy(teacher).to(self.device)

    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, min(n, i + self.batch_size)) for i in range(0, n, self.batch_size)]

    def _result(self, parts: list[torch.Tensor]) -> Embeddings:
        if not parts:
            return Embeddings(np.zeros((0, self.dim), np.float32), self.model_id)
        vectors = torch.cat(parts).float().cpu().numpy()
        return Embeddings(np.ascontiguousarray(vectors, dtype=np.float32), self.model_id)

    @torch.inference_mode()
    def __call__(self, crops: Sequence[np.ndarray]) -> Embeddings:
        """Gallery vectors (n, 512): the default instruction, no task."""
        out = []
        for s in self._chunks(len(crops)):
            if self.teacher_shortcut:  # the head would return [n(t), n(t)] / sqrt 2: skip it
                t = F.normalize(self._features(crops[s])[1].float(), dim=-1)  # (b, 256)
                out.append(torch.cat([t, t], dim=-1) / math.sqrt(2.0))
            elif self._ov_gallery is not None:
                patches, teacher = self.backbone(crops[s])
                out.append(torch.from_numpy(self._ov_gallery(patches, teacher)))
            else:
                with torch.autocast("cuda", torch.float16, enabled=self.device.type == "cuda"):
                    out.append(self.head.gallery(*self._features(crops[s])).vectors.float())
        return self._result(out)

    @torch.inference_mode()
    def embed_query(
        self,
        crops: Sequence[np.ndarray],
        task: str = "reid",
        instruction: str | np.ndarray | None = None,
    ) -> Embeddings:
        """(n,) query crops for ``task``, with one instruction for all of them.

        instruction: text (None = the task's default phrasing), or a BGR garment photo (task
        "clothes_template": people like the crop, wearing this). For "clothes_template" without
        an image, the crops themselves are garment photos. Task "text" takes no crops.
        """
        text, photo = read_instruction(task, instruction, len(crops))
        if task == "text":
            return self.embed_text([text])
        image_instr = None if photo is None else self._features([photo])
        probe = self.probe  # read once: compose with the probe the edit was decided with
        text_vector = probe_edit(probe, task, text)  # (D,) or None: not edited by the probe
        self._warn_unedited(task, edited=text_vector is not None)
        states, mask = pad_states(self.text([text]), self.head.cfg.text_dim)  # (1, T, 384)
        out = []
        for s in self._chunks(len(crops)):
            patches, teacher = self._features(crops[s])
            b = patches.shape[0]
            task_ids = torch.full((b,), TASKS.index(task), dtype=torch.long, device=self.device)
            img = (
                None
                if image_instr is None
                else tuple(t.expand(b, *t.shape[1:]) for t in image_instr)
            )
            q = self.head.query(
                patches, teacher, task_ids,
                states.to(self.device).expand(b, -1, -1), mask.to(self.device).expand(b, -1), img,
            )  # fmt: skip
            out.append(q.vectors)
        result = self._result(out)  # (n, D)
        if text_vector is not None and len(result.vectors):
            # identity from the photo, clothes from the text (refind.models.attribute_probe)
            edited = probe.compose(result.vectors, text_vector)  # type: ignore[union-attr]
            result = Embeddings(edited, self.model_id)  # type: ignore[arg-type]
        return result

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> Embeddings:
        """Text-only queries (task "text") into the gallery space, (n, 512).

        A text that names attributes or clothing colours the attribute probe reads becomes the
        probe's query vector (``refind.models.attribute_probe``); any other text (or every text, when
        the weights carry no probe) goes through the head's learned text path."""
        vectors, learned = probe_texts(self.probe, texts, self.dim)
        for s in self._chunks(len(learned)):
            rows = learned[s]
            states, mask = pad_states(self.text([texts[k] for k in rows]), self.head.cfg.text_dim)
            task_ids = torch.full(
                (len(rows),), TASKS.index("text"), dtype=torch.long, device=self.device
            )
            q = self.head.query(None, None, task_ids, states.to(self.device), mask.to(self.device))
            vectors[rows] = q.vectors.float().cpu().numpy()
        return Embeddings(vectors, self.model_id)
