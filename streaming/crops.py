"""Keep the few best crops of each track, spread over its life, for embedding and display.

A candidate is refused when it is smaller than ``min_height_px`` x ``min_width_px`` or its box
comes within ``edge_margin_px`` of the frame edge (a person cut by the edge is a poor ReID query
and pollutes the gallery). Otherwise its quality in (0, 1] is the product of three factors:

- size: height / ``full_quality_height_px``, capped at 1 (a taller crop has more detail, up to the
  ReID input height);
- confidence: the detection score (occluded or odd boxes score lower);
- sharpness: variance of the Laplacian of the grey crop, v / (v + ``sharpness_ref``), so motion
  blur and defocus rank below a sharp view of the same person.

Kept crops of one track are at least ``min_gap_s`` apart in time: a candidate too close to kept
crops replaces them only if it beats all of them; otherwise a candidate replaces the weakest kept
crop when the track already has ``max_per_track``. Only the pixels of accepted candidates are
copied, with a downscaled copy of their frame (``context_px``) for the context view; no full
frame is held.

Example:
    >>> selector = CropSelector(CropConfig())
    >>> selector.update(frame, tracks)                                  # doctest: +SKIP
    >>> crops = selector.finish(tracker.pop_ended())                     # doctest: +SKIP
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from refind.streaming.boxes import pixel_box
from refind.streaming.clips import draw_box, scaled
from refind.streaming.config import CropConfig
from refind.streaming.records import Crop, Frame, Tracks

log = logging.getLogger(__name__)


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of ``image`` ((h, w, 3) uint8 BGR) in grey levels squared."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def as_stored(crop: Crop, jpeg_quality: int) -> Crop:
    """The crop encoded as the JPEG it will be stored as, with that JPEG's pixels as its image:
    what is embedded is exactly what is stored, so re-indexing or rebuilding from the stored
    crops gives the vectors ingest gave."""
    ok, buf = cv2.imencode(".jpg", crop.image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ValueError(f"crop of track {crop.track_id} could not be encoded as JPEG")
    data = buf.tobytes()
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"crop of track {crop.track_id}: its JPEG does not decode")
    context = crop.context_jpeg
    if crop.context is not None:
        ok, ctx = cv2.imencode(".jpg", crop.context, [cv2.IMWRITE_JPEG_QUALITY, 80])
        context = ctx.tobytes() if ok else b""
    return Crop(crop.camera, crop.track_id, crop.frame_index, crop.ts_ns, crop.xyxy,
                crop.confidence, crop.quality, image, data, context_jpeg=context)


class CropSelector:
    """Chooses up to ``max_per_track`` crops per track from the frames it is shown.

    Example:
        >>> selector = CropSelector(CropConfig())
        >>> image = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
        >>> frame = Frame("gate", 0, 0, image)
        >>> tracks = Tracks("gate", 0, 0, [7], [[200, 100, 240, 200]], [0.9])
        >>> selector.update(frame, tracks)
        >>> [(c.track_id, c.image.shape) for c in selector.finish([7])]
        [(7, (100, 40, 3))]
    """

    def __init__(self, cfg: CropConfig) -> None:
        self.cfg = cfg
        self._kept: dict[int, list[Crop]] = {}
        self._first_ts: dict[int, int] = {}
        self._published: dict[int, set[int]] = {}
        self._small: tuple[tuple[str, int], np.ndarray, float] | None = None  # frame's context

    def update(self, frame: Frame, tracks: Tracks) -> None:
        """Consider every track box of ``frame`` as a candidate crop."""
        if tracks.frame_index != frame.index or tracks.camera != frame.camera:
            raise ValueError(
                f"tracks of {tracks.camera}#{tracks.frame_index} given with frame "
                f"{frame.camera}#{frame.index}"
            )
        for tid, box, conf in zip(tracks.track_id, tracks.xyxy, tracks.confidence, strict=True):
            self._consider(frame, int(tid), box, float(conf))

    def finish(self, track_ids: list[int]) -> list[Crop]:
        """Chosen crops of ended tracks (each track's best first), forgetting those tracks.

        Crops already handed out by ``early`` are not handed out again.
        """
        out: list[Crop] = []
        for tid in track_ids:
            kept = self._kept.pop(int(tid), [])
            self._first_ts.pop(int(tid), None)
            done = self._published.pop(int(tid), set())
            fresh = (c for c in kept if c.frame_index not in done)
            out.extend(sorted(fresh, key=lambda c: -c.quality))
        return out

    def early(self, now_ts_ns: int, after_s: float) -> list[Crop]:
        """For live video: the best crop so far of each track first seen ``after_s`` ago that
        has not had one yet, so a person is searchable before their track ends."""
        out = []
        for tid, kept in self._kept.items():
            if tid in self._published or not kept:
                continue
            if now_ts_ns - self._first_ts[tid] < after_s * 1e9:
                continue
            best = max(kept, key=lambda c: c.quality)
            self._published[tid] = {best.frame_index}
            out.append(best)
        return out

    def flush(self) -> list[Crop]:
        """Finish every track still held (end of stream)."""
        return self.finish(sorted(self._kept))

    def _context(self, frame: Frame, xyxy: tuple[float, float, float, float]) -> np.ndarray:
        """The frame downscaled once (shared by the frame's crops), copied, the box drawn."""
        key = (frame.camera, frame.index)
        if self._small is None or self._small[0] != key:
            self._small = (key, *scaled(frame.image, self.cfg.context_px))
        _, small, scale = self._small
        view = small.copy()
        draw_box(view, xyxy, scale)
        return view

    def quality(self, image: np.ndarray, confidence: float) -> float:
        """Quality in (0, 1] of a crop image ((h, w, 3) uint8) with its detection score."""
        size = min(1.0, image.shape[0] / self.cfg.full_quality_height_px)
        sharp = sharpness(image)
        return size * confidence * sharp / (sharp + self.cfg.sharpness_ref)

    def _refused(self, box: tuple[int, int, int, int], hw: tuple[int, int]) -> str | None:
        x1, y1, x2, y2 = box
        m = self.cfg.edge_margin_px
        if y2 - y1 < self.cfg.min_height_px or x2 - x1 < self.cfg.min_width_px:
            return "too small"
        if x1 < m or y1 < m or x2 > hw[1] - m or y2 > hw[0] - m:
            return "cut by the frame edge"
        return None

    def _consider(self, frame: Frame, tid: int, xyxy: np.ndarray, conf: float) -> None:
        box = pixel_box(xyxy, frame.size_hw)
        if self._refused(box, frame.size_hw):
            return
        x1, y1, x2, y2 = box
        view = frame.image[y1:y2, x1:x2]  # a view: nothing copied unless kept
        q = self.quality(view, conf)
        self._first_ts.setdefault(tid, frame.ts_ns)
        kept = self._kept.setdefault(tid, [])
        gap_ns = self.cfg.min_gap_s * 1e9
        near = [c for c in kept if abs(c.ts_ns - frame.ts_ns) < gap_ns]
        if near:
            if q <= max(c.quality for c in near):
                return
            drop = near
        elif len(kept) >= self.cfg.max_per_track:
            weakest = min(kept, key=lambda c: c.quality)
            if q <= weakest.quality:
                return
            drop = [weakest]
        else:
            drop = []
        xyxy = (float(x1), float(y1), float(x2), float(y2))
        context = self._context(frame, xyxy) if self.cfg.context_px else None
        crop = Crop(
            camera=frame.camera,
            track_id=tid,
            frame_index=frame.index,
            ts_ns=frame.ts_ns,
            xyxy=xyxy,
            confidence=conf,
            quality=q,
            image=view.copy(),
            context=context,
        )
        self._kept[tid] = [c for c in kept if all(c is not d for d in drop)] + [crop]
