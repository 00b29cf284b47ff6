"""Serve a video file as an RTSP camera at rtsp://127.0.0.1:PORT/cam, for tests.

Run it with the system python3, which has GStreamer's bindings (python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-good/-bad/-ugly/-libav):

    /usr/bin/python3 tests/rtsp_server.py VIDEO --port 8554 [--size 1280x720] [--fps 10]

Each client gets its own session playing the clip from its start at the clip's rate, as H.264
(x264, zero latency, a key frame every --gop frames); the stream ends with the clip.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

log = logging.getLogger("rtsp_server")


def launch_line(video: Path, size: tuple[int, int] | None, fps: float | None, gop: int) -> str:
    """The gst-launch description of one client's media."""
    caps = ["video/x-raw", "format=I420"]
    if size:
        caps += [f"width={size[0]}", f"height={size[1]}"]
    if fps:
        caps.append(f"framerate={round(fps * 1000)}/1000")
    return (
        f'( filesrc location="{video}" ! decodebin ! videoconvert ! videoscale ! videorate '
        f"! {','.join(caps)} ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--size", type=parse_size, default=None, help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--gop", type=int, default=10, help="Frames between key frames.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="rtsp_server: %(message)s")
    if not args.video.is_file():
        log.error("video not found: %s", args.video)
        return 2
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.video.resolve(), args.size, args.fps, args.gop))
    factory.set_shared(False)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        log.error("cannot listen on 127.0.0.1:%d", args.port)
        return 2
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    log.info("serving %s at rtsp://127.0.0.1:%d/cam", args.video, args.port)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
