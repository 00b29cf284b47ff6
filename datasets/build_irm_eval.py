"""Build the held-out evaluation sets of the six IRM query tasks from PETS09-S2L1.

Run: ``refind datasets irm-eval --out /tmp/irm-eval``, then
``refind eval irm --sets /tmp/irm-eval [--model NAME]``. With ``--identities train`` the same
sets are built from the training identities (1, 3, ..., 19) instead, for trying a setting
without looking at the held-out people.

How the sets are built (README paragraph):

Only the held-out PETS09-S2L1 identities are used (``refind.datasets.irm.pets_identity_split``: the
ground truth's 19 ids sorted, every second one held out, so 2, 4, ..., 18; the IRM model never
trains on them; ``--identities train`` uses the others instead). Their ground-truth boxes are cut
from the video every 5th frame and split per identity exactly as the plain PETS ReID split
(``datasets/pets_reid.py``: flag-0, edge-cut and more-than-30 %-occluded boxes dropped; a 30-frame
query window drawn per identity with a fixed seed; every query crop at least 60 frames from every
gallery crop of its identity). The gallery is the same for every task: the original colour gallery
crops of the held-out identities, with no distractors from other clips. Each task's queries are
made from the same query crops, with a seed per task, identity and crop: **reid** the crop as it is
("same person, same clothes"); **clothes_change** the crop with its top and/or bottom garment
recoloured (hue, saturation and brightness, shading kept) or overlaid with stripes or checks, head
rows untouched, instruction "ignore the clothes" (or a rephrasing); **clothes_template** only the
upper-body garment (rows 18-58 % of the crop), given both as the query crop and as the image
instruction, the positives being its wearer's gallery crops; **attribute_text** a recoloured crop
plus a text instruction that describes the identity's real clothes ("now wearing a black top and
blue trousers"), the positives being its original-colour gallery crops; **visible_infrared** the
crop rendered infrared-like (person warmer than the background, blurred, noisy, a quarter inverted)
or, one time in three, plain greyscale; **text** three captions per identity and no image. Text
(captions and attribute instructions) comes from the OMZ 0230 attribute model run on all the
identity's crops: mean probabilities, only attributes with p > 0.7 or < 0.3 named (never
has_coat_jacket or has_longpants), and the majority top and bottom colour name; the captions are
written by templates. Metrics: mAP and CMC rank-1/5/10 against the whole gallery, the expected
figures of a random ranking, and for text instructions mAP_tau (a true match must also agree with
the text at tau 0.5 by the attribute model).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import pickle
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from refind.datasets.irm import (
    PETS_GT,
    PETS_VIDEO,
    aggregate_attributes,
    cut_crops,
    describe,
    instruction_for,
    pets_identity_split,
    recolour_clothes,
    texture_swap,
    to_greyscale,
    to_thermal,
    upper_body,
)
from refind.datasets.pets_reid import (
    CropPlan,
    PetsReidOptions,
    plan_crops,
    read_mot_gt,
    video_size,
)
from refind.models.base import TASKS, PersonAttributes
from refind.models.config import ModelStoreConfig
from refind.models.store import ModelStore

log = logging.getLogger("build_irm_eval")
CACHE = Path("/tmp/refind-irm-cache")
CAPTIONS_PER_IDENTITY = 3


def plan_side(
    video: Path, gt: Path, opts: PetsReidOptions, side: str = "heldout"
) -> list[CropPlan]:
    """The PETS ReID split's crops (``plan_crops`` on the whole ground truth, so occlusion by
    any person counts) of the held-out identities only, or with ``side="train"`` of the
    training identities (sets for choosing settings without looking at held-out people)."""
    train, heldout = pets_identity_split(gt)
    keep = {"heldout": set(heldout), "train": set(train)}[side]
    plans = plan_crops(read_mot_gt(gt), video_size(video), opts)
    return [p for p in plans if p.identity in keep]


def crops_for(video: Path, plans: list[CropPlan], cache: Path | None) -> list[np.ndarray]:
    """Decoded crops of ``plans``, from a pickle cache keyed by the plans when present."""
    text = repr([(p.identity, p.frame, p.xyxy) for p in plans] + [str(Path(video).resolve())])
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = cache / f"crops-{key}.pkl" if cache else None  # the key covers the side
    if path and path.is_file():
        return pickle.loads(path.read_bytes())
    crops = cut_crops(video, [(p.identity, p.frame, p.xyxy) for p in plans])
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(crops))
    return crops


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def _query_image(task: str, crop: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The query crop of one task and what was done to it."""
    if task == "clothes_change":
        if rng.random() < 0.5:
            return texture_swap(crop, rng), "texture_swap"
        return recolour_clothes(crop, rng), "recolour"
    if task == "attribute_text":
        return recolour_clothes(crop, rng), "recolour"
    if task == "clothes_template":
        return upper_body(crop), "upper_body"
    if task == "visible_infrared":
        if rng.random() < 1 / 3:
            return to_greyscale(crop), "greyscale"
        return to_thermal(crop, rng), "thermal"
    return crop, "original"


