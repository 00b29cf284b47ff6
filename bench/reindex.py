"""Benchmark: re-index throughput (crops/s) of `refind reindex` on Ray Data, here.

Builds a real gallery first (PETS09-S2L1 frames ingested with OMZ 0288, many crops per track),
then re-indexes it into the target model (OMZ 0277 by default) with the same code as the command
line: Ray Data reads the crop JPEGs, an actor pool embeds them in batches, the driver commits
each batch (the checkpoint) and finally builds the FAISS index and switches the alias. Reports
crops/s over the whole job (Ray start and model loads included) and in steady state (after the
first batch), and the bound: the same crops read and embedded in one process without Ray
(`embed_only`), with the load average before and after, since this machine is shared. Prints one
JSON object and writes it to bench/results/reindex-<date>.json.

    python bench/reindex.py [--frames 400] [--workers 1 2] [--batch-size 64]
        [--model person-reidentification-retail-0277] [--num-gpus 0.5 --config gpu.yaml]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from report import write_result  # noqa: E402  (bench/report.py)

from refind.actors.reindex import run_reindex  # noqa: E402
from refind.actors.runtime import shutdown_ray  # noqa: E402
from refind.app.commands import run_ingest  # noqa: E402
from refind.config import RefindConfig, load_config  # noqa: E402
from refind.indexer.ingest import IngestPipeline  # noqa: E402
from refind.indexer.metadata import SqliteMetadata  # noqa: E402
from refind.indexer.reindex import EmbedCrops  # noqa: E402
from refind.indexer.versions import delete_version, use_version, with_model  # noqa: E402
from refind.streaming.sources import VideoSource  # noqa: E402

DEFAULT_VIDEO = REPO / "../shared/data/pets09-s2l1/vtest.avi"
SOURCE_MODEL = "person-reidentification-retail-0288"


def embed_only(cfg: RefindConfig, batch_size: int) -> dict[str, object]:
    """The bound: the same crops read and embedded in this process, no Ray, no writes."""
    meta = SqliteMetadata(cfg.data_dir / "gallery" / "metadata.sqlite3", read_only=True)
    try:
        ids = meta.vector_ids(meta.models()[0][0])
        paths = [r.crop_path for r in meta.crops(ids)]
    finally:
        meta.close()
    embed = EmbedCrops(cfg)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        chunk = paths[i : i + batch_size]
        embed({"shard": np.array(["gallery"] * len(chunk)), "vector_id": ids[i : i + batch_size],
               "crop_path": np.array(chunk)})
    seconds = time.perf_counter() - t0
    return {"crops": len(paths), "seconds": round(seconds, 3),
            "crops_per_s": round(len(paths) / seconds, 2),
            "load_avg_before": [round(x, 2) for x in load_before]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--frames", type=int, default=400, help="frames ingested for the gallery")
    parser.add_argument("--model", default="person-reidentification-retail-0277")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per embedding actor "
                        "(the --config embedder section must run on the GPU)")
    parser.add_argument("--config", type=Path, help="YAML config (embedder section, ray: ...)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if not args.video.is_file():
        raise SystemExit(f"video not found: {args.video}")
    base = load_config(args.config)
    base = base.model_copy(update={
        "crops": base.crops.model_copy(update={"max_per_track": 40, "min_gap_s": 0.1}),
        "tracker": base.tracker.model_copy(update={"appearance_weight": 0.0}),
        "ingest": base.ingest.model_copy(update={"max_frames": args.frames}),
        "ray": base.ray.model_copy(update={"embedder_num_gpus": args.num_gpus,
                                           "num_cpus": base.ray.num_cpus or os.cpu_count()}),
    })
    out: dict[str, object] = {"benchmark": "reindex", "model": args.model,
                              "batch_size": args.batch_size, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = base.model_copy(update={"data_dir": Path(tmp)})
        source_cfg = with_model(cfg, SOURCE_MODEL)
        ingest = run_ingest(source_cfg, VideoSource(args.video, camera="bench"),
                            IngestPipeline.from_config(source_cfg), quiet=True)
        out["crops"] = ingest["crops"]
        out["embed_only"] = embed_only(with_model(cfg, args.model), args.batch_size)
        for workers in args.workers:
            # one OpenVINO thread per CPU a worker gets, so the actors do not fight for cores
            threads = max(1, (os.cpu_count() or 1) // workers)
            section = cfg.embedder.model_copy(update={"threads": threads}) if hasattr(
                cfg.embedder, "threads") else cfg.embedder
            run_cfg = cfg.model_copy(update={
                "embedder": section,
                "ray": cfg.ray.model_copy(update={"embedder_num_cpus": 1.0 / workers}),
            })
            load_before = os.getloadavg()
            report = run_reindex(run_cfg, args.model, batch_size=args.batch_size,
                                 workers=workers, quiet=True)
            out["runs"].append({
                "workers": workers, "threads_per_worker": threads,
                "crops": report["added"], "seconds": report["seconds"],
                "crops_per_s": report["crops_per_s"], "startup_s": report["startup_s"],
                "steady_crops_per_s": report["steady_crops_per_s"],
                "load_avg_before": [round(x, 2) for x in load_before],
                "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            })
            use_version(cfg.data_dir, SOURCE_MODEL)  # back to the source for the next run
            delete_version(cfg.data_dir, args.model)
            shutdown_ray()
            time.sleep(1.0)
    best = max(out["runs"], key=lambda r: r["steady_crops_per_s"] or 0)  # type: ignore[union-attr]
    out |= {
        "best_steady_crops_per_s": best["steady_crops_per_s"],
        "target_crops_per_s": 150,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "num_gpus_per_worker": args.num_gpus,
    }
    write_result(args.out, "reindex", out)


if __name__ == "__main__":
    main()
