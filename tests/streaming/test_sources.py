from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from streaming.sources import SourceError, VideoSource


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2 s, 10 fps H.264 clip written with PyAV."""
    import av

    path = tmp_path_factory.mktemp("video") / "tiny.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            img = np.full((48, 64, 3), i * 10, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_decodes_every_frame_with_pts_times(tiny_video: Path) -> None:
    frames = list(VideoSource(tiny_video, camera="c"))
    assert [f.index for f in frames] == list(range(20))
    assert frames[0].size_hw == (48, 64)
    assert frames[5].ts_ns == pytest.approx(0.5e9, abs=1e6)


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
    url = f"{scheme}://127.0.0.1:{_free_port()}/stream"
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
    import http.server
    import threading

    ts = tmp_path / "clip.ts"
    r = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(tiny_video), "-c", "copy", "-f", "mpegts",
         str(ts)],
        capture_output=True,
    ) if _has_ffmpeg() else None
    if r is None or r.returncode != 0:
        pytest.skip("Debian's ffmpeg is not installed")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.ts"
        frames = list(VideoSource(url, camera="c"))
        assert len(frames) == 20
        assert frames[-1].ts_ns >= frames[0].ts_ns  # wall-clock times for live URLs
    finally:
        server.shutdown()


def _has_ffmpeg() -> bool:
    import shutil

    return shutil.which("ffmpeg") is not None
