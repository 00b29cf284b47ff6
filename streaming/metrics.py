"""Prometheus metrics of refind, every one defined here, on a registry of its own.

A ``Metrics`` owns a fresh ``CollectorRegistry`` (never the process-wide default), so two
pipelines, or two tests, in one process keep separate counts. Every part of refind that counts
uses it: a live camera's reader (``refind.streaming.live``), the stage loop's seconds
(``refind.streaming.pipeline``), the HTTP API (``refind.app.api``) and ``refind serve``
(``refind.app.serve``), which fills a fresh one from its actors' reports on each scrape
(counters that live in other processes are set once, on a new registry, not added to).
``render()`` gives the text format that a ``/metrics`` endpoint returns with ``CONTENT_TYPE``.

Example:
    >>> m = Metrics()
    >>> m.frames_in.labels(camera="gate").inc()
    >>> b'refind_camera_frames_in_total{camera="gate"} 1.0' in m.render()
    True
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from refind.streaming.events import CameraState

CONTENT_TYPE = CONTENT_TYPE_LATEST

# The states of a live camera, as the camera-status event and Redis name them.
CAMERA_STATES: tuple[str, ...] = tuple(s.value for s in CameraState)

# Seconds from a frame's capture to its crops being searchable in the gallery.
FRESHNESS_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# Seconds an API request takes.
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Per-camera counters a camera actor reports (CameraReport field -> help text).
CAMERA_COUNTERS: dict[str, str] = {
    "frames_in": "Frames decoded from the camera.",
    "frames_processed": "Frames tracked.",
    "frames_detected": "Frames the detector ran on (the others: nothing moved since the last "
    "detected frame, whose detections they reuse).",
    "reconnects": "Attempts to reopen the camera after it failed, stalled or ended.",
    "tracks_started": "Tracks started.",
    "crops_stored": "Crops embedded and stored.",
    "crops_failed": "Crops whose store failed (logged).",
    "detect_failed": "Frames lost because their detector died (Ray restarts it).",
    "corrupt_packets": "Packets the decoder could not decode (skipped).",
    "corrupt_frames": "Frames decoded with damage the decoder concealed (a bad link or stream).",
    "store_waits": "Times the camera waited for its crop batches in flight.",
    "events_published": "Events handed to Kafka by the camera.",
    "events_sent": "Events of the camera Kafka acknowledged.",
    "events_failed": "Events of the camera given up on (not delivered to Kafka).",
}


@dataclass
class BucketCounts:
    """Observations counted per bucket since the start (``counts[i]``: values at most
    ``bounds[i]`` and above the bound before; the last: above every bound) and their sum.

    What an actor keeps and reports in a few numbers, and the exporter renders as one
    Prometheus histogram that only ever grows.
    """

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def n(self) -> int:
        return sum(self.counts)

    def copy(self) -> BucketCounts:
        return BucketCounts(self.bounds, list(self.counts), self.total)


IDENTITY_COUNTERS = {
    "crops": "Stored crops the identity actor linked.",
    "tracks_ended": "Ended tracks the identity actor relinked with their final span.",
    "changes": "Global id changes (assigned, merged, split) published.",
    "alerts": "Watch alerts raised.",
    "link_seconds": "Seconds spent linking tracks into global ids.",
}


class _Histograms:
    """One labelled histogram whose counts were kept elsewhere (``BucketCounts`` by label)."""

    def __init__(self, name: str, doc: str, label: str, bounds: tuple[float, ...]) -> None:
        self.name, self.doc, self.label, self.bounds = name, doc, label, bounds
        self.rows: dict[str, BucketCounts] = {}

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        edges = [*(floatToGoString(b) for b in self.bounds), "+Inf"]
        for value, row in sorted(self.rows.items()):
            cumulative = itertools.accumulate(row.counts)
            family.add_metric([value], list(zip(edges, cumulative, strict=True)), row.total)
        yield family


class Metrics:
    """The metrics of one refind process (module docstring).

    Cameras: ``camera_<counter>`` for each of CAMERA_COUNTERS (``frames_in`` is also
    ``self.frames_in``, ``reconnects`` ``self.reconnects``); frames_dropped by camera and the
    stage whose bounded queue overflowed (never frames skipped on purpose by the sampler);
    camera_state (1 for the current state); sample_fps; queue_depth by camera and stage;
    stage_seconds spent per camera and stage; frame_latency_seconds (receive -> tracked) and
    freshness_seconds (capture -> searchable). Pools: pool_batches, pool_items, pool_busy_seconds by pool and actor; index
    writers: writer_vectors, writer_crops, writer_events by shard (and outcome). API:
    api_requests, api_request_seconds. Live ingestion: serving_model_info, alias_switches.
    """

    def __init__(self, namespace: str = "refind") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg, ns = self.registry, namespace

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, namespace=ns, registry=reg)

        def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
            return Gauge(name, doc, labels, namespace=ns, registry=reg)

        self.camera = {key: counter(f"camera_{key}", doc, ["camera"])
                       for key, doc in CAMERA_COUNTERS.items()}
        self.frames_in = self.camera["frames_in"]
        self.reconnects = self.camera["reconnects"]
        self.frames_dropped = counter(
            "frames_dropped", "Frames dropped because a bounded queue was full (oldest first).",
            ["camera", "stage"])
        self.camera_state = gauge("camera_state", "1 for the camera's current state.",
                                  ["camera", "state"])
        self.sample_fps = gauge("camera_sample_fps", "A camera's current sample rate.",
                                ["camera"])
        self.queue_depth = gauge("queue_depth", "Items waiting, by camera and stage.",
                                 ["camera", "stage"])
        self.stage_seconds = counter("stage_seconds", "Seconds spent per camera and stage.",
                                     ["camera", "stage"])
        self.frame_latency = gauge(
            "frame_latency_seconds", "Frame received to tracked, last 1000 frames (quantiles).",
            ["camera", "quantile"])
        self.freshness = _Histograms(
            f"{ns}_freshness_seconds", "Time from a frame's capture to its crops being "
            "searchable.", "camera", FRESHNESS_BUCKETS_S)
        reg.register(self.freshness)  # type: ignore[arg-type]
        self.pool_batches = counter("pool_batches", "Batches run by a pool's actor.",
                                    ["pool", "actor"])
        self.pool_items = counter("pool_items", "Items run by a pool's actor.", ["pool", "actor"])
        self.pool_busy = counter("pool_busy_seconds", "Seconds a pool's actor was busy.",
                                 ["pool", "actor"])
        self.api_requests = counter("api_requests", "API requests by endpoint, method and "
                                    "status.", ["endpoint", "method", "status"])
        self.api_latency = Histogram(
            "api_request_seconds", "API request latency by endpoint.", ["endpoint"],
            buckets=REQUEST_BUCKETS_S, namespace=ns, registry=reg)
        self.writer_vectors = gauge("writer_vectors", "Vectors an index writer's shard holds.",
                                    ["shard"])
        self.writer_crops = counter("writer_crops", "Crops an index writer stored.", ["shard"])
        self.writer_events = counter("writer_events", "Events of an index writer's durable "
                                     "record handed to Kafka (published), acknowledged (sent) "
                                     "or given up on (failed).", ["shard", "outcome"])
        self.serving_model = gauge("serving_model_info", "1 for the embedder model of the "
                                   "index version live ingestion writes.", ["model_id"])
        self.alias_switches = counter("alias_switches", "Serving alias switches live ingestion "
                                      "has followed.", [])
        self.identity = {key: counter(f"identity_{key}", doc, [])
                         for key, doc in IDENTITY_COUNTERS.items()}
        self.identity_open = gauge("identity_open_tracks", "Tracks the identity actor holds "
                                   "open (a crop stored, not ended yet).", [])
        self.watches = gauge("watches", "Watches (standing queries) in force.", [])

    def set_camera_state(self, camera: str, state: str) -> None:
        """Mark ``state`` (one of CAMERA_STATES) as the camera's current state."""
        if state not in CAMERA_STATES:
            raise ValueError(f"unknown camera state {state!r}; valid: {', '.join(CAMERA_STATES)}")
        for s in CAMERA_STATES:
            self.camera_state.labels(camera=camera, state=s).set(1.0 if s == state else 0.0)

    def add_stage(self, camera: str, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(camera=camera, stage=stage).inc(seconds)

    def set_freshness(self, camera: str, counts: BucketCounts) -> None:
        """A camera's freshness counts as its actor kept them (since it started)."""
        self.freshness.rows[camera] = counts

    def value(self, name: str, **labels: str) -> float | None:
        """Current value of one sample by its exposed name (e.g. ``refind_frames_dropped_total``)."""
        return self.registry.get_sample_value(name, labels)

    def render(self) -> bytes:
        """All metrics in the Prometheus text exposition format."""
        return generate_latest(self.registry)
