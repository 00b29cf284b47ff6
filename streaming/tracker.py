"""ByteTrack multi-object tracker for one camera: Kalman motion, two-stage association, lazy
appearance.

Each frame, in the order of the ByteTrack paper (Zhang et al., ECCV 2022):

1. every live track's Kalman state is predicted to the frame's timestamp (time-aware: the step is
   the elapsed time, so any frame rate and dropped frames work);
2. high-score detections (>= ``high_threshold``) are matched to confirmed tracks, tracked and lost
   alike, on IoU with the predicted box times the detection score, blended with appearance
   distance where both the track and the detection have one; a matched lost track is
   re-activated with its old id;
3. low-score detections (``low_threshold`` .. ``high_threshold``) are matched, on IoU alone, to the
   confirmed tracks that were being tracked and are still unmatched (occluded people keep their
   track through low scores); confirmed tracks left unmatched become lost;
4. with appearance only: lost tracks that motion could not find (a person who stopped or turned
   while hidden) are re-identified among the high-score detections left, by appearance, within
   reach of where they were last seen;
5. the high-score detections still left are matched to unconfirmed tracks; an unconfirmed track
   must be matched in consecutive frames until it has ``min_hits`` matches, else it is dropped;
6. high-score detections still left with score >= ``new_track_threshold`` start unconfirmed tracks;
7. lost tracks unseen for more than ``max_lost_s`` seconds (by timestamp, not frame count) end.

Appearance is lazy: the caller passes ``appearance(indices)``, which crops and embeds the given
detections of the frame, and the tracker calls it at most once per frame, before association,
for only the high-score detections where appearance can change or keep a decision:

- ambiguous ones: in the first-stage motion gate, the detection has two or more candidate tracks,
  or its candidate track has two or more candidate detections (people walking close or crossing);
- unclaimed ones (no candidate track) within reach of a confirmed track that has an appearance
  and is not surely matched by motion (lost now, or may become lost): re-identification;
- the sure motion match (a pair alone in the gate) of a confirmed track whose appearance is older
  than ``appearance_refresh_s``, or which has none yet: appearance changes slowly, so a track's
  appearance is learned on its first match after confirmation and refreshed at that period, not
  every frame.

A track's appearance is a moving average of its embedded high-score detections only.

Only confirmed tracks matched in the frame are reported, with the detection's box. Public ids are
given at confirmation, so they are 1, 2, 3, ... per camera without gaps from unconfirmed tracks.

Example:
    >>> tracker = ByteTracker(TrackerConfig(), camera="gate")
    >>> tracks = tracker.update(0, 0, detections, appearance)             # doctest: +SKIP
    >>> ended = tracker.pop_ended()                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

from refind.streaming.config import TrackerConfig
from refind.streaming.kalman import BoxKalmanFilter, xyah_to_xyxy, xyxy_to_xyah
from refind.streaming.matching import assign, iou_matrix
from refind.streaming.records import Detections, Tracks

log = logging.getLogger(__name__)

_FORBIDDEN = 1e5  # cost of a pair that must not match (above any cost limit)
_EMBEDDING_MOMENTUM = 0.9  # BoT-SORT's exponential moving average of a track's appearance

Appearance = Callable[[np.ndarray], np.ndarray]
"""``appearance(indices)``: (len(indices), d) float32 unit embeddings of those detections."""


class _State(Enum):
    TRACKED = "tracked"
    LOST = "lost"


@dataclass
class _Track:
    """Mutable state of one track; private to the tracker."""

    mean: np.ndarray  # (8,) Kalman state, see refind.streaming.kalman
    cov: np.ndarray  # (8, 8)
    state_ts_ns: int  # time the Kalman state refers to
    last_seen_ns: int  # time of the last matched detection
    xyxy: np.ndarray  # (4,) last matched detection
    score: float
    hits: int = 1
    state: _State = _State.TRACKED
    track_id: int = 0  # public id, 0 until confirmed
    embedding: np.ndarray | None = None  # (d,) unit vector
    embedding_ns: int = 0  # time of the last detection that taught the embedding

    @property
    def confirmed(self) -> bool:
        return self.track_id > 0


@dataclass(frozen=True)
class _Input:
    """One frame's inputs, passed between association stages."""

    ts_ns: int
    dets: Detections
    emb: np.ndarray | None = None  # (n, d) unit vectors where ``embedded``, zeros elsewhere
    embedded: np.ndarray | None = None  # (n,) bool: the rows of ``emb`` that were computed

    def has_embedding(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) bool: which of these detections have an embedding."""
        if self.embedded is None:
            return np.zeros(len(rows), dtype=bool)
        return self.embedded[rows]


class ByteTracker:
    """ByteTrack for one camera; feed it every analysed frame in time order.

    Example:
        >>> tracker = ByteTracker(TrackerConfig(appearance_weight=0.0), camera="gate")
        >>> box = Detections(np.array([[10, 10, 30, 60]]), np.array([0.9]), np.array([0]))
        >>> [len(tracker.update(i, i * 100_000_000, box)) for i in range(3)]
        [0, 1, 1]
        >>> tracker.flush()
        [1]
    """

    def __init__(self, cfg: TrackerConfig, camera: str) -> None:
        self.cfg = cfg
        self.camera = camera
        self._kf = BoxKalmanFilter()
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._ended: list[int] = []
        self._last_ts_ns: int | None = None
        # detections embedded, by why (a detection asked for two reasons counts under the first)
        self.asked = {"ambiguous": 0, "refresh": 0, "reid": 0}

    def update(
        self,
        frame_index: int,
        ts_ns: int,
        detections: Detections,
        appearance: Appearance | None = None,
    ) -> Tracks:
        """Advance to one frame; returns the confirmed tracks matched in it.

        ``appearance(indices)``: optional; returns (len(indices), d) float32 unit embeddings of
        those detections of this frame (the caller crops and embeds them). Called at most once,
        only for the detections that need it (see the module docstring), and never when
        ``cfg.appearance_weight`` is 0. Without it the tracker uses motion alone.
        """
        self._check_time(ts_ns)
        frame = _Input(ts_ns, detections)
        self._predict(ts_ns)
        score = detections.confidence
        high = np.flatnonzero(score >= self.cfg.high_threshold)
        low = np.flatnonzero((score >= self.cfg.low_threshold) & (score < self.cfg.high_threshold))

        confirmed = [t for t in self._tracks if t.confirmed]
        similarity = self._similarity(confirmed, frame, high, fuse=True)  # (T, D)
        if appearance is not None and self.cfg.appearance_weight > 0:
            needed = self._needs_appearance(frame, confirmed, high, similarity)
            frame = self._embed(frame, needed, appearance)
        matched, high, unmatched = self._first_stage(frame, confirmed, high, similarity)
        matched += self._second_stage(frame, low, unmatched)
        if frame.emb is not None:
            found, high = self._reid_stage(frame, high)
            matched += found
        found, high = self._unconfirmed_stage(frame, high)
        matched += found + self._births(frame, high)
        self._expire(ts_ns)
        return self._report(frame_index, ts_ns, [t for t in matched if t.confirmed])

    def coast(self, frame_index: int, ts_ns: int) -> Tracks:
        """Advance to a frame that was not detected (``TrackerConfig.detect_every``): every
        track's box is predicted to ``ts_ns`` and nothing is matched, so no track is confirmed,
        lost or re-identified here. Returns the confirmed tracks being tracked, each with its
        predicted box and its last detection's score; lost tracks past ``max_lost_s`` end, by
        time, as in ``update``."""
        self._check_time(ts_ns)
        self._predict(ts_ns)
        self._expire(ts_ns)
        live = [t for t in self._tracks if t.confirmed and t.state is _State.TRACKED]
        return self._report(frame_index, ts_ns, live, predicted=True)

    def pop_ended(self) -> list[int]:
        """Ids of confirmed tracks that ended since the last call, in the order they ended."""
        ended, self._ended = self._ended, []
        return ended

    def flush(self) -> list[int]:
        """End every track (end of stream): ids not yet popped plus every live confirmed track."""
        ended = self.pop_ended() + [t.track_id for t in self._tracks if t.confirmed]
        self._tracks = []
        return ended

    def forget_appearance(self) -> None:
        """Drop every track's learned appearance (after the embedder changed model: one model's
        vectors cannot be compared with another's); tracks keep their ids and motion."""
        for t in self._tracks:
            t.embedding = None

    def _check_time(self, ts_ns: int) -> None:
        if self._last_ts_ns is not None and ts_ns < self._last_ts_ns:
            raise ValueError(
                f"camera {self.camera}: ts_ns went backwards ({ts_ns} < {self._last_ts_ns})"
            )
        self._last_ts_ns = ts_ns

    def _predict(self, ts_ns: int) -> None:
        """Move every track's Kalman state to ``ts_ns``."""
        if not self._tracks:
            return
        mean = np.stack([t.mean for t in self._tracks])  # (n, 8)
        cov = np.stack([t.cov for t in self._tracks])  # (n, 8, 8)
        lost = np.array([t.state is _State.LOST for t in self._tracks])
        mean[lost, 7] = 0.0  # ByteTrack: a lost box keeps its height
        dt_s = np.array([(ts_ns - t.state_ts_ns) / 1e9 for t in self._tracks])
        mean, cov = self._kf.predict(mean, cov, dt_s)
        for t, m, c in zip(self._tracks, mean, cov, strict=True):
            t.mean, t.cov, t.state_ts_ns = m, c, ts_ns

    def _needs_appearance(
        self, frame: _Input, confirmed: list[_Track], high: np.ndarray, similarity: np.ndarray
    ) -> np.ndarray:
        """Detection indices whose appearance this frame's decisions need (module docstring)."""
        gate = similarity >= self.cfg.match_iou  # (T, D) first-stage candidate pairs
        per_det, per_track = gate.sum(axis=0), gate.sum(axis=1)  # (D,), (T,)
        ambiguous = gate & ((per_det[None, :] >= 2) | (per_track[:, None] >= 2))  # (T, D)
        sure = gate & ~ambiguous  # a pair alone in the gate: motion matches it whatever else
        refresh_ns = self.cfg.appearance_refresh_s * 1e9
        stale = np.array(
            [t.embedding is None or frame.ts_ns - t.embedding_ns >= refresh_ns for t in confirmed],
            dtype=bool,
        )
        ambiguous_det = ambiguous.any(axis=0)  # (D,)
        refresh_det = (sure & stale[:, None]).any(axis=0) & ~ambiguous_det
        need = ambiguous_det | refresh_det
        surely_matched = sure.any(axis=1)  # (T,)
        unsure = [
            t
            for t, matched in zip(confirmed, surely_matched, strict=True)
            if t.embedding is not None and not matched
        ]
        unclaimed = per_det == 0
        reid = np.zeros_like(need)
        if unsure and unclaimed.any():
            reid[unclaimed] = self._within_reach(unsure, frame, high[unclaimed]).any(axis=0)
        self.asked["ambiguous"] += int(ambiguous_det.sum())
        self.asked["refresh"] += int(refresh_det.sum())
        self.asked["reid"] += int(reid.sum())
        return high[need | reid]

    def _embed(self, frame: _Input, rows: np.ndarray, appearance: Appearance) -> _Input:
        """``frame`` with the embeddings of detections ``rows`` (one call, none if no rows)."""
        if len(rows) == 0:
            return frame
        vectors = np.asarray(appearance(rows), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(rows) or not np.isfinite(vectors).all():
            raise ValueError(
                f"camera {self.camera}: appearance({len(rows)} indices) returned an array of "
                f"shape {vectors.shape}; expected ({len(rows)}, d) finite unit vectors"
            )
        emb = np.zeros((len(frame.dets), vectors.shape[1]), dtype=np.float32)  # (n, d)
        embedded = np.zeros(len(frame.dets), dtype=bool)
        emb[rows], embedded[rows] = vectors, True
        return replace(frame, emb=emb, embedded=embedded)

    def _first_stage(
        self, frame: _Input, confirmed: list[_Track], high: np.ndarray, similarity: np.ndarray
    ) -> tuple[list[_Track], np.ndarray, list[_Track]]:
        """High-score boxes vs confirmed tracks (tracked and lost): (matched, boxes left,
        confirmed tracks left)."""
        pairs, free_tracks, free = self._assign(
            confirmed, frame, high, similarity, self.cfg.match_iou
        )
        matched = self._apply(pairs, confirmed, frame, high, learn=True)
        return matched, high[free], [confirmed[i] for i in free_tracks]

    def _second_stage(
        self, frame: _Input, low: np.ndarray, unmatched: list[_Track]
    ) -> list[_Track]:
        """Low-score boxes vs tracks tracked until now, on IoU alone; the rest become lost."""
        tracked = [t for t in unmatched if t.state is _State.TRACKED]
        similarity = self._similarity(tracked, frame, low, fuse=False)
        pairs, free_tracks, _ = self._assign(
            tracked, frame, low, similarity, self.cfg.second_match_iou, appearance=False
        )
        for i in free_tracks:
            tracked[i].state = _State.LOST
        # a low-score box is often occluded: it moves the track but does not teach appearance
        return self._apply(pairs, tracked, frame, low, learn=False)

    def _reid_stage(self, frame: _Input, high: np.ndarray) -> tuple[list[_Track], np.ndarray]:
        """Lost tracks that motion missed vs embedded high-score boxes left, by appearance within
        reach of where they were last seen."""
        assert frame.emb is not None
        lost = [t for t in self._tracks if t.state is _State.LOST and t.embedding is not None]
        if not lost or len(high) == 0:
            return [], high
        cost = 1.0 - np.stack([t.embedding for t in lost]) @ frame.emb[high].T  # (T, D)
        allowed = self._within_reach(lost, frame, high) & frame.has_embedding(high)[None, :]
        cost = np.where(allowed, cost, _FORBIDDEN)
        pairs, _, free = assign(cost, max_cost=self.cfg.reid_max_distance)
        return self._apply(pairs, lost, frame, high, learn=True), high[free]

    def _within_reach(self, tracks: list[_Track], frame: _Input, rows: np.ndarray) -> np.ndarray:
        """(T, D) bool: detection ``rows`` a track may have moved to since last seen (at most
        ``max_speed_hps`` box heights per second, half a height at once) at a similar size."""
        last = np.stack([t.xyxy for t in tracks]).astype(np.float64)  # (T, 4)
        boxes = frame.dets.xyxy[rows].astype(np.float64)  # (D, 4)
        height = last[:, 3] - last[:, 1]  # (T,)
        away_s = np.array([(frame.ts_ns - t.last_seen_ns) / 1e9 for t in tracks])
        reach = height * (0.5 + self.cfg.max_speed_hps * away_s)  # (T,) pixels
        centre_t = (last[:, :2] + last[:, 2:]) / 2
        centre_d = (boxes[:, :2] + boxes[:, 2:]) / 2
        dist_px = np.linalg.norm(centre_t[:, None] - centre_d[None], axis=2)  # (T, D)
        size_ratio = (boxes[None, :, 3] - boxes[None, :, 1]) / np.maximum(height[:, None], 1e-6)
        return (dist_px <= reach[:, None]) & (size_ratio > 0.5) & (size_ratio < 2.0)

    def _unconfirmed_stage(
        self, frame: _Input, high: np.ndarray
    ) -> tuple[list[_Track], np.ndarray]:
        """High-score boxes left vs unconfirmed tracks; an unconfirmed track left unmatched is
        dropped (it must be matched in consecutive frames until confirmed)."""
        tentative = [t for t in self._tracks if not t.confirmed]
        similarity = self._similarity(tentative, frame, high, fuse=True)
        pairs, free_tracks, free = self._assign(
            tentative, frame, high, similarity, self.cfg.unconfirmed_match_iou
        )
        dropped = {id(tentative[i]) for i in free_tracks}
        self._tracks = [t for t in self._tracks if id(t) not in dropped]
        return self._apply(pairs, tentative, frame, high, learn=True), high[free]

    def _similarity(
        self, tracks: list[_Track], frame: _Input, rows: np.ndarray, fuse: bool
    ) -> np.ndarray:
        """(T, D) IoU of the tracks' predicted boxes with detections ``rows`` (times the score
        when fusing)."""
        if not tracks or len(rows) == 0:
            return np.zeros((len(tracks), len(rows)))
        predicted = xyah_to_xyxy(np.stack([t.mean for t in tracks]))  # (T, 4)
        similarity = iou_matrix(predicted, frame.dets.xyxy[rows])  # (T, D)
        if fuse and self.cfg.fuse_score:
            similarity = similarity * frame.dets.confidence[rows][None, :]
        return similarity

    def _assign(
        self,
        tracks: list[_Track],
        frame: _Input,
        rows: np.ndarray,
        similarity: np.ndarray,
        min_similarity: float,
        appearance: bool = True,
    ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        """Match ``tracks`` to detections ``rows`` on motion ``similarity`` (T, D), blended with
        appearance where both sides have one: (pairs (track, position in rows), free tracks,
        free positions in rows)."""
        cost = 1.0 - similarity
        if appearance and frame.emb is not None and len(rows):
            cost = self._with_appearance(cost, tracks, frame, rows)
        cost[similarity < min_similarity] = _FORBIDDEN  # motion gate: appearance never overrides
        return assign(cost, max_cost=1.0 - min_similarity)

    def _with_appearance(
        self, motion_cost: np.ndarray, tracks: list[_Track], frame: _Input, rows: np.ndarray
    ) -> np.ndarray:
        """Blend motion cost with cosine distance where the track and the detection both have
        an appearance."""
        assert frame.emb is not None
        w = self.cfg.appearance_weight
        cost = motion_cost.copy()
        has = frame.has_embedding(rows)  # (D,)
        for i, t in enumerate(tracks):
            if t.embedding is not None:
                dist = np.clip(1.0 - frame.emb[rows[has]] @ t.embedding, 0.0, 1.0)  # (D',)
                cost[i, has] = (1 - w) * motion_cost[i, has] + w * dist
        return cost

    def _apply(
        self,
        pairs: list[tuple[int, int]],
        tracks: list[_Track],
        frame: _Input,
        rows: np.ndarray,
        learn: bool,
    ) -> list[_Track]:
        """Correct matched tracks with their detections (and appearance if ``learn`` and the
        detection was embedded)."""
        if not pairs:
            return []
        chosen = [tracks[i] for i, _ in pairs]
        det_rows = rows[[j for _, j in pairs]]
        boxes = frame.dets.xyxy[det_rows]
        mean, cov = self._kf.update(
            np.stack([t.mean for t in chosen]),
            np.stack([t.cov for t in chosen]),
            xyxy_to_xyah(boxes),
        )
        embedded = frame.has_embedding(det_rows)
        for k, t in enumerate(chosen):
            t.mean, t.cov = mean[k], cov[k]
            t.xyxy, t.score = boxes[k], float(frame.dets.confidence[det_rows[k]])
            t.last_seen_ns, t.state = frame.ts_ns, _State.TRACKED
            t.hits += 1
            if learn and embedded[k]:
                assert frame.emb is not None
                t.embedding = _blend(t.embedding, frame.emb[det_rows[k]])
                t.embedding_ns = frame.ts_ns
            if not t.confirmed and t.hits >= self.cfg.min_hits:
                self._confirm(t)
        return chosen

    def _births(self, frame: _Input, rows: np.ndarray) -> list[_Track]:
        """Start tracks from unmatched confident detections; returns those confirmed at once."""
        rows = rows[frame.dets.confidence[rows] >= self.cfg.new_track_threshold]
        if len(rows) == 0:
            return []
        mean, cov = self._kf.initiate(xyxy_to_xyah(frame.dets.xyxy[rows]))
        born = []
        for k, r in enumerate(rows):
            t = _Track(
                mean=mean[k],
                cov=cov[k],
                state_ts_ns=frame.ts_ns,
                last_seen_ns=frame.ts_ns,
                xyxy=frame.dets.xyxy[r],
                score=float(frame.dets.confidence[r]),
            )
            if frame.embedded is not None and frame.embedded[r]:
                assert frame.emb is not None
                t.embedding, t.embedding_ns = _blend(None, frame.emb[r]), frame.ts_ns
            if self.cfg.min_hits <= 1:
                self._confirm(t)
            born.append(t)
        self._tracks.extend(born)
        return [t for t in born if t.confirmed]

    def _confirm(self, track: _Track) -> None:
        track.track_id = self._next_id
        self._next_id += 1
        log.debug("camera %s: track %d confirmed", self.camera, track.track_id)

    def _expire(self, ts_ns: int) -> None:
        """End lost tracks unseen for longer than max_lost_s."""
        limit_ns = self.cfg.max_lost_s * 1e9
        keep = []
        for t in self._tracks:
            if t.state is _State.LOST and ts_ns - t.last_seen_ns > limit_ns:
                log.debug("camera %s: track %d ended", self.camera, t.track_id)
                self._ended.append(t.track_id)
            else:
                keep.append(t)
        self._tracks = keep

    def _report(self, frame_index: int, ts_ns: int, tracks: list[_Track],
                predicted: bool = False) -> Tracks:
        """``tracks`` by id, each with its last matched box, or with its Kalman state's box
        when ``predicted`` (a coasted frame)."""
        tracks = sorted(tracks, key=lambda t: t.track_id)
        if predicted and tracks:
            boxes = xyah_to_xyxy(np.stack([t.mean for t in tracks]))
        else:
            boxes = np.array([t.xyxy for t in tracks])
        return Tracks(
            camera=self.camera,
            frame_index=frame_index,
            ts_ns=ts_ns,
            track_id=np.array([t.track_id for t in tracks], dtype=np.int64),
            xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            confidence=np.array([t.score for t in tracks], dtype=np.float32),
        )


def _blend(current: np.ndarray | None, new: np.ndarray) -> np.ndarray:
    """Exponential moving average of unit vectors, renormalised."""
    new = np.asarray(new, dtype=np.float32)
    mixed = (
        new if current is None else _EMBEDDING_MOMENTUM * current + (1 - _EMBEDDING_MOMENTUM) * new
    )
    return mixed / max(float(np.linalg.norm(mixed)), 1e-12)
