from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from refind.streaming.sources import SourceError, VideoSource
from tests.conftest import serve_directory
from tests.servers import free_port


def test_decodes_every_frame_with_pts_times(tiny_video: Path) -> None:
    frames = list(VideoSource(tiny_video, camera="c"))
    assert [f.index for f in frames] == list(range(20))
    assert frames[0].size_hw == (48, 64)
    assert frames[5].ts_ns == pytest.approx(0.5e9, abs=1e6)


def test_a_start_time_shifts_the_pts_times(tiny_video: Path, caplog) -> None:
    start = 1_700_000_000 * 10**9  # --start-time: the clip's wall-clock start
    with caplog.at_level(logging.WARNING, logger="refind.streaming.sources"):
        shifted = [f.ts_ns for f in VideoSource(tiny_video, camera="c", start_ns=start)]
    assert [t - start for t in shifted] == [f.ts_ns for f in VideoSource(tiny_video, camera="c")]
    assert "backwards" not in caplog.text


@pytest.mark.parametrize(("fps", "expected"), [(5.0, 10), (2.0, 4), (100.0, 20)])
def test_sampler_keeps_the_asked_rate(tiny_video: Path, fps: float, expected: int) -> None:
    src = VideoSource(tiny_video, camera="c", sample_fps=fps)
    assert len(list(src)) == expected
    assert src.stats.skipped_by_sampler == 20 - expected


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        VideoSource(tmp_path / "nope.mp4", camera="c")


def test_not_a_video(tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video")
    with pytest.raises(SourceError, match="cannot open"):
        list(VideoSource(bad, camera="c"))


def test_truncated_file_yields_what_decodes(tiny_video: Path, tmp_path: Path) -> None:
    data = tiny_video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    try:
        frames = list(VideoSource(cut, camera="c"))
    except SourceError as err:  # a cut moov atom cannot be opened at all: named clearly
        assert "cut.mp4" in str(err)
    else:
        assert len(frames) < 20


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_dead_url_fails_fast_with_its_name(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}/stream"
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=f"cannot open video source '{scheme}://"):
        list(VideoSource(url, camera="c", open_timeout_s=3))
    assert time.monotonic() - t0 < 10


def test_silent_server_times_out() -> None:
    """A TCP port that accepts but never answers must not hang the caller."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        t0 = time.monotonic()
        with pytest.raises(SourceError):
            list(VideoSource(f"http://127.0.0.1:{port}/x.ts", camera="c", open_timeout_s=2,
                             read_timeout_s=2))
        assert time.monotonic() - t0 < 15
    finally:
        server.close()


def test_http_mpegts_stream(tiny_video: Path, tmp_path: Path) -> None:
    """A real MPEG-TS file served over HTTP decodes like the file."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("Debian's ffmpeg is not installed")
    ts = tmp_path / "clip.ts"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(tiny_video), "-c", "copy", "-f", "mpegts",
         str(ts)],
        check=True,
    )

    with serve_directory(tmp_path) as base:
        url = f"{base}/clip.ts"
        frames = list(VideoSource(url, camera="c"))
        assert len(frames) == 20
        assert frames[-1].ts_ns >= frames[0].ts_ns  # wall-clock times for live URLs


def test_udp_mpegts_stream(tiny_video: Path) -> None:
    """A real UDP MPEG-TS stream from Debian's ffmpeg, read while it is being sent."""
    import threading

    if shutil.which("ffmpeg") is None:
        pytest.skip("Debian's ffmpeg is not installed")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = VideoSource(f"udp://127.0.0.1:{port}", camera="u", open_timeout_s=10,
                         read_timeout_s=3)
    frames: list = []
    errors: list = []

    def read() -> None:
        try:
            for f in source:
                frames.append(f)
        except Exception as err:  # the stream ends by timing out once ffmpeg stops sending
            errors.append(err)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-re", "-stream_loop", "2", "-i", str(tiny_video),
         "-c", "copy", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"],
        check=True, timeout=30,
    )
    reader.join(timeout=20)
    assert len(frames) >= 20, (len(frames), errors)
    assert [f.index for f in frames] == list(range(len(frames)))


@pytest.mark.parametrize("region, hw", [
    ((0.0, 0.0, 0.5, 1.0), (48, 32)),
    ((0.5, 0.25, 1.0, 0.75), (24, 32)),
    ((0.0, 0.0, 1.0, 1.0), (48, 64)),
])
def test_a_region_cuts_every_frame(tiny_video: Path, region, hw) -> None:
    whole = list(VideoSource(tiny_video, camera="c"))
    cut = list(VideoSource(tiny_video, camera="c", region=region))
    assert [f.size_hw for f in cut] == [hw] * 20
    assert [f.ts_ns for f in cut] == [f.ts_ns for f in whole]
    x1, y1 = round(region[0] * 64), round(region[1] * 48)
    assert np.array_equal(cut[7].image, whole[7].image[y1:y1 + hw[0], x1:x1 + hw[1]])
    assert cut[7].image.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("region", [(0.5, 0, 0.5, 1), (0, 0, 1.2, 1), (-0.1, 0, 1, 1),
                                    (0, 0.9, 1, 0.1)])
def test_a_bad_region_is_refused_with_the_fix(tiny_video: Path, region) -> None:
    with pytest.raises(ValueError, match=r"fractions of the frame .*left half"):
        VideoSource(tiny_video, camera="c", region=region)
