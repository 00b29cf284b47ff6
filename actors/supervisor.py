"""Supervisor: builds the actor graph from config, watches it, and answers searches.

Graph: ``ray.detector_actors`` detectors and ``ray.embedder_actors`` embedders (shared by all
cameras, batching across them), ``ray.index_writers`` writers (one gallery shard each; a camera
always writes to the same shard), and one camera actor per camera. Ray restarts an actor whose
process dies (``max_restarts``); the supervisor also replaces a camera whose loop failed, and
adds or removes cameras at run time. The same code runs on a laptop and on a cluster: only
``ray.address`` and the actor counts and resources change.

Live ingestion follows the serving alias (``indexer/versions.py``): the embedders load the
serving version's model and the writers write its shards. ``follow_alias`` (polled about once a
second: one ``stat`` of ``versions.json``) notices a switch and moves live ingestion over without
stopping a camera: it starts the new version's embedder pool, hands it to the cameras, switches
the writers (each catches up the crops its old version got since the re-index, then raises the
new version's id floor; see ``actors/writer.py``) and retires the old pool a few seconds later.

Example:
    >>> sup = Supervisor(load_config("configs/live-local.yaml")); sup.start()   # doctest: +SKIP
    >>> sup.search_image(photo, k=5)                                            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.actor import ActorHandle

from refind.actors.camera import STOP_WAIT_S, CameraActor, CameraReport
from refind.actors.identity import IdentityActor
from refind.actors.placement import MIN_PLACED_CPUS, CameraPlacement, spread
from refind.actors.pools import DetectorActor, EmbedderActor, Pool, PoolEmbedder, actor_ids
from refind.actors.runtime import init_ray
from refind.actors.writer import IndexWriterActor, WriterGallery
from refind.config import RefindConfig
from refind.indexer.gallery_store import GalleryLockedError
from refind.indexer.search import SearchEngine
from refind.indexer.shards import shard_of
from refind.indexer.versions import Serving, VersionError, registry_stamp, serving_version
from refind.streaming.config import CameraConfig
from refind.streaming.records import ImageQuery, TrackletHit

log = logging.getLogger(__name__)

RETIRE_AFTER_S = 10.0  # an old embedder pool outlives a switch by this much (calls in flight)
RETIRE_AT_MOST_S = 300.0  # ... and goes this long after that even while a camera still holds it
RETRY_AFTER_S = 5.0  # a switch that failed is tried again after this long

_SWITCH_ERRORS = (ray.exceptions.RayError, VersionError, GalleryLockedError, OSError, ValueError)


@dataclass(frozen=True)
class LiveVersion:
    """The index version live ingestion writes: its model and where its shards live."""

    model_id: str
    dim: int
    root: Path


class Supervisor:
    """Owns the actors of one refind deployment."""

    def __init__(self, cfg: RefindConfig) -> None:
        self.cfg = cfg
        self._cameras: dict[str, tuple[CameraConfig, ActorHandle]] = {}
        self._restarts: dict[str, int] = {}
        self._answered: dict[str, float] = {}  # camera -> when its actor last answered (or began)
        self._placement = CameraPlacement()
        self.detectors: list[ActorHandle] = []
        self.embedders: list[ActorHandle] = []
        self.writers: list[ActorHandle] = []
        self.identity: ActorHandle | None = None  # global ids and watch alerts
        self._engine: SearchEngine | None = None
        self._lock = threading.RLock()  # the actor graph: HTTP threads and the serve loop
        self.live: LiveVersion | None = None
        self.alias_switches = 0
        self.alias_error: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._wanted: Serving | None = None  # a serving version live ingestion has yet to reach
        self._next_pool: tuple[list[ActorHandle], str, int] | None = None  # its pool, once started
        self._retry_at = 0.0
        self._retiring: list[tuple[float, list[ActorHandle]]] = []
        self.writer_finals: list[dict[str, Any]] = []  # the writers' stats when they closed
        self.identity_final: dict[str, Any] | None = None  # the identity actor's, when it closed

    def start(self) -> None:
        """Start the actors for the serving version (with its embedder) and every camera."""
        init_ray(self.cfg.ray)
        rc = self.cfg.ray
        self._stamp = registry_stamp(self.cfg.data_dir)
        serving = serving_version(self.cfg)
        self.detectors = [
            DetectorActor.options(
                **self._spread(i, rc.detector_num_cpus, rc.detector_num_gpus)
            ).remote(self.cfg)
            for i in range(rc.detector_actors)
        ]
        self.embedders, model_id, dim = self._start_embedders(serving)
        if self.cfg.identities.enabled:
            self.identity = IdentityActor.options(num_cpus=0, **self._opts()).remote(self.cfg)
        self.writers = [
            IndexWriterActor.options(**self._spread(i)).remote(
                self.cfg, i, str(serving.root), model_id, dim, self.identity)
            for i in range(rc.index_writers)
        ]
        ray.get([w.stats.remote() for w in self.writers])  # fail now if a shard cannot open
        self._use(LiveVersion(model_id, dim, Path(serving.root)))
        for cam in self.cfg.cameras:
            self.add_camera(cam)
        log.info("refind started: %d cameras, version %s in %s", len(self._cameras), model_id,
                 serving.root)

    def _opts(self) -> dict[str, Any]:
        return {"max_restarts": self.cfg.ray.max_restarts, "max_task_retries": 0}

    def _spread(self, index: int, num_cpus: float = 0.0, num_gpus: float = 0.0) -> dict[str, Any]:
        """Options of the ``index``-th pool actor or writer: its resources (at least
        ``MIN_PLACED_CPUS``) and its node in turn (``placement.spread``)."""
        cpus = max(num_cpus, MIN_PLACED_CPUS)
        return self._opts() | {"num_cpus": cpus, "num_gpus": num_gpus,
                               "scheduling_strategy": spread(index, cpus, num_gpus)}

    def _start_embedders(self, serving: Serving) -> tuple[list[ActorHandle], str, int]:
        """A pool of the serving version's embedder, loaded; (actors, model_id, dim)."""
        rc = self.cfg.ray
        actors = [
            EmbedderActor.options(
                **self._spread(i, rc.embedder_num_cpus, rc.embedder_num_gpus)
            ).remote(serving.cfg)
            for i in range(rc.embedder_actors)
        ]
        try:
            infos = ray.get([a.info.remote() for a in actors])
            model_id, dim = infos[0]
            if serving.model_id is not None and model_id != serving.model_id:
                raise VersionError(
                    f"the serving version is {serving.model_id}, but its embedder section "
                    f"loads {model_id} here (other weights in {self.cfg.models.dir}?)"
                )
        except BaseException:
            for a in actors:
                ray.kill(a)
            raise
        return actors, model_id, dim

    def _use(self, live: LiveVersion) -> None:
        """Searches through the actors answer from ``live`` with the current pool."""
        self.live = live
        self._engine = SearchEngine(
            self.cfg.search, PoolEmbedder(Pool(self.embedders), live.model_id, live.dim),
            WriterGallery(self.writers, live.model_id), places=self.cfg.places(),
        )

    # -- the serving alias ------------------------------------------------------------------

    def follow_alias(self) -> bool:
        """Move live ingestion to the serving version if the alias changed (one ``stat`` when it
        did not); True when a switch completed in this call. A failed switch is logged, shown in
        ``alias_error`` and tried again RETRY_AFTER_S later; ingestion goes on meanwhile."""
        with self._lock:
            self._retire_due()
            stamp = registry_stamp(self.cfg.data_dir)
            if stamp != self._stamp:
                try:
                    serving = serving_version(self.cfg)
                except VersionError as err:
                    self.alias_error = str(err)
                    log.error("cannot read the serving version: %s", err)
                    return False
                self._stamp = stamp
                assert self.live is not None
                here = Path(serving.root) == self.live.root and serving.model_id in (
                    None, self.live.model_id)
                self._wanted = None if here else serving
                self._retry_at = 0.0
                if here:  # switched back before a failed switch completed
                    self.alias_error = None
                    self._drop_next_pool()
            if self._wanted is None or time.monotonic() < self._retry_at:
                return False
            try:
                self._switch(self._wanted)
            except _SWITCH_ERRORS as err:
                self.alias_error = f"switch to {self._wanted.model_id} failed: {err}"
                self._retry_at = time.monotonic() + RETRY_AFTER_S
                log.error("live ingestion stays on %s: %s", self.live and self.live.model_id,
                          self.alias_error)
                return False
            self._wanted = None
            self.alias_error = None
            self.alias_switches += 1
            return True

    def _switch(self, serving: Serving) -> None:
        """Start the new pool, hand it to the cameras, switch the writers, retire the old pool."""
        assert self.live is not None
        t0 = time.perf_counter()
        if self._next_pool is None or self._next_pool[1] != serving.model_id:
            if self._next_pool is not None:  # cameras may still hold it: retired later
                self._retiring.append((time.monotonic() + RETIRE_AFTER_S, self._next_pool[0]))
            self._next_pool = self._start_embedders(serving)
        embedders, model_id, dim = self._next_pool
        self._hand_pool(embedders, model_id, dim)
        try:
            reports = ray.get([w.switch.remote(str(serving.root), model_id, dim, embedders)
                               for w in self.writers])
        except BaseException:
            # not every writer switched: the cameras go on with the live pool until the retry
            self._hand_pool(self.embedders, self.live.model_id, self.live.dim)
            raise
        self._retiring.append((time.monotonic() + RETIRE_AFTER_S, self.embedders))
        self.embedders, self._next_pool = embedders, None
        self._use(LiveVersion(model_id, dim, Path(serving.root)))
        log.info("live ingestion switched to %s in %s in %.1f s (%d crops caught up)",
                 model_id, serving.root, time.perf_counter() - t0,
                 sum(r["caught_up"] for r in reports))

    def _drop_next_pool(self) -> None:
        """Give the cameras the live pool back and retire a pool started for a switch that did
        not complete."""
        if self._next_pool is None:
            return
        assert self.live is not None
        self._hand_pool(self.embedders, self.live.model_id, self.live.dim)
        self._retiring.append((time.monotonic() + RETIRE_AFTER_S, self._next_pool[0]))
        self._next_pool = None

    def _hand_pool(self, embedders: list[ActorHandle], model_id: str, dim: int) -> None:
        """Every camera embeds with ``embedders`` (model ``model_id``) from its next frame on."""
        refs = {name: actor.set_embedders.remote(embedders, model_id, dim)
                for name, (_, actor) in list(self._cameras.items())}  # fmt: skip
        if not refs:
            return
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=30)
        answered = set(ready)
        for name, ref in refs.items():
            try:  # a camera that cannot answer is replaced by check()
                if ref not in answered:
                    raise TimeoutError("no answer in 30 s")
                ray.get(ref)
            except (ray.exceptions.RayError, TimeoutError) as err:
                log.warning("camera %s did not take the %s pool: %s", name, model_id, err)

    def _check_writers(self) -> None:
        """Move a writer that Ray restarted (it reopens its first version) back to the live one."""
        assert self.live is not None
        live = (str(self.live.root), self.live.model_id)
        switches = []
        for i, (w, at) in enumerate(zip(self.writers, ray.get(
                [w.version.remote() for w in self.writers], timeout=60), strict=True)):
            if tuple(at) != live and self._wanted is None:
                log.warning("index writer %d writes %s, not %s: switching it back", i, at, live)
                switches.append(w.switch.remote(live[0], self.live.model_id, self.live.dim,
                                                self.embedders))
        ray.get(switches)

    def _retire_due(self, everything: bool = False) -> None:
        """End the old pools whose time has come and that no camera embeds with any more
        (every pool, when ``everything``). A camera takes a new pool between frames, and one
        frame on a loaded machine can outlast RETIRE_AFTER_S: ending a pool under it failed
        that camera's loop."""
        now = time.monotonic()
        due = [(at, actors) for at, actors in self._retiring if everything or at <= now]
        if not due:
            return
        keep = [(at, actors) for at, actors in self._retiring if not everything and at > now]
        held = {} if everything else self._embedders_held()
        for at, actors in due:
            if everything or may_retire(actor_ids(actors), held, now - at):
                for a in actors:
                    ray.kill(a)
            else:
                keep.append((at, actors))
        self._retiring = keep

    def _embedders_held(self, timeout_s: float = 2.0) -> dict[str, set[str]] | None:
        """Each camera's embedder actors (``CameraActor.embedder_ids``); None unless every
        camera answered within ``timeout_s`` (short: asked under the graph's lock, about once a
        second while an old pool waits; a late camera is asked again next time)."""
        refs = {name: actor.embedder_ids.remote()
                for name, (_, actor) in list(self._cameras.items())}
        if not refs:
            return {}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        if len(ready) < len(refs):
            return None
        try:
            return {name: ray.get(ref) for name, ref in refs.items()}
        except ray.exceptions.RayError:
            return None

    def version_info(self) -> dict[str, Any]:
        """What live ingestion writes, for /healthz and /metrics."""
        live = self.live
        return {"model_id": live.model_id if live else None,
                "root": str(live.root) if live else None,
                "alias_switches": self.alias_switches, "alias_error": self.alias_error}

    # -- cameras ----------------------------------------------------------------------------

    def add_camera(self, cam: CameraConfig) -> None:
        with self._lock:
            if cam.name in self._cameras:
                raise ValueError(f"camera {cam.name!r} already exists")
            self._cameras[cam.name] = (cam, self._spawn(cam))

    def remove_camera(self, name: str) -> CameraReport | None:
        """Stop a camera (its open tracks are stored, its events flushed); its final report."""
        with self._lock:
            if name not in self._cameras:
                raise KeyError(f"no camera {name!r}; cameras: {', '.join(sorted(self._cameras))}")
            _, actor = self._cameras.pop(name)
        return self._stop_actors({name: actor})[name]

    def cameras(self) -> list[str]:
        return sorted(self._cameras)

    def _spawn(self, cam: CameraConfig) -> ActorHandle:
        self._answered[cam.name] = time.monotonic()  # its grace to start counts from now
        shard = shard_of(cam.name, len(self.writers))
        return CameraActor.options(
            num_cpus=0, max_restarts=self.cfg.ray.max_restarts, max_concurrency=4,
            name=f"camera-{cam.name}", get_if_exists=False,
            scheduling_strategy=self._placement.place(cam.name, set(self._cameras)),
        ).remote(self.cfg, cam, self.detectors, self.embedders, self.writers[shard], shard)

    def _stop_actors(self, actors: dict[str, ActorHandle]) -> dict[str, CameraReport | None]:
        """Stop cameras together (each stores what it holds, up to its own STOP_WAIT_S), then
        end them; their final reports (None for one that did not answer)."""
        refs = {name: actor.stop.remote() for name, actor in actors.items()}
        deadline = time.monotonic() + STOP_WAIT_S + 30  # the camera's own budget, and a margin
        reports: dict[str, CameraReport | None] = {}
        for name, ref in refs.items():
            try:
                reports[name] = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            except (ray.exceptions.RayError, TimeoutError) as err:
                log.warning("camera actor %s did not stop cleanly: %s", name, err)
                reports[name] = None
        for actor in actors.values():
            ray.kill(actor)
        return reports

    # -- health -----------------------------------------------------------------------------

    def status(self, timeout_s: float = 10.0) -> dict[str, CameraReport | str]:
        """Each camera's report, or the error that kept it from answering."""
        return {name: r if isinstance(r, CameraReport) else f"{type(r).__name__}: {r}"
                for name, r in self._reports(timeout_s).items()}

    def _reports(self, timeout_s: float = 10.0) -> dict[str, CameraReport | Exception]:
        """Each camera's report, or the error that kept it from answering; notes who answered."""
        out: dict[str, CameraReport | Exception] = {}
        refs = {name: actor.status.remote() for name, (_, actor) in list(self._cameras.items())}
        for name, ref in refs.items():
            try:
                out[name] = ray.get(ref, timeout=timeout_s)
                self._answered[name] = time.monotonic()
            except (ray.exceptions.RayError, TimeoutError) as err:
                out[name] = err
        return out

    def _why_replace(self, name: str, report: CameraReport | Exception) -> str | None:
        """Why camera ``name``'s actor must be replaced, or None. A loop that failed or an
        actor dead for good: at once. No answer (a new actor still importing and loading on a
        busy machine, or one Ray is restarting): only after ``live.unresponsive_s`` without
        one, so that a slow start is not killed and started again for ever."""
        if isinstance(report, CameraReport):
            return None if report.error is None else f"its loop failed: {report.error}"
        if isinstance(report, (TimeoutError, ray.exceptions.ActorUnavailableError)):
            silent = time.monotonic() - self._answered.get(name, time.monotonic())
            if silent < self.cfg.live.unresponsive_s:
                return None
            return f"no answer for {silent:.0f} s ({type(report).__name__})"
        return f"{type(report).__name__}: {report}"

    def check(self) -> list[str]:
        """Replace cameras whose actor is gone or whose loop failed; returns their names."""
        with self._lock:
            try:
                self._check_writers()
            except _SWITCH_ERRORS as err:
                log.warning("index writers: %s", err)
        replaced = []
        for name, report in self._reports().items():
            why = self._why_replace(name, report)
            with self._lock:
                if why is not None and name in self._cameras:
                    cam, actor = self._cameras[name]
                    log.warning("camera %s: %s; replacing its actor", name, why)
                    ray.kill(actor)
                    self._cameras[name] = (cam, self._spawn(cam))
                    self._restarts[name] = self._restarts.get(name, 0) + 1
                    replaced.append(name)
        return replaced

    def pool_stats(self, timeout_s: float = 10.0) -> dict[str, list[dict[str, Any]]]:
        """Each pool actor's counters; ``{"error": ...}`` for one that did not answer within
        ``timeout_s`` in all (Ray is restarting it, say)."""
        pools = (("detector", self.detectors), ("embedder", self.embedders),
                 ("writer", self.writers))
        refs = {pool: [a.stats.remote() for a in actors] for pool, actors in pools}
        every = [r for pending in refs.values() for r in pending]
        ready, _ = ray.wait(every, num_returns=len(every), timeout=timeout_s)
        done = set(ready)
        out: dict[str, list[dict[str, Any]]] = {}
        for pool, pending in refs.items():
            out[pool] = []
            for ref in pending:
                try:
                    if ref not in done:
                        raise TimeoutError(f"no answer in {timeout_s:g} s")
                    out[pool].append(ray.get(ref))
                except (ray.exceptions.RayError, TimeoutError) as err:
                    out[pool].append({"error": f"{type(err).__name__}: {err}"})
        return out

    def identity_stats(self) -> dict[str, Any] | None:
        """The identity actor's counters (None when identities are off; ``{"error": ...}``
        when it did not answer)."""
        if self.identity is None:
            return None
        try:
            return ray.get(self.identity.stats.remote(), timeout=10)
        except (ray.exceptions.RayError, TimeoutError) as err:
            log.warning("identity actor did not answer: %s", err)
            return {"error": f"{type(err).__name__}: {err}"}

    def restarts(self) -> dict[str, int]:
        return dict(self._restarts)

    # -- search -----------------------------------------------------------------------------

    def search_image(self, image: np.ndarray, k: int = 10, **filters: Any) -> list[TrackletHit]:
        assert self._engine is not None, "start() first"
        return self._engine.search_image(ImageQuery(image=image, k=k, **filters))

    def save(self) -> None:
        ray.get([w.save.remote() for w in self.writers])

    def stop(self) -> dict[str, CameraReport | None]:
        """Stop every camera (their open tracks are stored), then close the shards (their
        events flushed) and end the pools; final camera reports. The writers' final counters
        are in ``writer_finals``."""
        with self._lock:
            actors = {name: actor for name, (_, actor) in self._cameras.items()}
            self._cameras.clear()
        finals = self._stop_actors(actors)
        with self._lock:
            self.writer_finals = []
            for w in self.writers:
                try:
                    self.writer_finals.append(ray.get(w.close.remote(), timeout=60))
                except ray.exceptions.RayError as err:
                    log.warning("index writer did not close cleanly: %s", err)
            if self.identity is not None:  # after the writers: their last news has reached it
                try:
                    self.identity_final = ray.get(self.identity.close.remote(), timeout=60)
                except ray.exceptions.RayError as err:
                    log.warning("identity actor did not close cleanly: %s", err)
                ray.kill(self.identity)
                self.identity = None
            self._retire_due(everything=True)
            pending = self._next_pool[0] if self._next_pool else []
            for a in [*self.detectors, *self.embedders, *self.writers, *pending]:
                ray.kill(a)
            self.detectors, self.embedders, self.writers = [], [], []
            self._next_pool = None
        return finals


def may_retire(pool: set[str], held: dict[str, set[str]] | None, overdue_s: float) -> bool:
    """May a pool (its actor ids) whose retirement was due ``overdue_s`` ago end now? Yes once
    no camera embeds with it (``held``: each camera's actor ids; None when a camera did not
    answer), or RETIRE_AT_MOST_S after it was due whatever the cameras say."""
    if overdue_s >= RETIRE_AT_MOST_S:
        return True
    if held is None:
        log.info("an old embedder pool waits: not every camera said which pool it uses")
        return False
    holding = sorted(name for name, ids in held.items() if ids & pool)
    if holding:
        log.info("an old embedder pool waits for camera(s) %s to take the new one",
                 ", ".join(holding))
    return not holding


def wait_until(predicate: Any, timeout_s: float, every_s: float = 0.5) -> bool:
    """Poll ``predicate()`` until true or ``timeout_s`` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return bool(predicate())
