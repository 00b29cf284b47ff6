"""Tracking evaluation on a video with MOTChallenge ground truth: detect, track, score.

Decodes the video (``streaming.sources.VideoSource``), runs the configured detector in batches of
``cfg.detector.batch_size`` frames and the ByteTracker over every frame, then scores the confirmed
tracks with ``streaming.mot.mot_metrics`` (TrackEval's HOTA, CLEAR and Identity; MOT15 flag-0
convention). When ``cfg.tracker.appearance_weight`` > 0 the tracker gets a lazy appearance
callback (``models.appearance.BoxEmbedder`` over the configured ReID model): it embeds only the
detections the tracker asks for, and the result counts them (``embedded_crops_per_frame``).

The tracker's appearance settings (``appearance_weight``, ``reid_max_distance``,
``appearance_refresh_s``) and the Kalman noise step were chosen on PETS09-S2L1 frames 1-400;
frames 401-795 are held out.

Example:
    >>> evaluate_mot(Path("vtest.avi"), Path("gt.txt"), 0.625, RefindConfig())  # doctest: +SKIP
    {'HOTA': 0.58, 'MOTA': 0.78, 'IDF1': 0.81, ..., 'frames': 795, 'fps': 60.1, ...}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.appearance import BoxEmbedder
from models.store import ModelStore
from models.yolox import YoloxDetector
from streaming.config import RefindConfig
from streaming.mot import MotBoxes, load_mot, mot_metrics
from streaming.records import Frame, Tracks
from streaming.sources import VideoSource
from streaming.tracker import ByteTracker

log = logging.getLogger(__name__)


def _batches(frames: Iterator[Frame], size: int, limit: int | None) -> Iterator[list[Frame]]:
    """Lists of up to ``size`` frames, stopping after ``limit`` frames in all."""
    batch: list[Frame] = []
    for n, frame in enumerate(frames):
        if limit is not None and n >= limit:
            break
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _mot_rows(tracks: Tracks) -> list[tuple[int, int, np.ndarray]]:
    """(1-based MOT frame, track id, xyxy) of each track."""
    frame = tracks.frame_index + 1
    return [(frame, int(t), b) for t, b in zip(tracks.track_id, tracks.xyxy, strict=True)]


def track_video(
    video: Path, cfg: RefindConfig, progress: bool = True, max_frames: int | None = None
) -> tuple[MotBoxes, dict[str, float]]:
    """Confirmed track boxes of every frame (MOT frames are 1-based) and timings."""
    store = ModelStore.from_config(cfg.models)
    detector = YoloxDetector(cfg.detector, store)
    boxes = None
    if cfg.tracker.appearance_weight > 0:
        from models.openvino_reid import OpenVinoReidEmbedder

        boxes = BoxEmbedder(OpenVinoReidEmbedder(cfg.embedder, store))
    source = VideoSource(video, camera=video.stem)
    tracker = ByteTracker(cfg.tracker, camera=source.camera)
    known = source.frame_count_hint()
    total = min(known, max_frames) if known and max_frames else (known or max_frames)
    rows: list[tuple[int, int, np.ndarray]] = []
    n_frames, det_s = 0, 0.0
    start = time.perf_counter()
    frames = iter(source)
    with tqdm(total=total, unit="frame", disable=not progress, desc=video.name) as bar:
        for batch in _batches(frames, cfg.detector.batch_size, max_frames):
            t0 = time.perf_counter()
            found = detector([f.image for f in batch])
            det_s += time.perf_counter() - t0
            found = [d.select(d.confidence >= cfg.tracker.low_threshold) for d in found]
            for frame, dets in zip(batch, found, strict=True):
                appearance = boxes.callback(frame.image, dets) if boxes is not None else None
                rows.extend(_mot_rows(tracker.update(frame.index, frame.ts_ns, dets, appearance)))
            n_frames += len(batch)
            bar.update(len(batch))
    frames.close()  # type: ignore[attr-defined]  # a generator: closes the container
    tracker.flush()
    total_s = time.perf_counter() - start
    hyp = MotBoxes(
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 4),
    )
    timing = {
        "frames": n_frames,
        "fps": n_frames / max(total_s, 1e-9),
        "detector_fps": n_frames / max(det_s, 1e-9),
        "embedded_crops_per_frame": (boxes.crops if boxes else 0) / max(n_frames, 1),
        "embed_calls_per_frame": (boxes.calls if boxes else 0) / max(n_frames, 1),
    }
    return hyp, timing


def evaluate_mot(
    video: Path,
    gt: Path,
    gt_scale: float,
    cfg: RefindConfig,
    progress: bool = True,
    max_frames: int | None = None,
) -> dict:
    """Detect and track ``video``, score against MOTChallenge ``gt`` (coordinates x gt_scale).

    Returns mot_metrics' keys plus ``frames``, ``fps`` (decode + detect + track with its lazy
    appearance, frames per second of wall time), ``detector_fps`` (detector calls only),
    ``embedded_crops_per_frame`` and ``embed_calls_per_frame`` (what the tracker asked the ReID
    model for). With ``max_frames`` only that many frames are tracked and ground truth after them
    is ignored.
    """
    hyp, timing = track_video(Path(video), cfg, progress, max_frames)
    truth = load_mot(gt, scale=gt_scale, drop_flag0=True).frames(1, int(timing["frames"]))
    metrics = mot_metrics(truth, hyp, num_frames=int(timing["frames"]))
    log.info(
        "%s: MOTA %.3f IDF1 %.3f HOTA %.3f IDSW %d over %d frames at %.1f fps",
        Path(video).name,
        metrics["MOTA"],
        metrics["IDF1"],
        metrics["HOTA"],
        metrics["IDSW"],
        timing["frames"],
        timing["fps"],
    )
    return {**metrics, **timing}
