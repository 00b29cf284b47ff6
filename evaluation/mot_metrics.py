"""MOTChallenge files and tracking metrics (HOTA, CLEAR MOT, identity) computed by TrackEval.

The metrics are TrackEval's own classes (``trackeval.metrics.HOTA``, ``CLEAR``, ``Identity``); this
module only builds the per-frame input they expect, as TrackEval's MOTChallenge loader would, so
the numbers are the MOTChallenge ones without writing files in its folder layout.

Flag-0 ground truth (MOT15 convention, as ``MotChallenge2DBox`` with ``BENCHMARK='MOT15'``): a
row whose 7th column is 0 is "not considered". It is removed from the ground truth before
matching, and nothing else happens: MOT15 has no distractor preprocessing, so a hypothesis box
on such a person is NOT removed and counts as a false positive (later benchmarks drop it).
``load_mot(..., drop_flag0=True)`` applies the removal; use it for ground truth only, since in a
tracker's output the 7th column is a confidence.

Example:
    >>> gt = load_mot("gt.txt", scale=0.625)                         # doctest: +SKIP
    >>> mot_metrics(gt, hyp)["IDF1"]                                  # doctest: +SKIP
    0.78
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MotBoxes:
    """Boxes of one sequence in MOTChallenge terms.

    frame: (n,) int64, 1-based (MOT frame N is decoded frame index N - 1); track_id: (n,) int64;
    xyxy: (n, 4) float64 pixels.
    """

    frame: np.ndarray
    track_id: np.ndarray
    xyxy: np.ndarray

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)
        n = xyxy.shape[0]
        frame = np.asarray(self.frame, dtype=np.int64).reshape(-1)
        ids = np.asarray(self.track_id, dtype=np.int64).reshape(-1)
        if frame.shape[0] != n or ids.shape[0] != n:
            raise ValueError(f"MotBoxes: {frame.shape[0]} frames, {ids.shape[0]} ids, {n} boxes")
        if n and frame.min() < 1:
            raise ValueError(f"MotBoxes: frames are 1-based, got {frame.min()}")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "frame", frame)
        object.__setattr__(self, "track_id", ids)

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def select(self, mask: np.ndarray) -> MotBoxes:
        """A new record with the rows where ``mask`` (bool (n,) or indices) is set."""
        return MotBoxes(self.frame[mask], self.track_id[mask], self.xyxy[mask])

    def frames(self, first: int, last: int) -> MotBoxes:
        """Rows of frames ``first`` .. ``last`` (1-based, inclusive)."""
        return self.select((self.frame >= first) & (self.frame <= last))

    def window(self, first: int, last: int) -> MotBoxes:
        """Rows of frames ``first`` .. ``last``, renumbered from 1 (a part of a sequence scored as
        a sequence of its own)."""
        kept = self.frames(first, last)
        return MotBoxes(kept.frame - (first - 1), kept.track_id, kept.xyxy)


def load_mot(path: str | Path, scale: float = 1.0, drop_flag0: bool = True) -> MotBoxes:
    """Read a MOTChallenge text file (frame, id, x, y, w, h, flag/conf, ...).

    ``scale`` multiplies the coordinates (e.g. 0.625 for ground truth drawn on 768x576 and a
    480x360 video). ``drop_flag0`` removes rows whose 7th column is 0 (MOT15 "not considered"
    ground truth; see the module docstring).
    """
    data = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    if data.size == 0:
        return MotBoxes(np.zeros(0), np.zeros(0), np.zeros((0, 4)))
    if data.shape[1] < 6:
        raise ValueError(f"{path}: MOT rows need at least 6 columns, got {data.shape[1]}")
    if drop_flag0 and data.shape[1] >= 7:
        data = data[data[:, 6] != 0]
    xywh = data[:, 2:6] * scale
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return MotBoxes(data[:, 0].astype(np.int64), data[:, 1].astype(np.int64), xyxy)


def save_mot(path: str | Path, boxes: MotBoxes) -> None:
    """Write boxes as MOTChallenge rows ``frame,id,x,y,w,h,1,-1,-1,-1``."""
    xywh = np.concatenate([boxes.xyxy[:, :2], boxes.xyxy[:, 2:] - boxes.xyxy[:, :2]], axis=1)
    rows = [
        f"{f},{i},{x:.2f},{y:.2f},{w:.2f},{h:.2f},1,-1,-1,-1"
        for f, i, (x, y, w, h) in zip(boxes.frame, boxes.track_id, xywh, strict=True)
    ]
    Path(path).write_text("\n".join(rows) + ("\n" if rows else ""), encoding="utf-8")


def _box_iou(gt: np.ndarray, hyp: np.ndarray) -> np.ndarray:
    """(g, 4) x (h, 4) xyxy -> (g, h) IoU, by TrackEval's own function."""
    from trackeval.datasets._base_dataset import _BaseDataset

    return _BaseDataset._calculate_box_ious(gt, hyp, box_format="x0y0x1y1")


