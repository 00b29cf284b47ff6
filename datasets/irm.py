"""Training and evaluation data for the instruction-editable ReID model (IRM): crops, splits,
augmentations that create the instruction tasks, captions and instructions.

Sources of identities:

- PETS09-S2L1 ground truth (``load_pets_crops``): true identities ``"pets:<id>"``. The identities
  are split once by ``pets_identity_split`` into training and held-out ones; held-out identities
  are only ever used by ``refind datasets irm-eval``.
- Tracks of refind's own detector + tracker on another clip (``load_tracklet_crops``): weak
  identities ``"intel:<track>"`` (a track may hold an identity switch; a person may own two
  tracks).

Augmentations (all ``(image BGR uint8, rng) -> image BGR uint8`` of the same size, pure,
deterministic for a given ``numpy.random.Generator`` state) build the task queries:
``recolour_clothes`` and ``texture_swap`` (clothes-changing), ``to_greyscale`` and ``to_thermal``
(visible-infrared), ``upper_body`` / ``lower_body`` (clothes templates). They find the person in
the crop with ``person_mask``: pixels that differ from the crop's left and right borders (the
background beside the person), weighted towards the centre column. The top ``HEAD_FRAC`` of the
crop (head and hair) is never recoloured.

Captions (``describe``) are written from the attribute model's outputs by templates and name only
what the model is confident about; ``instruction_for`` words each task's instruction (both live in
``datasets/captions.py`` and are re-exported here).

Example:
    >>> train_ids, heldout_ids = pets_identity_split()
    >>> crops = load_pets_crops(train_ids)                             # doctest: +SKIP
    >>> q = recolour_clothes(crops[0].image, np.random.default_rng(0))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from refind.datasets.captions import aggregate_attributes, describe, instruction_for
from refind.datasets.pets_reid import (
    FRAME,
    ID,
    PetsReidOptions,
    decode_mot_frames,
    read_mot_gt,
    scaled_xyxy,
    usable_boxes,
    video_size,
)
from refind.models.base import TASKS
from refind.models.store import ModelStore
from refind.streaming.boxes import pixel_box

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PETS_DIR = REPO_ROOT / "../shared/data/pets09-s2l1"
PETS_VIDEO = PETS_DIR / "vtest.avi"
PETS_GT = PETS_DIR / "gt.txt"
INTEL_VIDEO = REPO_ROOT / "../shared/data/intel-sample-videos/one-by-one-person-detection.mp4"

HEAD_FRAC = 0.18  # top of a person crop kept as is by the clothes augmentations (head, hair)
TOP_END_FRAC = 0.58  # upper-body garment rows: HEAD_FRAC .. TOP_END_FRAC of the crop
BOTTOM_START_FRAC = 0.55  # lower-body garment rows: BOTTOM_START_FRAC .. 1

__all__ = [
    "INTEL_VIDEO", "PETS_GT", "PETS_VIDEO", "TASKS", "IdentityCrop", "aggregate_attributes",
    "describe", "instruction_for", "load_pets_crops", "load_tracklet_crops", "lower_body",
    "person_mask", "pets_identity_split", "recolour_clothes", "texture_swap", "to_greyscale",
    "to_thermal", "upper_body",
]  # fmt: skip


@dataclass(frozen=True)
class IdentityCrop:
    """One person crop with its identity: image (h, w, 3) uint8 BGR; identity "pets:7" or
    "intel:12"; camera; frame_index (0-based decoded frame); source ("pets-gt", "tracker")."""

    image: np.ndarray = field(repr=False)
    identity: str
    camera: str
    frame_index: int
    source: str

    def __post_init__(self) -> None:
        img = self.image
        if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3):
            raise ValueError(f"IdentityCrop {self.identity}: image must be (h, w, 3) BGR")
        if img.dtype != np.uint8 or min(img.shape[:2]) < 2:
            raise ValueError(f"IdentityCrop {self.identity}: bad image {img.shape} {img.dtype}")


# ---------------------------------------------------------------------------------------------
# Identities and crops


def pets_identity_split(gt: Path = PETS_GT) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(train_ids, heldout_ids) of PETS09-S2L1: the ground truth's ids sorted, every second one
    (2nd, 4th, ...) held out. With the 19 ids of gt.txt: train 1, 3, ..., 19; held out 2, 4, ...,
    18. Fixed: it never depends on a seed, and no id is in both."""
    ids = (
        sorted({int(i) for i in read_mot_gt(gt)[:, ID]})
        if Path(gt).is_file()
        else list(range(1, 20))
    )
    return tuple(ids[0::2]), tuple(ids[1::2])


