"""The one stage loop (``refind.streaming.pipeline.CameraPipeline``), driven without Ray or models: a
scripted detector on synthetic frames, then the real detector on PETS09-S2L1."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pytest

from refind.streaming.config import CropConfig, TrackerConfig
from refind.streaming.pipeline import CameraPipeline, EndGate, FrameResult, prefetch
from refind.streaming.records import Detections, Embeddings, Frame, Tracks, TrackSpan

H, W = 240, 320
STEP_NS = 100_000_000  # 10 frames/s
MOTION_ONLY = TrackerConfig(appearance_weight=0.0)


def _image(i: int) -> np.ndarray:
    """A textured frame (crops need some sharpness to have quality)."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _walkers(i: int, people: Sequence[tuple[int, int, int]]) -> Detections:
    """People (first frame, last frame, x at start) walking right at 2 px/frame, 120 px tall."""
    boxes = [[x0 + 2 * (i - a), 60, x0 + 2 * (i - a) + 40, 180]
             for a, b, x0 in people if a <= i <= b]
    n = len(boxes)
    return Detections(np.array(boxes, np.float32).reshape(n, 4), np.full(n, 0.9), np.zeros(n))


def _frames(n: int, camera: str = "gate") -> list[Frame]:
    return [Frame(camera, i, i * STEP_NS, _image(i)) for i in range(n)]


def _drive(pipe: CameraPipeline, n: int, people) -> list[FrameResult]:
    out = [pipe.process(f, _walkers(f.index, people)) for f in _frames(n)]
    return [*out, pipe.finish()]


def _all(results: list[FrameResult], attr: str) -> list:
    return [x for r in results for x in getattr(r, attr)]


class ScriptedDetector:
    """A detector that answers with ``_walkers`` of each frame's index (read from its pixels'
    seed is not possible, so frames are matched by call order)."""

    model_id = "scripted"

    def __init__(self, people) -> None:
        self.people = people
        self.seen = 0
        self.batches: list[int] = []

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        out = [_walkers(self.seen + k, self.people) for k in range(len(images))]
        self.seen += len(images)
        self.batches.append(len(images))
        return out


class CountingEmbedder:
    """A ReID embedder that returns one fixed unit vector per crop and counts its calls."""

    model_id, dim = "count", 4

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, crops: Sequence[np.ndarray]) -> Embeddings:
        self.calls += 1
        vectors = np.tile(np.array([1.0, 0, 0, 0], np.float32), (len(crops), 1))
        return Embeddings(vectors, self.model_id)


ONE = [(0, 29, 20)]  # one person, frames 0-29
TWO = [(0, 29, 20), (10, 39, 150)]


@pytest.mark.parametrize(("people", "offset", "ids"), [
    (ONE, 0, {1}),
    (ONE, 41, {42}),
    (TWO, 7, {8, 9}),
])
def test_ids_are_offset_everywhere(people, offset, ids):
    pipe = CameraPipeline("gate", MOTION_ONLY, CropConfig(), id_offset=offset)
    results = _drive(pipe, 45, people)
    tracked = {int(t) for r in results if r.tracks is not None for t in r.tracks.track_id}
    assert tracked == ids
    assert {s.track_id for s in _all(results, "started")} == ids
    assert {s.track_id for s in _all(results, "ended")} == ids
    assert {c.track_id for c in _all(results, "crops")} == ids


def test_spans_say_when_and_where_the_tracker_saw_each_track():
    pipe = CameraPipeline("gate", MOTION_ONLY, CropConfig())
    results = _drive(pipe, 65, TWO)
    started = {s.track_id: s for s in _all(results, "started")}
    ended = {s.track_id: s for s in _all(results, "ended")}
    # confirmed on the second matched frame (min_hits 2): first reported there
    assert started[1].first_ts_ns == started[1].last_ts_ns == 1 * STEP_NS
    assert replace(ended[1], motion=None) == TrackSpan(
        "gate", 1, STEP_NS, 29 * STEP_NS, (78.0, 60.0, 118.0, 180.0), 29)
    assert started[1].motion is None  # motion is told when a track ends, over all of it
    assert ended[1].motion is not None and ended[1].motion.duration_s == ended[1].seconds
    assert (ended[2].first_ts_ns, ended[2].last_ts_ns, ended[2].frames) == (
        11 * STEP_NS, 39 * STEP_NS, 29)
    # track 1 ended by the tracker (3 s after its last frame), track 2 by the end of the stream
    where = {s.track_id: i for i, r in enumerate(results) for s in r.ended}
    assert where == {1: 60, 2: 65} and results[65].frame is None
    assert pipe.tracks_started == 2 and pipe.open_tracks == 0


