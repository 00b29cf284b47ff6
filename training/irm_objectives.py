"""What one IRM training step optimises and how training validates (training/irm.py):
PK batches with a task per query, per-task positive and negative masks, IRM's losses
(multi-positive InfoNCE, adaptive triplet, identity, distillation), and validation mAP.

Example:
    >>> batch = sample_batch(cache, np.random.default_rng(0), opts)        # doctest: +SKIP
    >>> loss, parts = step_loss(head, classifier, cache, batch, opts, device)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from refind.models.base import TASKS
from refind.models.irm import IrmHead, QueryOut
from refind.models.minilm import pad_states
from refind.training.irm_cache import Cache, V

if TYPE_CHECKING:
    from refind.training.irm import TrainOptions

# How often each task is drawn for a query (text-only queries are cheap; reid matters most).
TASK_WEIGHTS: dict[str, float] = {
    "reid": 0.25, "clothes_change": 0.15, "clothes_template": 0.15,
    "attribute_text": 0.15, "visible_infrared": 0.15, "text": 0.15,
}  # fmt: skip


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
    id_parts = in_chunks(
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


def average_precision(sim: np.ndarray, pos: np.ndarray, valid: np.ndarray) -> np.ndarray:
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
    closer than ``gap`` frames are left out (as in datasets/pets_reid.py)."""
    same = labels[:, None] == labels[None, :]
    near = np.abs(frames[:, None] - frames[None, :]) < gap
    valid = ~(same & near)
    return float(np.nanmean(average_precision(q @ g.T, same & ~near, valid)))


# Instructed tasks validated in stage 2: the query view of each (the gallery is the originals).
VALIDATION_VIEWS = {"clothes_change": "recolour_a", "clothes_template": "upper",
                    "visible_infrared": "grey"}  # fmt: skip


def in_chunks(fn, n: int, size: int = 256) -> torch.Tensor:
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

            q = in_chunks(query, len(qp)).cpu().numpy()
            qteach = F.normalize(qt, dim=-1).cpu().numpy()
            out[f"{task}_mAP"] = heldout_map(q, gal, labels, frames)
            out[f"{task}_teacher_mAP"] = heldout_map(qteach, teach, labels, frames)
            gains.append(out[f"{task}_mAP"] - out[f"{task}_teacher_mAP"])
        out["task_gain"] = float(np.mean(gains))
    head.train()
    return out
