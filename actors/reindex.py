"""``refind reindex``: re-embed every stored crop on Ray Data, checkpointed, then switch.

The crops to do (``ReindexJob.todo``) become a Ray dataset; ``map_batches`` runs
``refind.indexer.reindex.EmbedCrops`` in a pool of actors (``workers``, each with ``num_cpus`` /
``num_gpus``), each loading the target embedder once. Batches stream back to this driver
(``iter_batches``), which commits each one into the target version's SQLite before asking for
more: the committed rows are the checkpoint, so a job killed at any point resumes with the crops
not yet committed. A second pass picks up crops stored while the first ran; crops that cannot be
read are counted, reported, and keep the alias where it was (unless ``skip_unreadable``).

Example:
    >>> report = run_reindex(cfg, "person-reidentification-retail-0288")   # doctest: +SKIP
    >>> report["switched"], report["crops"]
    (True, 412)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator

import numpy as np
import ray

from refind.actors.runtime import init_ray
from refind.config import RefindConfig
from refind.indexer.reindex import EmbedCrops, ReindexJob, ReindexReport
from refind.indexer.search import photo_embed
from refind.indexer.versions import VersionError, with_model
from refind.indexer.watchlist import WatchStore, reembed_watches
from refind.models.registry import build_embedder
from refind.models.store import ModelStore

log = logging.getLogger(__name__)

_PASSES = 3  # the first pass, then catch-up passes for crops stored meanwhile


class UnreadableCropsError(VersionError):
    """Some crops could not be read or embedded; the new version is built but does not serve."""


def _dataset(todo: dict[str, np.ndarray], rows_per_block: int) -> ray.data.Dataset:
    """The crops to do as Arrow blocks with fixed column types (strings stay strings)."""
    import pyarrow as pa

    n = len(todo["vector_id"])
    blocks = [
        pa.table({
            "shard": pa.array(todo["shard"][i : i + rows_per_block].tolist(), pa.string()),
            "vector_id": pa.array(todo["vector_id"][i : i + rows_per_block], pa.int64()),
            "crop_path": pa.array(todo["crop_path"][i : i + rows_per_block].tolist(), pa.string()),
        })
        for i in range(0, n, rows_per_block)
    ]
    return ray.data.from_arrow(blocks)


def embed_on_ray(
    todo: dict[str, np.ndarray],
    target_cfg: RefindConfig,
    batch_size: int,
    workers: int,
    num_cpus: float,
    num_gpus: float,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``EmbedCrops`` output, streamed back as the actors finish them."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver shows one bar, over committed crops
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    ds = _dataset(todo, batch_size).map_batches(
        EmbedCrops,
        fn_constructor_args=(target_cfg,),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)


def run_reindex(
    cfg: RefindConfig,
    model: str | None = None,
    *,
    since_ns: int | None = None,
    cameras: tuple[str, ...] = (),
    batch_size: int = 64,
    workers: int = 1,
    switch: bool = True,
    skip_unreadable: bool = False,
    quiet: bool = False,
) -> dict[str, object]:
    """Build (or finish) the version of ``model`` and switch the alias to it; returns the report.

    ``model`` is a model store name for the configured embedder type; None re-indexes to the
    config's own embedder section (how another embedder type is chosen).
    """
    from tqdm import tqdm

    target_cfg = with_model(cfg, model) if model else cfg
    embedder = build_embedder(target_cfg.embedder, ModelStore.from_config(target_cfg.models))
    start = time.perf_counter()
    with ReindexJob.open(cfg, target_cfg, embedder, since_ns=since_ns, cameras=cameras) as job:
        report = ReindexReport(job.source.model_id, job.target.model_id, job.target.root)
        del embedder  # the actors load their own
        failed: dict[tuple[str, int], str] = {}
        init_ray(cfg.ray)
        with tqdm(unit="crop", desc=f"reindex {job.target.name}", disable=quiet,
                  file=sys.stderr) as bar:
            for _ in range(_PASSES):
                todo = job.todo(exclude=set(failed))
                n = len(todo["vector_id"])
                if n == 0:
                    break
                report.todo += n
                bar.total = (bar.total or 0) + n
                bar.refresh()
                for batch in embed_on_ray(todo, target_cfg, batch_size, workers,
                                          cfg.ray.embedder_num_cpus, cfg.ray.embedder_num_gpus):
                    added, bad = job.commit(batch)
                    if report.first_batch_s is None:
                        report.first_batch_s = time.perf_counter() - start
                        report.first_batch = added
                    report.added += added
                    failed |= bad
                    bar.update(len(batch["vector_id"]))
                    if bad:
                        bar.set_postfix(unreadable=len(failed))
        report.failed = {v: e for (_, v), e in failed.items()}
        report.seconds = time.perf_counter() - start
        switch_now = switch and (not failed or skip_unreadable)
        # photo watches match under the new model from the moment it serves: their photos
        # embedded by it first
        watches = reembed_watches(WatchStore.in_data_dir(cfg.data_dir), photo_embed(
            build_embedder(target_cfg.embedder, ModelStore.from_config(target_cfg.models))))
        report.removed, report.crops = job.finish(switch=switch_now)
        report.switched = switch_now
    result = report.to_json() | {"identities": job.identities, "watches_reembedded": watches}
    if failed and not skip_unreadable:
        raise UnreadableCropsError(
            f"{len(failed)} crop(s) could not be read or embedded ({result['failed_examples'][0]}"
            f"{', ...' if len(failed) > 1 else ''}); version {report.target} was built without "
            f"them and {report.source} still serves: fix or forget those crops and run the "
            "re-index again, or pass --skip-unreadable to switch anyway"
        )
    return result
