"""Multi-camera evaluation: global person ids over several cameras against shared ground truth.

Each camera of the config (a file, optionally a ``region`` of it) runs through the same
``CameraPipeline`` as ingest, every frame analysed; its chosen crops are embedded by the
configured ReID model. The tracklets then reach one ``IdentityLinker`` in the order a live
system would see them (by the video time at which each crop batch or track end was produced,
all cameras interleaved): a tracklet is linked at its first crop and revised at every update.

Scores (the AI City multi-camera measure): all cameras' frames are put one after another and
the global ids are scored against the ground-truth ids with TrackEval's Identity metric, so an
id is right only if it is the same person in every camera: IDF1, IDP, IDR jointly, and IDF1
per camera. Ground truth is given per camera in its source's coordinates (``--gt-scale``); a
camera with a ``region`` keeps the boxes at least half inside it, cut to it. Besides:

- ``mixed_ids``: global ids that cover two real people (each for at least ``MIN_FRAMES``
  frames matched at IoU >= 0.5);
- ``split_people``: real people covered by several global ids (each for at least
  ``MIN_FRAMES`` frames);
- ``false_merges_no_gt``: global ids that join a camera without ground truth (footage whose
  people appear nowhere else) with any other camera: each such id is a false merge.

``frames`` (first, last; 1-based) scores only those frames of every camera with ground truth;
the linker still sees every frame before them, as it would live.

Example:
    >>> evaluate_mtmc(cfg, {"left": Path("gt.txt")}, 0.625)           # doctest: +SKIP
    {'IDF1': 0.83, 'IDP': ..., 'mixed_ids': 0, 'false_merges_no_gt': 0, ...}
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from refind.config import RefindConfig
from refind.evaluation.mot_metrics import MotBoxes, load_mot, mot_metrics
from refind.indexer.identities import IdentityLinker, Tracklet, mean_vector
from refind.models.base import Detector, ReidEmbedder
from refind.models.registry import build_detector, build_embedder
from refind.models.store import ModelStore
from refind.streaming.boxes import Region, region_px
from refind.streaming.config import CameraConfig
from refind.streaming.pipeline import CameraPipeline
from refind.streaming.sources import VideoSource

log = logging.getLogger(__name__)

MIN_FRAMES = 10
"""Frames a global id must hold a person (IoU >= 0.5) to count as covering them."""


@dataclass(frozen=True)
class TrackletUpdate:
    """One camera's news of one tracklet at video time ``at_ns``: its crops' vectors so far."""

    at_ns: int
    camera: str
    track_id: int
    first_ts_ns: int
    last_ts_ns: int
    vectors: np.ndarray
    ended: bool


@dataclass
class CameraRun:
    """What one camera's pipeline produced: every track box and the tracklet updates in order."""

    camera: str
    frames: int
    size_wh: tuple[int, int]
    boxes: MotBoxes
    updates: list[TrackletUpdate] = field(default_factory=list)
    seconds: float = 0.0


def run_camera(cam: CameraConfig, cfg: RefindConfig, detector: Detector,
               embedder: ReidEmbedder, progress: bool = True) -> CameraRun:
    """Run ``cam`` (a file) through the pipeline, every frame (up to ``ingest.max_frames``),
    and embed its crops."""
    source = VideoSource(cam.url, cam.name, region=cam.region)
    pipe = CameraPipeline(cam.name, cfg.tracker, cfg.crops, detector, embedder,
                          detector_batch=cfg.detector.batch_size, motion_gate=cfg.motion_gate)
    frames, ids, boxes = [], [], []
    first_ts: dict[int, int] = {}
    crops_of: dict[int, list[np.ndarray]] = defaultdict(list)
    updates: list[TrackletUpdate] = []
    size_wh = (0, 0)
    last_ts = 0
    start = time.perf_counter()
    limit = cfg.ingest.max_frames
    total = source.frame_count_hint()
    bar = tqdm(total=min(total, limit) if total and limit else total or limit, unit="frame",
               disable=not progress, desc=cam.name)
    for result in pipe.run(itertools.islice(iter(source), limit)):
        if result.frame is not None:
            last_ts = result.frame.ts_ns
            size_wh = (result.frame.image.shape[1], result.frame.image.shape[0])
            tracks = result.tracks
            frames.append(np.full(len(tracks), result.frame.index + 1, np.int64))
            ids.append(tracks.track_id)
            boxes.append(tracks.xyxy.astype(np.float64))
            bar.update(1)
        for span in result.started:
            first_ts[span.track_id] = span.first_ts_ns
        if result.crops:
            vectors = embedder([c.image for c in result.crops]).vectors
            for crop, vec in zip(result.crops, vectors, strict=True):
                crops_of[crop.track_id].append(vec)
        ended = {s.track_id: s for s in result.ended}
        for tid in sorted({c.track_id for c in result.crops} | set(ended)):
            if not crops_of.get(tid):
                continue
            span = ended.get(tid)
            updates.append(TrackletUpdate(
                last_ts, cam.name, tid, first_ts.get(tid, last_ts),
                span.last_ts_ns if span else last_ts, np.stack(crops_of[tid]), span is not None))
    bar.close()
    hyp = MotBoxes(np.concatenate(frames), np.concatenate(ids), np.concatenate(boxes)) if frames \
        else MotBoxes(np.zeros(0), np.zeros(0), np.zeros((0, 4)))
    return CameraRun(cam.name, pipe.frames, size_wh, hyp, updates, time.perf_counter() - start)


