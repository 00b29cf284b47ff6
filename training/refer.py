"""Train the referring re-ranker (``refind train refer``) on a TRAIN annotation file.

The TRAIN file (``refind datasets refer``: PETS frames 1-400) is split by frame: frames up
to ``holdout_from - 1`` fit the network, frames from ``holdout_from`` on choose the two decision
thresholds (region score, NONE score) by a grid search. DEV (frames 401-795) is never read here.
Region features are computed once per image (0230 on each box's crop), the MiniLM states once per
sentence; records' ``overrides`` (feature-level recolouring, ``refind.datasets.refer.augment``) are
applied on top. Loss: binary cross-entropy per region plus binary cross-entropy of the NONE
token against "nobody matches".

Example:
    >>> train_refer(Path("/tmp/refer/train.jsonl"), Path("out"), store)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from refind.evaluation.refer import ReferItem, _regions, read_annotations, summarise
from refind.models.base import AttributeModel, PersonAttributes
from refind.models.minilm import MiniLmTokens
from refind.models.refer import (
    REGION_DIM,
    ReferConfig,
    ReferNet,
    appearance_features,
    apply_overrides,
    decide,
    geometry_features,
    save_weights,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 25
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    holdout_from: int = 341  # TRAIN frames >= this choose the thresholds
    seed: int = 0
    threads: int = 1  # measured: 1 thread ran 5x faster than 2 on the shared 2-core machine


def item_features(items: list[ReferItem], attributes: AttributeModel,
                  progress: bool = True) -> list[np.ndarray]:
    """(n_i, REGION_DIM) features per item; the attribute model runs once per image."""
    per_crops: dict[tuple, PersonAttributes] = {}
    frame_wh: dict[Path, tuple[int, int]] = {}
    out = []
    for item in tqdm(items, desc="features", unit="expr", disable=not progress):
        crop_boxes = np.asarray(item.extra.get("crop_boxes", item.boxes), np.float32)
        key = (item.image, crop_boxes.round(1).tobytes())
        if key not in per_crops:
            image = cv2.imread(str(item.image))
            if image is None:
                raise ValueError(f"line {item.line}: {item.image} is not an image")
            frame_wh[item.image] = (image.shape[1], image.shape[0])
            per_crops[key] = attributes([r.crop for r in _regions(image, crop_boxes)])
        attrs = per_crops[key]
        geo = geometry_features(item.boxes, [frame_wh[item.image]] * len(item.boxes),
                                [0] * len(item.boxes))
        if item.extra.get("overrides"):
            attrs = apply_overrides(attrs, item.extra["overrides"])
        out.append(np.concatenate([appearance_features(attrs), geo], axis=1))
    return out


def _batch(idx: np.ndarray, items: list[ReferItem], feats: list[np.ndarray], text: MiniLmTokens,
           ) -> tuple[torch.Tensor, ...]:
    t, t_mask = text.padded([items[i].expression for i in idx])
    n = max(len(feats[i]) for i in idx)
    regions = torch.zeros(len(idx), n, REGION_DIM)
    mask = torch.zeros(len(idx), n, dtype=torch.bool)
    labels = torch.zeros(len(idx), n)
    none = torch.zeros(len(idx))
    for row, i in enumerate(idx):
        regions[row, : len(feats[i])] = torch.from_numpy(feats[i])
        mask[row, : len(feats[i])] = True
        labels[row, list(items[i].targets)] = 1.0
        none[row] = float(not items[i].targets)
    return t, t_mask, regions, mask, labels, none


def predict(net: ReferNet, items: list[ReferItem], feats: list[np.ndarray], text: MiniLmTokens,
            ) -> tuple[list[np.ndarray], np.ndarray]:
    """Region probabilities per item and NONE probabilities (B,), in eval mode."""
    net.eval()
    scores, nones = [], []
    with torch.no_grad():
        for start in range(0, len(items), 256):
            idx = np.arange(start, min(start + 256, len(items)))
            t, t_mask, regions, mask, _, _ = _batch(idx, items, feats, text)
            logits, none = net(t, t_mask, regions, mask)
            probs = torch.sigmoid(logits).numpy()
            scores += [probs[k, : len(feats[i])] for k, i in enumerate(idx)]
            nones.append(torch.sigmoid(none).numpy())
    return scores, np.concatenate(nones)


def choose_thresholds(items: list[ReferItem], scores: list[np.ndarray], nones: np.ndarray,
                      cfg: ReferConfig) -> tuple[ReferConfig, dict]:
    """Grid-search (region, NONE) thresholds for the best mean of DensityF1 and rejection rate,
    weighted by how many expressions have targets / none."""
    best: tuple[float, ReferConfig, dict] | None = None
    grid = np.round(np.arange(0.2, 0.85, 0.05), 2)
    for rt in grid:
        for nt in grid:
            c = replace(cfg, region_threshold=float(rt), none_threshold=float(nt))
            pairs = [(it.boxes[list(it.targets)], it.boxes[decide(s, float(n), c)])
                     for it, s, n in zip(items, scores, nones, strict=True)]
            m = summarise(pairs)
            frac = m["n_no_target"] / m["n_expressions"]
            value = (1 - frac) * m["density_f1"] + frac * m["rejection_rate"]
            if best is None or value > best[0]:
                best = (value, c, m)
    assert best is not None
    return best[1], best[2]


def train_refer(annotations: Path, out_dir: Path, attributes: AttributeModel,
                opts: TrainOptions | None = None, cfg: ReferConfig | None = None,
                text: MiniLmTokens | None = None, progress: bool = True) -> dict:
    """Train, pick thresholds on the held-out TRAIN frames, save ``out_dir/refer-pets-v1``."""
    opts, cfg = opts or TrainOptions(), cfg or ReferConfig()
    torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    started = time.perf_counter()
    items = read_annotations(annotations)
    frames = [int(it.extra.get("frame", 0)) for it in items]
    fit = [it for it, f in zip(items, frames, strict=True) if f < opts.holdout_from]
    held = [it for it, f in zip(items, frames, strict=True) if f >= opts.holdout_from
            and not it.extra.get("overrides")]
    if not fit or not held:
        raise ValueError(f"{annotations}: need records with 'frame' both below and from "
                         f"{opts.holdout_from} to fit and to choose thresholds")
    text = text or MiniLmTokens(max_tokens=cfg.max_text_tokens)
    fit_feats = item_features(fit, attributes, progress)
    held_feats = item_features(held, attributes, progress)
    net = ReferNet(cfg)
    optim = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    steps = opts.epochs * int(np.ceil(len(fit) / opts.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, opts.lr, total_steps=steps)
    losses = []
    bar = tqdm(total=steps, desc="train refer", unit="step", disable=not progress)
    for _ in range(opts.epochs):
        net.train()
        order = rng.permutation(len(fit))
        for start in range(0, len(fit), opts.batch_size):
            idx = order[start : start + opts.batch_size]
            loss = step_loss(net, _batch(idx, fit, fit_feats, text))
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    scores, nones = predict(net, held, held_feats, text)
    cfg, held_metrics = choose_thresholds(held, scores, nones, cfg)
    report = {"train_expressions": len(fit), "holdout_expressions": len(held),
              "epochs": opts.epochs, "final_loss": float(np.mean(losses[-20:])),
              "first_loss": float(np.mean(losses[:20])), "holdout": held_metrics,
              "config": asdict(cfg), "options": asdict(opts),
              "seconds": round(time.perf_counter() - started, 1)}
    path = Path(out_dir) / "refer-pets-v1.safetensors"
    save_weights(net, cfg, path, {"annotations": str(annotations), "text_model": text.model_id})
    report["weights"] = str(path)
    (Path(out_dir) / "refer-pets-v1.train.json").write_text(json.dumps(report, indent=2))
    log.info("refer re-ranker trained in %.0f s: holdout DensityF1 %.3f, rejection %.3f -> %s",
             report["seconds"], held_metrics["density_f1"], held_metrics["rejection_rate"], path)
    return report


def step_loss(net: ReferNet, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """BCE over real regions + BCE of the NONE token."""
    t, t_mask, regions, mask, labels, none = batch
    logits, none_logit = net(t, t_mask, regions, mask)
    region_loss = F.binary_cross_entropy_with_logits(logits[mask], labels[mask])
    return region_loss + F.binary_cross_entropy_with_logits(none_logit, none)
