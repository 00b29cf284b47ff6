"""Starting and joining Ray, the one place that knows how.

Only ``actors/`` imports Ray. Locally (``ray.address: null``) a Ray instance is started with the
configured CPUs; on a cluster (``address: auto`` or ``ray://head:10001``) the driver joins it.
"""

from __future__ import annotations

import logging

import ray

from refind.actors.config import RayConfig

log = logging.getLogger(__name__)

ACTOR_ERRORS: tuple[type[Exception], ...] = (ray.exceptions.RayError,)
"""What a call to an actor raises while it is down or restarting (for code outside actors/)."""


def node_id() -> str:
    """The Ray node the calling actor runs on."""
    return ray.get_runtime_context().get_node_id()


def init_ray(cfg: RayConfig) -> None:
    """Start or join Ray as the config says (idempotent)."""
    if ray.is_initialized():
        return
    kwargs: dict[str, object] = {
        "namespace": cfg.namespace,
        "include_dashboard": False,
        "log_to_driver": cfg.log_to_driver,
    }
    if cfg.address:
        ray.init(address=cfg.address, **kwargs)
        log.info("joined Ray cluster at %s", cfg.address)
    else:
        ray.init(num_cpus=cfg.num_cpus, **kwargs)
        log.info("started local Ray with %s CPUs", cfg.num_cpus or "all")


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
