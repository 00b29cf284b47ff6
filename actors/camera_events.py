"""What a camera actor publishes itself: track starts, detections and camera status to Kafka,
camera status and track starts mirrored to Redis (both optional). Stored crops and ended tracks
are published by the index writer (``actors/writer.py``).

Example:
    >>> out = CameraEvents(cfg, camera)                                     # doctest: +SKIP
    >>> out.frame(frame, result, model_id); out.close()                     # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any

from refind.config import RefindConfig
from refind.indexer.redis_meta import CameraCounters
from refind.indexer.redis_mirror import RedisMirror
from refind.streaming.config import CameraConfig
from refind.streaming.events import CameraStatusEvent, DetectionEvent, TrackEvent
from refind.streaming.live import CameraStatus
from refind.streaming.pipeline import FrameResult
from refind.streaming.records import Frame


class CameraEvents:
    """What the camera itself publishes to Kafka and mirrors to Redis (both optional)."""

    def __init__(self, cfg: RefindConfig, camera: CameraConfig) -> None:
        self.camera = camera
        self.bus: Any = None
        if cfg.kafka.enabled:
            from refind.streaming.bus import EventBus  # kafka-python: an optional extra

            self.bus = EventBus(cfg.kafka)
        self.redis = RedisMirror.open(cfg)
        if self.redis is not None:
            self.redis.camera(camera.name, camera.url)

    def publish(self, event: Any) -> None:
        """Hand an event to Kafka (the bus counts those it accepted)."""
        if self.bus is not None:
            self.bus.publish(event)

    def delivered(self) -> tuple[int, int, int]:
        """(published, sent, failed): events the producer accepted, those Kafka acknowledged,
        and those given up on."""
        if self.bus is None:
            return 0, 0, 0
        stats = self.bus.stats()
        return stats.accepted, stats.sent, stats.failed

    def frame(self, frame: Frame, result: FrameResult, model_id: str) -> None:
        if self.bus is not None and self.bus.cfg.publish_detections and len(result.detections):
            self.publish(DetectionEvent.from_detections(
                self.camera.name, frame.index, frame.ts_ns, result.detections))
        for span in result.started:
            self.publish(TrackEvent.from_span(span, "start", model_id=model_id))
            if self.redis is not None:
                self.redis.track_seen(span)

    def status(self, status: CameraStatus) -> None:
        counters = CameraCounters(status.frames_in, status.frames_dropped, status.reconnects)
        if self.redis is not None:
            self.redis.camera_status(self.camera.name, self.camera.url, status.state,
                                     status.message, counters)
        self.publish(CameraStatusEvent(
            camera=self.camera.name, ts_ns=time.time_ns(), state=status.state.value,
            message=status.message[:2000], frames_in=status.frames_in,
            frames_dropped=status.frames_dropped, reconnects=status.reconnects,
        ))

    def close(self) -> None:
        if self.bus is not None:
            self.bus.flush(timeout_s=30)
            self.bus.close(timeout_s=10)
        if self.redis is not None:
            self.redis.close()
