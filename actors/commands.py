"""What each ``refind`` sub-command does; ``actors/cli.py`` parses, these run.

Each handler takes the parsed arguments and the validated config and returns a JSON-able result
(printed with ``--json``) after printing its human-readable form.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from indexer.blobs import CropStore, CropStoreError
from indexer.gallery_store import GalleryLockedError, GalleryStore
from indexer.ingest import IngestPipeline, build_embedder, crop_box
from indexer.search import QueryError, SearchEngine, read_query_image
from indexer.shards import ShardedGallery
from models.base import ModelInputError, ReidEmbedder
from models.store import ModelStore, ModelStoreError
from streaming.config import ConfigError, IngestConfig, RefindConfig
from streaming.records import ImageQuery, TrackletHit
from streaming.sources import SourceError, VideoSource


class ServiceError(RuntimeError):
    """A server refind needs (Kafka, Redis, Ray) cannot be reached; the message names it."""


USER_ERRORS = (
    ServiceError,
    ConfigError,
    SourceError,
    ModelStoreError,
    ModelInputError,
    QueryError,
    CropStoreError,
    GalleryLockedError,
    FileNotFoundError,
    ValueError,
)


def open_gallery(cfg: RefindConfig, embedder: ReidEmbedder) -> GalleryStore:
    """The gallery an ingest writes (shard 0, the single-writer layout)."""
    return GalleryStore(cfg.data_dir / "gallery", cfg.gallery, embedder.model_id, embedder.dim)


def run_ingest(
    cfg: RefindConfig, source: VideoSource, pipeline: IngestPipeline, quiet: bool = False
) -> dict[str, object]:
    """Ingest one source into ``cfg.data_dir`` with a progress bar; returns the report."""
    total = source.frame_count_hint()
    if total and cfg.ingest.max_frames:
        total = min(total, cfg.ingest.max_frames)
    crops = CropStore.from_config(cfg)
    with (
        open_gallery(cfg, pipeline.embedder) as gallery,
        tqdm(
            total=total, unit="frame", desc=f"ingest {source.camera}", disable=quiet,
            file=sys.stderr,
        ) as bar,
    ):
        report = pipeline.run(source, gallery, crops, on_frames=bar.update)
        result = report.to_json() | {"gallery_vectors": len(gallery)}
    return result


def ingest(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    updates = {
        k: v
        for k, v in (("sample_fps", args.sample_fps), ("max_frames", args.max_frames))
        if v is not None
    }
    if updates:  # validated like the file, so --sample-fps -1 is refused the same way
        ingest_cfg = IngestConfig.model_validate(cfg.ingest.model_dump() | updates)
        cfg = cfg.model_copy(update={"ingest": ingest_cfg})
    source = VideoSource(
        args.source,
        camera=args.camera,
        sample_fps=cfg.ingest.sample_fps,
        open_timeout_s=cfg.ingest.open_timeout_s,
    )
    source.open().close()  # fail fast, before loading models, on a dead URL or a bad file
    pipeline = IngestPipeline.from_config(cfg)
    result = run_ingest(cfg, source, pipeline, quiet=args.json)
    if not args.json:
        print(
            f"ingested {result['frames']} frames of {args.camera!r} in {result['seconds']} s "
            f"({result['fps']} frames/s): {result['tracks']} tracks, {result['crops']} crops; "
            f"gallery now holds {result['gallery_vectors']} vectors in {cfg.data_dir}"
        )
    return result


def format_hits(hits: list[TrackletHit], crops: CropStore) -> str:
    if not hits:
        return "no matching tracklets"
    rows = [f"{'rank':>4}  {'camera':<12} {'track':>6} {'score':>6}  {'start s':>8} "
            f"{'end s':>8} {'crops':>5}  thumbnail"]
    for i, h in enumerate(hits, 1):
        rows.append(
            f"{i:>4}  {h.camera:<12} {h.track_id:>6} {h.score:>6.3f}  {h.start_ts_ns / 1e9:>8.1f} "
            f"{h.end_ts_ns / 1e9:>8.1f} {h.n_crops:>5}  {crops.location(h.thumbnail)}"
        )
    return "\n".join(rows)


def search(args: argparse.Namespace, cfg: RefindConfig) -> list[dict[str, object]]:
    image = read_query_image(args.image)
    if args.box is not None:
        image = crop_box(image, args.box)
    query = ImageQuery(
        image=image,
        k=args.k,
        cameras=tuple(args.camera),
        start_ts_ns=None if args.since is None else int(args.since * 1e9),
        end_ts_ns=None if args.until is None else int(args.until * 1e9),
    )
    embedder = build_embedder(cfg, ModelStore.from_config(cfg.models))
    with ShardedGallery.open(cfg.data_dir, cfg.gallery, embedder.model_id, embedder.dim) as gallery:
        if len(gallery) == 0:
            raise QueryError(f"the gallery in {cfg.data_dir} is empty: run `refind ingest` first")
        hits = SearchEngine(cfg.search, embedder, gallery).search_image(query)
    crops = CropStore.from_config(cfg)
    if not args.json:
        print(format_hits(hits, crops))
    return [h.to_json() | {"thumbnail": crops.location(h.thumbnail)} for h in hits]


def evaluate(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    if args.eval_command == "mot":
        from models.eval_mot import evaluate_mot

        for p in (args.video, args.gt):
            if not p.is_file():
                raise FileNotFoundError(f"not found: {p}")
        result = evaluate_mot(
            args.video, args.gt, args.gt_scale, cfg, progress=not args.json,
            max_frames=args.max_frames,
        )
        keys = ("HOTA", "IDF1", "MOTA", "IDSW", "fps")
    else:
        from models.eval_reid import evaluate_reid

        if args.model:
            cfg = cfg.model_copy(
                update={"embedder": cfg.embedder.model_copy(update={"model": args.model})}
            )
        embedder = build_embedder(cfg, ModelStore.from_config(cfg.models))
        result = evaluate_reid(args.query, args.gallery, embedder)
        keys = ("mAP", "rank1", "rank5", "rank10")
    if not args.json:
        print("  ".join(f"{k} {_fmt(result[k])}" for k in keys if k in result))
    return result


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def demo(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    from actors.demo import run_demo

    return run_demo(cfg, video=args.video, out_dir=args.out, k=args.k, quiet=args.json)


def serve(args: argparse.Namespace, cfg: RefindConfig) -> None:
    from actors.serve import run_serve

    if not cfg.cameras:
        raise ConfigError(f"{args.config}: no cameras configured (add a `cameras:` list)")
    run_serve(cfg)


def forget(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    from indexer.forget import forget_track

    report = forget_track(cfg, args.camera, args.track, reason=args.reason)
    n = sum(len(v) for v in report.vector_ids.values())
    if not args.json:
        print(f"forgot track {args.track} of {args.camera!r}: {n} vectors, "
              f"{report.crops_deleted} crop files deleted")
    return report.to_json()


def retention(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    from indexer.retention import enforce_retention

    result = enforce_retention(cfg)
    if not args.json:
        print(f"retention removed {result['crops_removed']} vectors and "
              f"{result['files_deleted']} crop files")
    return result


def api(args: argparse.Namespace, cfg: RefindConfig) -> None:
    try:
        from actors.api import serve_api
    except ImportError as err:  # fastapi lives in the optional `api` extra
        raise ServiceError(f"the HTTP API needs `pip install -e '.[api]'`: {err}") from None
    serve_api(cfg)


def events(args: argparse.Namespace, cfg: RefindConfig) -> None:
    from streaming.bus import BusError
    from streaming.consumer import tail_events

    try:
        tail_events(cfg.kafka, args.topic, args.group, args.max, args.timeout)
    except BusError as err:
        raise ServiceError(str(err)) from None
