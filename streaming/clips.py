"""A short H.264 clip of each track, and the downscaled frame shown around a stored crop.

An operator checking a hit wants to see the person move, not only a crop. ``ClipRecorder`` keeps,
for every open track, up to ``max_frames`` of the analysed frames it was in, spread evenly over
its life: while a track is young every analysed frame is kept; when it has more than
``max_frames``, every other sample is dropped and the stride doubles. Samples are taken on a
shared grid (the analysed-frame counter modulo the stride), so tracks alive at the same time
share frames, and the frames held stay bounded by about ``max_frames`` times the number of
distinct strides. Frames are held as small JPEGs (longest side ``max_side``), encoded only when
some track samples them. When a track ends, its frames are drawn with its box and encoded as an
MP4 (H.264, yuv420p, faststart: it plays in a browser as it downloads) that plays the track at
its real speed.

``scaled`` and ``draw_box`` also make the view stored beside each crop
(``refind.streaming.crops``): the frame scaled down with the crop's box drawn, so the operator
sees where in the scene the crop was taken.

Example:
    >>> rec = ClipRecorder(max_side=160, max_frames=8)
    >>> image = np.zeros((120, 160, 3), np.uint8)
    >>> for i in range(20):
    ...     rec.update(Frame("gate", i, i * 10**8, image),
    ...                Tracks("gate", i, i * 10**8, [3], [[10, 10, 50, 100]], [0.9]))
    >>> clip = rec.end(3)
    >>> clip.frames, clip.data[4:8]
    (5, b'ftyp')
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from refind.streaming.records import Frame, Tracks

log = logging.getLogger(__name__)

BOX_BGR = (60, 220, 60)


@dataclass(frozen=True)
class TrackClip:
    """The encoded clip of one ended track: ``data`` is an MP4 file of ``frames`` frames."""

    camera: str
    track_id: int
    data: bytes = field(repr=False)
    frames: int


def scaled(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``image`` resized so its longest side is at most ``max_side`` (even sides, as H.264's
    4:2:0 needs), and the scale applied."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    nw, nh = max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)
    if (nw, nh) == (w, h):
        return image, 1.0
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA), nw / w


def draw_box(image: np.ndarray, xyxy, scale: float) -> None:
    """Draw the box ``xyxy`` (frame pixels) on ``image`` (scaled by ``scale``), in place."""
    x1, y1, x2, y2 = (round(v * scale) for v in xyxy)
    thickness = max(2, round(max(image.shape[:2]) / 240))
    cv2.rectangle(image, (x1, y1), (x2, y2), BOX_BGR, thickness)


class _Clip:
    __slots__ = ("samples", "stride")

    def __init__(self) -> None:
        self.stride = 1
        self.samples: list[tuple[int, tuple[float, float, float, float]]] = []  # (n, box)


class ClipRecorder:
    """Keeps each open track's sampled frames and encodes them when it ends (module docstring)."""

    def __init__(self, max_side: int = 320, max_frames: int = 48, jpeg_quality: int = 80) -> None:
        if max_side < 16 or max_frames < 2:
            raise ValueError(f"clip max_side >= 16 and max_frames >= 2, got {max_side}, "
                             f"{max_frames}")
        self.max_side = max_side
        self.max_frames = max_frames
        self.jpeg_quality = jpeg_quality
        self._n = 0  # analysed frames seen
        self._frames: dict[int, tuple[int, bytes, float]] = {}  # n -> (ts_ns, jpeg, scale)
        self._clips: dict[int, _Clip] = {}
        self._camera = ""

    @property
    def frames_held(self) -> int:
        return len(self._frames)

    def update(self, frame: Frame, tracks: Tracks) -> None:
        """Sample ``frame`` for the tracks in it that are due a sample."""
        self._camera = frame.camera
        n = self._n
        self._n += 1
        wanted = False
        for tid, box in zip(tracks.track_id.tolist(), tracks.xyxy.tolist(), strict=True):
            clip = self._clips.get(tid)
            if clip is None:
                clip = self._clips[tid] = _Clip()
            if n % clip.stride:
                continue
            clip.samples.append((n, tuple(box)))  # type: ignore[arg-type]
            wanted = True
            if len(clip.samples) > self.max_frames:
                clip.stride *= 2
                clip.samples = [s for s in clip.samples if s[0] % clip.stride == 0]
        if wanted:
            small, scale = scaled(frame.image, self.max_side)
            ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if ok:
                self._frames[n] = (frame.ts_ns, buf.tobytes(), scale)
        if n % 64 == 0:
            self._drop_unused()

    def end(self, track_id: int) -> TrackClip | None:
        """The ended track's clip (None when it was sampled on fewer than 2 frames)."""
        clip = self._clips.pop(track_id, None)
        if clip is None:
            return None
        samples = [(n, box) for n, box in clip.samples if n in self._frames]
        out = None
        if len(samples) >= 2:
            try:
                out = TrackClip(self._camera, track_id, self._encode(samples), len(samples))
            except (OSError, ValueError) as err:  # a codec missing from this build of PyAV
                log.warning("clip of track %d of %s not encoded: %s", track_id, self._camera, err)
        self._drop_unused()
        return out

    def _drop_unused(self) -> None:
        used = {n for c in self._clips.values() for n, _ in c.samples}
        for n in [n for n in self._frames if n not in used]:
            del self._frames[n]

    def _encode(self, samples: list[tuple[int, tuple[float, float, float, float]]]) -> bytes:
        first_ts, last_ts = self._frames[samples[0][0]][0], self._frames[samples[-1][0]][0]
        seconds = (last_ts - first_ts) / 1e9
        fps = (len(samples) - 1) / seconds if seconds > 0 else 10.0
        rate = Fraction(min(30.0, max(1.0, fps))).limit_denominator(1000)
        # faststart (the index first, so a browser plays while it downloads) rewrites the file:
        # it needs a real file, not a buffer
        with tempfile.TemporaryDirectory(prefix="refind-clip-") as tmp:
            path = Path(tmp) / "clip.mp4"
            self._write(path, samples, rate)
            return path.read_bytes()

    def _write(self, path: Path, samples: list[tuple[int, tuple[float, float, float, float]]],
               rate: Fraction) -> None:
        import av

        with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = None
            for n, box in samples:
                _, jpeg, scale = self._frames[n]
                image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                draw_box(image, box, scale)
                if stream is None:
                    stream = out.add_stream("libx264", rate=rate)
                    stream.width, stream.height = image.shape[1], image.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"preset": "ultrafast", "crf": "28", "threads": "1"}
                elif (image.shape[1], image.shape[0]) != (stream.width, stream.height):
                    image = cv2.resize(image, (stream.width, stream.height))
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                    out.mux(packet)
            assert stream is not None
            for packet in stream.encode():
                out.mux(packet)
