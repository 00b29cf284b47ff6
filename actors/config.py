"""Config section of the Ray actor graph."""

from __future__ import annotations

from pydantic import (
    Field,
)

from refind.streaming.config import NAME_PATTERN, Section


class RayConfig(Section):
    address: str | None = Field(
        None, description="Ray cluster: None starts a local Ray; 'auto' or 'ray://head:10001'."
    )
    num_cpus: int | None = Field(None, ge=1, le=4096, description="Local Ray only: CPUs to use.")
    namespace: str = Field("refind", pattern=NAME_PATTERN)
    detector_actors: int = Field(1, ge=1, le=1024, description="Detector pool size.")
    embedder_actors: int = Field(1, ge=1, le=1024, description="Embedder pool size.")
    index_writers: int = Field(
        1, ge=1, le=1024, description="Gallery shards; cameras are assigned by hash of name."
    )
    detector_num_gpus: float = Field(0.0, ge=0.0, le=8.0, description="GPUs per detector actor.")
    embedder_num_gpus: float = Field(0.0, ge=0.0, le=8.0, description="GPUs per embedder actor.")
    detector_num_cpus: float = Field(1.0, ge=0.0, le=256.0, description="CPUs per detector actor.")
    embedder_num_cpus: float = Field(0.5, ge=0.0, le=256.0, description="CPUs per embedder actor.")
    max_restarts: int = Field(-1, ge=-1, le=1000, description="Actor restarts; -1 = unlimited.")
    log_to_driver: bool = Field(
        False, description="Forward the actors' logs to the driver's (refind serve's) stderr."
    )