def load_pets_crops(
    ids: Iterable[int],
    every_n_frames: int = 5,
    min_height: float = 48.0,
    video: Path = PETS_VIDEO,
    gt: Path = PETS_GT,
) -> list[IdentityCrop]:
    """Ground-truth crops of the given PETS identities on every ``every_n_frames``-th MOT frame.

    Boxes are kept by ``refind.datasets.pets_reid.usable_boxes`` (considered, not cut by the frame edge,
    at most 30 % covered by another person, at least ``min_height`` px tall).
    """
    plans = _pets_plans(set(ids), every_n_frames, min_height, Path(video), Path(gt))
    return [
        IdentityCrop(img, f"pets:{pid}", "pets09-s2l1", frame - 1, "pets-gt")
        for (pid, frame, _), img in zip(plans, cut_crops(Path(video), plans), strict=True)
    ]


def _pets_plans(
    ids: set[int], stride: int, min_height: float, video: Path, gt: Path
) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    opts = PetsReidOptions(stride=stride, min_height_px=min_height)
    rows = read_mot_gt(gt)
    wh = video_size(video)
    keep = usable_boxes(rows, wh, opts) & np.isin(rows[:, ID].astype(int), list(ids))
    xyxy = scaled_xyxy(rows[keep], opts.gt_scale)
    plans = [
        (int(r[ID]), int(r[FRAME]), pixel_box(b, wh[::-1]))
        for r, b in zip(rows[keep], xyxy, strict=True)
    ]
    return sorted(plans, key=lambda p: (p[1], p[0]))


def cut_crops(
    video: Path, plans: Sequence[tuple[int, int, tuple[int, int, int, int]]]
) -> list[np.ndarray]:
    """Crops (copies) of ``(identity, 1-based MOT frame, xyxy)`` plans, decoding ``video`` once.

    The same frame convention as ``refind.datasets.pets_reid.write_crops`` (MOT frame N = decoded N-1)."""
    by_frame: dict[int, list[int]] = {}
    for k, (_, frame, _) in enumerate(plans):
        by_frame.setdefault(frame, []).append(k)
    out: list[np.ndarray | None] = [None] * len(plans)
    for mot_frame, image in decode_mot_frames(video, max(by_frame, default=0)):
        for k in by_frame.pop(mot_frame, []):
            x1, y1, x2, y2 = plans[k][2]
            out[k] = np.ascontiguousarray(image[y1:y2, x1:x2])
    if by_frame:
        raise ValueError(f"{video} ended before ground-truth frame {min(by_frame)}")
    return out  # type: ignore[return-value]


def load_tracklet_crops(
    video: Path,
    store: ModelStore,
    max_frames: int | None = None,
    every_n_frames: int = 5,
    min_crops: int = 4,
    min_height: float = 48.0,
) -> list[IdentityCrop]:
    """Weak identities: crops of the tracks of refind's detector + tracker (default config) on
    ``video``, one crop per track every ``every_n_frames`` frames; tracks with fewer than
    ``min_crops`` crops of at least ``min_height`` px are dropped."""
    from refind.config import RefindConfig
    from refind.models.config import OpenVinoReidConfig
    from refind.models.openvino_reid import OpenVinoReidEmbedder
    from refind.models.registry import build_detector
    from refind.streaming.boxes import box_pixels
    from refind.streaming.pipeline import CameraPipeline
    from refind.streaming.sources import VideoSource

    cfg = RefindConfig()
    camera = Path(video).stem
    pipe = CameraPipeline(  # the ingest stage loop; the tracker's ReID is 0277 whatever is set
        camera, cfg.tracker, cfg.crops, build_detector(cfg.detector, store),
        OpenVinoReidEmbedder(OpenVinoReidConfig(), store),
        detector_batch=cfg.detector.batch_size, select_crops=False,
    )
    per_track: dict[int, list[IdentityCrop]] = {}
    frames = itertools.islice(iter(VideoSource(video, camera=camera)), max_frames)
    for result in pipe.run(frames):
        frame, tracks = result.frame, result.tracks
        if frame is None or tracks is None or frame.index % every_n_frames:
            continue
        for tid, xyxy in zip(tracks.track_id.tolist(), tracks.xyxy, strict=True):
            if xyxy[3] - xyxy[1] < min_height:
                continue
            crop = np.ascontiguousarray(box_pixels(frame.image, xyxy))
            per_track.setdefault(tid, []).append(
                IdentityCrop(crop, f"intel:{tid}", camera, frame.index, "tracker")
            )
    return [c for crops in per_track.values() if len(crops) >= min_crops for c in crops]


