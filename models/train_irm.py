"""Train the IRM head (models/irm.py) on PETS09-S2L1 training identities and tracker tracklets.

One command (``refind train irm --out DIR``):

1. **Cache** (once, CPU, OpenVINO): every training crop -- the PETS ground-truth crops of the
   training identities (``models.irm_data.pets_identity_split``) and the tracks of refind's own
   tracker on the Intel clip as weak identities -- is rendered in ``VIEWS`` (original, flip, two
   clothes recolourings, a texture swap, greyscale, thermal, the upper-body garment) and run once
   through the frozen backbone (32 patch tokens + the 0277 teacher embedding per view); the 0230
   attribute model describes the original; captions and instructions are written
   (``models.irm_data``) and encoded once by all-MiniLM-L6-v2. The held-out (test) identities
   are not in it (caches built before this also held their original crops, never read). The
   cache is one ``.npz`` that a machine without OpenVINO (a GPU box) can train from
   (``--cache PATH``).
2. **Cross-validation** (CPU or GPU) over the PETS training identities (``cv_folds``), per fold:
   (a) the whole head (``train_head``): PK batches (identities x crops); each crop gets a task
   and becomes a query (its task's view + instruction); galleries are the original (or flipped)
   crops plus recoloured ones, encoded without a task. Losses: multi-positive InfoNCE and IRM's
   adaptive (soft-weighted) triplet over query x gallery with per-task positives; identity
   cross-entropy (cosine classifier, label smoothing); distillation of both parts to the
   teacher (cosine and batch relations); a crop-vs-its-recolouring invariance term
   (``part_masks``); attribute distillation from CLS_clo. Validated on plain-ReID mAP against
   the teacher: this chooses the image step count (``choose_steps``).
   (b) from that head, the instruction pathway alone (``instruction_parameters``: nothing the
   gallery or a plain query depends on), validated on instructed-task mAP.
   (c) the text path alone (``train_text``, ``text_parameters``), validated on text mAP.
3. **Final**: the same three trainings on every training identity, stopped at the chosen step
   counts; the head and instruction weights are their moving average (``Ema``), the text path
   is trained in place (``train_text``). The held-out PETS identities are the
   test split: no step of training or selection reads them.

Positives per task (same crop's original never counts; "recoloured" = another outfit):
reid: same identity, original clothes; clothes_change: same identity, any clothes;
clothes_template, attribute_text: same identity, original clothes (recoloured = negative);
visible_infrared and text: same identity, original clothes (recoloured = ignored).

Example:
    >>> report = train(TrainOptions(out=Path("runs/irm")), store)      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.base import TASKS
from models.irm import (
    DEFAULT_INSTRUCTIONS,
    INPUT_HW,
    TEACHER,
    IrmConfig,
    IrmHead,
    QueryOut,
    resolve_device,
    save_head,
)
from models.minilm import pad_states

log = logging.getLogger(__name__)

VIEWS: tuple[str, ...] = (
    "orig", "flip", "recolour_a", "recolour_b", "texture", "grey", "thermal", "upper",
)  # fmt: skip
V = {name: k for k, name in enumerate(VIEWS)}
CACHE_VERSION = 1
BACKBONE = TEACHER  # the frozen backbone trained on

# How often each task is drawn for a query (text-only queries are cheap; reid matters most).
TASK_WEIGHTS: dict[str, float] = {
    "reid": 0.25, "clothes_change": 0.15, "clothes_template": 0.15,
    "attribute_text": 0.15, "visible_infrared": 0.15, "text": 0.15,
}  # fmt: skip


@dataclass(frozen=True)
class TrainOptions:
    """One training run; every field has a default that fits ~30 min on 2 CPU cores."""

    out: Path
    cache: Path | None = None  # default: <out>/cache.npz (built when missing)
    device: str = "auto"
    # Time budget: each full-schedule training (per fold: image, instructions, text; and the
    # final run's) gets minutes / (2 * folds + 2); retraining a fold to its chosen step count
    # comes on top, so a run can exceed ``minutes`` (the cache is extra too).
    minutes: float = 24.0
    max_steps: int = 800
    seed: int = 0
    ids_per_batch: int = 16
    crops_per_id: int = 4
    lr: float = 1.5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    temperature: float = 0.05
    retrieval_weight: float = 1.0  # IRM's task-query InfoNCE + adaptive triplet
    distill_weight: float = 1.0
    id_weight: float = 0.25
    attr_weight: float = 0.1
    part_weight: float = 0.5  # id / clothes disentangling (part_masks)
    relation_weight: float = 1.0  # relational distillation of the id part (relation_distill)
    clothes_distill_weight: float = 1.0  # distillation of the clothes part
    clothes_part_weight: float = 0.0  # the outfit term of part_masks (0: the id term only)
    ema_decay: float = 0.98  # validation and the saved weights use the weights' moving average
    cv_folds: int = 2  # the step count is chosen by cross-validation over PETS training ids
    instruction_steps: int = 400  # then the instruction pathway alone (instruction_parameters)
    instruction_lr: float = 1e-3
    eval_every: int = 50
    text_steps: int = 400  # stage 3: text-to-image (train_text)
    text_lr: float = 3e-4
    pets_every_n_frames: int = 2
    intel_every_n_frames: int = 2
    threads: int = 2
    progress: bool = True
    config: IrmConfig = field(default_factory=IrmConfig)


# ---------------------------------------------------------------------------------------------
# Stage 1: the cache


def render_views(image: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The ``VIEWS`` of one crop, in order; ``rng`` drives the random augmentations."""
    from models import irm_data as d

    h, w = image.shape[:2]
    if h > INPUT_HW[0]:  # the backbone sees 256 rows anyway; big crops only slow the augmentations
        size = (max(2, round(w * INPUT_HW[0] / h)), INPUT_HW[0])
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return [
        image,
        np.ascontiguousarray(cv2.flip(image, 1)),
        d.recolour_clothes(image, rng),
        d.recolour_clothes(image, rng),
        d.texture_swap(image, rng),
        d.to_greyscale(image, rng),
        d.to_thermal(image, rng),
        d.upper_body(image),
    ]