def link(runs: list[CameraRun], linker: IdentityLinker) -> tuple[dict[tuple[str, int], int], dict]:
    """Feed every camera's updates to ``linker`` in video-time order; the final global id of
    every tracklet and the linker's cost figures."""
    updates = sorted((u for r in runs for u in r.updates), key=lambda u: (u.at_ns, u.camera))
    changes: dict[str, int] = defaultdict(int)
    start = time.perf_counter()
    for u in updates:
        tracklet = Tracklet(u.camera, u.track_id, u.first_ts_ns, u.last_ts_ns,
                            mean_vector(u.vectors), len(u.vectors), u.ended)
        for change in linker.observe(tracklet):
            changes[change.kind] += 1
    seconds = time.perf_counter() - start
    cost = {"updates": len(updates), "link_ms_per_update": 1e3 * seconds / max(len(updates), 1),
            "comparisons_per_update": linker.comparisons / max(len(updates), 1),
            "changes": dict(changes), "global_ids": len(linker.members)}
    return dict(linker.identity_of), cost


def region_truth(gt: MotBoxes, region: Region | None, frame_wh: tuple[int, int],
                 min_inside: float = 0.5) -> MotBoxes:
    """Ground truth of a camera cut from a source: boxes at least ``min_inside`` inside the
    region, cut to it, in the region's pixels (``frame_wh``: the source frame's size)."""
    if region is None:
        return gt
    x1, y1, x2, y2 = region_px(region, *frame_wh)
    cut = np.stack([np.clip(gt.xyxy[:, 0], x1, x2), np.clip(gt.xyxy[:, 1], y1, y2),
                    np.clip(gt.xyxy[:, 2], x1, x2), np.clip(gt.xyxy[:, 3], y1, y2)], axis=1)
    area = np.prod(np.maximum(gt.xyxy[:, 2:] - gt.xyxy[:, :2], 1e-9), axis=1)
    inside = np.prod(np.maximum(cut[:, 2:] - cut[:, :2], 0.0), axis=1) / area
    keep = inside >= min_inside
    shifted = cut[keep] - np.array([x1, y1, x1, y1], np.float64)
    return MotBoxes(gt.frame[keep], gt.track_id[keep], shifted)


def _relabel(hyp: MotBoxes, camera: str, ids: dict[tuple[str, int], int]) -> MotBoxes:
    """Camera track ids replaced by global ids; a track that never had a crop worth storing
    (so nothing of it is in the gallery) has no global id and is left out."""
    gid = np.array([ids.get((camera, int(t)), -1) for t in hyp.track_id], np.int64)
    kept = gid >= 0
    return MotBoxes(hyp.frame[kept], gid[kept], hyp.xyxy[kept])


def _coverage(gt: MotBoxes, hyp: MotBoxes) -> dict[tuple[int, int], int]:
    """Frames in which global id h holds real person g (IoU >= 0.5, one-to-one per frame)."""
    from refind.evaluation.mot_metrics import _box_iou

    held: dict[tuple[int, int], int] = defaultdict(int)
    for f in np.unique(gt.frame):
        g, h = gt.frame == f, hyp.frame == f
        if not h.any():
            continue
        iou = _box_iou(gt.xyxy[g], hyp.xyxy[h])
        rows, cols = linear_sum_assignment(-iou)
        for r, c in zip(rows, cols, strict=True):
            if iou[r, c] >= 0.5:
                held[(int(hyp.track_id[h][c]), int(gt.track_id[g][r]))] += 1
    return held


def tracklet_truth(run: CameraRun, truth: MotBoxes) -> dict[tuple[str, int], int]:
    """(camera, track id) -> the real person a track holds longest (IoU >= 0.5), for tracks
    holding one for at least ``MIN_FRAMES`` frames."""
    best: dict[int, tuple[int, int]] = {}
    for (h, g), n in _coverage(truth, run.boxes).items():
        if n >= MIN_FRAMES and n > best.get(h, (0, 0))[0]:
            best[h] = (n, g)
    return {(run.camera, h): g for h, (_, g) in best.items()}


