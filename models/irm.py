"""IRM-style instruction-editable person ReID (Instruct-ReID, Huang et al. 2024), small and ours.

One model, six query tasks (``refind.models.base.TASKS``): an instruction decides what "the same person"
means, while a gallery is encoded once, with no task.

    crop --OMZ 0277 (frozen)--> 32 patch tokens (512-d) + teacher embedding (256-d)
         --image encoder (2 blocks over [CLS_id, CLS_clo, teacher, patches])--> image tokens
    instruction: text --all-MiniLM-L6-v2 (frozen)--> (T, 384) states --> tokens;
                 a garment photo --image encoder--> 3 pooled tokens; plus a learned task token
    editing (2 blocks): [CLS_id, CLS_clo, instruction tokens] attend to themselves and to the
         image tokens; instruction tokens can change the CLS states (IRM's CLS exchange)
    id  = normalise(teacher + W_id . CLS_id)      (W_id starts at 0: the id part starts as 0277)
    clo = normalise(P . teacher + W_clo . CLS_clo) (P starts as the identity)
          instructed photo queries add query-only residuals Q_id . CLS_id, Q_clo . CLS_clo
    gallery vector = [id, clo] / sqrt 2            (default instruction, fixed; cached)
    query vector   = normalise([a . id, b . clo]), (a, b) = softmax(gate(instruction)),
                     except plain ReID: (0.5, 0.5) as in the gallery

so "ignore clothes" can learn b ~ 0 and "this garment" a ~ 0 on the query side only. A text-only
query has no image: the CLS states read the instruction tokens alone (no teacher residual).

Weights may carry an attribute probe of the gallery space (``refind.models.attribute_probe``, fitted by
``refind.training.probe``): a text that names attributes or clothing colours is then the probe's
query vector instead of the learned text path's, and attribute text on a photo query
(task attribute_text) is ``normalise(photo + lambda * that unit vector)``.

The pipeline runs it as ``refind.models.irm_embedder.IrmEmbedder`` (backbone, head and text encoder).

Example:
    >>> head = IrmHead(IrmConfig())                                                # doctest: +SKIP
    >>> g = head.gallery(patches, teacher).vectors  # (B, 32, 512), (B, 256) -> (B, 512)  # doctest: +SKIP
    >>> save_head(head, Path("irm.safetensors"))                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from refind.models.attribute_probe import IRM_FORMAT, AttributeProbe
from refind.models.attribute_probe import TENSOR_PREFIX as PROBE_PREFIX
from refind.models.base import TASKS, ModelInputError
from refind.models.irm_cpu import IrmConfig


class Block(nn.Module):
    """Pre-norm transformer block; ``x`` is updated, ``context`` only lends keys and values."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        _, n, d = x.shape  # (B, Nq, D)
        both = x if context is None else torch.cat([x, context], dim=1)  # (B, Nk, D)
        q, k, v = self.qkv(self.norm1(both)).chunk(3, dim=-1)  # 3 x (B, Nk, D)
        q = q[:, :n]  # only x is updated: context rows ask no questions
        split = lambda t: t.unflatten(-1, (self.heads, d // self.heads)).transpose(1, 2)  # noqa: E731
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, Nk) True = attend
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask)
        x = x + self.proj(out.transpose(1, 2).flatten(2))  # (B, Nq, D)
        return x + self.mlp(self.norm2(x))


@dataclass
class QueryOut:
    """Vectors of one head call: vectors (B, 2P) unit rows; cls (B, 2, D) final CLS states."""

    vectors: torch.Tensor
    id_part: torch.Tensor
    clo_part: torch.Tensor
    cls: torch.Tensor
    gate: torch.Tensor