def _texts_for(attrs, agg, agg_row: list[int], rng: np.random.Generator) -> tuple[list, list]:
    """Per crop: 3 captions (2 from its identity's attributes, 1 from its own) and 2
    attribute_text instructions (its identity's clothes)."""
    from models import irm_data as d

    captions, attr_texts = [], []
    for i, row in enumerate(agg_row):
        captions.append(
            [d.describe(agg, row, rng), d.describe(agg, row, rng), d.describe(attrs, i, rng)]
        )
        attr_texts.append([d.instruction_for("attribute_text", rng, agg, row) for _ in range(2)])
    return captions, attr_texts


def build_cache(path: Path, store: object, opts: TrainOptions) -> Path:
    """Write the training cache (see the module docstring) to ``path``; returns it."""
    from models import irm_data as d
    from models.attributes import OpenVinoAttributes
    from models.irm import OpenVinoBackbone
    from models.minilm import MiniLmTokens

    t0 = time.perf_counter()
    train_ids, _ = d.pets_identity_split()  # the held-out ids are never read here
    crops = d.load_pets_crops(train_ids, every_n_frames=opts.pets_every_n_frames)
    crops += d.load_tracklet_crops(d.INTEL_VIDEO, store, every_n_frames=opts.intel_every_n_frames)  # type: ignore[arg-type]
    log.info("irm cache: %d training crops", len(crops))
    resolved = store.resolve(BACKBONE)  # type: ignore[attr-defined]
    backbone = OpenVinoBackbone(resolved.path, resolved.model_id, opts.threads)
    n, nv = len(crops), len(VIEWS)
    patches = np.zeros((n, nv, opts.config.n_patches, opts.config.token_dim), np.float16)
    teacher = np.zeros((n, nv, opts.config.teacher_dim), np.float32)
    bar = tqdm(total=n, desc="irm cache", unit="crop", disable=not opts.progress)
    for start in range(0, n, 8):
        chunk = crops[start : start + 8]
        views = [
            v
            for k, c in enumerate(chunk)
            for v in render_views(c.image, np.random.default_rng([opts.seed, start + k]))
        ]
        p, t = backbone(views)  # (8 * V, N, 512), (8 * V, 256)
        patches[start : start + len(chunk)] = p.reshape(len(chunk), nv, *p.shape[1:])
        teacher[start : start + len(chunk)] = t.reshape(len(chunk), nv, -1)
        bar.update(len(chunk))
    bar.close()
    attrs = OpenVinoAttributes(store)([c.image for c in crops])  # type: ignore[arg-type]
    labels = [c.identity for c in crops]
    keys, agg = d.aggregate_attributes(attrs, labels)
    agg_row = [keys.index(lab) for lab in labels]
    rng = np.random.default_rng([opts.seed, 1])
    captions, attr_texts = _texts_for(attrs, agg, agg_row, rng)
    fixed = {
        t: sorted({d.instruction_for(t, rng) for _ in range(40)} | {DEFAULT_INSTRUCTIONS[t]})
        for t in ("reid", "clothes_change", "clothes_template", "visible_infrared")
    }
    texts = sorted(
        {s for row in captions + attr_texts for s in row} | {s for v in fixed.values() for s in v}
    )
    index = {s: k for k, s in enumerate(texts)}
    states = MiniLmTokens(opts.config.max_text_tokens)(texts)
    offsets = np.cumsum([0] + [len(s) for s in states])
    identities = sorted(set(labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.npz")
    np.savez(
        tmp,
        version=np.int64(CACHE_VERSION),
        patches=patches,
        teacher=teacher,
        probs=attrs.probs.astype(np.float32),
        label=np.asarray([identities.index(lab) for lab in labels], np.int64),
        identities=np.asarray(identities),
        frame=np.asarray([c.frame_index for c in crops], np.int64),
        texts=np.asarray(texts),
        text_states=np.concatenate(states).astype(np.float16),
        text_offsets=offsets.astype(np.int64),
        captions=np.asarray([[index[s] for s in row] for row in captions], np.int64),
        attr_texts=np.asarray([[index[s] for s in row] for row in attr_texts], np.int64),
        fixed=np.asarray(json.dumps({t: [index[s] for s in v] for t, v in fixed.items()})),
        gallery_text=np.asarray(index[DEFAULT_INSTRUCTIONS["reid"]], np.int64),
    )
    tmp.replace(path)
    log.info("irm cache written to %s in %.0f s", path, time.perf_counter() - t0)
    return path


@dataclass
class Cache:
    """The cache as tensors on the training device (patches stay float16 until used)."""

    patches: torch.Tensor  # (n, V, N, 512) f16
    teacher: torch.Tensor  # (n, V, 256)
    probs: torch.Tensor  # (n, 8)
    label: np.ndarray  # (n,) identity index
    identities: list[str]
    val_patches: torch.Tensor  # (m, V, N, 512) f16: every view of the validation crops
    val_teacher: torch.Tensor  # (m, V, 256)
    val_label: np.ndarray
    val_frame: np.ndarray
    text_states: list[torch.Tensor]  # per text (T, 384)
    texts: list[str]
    captions: np.ndarray  # (n, 3) text index
    val_captions: np.ndarray  # (m, 3) captions of the validation crops
    attr_texts: np.ndarray  # (n, 2)
    fixed: dict[str, list[int]]
    gallery_text: int

    def instruction_states(self, task: str) -> torch.Tensor:
        """MiniLM states (T, 384) of the task's default instruction (else its first phrasing)."""
        text = DEFAULT_INSTRUCTIONS[task]
        k = self.texts.index(text) if text in self.texts else self.fixed[task][0]
        return self.text_states[k]

    @classmethod
    def load(cls, path: Path, device: torch.device, val_names: Sequence[str] = ()) -> Cache:
        """Load the cache; ``val_names`` (PETS *training* identities, a fold of ``cv_folds``)
        are taken out of training and validated on. The held-out PETS identities are the test
        split: training never reads them (``refind eval irm`` reports on them)."""
        z = np.load(path, allow_pickle=False)
        if int(z["version"]) != CACHE_VERSION:
            raise ValueError(
                f"{path} is an IRM cache of version {int(z['version'])}, not {CACHE_VERSION}"
            )
        off = z["text_offsets"]
        states = torch.from_numpy(z["text_states"].astype(np.float32))
        identities = [str(s) for s in z["identities"]]
        label, frame = z["label"], z["frame"]
        unknown = set(val_names) - set(identities)
        if unknown:
            raise ValueError(f"validation identities not in {path}: {sorted(unknown)}")
        held = np.isin(np.asarray(identities)[label], list(val_names))
        keep = ~held
        patches = torch.from_numpy(z["patches"])
        teacher = torch.from_numpy(z["teacher"])
        return cls(
            patches=patches[keep].to(device),
            teacher=teacher[keep].to(device),
            probs=torch.from_numpy(z["probs"][keep]).to(device),
            label=label[keep],
            identities=identities,
            val_patches=patches[held].to(device),
            val_teacher=teacher[held].to(device),
            val_label=np.asarray([identities[i] for i in label[held]]),
            val_frame=frame[held],
            text_states=[states[off[k] : off[k + 1]] for k in range(len(off) - 1)],
            texts=[str(s) for s in z["texts"]],
            captions=z["captions"][keep],
            val_captions=z["captions"][held],
            attr_texts=z["attr_texts"][keep],
            fixed={k: list(v) for k, v in json.loads(str(z["fixed"])).items()},
            gallery_text=int(z["gallery_text"]),
        )


def cv_folds(identities: list[str], label: np.ndarray, k: int) -> list[list[str]]:
    """The PETS training identities dealt into ``k`` folds (most crops first, ties by name), so
    the folds hold about as many crops each. Tracklet identities (other clips) always train.

    Cross-validation over these chooses the step count, so no choice of the run ever looks at
    the held-out PETS identities the reported figures come from.
    """
    if k <= 1:
        return []
    counts = np.bincount(label, minlength=len(identities))
    pets = [i for i, name in enumerate(identities) if name.startswith("pets:") and counts[i]]
    pets.sort(key=lambda i: (-counts[i], identities[i]))
    return [[identities[i] for i in pets[f::k]] for f in range(k) if pets[f::k]]


# ---------------------------------------------------------------------------------------------
# Stage 2: the head


@dataclass
class Batch:
    """One PK batch: gallery entries (G,) and queries (B,), as cache indices and labels."""

    g_crop: np.ndarray  # (G,) crop index
    g_view: np.ndarray  # (G,) view index
    g_recoloured: np.ndarray  # (G,) bool: another outfit than the original
    q_crop: np.ndarray  # (B,)
    q_task: list[str]  # (B,)
    q_view: np.ndarray  # (B,) view index, -1 for text-only
    q_text: np.ndarray  # (B,) text index
    q_image_instruction: np.ndarray  # (B,) bool: the garment view is also the instruction


def sample_batch(cache: Cache, rng: np.random.Generator, opts: TrainOptions) -> Batch:
    """PK sampling, a task per query, the views and instructions of that task."""
    ids = np.unique(cache.label)
    chosen = rng.choice(ids, size=min(opts.ids_per_batch, len(ids)), replace=False)
    crops = []
    for i in chosen:
        pool = np.flatnonzero(cache.label == i)
        crops.append(rng.choice(pool, opts.crops_per_id, replace=len(pool) < opts.crops_per_id))
    q_crop = np.concatenate(crops)
    b = len(q_crop)
    half = rng.choice(b, b // 2, replace=False)
    g_crop = np.concatenate([q_crop, q_crop[half]])
    g_view = np.concatenate(
        [rng.choice([V["orig"], V["flip"]], b), np.full(len(half), V["recolour_b"])]
    )
    g_recoloured = np.arange(len(g_crop)) >= b
    names, weights = list(TASK_WEIGHTS), np.asarray(list(TASK_WEIGHTS.values()))
    q_task = [names[k] for k in rng.choice(len(names), b, p=weights / weights.sum())]
    q_view = np.full(b, -1)
    q_text = np.zeros(b, np.int64)
    q_img = np.zeros(b, bool)
    for k, (task, c) in enumerate(zip(q_task, q_crop, strict=True)):
        if task == "text":
            q_text[k] = rng.choice(cache.captions[c])
            continue
        q_view[k] = V[
            {
                "reid": rng.choice(["orig", "flip"]),
                "clothes_change": rng.choice(["recolour_a", "texture"]),
                "clothes_template": "upper",
                "attribute_text": rng.choice(["recolour_a", "texture"]),
                "visible_infrared": rng.choice(["grey", "thermal"]),
            }[task]
        ]
        pool = cache.attr_texts[c] if task == "attribute_text" else cache.fixed[task]
        q_text[k] = rng.choice(pool)
        q_img[k] = task == "clothes_template" and rng.random() < 0.5
    return Batch(g_crop, g_view, g_recoloured, q_crop, q_task, q_view, q_text, q_img)


def task_masks(batch: Batch, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, G) positive and negative masks of queries against gallery entries; the rest is ignored."""
    q_id, g_id = label[batch.q_crop][:, None], label[batch.g_crop][None, :]
    same_id = q_id == g_id
    recol = batch.g_recoloured[None, :]
    same_crop_orig = (batch.q_crop[:, None] == batch.g_crop[None, :]) & ~recol
    cc = np.asarray([t == "clothes_change" for t in batch.q_task])[:, None]
    loose = np.asarray([t in ("visible_infrared", "text") for t in batch.q_task])[:, None]
    pos = np.where(cc, same_id, same_id & ~recol) & ~same_crop_orig
    neg = ~same_id | (same_id & recol & ~cc & ~loose)
    return pos, neg & ~pos


def part_masks(batch: Batch, label: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(G, G) positive and negative masks among gallery entries for each output part.

    id: a crop and its recoloured copy are positives, other people negatives (other crops of
    the same person are ignored): the id part learns to ignore clothes colour without being
    taught to tell the few training identities apart, which cross-validation showed does not
    carry over to new people. clo: only the same identity in its original outfit is positive
    and a recoloured copy is negative (weighted by ``clothes_part_weight``, 0 by default)."""
    g = label[batch.g_crop]
    same_id = g[:, None] == g[None, :]
    orig = ~batch.g_recoloured
    not_self = ~np.eye(len(g), dtype=bool)
    same_outfit = same_id & orig[:, None] & orig[None, :]
    same_crop = batch.g_crop[:, None] == batch.g_crop[None, :]
    return {
        "id": (same_crop & not_self, ~same_id),
        "clo": (same_outfit & not_self, ~same_outfit),
    }


def _queries(head: IrmHead, cache: Cache, batch: Batch, device: torch.device) -> QueryOut:
    """Query vectors (B, 2P) of a batch, one head call per (task, instruction kind) group."""
    groups: dict[tuple[str, bool], list[int]] = {}
    for k, (t, img) in enumerate(zip(batch.q_task, batch.q_image_instruction, strict=True)):
        groups.setdefault((t, bool(img)), []).append(k)
    vectors = torch.zeros(len(batch.q_crop), head.cfg.out_dim, device=device)
    id_part = torch.zeros(len(batch.q_crop), head.cfg.part_dim, device=device)
    clo_part = torch.zeros_like(id_part)
    for (task, img), idx in sorted(groups.items()):
        sel = torch.as_tensor(idx, device=device)
        crops, views = batch.q_crop[idx], batch.q_view[idx]
        text, mask = pad_states(
            [cache.text_states[i] for i in batch.q_text[idx]], head.cfg.text_dim
        )
        task_ids = torch.full((len(idx),), TASKS.index(task), dtype=torch.long, device=device)
        if task == "text":
            out = head.query(None, None, task_ids, text.to(device), mask.to(device))
        else:
            p = cache.patches[crops, views].float()  # (b, N, 512)
            t = cache.teacher[crops, views]  # (b, 256)
            out = head.query(
                p, t, task_ids, text.to(device), mask.to(device), (p, t) if img else None
            )
        vectors = vectors.index_copy(0, sel, out.vectors)
        id_part = id_part.index_copy(0, sel, out.id_part)
        clo_part = clo_part.index_copy(0, sel, out.clo_part)
    return QueryOut(vectors, id_part, clo_part, vectors[:, :0], vectors[:, :0])


def adaptive_triplet(sim: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """IRM's adaptive (soft-weighted) triplet: softmax-weighted hardest positives and negatives."""
    dist = (2.0 - 2.0 * sim).clamp_min(1e-12).sqrt()  # (B, G) euclidean on unit vectors
    inf = torch.finfo(dist.dtype).max
    wp = torch.softmax(dist.masked_fill(~pos, -inf), dim=1)  # far positives weigh most
    wn = torch.softmax((-dist).masked_fill(~neg, -inf), dim=1)  # near negatives weigh most
    gap = (wp * dist).sum(1) - (wn * dist).sum(1)
    ok = pos.any(1) & neg.any(1)
    return F.softplus(gap[ok]).mean() if ok.any() else sim.sum() * 0.0


def relation_distill(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL of the teacher's similarity distribution over the batch to the student's, per row
    (self excluded): keeps the teacher's geometry of *all* people, not only the training ids."""
    off = ~torch.eye(len(student), dtype=torch.bool, device=student.device)
    s = (student @ student.T)[off].view(len(student), -1) / temperature  # (n, n - 1)
    t = (teacher @ teacher.T)[off].view(len(teacher), -1) / temperature
    return F.kl_div(
        F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean"
    )


def multi_positive_nce(
    sim: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, temperature: float
) -> torch.Tensor:
    """-log of the softmax mass on the positives among positives and negatives."""
    logits = sim / temperature
    inf = torch.finfo(logits.dtype).max
    all_ = torch.logsumexp(logits.masked_fill(~(pos | neg), -inf), dim=1)
    good = torch.logsumexp(logits.masked_fill(~pos, -inf), dim=1)
    ok = pos.any(1)
    return (all_ - good)[ok].mean() if ok.any() else sim.sum() * 0.0


class IdClassifier(torch.nn.Module):
    """Cosine classifier over the training identities (not part of the saved head)."""

    def __init__(self, n: int, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n, dim) * 0.02)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


@torch.no_grad()
def centroid_classifier(head: IrmHead, cache: Cache, device: torch.device) -> IdClassifier:
    """A frozen cosine classifier whose weights are the identities' mean gallery id parts
    (original views): for instruction tuning, where the gallery is frozen, so a query's
    identity cross-entropy pulls its id part toward its own identity's gallery vectors."""
    orig, was_training = V["orig"], head.training
    head.eval()
    id_parts = _in_chunks(
        lambda sl: head.gallery(cache.patches[sl, orig].float(), cache.teacher[sl, orig]).id_part,
        len(cache.label),
    )  # (n, P)
    head.train(was_training)
    label = torch.from_numpy(cache.label).to(device)
    classifier = IdClassifier(len(cache.identities), id_parts.shape[1]).to(device)
    classifier.weight.zero_().index_add_(0, label, F.normalize(id_parts, dim=-1))
    classifier.requires_grad_(False)
    return classifier


def step_loss(
    head: IrmHead, classifier: IdClassifier, cache: Cache, batch: Batch, opts: TrainOptions,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """The training loss of one batch and its parts."""
    gp = cache.patches[batch.g_crop, batch.g_view].float()  # (G, N, 512)
    gt = cache.teacher[batch.g_crop, batch.g_view]  # (G, 256)
    gal = head.gallery(gp, gt)
    qry = _queries(head, cache, batch, device)
    pos_np, neg_np = task_masks(batch, cache.label)
    pos, neg = torch.from_numpy(pos_np).to(device), torch.from_numpy(neg_np).to(device)
    sim = qry.vectors @ gal.vectors.T  # (B, G)
    nce = multi_positive_nce(sim, pos, neg, opts.temperature)
    tri = adaptive_triplet(sim, pos, neg)
    g_label = torch.from_numpy(cache.label[batch.g_crop]).to(device)
    image_q = torch.as_tensor(
        [t not in ("text", "clothes_template") for t in batch.q_task], device=device
    )
    q_label = torch.from_numpy(cache.label[batch.q_crop]).to(device)
    ident = F.cross_entropy(classifier(gal.id_part), g_label, label_smoothing=0.1)
    if image_q.any():
        ident = ident + F.cross_entropy(
            classifier(qry.id_part[image_q]), q_label[image_q], label_smoothing=0.1
        )
    part = gal.vectors.sum() * 0.0
    for name, (p_np, n_np) in part_masks(batch, cache.label).items():
        x = gal.id_part if name == "id" else gal.clo_part  # (G, P)
        w = 1.0 if name == "id" else opts.clothes_part_weight
        if not w:
            continue
        part = part + w * multi_positive_nce(
            x @ x.T,
            torch.from_numpy(p_np).to(device),
            torch.from_numpy(n_np).to(device),
            opts.temperature,
        )
    b = len(batch.q_crop)  # the first b gallery entries are the original crops
    distill = (1.0 - (gal.id_part[:b] * F.normalize(gt[:b], dim=-1)).sum(-1)).mean()
    distill = distill + opts.relation_weight * relation_distill(
        gal.id_part[:b], F.normalize(gt[:b], dim=-1), opts.temperature
    )
    # the clothes part is held to the teacher's geometry too (it overfits the few training
    # identities otherwise: cross-validation showed its mAP falling by a third)
    clo_t = F.normalize(gt[:b], dim=-1)
    distill = distill + opts.clothes_distill_weight * (
        relation_distill(gal.clo_part[:b], clo_t, opts.temperature)
        + (1.0 - (gal.clo_part[:b] * clo_t).sum(-1)).mean()
    )
    attr = F.binary_cross_entropy_with_logits(
        head.attributes(gal.cls[:b, 1]), cache.probs[batch.g_crop[:b]]
    )
    loss = (
        opts.retrieval_weight * (nce + tri)
        + opts.id_weight * ident
        + opts.distill_weight * distill
        + opts.attr_weight * attr
        + opts.part_weight * part
    )
    parts = {"nce": nce, "tri": tri, "id": ident, "distill": distill, "attr": attr, "part": part}
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def _average_precision(sim: np.ndarray, pos: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """AP per query row of ``sim`` (nq, ng); ``valid`` entries only; rows without positives NaN."""
    out = np.full(len(sim), np.nan)
    for i in range(len(sim)):
        s, p = sim[i, valid[i]], pos[i, valid[i]]
        if not p.any():
            continue
        hits = p[np.argsort(-s, kind="stable")]
        ranks = np.flatnonzero(hits) + 1
        out[i] = float(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return out


def heldout_map(
    q: np.ndarray, g: np.ndarray, labels: np.ndarray, frames: np.ndarray, gap: int = 60
) -> float:
    """Plain-ReID mAP over validation crops: each crop queries the others; same-identity crops
    closer than ``gap`` frames are left out (as in models/pets_reid.py)."""
    same = labels[:, None] == labels[None, :]
    near = np.abs(frames[:, None] - frames[None, :]) < gap
    valid = ~(same & near)
    return float(np.nanmean(_average_precision(q @ g.T, same & ~near, valid)))


# Instructed tasks validated in stage 2: the query view of each (the gallery is the originals).
VALIDATION_VIEWS = {"clothes_change": "recolour_a", "clothes_template": "upper",
                    "visible_infrared": "grey"}  # fmt: skip


def _in_chunks(fn, n: int, size: int = 256) -> torch.Tensor:
    return torch.cat([fn(slice(s, min(n, s + size))) for s in range(0, n, size)])


@torch.no_grad()
def validate(
    head: IrmHead, cache: Cache, device: torch.device, tasks: bool = False
) -> dict[str, float]:
    """mAP on the validation identities, the head against the teacher: plain ReID (a plain
    query is its gallery vector), each part alone, and with ``tasks`` the instructed tasks of
    ``VALIDATION_VIEWS`` (their default instruction) with ``task_gain``, their mean gain."""
    head.eval()
    orig = V["orig"]
    p, t = cache.val_patches[:, orig].float(), cache.val_teacher[:, orig]
    outs = [head.gallery(p[s : s + 256], t[s : s + 256]) for s in range(0, len(p), 256)]
    gal = torch.cat([o.vectors for o in outs]).cpu().numpy()
    id_part = torch.cat([o.id_part for o in outs]).cpu().numpy()
    clo_part = torch.cat([o.clo_part for o in outs]).cpu().numpy()
    labels, frames = cache.val_label, cache.val_frame
    teach = F.normalize(t, dim=-1).cpu().numpy()
    out = {
        "irm_mAP": heldout_map(gal, gal, labels, frames),
        "id_part_mAP": heldout_map(id_part, id_part, labels, frames),
        "clo_part_mAP": heldout_map(clo_part, clo_part, labels, frames),
        "teacher_mAP": heldout_map(teach, teach, labels, frames),
    }
    if tasks:
        gains = []
        for task, view in VALIDATION_VIEWS.items():
            qp, qt = cache.val_patches[:, V[view]].float(), cache.val_teacher[:, V[view]]
            text, mask = pad_states([cache.instruction_states(task)], head.cfg.text_dim)
            text, mask = text.to(device), mask.to(device)

            def query(sl: slice, task: str = task, qp=qp, qt=qt, text=text, mask=mask):
                n = len(qp[sl])
                ids = torch.full((n,), TASKS.index(task), dtype=torch.long, device=device)
                return head.query(
                    qp[sl], qt[sl], ids, text.expand(n, -1, -1), mask.expand(n, -1)
                ).vectors

            q = _in_chunks(query, len(qp)).cpu().numpy()
            qteach = F.normalize(qt, dim=-1).cpu().numpy()
            out[f"{task}_mAP"] = heldout_map(q, gal, labels, frames)
            out[f"{task}_teacher_mAP"] = heldout_map(qteach, teach, labels, frames)
            gains.append(out[f"{task}_mAP"] - out[f"{task}_teacher_mAP"])
        out["task_gain"] = float(np.mean(gains))
    head.train()
    return out


def text_parameters(head: IrmHead) -> list[torch.nn.Parameter]:
    """What text-only training may change without moving any image vector: the text output
    layers always; while every image output residual (``id_out``, ``clo_out``,
    ``query_id_out``, ``query_clo_out``) is zero, image vectors do not depend on the CLS states,
    so the instruction encoder and the editor train too (not the gate: it weighs the image
    tasks' parts)."""
    outputs = [*head.text_id_out.parameters(), *head.text_clo_out.parameters()]
    if not head.image_path_is_teacher():
        return outputs
    shared = [*head.text_in.parameters(), head.task_token.weight, *head.editor.parameters(),
              *head.norm.parameters(), head.cls]  # fmt: skip
    return outputs + shared


@torch.no_grad()
def _gallery_of(head: IrmHead, patches: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return _in_chunks(
        lambda sl: head.gallery(patches[sl].float(), teacher[sl]).vectors, len(patches)
    )


def _text_queries(head: IrmHead, cache: Cache, texts: np.ndarray, device: torch.device):
    text, mask = pad_states([cache.text_states[k] for k in texts], head.cfg.text_dim)
    ids = torch.full((len(texts),), TASKS.index("text"), dtype=torch.long, device=device)
    return head.query(None, None, ids, text.to(device), mask.to(device)).vectors


def train_text(
    head: IrmHead, cache: Cache, opts: TrainOptions, device: torch.device,
    stop_at: int | None = None,
) -> dict[str, object]:  # fmt: skip
    """Stage 3: text-to-image on ``head`` (in place): caption queries against the frozen gallery
    of the training crops, InfoNCE with the caption's identity as positives, only
    ``text_parameters``. With validation identities, every ``eval_every`` steps: text mAP of
    their captions against their crops (``text_mAP``; ``chance_mAP`` is a random ranking's)."""
    head.eval()
    gal = _gallery_of(head, cache.patches[:, V["orig"]], cache.teacher[:, V["orig"]])  # (n, 2P)
    pairs = np.asarray([(c, k) for c in range(len(cache.captions)) for k in cache.captions[c]])
    g_label = torch.from_numpy(cache.label).to(device)
    params = text_parameters(head)
    optim = torch.optim.AdamW(params, lr=opts.text_lr, weight_decay=opts.weight_decay)
    rng = np.random.default_rng(opts.seed + 1)
    validating = len(cache.val_label) > 0
    if validating:
        val_gal = _gallery_of(
            head, cache.val_patches[:, V["orig"]], cache.val_teacher[:, V["orig"]]
        )
        val_pairs = [(c, k) for c in range(len(cache.val_captions)) for k in cache.val_captions[c]]
        vq_label = cache.val_label[[c for c, _ in val_pairs]]
        v_pos = vq_label[:, None] == cache.val_label[None, :]

    def validate_text(step: int) -> dict[str, float]:
        with torch.no_grad():
            q = _text_queries(head, cache, np.asarray([k for _, k in val_pairs]), device)
        sim = (q @ val_gal.T).cpu().numpy()
        ap = _average_precision(sim, v_pos, np.ones_like(v_pos))
        chance = float(np.mean(v_pos.sum(1) / v_pos.shape[1]))  # AP of a random ranking, about
        return {"step": step, "text_mAP": float(np.nanmean(ap)), "chance_mAP": chance}

    history = [validate_text(0)] if validating else []
    last = opts.text_steps if stop_at is None else min(stop_at, opts.text_steps)
    bar = tqdm(total=last, desc=f"irm text {opts.out.name}", unit="step", disable=not opts.progress)
    for step in range(1, last + 1):
        sel = pairs[rng.choice(len(pairs), min(128, len(pairs)), replace=False)]
        q = _text_queries(head, cache, sel[:, 1], device)
        pos = torch.from_numpy(cache.label[sel[:, 0]]).to(device)[:, None] == g_label[None]
        loss = multi_positive_nce(q @ gal.T, pos, torch.ones_like(pos), opts.temperature)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if validating and (step % opts.eval_every == 0 or step == last):
            history.append(validate_text(step))
    bar.close()
    head.eval()
    for p in head.parameters():
        p.requires_grad_(True)
    return {"steps": last, "history": history, "trained": len(params)}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def _lr_at(step: int, opts: TrainOptions) -> float:
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    frac = (step - opts.warmup_steps) / max(1, opts.max_steps - opts.warmup_steps)
    return opts.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


class Ema:
    """Exponential moving average of a head's weights (buffers are copied)."""

    def __init__(self, head: IrmHead, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(head).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, head: IrmHead) -> None:
        for avg, p in zip(self.model.parameters(), head.parameters(), strict=True):
            if p.requires_grad:
                avg.lerp_(p.detach(), 1.0 - self.decay)
        for avg, buf in zip(self.model.buffers(), head.buffers(), strict=True):
            avg.copy_(buf)


def instruction_parameters(head: IrmHead) -> list[torch.nn.Parameter]:
    """The parameters that no gallery vector and no plain-ReID query depends on; the rest is
    frozen. The gallery's output layers (``id_out``, ``clo_out``, ``clo_teacher``) always
    freeze. While ``id_out`` and ``clo_out`` are zero (stage 1 stopped at step 0) the gallery
    is the teacher whatever the encoder and editor do, so they train too; otherwise only the
    task tokens of the five other tasks (the reid token's gradient is zeroed), the garment-photo
    projection, the gate and the query-only residuals train."""
    gallery_out = {
        id(p) for m in (head.id_out, head.clo_out, head.clo_teacher) for p in m.parameters()
    }
    teacher_only = not (head.id_out.weight.any() or head.clo_out.weight.any())
    if teacher_only:
        params = [p for p in head.parameters() if id(p) not in gallery_out]
    else:
        params = [head.task_token.weight, *head.image_instruction_in.parameters(),
                  *head.gate.parameters(), head.query_id_out.weight,
                  head.query_clo_out.weight]  # fmt: skip
        reid = TASKS.index("reid")
        head.task_token.weight.register_hook(lambda g: g.index_fill(0, torch.tensor([reid]), 0.0))
    chosen = {id(p) for p in params}
    for p in head.parameters():
        p.requires_grad_(id(p) in chosen)
    return params


def train_head(
    cache: Cache,
    opts: TrainOptions,
    device: torch.device,
    stop_at: int | None = None,
    start: IrmHead | None = None,
) -> dict[str, object]:
    """Train a fresh head on ``cache`` with the LR schedule of ``opts.max_steps``, stopping at
    ``stop_at`` (default: the schedule's end or the time budget). With ``start``: instruction
    tuning of a copy of that head (``instruction_parameters`` only, no weight decay). Writes
    the moving average of the weights to ``<out>/irm.safetensors`` and ``<out>/report.json``;
    returns the report, whose history has validation plain-ReID mAP every ``eval_every`` steps
    when the cache has validation identities."""
    seed_everything(opts.seed)
    if start is None:
        classifier = IdClassifier(len(cache.identities), opts.config.part_dim).to(device)
        head = IrmHead(opts.config).to(device)
        head.set_gallery_text(cache.text_states[cache.gallery_text])
        params = [*head.parameters(), *classifier.parameters()]
        decay = opts.weight_decay
    else:
        head = copy.deepcopy(start).to(device).train()
        params, decay = instruction_parameters(head), 0.0
        classifier = centroid_classifier(head, cache, device)  # the gallery is frozen
    optim = torch.optim.AdamW(params, lr=opts.lr, weight_decay=decay)
    ema = Ema(head, opts.ema_decay)
    rng = np.random.default_rng(opts.seed)
    began = time.perf_counter()
    validating, tasks = len(cache.val_label) > 0, start is not None
    history = [{"step": 0, **validate(ema.model, cache, device, tasks)}] if validating else []
    last = opts.max_steps if stop_at is None else min(stop_at, opts.max_steps)
    bar = tqdm(total=last, desc=f"irm train {opts.out.name}", unit="step",
               disable=not opts.progress)  # fmt: skip
    step, stopped = 0, "max_steps" if stop_at is None else "stop_at"
    running: dict[str, float] = {}
    while step < last:
        if time.perf_counter() - began > opts.minutes * 60:
            stopped = "time budget"
            break
        for group in optim.param_groups:
            group["lr"] = _lr_at(step, opts)
        batch = sample_batch(cache, rng, opts)
        loss, parts = step_loss(head, classifier, cache, batch, opts, device)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        ema.update(head)
        step += 1
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            running[k] = 0.95 * running.get(k, v) + 0.05 * v
        bar.update(1)
        bar.set_postfix(loss=f"{running['loss']:.3f}")
        if validating and (step % opts.eval_every == 0 or step == last):
            v = validate(ema.model, cache, device, tasks)
            history.append({"step": step, **v, **{k: round(x, 4) for k, x in running.items()}})
            log.info("irm %s step %d: %s", opts.out.name, step, history[-1])
    bar.close()
    opts.out.mkdir(parents=True, exist_ok=True)
    save_head(
        ema.model, opts.out / "irm.safetensors",
        {"backbone": BACKBONE, "seed": str(opts.seed), "step": str(step)},
    )  # fmt: skip
    report = {
        "steps": step,
        "stopped_by": stopped,
        "train_seconds": round(time.perf_counter() - began, 1),
        "val_identities": sorted(set(cache.val_label.tolist())),
        "history": history,
        "device": str(device),
    }
    (opts.out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def choose_steps(
    histories: list[list[dict]], gain: Callable[[dict], float]
) -> tuple[int, list[dict]]:
    """The step with the best mean validation ``gain`` across folds (ties: the earlier step),
    and the per-step table. Only steps every fold reached count."""
    common = set.intersection(*({h["step"] for h in hist} for hist in histories))
    table = []
    for step in sorted(common):
        rows = [next(h for h in hist if h["step"] == step) for hist in histories]
        gains = [float(gain(r)) for r in rows]
        table.append({"step": step, "mean_gain": float(np.mean(gains)), "gains": gains})
    best = max(table, key=lambda r: (round(r["mean_gain"], 6), -r["step"]))
    return int(best["step"]), table


def plain_gain(row: dict) -> float:
    """Validation plain-ReID mAP of the head minus the teacher's."""
    return row["irm_mAP"] - row["teacher_mAP"]


def task_gain(row: dict) -> float:
    """Mean validation mAP gain over the teacher of the instructed tasks (``VALIDATION_VIEWS``)."""
    return row["task_gain"]


def train(opts: TrainOptions, store: object | None = None) -> dict[str, object]:
    """The whole run (``opts.minutes`` is shared by its trainings):

    1. the cache (built if missing: needs OpenVINO and the model store);
    2. per cross-validation fold: the whole head trained, plain-ReID mAP validated: this
       chooses the image path's step count; then from each fold's head at that step, the
       instruction pathway trained (``instruction_parameters``), the instructed tasks
       validated: this chooses the instruction step count;
    3. the final head on every training identity, stopped at those two step counts;
    4. the text refit.
    """
    from models.irm import load_head

    torch.set_num_threads(opts.threads)
    device = resolve_device(opts.device)
    cache_path = opts.cache or opts.out / "cache.npz"
    t0 = time.perf_counter()
    if not cache_path.is_file():
        if store is None:
            raise FileNotFoundError(
                f"IRM cache {cache_path} not found and no model store to build it"
            )
        build_cache(cache_path, store, opts)
    cache_s = time.perf_counter() - t0
    full = Cache.load(cache_path, device)
    folds = cv_folds(full.identities, full.label, opts.cv_folds)
    per_run = replace(opts, minutes=opts.minutes / (2 * len(folds) + 2))
    tuned = replace(
        per_run, max_steps=opts.instruction_steps, lr=opts.instruction_lr, warmup_steps=0
    )
    image_runs: list[list[dict]] = []
    instruction_runs: list[list[dict]] = []
    text_runs: list[list[dict]] = []
    for k, names in enumerate(folds):
        log.info("irm fold %d/%d: validating on %s", k + 1, len(folds), names)
        fold = Cache.load(cache_path, device, names)
        out = opts.out / f"fold-{k}"
        image_runs.append(train_head(fold, replace(per_run, out=out), device)["history"])
        del fold
    steps, table = choose_steps(image_runs, plain_gain) if folds else (opts.max_steps, [])
    log.info("irm: %d image steps chosen by %d-fold cross-validation", steps, len(folds))
    fold_heads = []
    for k, names in enumerate(folds):
        fold = Cache.load(cache_path, device, names)
        out = opts.out / f"fold-{k}"
        train_head(fold, replace(per_run, out=out / "image"), device, stop_at=steps)
        base, _ = load_head(out / "image" / "irm.safetensors")
        if opts.instruction_steps:
            run = train_head(fold, replace(tuned, out=out / "instructions"), device, start=base)
            instruction_runs.append(run["history"])
        fold_heads.append(base)
        del fold
    isteps, itable = (
        choose_steps(instruction_runs, task_gain) if instruction_runs
        else (opts.instruction_steps, [])
    )  # fmt: skip
    log.info("irm: %d instruction steps chosen by cross-validation", isteps)
    for k, (names, base) in enumerate(zip(folds, fold_heads, strict=True)):
        fold = Cache.load(cache_path, device, names)
        out = opts.out / f"fold-{k}"
        if isteps:
            train_head(fold, replace(tuned, out=out / "tuned"), device, stop_at=isteps, start=base)
            base, _ = load_head(out / "tuned" / "irm.safetensors")
        run = train_text(base.to(device), fold, replace(per_run, out=out / "text"), device)
        text_runs.append(run["history"])
        del fold
    tsteps, ttable = (
        choose_steps(text_runs, lambda r: r["text_mAP"]) if text_runs else (opts.text_steps, [])
    )
    log.info("irm: %d text steps chosen by cross-validation", tsteps)
    report = train_head(full, per_run, device, stop_at=steps)
    weights = opts.out / "irm.safetensors"
    head, meta = load_head(weights)
    if isteps:
        report["instruction_tuning"] = train_head(
            full, replace(tuned, out=opts.out / "instructions"), device, stop_at=isteps, start=head
        )
        head, _ = load_head(opts.out / "instructions" / "irm.safetensors")
    head = head.to(device)
    report["text"] = train_text(head, full, per_run, device, stop_at=tsteps)
    save_head(
        head, weights,
        meta | {"cv_steps": str(steps), "instruction_steps": str(isteps), "text_steps": str(tsteps)},
    )  # fmt: skip
    report |= {
        "cv_folds": folds,
        "cv_table": table,
        "chosen_steps": steps,
        "instruction_cv_table": itable,
        "chosen_instruction_steps": isteps,
        "text_cv_table": ttable,
        "chosen_text_steps": tsteps,
        "cache_seconds": round(cache_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "options": {k: str(v) for k, v in asdict(opts).items()},
    }
    (opts.out / "report.json").write_text(json.dumps(report, indent=2))
    return report