@pytest.mark.parametrize(("early", "after_s", "first_crop_frame"), [
    (True, 0.5, 6),  # first candidate at frame 1, + 0.5 s
    (True, 0.0, 1),
    (False, 0.5, None),  # only when the track ends
])
def test_early_crops(early, after_s, first_crop_frame):
    pipe = CameraPipeline("gate", MOTION_ONLY, CropConfig(early_after_s=after_s),
                          early_crops=early)
    results = _drive(pipe, 45, ONE)
    with_crops = [i for i, r in enumerate(results) if r.crops]
    end = next(i for i, r in enumerate(results) if r.ended)
    if first_crop_frame is None:
        assert with_crops == [end]
    else:
        assert with_crops[0] == first_crop_frame and with_crops[-1] == end
    crops = _all(results, "crops")
    assert len({c.frame_index for c in crops}) == len(crops)  # no crop handed out twice
    assert 1 <= len(crops) <= CropConfig().max_per_track + 1


def test_tracking_only_chooses_no_crops():
    pipe = CameraPipeline("gate", MOTION_ONLY, CropConfig(), select_crops=False)
    results = _drive(pipe, 45, TWO)
    assert _all(results, "crops") == [] and len(_all(results, "ended")) == 2


def test_low_detections_are_dropped_before_tracking():
    pipe = CameraPipeline("gate", MOTION_ONLY, CropConfig())
    weak = Detections(np.array([[10, 10, 50, 130], [100, 10, 140, 130]]), [0.9, 0.05], [0, 0])
    result = pipe.process(_frames(1)[0], weak)
    assert len(result.detections) == 1 and pipe.detections == 1


def test_appearance_is_asked_for_and_forgotten_with_a_new_model():
    embedder = CountingEmbedder()
    pipe = CameraPipeline("gate", TrackerConfig(), CropConfig(), embedder=embedder)
    for f in _frames(25):  # two people in view, tracks still open
        pipe.process(f, _walkers(f.index, TWO))
    assert embedder.calls > 0 and pipe.appearance is not None
    assert "appearance" in pipe.times.snapshot()

    def learned() -> list[bool]:
        return [t.embedding is not None for t in pipe._tracker._tracks]

    assert any(learned())
    before = learned()
    other = CountingEmbedder()  # another instance of the same model: appearance is kept
    pipe.set_embedder(other)
    assert pipe.appearance is not None and pipe.appearance.embedder is other
    assert learned() == before
    newer = CountingEmbedder()
    newer.model_id = "count-v2"  # another model: its vectors do not compare, forgotten
    pipe.set_embedder(newer)
    assert not any(learned()) and pipe._tracker._tracks
    motion = CameraPipeline("gate", MOTION_ONLY, CropConfig(), embedder=CountingEmbedder())
    assert motion.appearance is None  # appearance_weight 0: never asked


class MotionStage:
    """A per-track stage for the test: how far each track moved, in pixels."""

    name = "motion"

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.frames = 0

    def update(self, frame: Frame, tracks: Tracks) -> None:
        self.frames += 1
        for tid, box in zip(tracks.track_id.tolist(), tracks.xyxy, strict=True):
            self.first.setdefault(tid, float(box[0]))
            self.last[tid] = float(box[0])

    def end(self, track_id: int) -> Mapping[str, float]:
        return {"dx_px": self.last.pop(track_id) - self.first.pop(track_id)}


