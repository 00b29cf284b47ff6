"""Train the IRM head (models/irm.py) on PETS09-S2L1 training identities and tracker tracklets.

One command (``refind train irm --out DIR``):

1. **Cache** (once, CPU, OpenVINO; ``refind.training.irm_cache``): every training crop -- the PETS
   ground-truth crops of the training identities (``refind.datasets.irm.pets_identity_split``) and
   the tracks of refind's own tracker on the Intel clip as weak identities -- is rendered in
   ``irm_cache.VIEWS`` (original, flip, two clothes recolourings, a texture swap, greyscale,
   thermal, the upper-body garment) and run once through the frozen backbone (32 patch tokens
   + the 0277 teacher embedding per view); the 0230 attribute model describes the original;
   captions and instructions are written (``refind.datasets.irm``) and encoded once by
   all-MiniLM-L6-v2. The held-out (test) identities are not in it (caches built before this
   also held their original crops, never read). The cache is one ``.npz`` that a machine
   without OpenVINO (a GPU box) can train from (``--cache PATH``).
2. **Cross-validation** (CPU or GPU) over the PETS training identities
   (``irm_cache.cv_folds``), per fold:
   (a) the whole head (``train_head``; batches, losses and validation in
   ``refind.training.irm_objectives``): PK batches (identities x crops); each crop gets a task
   and becomes a query (its task's view + instruction); galleries are the original (or flipped)
   crops plus recoloured ones, encoded without a task. Losses: multi-positive InfoNCE and IRM's
   adaptive (soft-weighted) triplet over query x gallery with per-task positives; identity
   cross-entropy (cosine classifier, label smoothing); distillation of both parts to the
   teacher (cosine and batch relations); a crop-vs-its-recolouring invariance term
   (``irm_objectives.part_masks``); attribute distillation from CLS_clo. Validated on
   plain-ReID mAP against the teacher: this chooses the image step count (``choose_steps``).
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from refind.models.base import TASKS
from refind.models.irm import IrmHead, resolve_device, save_head
from refind.models.irm_cpu import IrmConfig
from refind.models.minilm import pad_states
from refind.training.irm_cache import BACKBONE, Cache, V, build_cache, cv_folds
from refind.training.irm_objectives import (
    IdClassifier,
    average_precision,
    centroid_classifier,
    in_chunks,
    multi_positive_nce,
    sample_batch,
    step_loss,
    validate,
)

log = logging.getLogger(__name__)


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
    return in_chunks(
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
        ap = average_precision(sim, v_pos, np.ones_like(v_pos))
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
    from refind.models.irm import load_head

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
