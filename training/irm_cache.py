"""The IRM training cache: every training crop rendered in ``VIEWS`` and run once through the
frozen backbone, with its attributes, captions and instructions (stage 1 of training/irm.py).

What goes in, and why, is step 1 of the training/irm.py docstring. The cache is one
``.npz`` that a machine without OpenVINO (a GPU box) can train from. The held-out PETS
identities are not in it (caches built before that change also held their original crops,
never read).

Example:
    >>> build_cache(Path("runs/irm/cache.npz"), store, TrainOptions(out=Path("runs/irm")))  # doctest: +SKIP
    >>> cache = Cache.load(Path("runs/irm/cache.npz"), torch.device("cpu"), ["pets:3"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from tqdm import tqdm

from refind.models.irm_cpu import DEFAULT_INSTRUCTIONS, INPUT_HW, TEACHER

if TYPE_CHECKING:
    from refind.training.irm import TrainOptions

log = logging.getLogger(__name__)

VIEWS: tuple[str, ...] = (
    "orig", "flip", "recolour_a", "recolour_b", "texture", "grey", "thermal", "upper",
)  # fmt: skip
V = {name: k for k, name in enumerate(VIEWS)}
CACHE_VERSION = 1
BACKBONE = TEACHER  # the frozen backbone trained on


def render_views(image: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The ``VIEWS`` of one crop, in order; ``rng`` drives the random augmentations."""
    from refind.datasets import irm as d

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
    from refind.datasets import irm as d

    captions, attr_texts = [], []
    for i, row in enumerate(agg_row):
        captions.append(
            [d.describe(agg, row, rng), d.describe(agg, row, rng), d.describe(attrs, i, rng)]
        )
        attr_texts.append([d.instruction_for("attribute_text", rng, agg, row) for _ in range(2)])
    return captions, attr_texts


def build_cache(path: Path, store: object, opts: TrainOptions) -> Path:
    """Write the training cache (step 1 of the training/irm.py docstring) to ``path``;
    returns it."""
    from refind.datasets import irm as d
    from refind.models.attributes import OpenVinoAttributes
    from refind.models.irm_embedder import OpenVinoBackbone
    from refind.models.minilm import MiniLmTokens

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
