"""Commands of global identities and watchlists: ``refind eval mtmc``, ``refind eval watch``
and ``refind watch add|list|remove``."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from refind.config import RefindConfig
from refind.indexer.query_plan import check_query_text
from refind.indexer.search import QueryError, decode_query_image, photo_embed
from refind.indexer.versions import serving_version
from refind.indexer.watchlist import (
    DEFAULT_THRESHOLD,
    PhotoEmbed,
    Watch,
    WatchStore,
    photo_probability,
    photo_watch,
    text_watch,
)
from refind.models.registry import build_embedder
from refind.models.store import ModelStore


def parse_frames(text: str | None) -> tuple[int, int] | None:
    """``"401:795"`` -> (401, 795); None stays None."""
    if text is None:
        return None
    try:
        first, last = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--frames {text!r}: give FIRST:LAST, 1-based frame numbers, e.g. "
                         "401:795") from None
    if not 1 <= first <= last:
        raise ValueError(f"--frames {text!r}: need 1 <= FIRST <= LAST")
    return first, last


def parse_gts(items: list[str]) -> dict[str, Path]:
    """``["cam=gt.txt", ...]`` -> {camera: path}, each file checked."""
    out: dict[str, Path] = {}
    for item in items:
        camera, sep, path = item.partition("=")
        if not sep or not camera or not path:
            raise ValueError(f"--gt {item!r}: give CAMERA=GT.txt")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--gt {item!r}: ground truth file not found: {path}")
        out[camera] = Path(path)
    return out


def evaluate_mtmc_command(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    from refind.evaluation.mtmc import evaluate_mtmc

    result = evaluate_mtmc(cfg, parse_gts(args.gt), args.gt_scale, parse_frames(args.frames),
                           progress=not args.json)
    if not args.json:
        print(f"IDF1 {result['IDF1']:.3f}  IDP {result['IDP']:.3f}  IDR {result['IDR']:.3f}  "
              f"mixed ids {result['mixed_ids']}  people split {result['split_people']}  "
              f"false merges {result['false_merges_no_gt']}  per camera "
              + ", ".join(f"{k} {v:.3f}" for k, v in result["per_camera_IDF1"].items()))
    return result


def evaluate_watch_command(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    import tempfile

    from refind.evaluation.watch import evaluate_watch

    with tempfile.TemporaryDirectory(prefix="refind-watch-eval-") as tmp:
        result = evaluate_watch(cfg, parse_gts(args.gt), args.gt_scale, Path(tmp),
                                threshold=args.threshold, calibrate=args.calibrate,
                                progress=not args.json)
    if not args.json:
        if "calibration" in result:
            print(f"photo calibration of {result['model_id']}: {result['calibration']}")
        for part in ("development", "held_out"):
            if part in result:
                r = result[part]
                print(f"{part}: precision {r['precision']}  recall {r['recall']}  latency p95 "
                      f"{r['latency_p95_s']} s  ({r['alerts']} alerts, {r['people_present']} "
                      f"people seen again, ECE {r['ece']})")
    return result


def watch(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object] | list[object]:
    """``refind watch add|list|remove``."""
    store = WatchStore.in_data_dir(cfg.data_dir)
    if args.watch_command == "list":
        watches = [w.model_dump(exclude={"vector", "more_vectors"}) for w in store.all().values()]
        if not args.json:
            for w in watches:
                what = f"text {w['text']!r}" if w["kind"] == "text" else "photo" + (
                    f" + {w['instruction']!r}" if w["instruction"] else "")
                cams = ", ".join(w["cameras"]) or "all cameras"
                print(f"{w['name']}: {what}, alerts at p >= {w['threshold']} on {cams}")
            if not watches:
                print("no watches: add one with refind watch add NAME --image P | --text T")
        return watches
    if args.watch_command == "remove":
        gone = store.remove(args.name)
        if not args.json:
            print(f"removed watch {gone.name!r}")
        return {"removed": gone.name}
    made = add_watch(cfg, store, args.name, image=args.image, instruction=args.instruction,
                     text=args.text, threshold=args.threshold, cameras=tuple(args.camera))
    if not args.json:
        print(f"watching for {made.name!r} ({made.kind}, threshold {made.threshold}) on "
              f"{', '.join(made.cameras) or 'all cameras'}")
    return made.model_dump(exclude={"vector", "more_vectors"})


def add_watch(cfg: RefindConfig, store: WatchStore, name: str, *,
              image: Path | bytes | None = None, instruction: str | None = None,
              text: str | None = None, threshold: float | None = None,
              cameras: tuple[str, ...] = (), created_by: str = "",
              embed: PhotoEmbed | None = None) -> Watch:
    """Make and store a photo watch (``image``: a path or the bytes of a photo of one person;
    ``embed``: its vector and model_id, default the serving ReID model) or a text watch
    (``text``)."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if (image is None) == (text is None):
        raise QueryError("a watch is a photo (--image) or a text (--text): give one of them")
    if text is not None:
        if instruction is not None:
            raise QueryError("--instruction goes with --image, not --text")
        return store.add(text_watch(name, check_query_text(text, "--text"), threshold, cameras,
                                    created_by))
    if isinstance(image, Path) and not image.is_file():
        raise FileNotFoundError(f"watch photo not found: {image}")
    data = image.read_bytes() if isinstance(image, Path) else image
    photo = decode_query_image(data, "watch photo")
    if instruction is not None:
        instruction = check_query_text(instruction, "--instruction")
    if embed is None:
        serving = serving_version(cfg).cfg
        embed = photo_embed(build_embedder(serving.embedder,
                                           ModelStore.from_config(serving.models)))
    vector, model_id = embed(photo, instruction)
    photo_probability(0.5, model_id, cfg.identities.photo_calibration)  # calibrated, or refused
    ok, jpeg = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return store.add(photo_watch(name, vector, model_id, threshold, cameras, instruction,
                                 created_by), jpeg.tobytes() if ok else None)
