"""Build a ReID query / gallery split from PETS09-S2L1 ground-truth boxes.

Writes ``OUT/query/<id>/f<frame>.jpg`` and ``OUT/gallery/<id>/f<frame>.jpg`` (``<frame>`` is the
1-based MOT frame number, four digits) for use with ``refind.evaluation.reid.evaluate_reid``.

Which boxes become crops (all thresholds in ``PetsReidOptions``):

1. Rows with flag 0 (MOT15 "not considered") are dropped; boxes are scaled by ``gt_scale`` from
   the 768x576 annotation frame to the video frame.
2. A box is dropped when it is lower than ``min_height_px``, closer than ``edge_margin_px`` to a
   frame edge (cut by the edge), or more than ``max_overlap`` of its area is covered by any other
   ground-truth box of the same frame, flag 0 boxes included (the crop would show two people).
3. Only frames that are multiples of ``stride`` are sampled.

The split, per identity, on its sampled frames ``S`` (sorted):

- The query window starts at a frame ``s`` of ``S`` drawn with ``numpy.random.default_rng([seed,
  id])`` and holds the frames of ``S`` in ``[s, s + query_span)``.
- The gallery is every frame ``f`` of ``S`` with ``f <= first_query - min_gap`` or
  ``f >= last_query + min_gap``: every query crop is at least ``min_gap`` frames from every gallery
  crop of the same identity, and never the same frame (even with ``min_gap`` 0). Frames inside
  the gap are not used.
- Only starts that leave at least one gallery frame are drawn from. An identity with no such start
  (its usable frames span less than ``min_gap``) goes to the gallery only, as a distractor.

Example:
    >>> build_pets_reid(Path("vtest.avi"), Path("gt.txt"), Path("reid"))   # doctest: +SKIP
    {'identities': 19, 'n_query': ..., 'n_gallery': ..., ...}
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from refind.streaming.boxes import pixel_box

log = logging.getLogger(__name__)

# MOT15 gt.txt columns used here.
FRAME, ID, X, Y, W, H, FLAG = range(7)


@dataclass(frozen=True)
class PetsReidOptions:
    """Thresholds of the PETS ReID split; see the module docstring for the rule."""

    gt_scale: float = 0.625
    min_gap: int = 60
    stride: int = 10
    query_span: int = 30
    min_height_px: float = 32.0
    edge_margin_px: float = 2.0
    max_overlap: float = 0.3
    seed: int = 0
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        checks = {
            "gt_scale": self.gt_scale > 0,
            "min_gap": self.min_gap >= 0,
            "stride": self.stride >= 1,
            "query_span": self.query_span >= 1,
            "min_height_px": self.min_height_px >= 0,
            "edge_margin_px": self.edge_margin_px >= 0,
            "max_overlap": 0 <= self.max_overlap <= 1,
            "jpeg_quality": 1 <= self.jpeg_quality <= 100,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"PetsReidOptions.{name} out of range: {getattr(self, name)!r}")


@dataclass(frozen=True)
class CropPlan:
    """One crop to write: identity, 1-based frame, box (x1, y1, x2, y2) px, 'query' or 'gallery'."""

    identity: int
    frame: int
    xyxy: tuple[int, int, int, int]
    role: str


def read_mot_gt(path: Path) -> np.ndarray:
    """MOT15 ground truth as an (n, 7) float64 array: frame, id, x, y, w, h, flag."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ground-truth file {path} does not exist")
    try:
        rows = np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as err:
        raise ValueError(f"{path} is not a MOT ground-truth file: {err}") from None
    if rows.shape[0] == 0 or rows.shape[1] < 7:
        raise ValueError(
            f"{path}: expected rows 'frame,id,x,y,w,h,flag,...', got shape {rows.shape}"
        )
    return rows[:, :7]


def scaled_xyxy(gt: np.ndarray, scale: float) -> np.ndarray:
    """(n, 4) float64 boxes x1, y1, x2, y2 in video pixels."""
    x, y, w, h = (gt[:, c] * scale for c in (X, Y, W, H))
    return np.stack([x, y, x + w, y + h], axis=1)


def max_overlap(xyxy: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """(n,) largest fraction of each box's area covered by another box of the same frame."""
    out = np.zeros(len(xyxy))
    for frame in np.unique(frames):
        idx = np.flatnonzero(frames == frame)
        b = xyxy[idx]  # (k, 4)
        iw = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
        ih = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)  # (k, k)
        np.fill_diagonal(inter, 0.0)
        area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)  # (k,)
        out[idx] = (inter / area[:, None]).max(axis=1)
    return out


def usable_boxes(gt: np.ndarray, frame_wh: tuple[int, int], opts: PetsReidOptions) -> np.ndarray:
    """(n,) bool: considered, sampled, tall enough, inside the frame and not occluded."""
    xyxy = scaled_xyxy(gt, opts.gt_scale)
    width, height = frame_wh
    m = opts.edge_margin_px
    inside = (
        (xyxy[:, 0] >= m)
        & (xyxy[:, 1] >= m)
        & (xyxy[:, 2] <= width - m)
        & (xyxy[:, 3] <= height - m)
    )
    return (
        (gt[:, FLAG] != 0)
        & (gt[:, FRAME].astype(int) % opts.stride == 0)
        & (xyxy[:, 3] - xyxy[:, 1] >= opts.min_height_px)
        & inside
        & (max_overlap(xyxy, gt[:, FRAME]) <= opts.max_overlap)
    )


