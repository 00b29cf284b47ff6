"""The pool actors' batcher (``refind.actors.pools._Batcher``), without Ray: requests a caller waits
on go into the next model call first, and a call of bulk requests stays short."""

from __future__ import annotations

import asyncio
import threading

from refind.actors.pools import BULK_BATCH, _Batcher


class Model:
    """A batch function that records its batches; its first call waits until released, so
    requests pile up behind it as they do behind a busy model."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: list[str]) -> list[str]:
        if not self.batches:
            self.started.set()
            self.release.wait(10)
        self.batches.append(list(items))
        return [f"{x}!" for x in items]


async def _scenario(model: Model) -> dict[str, str]:
    batcher = _Batcher(model, batch_size=32, max_wait_ms=20, bulk_batch=BULK_BATCH)
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(batcher.submit("gallery-0", urgent=False))
    await loop.run_in_executor(None, model.started.wait, 10)  # the model is busy with it
    # while it runs: 20 gallery crops arrive, then a tracker's 2 boxes
    bulk = [asyncio.create_task(batcher.submit(f"gallery-{i}", urgent=False))
            for i in range(1, 21)]
    await asyncio.sleep(0)
    urgent = [asyncio.create_task(batcher.submit(f"box-{i}")) for i in range(2)]
    await asyncio.sleep(0.05)  # every request is queued
    model.release.set()
    done = await asyncio.gather(first, *bulk, *urgent)
    names = ["gallery-0", *(f"gallery-{i}" for i in range(1, 21)), "box-0", "box-1"]
    return dict(zip(names, done, strict=True))


def test_waited_on_requests_go_first_and_bulk_calls_stay_short() -> None:
    model = Model()
    results = asyncio.run(_scenario(model))
    # every request got its own answer
    assert all(results[name] == f"{name}!" for name in results)
    assert model.batches[0] == ["gallery-0"]
    # the tracker's boxes are in the very next call, ahead of the gallery crops queued before
    # them; the call takes at most BULK_BATCH gallery crops with them, so it stays short
    assert model.batches[1] == ["box-0", "box-1", *(f"gallery-{i}" for i in range(1, 9))]
    # the rest: calls of gallery crops alone, at most BULK_BATCH each, in order
    assert model.batches[2:] == [[f"gallery-{i}" for i in range(9, 17)],
                                 [f"gallery-{i}" for i in range(17, 21)]]
    served = [x for batch in model.batches for x in batch]
    assert sorted(served) == sorted(results)  # each once


def test_bulk_requests_alone_are_served_in_short_calls_in_order() -> None:
    async def run() -> list[str]:
        batcher = _Batcher(model, batch_size=32, max_wait_ms=20, bulk_batch=BULK_BATCH)
        model.release.set()
        return await asyncio.gather(*(batcher.submit(f"g{i:02d}", urgent=False)
                                      for i in range(20)))

    model = Model()
    assert asyncio.run(run()) == [f"g{i:02d}!" for i in range(20)]
    assert [len(b) for b in model.batches] == [8, 8, 4]
    assert [x for b in model.batches for x in b] == [f"g{i:02d}" for i in range(20)]
