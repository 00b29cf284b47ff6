"""Benchmark: crops/s of the person embedders on real PETS09-S2L1 crops, CPU or GPU.

Embedders: ``openvino_reid`` (OMZ 0277 with OpenVINO on CPU, what ingest uses),
``irm_openvino_cpu`` (the IRM embedder as ingest runs it on CPU), with ``--int8`` both again on
the INT8 copy of 0277 (``refind quantize``), and on CPU the milliseconds per IRM text query
through the attribute probe and through the learned text path (``irm_text_query``); ``torch_0277`` (the same IR run with torch by
``refind.models.ov_torch``) and ``irm`` (the IRM head of ``refind.models.irm`` over the torch backbone; with no
``--irm-weights`` an untrained head: the timing is the same). The CPU OpenVINO embedders are
timed in interleaved rounds (median, min, max), since the machine is shared.
Each is timed "model only" (a ready input batch in device memory, synchronised) and "end to end"
(resize + normalise of the raw crops, host->device, model, embeddings back to the host);
``preprocess_crops_per_s`` is the resize/normalise alone. Prints one JSON object and writes it
to ``bench/results/embedder_throughput-<date>[-<device>].json``.

CPU (here):    python bench/embedder_throughput.py --save-crops crops.npz --export-dir exported/0277
GPU (no openvino/av/pydantic there, opencv-python-headless is: preprocessing is
refind's crops_to_batch; carry crops.npz and exported/0277):
               python bench/embedder_throughput.py --device cuda --fp16 --crops crops.npz \\
                   --exported exported/0277 --irm-weights models/weights/irm-pets-v3.safetensors
(that path was run here with pydantic, av, openvino, faiss and ray made unimportable: it needs
none of them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from report import write_result  # noqa: E402  (bench/report.py)

from refind.models import ov_torch  # noqa: E402
from refind.models.base import PARALLEL_RESIZE_MIN, crops_to_batch, resize_workers  # noqa: E402

log = logging.getLogger("embedder_throughput")
PETS = REPO / "../shared/data/pets09-s2l1"
REID = "person-reidentification-retail-0277"
INPUT_HW = (256, 128)


# ---- crops ----


def cut_pets_crops(video: Path, gt: Path, n: int, every: int = 5, min_height: int = 48) -> list:
    """Up to ``n`` ground-truth person crops ((h, w, 3) uint8 BGR) from every ``every``-th frame."""
    import av

    from refind.datasets.pets_reid import read_mot_gt, scaled_xyxy

    rows = read_mot_gt(gt)
    rows = rows[(rows[:, 6] != 0) & (rows[:, 0] % every == 0)]
    boxes = scaled_xyxy(rows, 480 / 768)  # GT is annotated on 768x576, the video is 480p
    crops: list[np.ndarray] = []
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            sel = np.flatnonzero(rows[:, 0] == index + 1)  # GT frame N = decoded frame N-1
            if len(sel) == 0:
                continue
            image = frame.to_ndarray(format="bgr24")
            h, w = image.shape[:2]
            for x1, y1, x2, y2 in boxes[sel].round().astype(int):
                x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
                if y2 - y1 >= min_height and x2 - x1 >= 8:
                    crops.append(np.ascontiguousarray(image[y1:y2, x1:x2]))
            if len(crops) >= n:
                break
    return crops[:n]


def save_crops(path: Path, crops: Sequence[np.ndarray]) -> None:
    """Variable-size crops in one file: flat pixels + (n, 2) heights/widths (npz format)."""
    shapes = np.array([c.shape[:2] for c in crops], np.int64)
    with path.open("wb") as f:  # a file handle keeps the name as given (.npy or .npz)
        np.savez(f, pixels=np.concatenate([c.reshape(-1) for c in crops]), shapes=shapes)


def load_crops(path: Path) -> list[np.ndarray]:
    data = np.load(path)
    pixels, shapes = data["pixels"], data["shapes"]
    ends = np.cumsum(shapes[:, 0] * shapes[:, 1] * 3)
    return [pixels[e - h * w * 3 : e].reshape(h, w, 3) for e, (h, w) in zip(ends, shapes, strict=True)]


RESIZE = f"cv2.INTER_LINEAR, refind.models.base.crops_to_batch (threaded from {PARALLEL_RESIZE_MIN} crops)"


def preprocess(crops: Sequence[np.ndarray]) -> np.ndarray:
    """Crops -> (B, 3, 256, 128) float32 BGR 0-255, the OMZ ReID input, as refind makes it."""
    return crops_to_batch(crops, INPUT_HW, "bench crop")  # (B, 3, 256, 128)


# ---- timing ----


def rate(fn: Callable[[], object], n_items: int, iters: int, warmup: int, sync: Callable) -> float:
    """Items/s of ``fn`` over ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return n_items * iters / (time.perf_counter() - t0)


