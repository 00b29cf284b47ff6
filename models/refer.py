"""Our small referring re-ranker (RexSeek-style): which of these people does the sentence mean?

Region tokens are cheap features of each candidate: the OMZ 0230 attribute probabilities, its top
and bottom clothing colours (CIE Lab and colour-name one-hots), and the box geometry normalised
by the region's own frame (x1, y1, x2, y2, centre, size; among the regions of its ``group``: rank
from the left, by size, from the top and by the feet, size relative to the largest, distance to
the nearest other person). Text tokens are the frozen MiniLM (all-MiniLM-L6-v2) last hidden
states. A small transformer reads [text tokens, region tokens, a NONE token]; each region gets a
sigmoid score (several may be selected) and the NONE token a rejection score (nobody matches).

Example:
    >>> rr = ReferReranker.from_store(store)                                  # doctest: +SKIP
    >>> rr("the leftmost person", regions).selected                           # doctest: +SKIP
    array([ True, False, False])
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from refind.models.base import (
    ATTRIBUTE_NAMES,
    AttributeModel,
    PersonAttributes,
    Region,
    RerankResult,
)
from refind.models.colours import COLOUR_NAMES, colour_onehots, name_colour
from refind.models.minilm import TEXT_DIM, MiniLmTokens

log = logging.getLogger(__name__)

MODEL_NAME = "refer-pets-v1"
APPEARANCE_DIM = len(ATTRIBUTE_NAMES) + 3 + 3 + 2 * len(COLOUR_NAMES)  # 36
GEOMETRY_DIM = 15
REGION_DIM = APPEARANCE_DIM + GEOMETRY_DIM  # 51


@dataclass(frozen=True)
class ReferConfig:
    """Architecture and decision thresholds; saved in the weights file's metadata."""

    d_model: int = 128
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    region_threshold: float = 0.5
    none_threshold: float = 0.5
    max_text_tokens: int = 32


