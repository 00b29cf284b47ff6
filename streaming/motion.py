"""How a person moves over their tracklet: direction, speed, standing still, in image terms.

``track_motion`` summarises a track's boxes over time into a ``TrackMotion``. Distances are in
person heights (the track's median box height), so a walker far from the camera and one close
to it read the same: people walk at about 0.5-1 heights per second. For a camera looking down
on a scene, moving down the image is coming towards the camera and a growing box is too, so
``towards`` combines both.

Example:
    >>> t = np.arange(0, 2.0, 0.1)
    >>> boxes = np.stack([100 + 40 * t, 50 + 0 * t, 120 + 40 * t, 110 + 0 * t], axis=1)
    >>> m = track_motion(t, boxes)
    >>> round(m.vx, 2), m.still < 0.1                 # 40 px/s at a height of 60 px
    (0.67, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

STILL_SPEED = 0.15  # heights per second below which a person counts as standing
SPEED_WINDOW_S = 0.6  # displacement is measured over this span, not frame to frame (box jitter)


@dataclass(frozen=True)
class TrackMotion:
    """Motion of one track over ``duration_s`` seconds.

    vx, vy: mean velocity of the box centre in heights per second (+x right, +y down the image);
    growth: mean d ln(box height) / dt per second (+ growing); speed: median speed over
    ``SPEED_WINDOW_S`` windows, heights per second; still: fraction of those windows slower
    than ``STILL_SPEED``; height_px: the median box height the units are based on; enter,
    exit: the edge of the frame the track began or ended at (``SIDES``), "" when it began or
    ended inside the frame, None when the frame's size was not known; frame_wh: that size;
    path: where the feet (the box's bottom centre) were, in frame pixels, at up to
    ``PATH_POINTS`` times spread evenly over the track, its first and last box included (to
    tell whether it went to a place); empty when not kept.
    """

    vx: float
    vy: float
    growth: float
    speed: float
    still: float
    duration_s: float
    height_px: float
    enter: str | None = None
    exit: str | None = None
    frame_wh: tuple[int, int] | None = None
    path: tuple[tuple[float, float], ...] = ()

    @property
    def towards(self) -> float:
        """How fast the person comes towards the camera (heights per second; < 0: away)."""
        return self.vy + 2.0 * self.growth

    def as_dict(self) -> dict[str, float | str]:
        """Plain numbers and words (the ``motion`` of a track event): the frame's size as
        ``frame_w``, ``frame_h``, the path as ``"x,y x,y ..."``."""
        out: dict[str, float | str] = {k: round(float(getattr(self, k)), 4) for k in _FIELDS}
        out |= {k: getattr(self, k) for k in _SIDE_FIELDS if getattr(self, k) is not None}
        if self.frame_wh is not None:
            out["frame_w"], out["frame_h"] = float(self.frame_wh[0]), float(self.frame_wh[1])
        if self.path:
            out["path"] = " ".join(f"{x:.1f},{y:.1f}" for x, y in self.path)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, float | str]) -> TrackMotion:
        """The motion ``as_dict`` wrote (``enter``, ``exit``, the frame's size and the path may
        be absent, as in motion stored before they were kept); a missing or unknown key is a
        ValueError naming it."""
        missing = [k for k in _FIELDS if k not in d]
        extra = [k for k in d if k not in _FIELDS and k not in _SIDE_FIELDS
                 and k not in _EXTRA_FIELDS]
        if missing or extra:
            raise ValueError(f"track motion needs {', '.join(_FIELDS)}; missing {missing}, "
                             f"unknown {extra}")
        sides = {k: None if d.get(k) is None else str(d[k]) for k in _SIDE_FIELDS}
        bad = [v for v in sides.values() if v and v not in SIDES]
        if bad:
            raise ValueError(f"track motion sides must be one of {', '.join(SIDES)}, got {bad}")
        if ("frame_w" in d) != ("frame_h" in d):
            raise ValueError("track motion has one of frame_w, frame_h without the other")
        frame_wh = (int(float(d["frame_w"])), int(float(d["frame_h"]))) if "frame_w" in d \
            else None
        return cls(**{k: float(d[k]) for k in _FIELDS}, **sides,  # type: ignore[arg-type]
                   frame_wh=frame_wh, path=_read_path(str(d.get("path", ""))))


def _read_path(text: str) -> tuple[tuple[float, float], ...]:
    """``"x,y x,y ..."`` -> points; a malformed path is a ValueError quoting it."""
    try:
        points = tuple((float(x), float(y)) for x, y in (p.split(",") for p in text.split()))
    except ValueError:
        raise ValueError(f"track motion path must read 'x,y x,y ...', got {text[:80]!r}") \
            from None
    return points


_FIELDS = ("vx", "vy", "growth", "speed", "still", "duration_s", "height_px")
_SIDE_FIELDS = ("enter", "exit")
_EXTRA_FIELDS = ("frame_w", "frame_h", "path")
PATH_POINTS = 8
SIDES = ("left", "right", "top", "bottom")
EDGE = 0.03  # a box this close to an edge (fraction of the frame) touches it


def edge_of(xyxy: ArrayLike, frame_wh: tuple[int, int]) -> str:
    """The frame edge a box touches (within ``EDGE`` of the frame's size; the nearest when it
    touches two), or "" when it is inside the frame."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(xyxy).reshape(4))
    w, h = frame_wh
    gaps = {"left": x1 / w, "right": (w - x2) / w, "top": y1 / h, "bottom": (h - y2) / h}
    side, gap = min(gaps.items(), key=lambda kv: kv[1])
    return side if gap <= EDGE else ""


class TrackPath:
    """The boxes of one open track over time, bounded: past ``cap`` samples every other one is
    dropped and only every ``stride``-th new one is kept, so a track followed for hours costs
    at most ``cap`` samples and still covers its whole time.

    Example:
        >>> path = TrackPath(cap=4)
        >>> for i in range(10):
        ...     path.add(i * 10**8, (i, 0, i + 10, 30))
        >>> len(path), path.stride
        (3, 4)
    """

    __slots__ = ("_last", "_seen", "_t", "_xyxy", "cap", "frame_wh", "stride")

    def __init__(self, cap: int = 256, frame_wh: tuple[int, int] | None = None) -> None:
        if cap < 2:
            raise ValueError(f"cap must be at least 2, got {cap}")
        self.cap, self.stride, self._seen, self.frame_wh = cap, 1, 0, frame_wh
        self._t: list[int] = []
        self._xyxy: list[tuple[float, float, float, float]] = []
        self._last: tuple[int, tuple[float, float, float, float]] | None = None

    def __len__(self) -> int:
        return len(self._t)

    def add(self, ts_ns: int, xyxy: tuple[float, float, float, float]) -> None:
        self._seen += 1
        self._last = (int(ts_ns), xyxy)  # the last box always counts: where the track left
        if (self._seen - 1) % self.stride:
            return
        self._t.append(int(ts_ns))
        self._xyxy.append(xyxy)
        if len(self._t) > self.cap:
            self._t, self._xyxy = self._t[::2], self._xyxy[::2]
            self.stride *= 2

    def motion(self) -> TrackMotion | None:
        """The track's motion so far (``track_motion``), None while too short to tell."""
        t, boxes = list(self._t), list(self._xyxy)
        if self._last is not None and t and self._last[0] > t[-1]:
            t.append(self._last[0])
            boxes.append(self._last[1])
        if len(t) < 3:
            return None
        return track_motion(np.asarray(t, np.float64) / 1e9, np.asarray(boxes), self.frame_wh)


def track_motion(times_s: ArrayLike, xyxy: ArrayLike,
                 frame_wh: tuple[int, int] | None = None) -> TrackMotion | None:
    """The motion of a track seen at ``times_s`` ((n,) seconds, increasing) with boxes ``xyxy``
    ((n, 4) pixels) in frames of ``frame_wh`` (for the edges it entered and left by; unknown
    without it); None with fewer than 3 boxes or under 0.3 s, too short to tell."""
    t = np.asarray(times_s, np.float64).reshape(-1)
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    if len(t) != len(b):
        raise ValueError(f"{len(t)} times for {len(b)} boxes")
    if np.any(np.diff(t) <= 0):
        raise ValueError("track times must increase")
    if len(t) < 3 or t[-1] - t[0] < 0.3:
        return None
    height = np.maximum(b[:, 3] - b[:, 1], 1.0)  # (n,)
    h = float(np.median(height))
    cx = (b[:, 0] + b[:, 2]) / 2
    vx = float(np.polyfit(t, cx, 1)[0]) / h
    # the feet move with the person; the head's y also moves when the box grows
    vy = float(np.polyfit(t, b[:, 3], 1)[0]) / h
    growth = float(np.polyfit(t, np.log(height), 1)[0])
    # speed over windows of SPEED_WINDOW_S: each sample against the first sample that far later
    later = np.searchsorted(t, t + SPEED_WINDOW_S)
    ok = later < len(t)
    if ok.any():
        i, j = np.nonzero(ok)[0], later[ok]
        step = np.hypot(cx[j] - cx[i], b[j, 3] - b[i, 3]) / (t[j] - t[i]) / h  # (k,)
    else:  # shorter than one window: the whole track is one step
        step = np.array([np.hypot(cx[-1] - cx[0], b[-1, 3] - b[0, 3]) / (t[-1] - t[0]) / h])
    enter = edge_of(b[0], frame_wh) if frame_wh else None
    leave = edge_of(b[-1], frame_wh) if frame_wh else None
    return TrackMotion(vx=vx, vy=vy, growth=growth, speed=float(np.median(step)),
                       still=float(np.mean(step < STILL_SPEED)),
                       duration_s=float(t[-1] - t[0]), height_px=h, enter=enter, exit=leave,
                       frame_wh=(int(frame_wh[0]), int(frame_wh[1])) if frame_wh else None,
                       path=_path(cx, b[:, 3]))


def _path(x: np.ndarray, y: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Up to ``PATH_POINTS`` of the feet's (x, y), evenly spread, first and last included."""
    pick = np.unique(np.linspace(0, len(x) - 1, min(PATH_POINTS, len(x))).round().astype(int))
    return tuple((float(x[i]), float(y[i])) for i in pick)