def batch_of(crops: Sequence[np.ndarray], b: int) -> list[np.ndarray]:
    return [crops[i % len(crops)] for i in range(b)]


class TorchRunner:
    """The converted 0277 (and optionally the IRM head) on one device, fp16 or fp32."""

    def __init__(self, net: torch.nn.Module, device: torch.device, fp16: bool, head=None) -> None:
        self.device, self.fp16, self.head = device, fp16, head
        self.net = net.to(device).eval()
        self.dtype = torch.float16 if fp16 else torch.float32
        if fp16:
            self.net = self.net.half()

    @torch.inference_mode()
    def model(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.head is None:
            return out["reid_embedding"]  # (B, 256)
        tokens = F.avg_pool2d(out["1126"].float(), 2).flatten(2).transpose(1, 2)  # (B, 32, 512)
        with torch.autocast(self.device.type, torch.float16, enabled=self.fp16):
            return self.head.gallery(tokens, out["reid_embedding"].float()).vectors  # (B, 512)

    def end_to_end(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(preprocess(crops)).to(self.device, self.dtype, non_blocking=True)
        v = self.model(x).float()
        return F.normalize(v, dim=1).cpu().numpy()  # (B, D), synchronises


def time_torch(runner: TorchRunner, crops: list, batches: list[int], iters: int, warmup: int,
               sync: Callable) -> dict:
    out = {}
    for b in batches:
        chunk = batch_of(crops, b)
        x = torch.from_numpy(preprocess(chunk)).to(runner.device, runner.dtype)
        out[str(b)] = {
            "model_crops_per_s": round(rate(lambda x=x: runner.model(x), b, iters, warmup, sync), 1),
            "e2e_crops_per_s": round(rate(lambda c=chunk: runner.end_to_end(c), b, iters, warmup, sync), 1),
        }
        log.info("%s batch %d: %s", "irm" if runner.head else "torch_0277", b, out[str(b)])
    return out


def cpu_embedders(b: int, threads: int, weights: Path | None, int8: bool) -> dict:
    """The OpenVINO CPU embedders as ingest runs them, batch ``b``: 0277 alone and the IRM
    (OpenVINO backbone + OpenVINO-compiled head), and with ``int8`` their INT8-backbone copies."""
    from refind.models.config import ModelStoreConfig, OpenVinoReidConfig
    from refind.models.irm_embedder import IrmEmbedder
    from refind.models.openvino_reid import OpenVinoReidEmbedder
    from refind.models.store import ModelStore

    store = ModelStore.from_config(ModelStoreConfig())
    path = weights or store.resolve("irm-pets-v3").path
    out = {}
    for suffix in ("", "_int8") if int8 else ("",):
        model = REID + suffix.replace("_", "-")
        cfg = OpenVinoReidConfig(model=model, batch_size=b, threads=threads)
        out[f"openvino_reid{suffix}"] = OpenVinoReidEmbedder(cfg, store)
        irm = IrmEmbedder.from_pretrained(path, store, model, device="cpu", batch_size=b,
                                          threads=threads)
        out[f"irm_openvino_cpu{suffix}"] = irm
        if irm.teacher_shortcut:  # also time the head, as weights with a trained image path run
            full = IrmEmbedder.from_pretrained(path, store, model, device="cpu", batch_size=b,
                                               threads=threads)
            full.teacher_shortcut = False
            out[f"irm_head_openvino_cpu{suffix}"] = full
    return out


def time_cpu(crops: list, batches: list[int], iters: int, warmup: int, threads: int,
             weights: Path | None, int8: bool, rounds: int) -> dict:
    """End-to-end crops/s of each CPU embedder: ``rounds`` rounds of ``iters`` calls, the
    embedders taking turns within a round, so load from other work on a shared machine falls
    on all of them alike; the median round, and the slowest and fastest."""
    out: dict[str, dict] = {}
    for b in batches:
        chunk = batch_of(crops, b)
        embedders = cpu_embedders(b, threads, weights, int8)
        per: dict[str, list[float]] = {name: [] for name in embedders}
        for _ in range(rounds):
            for name, emb in embedders.items():
                per[name].append(rate(lambda c=chunk, e=emb: e(c), b, iters, warmup, lambda: None))
        for name, rates in per.items():
            out.setdefault(name, {})[str(b)] = {
                "e2e_crops_per_s": round(float(np.median(rates)), 1),
                "e2e_min_max": [round(min(rates), 1), round(max(rates), 1)],
                "rounds": rounds,
            }
            log.info("%s batch %d: %s", name, b, out[name][str(b)])
    return out


TEXTS = {  # a text the attribute probe reads, and one only the learned text path can embed
    "probe": "a woman in a red top and black trousers with a backpack",
    "learned_text_path": "someone suspicious walking alone near the gate",
}


def time_text(weights: Path | None, threads: int, calls: int = 50) -> dict:
    """Milliseconds per text query of the IRM embedder (median of ``calls``), per path."""
    from refind.models.config import ModelStoreConfig
    from refind.models.irm_embedder import IrmEmbedder
    from refind.models.store import ModelStore

    store = ModelStore.from_config(ModelStoreConfig())
    path = weights or store.resolve("irm-pets-v3").path
    emb = IrmEmbedder.from_pretrained(path, store, device="cpu", threads=threads)
    out = {}
    for name, text in TEXTS.items():
        emb.embed_text([text])  # warm-up: loads MiniLM on the learned path
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            emb.embed_text([text])
            times.append((time.perf_counter() - start) * 1e3)
        out[name] = {"text": text, "median_ms": round(float(np.median(times)), 3),
                     "calls": calls, "probe": emb.probe is not None}  # fmt: skip
    return out


def irm_head(weights: Path | None, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """The IRM head from ``weights``, or an untrained one (same cost) when none is given."""
    from refind.models import irm

    if weights is not None:
        head, _ = irm.load_head(weights)
        return head.to(device).eval(), True
    head = irm.IrmHead(irm.IrmConfig())
    # a gallery instruction of 8 tokens, like a short MiniLM sentence: timing only
    head.set_gallery_text(torch.randn(8, head.cfg.text_dim))
    return head.to(device).eval(), False


# ---- main ----


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--fp16", action="store_true", help="torch models in float16 (GPU)")
    p.add_argument("--batch", default=None, help="comma list; default 32 on CPU, 32,256,1024 on GPU")
    p.add_argument("--crops", type=Path, help="crops file written by --save-crops (no video needed)")
    p.add_argument("--save-crops", type=Path, help="cut crops from the PETS clip and save them here")
    p.add_argument("--n-crops", type=int, default=512)
    p.add_argument("--exported", type=Path, help="refind.models.ov_torch.export folder of 0277")
    p.add_argument("--export-dir", type=Path, help="export 0277 here (needs openvino) and use it")
    p.add_argument("--irm-weights", type=Path, help="IRM head safetensors (default: untrained head)")
    p.add_argument("--int8", action="store_true",
                   help="CPU: also time the INT8 copy of 0277 (make it with `refind quantize`)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and OpenVINO")
    p.add_argument("--iters", type=int, default=None,
                   help="timed calls per batch size (round); default 20 GPU, 8 OpenVINO CPU, "
                        "2 torch CPU")
    p.add_argument("--rounds", type=int, default=7, help="CPU: interleaved rounds per embedder")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    return p.parse_args(argv)


def load_inputs(args: argparse.Namespace) -> tuple[list[np.ndarray], torch.nn.Module]:
    if args.crops is not None:
        crops = load_crops(args.crops)
    else:
        crops = cut_pets_crops(PETS / "vtest.avi", PETS / "gt.txt", args.n_crops)
    if args.save_crops is not None:
        save_crops(args.save_crops, crops)
        log.info("saved %d crops to %s (%.1f MB)", len(crops), args.save_crops,
                 args.save_crops.stat().st_size / 1e6)
    if args.export_dir is not None:
        ov_torch.export(resolve_xml(), args.export_dir)
        args.exported = args.export_dir
    outputs = ("1126", "reid_embedding")
    if args.exported is not None:
        return crops, ov_torch.load_exported(args.exported, outputs=outputs)
    return crops, ov_torch.from_openvino(resolve_xml(), outputs=outputs)


def resolve_xml() -> Path:
    from refind.models.config import ModelStoreConfig
    from refind.models.store import ModelStore

    return ModelStore.from_config(ModelStoreConfig()).resolve(REID).path


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU")
    gpu = device.type == "cuda"
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in (args.batch or ("32,256,1024" if gpu else "32")).split(",")]
    iters = args.iters or (20 if gpu else 2)  # torch on 2 CPU cores: ~20 crops/s
    ov_iters = args.iters or 8  # the OpenVINO CPU embedders, per round
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    crops, net = load_inputs(args)

    pre = {}
    for b in batches:
        chunk = batch_of(crops, b)
        pre[str(b)] = round(rate(lambda c=chunk: preprocess(c), b, iters, 1, sync), 1)
    results: dict[str, object] = {}
    if gpu:
        results["openvino_reid"] = {"available": False, "reason": "OpenVINO CPU path: run on CPU"}
    else:
        try:
            results.update(time_cpu(crops, batches, ov_iters, warmup, args.threads,
                                    args.irm_weights, args.int8, args.rounds))
        except ImportError as err:
            results["openvino_reid"] = {"available": False, "reason": f"not available: {err}"}
        try:
            results["irm_text_query"] = time_text(args.irm_weights, args.threads)
        except ImportError as err:
            results["irm_text_query"] = {"available": False, "reason": f"not available: {err}"}
    results["torch_0277"] = time_torch(TorchRunner(net, device, args.fp16), crops, batches,
                                       iters, warmup, sync)
    try:
        head, trained = irm_head(args.irm_weights, device)
    except (ImportError, AttributeError, OSError, ValueError) as err:
        results["irm"] = {"available": False, "reason": f"not available: {type(err).__name__}: {err}"}
    else:
        runner = TorchRunner(net, device, args.fp16, head=head)
        results["irm"] = {"trained_weights": trained,
                          **time_torch(runner, crops, batches, iters, warmup, sync)}

    result = {
        "benchmark": "embedder_throughput",
        "date": dt.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if gpu else (platform.processor() or "cpu"),
        "fp16": args.fp16,
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),  # a shared CPU: read rates with it
        "n_distinct_crops": len(crops),
        "iters": iters,
        "openvino_cpu_iters": None if gpu else ov_iters,
        "openvino_runner": None if gpu else "refind.models.openvino_util.CpuRunner (a part per stream)",
        "preprocess_crops_per_s": pre,
        "resize": RESIZE,
        "resize_threads": resize_workers(),
        "results": results,
    }
    suffix = "" if not gpu else f"-cuda{'-fp16' if args.fp16 else ''}"
    write_result(args.out, "embedder_throughput", result, suffix)


if __name__ == "__main__":
    main()
