"""The ``refind`` command line: ingest, search, eval, forget, retention and demo.

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

from streaming.config import ConfigError, RefindConfig, load_config

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
    _add_common(p)

    p = sub.add_parser("search", help="find tracklets of the person in a photo")
    p.add_argument("--image", type=Path, required=True, help="photo of the person")
    p.add_argument("--box", type=_box, help="x1,y1,x2,y2: use this part of the photo")
    p.add_argument("--k", type=int, default=10, help="tracklets to return (1-1000)")
    p.add_argument("--camera", action="append", default=[], help="only this camera (repeatable)")
    p.add_argument("--since", type=float, help="only crops at or after this time (s)")
    p.add_argument("--until", type=float, help="only crops at or before this time (s)")
    _add_common(p)

    p = sub.add_parser("eval", help="evaluate tracking or ReID on labelled data")
    ev = p.add_subparsers(dest="eval_command", required=True)
    m = ev.add_parser("mot", help="HOTA, IDF1, MOTA of detection + tracking on a video")
    m.add_argument("--video", type=Path, required=True)
    m.add_argument("--gt", type=Path, required=True, help="MOTChallenge gt.txt")
    m.add_argument("--gt-scale", type=float, default=1.0, help="scale of gt boxes to the video")
    m.add_argument("--max-frames", type=int, help="evaluate only the first N frames")
    _add_common(m, data_dir=False)
    r = ev.add_parser("reid", help="mAP and CMC rank-1/5/10 of a ReID model")
    r.add_argument("--query", type=Path, required=True, help="folder of identity sub-folders")
    r.add_argument("--gallery", type=Path, required=True, help="folder of identity sub-folders")
    r.add_argument("--model", help="embedder model name (default: the config's)")
    _add_common(r, data_dir=False)

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

    p = sub.add_parser("forget", help="delete a track's crops, vectors and metadata for good")
    p.add_argument("--track", type=int, required=True, help="track id (within its camera)")
    p.add_argument("--camera", required=True, help="camera of the track")
    p.add_argument("--reason", default="", help="why, carried by the tombstone event")
    _add_common(p)

    p = sub.add_parser("retention", help="delete crops older than each camera's retention")
    _add_common(p)

    p = sub.add_parser("demo", help="ingest a real clip, search it by photo, write a contact sheet")
    p.add_argument("--video", type=Path, help="clip to use (default: PETS09-S2L1 or a sample)")
    p.add_argument("--out", type=Path, default=Path("refind-demo"), help="demo output directory")
    p.add_argument("--k", type=int, default=5, help="tracklets to show")
    _add_common(p, data_dir=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from actors import commands  # heavy imports (models) only after argument parsing

    handlers = {
        "ingest": commands.ingest,
        "search": commands.search,
        "demo": commands.demo,
        "serve": commands.serve,
        "api": commands.api,
        "events": commands.events,
        "eval": commands.evaluate,
        "forget": commands.forget,
        "retention": commands.retention,
    }
    try:
        result = handlers[args.command](args, _config(args))
    except commands.USER_ERRORS as err:
        print(f"refind: error: {err}", file=sys.stderr)
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
