"""Benchmark: the OpenVINO CPU runner with streams against one LATENCY request, paired.

Times refind's OMZ 0277 embedder (and its INT8 copy when ``refind quantize`` made one) on real
PETS09-S2L1 crops two ways in the same rounds, taking turns, so load from other work falls on
both alike: ``streams`` (``refind.models.openvino_util.CpuRunner``: the THROUGHPUT hint, each batch
cut into one part per stream, what refind uses) and ``one_request`` (one synchronous request on
all the threads, the LATENCY hint: what refind used before). Per batch size: the median
crops/s (batch 32, a gallery batch) or milliseconds per call (batch 1, a query crop) of each,
and the median of the per-round ratios streams / one_request. Prints one JSON object and writes
it to ``bench/results/openvino_streams-<date>.json``.

Run: python bench/openvino_streams.py [--rounds 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from embedder_throughput import PETS, REID, cut_pets_crops, rate  # noqa: E402  (bench/)
from report import write_result  # noqa: E402  (bench/report.py)


def embedders(name: str, threads: int) -> dict[str, object]:
    """The 0277-family embedder ``name`` twice, each with its own runner (compiled apart)."""
    import openvino as ov

    from refind.models.config import ModelStoreConfig, OpenVinoReidConfig
    from refind.models.openvino_reid import OpenVinoReidEmbedder
    from refind.models.openvino_util import CpuRunner, read_dynamic_batch
    from refind.models.store import ModelStore

    store = ModelStore.from_config(ModelStoreConfig())
    cfg = OpenVinoReidConfig(model=name, batch_size=32, threads=threads)
    streams = OpenVinoReidEmbedder(cfg, store)
    one = OpenVinoReidEmbedder(cfg, store)
    model, _ = read_dynamic_batch(ov.Core(), store.resolve(name).path)
    # the runner refind had before: one LATENCY-hint request on all ``threads`` (one stream)
    one._run_model = CpuRunner(ov.Core(), model, threads, PERFORMANCE_HINT="LATENCY")
    return {"streams": streams, "one_request": one}


def paired(pair: dict[str, object], crops: list, batch: int, rounds: int, calls: int) -> dict:
    """Per-call seconds of both runners over ``rounds`` interleaved rounds of ``calls`` calls."""
    chunk = crops[:batch]
    times: dict[str, list[float]] = {k: [] for k in pair}
    for emb in pair.values():
        emb(chunk)  # type: ignore[operator]  # warm up
    for r in range(rounds):
        order = list(pair) if r % 2 == 0 else list(pair)[::-1]  # neither always goes first
        for name in order:
            times[name].append(1 / rate(lambda e=pair[name]: e(chunk), 1, calls, 0, lambda: None))  # type: ignore[operator]
    ratio = np.array(times["one_request"]) / np.array(times["streams"])  # >1: streams faster
    out: dict[str, object] = {"rounds": rounds, "calls_per_round": calls}
    for name, t in times.items():
        med = float(np.median(t))
        out[name] = (
            {"crops_per_s": round(batch / med, 1)}
            if batch > 1
            else {"ms_per_call": round(med * 1e3, 2)}
        )
    out["speed_ratio_streams_over_one_request"] = {
        "median": round(float(np.median(ratio)), 3),
        "p25": round(float(np.percentile(ratio, 25)), 3),
        "p75": round(float(np.percentile(ratio, 75)), 3),
    }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    import openvino as ov

    from refind.models.config import ModelStoreConfig
    from refind.models.store import ModelStore, ModelStoreError

    crops = cut_pets_crops(PETS / "vtest.avi", PETS / "gt.txt", 64)
    store = ModelStore.from_config(ModelStoreConfig())
    results = {}
    for name in (REID, REID + "-int8"):
        try:
            store.resolve(name)
        except ModelStoreError as err:  # the INT8 copy exists only after refind quantize
            results[name] = {"available": False, "reason": str(err)}
            continue
        pair = embedders(name, args.threads)
        results[name] = {
            "batch_32": paired(pair, crops, 32, args.rounds, 4),
            "batch_1": paired(pair, crops, 1, args.rounds, 20),
        }
        print(name, results[name], file=sys.stderr, flush=True)
    write_result(args.out, "openvino_streams", {
        "benchmark": "openvino_streams",
        "date": dt.date.today().isoformat(),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "openvino": ov.__version__,
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "results": results,
    })  # fmt: skip


if __name__ == "__main__":
    main()
