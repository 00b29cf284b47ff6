"""Tracking evaluation on a video with MOTChallenge ground truth: detect, track, score.

Runs the same ``refind.streaming.pipeline.CameraPipeline`` as ingest over the video (the configured
detector in batches of ``cfg.detector.batch_size`` frames, the ByteTracker over every frame,
crop selection off), then scores the confirmed tracks with ``refind.evaluation.mot_metrics.mot_metrics``
(TrackEval's HOTA, CLEAR and Identity; MOT15 flag-0 convention). When
``cfg.tracker.appearance_weight`` > 0 the tracker gets the lazy appearance of the configured
embedder (``embedder.type``, as ingest): it embeds only the detections the tracker asks for, and
the result counts them (``embedded_crops_per_frame``).

The tracker's appearance settings (``appearance_weight``, ``reid_max_distance``,
``appearance_refresh_s``) and the Kalman noise step were chosen on PETS09-S2L1 frames 1-400
(``bench/tracker_grid.py``); frames 401-795 are held out.

Example:
    >>> evaluate_mot(Path("vtest.avi"), Path("gt.txt"), 0.625, RefindConfig())  # doctest: +SKIP
    {'HOTA': 0.58, 'MOTA': 0.78, 'IDF1': 0.80, ..., 'frames': 795, 'fps': 60.1, ...}
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from refind.config import RefindConfig
from refind.evaluation.mot_metrics import MotBoxes, load_mot, mot_metrics
from refind.models.registry import build_detector, build_embedder
from refind.models.store import ModelStore
from refind.streaming.pipeline import CameraPipeline
from refind.streaming.sources import VideoSource

log = logging.getLogger(__name__)


def track_video(
    video: Path, cfg: RefindConfig, progress: bool = True, max_frames: int | None = None
) -> tuple[MotBoxes, dict[str, float]]:
    """Confirmed track boxes of every frame (MOT frames are 1-based) and timings, from the
    same ``CameraPipeline`` that ingest runs (crop selection off)."""
    store = ModelStore.from_config(cfg.models)
    embedder = build_embedder(cfg.embedder, store) if cfg.tracker.appearance_weight > 0 else None
    source = VideoSource(video, camera=video.stem)
    pipe = CameraPipeline(
        source.camera, cfg.tracker, cfg.crops, build_detector(cfg.detector, store), embedder,
        detector_batch=cfg.detector.batch_size, select_crops=False, motion_gate=cfg.motion_gate,
    )
    known = source.frame_count_hint()
    total = min(known, max_frames) if known and max_frames else (known or max_frames)
    frames, ids, boxes = [], [], []
    start = time.perf_counter()
    with tqdm(total=total, unit="frame", disable=not progress, desc=video.name) as bar:
        for result in pipe.run(itertools.islice(iter(source), max_frames)):
            if result.tracks is None:  # the end of the stream
                continue
            tracks = result.tracks
            frames.append(np.full(len(tracks), tracks.frame_index + 1, np.int64))
            ids.append(tracks.track_id)
            boxes.append(tracks.xyxy.astype(np.float64))
            bar.update(1)
    total_s = time.perf_counter() - start
    hyp = MotBoxes(
        np.concatenate(frames) if frames else np.zeros(0, np.int64),
        np.concatenate(ids) if ids else np.zeros(0, np.int64),
        np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float64),
    )
    seen = pipe.appearance
    n_frames = pipe.frames
    timing = {
        "frames": n_frames,
        "fps": n_frames / max(total_s, 1e-9),
        "detector_fps": pipe.frames_detected / max(pipe.times.snapshot().get("detect", 0.0), 1e-9),
        "detected_fraction": pipe.frames_detected / max(n_frames, 1),
        "motion_s": pipe.times.snapshot().get("motion", 0.0),
        "appearance_asked": pipe.appearance_asked,
        "embedded_crops_per_frame": (seen.crops if seen else 0) / max(n_frames, 1),
        "embed_calls_per_frame": (seen.calls if seen else 0) / max(n_frames, 1),
    }
    return hyp, timing


def evaluate_mot(
    video: Path,
    gt: Path,
    gt_scale: float,
    cfg: RefindConfig,
    progress: bool = True,
    max_frames: int | None = None,
    frames: tuple[int, int] | None = None,
) -> dict:
    """Detect and track ``video``, score against MOTChallenge ``gt`` (coordinates x gt_scale).

    Returns mot_metrics' keys plus ``frames``, ``fps`` (decode + detect + track with its lazy
    appearance, frames per second of wall time), ``detector_fps`` (detector calls only),
    ``embedded_crops_per_frame`` and ``embed_calls_per_frame`` (what the tracker asked the ReID
    model for), ``detected_fraction`` (frames the detector ran on; below 1 where the motion gate
    found nothing moved), ``motion_s`` (seconds of the gate) and ``appearance_asked`` (the
    tracker's embedded detections by why). With ``max_frames`` only that many frames are tracked
    and ground truth after them is ignored. With ``frames`` (first, last; 1-based) the video is
    tracked from its start to ``last`` and only frames ``first`` .. ``last`` are scored: a
    held-out part of a clip is judged with the tracks as they stand when it begins.
    """
    if frames is not None:
        first, last = frames
        if not 1 <= first <= last:
            raise ValueError(f"frames {frames}: need 1 <= first <= last")
        if max_frames is not None and max_frames < first:
            raise ValueError(f"max_frames {max_frames} stops before the first scored frame "
                             f"{first}: leave max_frames out, or score earlier frames")
        max_frames = last if max_frames is None else min(max_frames, last)
    hyp, timing = track_video(Path(video), cfg, progress, max_frames)
    tracked = int(timing["frames"])
    first, last = frames if frames is not None else (1, tracked)
    if first > tracked:
        raise ValueError(f"frames {first}:{last}: the video has only {tracked} frames")
    last = min(last, tracked)
    truth = load_mot(gt, scale=gt_scale, drop_flag0=True).window(first, last)
    metrics = mot_metrics(truth, hyp.window(first, last), num_frames=last - first + 1)
    log.info(
        "%s: MOTA %.3f IDF1 %.3f HOTA %.3f IDSW %d over frames %d-%d at %.1f fps",
        Path(video).name,
        metrics["MOTA"],
        metrics["IDF1"],
        metrics["HOTA"],
        metrics["IDSW"],
        first,
        last,
        timing["fps"],
    )
    return {**metrics, **timing, "scored_frames": [first, last]}