def build(
    out: Path,
    video: Path = PETS_VIDEO,
    gt: Path = PETS_GT,
    opts: PetsReidOptions | None = None,
    store: ModelStore | None = None,
    seed: int = 0,
    cache: Path | None = CACHE,
    progress: bool = True,
    side: str = "heldout",
) -> dict:
    """Write every task folder under ``out`` and return a JSON-able summary."""
    from refind.models.attributes import OpenVinoAttributes

    opts = opts or PetsReidOptions(stride=5)
    plans = plan_side(video, gt, opts, side)
    crops = crops_for(video, plans, cache)
    store = store or ModelStore.from_config(ModelStoreConfig())
    attrs = OpenVinoAttributes(store)(crops)
    identity_of = [str(p.identity) for p in plans]
    ids, per_id = aggregate_attributes(attrs, identity_of)
    row = {identity: k for k, identity in enumerate(ids)}
    queried = sorted({str(p.identity) for p in plans if p.role == "query"}, key=int)

    for task in TASKS:
        if (out / task).exists():
            shutil.rmtree(out / task)
    bar = tqdm(
        total=len(TASKS) * len(plans), desc="irm eval sets", unit="crop", disable=not progress
    )
    counts: dict[str, dict[str, int]] = {}
    for t_index, task in enumerate(TASKS):
        specs = []
        for plan, crop in zip(plans, crops, strict=True):
            bar.update(1)
            name = f"{plan.identity}/f{plan.frame:04d}.png"
            if plan.role == "gallery":
                _write(out / task / "gallery" / name, crop)
                continue
            if task == "text" or str(plan.identity) not in queried:
                continue
            rng = np.random.default_rng([seed, t_index, plan.identity, plan.frame])
            image, made = _query_image(task, crop, rng)
            _write(out / task / "query" / name, image)
            spec = {"query": name, "made_by": made, "instruction": None, "instruction_image": None}
            if task == "clothes_template":
                spec["instruction_image"] = f"query/{name}"
            elif task == "attribute_text":
                spec["instruction"] = instruction_for(task, rng, per_id, row[str(plan.identity)])
            else:
                spec["instruction"] = instruction_for(task, rng)
            specs.append(spec)
        if task == "text":
            specs = _captions(queried, per_id, row, seed)
        _write_jsonl(out / task / "queries.jsonl", specs)
        counts[task] = {"queries": len(specs)}
    bar.close()
    summary = {
        "out": str(out),
        "identities": side,
        "heldout_identities" if side == "heldout" else "train_identities": queried,
        "n_gallery": sum(p.role == "gallery" for p in plans),
        "n_query_crops": sum(p.role == "query" for p in plans),
        "tasks": counts,
        "identity_attributes": _describe_ids(ids, per_id),
        "options": {"stride": opts.stride, "min_gap": opts.min_gap, "seed": seed},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _captions(
    identities: list[str], attrs: PersonAttributes, row: dict[str, int], seed: int
) -> list[dict]:
    specs = []
    for identity in identities:
        rng = np.random.default_rng([seed, 99, int(identity)])
        seen: set[str] = set()
        for _ in range(20):  # a few distinct variants
            text = describe(attrs, row[identity], rng)
            if text not in seen:
                seen.add(text)
                specs.append({"text": text, "identity": identity})
            if len(seen) == CAPTIONS_PER_IDENTITY:
                break
    return specs


def _describe_ids(ids: list[str], attrs: PersonAttributes) -> dict[str, dict]:
    from refind.models.base import ATTRIBUTE_NAMES

    return {
        identity: {
            "probs": {
                n: round(float(v), 3) for n, v in zip(ATTRIBUTE_NAMES, attrs.probs[k], strict=True)
            },
            "top": attrs.top_colour[k],
            "bottom": attrs.bottom_colour[k],
        }
        for k, identity in enumerate(ids)
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="refind datasets irm-eval",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="writes OUT/<task>/...")
    p.add_argument("--video", type=Path, default=PETS_VIDEO, help="PETS S2L1 video")
    p.add_argument("--gt", type=Path, default=PETS_GT, help="MOT15 gt.txt (768x576 frame)")
    p.add_argument("--stride", type=int, default=5, help="sample every Nth ground-truth frame")
    p.add_argument("--min-gap", type=int, default=60, help="frames between query and gallery")
    p.add_argument("--seed", type=int, default=0, help="query windows and augmentations")
    p.add_argument("--models", type=Path, help="model folder (default: the model store's)")
    p.add_argument("--no-cache", action="store_true", help=f"do not use {CACHE}")
    p.add_argument(
        "--identities",
        choices=("heldout", "train"),
        default="heldout",
        help="held-out PETS ids (reporting) or training ids (choosing settings)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = PetsReidOptions(stride=args.stride, min_gap=args.min_gap, seed=args.seed)
    store = ModelStore.from_config(ModelStoreConfig(dir=args.models))
    summary = build(
        args.out, args.video, args.gt, opts, store, args.seed,
        cache=None if args.no_cache else CACHE, side=args.identities,
    )  # fmt: skip
    print(json.dumps({k: v for k, v in summary.items() if k != "identity_attributes"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
