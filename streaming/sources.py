"""Video sources decoded with PyAV: files, RTSP (TCP or UDP), HTTP and UDP MPEG-TS.

A source yields ``Frame`` records in BGR. Opening has a timeout, so a URL that never answers
fails with ``SourceError`` naming the URL instead of hanging; a corrupt packet is skipped and
counted, and only a long run of undecodable packets ends the stream with an error.

Example:
    >>> src = VideoSource("../shared/data/pets09-s2l1/vtest.avi", camera="pets")  # doctest: +SKIP
    >>> next(iter(src)).size_hw                                                      # doctest: +SKIP
    (360, 480)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import av

from refind.streaming.boxes import Region, check_region, cut_region
from refind.streaming.clock import live_now_ns
from refind.streaming.records import Frame

log = logging.getLogger(__name__)

_LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


class SourceError(RuntimeError):
    """A video source cannot be opened or read; the message names the source and the cause."""


@dataclass
class SourceStats:
    """Counters of one source, for progress and metrics."""

    decoded: int = 0
    yielded: int = 0
    skipped_by_sampler: int = 0
    corrupt_packets: int = 0  # packets the decoder refused (skipped)
    corrupt_frames: int = 0  # frames decoded with damage concealed (the decoder flags them)


def is_live_url(url: str) -> bool:
    return urlparse(url).scheme.lower() in _LIVE_SCHEMES


class VideoSource:
    """Decodes one camera or file into Frames, optionally sampled down to ``sample_fps``.

    ``region`` cuts a part of every frame (an operator splitting a wide view into cameras):
    boxes, crops and tracks are then in the region's pixels.
    Timestamps: files use presentation time (pts) from the start of the file, plus ``start_ns``
    (the wall-clock time of its first frame, when known; 0 counts from 1970-01-01 00:00 UTC);
    live URLs use the wall-clock time a frame was received, since a camera's pts need not
    relate to real time.
    """

    def __init__(
        self,
        url: str | Path,
        camera: str,
        sample_fps: float | None = None,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        rtsp_transport: str = "tcp",
        max_corrupt_run: int = 50,
        start_ns: int = 0,
        region: Region | None = None,
    ) -> None:
        self.url = str(url)
        self.region = check_region(region) if region is not None else None
        self.start_ns = start_ns
        self.camera = camera
        self.sample_fps = sample_fps
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.rtsp_transport = rtsp_transport
        self.max_corrupt_run = max_corrupt_run
        self.live = is_live_url(self.url)
        self.stats = SourceStats()
        self._fallback_fps = 25.0
        self._count_clock = False
        self._last_ts_ns = -1
        if start_ns and self.live:
            raise SourceError(f"{self.url!r} is a live stream, timed by the clock: a start time "
                              "is for files")
        if not self.live:
            p = Path(self.url)
            if not p.exists():
                raise SourceError(f"video file not found: {p}")
            if not p.is_file():
                raise SourceError(f"video path is not a file: {p}")

    def _options(self) -> dict[str, str]:
        if not self.live:
            return {}
        # A live stream is probed for 0.5 s, not FFmpeg's default 5 s: opening and every
        # reconnect take ~1 s instead of ~2.4 s, and fewer probe frames arrive in one burst.
        opts = {"analyzeduration": "500000", "probesize": "1000000"}
        scheme = urlparse(self.url).scheme.lower()
        if scheme.startswith("rtsp"):
            opts["rtsp_transport"] = self.rtsp_transport
        if scheme == "udp":
            opts |= {"overrun_nonfatal": "1", "fifo_size": "50000000"}
        return opts

    def open(self) -> av.container.InputContainer:
        """Open the container and check it has a video stream; raise SourceError otherwise."""
        try:
            container = av.open(
                self.url,
                options=self._options(),
                timeout=(self.open_timeout_s, self.read_timeout_s),
            )
        except av.error.FFmpegError as err:
            raise SourceError(f"cannot open video source {self.url!r}: {err}") from None
        except OSError as err:
            raise SourceError(f"cannot open video source {self.url!r}: {err}") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.url!r} has no video stream")
        return container

    def frame_count_hint(self) -> int | None:
        """Frames in a file as its header says (for progress bars); None for live sources."""
        if self.live:
            return None
        n = self._header("frames")
        return int(n) if n else None

    def frame_rate(self) -> float | None:
        """Frames per second of a file as its header says; None when it does not say."""
        rate = self._header("average_rate")
        return float(rate) if rate else None

    def frame_size(self) -> tuple[int, int] | None:
        """Width and height of a file's frames as its header says; None when it does not."""
        w, h = self._header("width"), self._header("height")
        return (int(w), int(h)) if w and h else None  # type: ignore[call-overload]

    def _header(self, field: str) -> object:
        """One field of the video stream's header (None when the file cannot be read)."""
        try:
            with av.open(self.url) as c:
                return getattr(c.streams.video[0], field)
        except av.error.FFmpegError:
            return None

    def __iter__(self) -> Iterator[Frame]:
        container = self.open()
        try:
            yield from self._frames(container)
        finally:
            container.close()

    def _frames(self, container: av.container.InputContainer) -> Iterator[Frame]:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        self._fallback_fps = float(stream.average_rate or 25)
        # AVI stores no presentation times: FFmpeg hands B-frame streams decode-order pts.
        self._count_clock = "avi" in container.format.name.split(",")
        self._last_ts_ns = -1
        next_keep_ns = 0
        step_ns = int(1e9 / self.sample_fps) if self.sample_fps else 0
        corrupt_run = 0
        for packet in self._packets(container, stream):
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError as err:
                corrupt_run += 1
                self.stats.corrupt_packets += 1
                log.warning("%s: skipping corrupt packet: %s", self.camera, err)
                if corrupt_run >= self.max_corrupt_run:
                    raise SourceError(
                        f"{self.url!r}: {corrupt_run} corrupt packets in a row; giving up"
                    ) from None
                continue
            corrupt_run = 0
            for vf in decoded:
                self.stats.corrupt_frames += bool(vf.is_corrupt)
                ts_ns = self._timestamp_ns(vf)
                index = self.stats.decoded
                self.stats.decoded += 1
                if step_ns and ts_ns < next_keep_ns:
                    self.stats.skipped_by_sampler += 1
                    continue
                next_keep_ns = max(next_keep_ns + step_ns, ts_ns) if step_ns else 0
                self.stats.yielded += 1
                image = vf.to_ndarray(format="bgr24")
                if self.region is not None:
                    image = cut_region(image, self.region)
                yield Frame(self.camera, index, ts_ns, image, received_ns=live_now_ns())
        if self.stats.decoded == 0:
            raise SourceError(f"{self.url!r}: no frame could be decoded")

    def _packets(self, container: av.container.InputContainer, stream: av.VideoStream):
        try:
            yield from container.demux(stream)
        except av.error.FFmpegError as err:
            raise SourceError(f"{self.url!r}: read failed: {err}") from None

    def _timestamp_ns(self, vf: av.VideoFrame) -> int:
        """Capture time of a frame, never going backwards within one source."""
        if self.live:
            ts = live_now_ns()  # a step of the host's clock neither stalls nor reorders
        else:
            if vf.time is not None and not self._count_clock:
                ts = round(vf.time * 1e9)
                if ts + self.start_ns <= self._last_ts_ns:
                    log.warning("%s: pts went backwards; timing frames by count", self.camera)
                    self._count_clock = True
            if vf.time is None or self._count_clock:  # frames counted at the nominal rate
                ts = int(self.stats.decoded * 1e9 / self._fallback_fps)
            ts += self.start_ns
        ts = max(ts, self._last_ts_ns + 1)
        self._last_ts_ns = ts
        return ts
