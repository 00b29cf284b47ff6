"""Train the IRM head (models/irm.py) on PETS09-S2L1 training identities and tracker tracklets.

Two stages, one command (``refind train irm --out DIR``):

1. **Cache** (once, CPU, OpenVINO): every training crop -- the PETS ground-truth crops of the
   training identities (``models.irm_data.pets_identity_split``) and the tracks of refind's own
   tracker on the Intel clip as weak identities -- is rendered in ``VIEWS`` (original, flip, two
   clothes recolourings, a texture swap, greyscale, thermal, the upper-body garment) and run once
   through the frozen backbone (32 patch tokens + the 0277 teacher embedding per view); the 0230
   attribute model describes the original; captions and instructions are written
   (``models.irm_data``) and encoded once by all-MiniLM-L6-v2. The held-out (test) identities' original
   crops are cached too, for validation only (never a gradient). The cache is one ``.npz`` that
   a machine without OpenVINO (a GPU box) can train from (``--cache PATH``).
2. **Head training** (CPU or GPU): PK batches (identities x crops); each crop gets a task and
   becomes a query (its task's view + instruction); galleries are the original (or flipped)
   crops plus recoloured ones, encoded without a task. Losses: multi-positive InfoNCE and IRM's
   adaptive (soft-weighted) triplet over query x gallery with per-task positives; identity
   cross-entropy (cosine classifier, label smoothing); distillation of the id part to the
   teacher; attribute distillation from CLS_clo. Validation: plain-ReID mAP of two PETS
   *training* identities kept out of training (``validation_identities``), against the teacher
   on the same crops; the best checkpoint is kept. The held-out PETS identities are the test
   split: no step of training or selection reads them.
3. **Text refit**: on the kept checkpoint, only the text-only output layers are refitted
   (captions against its frozen gallery), so no image task changes (``fit_text_outputs``).

Positives per task (same crop's original never counts; "recoloured" = another outfit):
reid: same identity, original clothes; clothes_change: same identity, any clothes;
clothes_template, attribute_text: same identity, original clothes (recoloured = negative);
visible_infrared and text: same identity, original clothes (recoloured = ignored).

Example:
    >>> report = train(TrainOptions(out=Path("runs/irm")), store)      # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
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
    IrmConfig,
    IrmHead,
    QueryOut,
    resolve_device,
    save_head,
)
from models.minilm import pad_states

log = logging.getLogger(__name__)

VAL_IDENTITIES = 2  # PETS training identities kept out of training for checkpoint selection
VIEWS: tuple[str, ...] = (
    "orig", "flip", "recolour_a", "recolour_b", "texture", "grey", "thermal", "upper",
)  # fmt: skip
V = {name: k for k, name in enumerate(VIEWS)}
CACHE_VERSION = 1
BACKBONE = "person-reidentification-retail-0277"

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
    minutes: float = 20.0  # wall-clock budget of the head training (the cache is extra)
    max_steps: int = 800
    seed: int = 0
    ids_per_batch: int = 16
    crops_per_id: int = 4
    lr: float = 1.5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    temperature: float = 0.05
    distill_weight: float = 1.0
    id_weight: float = 0.25
    attr_weight: float = 0.1
    eval_every: int = 50
    text_steps: int = 400  # stage 3: refit of the text-only outputs on the kept checkpoint
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
    train_ids, heldout_ids = d.pets_identity_split()
    crops = d.load_pets_crops(train_ids, every_n_frames=opts.pets_every_n_frames)
    crops += d.load_tracklet_crops(d.INTEL_VIDEO, store, every_n_frames=opts.intel_every_n_frames)  # type: ignore[arg-type]
    val = d.load_pets_crops(heldout_ids, every_n_frames=5)
    log.info("irm cache: %d training crops, %d validation crops", len(crops), len(val))
    resolved = store.resolve(BACKBONE)  # type: ignore[attr-defined]
    backbone = OpenVinoBackbone(resolved.path, resolved.model_id, opts.threads)
    n, nv = len(crops), len(VIEWS)
    patches = np.zeros((n, nv, opts.config.n_patches, opts.config.token_dim), np.float16)
    teacher = np.zeros((n, nv, opts.config.teacher_dim), np.float32)
    bar = tqdm(total=n + len(val), desc="irm cache", unit="crop", disable=not opts.progress)
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
    val_p, val_t = [], []
    for start in range(0, len(val), 64):
        p, t = backbone([c.image for c in val[start : start + 64]])
        val_p.append(p.astype(np.float16))
        val_t.append(t)
        bar.update(len(val[start : start + 64]))
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
        val_patches=np.concatenate(val_p),
        val_teacher=np.concatenate(val_t),
        val_label=np.asarray([c.identity for c in val]),
        val_frame=np.asarray([c.frame_index for c in val], np.int64),
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
    val_patches: torch.Tensor
    val_teacher: torch.Tensor
    val_label: np.ndarray
    val_frame: np.ndarray
    text_states: list[torch.Tensor]  # per text (T, 384)
    texts: list[str]
    captions: np.ndarray  # (n, 3) text index
    attr_texts: np.ndarray  # (n, 2)
    fixed: dict[str, list[int]]
    gallery_text: int

    @classmethod
    def load(cls, path: Path, device: torch.device, val_ids: int = VAL_IDENTITIES) -> Cache:
        """Load the cache; validation = ``val_ids`` PETS *training* identities taken out of
        training (``validation_identities``). The held-out PETS identities in the file are the
        test split: they are never read here (``refind eval irm`` reports on them)."""
        z = np.load(path, allow_pickle=False)
        if int(z["version"]) != CACHE_VERSION:
            raise ValueError(
                f"{path} is an IRM cache of version {int(z['version'])}, not {CACHE_VERSION}"
            )
        off = z["text_offsets"]
        states = torch.from_numpy(z["text_states"].astype(np.float32))
        identities = [str(s) for s in z["identities"]]
        label, frame = z["label"], z["frame"]
        held = np.isin(label, validation_identities(identities, label, val_ids))
        keep = ~held
        patches = torch.from_numpy(z["patches"])
        teacher = torch.from_numpy(z["teacher"])
        orig = V["orig"]
        return cls(
            patches=patches[keep].to(device),
            teacher=teacher[keep].to(device),
            probs=torch.from_numpy(z["probs"][keep]).to(device),
            label=label[keep],
            identities=identities,
            val_patches=patches[held, orig].to(device),
            val_teacher=teacher[held, orig].to(device),
            val_label=np.asarray([identities[i] for i in label[held]]),
            val_frame=frame[held],
            text_states=[states[off[k] : off[k + 1]] for k in range(len(off) - 1)],
            texts=[str(s) for s in z["texts"]],
            captions=z["captions"][keep],
            attr_texts=z["attr_texts"][keep],
            fixed={k: list(v) for k, v in json.loads(str(z["fixed"])).items()},
            gallery_text=int(z["gallery_text"]),
        )


def validation_identities(identities: list[str], label: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` PETS training identities with the most crops (ties: lower id).

    They are taken out of training and used for checkpoint selection, so no choice of the run
    ever looks at the held-out PETS identities the reported figures come from.
    """
    if n <= 0:
        return []
    counts = np.bincount(label, minlength=len(identities))
    pets = [i for i, name in enumerate(identities) if name.startswith("pets:")]
    pets.sort(key=lambda i: (-counts[i], identities[i]))
    return pets[:n]


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


