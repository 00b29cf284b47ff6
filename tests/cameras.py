"""Test cameras: real clips served as live network streams by real servers, which can go down.

``HttpTsCamera`` serves a clip as live HTTP MPEG-TS with Debian's ffmpeg (H.264, a key frame
every ``gop`` frames, paced at the clip's rate and looped forever); ``RtspCamera`` serves one over
RTSP with gst-rtsp-server (tests/rtsp_server.py, run by the system python3). Registered as a
pytest plugin (``pytest_plugins`` in tests/conftest.py), this module gives the fixtures
``http_camera_factory``, ``http_camera`` and ``rtsp_camera_factory``; tests skip, naming what is
missing, when ffmpeg, GStreamer or the clip is absent.

Example:
    >>> cam = HttpTsCamera(INTEL_VIDEO)                      # doctest: +SKIP
    >>> cam.start(); cam.url                                 # doctest: +SKIP
    'http://127.0.0.1:41234/live.ts'
    >>> cam.kill()   # down: ffmpeg killed, port closed      # doctest: +SKIP
"""

from __future__ import annotations

import functools
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import free_port

DATA = Path(__file__).resolve().parents[1] / "../shared/data"
INTEL_VIDEO = DATA / "intel-sample-videos/one-by-one-person-detection.mp4"  # 768x432, 10 fps
PETS_VIDEO = DATA / "pets09-s2l1/vtest.avi"  # 480x360, 10 fps
FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"


def need_ffmpeg() -> None:
    if not Path(FFMPEG).is_file():
        pytest.skip(f"ffmpeg not found (looked on PATH and at {FFMPEG}); apt-get install ffmpeg")


def need_video(video: Path) -> None:
    if not video.is_file():
        pytest.skip(f"test clip not found: {video.resolve()} (../shared/data)")


def _tcp_sockets() -> list[list[str]] | None:
    """Linux's IPv4 TCP socket table, a row of fields per socket (None where it cannot be
    read)."""
    try:
        return [r.split() for r in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    except OSError:
        return None


_LISTEN, _ESTABLISHED = "0A", "01"  # states in /proc/net/tcp


def is_listening(port: int, or_serving: bool = False) -> bool:
    """Whether something listens on 127.0.0.1:``port``, checked without connecting; with
    ``or_serving``, or holds a client connected to it.

    A probe connection would be taken by ffmpeg as its one client, so Linux's socket table is
    read instead. ffmpeg's ``-listen 1`` closes its listening socket once it accepts that
    client, and a client that keeps retrying (a camera actor) can connect between two looks.
    """
    rows = _tcp_sockets()
    if rows is None:
        return True  # not Linux: assume it listens; clients retry anyway
    want = f"0100007F:{port:04X}"
    states = (_LISTEN, _ESTABLISHED) if or_serving else (_LISTEN,)
    return any(r[1] == want and r[3] in states for r in rows)


def _port_users(port: int) -> str:
    """Sockets on ``port`` (local, remote, state), to say what holds a port that a camera could
    not listen on."""
    rows = _tcp_sockets()
    if rows is None:
        return "unknown"
    mine = f":{port:04X}"
    return "; ".join(" ".join(r[1:4]) for r in rows
                     if r[1].endswith(mine) or r[2].endswith(mine)) or "none"


class HttpTsCamera:
    """A clip served as a live HTTP MPEG-TS camera that can be killed and brought back.

    ffmpeg's HTTP server (``-listen 1``) serves one client and exits when that client leaves,
    so a supervisor thread restarts it for as long as the camera is up; each new client sees
    the clip from its start. ``size`` (w, h) and ``fps`` re-scale and re-time the clip.
    """

    def __init__(
        self,
        video: Path,
        port: int | None = None,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        gop: int = 10,
    ) -> None:
        if not Path(video).is_file():
            raise FileNotFoundError(f"test camera clip not found: {video}")
        self.video = Path(video)
        self.port = port or free_port()
        self.size = size
        self.fps = fps
        self.gop = gop
        self.restarts = 0  # ffmpeg processes started after the first, while up
        self.log_path = Path(tempfile.mkstemp(prefix="ffmpeg-camera-", suffix=".log")[1])
        self._lock = threading.Lock()
        self._up = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._supervisor: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.ts"

    def command(self) -> list[str]:
        vf = ["-vf", f"scale={self.size[0]}:{self.size[1]}"] if self.size else []
        rate = ["-r", f"{self.fps:g}"] if self.fps else []
        return [
            FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error",
            "-re", "-stream_loop", "-1", "-i", str(self.video), "-an", *vf, *rate,
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
            "-g", str(self.gop), "-pix_fmt", "yuv420p",
            "-f", "mpegts", "-listen", "1", self.url,
        ]  # fmt: skip

    def start(self, wait_s: float = 20.0) -> None:
        """Bring the camera up on its port; returns once ffmpeg listens (on a loaded machine
        a restart on the same port took over 5 s once: the wait is generous, the usual start
        is well under a second)."""
        with self._lock:
            if self._up:
                return
            self._up = True
        if self._supervisor is not None:
            self._supervisor.join()
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"http-camera-{self.port}", daemon=True
        )
        self._supervisor.start()
        deadline = time.monotonic() + wait_s
        while not is_listening(self.port, or_serving=True):
            if time.monotonic() > deadline:
                log = self.log_path.read_text(errors="replace")[-2000:] if (
                    self.log_path.is_file()) else ""
                raise RuntimeError(f"ffmpeg did not listen on {self.url} in {wait_s:g} s "
                                   f"({self.restarts} restarts); its log ends:\n{log}\n"
                                   f"port {self.port}: {_port_users(self.port)}")
            time.sleep(0.02)

    def kill(self, wait_s: float = 5.0) -> None:
        """Take the camera down: ffmpeg killed (clients see the stream end), port closed."""
        with self._lock:
            self._up = False
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
        if proc is not None:
            proc.wait(wait_s)
        deadline = time.monotonic() + wait_s
        while is_listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def pause(self) -> None:
        """Hang the camera (SIGSTOP): its connection stays open but no data comes."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"camera {self.url} has no running ffmpeg to signal")
            self._proc.send_signal(sig)

    def close(self) -> None:
        """Take the camera down for good and remove ffmpeg's log."""
        self.kill()
        if self._supervisor is not None:
            self._supervisor.join(5.0)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> HttpTsCamera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _supervise(self) -> None:
        first = True
        with self.log_path.open("ab") as err:
            while True:
                with self._lock:
                    if not self._up:
                        return
                    self._proc = subprocess.Popen(
                        self.command(), stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=err,
                    )  # fmt: skip
                    proc = self._proc
                    self.restarts += 0 if first else 1
                    first = False
                proc.wait()
                time.sleep(0.05)  # a client left (or ffmpeg failed): serve the next one


