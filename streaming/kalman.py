"""Constant-velocity Kalman filter for boxes, vectorised over tracks, with time steps in seconds.

State per track (8,): ``cx, cy, a, h, vcx, vcy, va, vh`` (centre and height in pixels, aspect
a = w / h, velocities per second). Measurements (4,) are ``cx, cy, a, h``. This is ByteTrack's /
DeepSORT's filter with one change: the step is the elapsed time, not one frame, so the same
settings work at any frame rate and across dropped frames.

The noise levels are ByteTrack's per-step values (position std = h / 20, velocity std = h / 160,
h the box height) applied per ``REFERENCE_DT_S`` of elapsed time, with process noise variance
growing linearly with time (a Wiener process), so two predictions of 0.2 s equal one of 0.4 s.
ByteTrack applies them per frame, which ties the motion model to the frame rate. With a step of
0.1 s the velocity random walk is about 0.2 box heights per second per sqrt(second), the order at
which walking people change speed; at 1/30 s it would be 1.0. On PETS09-S2L1 frames 1-400 the
0.1 s step gave the best MOTA and HOTA of 1/60, 1/30 and 1/10 s (IDF1 was best at 1/60 s).

Example:
    >>> kf = BoxKalmanFilter()
    >>> mean, cov = kf.initiate(np.array([[50.0, 100.0, 0.5, 80.0]]))
    >>> mean, cov = kf.predict(mean, cov, np.array([0.1]))
    >>> mean.shape, cov.shape
    ((1, 8), (1, 8, 8))
"""

from __future__ import annotations

import numpy as np

REFERENCE_DT_S = 0.1  # seconds; the noise levels below are per this step (module docstring)
_STD_POSITION = 1.0 / 20.0  # fraction of box height, per reference step
_STD_VELOCITY = 1.0 / 160.0  # fraction of box height per reference step, per reference step
_STD_ASPECT = 1e-2
_STD_ASPECT_VELOCITY = 1e-5
_STD_ASPECT_MEASURED = 1e-1


def xyxy_to_xyah(xyxy: np.ndarray) -> np.ndarray:
    """(n, 4) corners -> (n, 4) centre x, centre y, aspect w/h, height."""
    w = xyxy[:, 2] - xyxy[:, 0]
    h = np.maximum(xyxy[:, 3] - xyxy[:, 1], 1e-3)
    return np.stack(
        [(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2, w / h, h], axis=1
    ).astype(np.float64)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(n, >=4) centre x, centre y, aspect, height -> (n, 4) corners."""
    h = xyah[:, 3]
    w = xyah[:, 2] * h
    return np.stack(
        [xyah[:, 0] - w / 2, xyah[:, 1] - h / 2, xyah[:, 0] + w / 2, xyah[:, 1] + h / 2], axis=1
    )


class BoxKalmanFilter:
    """Predict and correct box states; every method takes and returns stacked arrays."""

    def __init__(self) -> None:
        self._update_mat = np.eye(4, 8)  # (4, 8) H: measurement = position part of the state

    def initiate(self, xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New states from first measurements (n, 4): mean (n, 8), covariance (n, 8, 8)."""
        n = xyah.shape[0]
        mean = np.concatenate([xyah, np.zeros((n, 4))], axis=1)  # (n, 8), at rest
        h = xyah[:, 3]
        vel = _STD_VELOCITY / REFERENCE_DT_S  # per-second velocity std per unit height
        std = np.stack(
            [
                2 * _STD_POSITION * h,
                2 * _STD_POSITION * h,
                np.full(n, _STD_ASPECT),
                2 * _STD_POSITION * h,
                10 * vel * h,
                10 * vel * h,
                np.full(n, _STD_ASPECT_VELOCITY / REFERENCE_DT_S),
                10 * vel * h,
            ],
            axis=1,
        )  # (n, 8)
        cov = np.zeros((n, 8, 8))
        idx = np.arange(8)
        cov[:, idx, idx] = std**2
        return mean, cov

    def predict(
        self, mean: np.ndarray, cov: np.ndarray, dt_s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """States advanced by ``dt_s`` (n,) seconds each; returns new (n, 8), (n, 8, 8)."""
        n = mean.shape[0]
        if n == 0:
            return mean.copy(), cov.copy()
        dt = np.maximum(np.asarray(dt_s, dtype=np.float64).reshape(n), 0.0)
        motion = np.tile(np.eye(8), (n, 1, 1))  # (n, 8, 8) F
        motion[:, np.arange(4), np.arange(4) + 4] = dt[:, None]
        steps = dt / REFERENCE_DT_S  # process noise variance grows with elapsed time
        h = mean[:, 3]
        vel = _STD_VELOCITY / REFERENCE_DT_S
        std = np.stack(
            [
                _STD_POSITION * h,
                _STD_POSITION * h,
                np.full(n, _STD_ASPECT),
                _STD_POSITION * h,
                vel * h,
                vel * h,
                np.full(n, _STD_ASPECT_VELOCITY / REFERENCE_DT_S),
                vel * h,
            ],
            axis=1,
        )  # (n, 8)
        q = np.zeros((n, 8, 8))
        q[:, np.arange(8), np.arange(8)] = std**2 * steps[:, None]
        new_mean = np.einsum("nij,nj->ni", motion, mean)  # (n, 8)
        new_cov = motion @ cov @ motion.transpose(0, 2, 1) + q  # (n, 8, 8)
        return new_mean, new_cov

    def update(
        self, mean: np.ndarray, cov: np.ndarray, xyah: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """States corrected by measurements (n, 4); returns new (n, 8), (n, 8, 8)."""
        n = mean.shape[0]
        if n == 0:
            return mean.copy(), cov.copy()
        h = mean[:, 3]
        r_std = np.stack(
            [
                _STD_POSITION * h,
                _STD_POSITION * h,
                np.full(n, _STD_ASPECT_MEASURED),
                _STD_POSITION * h,
            ],
            axis=1,
        )  # (n, 4)
        hm = self._update_mat
        proj_mean = mean @ hm.T  # (n, 4)
        proj_cov = hm @ cov @ hm.T  # (n, 4, 4)
        proj_cov[:, np.arange(4), np.arange(4)] += r_std**2
        cross = cov @ hm.T  # (n, 8, 4) P H^T
        gain = np.linalg.solve(proj_cov, cross.transpose(0, 2, 1)).transpose(0, 2, 1)  # (n, 8, 4)
        innovation = xyah - proj_mean  # (n, 4)
        new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
        new_cov = cov - gain @ proj_cov @ gain.transpose(0, 2, 1)
        return new_mean, new_cov
