from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from refind.streaming.config import CameraConfig, LiveConfig, ReconnectConfig
from refind.streaming.flow import AdaptiveSampler, Backoff, DropOldestQueue
from refind.streaming.live import (
    CameraState,
    CameraStatus,
    LiveCamera,
)
from refind.streaming.metrics import FRESHNESS_BUCKETS_S, BucketCounts, Metrics
from refind.streaming.records import Frame
from tests.cameras import PETS_VIDEO, HttpTsCamera, RtspCamera, free_port

# Short delays so that reconnects happen within a test's few seconds.
FAST = ReconnectConfig(initial_backoff_s=0.2, max_backoff_s=0.5, jitter=0.1, stall_timeout_s=1.5)


def need_pets() -> Path:
    if not PETS_VIDEO.is_file():
        pytest.skip(f"PETS09-S2L1 clip not found: {PETS_VIDEO.resolve()} (../shared/data)")
    return PETS_VIDEO


def wait_for(what: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {message}")
        time.sleep(0.02)


def drain(cam: LiveCamera, seconds: float) -> list[Frame]:
    frames, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        frame = cam.get(timeout=0.05)
        if frame is not None:
            frames.append(frame)
    return frames


def first_frame_after(cam: LiveCamera, index: int, timeout: float) -> Frame:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        frame = cam.get(timeout=0.05)
        if frame is not None and frame.index > index:
            return frame
    raise AssertionError(f"no frame after index {index} within {timeout} s: {cam.status()}")


def assert_increasing(frames: list[Frame]) -> None:
    idx = [f.index for f in frames]
    ts = [f.ts_ns for f in frames]
    assert idx == sorted(set(idx)), f"frame indices not strictly increasing: {idx}"
    assert ts == sorted(set(ts)), "timestamps not strictly increasing"


@pytest.fixture
def cameras() -> Iterator[Callable[..., LiveCamera]]:
    """Builds started LiveCameras and stops them all after the test."""
    made: list[LiveCamera] = []

    def make(url: str, live: LiveConfig | None = None, **cfg: object) -> LiveCamera:
        config = CameraConfig(name=f"cam{len(made)}", url=url, **cfg)  # type: ignore[arg-type]
        cam = LiveCamera(
            config, live or LiveConfig(reconnect=FAST), metrics=Metrics(), rng=random.Random(0)
        )
        made.append(cam)
        cam.start()
        return cam

    yield make
    for cam in made:
        cam.stop(timeout=1.0)




# DropOldestQueue


@pytest.mark.parametrize(
    ("maxsize", "n_put", "kept", "dropped"),
    [(1, 1, [0], []), (1, 3, [2], [0, 1]), (3, 2, [0, 1], []), (3, 7, [4, 5, 6], [0, 1, 2, 3])],
)
def test_queue_drops_oldest_and_counts(
    maxsize: int, n_put: int, kept: list[int], dropped: list[int]
) -> None:
    q = DropOldestQueue[int](maxsize)
    out = [q.put(i) for i in range(n_put)]
    assert [d for d in out if d is not None] == dropped
    assert q.dropped == len(dropped)
    assert q.qsize() == len(kept) <= maxsize
    assert [q.get(timeout=0) for _ in kept] == kept
    assert q.get(timeout=0) is None


def test_queue_close_wakes_a_waiting_getter_and_refuses_items() -> None:
    q = DropOldestQueue[int](2)
    got: list[int | None] = []
    getter = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
    getter.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    q.close()
    getter.join(2)
    assert got == [None] and time.monotonic() - t0 < 1
    assert q.put(1) is None and q.qsize() == 0
    assert q.put_wait(1, timeout=0) is False


def test_queue_put_wait_waits_for_room() -> None:
    q = DropOldestQueue[int](1)
    q.put(0)
    assert q.put_wait(1, timeout=0.01) is False
    threading.Timer(0.05, q.get).start()
    assert q.put_wait(1, timeout=2) is True
    assert q.get(timeout=0) == 1 and q.dropped == 0


@pytest.mark.parametrize("maxsize", [0, -1])
def test_queue_rejects_bad_size(maxsize: int) -> None:
    with pytest.raises(ValueError, match=f"got {maxsize}"):
        DropOldestQueue[int](maxsize)


# Backoff


@pytest.mark.parametrize(
    ("initial", "cap", "jitter", "expected"),
    [
        (0.5, 30.0, 0.0, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),
        (1.0, 3.0, 0.0, [1.0, 2.0, 3.0, 3.0]),
        (2.0, 1.0, 0.0, [1.0, 1.0]),
    ],
)
def test_backoff_doubles_up_to_the_cap(
    initial: float, cap: float, jitter: float, expected: list[float]
) -> None:
    cfg = ReconnectConfig(initial_backoff_s=initial, max_backoff_s=cap, jitter=jitter)
    b = Backoff(cfg)
    assert [b.next_delay() for _ in expected] == expected
    b.reset()
    assert b.next_delay() == expected[0]


@pytest.mark.parametrize(("initial", "cap", "jitter"), [(0.5, 30.0, 0.2), (1.0, 4.0, 0.5)])
def test_backoff_jitter_stays_in_bounds_and_is_seeded(
    initial: float, cap: float, jitter: float
) -> None:
    cfg = ReconnectConfig(initial_backoff_s=initial, max_backoff_s=cap, jitter=jitter)
    b = Backoff(cfg, random.Random(7))
    seq = [b.next_delay() for _ in range(200)]
    again = Backoff(cfg, random.Random(7))
    assert [again.next_delay() for _ in range(200)] == seq  # same seed, same delays
    for n, delay in enumerate(seq):
        base = min(initial * 2**n, cap / (1 + jitter))
        assert base * (1 - jitter) <= delay <= base * (1 + jitter) <= cap + 1e-9
    assert len(set(seq[-10:])) == 10  # still spread at the cap


# AdaptiveSampler


def kept_over(sampler: AdaptiveSampler, seconds: float, fps: float = 10.0, t0: int = 0) -> int:
    step = int(1e9 / fps)
    return sum(sampler.keep(t0 + i * step) for i in range(round(seconds * fps)))


@pytest.mark.parametrize(
    ("target", "input_fps", "kept_in_10s"),
    [(5.0, 10.0, 50), (2.0, 10.0, 20), (10.0, 10.0, 100), (None, 10.0, 100), (30.0, 10.0, 100),
     (1.0, 25.0, 10)],
)  # fmt: skip
def test_sampler_keeps_the_target_rate(
    target: float | None, input_fps: float, kept_in_10s: int
) -> None:
    assert kept_over(AdaptiveSampler(target, min_fps=0.5), 10.0, input_fps) == kept_in_10s


def test_sampler_keeps_the_rate_under_timestamp_jitter() -> None:
    rng = random.Random(0)
    s = AdaptiveSampler(10.0, min_fps=1.0)
    kept = sum(s.keep(i * 100_000_000 + rng.randint(-20, 20) * 1_000_000) for i in range(100))
    assert kept >= 98


@pytest.mark.parametrize(
    ("target", "drops_at_s", "expected_fps"),
    [
        (8.0, [1.0], 4.0),
        (8.0, [1.0, 1.2, 1.5], 4.0),  # one slowdown within hold_s counts once
        (8.0, [1.0, 2.0, 3.0], 1.0),
        (8.0, [1.0, 2.0, 3.0, 4.0, 5.0], 1.0),  # never below min_fps
        (None, [1.0], 5.0),  # every frame at 10 fps backs off from the input rate
    ],
)
def test_sampler_multiplicative_decrease(
    target: float | None, drops_at_s: list[float], expected_fps: float
) -> None:
    s = AdaptiveSampler(target, min_fps=1.0)
    kept_over(s, 1.0)  # learns the 10 fps input rate
    for t in drops_at_s:
        s.on_drop(int(t * 1e9))
    assert s.rate_fps == pytest.approx(expected_fps)


@pytest.mark.parametrize(
    ("ok_for_s", "expected_fps"), [(0.0, 2.5), (1.0, 3.0), (4.0, 4.5), (5.0, 5.0), (20.0, 5.0)]
)
def test_sampler_additive_increase_back_to_target(ok_for_s: float, expected_fps: float) -> None:
    s = AdaptiveSampler(5.0, min_fps=1.0, recover_fps_per_s=0.5)
    kept_over(s, 1.0)
    s.on_drop(1_000_000_000)
    for i in range(1, round(ok_for_s * 10) + 1):
        s.on_ok(1_000_000_000 + i * 100_000_000)
    assert s.rate_fps == pytest.approx(expected_fps)


@pytest.mark.parametrize(
    ("target", "min_fps", "match"), [(0.0, 1.0, "target_fps"), (2.0, 3.0, "min_fps"),
                                     (None, 0.0, "min_fps")],
)  # fmt: skip
def test_sampler_rejects_bad_rates(target: float | None, min_fps: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdaptiveSampler(target, min_fps)


# Metrics


def test_freshness_kept_by_a_camera_renders_as_one_histogram() -> None:
    counts = BucketCounts(FRESHNESS_BUCKETS_S)
    for seconds in (0.05, 0.3, 0.5, 1.5, 500.0):
        counts.observe(seconds)
    m = Metrics()
    m.set_freshness("gate", counts)
    bucket = "refind_freshness_seconds_bucket"
    assert [m.value(bucket, camera="gate", le=le) for le in ("0.1", "0.5", "2.0", "+Inf")] == [
        1, 3, 4, 5]
    assert m.value("refind_freshness_seconds_sum", camera="gate") == pytest.approx(502.35)


def test_metrics_render_and_reject_unknown_state() -> None:
    m = Metrics()
    m.set_camera_state("gate", "reconnecting")
    m.set_camera_state("gate", "live")
    m.frames_dropped.labels(camera="gate", stage="camera_queue").inc(3)
    m.add_stage("gate", "detect", 0.02)
    counts = BucketCounts(FRESHNESS_BUCKETS_S)
    counts.observe(1.5)
    m.set_freshness("gate", counts)
    text = m.render().decode()
    for line in [
        'refind_camera_state{camera="gate",state="live"} 1.0',
        'refind_camera_state{camera="gate",state="reconnecting"} 0.0',
        'refind_frames_dropped_total{camera="gate",stage="camera_queue"} 3.0',
        'refind_stage_seconds_total{camera="gate",stage="detect"} 0.02',
        'refind_freshness_seconds_count{camera="gate"} 1.0',
    ]:
        assert line in text
    assert Metrics().value("refind_frames_dropped_total", camera="gate", stage="x") is None
    with pytest.raises(ValueError, match="'sleeping'; valid: connecting, live"):
        m.set_camera_state("gate", "sleeping")


# LiveCamera on files


def test_file_without_realtime_delivers_every_frame_then_stops(
    cameras: Callable[..., LiveCamera], tiny_video: Path
) -> None:
    seen: list[CameraStatus] = []
    cam = LiveCamera(
        CameraConfig(name="f", url=str(tiny_video), sample_fps=None), LiveConfig(queue_frames=2),
        on_status=seen.append,
    )  # fmt: skip
    cam.start()
    time.sleep(0.3)  # the reader waits for room instead of dropping
    frames = drain(cam, 1.0)
    assert [f.index for f in frames] == list(range(20))
    assert cam.status().frames_dropped == 0
    assert cam.get(timeout=1) is None  # ended: drained and closed
    assert cam.done
    assert [s.state for s in seen] == [CameraState.CONNECTING, CameraState.LIVE,
                                       CameraState.STOPPED]  # fmt: skip
    assert "end of file" in seen[-1].message and str(tiny_video) in seen[-1].message
    assert cam.stop(timeout=1)


def test_looped_file_keeps_index_and_clock_going(
    cameras: Callable[..., LiveCamera], tiny_video: Path
) -> None:
    cam = cameras(str(tiny_video), sample_fps=None, loop=True)
    frames = [cam.get(timeout=2) for _ in range(45)]
    assert all(f is not None for f in frames)
    assert [f.index for f in frames] == list(range(45))  # type: ignore[union-attr]
    gaps = np.diff([f.ts_ns for f in frames])  # type: ignore[union-attr]
    assert np.allclose(gaps, 100_000_000, atol=1_000_000), gaps  # 10 fps across both loops
    assert cam.status().reconnects == 0


def test_slow_consumer_drops_oldest_and_lowers_the_rate(cameras: Callable[..., LiveCamera]) -> None:
    live = LiveConfig(queue_frames=3, min_fps=1.0, reconnect=FAST)
    cam = cameras(str(need_pets()), live, sample_fps=None, realtime=True, loop=True)
    depth_max, got = 0, []
    end = time.monotonic() + 2.5
    while time.monotonic() < end:  # takes 4 frames a second from a 10 fps camera
        depth_max = max(depth_max, cam.qsize())
        frame = cam.get(timeout=1)
        assert frame is not None
        got.append(frame)
        time.sleep(0.25)
    status = cam.status()
    assert status.frames_dropped > 0 and status.state is CameraState.LIVE
    assert depth_max <= live.queue_frames
    assert status.rate_fps < 10.0  # the sampler backed off
    assert_increasing(got)
    assert got[-1].index - got[0].index > len(got)  # fresh frames: the old ones were skipped
    dropped = cam.metrics.value(
        "refind_frames_dropped_total", camera=cam.name, stage="camera_queue"
    )
    assert dropped == status.frames_dropped


# LiveCamera on network cameras


@pytest.mark.parametrize("server", ["refused", "silent"])
def test_url_that_never_answers(cameras: Callable[..., LiveCamera], server: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        if server == "silent":
            listener.listen(8)  # accepts TCP connections, never answers them
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/live.ts"
        cam = cameras(url)
        time.sleep(1.0)
        status = cam.status()
        expected = {"refused": CameraState.RECONNECTING, "silent": CameraState.CONNECTING}
        assert status.state is expected[server] and url in status.message
        assert status.frames_in == 0
        if server == "refused":
            assert status.reconnects >= 1 and "refused" in status.message
        t0 = time.monotonic()
        cam.stop(timeout=0.5)
        assert time.monotonic() - t0 < 1.0
        assert cam.status().state is CameraState.STOPPED
    # closing the listener resets the silent connection: a reader still opening it ends (CI,
    # beside the other worker, once needed more than 2 s for that)
    assert cam.stop(timeout=15.0)


def test_dead_camera_does_not_hold_up_others(cameras: Callable[..., LiveCamera]) -> None:
    dead = cameras(f"http://127.0.0.1:{free_port()}/live.ts")
    alive = cameras(str(need_pets()), sample_fps=None, realtime=True, loop=True)
    frames: list[Frame] = []
    end = time.monotonic() + 20  # a loaded machine may be slow to start: ten frames, in time
    while len(frames) < 10 and time.monotonic() < end:
        frame = alive.get(timeout=0.05)
        if frame is not None:
            frames.append(frame)
    assert len(frames) == 10, f"{len(frames)} frames while another camera was dead"
    gaps_ms = np.diff([f.ts_ns for f in frames]) / 1e6
    assert np.median(gaps_ms) == pytest.approx(100, abs=15)  # played at its own 10 fps
    assert dead.status().state is CameraState.RECONNECTING


@pytest.fixture(params=["http", "rtsp"])
def network_camera(
    request: pytest.FixtureRequest,
    http_camera_factory: Callable[..., HttpTsCamera],
    rtsp_camera_factory: Callable[..., RtspCamera],
) -> HttpTsCamera | RtspCamera:
    """The Intel clip (768x432, 10 fps) as a live camera over HTTP MPEG-TS or RTSP."""
    return {"http": http_camera_factory, "rtsp": rtsp_camera_factory}[request.param]()


def test_camera_killed_and_back_reconnects_by_itself(
    cameras: Callable[..., LiveCamera], network_camera: HttpTsCamera | RtspCamera
) -> None:
    cam = cameras(network_camera.url, sample_fps=None)
    before = [first_frame_after(cam, -1, timeout=10), *drain(cam, 0.2)]
    assert cam.status().state is CameraState.LIVE and before[0].size_hw == (432, 768)

    network_camera.kill()
    wait_for(lambda: cam.status().state is CameraState.RECONNECTING, 3, "reconnecting")
    time.sleep(0.5)
    down = cam.status()
    assert down.reconnects >= 1 and network_camera.url in down.message
    metric = cam.metrics.value("refind_camera_reconnects_total", camera=cam.name)
    assert metric == down.reconnects
    before += drain(cam, 0.1)  # what was still queued

    network_camera.start()
    t0 = time.monotonic()
    after = [first_frame_after(cam, before[-1].index, timeout=10)]
    reconnect_s = time.monotonic() - t0
    after += drain(cam, 0.2)
    assert cam.status().state is CameraState.LIVE
    assert_increasing(before + after)
    # at most one backoff (0.5 s) plus FFmpeg's probe of the new stream (about 2.4 s)
    assert reconnect_s < 5.0


def test_stalled_camera_is_reconnected(
    cameras: Callable[..., LiveCamera], http_camera: HttpTsCamera
) -> None:
    cam = cameras(http_camera.url, sample_fps=5.0)
    first_frame_after(cam, -1, timeout=10)
    http_camera.pause()  # connection open, nothing sent
    t0 = time.monotonic()
    wait_for(lambda: cam.status().state is not CameraState.LIVE, 4, "stall noticed")
    assert time.monotonic() - t0 < FAST.stall_timeout_s + 1.0
    assert http_camera.url in cam.status().message
    http_camera.resume()