RTSP_SERVER = Path(__file__).resolve().parent / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # has GStreamer's bindings (python3-gi); the venv does not


@functools.cache
def gst_rtsp_missing() -> str | None:
    """Why the RTSP test camera cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).is_file():
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst; Gst.init(None);"
        "assert all(Gst.ElementFactory.find(e) for e in ('x264enc', 'rtph264pay', 'decodebin'))"
    )
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"gst-rtsp-server is not usable from {SYSTEM_PYTHON}: {last}"
    return None


class RtspCamera:
    """A clip served as an RTSP camera (rtsp://127.0.0.1:PORT/cam) by gst-rtsp-server.

    The server runs under the system python3 (tests/rtsp_server.py). Each client gets the clip
    from its start at its own rate; the stream ends with the clip. Same controls as HttpTsCamera.
    """

    def __init__(
        self,
        video: Path,
        port: int | None = None,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        gop: int = 10,
    ) -> None:
        if not Path(video).is_file():
            raise FileNotFoundError(f"test camera clip not found: {video}")
        self.video = Path(video)
        self.port = port or free_port()
        self.size = size
        self.fps = fps
        self.gop = gop
        self.log_path = Path(tempfile.mkstemp(prefix="rtsp-camera-", suffix=".log")[1])
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def command(self) -> list[str]:
        cmd = [SYSTEM_PYTHON, str(RTSP_SERVER), str(self.video), "--port", str(self.port)]
        cmd += ["--gop", str(self.gop)]
        if self.size:
            cmd += ["--size", f"{self.size[0]}x{self.size[1]}"]
        if self.fps:
            cmd += ["--fps", f"{self.fps:g}"]
        return cmd

    def start(self, wait_s: float = 10.0) -> None:
        """Bring the camera up; returns once the server listens."""
        if self._proc is not None and self._proc.poll() is None:
            return
        with self.log_path.open("ab") as err:
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        deadline = time.monotonic() + wait_s
        while not is_listening(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"RTSP test server did not listen on {self.url}:\n{tail}")
            time.sleep(0.02)

    def kill(self, wait_s: float = 5.0) -> None:
        """Take the camera down: server killed, its connections and port closed."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(wait_s)
        self._proc = None

    def pause(self) -> None:
        """Hang the camera (SIGSTOP): its connections stay open but no data comes."""
        if self._proc is None:
            raise RuntimeError(f"camera {self.url} is down")
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Take the camera down for good and remove the server's log."""
        self.kill()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> RtspCamera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def rtsp_camera_factory() -> Iterator[Callable[..., RtspCamera]]:
    """Makes started RtspCameras (args as RtspCamera's) and takes them all down after."""
    cameras: list[RtspCamera] = []

    def make(video: Path = INTEL_VIDEO, **kwargs: object) -> RtspCamera:
        missing = gst_rtsp_missing()
        if missing:
            pytest.skip(missing)
        need_video(video)
        cam = RtspCamera(video, **kwargs)  # type: ignore[arg-type]
        cameras.append(cam)
        cam.start()
        return cam

    yield make
    for cam in cameras:
        cam.close()


@pytest.fixture
def http_camera_factory() -> Iterator[Callable[..., HttpTsCamera]]:
    """Makes started HttpTsCameras (args as HttpTsCamera's) and takes them all down after."""
    cameras: list[HttpTsCamera] = []

    def make(video: Path = INTEL_VIDEO, **kwargs: object) -> HttpTsCamera:
        need_ffmpeg()
        need_video(video)
        cam = HttpTsCamera(video, **kwargs)  # type: ignore[arg-type]
        cameras.append(cam)
        cam.start()
        return cam

    yield make
    for cam in cameras:
        cam.close()


@pytest.fixture
def http_camera(http_camera_factory: Callable[..., HttpTsCamera]) -> HttpTsCamera:
    """The Intel one-by-one clip (768x432, 10 fps) as a live HTTP MPEG-TS camera."""
    return http_camera_factory(INTEL_VIDEO)