def _contiguous(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel ids to 0 .. k-1 (TrackEval's requirement); returns (labels, k)."""
    unique, labels = np.unique(ids, return_inverse=True)
    return labels.astype(np.int64), len(unique)


def trackeval_input(gt: MotBoxes, hyp: MotBoxes, num_frames: int | None = None) -> dict:
    """The per-sequence dict TrackEval metrics read, built as its MOTChallenge loader does."""
    last = max(int(gt.frame.max(initial=0)), int(hyp.frame.max(initial=0)))
    num_frames = last if num_frames is None else num_frames
    if last > num_frames:
        raise ValueError(f"boxes go up to frame {last}, beyond num_frames={num_frames}")
    gt_labels, num_gt_ids = _contiguous(gt.track_id)
    hyp_labels, num_hyp_ids = _contiguous(hyp.track_id)
    data: dict = {"gt_ids": [], "tracker_ids": [], "similarity_scores": []}
    for t in range(1, num_frames + 1):
        g, h = gt.frame == t, hyp.frame == t
        for name, labels, mask in (("gt", gt_labels, g), ("hypothesis", hyp_labels, h)):
            if len(np.unique(labels[mask])) != int(mask.sum()):
                raise ValueError(f"{name} has a repeated id in frame {t}")
        data["gt_ids"].append(gt_labels[g])
        data["tracker_ids"].append(hyp_labels[h])
        data["similarity_scores"].append(_box_iou(gt.xyxy[g], hyp.xyxy[h]))
    data.update(
        num_timesteps=num_frames,
        num_gt_ids=num_gt_ids,
        num_tracker_ids=num_hyp_ids,
        num_gt_dets=len(gt),
        num_tracker_dets=len(hyp),
        seq="sequence",
    )
    return data


def mot_metrics(gt: MotBoxes, hyp: MotBoxes, num_frames: int | None = None) -> dict:
    """HOTA, CLEAR MOT and identity metrics of ``hyp`` against ``gt`` (same frames and pixels).

    Ground truth must already be filtered (``load_mot(drop_flag0=True)``). Returns plain floats
    and ints: HOTA, DetA, AssA, LocA (means over TrackEval's 19 IoU thresholds), MOTA, MOTP,
    IDF1, IDP, IDR, IDSW, precision, recall, TP, FP, FN, MT, PT, ML, Frag, IDTP, IDFP, IDFN and
    the counts gt_dets, hyp_dets, gt_ids, hyp_ids, num_frames.
    """
    from trackeval.metrics import CLEAR, HOTA, Identity

    data = trackeval_input(gt, hyp, num_frames)
    quiet = {"PRINT_CONFIG": False}
    hota = HOTA().eval_sequence(data)
    clear = CLEAR(dict(quiet)).eval_sequence(data)
    ident = Identity(dict(quiet)).eval_sequence(data)
    out: dict = {k: float(np.mean(hota[k])) for k in ("HOTA", "DetA", "AssA", "LocA")}
    out.update({k: float(clear[k]) for k in ("MOTA", "MOTP")})
    out.update({k: float(ident[k]) for k in ("IDF1", "IDP", "IDR")})
    out.update(precision=float(clear["CLR_Pr"]), recall=float(clear["CLR_Re"]))
    out.update({k: int(clear[k]) for k in ("IDSW", "MT", "PT", "ML", "Frag")})
    out.update(TP=int(clear["CLR_TP"]), FP=int(clear["CLR_FP"]), FN=int(clear["CLR_FN"]))
    out.update({k: int(ident[k]) for k in ("IDTP", "IDFP", "IDFN")})
    out.update(
        gt_dets=len(gt),
        hyp_dets=len(hyp),
        gt_ids=int(data["num_gt_ids"]),
        hyp_ids=int(data["num_tracker_ids"]),
        num_frames=int(data["num_timesteps"]),
    )
    return out
