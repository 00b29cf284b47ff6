from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from refind.streaming.config import TrackerConfig
from refind.streaming.kalman import BoxKalmanFilter, xyah_to_xyxy, xyxy_to_xyah
from refind.streaming.matching import assign, iou_matrix
from refind.streaming.records import Detections, Tracks
from refind.streaming.tracker import ByteTracker

FPS = 10


def box(cx: float, cy: float, w: float = 20, h: float = 50) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def dets(boxes: list[list[float]], scores: list[float] | None = None) -> Detections:
    if not boxes:
        return Detections.empty()
    scores = [0.9] * len(boxes) if scores is None else scores
    return Detections(np.array(boxes), np.array(scores), np.zeros(len(boxes)))


class Looks:
    """Appearance callback over known per-frame embeddings; records what the tracker asks."""

    def __init__(self, per_frame: list[np.ndarray]) -> None:
        self.per_frame = per_frame  # one (n_k, d) array per frame
        self.asked: dict[int, list[int]] = {}  # frame position -> indices asked

    def for_frame(self, k: int) -> Callable[[np.ndarray], np.ndarray]:
        def appearance(indices: np.ndarray) -> np.ndarray:
            assert k not in self.asked, f"appearance called twice in frame {k}"
            self.asked[k] = [int(i) for i in indices]
            return self.per_frame[k][indices]

        return appearance


def run(
    tracker: ByteTracker,
    frames: list[Detections],
    fps: float = FPS,
    looks: Looks | None = None,
    start: int = 0,
) -> list[Tracks]:
    """Feed ``frames`` as frame indices start, start + 1, ... at ``fps``."""
    out = []
    for k, d in enumerate(frames):
        i = start + k
        appearance = None if looks is None else looks.for_frame(k)
        out.append(tracker.update(i, round(i * 1e9 / fps), d, appearance))
    return out


def ids_of(tracks: list[Tracks]) -> set[int]:
    return {int(t) for tr in tracks for t in tr.track_id}


def motion_only(**kw: object) -> TrackerConfig:
    return TrackerConfig(appearance_weight=0.0, **kw)


@pytest.mark.parametrize("min_hits", [1, 2, 3])
def test_track_is_reported_from_its_min_hits_th_frame(min_hits: int) -> None:
    tracker = ByteTracker(motion_only(min_hits=min_hits), "cam")
    out = run(tracker, [dets([box(100 + 3 * i, 100)]) for i in range(6)])
    first = next(i for i, t in enumerate(out) if len(t))
    assert first == min_hits - 1
    assert ids_of(out) == {1}


def test_reported_box_is_the_matched_detection_and_record_is_filled() -> None:
    tracker = ByteTracker(motion_only(), "gate")
    out = run(tracker, [dets([box(100 + 2 * i, 100)], [0.8]) for i in range(3)])
    last = out[-1]
    assert (last.camera, last.frame_index, last.ts_ns) == ("gate", 2, 200_000_000)
    np.testing.assert_allclose(last.xyxy[0], box(104, 100))
    assert last.confidence[0] == pytest.approx(0.8)
    assert last.track_id.dtype == np.int64


@pytest.mark.parametrize(
    ("score", "why"),
    [
        (0.4, "low score: only extends existing tracks"),
        (0.65, "high score but below new_track_threshold"),
    ],
)
def test_lone_weak_box_never_starts_a_track(score: float, why: str) -> None:
    tracker = ByteTracker(motion_only(), "cam")
    out = run(tracker, [dets([box(200, 150)], [score]) for _ in range(30)])
    assert ids_of(out) == set(), why
    assert tracker.flush() == []


def test_low_score_boxes_extend_a_tracked_person() -> None:
    scores = [0.9] * 5 + [0.3] * 10  # occluded: the detector grows unsure
    frames = [dets([box(100 + 2 * i, 100)], [s]) for i, s in enumerate(scores)]
    out = run(ByteTracker(motion_only(), "cam"), frames)
    assert [len(t) for t in out[1:]] == [1] * 14
    assert ids_of(out) == {1}


def test_two_people_crossing_keep_their_ids() -> None:
    frames = []
    for i in range(40):
        a = box(60 + 6 * i, 100)  # walks right
        b = box(300 - 6 * i, 112)  # walks left, slightly lower: they overlap when crossing
        frames.append(dets([a, b]))
    out = run(ByteTracker(motion_only(), "cam"), frames)
    assert ids_of(out) == {1, 2}
    for tid, direction in ((1, 1), (2, -1)):
        xs = [float(t.xyxy[t.track_id == tid, 0][0]) for t in out if tid in t.track_id]
        assert len(xs) == 39
        assert all(direction * (b - a) > 0 for a, b in itertools.pairwise(xs))


