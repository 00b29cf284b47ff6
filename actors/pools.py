"""Ray actors around the model runners: detector and embedder pools that batch across cameras.

Each actor holds one plain model runner (``models/``) and gathers concurrent requests from all
cameras into one batch (up to the model's batch size, waiting at most ``max_wait_ms`` for more),
so N cameras cost fewer model calls than N separate ones. The model call runs in a thread, so
the actor keeps accepting requests meanwhile.

An embedder serves two kinds of request: ones a caller waits on (``embed``: a camera's tracker
asking for the appearance of a few boxes before it can associate the frame, or a search's query
photo) and bulk ones (``embed_crops``: crops on their way to the gallery, which nothing waits
on). Waited-on crops go first into the next model call, and any call takes at most
``BULK_BATCH`` bulk crops, so a tracker waits for at most one short call and then its own (its
boxes and up to ``BULK_BATCH`` gallery crops), not behind a full batch of gallery crops (which
stalled cameras' loops and made them drop frames).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray

from refind.actors.runtime import node_id
from refind.config import RefindConfig
from refind.models.store import ModelStore
from refind.streaming.records import Crop, Detections, Embeddings

log = logging.getLogger(__name__)


BULK_BATCH = 8
"""Most bulk crops in one embedder call: about 50 ms of 0277 on a CPU core, the longest a
waited-on request can queue behind (a full batch of 32 took ~200 ms, for 3 % more throughput)."""

_URGENT, _BULK = 0, 1


class _Batcher:
    """Collects single requests into batches for ``run`` (a blocking batch function); urgent
    requests first, and a batch holds at most ``bulk_batch`` bulk requests."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], batch_size: int, max_wait_ms: float,
                 bulk_batch: int | None = None):
        self._run = run
        self._batch_size = batch_size
        self._bulk_batch = min(bulk_batch or batch_size, batch_size)
        self._max_wait_s = max_wait_ms / 1000
        self._queue: asyncio.PriorityQueue[tuple[int, int, Any, asyncio.Future]] | None = None
        self._order = itertools.count()  # first come, first served within a priority
        self.batches = 0
        self.items = 0
        self.busy_s = 0.0

    async def submit(self, item: Any, urgent: bool = True) -> Any:
        if self._queue is None:
            self._queue = asyncio.PriorityQueue()
            asyncio.get_running_loop().create_task(self._loop())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((_URGENT if urgent else _BULK, next(self._order), item, future))
        return await future

    def _limit(self, batch: list[tuple[int, int, Any, asyncio.Future]]) -> int:
        """Every urgent request (up to the batch size) and at most ``bulk_batch`` bulk ones: a
        call someone waits on stays short too."""
        urgent = sum(1 for b in batch if b[0] == _URGENT)
        return min(self._batch_size, urgent + self._bulk_batch)

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._max_wait_s
            while len(batch) < self._limit(batch):
                remaining = deadline - loop.time()
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(remaining, 0)))
                except TimeoutError:
                    break
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(None, self._run, [b[2] for b in batch])
            except Exception as err:  # every waiter gets the error, the loop goes on
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.busy_s += time.perf_counter() - t0
            self.batches += 1
            self.items += len(batch)
            for (*_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    def stats(self) -> dict[str, float]:
        return {"batches": self.batches, "items": self.items, "busy_s": round(self.busy_s, 3)}


@ray.remote
class DetectorActor:
    """One detector model; ``detect(image)`` from any camera, batched across cameras."""

    def __init__(self, cfg: RefindConfig, max_wait_ms: float = 5.0) -> None:
        from refind.models.registry import build_detector

        self._detector = build_detector(cfg.detector, ModelStore.from_config(cfg.models))
        self._batcher = _Batcher(self._detector, cfg.detector.batch_size, max_wait_ms)

    async def detect(self, image: np.ndarray) -> Detections:
        return await self._batcher.submit(image)

    async def stats(self) -> dict[str, float]:
        return self._batcher.stats() | {"pid": os.getpid(), "node_id": node_id()}


@ray.remote
class EmbedderActor:
    """One ReID model; ``embed(crops)`` from any camera, batched across cameras."""

    def __init__(self, cfg: RefindConfig, max_wait_ms: float = 5.0) -> None:
        from refind.models.registry import build_embedder

        self._embedder = build_embedder(cfg.embedder, ModelStore.from_config(cfg.models))
        self.model_id = self._embedder.model_id
        self.dim = self._embedder.dim
        self._batcher = _Batcher(self._embed_one_each, cfg.embedder.batch_size, max_wait_ms,
                                 bulk_batch=BULK_BATCH)

    def _embed_one_each(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        return list(self._embedder(crops).vectors)

    async def embed(self, crops: Sequence[np.ndarray], urgent: bool = True) -> Embeddings:
        """Embeddings of ``crops``; ``urgent``: a caller waits on them (see the module
        docstring)."""
        vectors = await asyncio.gather(*(self._batcher.submit(c, urgent) for c in crops))
        stacked = np.stack(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        return Embeddings(stacked, self.model_id)

    async def embed_crops(self, crops: Sequence[Crop]) -> Embeddings:
        """``embed`` of the crops' images, as bulk (a camera puts its crops once, for this and
        the index writer, and goes on without waiting)."""
        return await self.embed([c.image for c in crops], urgent=False)

    async def info(self) -> tuple[str, int]:
        return self.model_id, self.dim

    async def stats(self) -> dict[str, float]:
        return self._batcher.stats() | {"pid": os.getpid(), "node_id": node_id()}


RESTART_WAIT_S = 60.0  # longest a call waits for a pool actor that Ray is restarting
RETRY_EVERY_S = 0.2


def actor_ids(actors: Sequence[Any]) -> set[str]:
    """The Ray ids (hex) of ``actors``: what tells one pool from another across processes."""
    return {a._actor_id.hex() for a in actors}


class Pool:
    """Round-robin over a list of actor handles (the pools above)."""

    def __init__(self, actors: list[Any]) -> None:
        if not actors:
            raise ValueError("a pool needs at least one actor")
        self.actors = actors
        self._next = itertools.cycle(range(len(actors)))

    def pick(self) -> Any:
        return self.actors[next(self._next)]


class PoolEmbedder:
    """An embedder pool seen as a plain ``ReidEmbedder`` (blocking), for code in ``indexer/``
    and ``models/`` that takes one, such as the search engine and ``BoxEmbedder``."""

    def __init__(self, pool: Pool, model_id: str, dim: int) -> None:
        self._pool, self.model_id, self.dim = pool, model_id, dim

    def __call__(self, crops: Sequence[np.ndarray]) -> Embeddings:
        """Embed on the next actor; while actors are down (Ray restarts them) the call goes to
        the next one, and waits at most ``RESTART_WAIT_S`` for one to answer."""
        crops = list(crops)
        deadline: float | None = None
        while True:
            try:
                return ray.get(self._pool.pick().embed.remote(crops))
            except ray.exceptions.RayActorError as err:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + RESTART_WAIT_S
                    log.warning("embedder %s did not answer (%s); trying again for up to "
                                "%.0f s", self.model_id, type(err).__name__, RESTART_WAIT_S)
                if now >= deadline:
                    raise
                time.sleep(RETRY_EVERY_S)
