"""Prometheus metrics of refind, defined in one place on a registry of their own.

Each ``Metrics`` owns a fresh ``CollectorRegistry`` (never the process-wide default), so two
pipelines, or two tests, in one process keep separate counts. ``render()`` gives the text
exposition format that a ``/metrics`` endpoint returns with ``CONTENT_TYPE``.

Example:
    >>> m = Metrics()
    >>> m.frames_in.labels(camera="gate").inc()
    >>> b'refind_frames_in_total{camera="gate"} 1.0' in m.render()
    True
"""

from __future__ import annotations

from typing import get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    generate_latest,
)

from streaming.events import CameraState

CONTENT_TYPE = CONTENT_TYPE_LATEST

# The states of a live camera: those of the camera-status event (streaming.live.CameraState
# has the same values).
CAMERA_STATES: tuple[str, ...] = get_args(CameraState)

# Seconds one stage takes for one item (a frame decode, a detector batch, an index write).
STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds from a frame's capture to its crops being searchable in the gallery.
FRESHNESS_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


class Metrics:
    """The metrics of one refind process; every series is labelled by camera and/or stage.

    frames_in: frames decoded per camera. frames_dropped: frames thrown away, by camera and by
    the stage whose bounded queue overflowed (never counts frames skipped on purpose by the
    sampler). reconnects: reopen attempts after a camera failed or ended. camera_state: one
    time series per state, 1 for the current one. queue_depth: items waiting, by camera and
    stage. stage_latency_seconds and freshness_seconds: histograms.
    """

    def __init__(self, namespace: str = "refind") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg, ns = self.registry, namespace
        self.frames_in = Counter(
            "frames_in", "Frames decoded from a camera.", ["camera"], namespace=ns, registry=reg
        )
        self.frames_dropped = Counter(
            "frames_dropped",
            "Frames dropped because a bounded queue was full (oldest first).",
            ["camera", "stage"],
            namespace=ns,
            registry=reg,
        )
        self.reconnects = Counter(
            "camera_reconnects",
            "Attempts to reopen a camera after it failed, stalled or ended.",
            ["camera"],
            namespace=ns,
            registry=reg,
        )
        self.camera_state = Enum(
            "camera_state",
            "Current state of a camera's reader.",
            ["camera"],
            states=list(CAMERA_STATES),
            namespace=ns,
            registry=reg,
        )
        self.queue_depth = Gauge(
            "queue_depth",
            "Items waiting in a bounded queue.",
            ["camera", "stage"],
            namespace=ns,
            registry=reg,
        )
        self.stage_latency = Histogram(
            "stage_latency_seconds",
            "Time one stage takes for one item.",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            namespace=ns,
            registry=reg,
        )
        self.freshness = Histogram(
            "freshness_seconds",
            "Time from a frame's capture to its crops being searchable.",
            buckets=FRESHNESS_BUCKETS_S,
            namespace=ns,
            registry=reg,
        )

    def set_camera_state(self, camera: str, state: str) -> None:
        """Mark ``state`` (one of CAMERA_STATES) as the camera's current state."""
        if state not in CAMERA_STATES:
            raise ValueError(f"unknown camera state {state!r}; valid: {', '.join(CAMERA_STATES)}")
        self.camera_state.labels(camera=camera).state(state)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_latency.labels(stage=stage).observe(seconds)

    def observe_freshness(self, seconds: float) -> None:
        self.freshness.observe(seconds)

    def value(self, name: str, **labels: str) -> float | None:
        """Current value of one sample by its exposed name (e.g. ``refind_frames_in_total``)."""
        return self.registry.get_sample_value(name, labels)

    def render(self) -> bytes:
        """All metrics in the Prometheus text exposition format."""
        return generate_latest(self.registry)