def _lab(bgr: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 BGR -> (n, 3) float32 Lab scaled to about 0..1."""
    lab = cv2.cvtColor(bgr.reshape(-1, 1, 3).astype(np.uint8), cv2.COLOR_BGR2LAB)
    return lab.reshape(-1, 3).astype(np.float32) / 255.0


def appearance_features(attrs: PersonAttributes) -> np.ndarray:
    """(n, APPEARANCE_DIM) float32: probs, top Lab, bottom Lab, top / bottom colour one-hots."""
    onehot = colour_onehots(attrs.top_colour, attrs.bottom_colour)  # (n, 2 * colours)
    return np.concatenate(
        [attrs.probs.astype(np.float32), _lab(attrs.top_bgr), _lab(attrs.bottom_bgr), onehot],
        axis=1,
    )


def apply_overrides(attrs: PersonAttributes, overrides: Sequence[dict | None]) -> PersonAttributes:
    """Replace attribute-model outputs as a TRAIN record's ``overrides`` say (feature recolouring)."""
    probs, top, bottom = attrs.probs.copy(), attrs.top_bgr.copy(), attrs.bottom_bgr.copy()
    for i, ov in enumerate(overrides):
        if not ov:
            continue
        if "top_bgr" in ov:
            top[i] = ov["top_bgr"]
        if "bottom_bgr" in ov:
            bottom[i] = ov["bottom_bgr"]
        for name, p in ov.get("probs", {}).items():
            probs[i, ATTRIBUTE_NAMES.index(name)] = p
    return PersonAttributes(
        probs, top, bottom, tuple(name_colour(c) for c in top), tuple(name_colour(c) for c in bottom)
    )


def geometry_features(
    xyxy: np.ndarray, frame_wh: Sequence[tuple[int, int]], groups: Sequence[int]
) -> np.ndarray:
    """(n, GEOMETRY_DIM) float32 from (n, 4) boxes, each region's frame size and group."""
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    wh = np.asarray(frame_wh, np.float32).reshape(-1, 2)
    b = xyxy / np.concatenate([wh, wh], axis=1)  # (n, 4) in 0..1 of the frame
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    out = np.zeros((len(b), GEOMETRY_DIM), np.float32)
    out[:, :8] = np.stack([b[:, 0], b[:, 1], b[:, 2], b[:, 3], cx, cy, w, h], axis=1)
    groups_arr = np.asarray(groups)
    for g in np.unique(groups_arr):
        idx = np.flatnonzero(groups_arr == g)
        k = len(idx)
        rank_x = np.argsort(np.argsort(cx[idx])) / max(k - 1, 1)
        rank_h = np.argsort(np.argsort(-h[idx])) / max(k - 1, 1)
        feet = np.stack([cx[idx], b[idx, 3]], axis=1)  # (k, 2)
        d = np.linalg.norm(feet[:, None] - feet[None], axis=2) + np.eye(k) * 1e6  # (k, k)
        nearest = d.min(axis=1) / np.maximum(h[idx], 1e-3) if k > 1 else np.full(k, 3.0)
        out[idx, 8] = rank_x if k > 1 else 0.5
        out[idx, 9] = rank_h if k > 1 else 0.5
        out[idx, 10] = h[idx] / max(h[idx].max(), 1e-6)
        out[idx, 11] = min(k, 10) / 10
        out[idx, 12] = np.minimum(nearest, 3.0) / 3.0
        out[idx, 13] = np.argsort(np.argsort(cy[idx])) / max(k - 1, 1) if k > 1 else 0.5
        out[idx, 14] = np.argsort(np.argsort(-b[idx, 3])) / max(k - 1, 1) if k > 1 else 0.5
    return out


def region_features(regions: Sequence[Region], attrs: PersonAttributes) -> np.ndarray:
    """(n, REGION_DIM) float32 region tokens' inputs."""
    geo = geometry_features(
        np.array([r.xyxy for r in regions], np.float32),
        [r.frame_wh for r in regions],
        [r.group for r in regions],
    )
    return np.concatenate([appearance_features(attrs), geo], axis=1)


class ReferNet(nn.Module):
    """Transformer over [text tokens, region tokens, NONE]: region logits and a NONE logit."""

    def __init__(self, cfg: ReferConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.text_proj = nn.Linear(TEXT_DIM, d)
        self.region_proj = nn.Sequential(nn.Linear(REGION_DIM, d), nn.GELU(), nn.Linear(d, d))
        self.type_emb = nn.Embedding(3, d)  # 0 text, 1 region, 2 none
        self.none_token = nn.Parameter(torch.zeros(1, 1, d))
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        # Region score from the region state and its product with the pooled text: the product
        # makes "this word -> that feature direction" easy to learn (sizes, heights, colours).
        self.region_head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 1))
        self.none_head = nn.Linear(d, 1)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, regions: torch.Tensor,
                region_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text (B, L, 384), text_mask (B, L), regions (B, N, F), region_mask (B, N) -> (B, N), (B,)."""
        bsz, length, n = text.shape[0], text.shape[1], regions.shape[1]
        t = self.text_proj(text) + self.type_emb.weight[0]  # (B, L, d)
        r = self.region_proj(regions) + self.type_emb.weight[1]  # (B, N, d)
        none = self.none_token.expand(bsz, 1, -1) + self.type_emb.weight[2]  # (B, 1, d)
        x = torch.cat([t, r, none], dim=1)  # (B, L + N + 1, d)
        valid = torch.cat([text_mask, region_mask, torch.ones(bsz, 1, dtype=torch.bool)], dim=1)
        h = self.norm(self.encoder(x, src_key_padding_mask=~valid))  # (B, L + N + 1, d)
        tm = text_mask.unsqueeze(-1).float()  # (B, L, 1)
        text_pool = (h[:, :length] * tm).sum(1) / tm.sum(1).clamp(min=1.0)  # (B, d)
        hr = h[:, length : length + n]  # (B, N, d)
        pair = torch.cat([hr, hr * text_pool.unsqueeze(1)], dim=-1)  # (B, N, 2d)
        region_logits = self.region_head(pair).squeeze(-1)  # (B, N)
        none_logit = self.none_head(h[:, -1]).squeeze(-1)  # (B,)
        return region_logits.masked_fill(~region_mask, -1e4), none_logit


def decide(scores: np.ndarray, none_score: float, cfg: ReferConfig) -> np.ndarray:
    """(n,) bool: regions at or over the threshold, unless the NONE score says nobody."""
    if none_score >= cfg.none_threshold:
        return np.zeros(len(scores), bool)
    return scores >= cfg.region_threshold


def save_weights(net: ReferNet, cfg: ReferConfig, path: Path, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    meta = {"config": json.dumps(asdict(cfg)), "region_dim": str(REGION_DIM),
            "extra": json.dumps(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=meta)


def load_weights(path: Path) -> tuple[ReferNet, ReferConfig]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta or int(meta.get("region_dim", -1)) != REGION_DIM:
        raise ValueError(f"{path} is not a refer re-ranker weights file of this version "
                         f"(needs metadata config and region_dim {REGION_DIM})")
    cfg = ReferConfig(**json.loads(meta["config"]))
    net = ReferNet(cfg)
    net.load_state_dict(load_file(str(path)))
    return net.eval(), cfg


class ReferReranker:
    """refind.models.base.Reranker: scores, multi-selects or rejects candidate people for a sentence."""

    name = "refer"

    def __init__(self, net: ReferNet, cfg: ReferConfig, attributes: AttributeModel,
                 text: MiniLmTokens, model_id: str = MODEL_NAME) -> None:
        self.net, self.cfg, self.attributes, self.text = net.eval(), cfg, attributes, text
        self.model_id = model_id

    @classmethod
    def from_store(cls, store: object, attributes: AttributeModel | None = None,
                   text: MiniLmTokens | None = None) -> ReferReranker:
        """Load ``refer-pets-v1`` through the model store (bundled in models/weights/)."""
        from refind.models.attributes import OpenVinoAttributes

        resolved = store.resolve(MODEL_NAME)  # type: ignore[attr-defined]
        net, cfg = load_weights(resolved.path)
        return cls(net, cfg, attributes or OpenVinoAttributes(store),  # type: ignore[arg-type]
                   text or MiniLmTokens(max_tokens=cfg.max_text_tokens), resolved.model_id)

    def scores(self, expressions: Sequence[str], feats: Sequence[np.ndarray],
               ) -> tuple[list[np.ndarray], np.ndarray]:
        """Per expression: (n_i,) region probabilities; and (B,) NONE probabilities."""
        text, text_mask = self.text.padded(expressions)
        n = max(max(len(f) for f in feats), 1)
        regions = torch.zeros(len(feats), n, REGION_DIM)
        mask = torch.zeros(len(feats), n, dtype=torch.bool)
        for i, f in enumerate(feats):
            regions[i, : len(f)] = torch.from_numpy(f)
            mask[i, : len(f)] = True
        with torch.no_grad():
            logits, none = self.net(text, text_mask, regions, mask)
        probs = torch.sigmoid(logits).numpy()
        return [probs[i, : len(f)] for i, f in enumerate(feats)], torch.sigmoid(none).numpy()

    def __call__(self, expression: str, regions: Sequence[Region]) -> RerankResult:
        if not regions:
            return RerankResult(np.zeros(0, np.float32), np.zeros(0, bool), ())
        feats = region_features(regions, self.attributes([r.crop for r in regions]))
        (scores,), none = self.scores([expression], [feats])
        selected = decide(scores, float(none[0]), self.cfg)
        if not selected.any():
            why = f"nobody matches (none {none[0]:.2f})"
            reasons = tuple(f"score {s:.2f}; {why}" for s in scores)
        else:
            reasons = tuple(f"score {s:.2f}" + (" selected" if k else "")
                            for s, k in zip(scores, selected, strict=True))
        return RerankResult(scores.astype(np.float32), selected, reasons)