def camera_truth(cam: CameraConfig, run: CameraRun, gt: Path, gt_scale: float) -> MotBoxes:
    """A camera's ground truth in its own pixels (its region's), over the frames it ran."""
    truth = load_mot(gt, scale=gt_scale, drop_flag0=True).frames(1, run.frames)
    return region_truth(truth, cam.region, _source_size(cam))


def run_cameras(cfg: RefindConfig, progress: bool = True) -> list[CameraRun]:
    """Every camera of ``cfg`` (files) through the pipeline, with the configured models."""
    if not cfg.cameras:
        raise ValueError("the config names no cameras: list them under `cameras:` (a file each, "
                         "optionally with a `region:`)")
    store = ModelStore.from_config(cfg.models)
    detector = build_detector(cfg.detector, store)
    embedder = build_embedder(cfg.embedder, store)
    return [run_camera(cam, cfg, detector, embedder, progress) for cam in cfg.cameras]


def check_gts(cfg: RefindConfig, gts: dict[str, Path]) -> None:
    unknown = sorted(set(gts) - {c.name for c in cfg.cameras})
    if unknown:
        raise ValueError(f"--gt names camera(s) {', '.join(unknown)} not in the config's "
                         f"cameras ({', '.join(c.name for c in cfg.cameras)})")
    if not gts:
        raise ValueError("no camera has ground truth: give --gt CAMERA=GT.txt for at least one")


def _window(boxes: MotBoxes, frames: tuple[int, int] | None) -> MotBoxes:
    return boxes if frames is None else boxes.window(*frames)


def evaluate_mtmc(cfg: RefindConfig, gts: dict[str, Path], gt_scale: float = 1.0,
                  frames: tuple[int, int] | None = None, progress: bool = True) -> dict:
    """Run ``cfg.cameras`` (files), link their tracklets, score against ``gts`` (camera ->
    MOT ground truth in its source's pixels x ``gt_scale``); see the module docstring."""
    check_gts(cfg, gts)
    runs = run_cameras(cfg, progress)
    linker = IdentityLinker(cfg.identities)
    ids, cost = link(runs, linker)
    per_camera, truths, hyps = {}, [], []
    offset = 0
    for cam, run in zip(cfg.cameras, runs, strict=True):
        if cam.name not in gts:
            continue
        truth = _window(camera_truth(cam, run, gts[cam.name], gt_scale), frames)
        hyp = _window(_relabel(run.boxes, cam.name, ids), frames)
        n = frames[1] - frames[0] + 1 if frames else run.frames
        per_camera[cam.name] = round(mot_metrics(truth, hyp, num_frames=n)["IDF1"], 4)
        truths.append(MotBoxes(truth.frame + offset, truth.track_id, truth.xyxy))
        hyps.append(MotBoxes(hyp.frame + offset, hyp.track_id, hyp.xyxy))
        offset += n
    truth = MotBoxes(*(np.concatenate([getattr(b, k) for b in truths])
                       for k in ("frame", "track_id", "xyxy")))
    hyp = MotBoxes(*(np.concatenate([getattr(b, k) for b in hyps])
                     for k in ("frame", "track_id", "xyxy")))
    joint = mot_metrics(truth, hyp, num_frames=offset)
    held = {k: v for k, v in _coverage(truth, hyp).items() if v >= MIN_FRAMES}
    people_of, ids_of = defaultdict(set), defaultdict(set)
    for h, g in held:
        people_of[h].add(g)
        ids_of[g].add(h)
    cameras_of = defaultdict(set)
    for (camera, _), gid in ids.items():
        cameras_of[gid].add(camera)
    no_gt = {c.name for c in cfg.cameras} - set(gts)
    return {
        "IDF1": round(joint["IDF1"], 4), "IDP": round(joint["IDP"], 4),
        "IDR": round(joint["IDR"], 4), "MOTA": round(joint["MOTA"], 4),
        "per_camera_IDF1": per_camera,
        "mixed_ids": sum(len(p) > 1 for p in people_of.values()),
        "split_people": sum(len(h) > 1 for h in ids_of.values()),
        "people": len(ids_of), "false_merges_no_gt": sum(
            1 for cams in cameras_of.values() if cams & no_gt and cams - no_gt),
        "tracklets": len(ids), "frames_scored": list(frames) if frames else None,
        "linker": cost,
        "camera_seconds": {r.camera: round(r.seconds, 1) for r in runs},
        "camera_frames": {r.camera: r.frames for r in runs},
    }


def _source_size(cam: CameraConfig) -> tuple[int, int]:
    """Width and height of a camera's whole source frame (before its region)."""
    frame = next(iter(VideoSource(cam.url, cam.name)))
    return frame.image.shape[1], frame.image.shape[0]