def test_coasted_frames_report_predicted_boxes_and_keep_the_crossing_ids() -> None:
    """Detecting every 2nd frame (``detect_every``): between, the tracker moves each box by
    its motion; two people crossing keep their ids, as when every frame is detected."""
    tracker = ByteTracker(motion_only(), "cam")
    out = []
    for i in range(80):
        ts = round(i * 1e9 / FPS)
        if i % 2:
            out.append(tracker.coast(i, ts))
        else:
            out.append(tracker.update(i, ts, dets([box(60 + 3 * i, 100), box(300 - 3 * i, 112)])))
    assert ids_of(out) == {1, 2}
    for k in range(9, 79, 2):  # coasted: predicted where the person is (3 px a frame)
        coasted = out[k]
        assert len(coasted) == 2 and coasted.frame_index == k
        left = float(coasted.xyxy[coasted.track_id == 1, 0][0]) + 10  # the box's centre
        assert abs(left - (60 + 3 * k)) < 2, (k, left)
    for tid, direction in ((1, 1), (2, -1)):
        xs = [float(t.xyxy[t.track_id == tid, 0][0]) for t in out if tid in t.track_id]
        assert all(direction * (b - a) > 0 for a, b in itertools.pairwise(xs))


def test_coasting_neither_confirms_nor_keeps_a_track_past_max_lost() -> None:
    tracker = ByteTracker(motion_only(min_hits=2, max_lost_s=1.0), "cam")
    tracker.update(0, 0, dets([box(100, 100)]))
    assert len(tracker.coast(1, 100_000_000)) == 0  # one hit: not confirmed by a prediction
    tracker.update(2, 200_000_000, dets([box(104, 100)]))
    assert len(tracker.update(3, 300_000_000, dets([]))) == 0  # confirmed, then lost
    assert len(tracker.coast(4, 400_000_000)) == 0  # a lost track is not reported
    tracker.coast(5, 1_500_000_000)
    assert tracker.pop_ended() == [1]  # lost for longer than max_lost_s, by time


@pytest.mark.parametrize(("gap_frames", "same_id"), [(10, True), (25, True), (40, False)])
def test_occlusion_shorter_than_max_lost_keeps_the_id(gap_frames: int, same_id: bool) -> None:
    cfg = motion_only(max_lost_s=3.0)
    frames = [
        dets([] if 10 <= i < 10 + gap_frames else [box(100 + 2 * i, 150)])
        for i in range(10 + gap_frames + 5)
    ]
    out = run(ByteTracker(cfg, "cam"), frames)
    assert (ids_of(out) == {1}) is same_id


@pytest.mark.parametrize("fps", [5, 10, 30])
def test_track_ends_after_max_lost_s_of_time_at_any_frame_rate(fps: float) -> None:
    cfg = motion_only(max_lost_s=1.0)
    tracker = ByteTracker(cfg, "cam")
    seen = 2 * fps  # frames with the person
    ended_at = None
    for i in range(seen + 3 * fps):
        d = dets([box(100, 100)]) if i < seen else Detections.empty()
        tracker.update(i, round(i * 1e9 / fps), d)
        if tracker.pop_ended() == [1]:
            ended_at = i
            break
    assert ended_at is not None
    last_seen_s = (seen - 1) / fps
    ended_s = ended_at / fps
    assert 1.0 < ended_s - last_seen_s <= 1.0 + 1 / fps + 1e-9


def test_ids_are_positive_increasing_and_never_reused() -> None:
    tracker = ByteTracker(motion_only(max_lost_s=0.3), "cam")
    seen: list[int] = []
    for person in range(4):  # one after another, each ends before the next comes
        start = 11 * person
        out = run(tracker, [dets([box(50 + 80 * person, 100)]) for _ in range(5)], start=start)
        out += run(tracker, [Detections.empty() for _ in range(6)], start=start + 5)
        seen.extend(sorted(ids_of(out)))
        assert tracker.pop_ended() == [seen[-1]]
    assert seen == [1, 2, 3, 4]


def test_flush_ends_every_confirmed_track_once() -> None:
    tracker = ByteTracker(motion_only(), "cam")
    run(tracker, [dets([box(100, 100), box(300, 100)]) for _ in range(3)])
    assert sorted(tracker.flush()) == [1, 2]
    assert tracker.flush() == []
    assert tracker.pop_ended() == []


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


RED, BLUE, GREEN = unit([1, 0, 0, 0]), unit([0, 1, 0, 0]), unit([0, 0, 1, 0])


