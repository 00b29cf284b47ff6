"""Supervisor: builds the actor graph from config, watches it, and answers searches.

Graph: ``ray.detector_actors`` detectors and ``ray.embedder_actors`` embedders (shared by all
cameras, batching across them), ``ray.index_writers`` writers (one gallery shard each; a camera
always writes to the same shard), and one camera actor per camera. Ray restarts an actor whose
process dies (``max_restarts``); the supervisor also replaces a camera whose loop failed, and
adds or removes cameras at run time. The same code runs on a laptop and on a cluster: only
``ray.address`` and the actor counts and resources change.

Example:
    >>> sup = Supervisor(load_config("configs/live-local.yaml")); sup.start()   # doctest: +SKIP
    >>> sup.search_image(photo, k=5)                                            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import ray

from actors.camera import CameraActor, CameraReport
from actors.pools import DetectorActor, EmbedderActor, Pool, PoolEmbedder
from actors.runtime import init_ray
from actors.writer import IndexWriterActor
from indexer.metadata import TrackSummary
from indexer.search import SearchEngine
from indexer.shards import merge_shard_hits, shard_of
from streaming.config import CameraConfig, RefindConfig
from streaming.records import CropRecord, ImageQuery, TrackletHit

log = logging.getLogger(__name__)


class _WriterGallery:
    """All index writers seen as one gallery: searches fan out and merge by score."""

    def __init__(self, writers: list[Any], model_id: str) -> None:
        self._writers, self.model_id = writers, model_id

    def search(
        self, vectors: np.ndarray, k_crops: int, cameras: tuple[str, ...] = (),
        start_ts_ns: int | None = None, end_ts_ns: int | None = None,
    ) -> list[list[tuple[CropRecord, float]]]:
        refs = [
            w.search.remote(vectors, k_crops, cameras, start_ts_ns, end_ts_ns)
            for w in self._writers
        ]
        return merge_shard_hits(ray.get(refs), k_crops)

    def track(self, camera: str, track_id: int) -> TrackSummary | None:
        for found in ray.get([w.track.remote(camera, track_id) for w in self._writers]):
            if found is not None:
                return found
        return None


class Supervisor:
    """Owns the actors of one refind deployment."""

    def __init__(self, cfg: RefindConfig) -> None:
        self.cfg = cfg
        self._cameras: dict[str, tuple[CameraConfig, Any]] = {}
        self._restarts: dict[str, int] = {}
        self.detectors: list[Any] = []
        self.embedders: list[Any] = []
        self.writers: list[Any] = []
        self._engine: SearchEngine | None = None

    def start(self) -> None:
        init_ray(self.cfg.ray)
        rc = self.cfg.ray
        opts = {"max_restarts": rc.max_restarts, "max_task_retries": 0}
        self.detectors = [
            DetectorActor.options(
                num_cpus=rc.detector_num_cpus, num_gpus=rc.detector_num_gpus, **opts
            ).remote(self.cfg)
            for _ in range(rc.detector_actors)
        ]
        self.embedders = [
            EmbedderActor.options(
                num_cpus=rc.embedder_num_cpus, num_gpus=rc.embedder_num_gpus, **opts
            ).remote(self.cfg)
            for _ in range(rc.embedder_actors)
        ]
        model_id, dim = ray.get(self.embedders[0].info.remote())
        self.writers = [
            IndexWriterActor.options(num_cpus=0, **opts).remote(self.cfg, i, model_id, dim)
            for i in range(rc.index_writers)
        ]
        ray.get([w.stats.remote() for w in self.writers])  # fail now if a shard cannot open
        pool = Pool(self.embedders)
        self._engine = SearchEngine(
            self.cfg.search, PoolEmbedder(pool, model_id, dim),
            _WriterGallery(self.writers, model_id),  # type: ignore[arg-type]
        )
        for cam in self.cfg.cameras:
            self.add_camera(cam)
        log.info("refind started: %d cameras, model %s", len(self._cameras), model_id)

    # -- cameras ----------------------------------------------------------------------------

    def add_camera(self, cam: CameraConfig) -> None:
        if cam.name in self._cameras:
            raise ValueError(f"camera {cam.name!r} already exists")
        self._cameras[cam.name] = (cam, self._spawn(cam))

    def remove_camera(self, name: str) -> CameraReport | None:
        """Stop a camera (its open tracks are stored, its events flushed); its final report."""
        if name not in self._cameras:
            raise KeyError(f"no camera {name!r}; cameras: {', '.join(sorted(self._cameras))}")
        _, actor = self._cameras.pop(name)
        return self._stop_actor(actor)

    def cameras(self) -> list[str]:
        return sorted(self._cameras)

    def _spawn(self, cam: CameraConfig) -> Any:
        shard = shard_of(cam.name, len(self.writers))
        return CameraActor.options(
            num_cpus=0, max_restarts=self.cfg.ray.max_restarts, max_concurrency=4,
            name=f"camera-{cam.name}", get_if_exists=False,
        ).remote(self.cfg, cam, self.detectors, self.embedders, self.writers[shard], shard)

    def _stop_actor(self, actor: Any) -> CameraReport | None:
        report = None
        try:
            report = ray.get(actor.stop.remote(), timeout=60)
        except (ray.exceptions.RayError, TimeoutError) as err:
            log.warning("camera actor did not stop cleanly: %s", err)
        ray.kill(actor)
        return report

    # -- health -----------------------------------------------------------------------------

    def status(self, timeout_s: float = 10.0) -> dict[str, CameraReport | str]:
        """Each camera's report, or the error that kept it from answering."""
        out: dict[str, CameraReport | str] = {}
        refs = {name: actor.status.remote() for name, (_, actor) in self._cameras.items()}
        for name, ref in refs.items():
            try:
                out[name] = ray.get(ref, timeout=timeout_s)
            except (ray.exceptions.RayError, TimeoutError) as err:
                out[name] = f"{type(err).__name__}: {err}"
        return out

    def check(self) -> list[str]:
        """Replace cameras whose actor is gone or whose loop failed; returns their names."""
        replaced = []
        for name, report in self.status().items():
            failed = isinstance(report, str) or report.error is not None
            if failed and name in self._cameras:
                cam, actor = self._cameras[name]
                log.warning("camera %s failed (%s); replacing its actor", name, report)
                ray.kill(actor)
                self._cameras[name] = (cam, self._spawn(cam))
                self._restarts[name] = self._restarts.get(name, 0) + 1
                replaced.append(name)
        return replaced

    def pool_stats(self) -> dict[str, list[dict[str, float]]]:
        return {
            "detector": ray.get([d.stats.remote() for d in self.detectors]),
            "embedder": ray.get([e.stats.remote() for e in self.embedders]),
            "writer": ray.get([w.stats.remote() for w in self.writers]),
        }

    def restarts(self) -> dict[str, int]:
        return dict(self._restarts)

    # -- search -----------------------------------------------------------------------------

    def search_image(self, image: np.ndarray, k: int = 10, **filters: Any) -> list[TrackletHit]:
        assert self._engine is not None, "start() first"
        return self._engine.search_image(ImageQuery(image=image, k=k, **filters))

    def save(self) -> None:
        ray.get([w.save.remote() for w in self.writers])

    def stop(self) -> dict[str, CameraReport | None]:
        """Stop every camera, then close the shards and end the pools; final camera reports."""
        finals = {name: self.remove_camera(name) for name in list(self._cameras)}
        for w in self.writers:
            try:
                ray.get(w.close.remote(), timeout=60)
            except ray.exceptions.RayError as err:
                log.warning("index writer did not close cleanly: %s", err)
        for a in [*self.detectors, *self.embedders, *self.writers]:
            ray.kill(a)
        self.detectors, self.embedders, self.writers = [], [], []
        return finals


def wait_until(predicate: Any, timeout_s: float, every_s: float = 0.5) -> bool:
    """Poll ``predicate()`` until true or ``timeout_s`` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return bool(predicate())
