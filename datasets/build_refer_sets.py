"""Build the PETS09-S2L1 referring-expression sets (TRAIN frames 1-400, DEV frames 401-795).

Run from anywhere: ``refind datasets refer --out /tmp/refer``. Writes
``OUT/frames/f<frame>.png``, ``OUT/train.jsonl``, ``OUT/dev.jsonl`` (image paths relative to
OUT) and, with ``--render N``, ``OUT/preview/*.png``: N DEV expressions drawn over their frame
(targets green, other people red) to check the generator by eye. The rules are in
``datasets/refer.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from refind.datasets.refer import (
    DEV_FRAMES,
    TRAIN_FRAMES,
    augment,
    decode_frames,
    generate_expressions,
    label_identities,
    load_scenes,
    relayout,
    scene_records,
    write_jsonl,
)
from refind.models.attributes import OpenVinoAttributes
from refind.models.config import ModelStoreConfig
from refind.models.store import ModelStore

REPO_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("build_refer_sets")
DATA = REPO_ROOT / "../shared/data/pets09-s2l1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="refind datasets refer",
                                description=__doc__.splitlines()[0])
    p.add_argument("--video", type=Path, default=DATA / "vtest.avi", help="PETS S2L1 video")
    p.add_argument("--gt", type=Path, default=DATA / "gt.txt", help="MOT15 gt.txt (768x576 frame)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--train-stride", type=int, default=2, help="use every Nth TRAIN frame")
    p.add_argument("--dev-stride", type=int, default=4, help="use every Nth DEV frame")
    p.add_argument("--train-per-frame", type=int, default=12, help="expressions per TRAIN frame")
    p.add_argument("--dev-per-frame", type=int, default=4, help="expressions per DEV frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", type=int, default=4,
                   help="recoloured copies of each TRAIN frame (feature-level, see augment())")
    p.add_argument("--render", type=int, default=0, help="draw N DEV expressions to OUT/preview")
    return p.parse_args(argv)


def build_split(name: str, frames: range, stride: int, per_frame: int, images: dict,
                attrs: OpenVinoAttributes, args: argparse.Namespace, augment_per_frame: int = 0,
                ) -> list[dict]:
    frame_wh = next(iter(images.values())).shape[1::-1]
    scenes = load_scenes(args.gt, frames, frame_wh)
    labelled = [s for s in scenes if (s.frame - frames.start) % 2 == 0]
    labels = label_identities(labelled, images, attrs)  # this split's crops only
    rng = np.random.default_rng([args.seed, frames.start])
    records = []
    for s in scenes:
        if (s.frame - frames.start) % stride:
            continue
        image = f"frames/f{s.frame:04d}.png"
        if not (args.out / image).exists():
            cv2.imwrite(str(args.out / image), images[s.frame])
        labs = [labels[i] for i in s.ids]
        records += scene_records(s, image, generate_expressions(s, labs, rng, per_frame))
        for k in range(augment_per_frame):
            aug_labs, overrides = augment(labs, rng)
            if k % 2:  # every other copy also moves the people (crops stay where they are)
                moved = relayout(s, rng)
                where = {pid: i for i, pid in enumerate(s.ids)}
                perm = [where[pid] for pid in moved.ids]
                exprs = generate_expressions(moved, [aug_labs[i] for i in perm], rng,
                                             per_frame // 2)
                records += scene_records(moved, image, exprs, [overrides[i] for i in perm],
                                         crop_boxes=s.xyxy[perm])
            else:
                exprs = generate_expressions(s, aug_labs, rng, per_frame // 2)
                records += scene_records(s, image, exprs, overrides)
    write_jsonl(args.out / f"{name}.jsonl", records)
    n_t = Counter(min(len(r["targets"]), 2) for r in records)
    log.info("%s: %d frames, %d expressions (%d none / %d one / %d several), %d identities",
             name, len({r["frame"] for r in records}), len(records), n_t[0], n_t[1], n_t[2],
             len(labels))
    return records


def render(records: list[dict], out: Path, n: int, seed: int) -> None:
    """Draw ``n`` records: targets green, the others red, the expression on top."""
    (out / "preview").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in rng.choice(len(records), size=min(n, len(records)), replace=False):
        r = records[int(k)]
        img = cv2.imread(str(out / r["image"]))
        img = cv2.resize(img, None, fx=2, fy=2)
        for i, b in enumerate(r["boxes"]):
            colour = (0, 220, 0) if i in r["targets"] else (0, 0, 230)
            x1, y1, x2, y2 = (int(v * 2) for v in b)
            cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(img, str(i), (x1, y1 - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.7, colour, 2)
        cv2.rectangle(img, (0, 0), (img.shape[1], 34), (255, 255, 255), -1)
        cv2.putText(img, f"{r['expression']}  -> {r['targets']}", (6, 24),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2)
        cv2.imwrite(str(out / "preview" / f"{int(k):04d}_f{r['frame']:04d}.png"), img)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.video.is_file() or not args.gt.is_file():
        log.error("PETS video or ground truth not found: %s, %s", args.video, args.gt)
        return 2
    (args.out / "frames").mkdir(parents=True, exist_ok=True)
    attrs = OpenVinoAttributes(ModelStore.from_config(ModelStoreConfig()), threads=2)
    summary = {}
    for name, frames, stride, per in (
        ("train", TRAIN_FRAMES, args.train_stride, args.train_per_frame),
        ("dev", DEV_FRAMES, args.dev_stride, args.dev_per_frame),
    ):
        # Labels are averaged over every 2nd frame of the split; only this split's frames.
        images = decode_frames(args.video, set(frames[::2]) | set(frames[::stride]))  # 1-based
        records = build_split(name, frames, stride, per, images, attrs, args,
                              augment_per_frame=args.augment if name == "train" else 0)
        summary[name] = {"expressions": len(records),
                         "kinds": dict(Counter(r["kind"] for r in records))}
        if name == "dev" and args.render:
            render(records, args.out, args.render, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