def split_track(
    frames: np.ndarray, min_gap: int, query_span: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split one identity's sorted frames into (query, gallery) frames by the module's rule."""
    frames = np.sort(np.asarray(frames, dtype=int))
    valid = []
    for s in frames:
        query = frames[(frames >= s) & (frames < s + query_span)]
        far = (frames <= query[0] - min_gap) | (frames >= query[-1] + min_gap)
        gallery = frames[far & ~np.isin(frames, query)]  # min_gap 0 must not reuse a query frame
        if len(gallery):
            valid.append((query, gallery))
    if not valid:
        return frames[:0], frames
    return valid[int(rng.integers(len(valid)))]


def plan_crops(gt: np.ndarray, frame_wh: tuple[int, int], opts: PetsReidOptions) -> list[CropPlan]:
    """Every crop of the split, sorted by frame."""
    keep = usable_boxes(gt, frame_wh, opts)
    rows, xyxy = gt[keep], scaled_xyxy(gt[keep], opts.gt_scale)
    plans: list[CropPlan] = []
    for identity in np.unique(rows[:, ID]).astype(int):
        mine = np.flatnonzero(rows[:, ID] == identity)
        rng = np.random.default_rng([opts.seed, identity])
        query, gallery = split_track(rows[mine, FRAME], opts.min_gap, opts.query_span, rng)
        query, gallery = set(query.tolist()), set(gallery.tolist())
        for i in mine:
            frame = int(rows[i, FRAME])
            role = "query" if frame in query else "gallery" if frame in gallery else None
            if role:
                plans.append(CropPlan(identity, frame, pixel_box(xyxy[i], frame_wh[::-1]), role))
    return sorted(plans, key=lambda p: (p.frame, p.identity))


def video_size(video: Path) -> tuple[int, int]:
    """(width, height) of the first video stream."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        return int(stream.codec_context.width), int(stream.codec_context.height)


def decode_mot_frames(video: Path, last_mot_frame: int) -> Iterator[tuple[int, np.ndarray]]:
    """(1-based MOT frame, (H, W, 3) uint8 BGR image) of ``video`` up to ``last_mot_frame``.

    MOT ground-truth frame N is decoded frame N-1.
    """
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index + 1 > last_mot_frame:
                break
            yield index + 1, frame.to_ndarray(format="bgr24")


def write_crops(video: Path, plans: list[CropPlan], out: Path, jpeg_quality: int) -> None:
    """Decode ``video`` once and write each planned crop to ``out/<role>/<id>/f<frame>.jpg``."""
    by_frame: dict[int, list[CropPlan]] = {}
    for p in plans:
        by_frame.setdefault(p.frame, []).append(p)
    for mot_frame, image in decode_mot_frames(video, max(by_frame, default=0)):
        if mot_frame in by_frame:
            _write_frame_crops(image, by_frame.pop(mot_frame), out, jpeg_quality)
    if by_frame:
        raise ValueError(
            f"{video} ended before ground-truth frame {min(by_frame)} (GT frame N = decoded frame "
            "N-1): is this the right video for the ground truth?"
        )


def _write_frame_crops(image: np.ndarray, plans: list[CropPlan], out: Path, quality: int) -> None:
    for p in plans:
        x1, y1, x2, y2 = p.xyxy
        path = out / p.role / str(p.identity) / f"f{p.frame:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), image[y1:y2, x1:x2], [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"could not write crop {path}")


def _prepare_out(out: Path, overwrite: bool) -> None:
    for role in ("query", "gallery"):
        target = out / role
        if target.exists() and any(target.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{target} is not empty; remove it or pass overwrite=True")
            shutil.rmtree(target)


def build_pets_reid(
    video: Path,
    gt: Path,
    out: Path,
    opts: PetsReidOptions | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the PETS query / gallery crop folders under ``out`` and return a summary."""
    opts = opts or PetsReidOptions()
    video, gt, out = Path(video), Path(gt), Path(out)
    if not video.is_file():
        raise ValueError(f"video {video} does not exist")
    rows = read_mot_gt(gt)
    frame_wh = video_size(video)
    plans = plan_crops(rows, frame_wh, opts)
    _prepare_out(out, overwrite)
    write_crops(video, plans, out, opts.jpeg_quality)
    summary = _summary(plans, opts)
    log.info(
        "PETS ReID split in %s: %s query, %s gallery crops",
        out,
        summary["n_query"],
        summary["n_gallery"],
    )
    return {"out": str(out), **summary}


def _summary(plans: list[CropPlan], opts: PetsReidOptions) -> dict:
    per_id: dict[int, dict[str, int]] = {}
    for p in plans:
        per_id.setdefault(p.identity, {"query": 0, "gallery": 0})[p.role] += 1
    queried = sorted(i for i, c in per_id.items() if c["query"])
    return {
        "identities": len(queried),
        "distractor_identities": sorted(set(per_id) - set(queried)),
        "n_query": sum(c["query"] for c in per_id.values()),
        "n_gallery": sum(c["gallery"] for c in per_id.values()),
        "per_identity": {str(i): per_id[i] for i in sorted(per_id)},
        "options": asdict(opts),
    }