def _queries(head: IrmHead, cache: Cache, batch: Batch, device: torch.device) -> QueryOut:
    """Query vectors (B, 2P) of a batch, one head call per (task, instruction kind) group."""
    groups: dict[tuple[str, bool], list[int]] = {}
    for k, (t, img) in enumerate(zip(batch.q_task, batch.q_image_instruction, strict=True)):
        groups.setdefault((t, bool(img)), []).append(k)
    vectors = torch.zeros(len(batch.q_crop), head.cfg.out_dim, device=device)
    id_part = torch.zeros(len(batch.q_crop), head.cfg.part_dim, device=device)
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
    return QueryOut(vectors, id_part, id_part, vectors[:, :0], vectors[:, :0])


def adaptive_triplet(sim: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """IRM's adaptive (soft-weighted) triplet: softmax-weighted hardest positives and negatives."""
    dist = (2.0 - 2.0 * sim).clamp_min(1e-12).sqrt()  # (B, G) euclidean on unit vectors
    inf = torch.finfo(dist.dtype).max
    wp = torch.softmax(dist.masked_fill(~pos, -inf), dim=1)  # far positives weigh most
    wn = torch.softmax((-dist).masked_fill(~neg, -inf), dim=1)  # near negatives weigh most
    gap = (wp * dist).sum(1) - (wn * dist).sum(1)
    ok = pos.any(1) & neg.any(1)
    return F.softplus(gap[ok]).mean() if ok.any() else sim.sum() * 0.0


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
    b = len(batch.q_crop)  # the first b gallery entries are the original crops
    distill = (1.0 - (gal.id_part[:b] * F.normalize(gt[:b], dim=-1)).sum(-1)).mean()
    attr = F.binary_cross_entropy_with_logits(
        head.attributes(gal.cls[:b, 1]), cache.probs[batch.g_crop[:b]]
    )
    loss = (
        nce + tri + opts.id_weight * ident + opts.distill_weight * distill + opts.attr_weight * attr
    )
    parts = {"nce": nce, "tri": tri, "id": ident, "distill": distill, "attr": attr}
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
    """Plain-ReID mAP over held-out crops: each crop queries the others; same-identity crops
    closer than ``gap`` frames are left out (as in models/pets_reid.py)."""
    same = labels[:, None] == labels[None, :]
    near = np.abs(frames[:, None] - frames[None, :]) < gap
    valid = ~(same & near)
    return float(np.nanmean(_average_precision(q @ g.T, same & ~near, valid)))


@torch.no_grad()
def validate(head: IrmHead, cache: Cache, device: torch.device) -> dict[str, float]:
    """Held-out plain-ReID mAP of the head (reid query vs gallery) and of the teacher."""
    head.eval()
    p, t = cache.val_patches.float(), cache.val_teacher
    gal = torch.cat(
        [head.gallery(p[s : s + 256], t[s : s + 256]).vectors for s in range(0, len(p), 256)]
    )
    text, mask = pad_states([cache.text_states[cache.gallery_text]], head.cfg.text_dim)
    q = []
    for s in range(0, len(p), 256):
        n = len(p[s : s + 256])
        ids = torch.zeros(n, dtype=torch.long, device=device)
        q.append(
            head.query(p[s : s + 256], t[s : s + 256], ids, text.to(device).expand(n, -1, -1),
                       mask.to(device).expand(n, -1)).vectors
        )  # fmt: skip
    head.train()
    labels, frames = cache.val_label, cache.val_frame
    teach = F.normalize(t, dim=-1).cpu().numpy()
    return {
        "irm_mAP": heldout_map(torch.cat(q).cpu().numpy(), gal.cpu().numpy(), labels, frames),
        "irm_gallery_mAP": heldout_map(gal.cpu().numpy(), gal.cpu().numpy(), labels, frames),
        "teacher_mAP": heldout_map(teach, teach, labels, frames),
    }


def fit_text_outputs(
    head: IrmHead, cache: Cache, opts: TrainOptions, device: torch.device
) -> tuple[float, float]:
    """Refit only the text-only output layers (``text_id_out``, ``text_clo_out``: used by no
    image query and not by the gallery) so captions land on their identity's gallery vectors.

    Every other weight is frozen, so plain ReID and the image tasks of the kept checkpoint stay
    exactly as they were; the caption CLS states and the gallery are computed once. Returns the
    caption NCE loss before and after."""
    head.eval()
    with torch.no_grad():
        p = cache.patches[:, V["orig"]]
        t = cache.teacher[:, V["orig"]]
        gal = torch.cat(
            [
                head.gallery(p[s : s + 256].float(), t[s : s + 256]).vectors
                for s in range(0, len(p), 256)
            ]
        )  # (n, 2P)
        pairs = np.asarray([(c, k) for c in range(len(cache.captions)) for k in cache.captions[c]])
        uniq = np.unique(pairs[:, 1])
        cls, gates = [], []
        for s in range(0, len(uniq), 256):
            idx = uniq[s : s + 256]
            text, mask = pad_states([cache.text_states[k] for k in idx], head.cfg.text_dim)
            ids = torch.full((len(idx),), TASKS.index("text"), dtype=torch.long, device=device)
            instr, m = head.instruction(ids, text.to(device), mask.to(device))
            cls.append(head.edit(None, instr, m))
            pooled = (instr * m[..., None]).sum(1) / m.sum(1, keepdim=True)
            gates.append(head.gate(pooled).softmax(-1))
        cls_all, gate_all = torch.cat(cls), torch.cat(gates)  # (m, 2, D), (m, 2)
    row = {int(k): r for r, k in enumerate(uniq)}
    g_label = torch.from_numpy(cache.label).to(device)
    params = [*head.text_id_out.parameters(), *head.text_clo_out.parameters()]
    optim = torch.optim.AdamW(params, lr=1e-3, weight_decay=opts.weight_decay)
    rng = np.random.default_rng(opts.seed + 1)

    def loss_of(sel: np.ndarray) -> torch.Tensor:
        r = torch.as_tensor([row[int(k)] for k in pairs[sel, 1]], device=device)
        c, g = cls_all[r], gate_all[r]
        q = F.normalize(
            torch.cat(
                [g[:, :1] * F.normalize(head.text_id_out(c[:, 0]), dim=-1),
                 g[:, 1:] * F.normalize(head.text_clo_out(c[:, 1]), dim=-1)], dim=-1
            ), dim=-1,
        )  # fmt: skip
        pos = torch.from_numpy(cache.label[pairs[sel, 0]]).to(device)[:, None] == g_label[None]
        return multi_positive_nce(q @ gal.T, pos, torch.ones_like(pos), opts.temperature)

    probe = rng.choice(len(pairs), min(512, len(pairs)), replace=False)
    with torch.no_grad():
        before = float(loss_of(probe))
    for _ in range(opts.text_steps):
        loss = loss_of(rng.choice(len(pairs), min(128, len(pairs)), replace=False))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    with torch.no_grad():
        after = float(loss_of(probe))
    log.info("irm text outputs: caption NCE %.3f -> %.3f", before, after)
    return before, after


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


def train_head(cache: Cache, opts: TrainOptions, device: torch.device) -> dict[str, object]:
    """Train a fresh head on ``cache``; writes ``<out>/irm.safetensors`` (the best checkpoint by
    validation plain-ReID mAP) and ``<out>/report.json``; returns the report."""
    seed_everything(opts.seed)
    head = IrmHead(opts.config).to(device)
    head.set_gallery_text(cache.text_states[cache.gallery_text])
    classifier = IdClassifier(len(cache.identities), opts.config.part_dim).to(device)
    params = [*head.parameters(), *classifier.parameters()]
    optim = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    rng = np.random.default_rng(opts.seed)
    start = time.perf_counter()
    first = validate(head, cache, device)
    history = [{"step": 0, **first}]
    best = (first["irm_mAP"], 0)
    opts.out.mkdir(parents=True, exist_ok=True)
    weights = opts.out / "irm.safetensors"
    meta = {"backbone": BACKBONE, "seed": str(opts.seed)}
    save_head(head, weights, meta | {"step": "0"})
    bar = tqdm(total=opts.max_steps, desc="irm train", unit="step", disable=not opts.progress)
    step, stopped = 0, "max_steps"
    running: dict[str, float] = {}
    while step < opts.max_steps:
        if time.perf_counter() - start > opts.minutes * 60:
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
        step += 1
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            running[k] = 0.95 * running.get(k, v) + 0.05 * v
        bar.update(1)
        bar.set_postfix(loss=f"{running['loss']:.3f}", best=f"{best[0]:.3f}")
        if step % opts.eval_every == 0 or step == opts.max_steps:
            v = validate(head, cache, device)
            history.append({"step": step, **v, **{k: round(x, 4) for k, x in running.items()}})
            log.info("irm step %d: %s", step, history[-1])
            # no validation identities (a cache without PETS training ids): keep the last
            if v["irm_mAP"] > best[0] or not len(cache.val_label):
                best = (v["irm_mAP"], step)
                save_head(head, weights, meta | {"step": str(step)})
    bar.close()
    save_head(head, opts.out / "irm-last.safetensors", meta | {"step": str(step)})
    # Stage 3: the kept checkpoint's text-only outputs, refitted against its frozen gallery.
    from models.irm import load_head

    kept, kept_meta = load_head(weights)
    kept = kept.to(device)
    text_loss = fit_text_outputs(kept, cache, opts, device)
    save_head(
        kept, weights, kept_meta | {"text_probe_loss": f"{text_loss[0]:.4f}->{text_loss[1]:.4f}"}
    )
    report = {
        "steps": step,
        "stopped_by": stopped,
        "train_seconds": round(time.perf_counter() - start, 1),
        "best_step": best[1],
        "best_val_irm_mAP": best[0],
        "val_teacher_mAP": first["teacher_mAP"],
        "val_identities": sorted(set(cache.val_label.tolist())),
        "history": history,
        "device": str(device),
        "options": {k: str(v) for k, v in asdict(replace(opts, config=opts.config)).items()},
    }
    (opts.out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def train(opts: TrainOptions, store: object | None = None) -> dict[str, object]:
    """The whole run: build the cache if missing (needs OpenVINO and the model store), train."""
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
    report = train_head(Cache.load(cache_path, device), opts, device)
    report["cache_seconds"] = round(cache_s, 1)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    (opts.out / "report.json").write_text(json.dumps(report, indent=2))
    return report