def test_track_stages_see_every_frame_and_report_at_the_end():
    from refind.streaming.metrics import Metrics

    stage, metrics = MotionStage(), Metrics()
    pipe = CameraPipeline("gate", MOTION_ONLY, CropConfig(), id_offset=10, stages=[stage],
                          metrics=metrics)
    results = _drive(pipe, 45, TWO)
    assert stage.frames == 45
    analysis = {tid: notes for r in results for tid, notes in r.analysis.items()}
    assert analysis == {11: {"motion.dx_px": 56.0}, 12: {"motion.dx_px": 56.0}}
    seconds = pipe.times.snapshot()
    assert seconds["stage.motion"] > 0
    counted = metrics.value("refind_stage_seconds_total", camera="gate", stage="stage.motion")
    assert counted == pytest.approx(seconds["stage.motion"])


@pytest.mark.parametrize(("make", "match"), [
    (lambda: CameraPipeline("gate", MOTION_ONLY, CropConfig(), id_offset=-1), "id_offset"),
    (lambda: CameraPipeline("gate", MOTION_ONLY, CropConfig()).process(
        _frames(1, "door")[0], Detections.empty()), "given a frame of 'door'"),
    (lambda: next(CameraPipeline("gate", MOTION_ONLY, CropConfig()).run(_frames(1))),
     "needs a detector"),
])
def test_misuse_is_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_run_batches_detection_and_gives_the_same_as_process():
    detector = ScriptedDetector(TWO)
    run = CameraPipeline("gate", MOTION_ONLY, CropConfig(), detector, detector_batch=4)
    by_run = list(run.run(iter(_frames(45))))
    by_step = _drive(CameraPipeline("gate", MOTION_ONLY, CropConfig()), 45, TWO)
    assert detector.batches == [4] * 11 + [1]
    assert len(by_run) == len(by_step) == 46
    for a, b in zip(by_run, by_step, strict=True):
        assert (a.started, a.ended) == (b.started, b.ended)
        assert [(c.track_id, c.frame_index) for c in a.crops] == [
            (c.track_id, c.frame_index) for c in b.crops]
    assert "detect" in run.times.snapshot()


def test_prefetch_hands_a_decoding_error_to_the_consumer():
    def frames():
        yield from _frames(5)
        raise OSError("corrupt packet")

    got = []
    with pytest.raises(OSError, match="corrupt packet"):
        for batch in prefetch(frames(), 2):
            got.append(len(batch))
    assert got == [2, 2]  # what was decoded before the error (the third batch never filled)


def test_end_gate_holds_a_track_until_its_crops_are_stored():
    gate = EndGate()
    a, b = TrackSpan("gate", 1, 0, 5), TrackSpan("gate", 2, 0, 5)
    gate.sent([1, 1, 2])
    gate.ended([a, b])
    assert gate.release() == [] and gate.waiting == 2
    gate.done([2])
    assert gate.release() == [b]
    gate.done([1])
    assert gate.release() == []
    gate.done([1])
    assert gate.release() == [a] and gate.waiting == 0


@pytest.mark.slow
def test_the_real_detector_through_the_pipeline_on_pets(model_store, pets_video):
    """Offline ingest's stage loop on 120 real frames: person tracks with spans that cover
    their crops, and crops inside the frame."""
    from refind.config import RefindConfig
    from refind.models.registry import build_detector
    from refind.streaming.sources import VideoSource

    cfg = RefindConfig()
    pipe = CameraPipeline("pets", MOTION_ONLY, cfg.crops, build_detector(cfg.detector, model_store),
                          id_offset=100)
    results = list(pipe.run(itertools.islice(iter(VideoSource(pets_video, camera="pets")), 120)))
    spans = {s.track_id: s for s in _all(results, "ended")}
    crops = _all(results, "crops")
    assert pipe.frames == 120 and len(spans) >= 5 and all(t > 100 for t in spans)
    assert {c.track_id for c in crops} <= set(spans)
    for c in crops:
        span = spans[c.track_id]
        assert span.first_ts_ns <= c.ts_ns <= span.last_ts_ns
        assert 0 <= c.xyxy[0] < c.xyxy[2] <= 480 and 0 <= c.xyxy[1] < c.xyxy[3] <= 360
