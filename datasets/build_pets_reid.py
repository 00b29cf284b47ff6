"""Build the PETS09-S2L1 ReID query / gallery crop folders and print a JSON summary.

Run from anywhere: ``refind datasets pets-reid --out /tmp/pets_reid``. The split rule is
described in ``datasets/pets_reid.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from refind.datasets.pets_reid import PetsReidOptions, build_pets_reid

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "../shared/data/pets09-s2l1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = PetsReidOptions()
    p = argparse.ArgumentParser(prog="refind datasets pets-reid",
                                description=__doc__.splitlines()[0])
    p.add_argument("--video", type=Path, default=DATA / "vtest.avi", help="PETS S2L1 video")
    p.add_argument("--gt", type=Path, default=DATA / "gt.txt", help="MOT15 gt.txt (768x576 frame)")
    p.add_argument("--gt-scale", type=float, default=defaults.gt_scale, help="GT -> video scale")
    p.add_argument("--out", type=Path, required=True, help="writes OUT/query and OUT/gallery")
    p.add_argument(
        "--min-gap",
        type=int,
        default=defaults.min_gap,
        help="frames between any query and gallery crop of one identity",
    )
    p.add_argument("--stride", type=int, default=defaults.stride, help="sample every Nth frame")
    p.add_argument(
        "--query-span",
        type=int,
        default=defaults.query_span,
        help="length in frames of each identity's query window",
    )
    p.add_argument(
        "--min-height",
        type=float,
        default=defaults.min_height_px,
        help="lowest box height kept, video px",
    )
    p.add_argument(
        "--max-overlap",
        type=float,
        default=defaults.max_overlap,
        help="largest fraction of a box covered by another gt box",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="query window draw")
    p.add_argument("--overwrite", action="store_true", help="replace OUT/query and OUT/gallery")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = PetsReidOptions(
        gt_scale=args.gt_scale,
        min_gap=args.min_gap,
        stride=args.stride,
        query_span=args.query_span,
        min_height_px=args.min_height,
        max_overlap=args.max_overlap,
        seed=args.seed,
    )
    summary = build_pets_reid(args.video, args.gt, args.out, opts, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