# ---------------------------------------------------------------------------------------------
# Augmentations


def person_mask(image: np.ndarray) -> np.ndarray:
    """(h, w) float32 in [0, 1]: how much each pixel looks like the person, not the background.

    The background of each row is the median of the crop's outer columns (a ground-truth or
    detector box has a little background on both sides); a pixel's distance from it in Lab,
    weighted by a centre-column prior, gives the mask, then closed and smoothed."""
    h, w = image.shape[:2]
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).astype(np.float32)  # (h, w, 3)
    edge = max(1, w // 10)
    border = np.concatenate([lab[:, :edge], lab[:, w - edge :]], axis=1)  # (h, 2e, 3)
    bg = np.median(border, axis=1, keepdims=True)  # (h, 1, 3)
    kh = max(3, (h // 15) | 1)
    bg = cv2.GaussianBlur(bg, (1, kh), 0).reshape(h, 1, 3)  # smooth the background down the rows
    dist = np.linalg.norm((lab - bg) * np.array([0.6, 1.0, 1.0], np.float32), axis=2)  # (h, w)
    x = (np.arange(w, dtype=np.float32) - (w - 1) / 2) / max(w / 2, 1)
    prior = np.exp(-0.5 * (x / 0.5) ** 2)[None, :]  # (1, w) people stand in the middle
    score = np.clip((dist - 12.0) / 20.0, 0, 1) * prior  # (h, w)
    # GrabCut refines the colour-distance guess: outer columns are background for sure.
    gc = np.where(score > 0.5, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    gc[:, :edge] = gc[:, w - edge :] = cv2.GC_BGD
    gc[int(h * 0.25) : int(h * 0.5), max(edge, int(w * 0.45)) : max(edge + 1, int(w * 0.55))] = (
        cv2.GC_FGD  # the middle of the torso
    )
    try:
        cv2.grabCut(image, gc, None, np.zeros((1, 65)), np.zeros((1, 65)), 3, cv2.GC_INIT_WITH_MASK)  # type: ignore[call-overload]
        hard = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        hard = np.maximum(hard, (score > 0.75).astype(np.float32))  # legs GrabCut lets go
    except cv2.error:  # a crop too small or too uniform for GrabCut
        hard = (score > 0.5).astype(np.float32)
    k = max(3, (min(h, w) // 10) | 1)
    return np.clip(cv2.GaussianBlur(hard, (k, k), 0), 0, 1).astype(np.float32)


def _region_weights(h: int, start: float, end: float, soft: float = 0.04) -> np.ndarray:
    """(h, 1) float32 rows ``start..end`` (fractions) at 1, ramping to 0 over ``soft``."""
    y = (np.arange(h, dtype=np.float32) + 0.5) / h
    up = np.clip((y - start) / soft + 0.5, 0, 1)
    down = np.clip((end - y) / soft + 0.5, 0, 1)
    return (up * down)[:, None]


def _recolour(image: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint ``weight`` (h, w) of ``image`` a random new colour, keeping its shading."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.float32)
    v = hsv[..., 2] / 255.0
    mean_v = float((v * weight).sum() / max(weight.sum(), 1e-6))
    target_v = rng.uniform(0.12, 0.9)  # dark clothes may turn light and the reverse
    shading = np.clip(v - mean_v, -0.5, 0.5)
    new = np.empty_like(hsv)
    new[..., 0] = rng.uniform(0, 180)
    new[..., 1] = 255 * (rng.uniform(0.0, 0.15) if rng.random() < 0.25 else rng.uniform(0.45, 1))
    new[..., 2] = 255 * np.clip(target_v + 0.8 * shading, 0, 1)
    out = cv2.cvtColor(new.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    a = weight[..., None]
    return (image.astype(np.float32) * (1 - a) + out * a).round().clip(0, 255).astype(np.uint8)


def recolour_clothes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same person, other clothes colours: top and bottom garments each get a new hue,
    saturation and brightness (shading kept); the top ``HEAD_FRAC`` rows and the background stay.
    One of the two garments is sometimes left as it was."""
    h = image.shape[0]
    mask = person_mask(image)
    out = image
    which = rng.choice(["both", "both", "top", "bottom"])
    if which in ("both", "top"):
        out = _recolour(out, mask * _region_weights(h, HEAD_FRAC + 0.02, BOTTOM_START_FRAC), rng)
    if which in ("both", "bottom"):
        out = _recolour(out, mask * _region_weights(h, BOTTOM_START_FRAC, 1.04), rng)
    return out


def _pattern(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32 BGR stripes or checks in two random colours."""
    period = rng.uniform(4, max(5.0, h / 8))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.choice(["hstripes", "vstripes", "checks", "diagonal"])
    if kind == "hstripes":
        on = (yy // (period / 2)) % 2
    elif kind == "vstripes":
        on = (xx // (period / 2)) % 2
    elif kind == "checks":
        on = ((yy // (period / 2)) + (xx // (period / 2))) % 2
    else:
        on = ((xx + yy) // (period / 2)) % 2
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return np.where(on[..., None] > 0, c1, c2).astype(np.float32)


def texture_swap(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same person, patterned clothes: stripes or checks over the torso and/or legs, modulated
    by the garment's shading; the head rows and background stay."""
    h, w = image.shape[:2]
    mask = person_mask(image)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    shade = np.clip(0.55 + (grey - grey.mean()), 0.3, 1.2)[..., None]
    out = image.astype(np.float32)
    regions = {"top": (HEAD_FRAC + 0.02, BOTTOM_START_FRAC), "bottom": (BOTTOM_START_FRAC, 1.04)}
    chosen = rng.choice(["both", "top", "bottom"])
    for name, (start, end) in regions.items():
        if chosen not in ("both", name):
            continue
        a = (mask * _region_weights(h, start, end) * rng.uniform(0.7, 0.95))[..., None]
        out = out * (1 - a) + np.clip(_pattern(h, w, rng) * shade * 1.3, 0, 255) * a
    return out.round().clip(0, 255).astype(np.uint8)


def to_greyscale(image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The crop in grey (three equal channels), like a night-mode camera."""
    del rng
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def to_thermal(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An infrared-like rendering: grey, the person warmer (brighter) than the background,
    clothes texture washed out, blurred, sensor noise; sometimes inverted ("black hot")."""
    h = image.shape[0]
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    mask = person_mask(image)
    head = _region_weights(h, -0.1, HEAD_FRAC + 0.03)  # skin is the warmest
    body_heat = rng.uniform(0.55, 0.8) + 0.15 * head
    texture = rng.uniform(0.25, 0.5)  # how much of the visible texture survives
    fg_mean = float((grey * mask).sum() / max(mask.sum(), 1e-6))
    bg_mean = float((grey * (1 - mask)).sum() / max((1 - mask).sum(), 1e-6))
    bg = rng.uniform(0.1, 0.3) + texture * (grey - bg_mean)
    fg = body_heat + texture * (grey - fg_mean)
    heat = bg * (1 - mask) + fg * mask
    sigma = max(0.5, rng.uniform(0.004, 0.012) * h)
    heat = cv2.GaussianBlur(heat.astype(np.float32), (0, 0), sigma)
    heat += rng.normal(0, rng.uniform(0.005, 0.025), heat.shape).astype(np.float32)
    if rng.random() < 0.25:
        heat = 1.0 - heat
    out = (np.clip(heat, 0, 1) * 255).round().astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)


def upper_body(image: np.ndarray) -> np.ndarray:
    """The upper-body garment (rows ``HEAD_FRAC`` .. ``TOP_END_FRAC``): a clothes template."""
    h = image.shape[0]
    return np.ascontiguousarray(image[round(h * HEAD_FRAC) : max(round(h * TOP_END_FRAC), 2)])


def lower_body(image: np.ndarray) -> np.ndarray:
    """The lower-body garment (rows ``BOTTOM_START_FRAC`` .. end)."""
    h = image.shape[0]
    return np.ascontiguousarray(image[min(round(h * BOTTOM_START_FRAC), h - 2) :])
