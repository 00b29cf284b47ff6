"""The ``refind`` command line: ingest, search, eval, forget, retention, reindex, versions,
rebuild and demo.

Every expected failure (bad config, dead source, missing weights, bad image) ends with one line
``refind: error: ...`` on stderr and exit status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from refind.config import RefindConfig, load_config
from refind.extras import extra_of
from refind.models.base import TASKS  # numpy only: no model code is loaded while parsing
from refind.models.registry import RERANKER_NAMES
from refind.streaming.config import ConfigError

log = logging.getLogger("refind")


def _config(args: argparse.Namespace) -> RefindConfig:
    cfg = load_config(args.config)
    updates: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        updates["data_dir"] = Path(args.data_dir)
    return cfg.model_copy(update=updates) if updates else cfg


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box must be x1,y1,x2,y2, got {text!r}") from None
    if x2 <= x1 or y2 <= y1:
        raise argparse.ArgumentTypeError(f"--box {text!r} has zero or negative size")
    return x1, y1, x2, y2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser, data_dir: bool = True) -> None:
    p.add_argument("--config", type=Path, help="YAML config (default: embedded defaults)")
    if data_dir:
        p.add_argument("--data-dir", type=Path, help="gallery, metadata and crops directory")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refind", description="Find any person across camera streams."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="ingest a video file or stream URL into the gallery")
    p.add_argument("source", help="video file, rtsp://, http(s):// or udp:// URL")
    p.add_argument("--camera", required=True, help="camera name stored with every track")
    p.add_argument("--sample-fps", type=float, help="frames per second analysed")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--start-time", help="files: the wall-clock time of the first frame, ISO 8601 "
                   "(2026-12-06T14:00, in search.timezone unless it has an offset), so clock "
                   "times in searches ('after 14:00') apply; without it times count from 0")
    _add_common(p)

    p = sub.add_parser("search", help="find tracklets of the person in a photo or a description")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=Path, help="photo of the person")
    what.add_argument("--text", help='description, filters in words allowed: "woman with a '
                      'backpack, red top, on camera 2, after 14:00"')
    p.add_argument("--box", type=_box, help="x1,y1,x2,y2: use this part of the photo")
    p.add_argument("--instruction", help="with --image: TEXT, or the path of a garment photo; "
                   "needs an instructable (IRM) embedder")
    p.add_argument("--task", choices=[t for t in TASKS if t != "text"],
                   help="with --image: IRM task (default: read from the instruction)")
    p.add_argument("--k", type=int, default=10, help="tracklets to return (1-1000)")
    p.add_argument("--camera", action="append", default=[], help="only this camera (repeatable)")
    p.add_argument("--since", type=float, help="only crops at or after this time (s)")
    p.add_argument("--until", type=float, help="only crops at or before this time (s)")
    p.add_argument("--min-track-s", type=float, help="only tracks seen at least this long (s)")
    p.add_argument("--rerank", choices=RERANKER_NAMES,
                   help="re-ranker (default: search.rerank for text, search.image_rerank)")
    _add_common(p)

    p = sub.add_parser("eval", help="evaluate tracking or ReID on labelled data")
    ev = p.add_subparsers(dest="eval_command", required=True)
    m = ev.add_parser("mot", help="HOTA, IDF1, MOTA of detection + tracking on a video")
    m.add_argument("--video", type=Path, required=True)
    m.add_argument("--gt", type=Path, required=True, help="MOTChallenge gt.txt")
    m.add_argument("--gt-scale", type=float, default=1.0, help="scale of gt boxes to the video")
    m.add_argument("--max-frames", type=int, help="evaluate only the first N frames")
    m.add_argument("--frames", metavar="FIRST:LAST",
                   help="score only these 1-based frames (tracked from the start of the video)")
    _add_common(m, data_dir=False)
    r = ev.add_parser("reid", help="mAP and CMC rank-1/5/10 of a ReID model")
    r.add_argument("--query", type=Path, required=True, help="folder of identity sub-folders")
    r.add_argument("--gallery", type=Path, required=True, help="folder of identity sub-folders")
    r.add_argument("--model", help="embedder model name (default: the config's)")
    r.add_argument("--task", choices=TASKS, help="IRM query task (default: plain ReID); "
                   "a plain model embeds the queries as they are")
    r.add_argument("--instruction", help="TEXT, or the path of an image (a garment template); "
                   "only for instructable (IRM) models")
    _add_common(r, data_dir=False)
    x = ev.add_parser("text", help="text-to-image retrieval: mAP and rank-1/5/10 of captions")
    x.add_argument("--queries", type=Path, required=True,
                   help='JSON lines {"text": ..., "identity": ...}')
    x.add_argument("--gallery", type=Path, required=True, help="folder of identity sub-folders")
    x.add_argument("--model", help="instructable (IRM) model name (default: the config's)")
    x.add_argument("--tau", type=float, default=0.5, help="agreement threshold of mAP_tau")
    _add_common(x, data_dir=False)
    x = ev.add_parser("irm", help="all six IRM tasks on sets from refind datasets irm-eval")
    x.add_argument("--sets", type=Path, required=True, help="folder with one folder per task")
    x.add_argument("--model", help="embedder model name (default: the config's)")
    x.add_argument("--baseline", help="also evaluate this model and report the mAP difference "
                   "per task on the same queries, with a 95 %% interval over identities")
    x.add_argument("--tau", type=float, default=0.5, help="agreement threshold of mAP_tau")
    _add_common(x, data_dir=False)
    x = ev.add_parser("refer", help="referring re-rankers: recall, precision, DensityF1, "
                      "rejection rate (HumanRef)")
    x.add_argument("--annotations", type=Path, required=True,
                   help='JSON lines {"image", "boxes", "expression", "targets"}')
    x.add_argument("--rerank", choices=RERANKER_NAMES,
                   help="one re-ranker (default: none, attributes, refer, and mllm with a dir)")
    x.add_argument("--mllm-dir", type=Path, help="local Qwen2.5-VL model directory")
    x.add_argument("--boxes", choices=("gt", "detector"), default="gt",
                   help="candidates: the annotation's boxes or the configured detector's "
                        "person boxes")
    x.add_argument("--video", type=Path,
                   help="the clip the frames come from: candidates get their motion from "
                        "refind's own tracks of it (lines need a 1-based 'frame')")
    x.add_argument("--split", choices=("all", "even", "odd"), default="all",
                   help="alternate annotated frames: even = 1st, 3rd, ... (development), "
                        "odd = 2nd, 4th, ... (held out)")
    x.add_argument("--calibrate", action="store_true",
                   help="fit the composing referrer's Platt scaling on these expressions "
                        "(its uncalibrated scores) and print it with the calibration error")
    x.add_argument("--camera", help="the camera of --config the frames come from: words about "
                   "its named places ('left of the lamp post') are judged by them")
    _add_common(x, data_dir=False)
    x = ev.add_parser("mtmc", help="global person ids over several cameras: joint IDF1/IDP/IDR "
                      "(AI City), ids mixing people, people split, false merges")
    x.add_argument("--gt", action="append", default=[], metavar="CAMERA=GT.txt", required=True,
                   help="MOTChallenge ground truth of a camera, in its source's pixels (x "
                        "--gt-scale); repeat per camera; cameras without one count false merges")
    x.add_argument("--gt-scale", type=float, default=1.0,
                   help="multiply GT coordinates (0.625: PETS GT on 768x576, video 480x360)")
    x.add_argument("--frames", metavar="FIRST:LAST",
                   help="score only these 1-based frames (the linker still sees the earlier ones)")
    _add_common(x, data_dir=False)
    x = ev.add_parser("watch", help="photo watches from each person's first tracklet: alert "
                      "precision, recall and latency on the rest of the footage")
    x.add_argument("--gt", action="append", default=[], metavar="CAMERA=GT.txt", required=True,
                   help="MOTChallenge ground truth of a camera (as for eval mtmc)")
    x.add_argument("--gt-scale", type=float, default=1.0, help="multiply GT coordinates")
    x.add_argument("--threshold", type=float, default=0.9, help="the watches' threshold")
    x.add_argument("--calibrate", action="store_true", help="fit the photo watches' Platt "
                   "scaling on the development people (even ids) and print it")
    _add_common(x, data_dir=False)
    x = ev.add_parser("search", help="clip-level text queries through the real search: "
                      "recall@1/@5, mAP over identities, DensityF1 and rejection (per kind)")
    x.add_argument("--video", type=Path, required=True, help="the clip to ingest and search")
    x.add_argument("--gt", type=Path, required=True, help="MOTChallenge ground truth of the clip")
    x.add_argument("--gt-scale", type=float, default=1.0,
                   help="multiply GT coordinates (0.625: PETS GT on 768x576, video 480x360)")
    x.add_argument("--queries", type=Path, required=True,
                   help='JSON lines {"text", "identities": [GT ids], "kind"}')
    x.add_argument("--camera", help="camera name of the clip (default: the file's stem)")
    x.add_argument("--rerank", choices=RERANKER_NAMES,
                   help="re-ranker of the text queries (default: search.rerank)")
    x.add_argument("--split", choices=("all", "even", "odd"), default="all",
                   help="alternate query lines: even = 1st, 3rd, ... (development), odd = 2nd, "
                        "4th, ... (held out)")
    _add_common(x)

    p = sub.add_parser("serve", help="run live cameras on Ray with Kafka events and metrics")
    p.add_argument("--data-dir", type=Path, help="gallery, metadata and crops directory")
    p.add_argument("--config", type=Path, required=True, help="YAML config with cameras")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("api", help="serve the HTTP search API (API keys, scopes, audit log)")
    p.add_argument("--data-dir", type=Path, help="gallery, metadata and crops directory")
    p.add_argument("--config", type=Path, required=True, help="YAML config with an api: section")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("events", help="read refind's Kafka events")
    evs = p.add_subparsers(dest="events_command", required=True)
    t = evs.add_parser("tail", help="print events of a topic as JSON lines (a consumer group)")
    t.add_argument("--topic", required=True, help="e.g. refind.tracks, refind.camera-status")
    t.add_argument("--group", help="consumer group id (default: a new one, from the beginning)")
    t.add_argument("--max", type=int, help="stop after this many events")
    t.add_argument("--timeout", type=float, help="stop after this many seconds without events")
    _add_common(t, data_dir=False)

    p = sub.add_parser("watch", help="standing queries: alert when a person shows up live")
    wa = p.add_subparsers(dest="watch_command", required=True)
    w = wa.add_parser("add", help="watch for the person in a photo, or a description")
    w.add_argument("name", help="the watch's name (1-64 of A-Z a-z 0-9 _ . -)")
    what = w.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=Path, help="a photo of the person (one person in it)")
    what.add_argument("--text", help='a description: "woman in a red coat with a backpack"')
    w.add_argument("--instruction", help="with --image: what to change or ignore, e.g. "
                   '"ignore the clothes" (an instructable ReID model only)')
    w.add_argument("--threshold", type=float, help="alert when the probability that a tracklet "
                   "is the person is at least this (0-1; default 0.9; the same meaning for a "
                   "photo and a text)")
    w.add_argument("--camera", action="append", default=[], help="only this camera (repeat)")
    _add_common(w)
    w = wa.add_parser("list", help="the watches")
    _add_common(w)
    w = wa.add_parser("remove", help="stop a watch and delete it")
    w.add_argument("name")
    _add_common(w)

    p = sub.add_parser("forget", help="delete a track's crops, vectors and metadata for good")
    p.add_argument("--track", type=int, required=True, help="track id (within its camera)")
    p.add_argument("--camera", required=True, help="camera of the track")
    p.add_argument("--reason", default="", help="why, carried by the tombstone event")
    _add_common(p)

    p = sub.add_parser("audit", help="check the API's audit log")
    au = p.add_subparsers(dest="audit_command", required=True)
    v = au.add_parser("verify", help="check the hash chain of the audit log (exit 2 if broken)")
    v.add_argument("--log", type=Path, help="the log (default: api.audit_log, else "
                   "<data_dir>/audit.jsonl)")
    _add_common(v)

    p = sub.add_parser("check", help="check the gallery against its durable record: crops "
                       "recorded but not stored, stored twice or unrecorded (exit 2 if any)")
    _add_common(p)

    p = sub.add_parser("retention", help="delete crops older than each camera's retention")
    _add_common(p)

    p = sub.add_parser("reindex", help="re-embed every stored crop with another model on Ray, "
                       "then switch searches to it")
    p.add_argument("--model", help="embedder model name, e.g. person-reidentification-retail-0288 "
                   "(default: the config's embedder section)")
    p.add_argument("--since", type=float, help="only crops at or after this time (s)")
    p.add_argument("--camera", action="append", default=[], help="only this camera (repeatable)")
    p.add_argument("--batch-size", type=_positive, default=64, help="crops per embedding batch")
    p.add_argument("--workers", type=_positive, default=1, help="embedding actors")
    p.add_argument("--no-switch", action="store_true", help="build, but leave the alias as is")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="switch even if some crops could not be read (they are left out)")
    _add_common(p)

    p = sub.add_parser("versions", help="list index versions, switch the serving one, delete")
    vs = p.add_subparsers(dest="versions_command", required=True)
    _add_common(vs.add_parser("list", help="versions, their state and root; * serves"))
    for name, what in (("use", "serve this version (rollback)"),
                       ("delete", "delete a version that does not serve")):
        v = vs.add_parser(name, help=what)
        v.add_argument("version", help="model_id or model name of the version")
        _add_common(v)

    p = sub.add_parser("rebuild", help="rebuild the serving gallery and metadata from the crop "
                       "store and the events")
    p.add_argument("--from-kafka", action="store_true",
                   help="read the events from Kafka (kafka: in --config), not data_dir/events")
    p.add_argument("--idle", type=float, default=5.0,
                   help="with --from-kafka: stop reading after this many seconds without events")
    p.add_argument("--force", action="store_true",
                   help="rebuild even when the record holds fewer crops than the gallery (the "
                   "crops it lacks are lost)")
    _add_common(p)

    p = sub.add_parser("datasets", help="build the evaluation and training sets from PETS09-S2L1",
                       description="Each builder has its own options: refind datasets NAME --help")
    p.add_argument("builder", choices=sorted(DATASET_BUILDERS),
                   help="; ".join(f"{k}: {v[1]}" for k, v in sorted(DATASET_BUILDERS.items())))
    p.add_argument("options", nargs=argparse.REMAINDER, help="the builder's own options")

    p = sub.add_parser("train", help="train refind's own models")
    tr = p.add_subparsers(dest="train_command", required=True)
    t = tr.add_parser("irm", help="the instruction-editable ReID head (training/irm.py)")
    t.add_argument("--out", type=Path, required=True, help="run folder: weights, report, cache")
    t.add_argument("--cache", type=Path, help="feature cache (default OUT/cache.npz; built if "
                   "missing, which needs OpenVINO)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    t.add_argument("--minutes", type=float, default=24.0,
                   help="time budget of the head trainings (cross-validation folds and final)")
    t.add_argument("--folds", type=int, default=2,
                   help="cross-validation folds over the PETS training ids that choose the "
                   "step counts (1: no validation, train the whole schedules)")
    t.add_argument("--steps", type=int, default=800, help="training steps (the LR schedule)")
    t.add_argument("--seed", type=int, default=0, help="seed of sampling and initialisation")
    t.add_argument("--threads", type=int, default=2, help="CPU threads (1 on a busy machine)")
    _add_common(t, data_dir=False)
    t = tr.add_parser("probe", help="the attribute probe of an IRM model's gallery space, its "
                      "text path (training/probe.py); writes the weights again with it")
    t.add_argument("--weights", default="irm-pets-v3",
                   help="model store name or .safetensors path of the IRM weights")
    t.add_argument("--out", type=Path, required=True, help="the new .safetensors file")
    t.add_argument("--folds", type=int, default=5,
                   help="identity-grouped cross-validation folds that choose the L2 strength")
    t.add_argument("--seed", type=int, default=0, help="seed of the augmentations and folds")
    _add_common(t, data_dir=False)
    t = tr.add_parser("refer", help="the referring re-ranker (training/refer.py)")
    t.add_argument("--annotations", type=Path, required=True,
                   help="TRAIN JSON lines from refind datasets refer")
    t.add_argument("--out", type=Path, required=True, help="folder for weights and report")
    t.add_argument("--epochs", type=int, default=25, help="passes over the TRAIN expressions")
    t.add_argument("--seed", type=int, default=0, help="seed of sampling and initialisation")
    t.add_argument("--threads", type=int, default=1, help="CPU threads")
    _add_common(t, data_dir=False)

    p = sub.add_parser("quantize", help="an INT8 copy of an OpenVINO ReID network for faster "
                       "CPU embedding (training/quantize.py), stored as NAME-int8")
    p.add_argument("--model", default="person-reidentification-retail-0277",
                   help="model store name of the network")
    p.add_argument("--video", type=Path, help="clip to cut calibration crops from (default: the "
                   "Intel sample clip in ../shared/data; use footage like your cameras')")
    p.add_argument("--crops", type=int, default=300, help="calibration crops")
    _add_common(p, data_dir=False)

    p = sub.add_parser("demo", help="ingest a real clip, search it by photo, write a contact sheet")
    p.add_argument("--video", type=Path, help="clip to use (default: PETS09-S2L1 or a sample)")
    p.add_argument("--out", type=Path, default=Path("refind-demo"), help="demo output directory")
    p.add_argument("--k", type=int, default=5, help="tracklets to show")
    _add_common(p, data_dir=False)
    return parser


# name -> (module with main(argv), what it writes)
DATASET_BUILDERS = {
    "pets-reid": ("refind.datasets.build_pets_reid", "ReID query/gallery folders"),
    "irm-eval": ("refind.datasets.build_irm_eval", "the six IRM task sets"),
    "refer": ("refind.datasets.build_refer_sets", "referring expressions, TRAIN and DEV"),
}


def _build_dataset(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(DATASET_BUILDERS[args.builder][0])
    return int(module.main(args.options) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "datasets":  # the builder parses its own options
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
        return _build_dataset(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from refind.app import commands  # heavy imports (models) only after argument parsing

    handlers = {
        "ingest": commands.ingest,
        "search": commands.search,
        "demo": commands.demo,
        "serve": commands.serve,
        "api": commands.api,
        "events": commands.events,
        "eval": commands.evaluate,
        "forget": commands.forget,
        "watch": commands.watch,
        "audit": commands.audit,
        "check": commands.check,
        "retention": commands.retention,
        "train": commands.train,
        "reindex": commands.reindex,
        "versions": commands.versions,
        "rebuild": commands.rebuild,
        "quantize": commands.quantize,
    }
    try:
        result = handlers[args.command](args, _config(args))
    except commands.USER_ERRORS as err:
        print(f"refind: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # an optional extra that is not installed
        extra = extra_of(err.name)
        if extra is None:
            raise
        print(f"refind: error: refind {args.command} needs the {extra} extra ({err.name} is not "
              f"installed): pip install -e '.[{extra}]' (or bash scripts/setup.sh {extra})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refind: interrupted", file=sys.stderr)
        return 130
    if args.json and result is not None:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ConfigError", "build_parser", "main"]
