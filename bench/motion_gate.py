"""Benchmark: what detecting only when something moved saves, and what it costs in tracking.

Each clip is tracked twice by the same pipeline as `refind eval mot`: with the motion gate (the
default, `motion_gate.enabled: true`) and detecting every frame. Reported per clip: the fraction
of frames the detector ran on, frames/s of both runs, the gate's own cost per frame, and how far
the gated tracks are from the every-frame tracks (IDF1, MOTA and HOTA of one scored against the
other). On PETS09-S2L1 both runs are also scored against the ground truth, on the whole clip and
on frames 401-795 (held out from every tuned choice). The Intel clip has people entering one at a
time and an empty view between them.

    python bench/motion_gate.py [--out DIR] [--plot PNG]

``--plot PNG`` draws the gate's view of the Intel clip instead (per frame, the share of the
picture that changed since the last detected frame, the threshold, and the frames sent to the
detector; `docs/images/motion-gate-intel.png`).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from report import code_version, write_result  # noqa: E402  (bench/report.py)

from refind.config import RefindConfig  # noqa: E402
from refind.evaluation.mot import track_video  # noqa: E402
from refind.evaluation.mot_metrics import load_mot, mot_metrics  # noqa: E402
from refind.streaming.activity import MotionGate  # noqa: E402
from refind.streaming.sources import VideoSource  # noqa: E402

DATA = REPO / "../shared/data"
PETS = DATA / "pets09-s2l1"
INTEL = DATA / "intel-sample-videos/one-by-one-person-detection.mp4"
KEYS = ("IDF1", "MOTA", "HOTA")


def scores(truth, hyp, first: int, last: int) -> dict[str, float]:
    m = mot_metrics(truth.window(first, last), hyp.window(first, last),
                    num_frames=last - first + 1)
    return {k: round(float(m[k]), 4) for k in KEYS}


def clip(video: Path, gt: Path | None = None, gt_scale: float = 1.0) -> dict:
    gated_cfg = RefindConfig()
    every_cfg = gated_cfg.model_copy(
        update={"motion_gate": gated_cfg.motion_gate.model_copy(update={"enabled": False})})
    every, t_every = track_video(video, every_cfg, progress=False)
    gated, t_gated = track_video(video, gated_cfg, progress=False)
    n = int(t_gated["frames"])
    out = {
        "frames": n,
        "detected_fraction": round(t_gated["detected_fraction"], 4),
        "fps_gated": round(t_gated["fps"], 1),
        "fps_every_frame": round(t_every["fps"], 1),
        "gate_ms_per_frame": round(1000 * t_gated["motion_s"] / n, 3),
        "gated_vs_every_frame": scores(every, gated, 1, n),
    }
    if gt is not None:
        truth = load_mot(gt, scale=gt_scale, drop_flag0=True).frames(1, n)
        for name, hyp in (("every_frame", every), ("gated", gated)):
            out[f"{name}_vs_gt"] = {"frames_1_795": scores(truth, hyp, 1, n),
                                    "frames_401_795": scores(truth, hyp, 401, n)}
    return out


def plot_timeline(video: Path, path: Path) -> None:
    """The gate's decision on every frame of ``video``, drawn to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = RefindConfig().motion_gate
    gate = MotionGate(cfg)
    seconds, changed, detected = [], [], []
    for frame in VideoSource(video, camera="door"):
        changed.append(gate.change(frame.image))
        detected.append(gate.needs_detection(frame.image, frame.ts_ns))
        seconds.append(frame.ts_ns / 1e9)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.semilogy(seconds, [max(c, 1e-5) for c in changed], lw=0.8, color="#333",
                label="share of the picture changed since the last detected frame")
    ax.axhline(cfg.min_changed, color="#c33", ls="--", lw=1,
               label=f"threshold ({cfg.min_changed:g})")
    ax.vlines([t for t, d in zip(seconds, detected, strict=True) if d], 1e-5, 2e-5,
              color="#27a", lw=0.6, label="detected frames")
    share = sum(detected) / len(detected)
    ax.set(xlabel="seconds", ylim=(8e-6, 1.5), title=f"Motion gate on {video.name}: "
           f"{share:.0%} of {len(detected)} frames sent to the detector")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    parser.add_argument("--plot", type=Path, help="draw the gate on the Intel clip here instead")
    args = parser.parse_args()
    if args.plot:
        plot_timeline(INTEL, args.plot)
        print(f"wrote {args.plot}")
        return
    result = {
        "benchmark": "motion_gate",
        "motion_gate": RefindConfig().motion_gate.model_dump(),
        "pets09_s2l1": clip(PETS / "vtest.avi", PETS / "gt.txt", 0.625),
        "intel_one_by_one": clip(INTEL),
        "target": "IDF1 within 0.01 of detecting every frame",
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "commit": code_version(),
    }
    write_result(args.out, "motion_gate", result)


if __name__ == "__main__":
    main()