def walk(
    paths: list[list[float | None]], looks: list[np.ndarray], scores: list[float] | None = None
) -> tuple[list[Detections], Looks]:
    """Frames of people moving along x ``paths`` (None: unseen) at y 100, each with its look."""
    frames, embs = [], []
    for k in range(len(paths[0])):
        seen = [p for p in range(len(paths)) if paths[p][k] is not None]
        frames.append(
            dets(
                [box(paths[p][k], 100) for p in seen],  # type: ignore[arg-type]
                None if scores is None else [scores[p] for p in seen],
            )
        )
        embs.append(np.stack([looks[p] for p in seen]) if seen else np.zeros((0, 4), np.float32))
    return frames, Looks(embs)


def steady(x0: float, n: int, step: float = 5.0) -> list[float | None]:
    return [x0 + step * i for i in range(n)]


ALONE = [steady(100, 30)]
FAR_APART = [steady(100, 12), steady(400, 12)]
SIDE_BY_SIDE = [steady(100, 12), steady(112, 12)]  # each box is a candidate of both tracks


@pytest.mark.parametrize(
    ("paths", "refresh_s", "asked", "reasons", "why"),
    [
        (ALONE, 3600.0, {2: [0]}, (0, 1, 0), "learned once, on the first match after "
         "confirmation"),
        (ALONE, 1.0, {2: [0], 12: [0], 22: [0]}, (0, 3, 0), "refreshed every 1 s (10 frames "
         "at 10 fps)"),
        (FAR_APART, 3600.0, {2: [0, 1]}, (0, 2, 0), "each learned once, both in one call"),
        (SIDE_BY_SIDE, 3600.0, {k: [0, 1] for k in range(2, 12)}, (20, 0, 0),
         "ambiguous in every frame"),
    ],
)
def test_appearance_is_asked_only_for_the_detections_that_need_it(
    paths: list[list[float | None]], refresh_s: float, asked: dict[int, list[int]],
    reasons: tuple[int, int, int], why: str
) -> None:
    frames, looks = walk(paths, [RED, BLUE][: len(paths)])
    tracker = ByteTracker(TrackerConfig(appearance_refresh_s=refresh_s), "cam")
    run(tracker, frames, looks=looks)
    assert looks.asked == asked, why
    # and the tracker says why it asked, detection by detection
    assert tuple(tracker.asked[k] for k in ("ambiguous", "refresh", "reid")) == reasons, why


def test_forget_appearance_makes_tracks_learn_it_again() -> None:
    """After a model switch the camera drops the tracks' appearance: the next frame asks for
    it again, and the track keeps its id."""
    frames, looks = walk(ALONE, [RED])
    tracker = ByteTracker(TrackerConfig(appearance_refresh_s=3600.0), "cam")
    before = run(tracker, frames[:5], looks=looks)
    tracker.forget_appearance()
    after_looks = Looks(looks.per_frame[5:])
    after = run(tracker, frames[5:], looks=after_looks, start=5)
    assert looks.asked == {2: [0]} and after_looks.asked == {0: [0]}
    assert ids_of(before + after) == {1}


def test_low_score_boxes_are_never_embedded() -> None:
    """An occluded person's weak boxes extend the track but are neither asked for nor learned."""
    frames, looks = walk([steady(100, 20)], [RED])
    frames = [dets(d.xyxy.tolist(), [0.9 if k < 5 else 0.3]) for k, d in enumerate(frames)]
    out = run(ByteTracker(TrackerConfig(appearance_refresh_s=0.1), "cam"), frames, looks=looks)
    assert sorted(looks.asked) == [2, 3, 4]
    assert ids_of(out) == {1}


@pytest.mark.parametrize(
    ("cfg", "with_callback"),
    [
        (TrackerConfig(appearance_weight=0.0), True),
        (TrackerConfig(), False),
    ],
)
def test_motion_only_never_calls_appearance_and_matches_weight_zero(
    cfg: TrackerConfig, with_callback: bool
) -> None:
    paths = [steady(60, 40, 6), steady(300, 40, -6)]  # two people crossing
    frames, looks = walk(paths, [RED, BLUE])
    got = run(ByteTracker(cfg, "cam"), frames, looks=looks if with_callback else None)
    want = run(ByteTracker(TrackerConfig(appearance_weight=0.0), "cam"), frames)
    assert looks.asked == {}
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.track_id, b.track_id)
        np.testing.assert_array_equal(a.xyxy, b.xyxy)