class IrmHead(nn.Module):
    """The trainable part: image encoder, instruction tokens, editing blocks, output parts."""

    def __init__(self, cfg: IrmConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_in = nn.Sequential(nn.LayerNorm(cfg.token_dim), nn.Linear(cfg.token_dim, d))
        self.pos = nn.Parameter(torch.randn(1, cfg.n_patches, d) * 0.02)
        self.teacher_in = nn.Linear(cfg.teacher_dim, d)
        self.cls = nn.Parameter(torch.randn(1, 2, d) * 0.02)  # CLS_id, CLS_clo
        self.encoder = nn.ModuleList(
            Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.encoder_layers)
        )
        self.text_in = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, d))
        self.image_instruction_in = nn.Linear(d, d)
        self.task_token = nn.Embedding(len(TASKS), d)
        self.editor = nn.ModuleList(
            Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.editing_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.id_out = nn.Linear(d, cfg.part_dim, bias=False)
        self.clo_out = nn.Linear(d, cfg.part_dim, bias=False)
        self.clo_teacher = nn.Linear(cfg.teacher_dim, cfg.part_dim, bias=False)
        # Text-only queries have no teacher to start from: their own (non-zero) output layers.
        self.text_id_out = nn.Linear(d, cfg.part_dim)
        self.text_clo_out = nn.Linear(d, cfg.part_dim)
        # Instructed photo queries (every task but plain ReID) add their own residuals: they can
        # be trained with the gallery's output layers frozen (refind.training.irm stage 2).
        self.query_id_out = nn.Linear(d, cfg.part_dim, bias=False)
        self.query_clo_out = nn.Linear(d, cfg.part_dim, bias=False)
        self.gate = nn.Linear(d, 2)
        self.attributes = nn.Linear(d, cfg.n_attributes)  # attribute distillation from CLS_clo
        # The default ("reid") instruction's MiniLM states, so a gallery needs no text encoder.
        self.register_buffer("gallery_text", torch.zeros(1, 0, cfg.text_dim))
        self._init_residual()

    def _init_residual(self) -> None:
        """Start where the teacher is: id = teacher, clo = teacher, gate = (0.5, 0.5)."""
        for layer in (self.id_out, self.clo_out, self.query_id_out, self.query_clo_out):
            nn.init.zeros_(layer.weight)
        nn.init.eye_(self.clo_teacher.weight)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def image_path_is_teacher(self) -> bool:
        """True while every image output residual is zero: then every photo vector, gallery or
        query with any instruction, is built from the 0277 embedding alone (both parts), and
        instructions cannot change how a photo query ranks."""
        residuals = (self.id_out, self.clo_out, self.query_id_out, self.query_clo_out)
        return not any(m.weight.any() for m in residuals) and bool(
            torch.equal(self.clo_teacher.weight, torch.eye(*self.clo_teacher.weight.shape))
        )

    def set_gallery_text(self, states: torch.Tensor) -> None:
        """Fix the gallery instruction: (T, text_dim) MiniLM states of DEFAULT_INSTRUCTIONS['reid']."""
        self.gallery_text = states.detach().reshape(1, -1, self.cfg.text_dim).to(self.cls)

    def encode_image(self, patches: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """(B, N, token_dim) patches + (B, teacher_dim) teacher -> (B, 3 + N, D) image tokens."""
        b = patches.shape[0]
        p = self.patch_in(patches) + self.pos  # (B, N, D)
        t = self.teacher_in(F.normalize(teacher, dim=-1))[:, None]  # (B, 1, D)
        x = torch.cat([self.cls.expand(b, -1, -1), t, p], dim=1)  # (B, 3 + N, D)
        for block in self.encoder:
            x = block(x)
        return x

    def instruction(
        self,
        task_ids: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Instruction tokens (B, Ti, D) and their mask (B, Ti), True = real token.

        task_ids: (B,) long; text: (B, T, text_dim) MiniLM states, text_mask (B, T) bool;
        image_tokens: (B, 3 + N, D) encoder output of an instruction image (a garment photo).
        """
        parts = [self.task_token(task_ids)[:, None]]  # (B, 1, D)
        masks = [torch.ones(task_ids.shape[0], 1, dtype=torch.bool, device=task_ids.device)]
        if text is not None and text.shape[1] > 0:
            parts.append(self.text_in(text))  # (B, T, D)
            masks.append(
                text_mask
                if text_mask is not None
                else torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
            )
        if image_tokens is not None:
            pooled = torch.cat(
                [image_tokens[:, :2], image_tokens[:, 3:].mean(1, keepdim=True)], dim=1
            )  # (B, 3, D): its CLS states and its mean patch
            parts.append(self.image_instruction_in(pooled))
            masks.append(torch.ones(pooled.shape[:2], dtype=torch.bool, device=pooled.device))
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)

    def edit(
        self, image: torch.Tensor | None, instr: torch.Tensor, instr_mask: torch.Tensor
    ) -> torch.Tensor:
        """Final CLS states (B, 2, D) after the instruction tokens edited the image's."""
        b = instr.shape[0]
        cls = self.cls.expand(b, -1, -1) if image is None else image[:, :2]  # (B, 2, D)
        x = torch.cat([cls, instr], dim=1)  # (B, 2 + Ti, D)
        context = None if image is None else image[:, 2:]  # (B, 1 + N, D) teacher + patches
        ones = torch.ones(b, 2, dtype=torch.bool, device=instr.device)
        keys = [ones, instr_mask]
        if context is not None:
            keys.append(torch.ones(context.shape[:2], dtype=torch.bool, device=instr.device))
        mask = torch.cat(keys, dim=1)  # (B, Nk)
        for block in self.editor:
            x = block(x, context, mask)
        return self.norm(x[:, :2])

    def parts(
        self,
        cls: torch.Tensor,
        teacher: torch.Tensor | None,
        instructed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit id and clothes parts (B, P) each, from CLS states (B, 2, D).

        instructed: (B,) bool, rows that are instructed photo queries (their own residuals)."""
        if teacher is None:  # text only
            return (
                F.normalize(self.text_id_out(cls[:, 0]), dim=-1),
                F.normalize(self.text_clo_out(cls[:, 1]), dim=-1),
            )
        t = F.normalize(teacher, dim=-1)  # (B, teacher_dim)
        id_raw = self.id_out(cls[:, 0]) + t  # (B, P) residual on the teacher
        clo_raw = self.clo_out(cls[:, 1]) + self.clo_teacher(t)
        if instructed is not None:
            on = instructed[:, None].to(id_raw.dtype)  # (B, 1)
            id_raw = id_raw + on * self.query_id_out(cls[:, 0])
            clo_raw = clo_raw + on * self.query_clo_out(cls[:, 1])
        return F.normalize(id_raw, dim=-1), F.normalize(clo_raw, dim=-1)

    def gallery(self, patches: torch.Tensor, teacher: torch.Tensor) -> QueryOut:
        """Gallery vectors (B, 2P) = [id, clo] / sqrt 2 under the fixed default instruction."""
        b = patches.shape[0]
        image = self.encode_image(patches, teacher)
        text = self.gallery_text.expand(b, -1, -1)
        task = torch.zeros(b, dtype=torch.long, device=patches.device)  # TASKS[0] == "reid"
        instr, mask = self.instruction(task, text)
        cls = self.edit(image, instr, mask)
        id_part, clo_part = self.parts(cls, teacher)
        half = torch.full((b, 2), 0.5, device=patches.device)
        vectors = torch.cat([id_part, clo_part], dim=-1) / math.sqrt(2.0)  # (B, 2P)
        return QueryOut(vectors, id_part, clo_part, cls, half)

    def query(
        self,
        patches: torch.Tensor | None,
        teacher: torch.Tensor | None,
        task_ids: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        instruction_image: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> QueryOut:
        """Query vectors (B, 2P); ``patches is None`` for text-only queries.

        instruction_image: (patches (B, N, token_dim), teacher (B, teacher_dim)) of a garment photo.
        """
        image = None if patches is None else self.encode_image(patches, teacher)
        image_instr = None if instruction_image is None else self.encode_image(*instruction_image)
        instr, mask = self.instruction(task_ids, text, text_mask, image_instr)
        cls = self.edit(image, instr, mask)
        plain = task_ids == TASKS.index("reid")  # (B,)
        id_part, clo_part = self.parts(cls, None if patches is None else teacher, ~plain)
        pooled = (instr * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D)
        gate = self.gate(pooled).softmax(-1)  # (B, 2): weights of the id and clothes parts
        # plain ReID weighs the parts as the gallery does: a photo query is its gallery vector
        gate = torch.where(plain[:, None], 0.5, gate)
        vectors = F.normalize(
            torch.cat([gate[:, :1] * id_part, gate[:, 1:] * clo_part], dim=-1), dim=-1
        )
        return QueryOut(vectors, id_part, clo_part, cls, gate)


# ---- weights ----


def check_probe(probe: AttributeProbe | None, head: IrmHead, where: str = "") -> None:
    """ModelInputError unless ``probe`` (if any) reads the vectors ``head`` gives."""
    if probe is not None and probe.dim != head.cfg.out_dim:
        raise ModelInputError(
            f"{where}attribute probe reads {probe.dim}-d vectors; this head gives "
            f"{head.cfg.out_dim}-d"
        )


def save_head(
    head: IrmHead,
    path: Path,
    metadata: dict[str, str] | None = None,
    probe: AttributeProbe | None = None,
) -> None:
    """Write the head as safetensors, its IrmConfig (JSON) and ``metadata`` in the header; with
    ``probe``, the attribute probe of its gallery space (the text path, refind.models.attribute_probe)."""
    from safetensors.torch import save_file

    check_probe(probe, head)
    meta = {"format": IRM_FORMAT, "irm_config": json.dumps(asdict(head.cfg)), **(metadata or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    if probe is not None:
        tensors |= {k: torch.from_numpy(v) for k, v in probe.to_arrays().items()}
        meta["attribute_probe_names"] = json.dumps(list(probe.names))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_head(path: Path) -> tuple[IrmHead, dict[str, str]]:
    """Read a head written by ``save_head``; raises ModelInputError for another format."""
    head, _, meta = load_weights(path)
    return head, meta


def load_weights(path: Path) -> tuple[IrmHead, AttributeProbe | None, dict[str, str]]:
    """The head, the attribute probe (None when the file has none) and the header metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != IRM_FORMAT:
        raise ModelInputError(f"{path} is not a refind IRM head (format {meta.get('format')!r})")
    head = IrmHead(IrmConfig(**json.loads(meta["irm_config"])))
    state = load_file(str(path))
    try:
        names = json.loads(meta.get("attribute_probe_names", "null"))
        probe = AttributeProbe.from_arrays(
            {k: v.numpy() for k, v in state.items() if k.startswith(PROBE_PREFIX)}, names)
    except (KeyError, ValueError) as err:
        raise ModelInputError(f"{path}: unreadable attribute probe ({err})") from None
    state = {k: v for k, v in state.items() if not k.startswith(PROBE_PREFIX)}
    head.gallery_text = state["gallery_text"]  # its length is set by the file
    head.load_state_dict(state)
    check_probe(probe, head, f"{path}: ")
    return head.eval(), probe, meta


# ---- device ----


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when present, else cpu; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelInputError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return torch.device(device)