@pytest.mark.parametrize(("appearance_weight", "same_id"), [(0.75, True), (0.0, False)])
def test_appearance_re_identifies_a_lost_person_motion_cannot_find(
    appearance_weight: float, same_id: bool
) -> None:
    """Walks right, stops behind a pillar, comes out 60 px back: IoU with the prediction is 0,
    so motion alone gives a new id; appearance, asked for the unclaimed box near the lost
    track, gives the old one."""
    cfg = TrackerConfig(appearance_weight=appearance_weight)
    path: list[float | None] = [*steady(100, 10), *[None] * 5, *steady(85, 5)]
    frames, looks = walk([path], [RED])
    tracker = ByteTracker(cfg, "cam")
    out = run(tracker, frames, looks=looks)
    assert (ids_of(out) == {1}) is same_id
    if appearance_weight:
        assert looks.asked == {2: [0], 15: [0]}  # learned, then asked when it reappears
        assert tracker.asked == {"ambiguous": 0, "refresh": 1, "reid": 1}
    else:
        assert looks.asked == {}


def test_a_stranger_where_a_lost_person_was_gets_a_new_id() -> None:
    """The same scene, but someone else comes out: appearance refuses the old id."""
    path: list[float | None] = [*steady(100, 10), *[None] * 5, *steady(85, 5)]
    frames, looks = walk([path], [RED])
    for k in range(15, 20):
        looks.per_frame[k] = GREEN[None]
    out = run(ByteTracker(TrackerConfig(), "cam"), frames, looks=looks)
    assert ids_of(out) == {1, 2}


def test_appearance_keeps_ids_when_two_people_swap_places() -> None:
    """Two people side by side step into each other's place: motion alone would keep the
    boxes; appearance, asked because both boxes are candidates of both tracks, follows the
    people."""
    frames, looks = walk([[100.0] * 12, [112.0] * 12], [RED, BLUE])
    for k in range(6, 12):
        looks.per_frame[k] = np.stack([BLUE, RED])
    out = run(ByteTracker(TrackerConfig(), "cam"), frames, looks=looks)
    first_red = int(out[2].track_id[np.argmin(out[2].xyxy[:, 0])])
    last = out[-1]
    assert int(last.track_id[np.argmax(last.xyxy[:, 0])]) == first_red


def test_appearance_of_the_wrong_shape_is_refused() -> None:
    tracker = ByteTracker(TrackerConfig(), "cam")
    frames = [dets([box(100 + 5 * i, 100)]) for i in range(3)]
    run(tracker, frames[:2])
    with pytest.raises(ValueError, match="appearance"):
        tracker.update(2, 200_000_000, frames[2], lambda idx: np.zeros((2, 4), np.float32))


def test_time_going_backwards_is_refused() -> None:
    tracker = ByteTracker(TrackerConfig(), "cam")
    tracker.update(0, 100, Detections.empty())
    with pytest.raises(ValueError, match="backwards"):
        tracker.update(1, 50, dets([box(0, 0)]))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 1 / 3),
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
    ],
)
def test_iou_matrix(a: list[float], b: list[float], expected: float) -> None:
    assert iou_matrix(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("cost", "limit", "pairs"),
    [
        ([[0.1, 0.9], [0.9, 0.2]], 0.5, [(0, 0), (1, 1)]),
        ([[0.1, 0.9], [0.9, 0.7]], 0.5, [(0, 0)]),
        ([[0.6, 0.1], [0.1, 0.6]], 0.5, [(0, 1), (1, 0)]),
    ],
)
def test_assign_keeps_pairs_under_the_cost_limit(
    cost: list[list[float]], limit: float, pairs: list[tuple[int, int]]
) -> None:
    got, _, _ = assign(np.array(cost), limit)
    assert sorted(got) == pairs


def test_kalman_learns_velocity_in_pixels_per_second() -> None:
    kf = BoxKalmanFilter()
    mean, cov = kf.initiate(xyxy_to_xyah(np.array([box(100, 100)])))
    for i in range(1, 30):  # 40 px/s to the right, seen at 10 fps
        mean, cov = kf.predict(mean, cov, np.array([0.1]))
        mean, cov = kf.update(mean, cov, xyxy_to_xyah(np.array([box(100 + 4 * i, 100)])))
    assert mean[0, 4] == pytest.approx(40.0, rel=0.05)
    ahead, _ = kf.predict(mean, cov, np.array([1.0]))
    assert xyah_to_xyxy(ahead)[0, 0] == pytest.approx(box(100 + 4 * 29 + 40, 100)[0], abs=2.0)


def test_kalman_prediction_depends_on_elapsed_time_only() -> None:
    kf = BoxKalmanFilter()
    mean, cov = kf.initiate(xyxy_to_xyah(np.array([box(100, 100)])))
    mean[0, 4] = 30.0
    once = kf.predict(mean, cov, np.array([0.4]))
    twice = kf.predict(*kf.predict(mean, cov, np.array([0.2])), np.array([0.2]))
    np.testing.assert_allclose(once[0], twice[0])
    # process noise adds linearly with time; the velocity term's propagation differs slightly
    np.testing.assert_allclose(np.diag(once[1][0])[4:], np.diag(twice[1][0])[4:])
