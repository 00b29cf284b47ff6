"""What each ``refind`` sub-command does; ``app/cli.py`` parses, these run.

Each handler takes the parsed arguments and the validated config and returns a JSON-able result
(printed with ``--json``) after printing its human-readable form.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import replace
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import numpy as np
from tqdm import tqdm

from refind.config import RefindConfig
from refind.indexer.blobs import CropStore, CropStoreError
from refind.indexer.evidence import EvidenceStore
from refind.indexer.gallery_store import GalleryLockedError
from refind.indexer.identity_state import GlobalIds
from refind.indexer.ingest import IngestPipeline
from refind.indexer.metadata import SqliteMetadata
from refind.indexer.query_plan import (
    QueryPlan,
    check_query_text,
    plan_query,
    resolve_timezone,
    time_text,
)
from refind.indexer.rebuild import RebuildRefused
from refind.indexer.rerank import RerankerPool
from refind.indexer.search import QueryError, Ranked, SearchEngine, read_query_image
from refind.indexer.shards import ShardedGallery, existing_shards, shard_of
from refind.indexer.sink import open_sink
from refind.indexer.versions import serving_version
from refind.models.base import (
    INT8_SUFFIX,
    ModelInputError,
    ModelUnavailable,
    ReidEmbedder,
    model_name,
)
from refind.models.registry import build_embedder
from refind.models.store import ModelStore, ModelStoreError
from refind.streaming.boxes import crop_box
from refind.streaming.config import NAME_PATTERN, ConfigError, IngestConfig
from refind.streaming.records import (
    CLIP_TIME_NS,
    ImageQuery,
    SearchFilter,
    TextQuery,
    TrackletHit,
)
from refind.streaming.sources import SourceError, VideoSource

CAMERA_NAME = re.compile(NAME_PATTERN)  # as in CameraConfig and the event schemas
log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A server refind needs (Kafka, Redis, Ray) cannot be reached; the message names it."""


USER_ERRORS = (
    ServiceError,
    RebuildRefused,
    ConfigError,
    SourceError,
    ModelStoreError,
    ModelInputError,
    ModelUnavailable,
    QueryError,
    CropStoreError,
    GalleryLockedError,
    FileNotFoundError,
    ValueError,
)


def run_ingest(
    cfg: RefindConfig, source: VideoSource, pipeline: IngestPipeline, quiet: bool = False,
    root: Path | None = None,
) -> dict[str, object]:
    """Ingest one source into ``cfg.data_dir`` (the gallery under ``root``, default data_dir)
    with a progress bar; returns the report."""
    total = source.frame_count_hint()
    if total and cfg.ingest.max_frames:
        total = min(total, cfg.ingest.max_frames)
    emb = pipeline.embedder
    with (
        open_sink(cfg, emb.model_id, emb.dim, root,  # the shard a live writer would use
                  shard=shard_of(source.camera, cfg.ray.index_writers)) as sink,
        tqdm(
            total=total, unit="frame", desc=f"ingest {source.camera}", disable=quiet,
            file=sys.stderr,
        ) as bar,
    ):
        report = pipeline.run(source, sink, on_frames=bar.update)
        result = report.to_json() | {"gallery_vectors": len(sink.gallery)}
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
        start_ns=_start_ns(args.start_time, cfg),
    )
    if not CAMERA_NAME.fullmatch(args.camera):
        raise ValueError(f"camera name {args.camera!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    source.open().close()  # fail fast, before loading models, on a dead URL or a bad file
    serving = serving_version(cfg)  # new crops go to the version that serves, with its model
    pipeline = IngestPipeline.from_config(serving.cfg)
    result = run_ingest(serving.cfg, source, pipeline, quiet=args.json, root=serving.root)
    if not args.json:
        print(
            f"ingested {result['frames']} frames of {args.camera!r} in {result['seconds']} s "
            f"({result['fps']} frames/s): {result['tracks']} tracks, {result['crops']} crops; "
            f"gallery now holds {result['gallery_vectors']} vectors in {cfg.data_dir}"
        )
        alerts = result.get("identity", {}).get("alerts")
        if alerts:
            print(f"{alerts} watch alert(s): refind api shows them at /alerts; they are in "
                  f"{cfg.data_dir / 'events' / 'alerts.jsonl'}")
    return result


def _start_ns(text: str | None, cfg: RefindConfig) -> int:
    """``--start-time`` in ns since the epoch (0 when not given)."""
    if text is None:
        return 0
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--start-time {text!r} is not an ISO 8601 time, e.g. "
                         "2026-12-06T14:00 or 2026-12-06T14:00+01:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=resolve_timezone(cfg.search.timezone))
    return int(when.timestamp() * 1e9)


def format_hits(hits: list[TrackletHit], crops: CropStore, tz: tzinfo = UTC) -> str:
    if not hits:
        return "no matching tracklets"
    rows = [f"{'rank':>4}  {'camera':<12} {'track':>6} {'score':>6}  {'from':>19} "
            f"{'to':>19} {'crops':>5}  thumbnail"]
    for i, h in enumerate(hits, 1):
        rows.append(
            f"{i:>4}  {h.camera:<12} {h.track_id:>6} {h.score:>6.3f}  "
            f"{time_text(h.start_ts_ns, tz):>19} {time_text(h.end_ts_ns, tz):>19} {h.n_crops:>5}  "
            f"{crops.location(h.thumbnail)}"
        )
        if h.reasons:
            rows.append(f"{'':>6}{'; '.join(h.reasons)}")
    return "\n".join(rows)


def _image_query(args: argparse.Namespace) -> ImageQuery:
    image = read_query_image(args.image)
    if args.box is not None:
        image = crop_box(image, args.box)
    instruction, instruction_image = args.instruction, None
    if instruction is not None and Path(instruction).is_file():  # a garment photo
        instruction, instruction_image = None, read_query_image(Path(instruction))
    elif instruction is not None:
        instruction = check_query_text(instruction, "--instruction")
    return ImageQuery(
        image=image, k=args.k, cameras=tuple(args.camera),
        start_ts_ns=None if args.since is None else int(args.since * 1e9),
        end_ts_ns=None if args.until is None else int(args.until * 1e9),
        min_track_s=args.min_track_s, instruction=instruction,
        instruction_image=instruction_image, task=args.task, rerank=args.rerank,
    )


def _text_query(
    args: argparse.Namespace, cfg: RefindConfig, gallery: ShardedGallery
) -> tuple[QueryPlan, TextQuery]:
    if args.instruction is not None or args.task is not None or args.box is not None:
        raise QueryError("--instruction, --task and --box go with --image, not --text")
    known = gallery.cameras()
    unknown = [c for c in args.camera if c not in known]
    if unknown:
        raise QueryError(f"unknown camera(s) {', '.join(unknown)}; known: {', '.join(known)}")
    tz = resolve_timezone(cfg.search.timezone)
    plan = plan_query(
        args.text, now=datetime.now(tz), known_cameras=known, tz=tz, cameras=args.camera,
        start_ts_ns=None if args.since is None else int(args.since * 1e9),
        end_ts_ns=None if args.until is None else int(args.until * 1e9),
        min_track_s=args.min_track_s,
    )
    return plan, plan.text_query(args.k, rerank=args.rerank)


def search(args: argparse.Namespace, cfg: RefindConfig) -> list[dict[str, object]]:
    """``refind search --image P [--instruction I] | --text T``: one engine for both."""
    query = _image_query(args) if args.text is None else None  # bad input fails before loading
    serving = serving_version(cfg)
    store = ModelStore.from_config(cfg.models)
    embedder = build_embedder(serving.cfg.embedder, store)
    crops = CropStore.from_config(cfg)
    _check_gallery(serving.root, cfg, embedder.model_id)
    with ShardedGallery.open(serving.root, cfg.gallery, embedder.model_id, embedder.dim) as gallery:
        engine = SearchEngine(cfg.search, embedder, gallery, crops,
                              RerankerPool(store, cfg.search.match_threshold,
                                           cfg.search.mllm_dir,
                                           EvidenceStore.in_data_dir(cfg.data_dir)),
                              places=cfg.places())
        if query is not None:
            ranked = engine.rank_image(query)
        else:
            plan, text_query = _text_query(args, cfg, gallery)
            if plan.parsed:
                log.info("read from the text: %s", "; ".join(plan.parsed))
            ranked = engine.search_text(text_query)
            if not ranked.hits and (text_query.start_ts_ns is not None
                                    or text_query.end_ts_ns is not None):
                ranked = replace(ranked, message=_clock_note(ranked.message, gallery))
    if ranked.message:  # "no tracklet matches ...": a clear line, exit 0, an empty list
        print(ranked.message, file=sys.stderr if args.json else sys.stdout)
    ids = GlobalIds(cfg.data_dir).lookup([(h.camera, h.track_id) for h in ranked.hits],
                                         embedder.model_id)
    if not args.json and (ranked.hits or not ranked.message):
        print(format_hits(ranked.hits, crops, resolve_timezone(cfg.search.timezone)))
        for gid, ranks in _same_person(ranked.hits, ids).items():
            print(f"ranks {', '.join(map(str, ranks))}: linked as one person (global id {gid})")
    return [h.to_json() | {"thumbnail": crops.location(h.thumbnail),
                           "global_id": ids.get((h.camera, h.track_id))} for h in ranked.hits]


def _same_person(hits: list[TrackletHit], ids: dict[tuple[str, int], int]
                 ) -> dict[int, list[int]]:
    """Global id -> the 1-based ranks of its hits, for ids with more than one hit."""
    ranks: dict[int, list[int]] = {}
    for i, h in enumerate(hits, 1):
        gid = ids.get((h.camera, h.track_id))
        if gid is not None:
            ranks.setdefault(gid, []).append(i)
    return {g: r for g, r in ranks.items() if len(r) > 1}


def _check_gallery(root: Path, cfg: RefindConfig, model_id: str) -> None:
    """A QueryError naming the fix when there is nothing to search: no gallery at all, or one
    whose vectors are of another model than the config's embedder."""
    shards = existing_shards(root)
    if not shards:
        raise QueryError(
            f"no gallery in {cfg.data_dir}: ingest a clip first (refind ingest CLIP --camera "
            "NAME), or point --data-dir at a gallery (refind demo writes refind-demo)")
    models: set[str] = set()
    for shard in shards:
        with SqliteMetadata(shard / "metadata.sqlite3", read_only=True) as meta:
            models |= {m.model_id for m in meta.models()}
    if models and model_id not in models:
        raise QueryError(
            f"the gallery in {cfg.data_dir} holds vectors of {', '.join(sorted(models))}, not of "
            f"the config's embedder {model_id}: search with the config it was built with, or "
            f"add a version for this model first (refind reindex --model {model_name(model_id)}"
            " with this config)")
    if not models:
        raise QueryError(f"the gallery in {cfg.data_dir} is empty: run `refind ingest` first")


def _clock_note(message: str | None, gallery: ShardedGallery) -> str:
    """Why a time window found nothing, when the gallery's times count from clip starts."""
    newest = gallery.recent_tracks(1)
    if not newest or newest[0].last_crop_ts_ns >= CLIP_TIME_NS:
        return message or "no track has crops within the filters"
    note = ("the gallery's times count from the start of each ingested clip (no --start-time "
            "was given), so a clock time in the query cannot match: ingest with --start-time, "
            "or leave the time out")
    return f"{message}; {note}" if message else note


def evaluate(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    if args.eval_command == "search":
        return evaluate_search(args, cfg)
    if args.eval_command == "refer":
        return evaluate_refer(args, cfg)
    if args.eval_command == "mtmc":
        from refind.app.identity_commands import evaluate_mtmc_command

        return evaluate_mtmc_command(args, cfg)
    if args.eval_command == "watch":
        from refind.app.identity_commands import evaluate_watch_command

        return evaluate_watch_command(args, cfg)
    if args.eval_command == "mot":
        from refind.evaluation.mot import evaluate_mot

        for p in (args.video, args.gt):
            if not p.is_file():
                raise FileNotFoundError(f"not found: {p}")
        from refind.app.identity_commands import parse_frames

        result = evaluate_mot(
            args.video, args.gt, args.gt_scale, cfg, progress=not args.json,
            max_frames=args.max_frames, frames=parse_frames(args.frames),
        )
        keys = ("HOTA", "IDF1", "MOTA", "IDSW", "fps")
    elif args.eval_command == "reid" and args.task is None and args.instruction is None:
        from refind.evaluation.reid import evaluate_reid

        result = evaluate_reid(args.query, args.gallery, _eval_embedder(args, cfg))
        keys = ("mAP", "mAP_ci95_lo", "mAP_ci95_hi", "rank1", "rank5", "rank10")
    else:
        result, keys = _evaluate_irm(args, cfg)
    if not args.json and keys:
        print("  ".join(f"{k} {_fmt(result[k])}" for k in keys if k in result))
    return result


def _eval_embedder(args: argparse.Namespace, cfg: RefindConfig) -> ReidEmbedder:
    """The embedder ``--model`` names: a model store name, or an IRM ``.safetensors`` file."""
    from refind.indexer.versions import with_model

    store = ModelStore.from_config(cfg.models)
    if args.model:
        cfg = with_model(cfg, args.model)
    return build_embedder(cfg.embedder, store)


def _baseline_embedder(name: str, cfg: RefindConfig) -> ReidEmbedder:
    """``eval irm --baseline NAME``: the embedder ``--model NAME`` would give; an OMZ ReID name
    against a config whose embedder has no model name (an IRM section) gets the default
    OpenVINO ReID embedder with that model."""
    from refind.indexer.versions import VersionError, with_embedder, with_model

    try:
        base = with_model(cfg, name)
    except VersionError:
        base = with_model(with_embedder(cfg, {"type": "openvino_reid"}), name)
    try:
        return build_embedder(base.embedder, ModelStore.from_config(cfg.models))
    except ModelStoreError as err:
        raise ModelStoreError(f"--baseline {name}: {err}") from None


def _evaluate_irm(
    args: argparse.Namespace, cfg: RefindConfig
) -> tuple[dict[str, object], tuple[str, ...]]:
    """``eval reid --task/--instruction``, ``eval text`` and ``eval irm`` (evaluation/irm.py)."""
    from refind.evaluation import irm as eval_irm

    if args.eval_command == "text":
        eval_irm.read_jsonl(args.queries, ("text", "identity"))  # bad input fails before loading
        if not args.gallery.is_dir():
            raise FileNotFoundError(f"gallery folder {args.gallery} not found")
    if args.eval_command == "irm" and not args.sets.is_dir():
        raise FileNotFoundError(f"sets folder {args.sets} not found")
    embedder = _eval_embedder(args, cfg)
    baseline_embedder = None
    if args.eval_command == "irm" and args.baseline:  # built first: a bad name fails at once
        baseline_embedder = _baseline_embedder(args.baseline, cfg)
    if args.eval_command == "reid":
        instruction = args.instruction
        if instruction is not None and Path(instruction).is_file():
            instruction = read_query_image(Path(instruction))  # an image instruction
        result = eval_irm.evaluate_instructed(
            args.query, args.gallery, embedder, args.task or "reid", instruction
        )
        return result, ("task", "mAP", "mAP_ci95_lo", "mAP_ci95_hi", "rank1", "rank5", "rank10")
    from refind.models.attributes import OpenVinoAttributes

    if args.eval_command == "text" and not eval_irm.is_instructable(embedder):
        raise ValueError(
            f"model {embedder.model_id} cannot embed text: text queries need an instructable "
            "(IRM) model; choose one with --model"
        )
    attributes = OpenVinoAttributes(ModelStore.from_config(cfg.models))
    if args.eval_command == "text":
        result = eval_irm.evaluate_text(args.queries, args.gallery, embedder, args.tau, attributes)
        columns = ("mAP", "mAP_ci95_lo", "mAP_ci95_hi", "rank1", "rank5", "rank10", "chance_rank5",
                   "chance_p_rank5", "mAP_tau")  # fmt: skip
        return result, columns
    paired = baseline_embedder is not None
    results = eval_irm.evaluate_irm(args.sets, embedder, attributes, args.tau, per_query=paired)
    if not args.json:
        print(eval_irm.format_table(results))
    if baseline_embedder is None:
        return results, ()  # type: ignore[return-value]
    baseline = eval_irm.evaluate_irm(
        args.sets, baseline_embedder, attributes, args.tau, per_query=True
    )
    difference = eval_irm.paired_difference(results, baseline)
    if not args.json:
        print(f"\nbaseline {args.baseline}\n{eval_irm.format_table(baseline)}")
        print(f"\n{eval_irm.format_difference(difference)}")
    return {"model": results, "baseline": baseline, "difference": difference}, ()


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def demo(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    from refind.app.demo import run_demo

    return run_demo(cfg, video=args.video, out_dir=args.out, k=args.k, quiet=args.json)


def serve(args: argparse.Namespace, cfg: RefindConfig) -> None:
    from refind.app.serve import run_serve

    if not cfg.cameras:
        raise ConfigError(f"{args.config}: no cameras configured (add a `cameras:` list)")
    serving_version(cfg)  # an unreadable versions.json fails here, before Ray starts
    run_serve(cfg)  # live ingestion writes the serving version and follows its alias


def watch(args: argparse.Namespace, cfg: RefindConfig) -> object:
    from refind.app.identity_commands import watch as run_watch

    return run_watch(args, cfg)


def forget(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    from refind.indexer.forget import forget_track

    report = forget_track(cfg, args.camera, args.track, reason=args.reason)
    n = sum(len(v) for v in report.vector_ids.values())
    if not args.json:
        print(f"forgot track {args.track} of {args.camera!r}: {n} vectors, "
              f"{report.crops_deleted} crop files deleted")
    return report.to_json()


def audit(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    from refind.app.api_guard import verify_audit_log

    path = args.log or cfg.api.audit_log or cfg.data_dir / "audit.jsonl"
    if not Path(path).is_file():
        raise FileNotFoundError(f"no audit log at {path}: give --log, or the config the API ran "
                                "with")
    check = verify_audit_log(Path(path))
    if check.broken_at is not None:
        raise ValueError(f"the audit log {path} is broken: {check.problem}")
    if not args.json:
        older = f" ({check.unchained} older lines before the chain)" if check.unchained else ""
        print(f"audit log {path}: {check.lines} lines, hash chain intact{older}")
    return {"log": str(path), "lines": check.lines, "unchained": check.unchained, "intact": True}


def check(args: argparse.Namespace, cfg: RefindConfig) -> None:
    from refind.indexer.verify import check_gallery

    report = check_gallery(cfg)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.summary())
    if not report.ok:
        raise ValueError("the gallery does not match its durable record (above); "
                         "`refind rebuild` rebuilds it from the record")


def retention(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    from refind.indexer.retention import enforce_retention

    result = enforce_retention(cfg)
    if not args.json:
        print(f"retention removed {result['crops_removed']} vectors and "
              f"{result['files_deleted']} crop files")
    return result


def api(args: argparse.Namespace, cfg: RefindConfig) -> None:
    from refind.app.api import serve_api  # fastapi: the api extra (a missing one is named)

    serve_api(cfg)


def events(args: argparse.Namespace, cfg: RefindConfig) -> None:
    from refind.streaming.bus import BusError
    from refind.streaming.consumer import tail_events

    try:
        tail_events(cfg.kafka, args.topic, args.group, args.max, args.timeout)
    except BusError as err:
        raise ServiceError(str(err)) from None


def reindex(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    from refind.actors.reindex import run_reindex

    result = run_reindex(
        cfg, args.model, since_ns=None if args.since is None else int(args.since * 1e9),
        cameras=tuple(args.camera), batch_size=args.batch_size, workers=args.workers,
        switch=not args.no_switch, skip_unreadable=args.skip_unreadable, quiet=args.json,
    )
    if not args.json:
        print(f"re-indexed {result['added']} crops into {result['target']} in "
              f"{result['seconds']} s ({result['crops_per_s']} crops/s); it holds "
              f"{result['crops']} crops; "
              + ("now serving" if result["switched"] else f"{result['source']} still serves"))
    return result


def versions(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    from refind.indexer.versions import delete_version, read_registry, use_version

    if args.versions_command == "use":
        v = use_version(cfg.data_dir, args.version)
        if not args.json:
            print(f"serving version is now {v.model_id}")
    elif args.versions_command == "delete":
        v = delete_version(cfg.data_dir, args.version)
        if not args.json:
            print(f"deleted version {v.model_id} ({v.root})")
    registry = read_registry(cfg.data_dir)
    listing = registry.to_json() if registry else {"serving": None, "versions": {}}
    if args.versions_command == "list" and not args.json:
        if registry is None:
            print(f"no index versions in {cfg.data_dir}: the config's embedder serves the gallery")
        for model_id, v in sorted(registry.versions.items() if registry else []):
            mark = "*" if model_id == registry.serving else " "  # type: ignore[union-attr]
            print(f"{mark} {model_id:<52} {v.state:<9} {v.root}")
    return listing


def rebuild(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    from refind.indexer.rebuild import rebuild_gallery

    report = rebuild_gallery(cfg, from_kafka=args.from_kafka, idle_s=args.idle,
                             quiet=args.json, force=args.force)
    if not args.json:
        print(f"rebuilt {report.model_id} from {report.source}: {report.crops} crops (the "
              f"gallery held {report.gallery_crops}; {report.skipped_missing} missing files, "
              f"{report.skipped_forgotten} of forgotten tracks left out) in {report.root}; the "
              f"gallery it replaced ({report.replaced}) was removed")
    return report.to_json()


def train_probe(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    """``refind train probe``: fit an IRM model's attribute probe, write the weights with it."""
    from refind.models.irm_cpu import resolve_weights
    from refind.training.probe import train_probe as fit

    store = ModelStore.from_config(cfg.models)
    weights, _ = resolve_weights(args.weights, store)
    report = fit(weights, args.out, store, seed=args.seed, folds=args.folds, progress=not args.json)
    if not args.json:
        l2 = f"{report['l2']:g}"
        print(f"attribute probe: {report['n_crops']} crops of {report['n_identities']} "
              f"identities; L2 {l2} by {report['folds']}-fold grouped CV (held-out log-loss "
              f"{report['cv_log_loss'][l2]}); attribute text on photos weighs "
              f"{report['photo_text_weight']} by 2-fold CV; wrote {report['weights']} in "
              f"{report['seconds']} s")
    return report


def train(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    """``refind train irm|probe|refer``; irm: build the feature cache if missing, train, report."""
    if args.train_command == "refer":
        return train_refer(args, cfg)
    if args.train_command == "probe":
        return train_probe(args, cfg)
    from refind.training.irm import TrainOptions
    from refind.training.irm import train as train_irm

    opts = TrainOptions(
        out=args.out, cache=args.cache, device=args.device, minutes=args.minutes,
        max_steps=args.steps, seed=args.seed, threads=args.threads, cv_folds=args.folds,
        progress=not args.json,
    )  # fmt: skip
    report = train_irm(opts, ModelStore.from_config(cfg.models))
    if not args.json:
        tables = (("cv_table", "plain-ReID mAP gain over the teacher"),
                  ("instruction_cv_table", "instructed-task mAP gain over the teacher"),
                  ("text_cv_table", "text mAP"))  # fmt: skip
        for key, what in tables:
            for row in report[key]:
                per_fold = " ".join(f"{g:+.4f}" for g in row["gains"])
                print(f"  {key.removesuffix('_table')} step {row['step']:4d}: {what} {per_fold}")
        print(f"irm: steps chosen by {len(report['cv_folds'])}-fold cross-validation on PETS "
              f"training ids: image {report['chosen_steps']}, instructions "
              f"{report['chosen_instruction_steps']}, text {report['chosen_text_steps']}; whole "
              f"run {report['total_seconds']} s (cache {report['cache_seconds']} s); weights "
              f"{args.out / 'irm.safetensors'}")  # fmt: skip
    return {k: v for k, v in report.items() if k != "history"}


def quantize(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    """``refind quantize``: calibrate and write ``<model>-int8`` into the model store cache."""
    import nncf  # noqa: F401  (the quantize extra: named before any crop is decoded)

    from refind.datasets.irm import INTEL_VIDEO
    from refind.training.quantize import calibration_crops, quantize_reid

    video = args.video or INTEL_VIDEO
    if not Path(video).is_file():
        raise FileNotFoundError(f"calibration clip {video} not found; pass --video CLIP")
    store = ModelStore.from_config(cfg.models)
    crops = calibration_crops(Path(video), store, args.crops, progress=not args.json)
    xml = quantize_reid(store, args.model, crops, source=str(video))
    resolved = store.resolve(args.model + INT8_SUFFIX)
    if not args.json:
        print(f"{resolved.model_id}: {xml} ({len(crops)} calibration crops from {video})")
    return {"model_id": resolved.model_id, "path": str(xml), "calibration_crops": len(crops)}


def evaluate_refer(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    """``refind eval refer``: HumanRef metrics of each re-ranker option (evaluation/refer.py)."""
    from refind.evaluation import refer as eval_refer
    from refind.models.mllm_refer import MllmReranker
    from refind.models.registry import build_detector, build_reranker

    items = eval_refer.split_items(eval_refer.read_annotations(args.annotations), args.split)
    if args.video is not None and not args.video.is_file():
        raise FileNotFoundError(f"--video not found: {args.video}")
    if args.calibrate:
        return _calibrate_compose(args, cfg, items)
    names = [args.rerank] if args.rerank else ["none", "attributes", "compose", "refer"]
    if args.mllm_dir and "mllm" not in names and not args.rerank:
        names.append("mllm")
    store = ModelStore.from_config(cfg.models)
    rerankers = {}
    for name in names:
        if name == "mllm" and args.mllm_dir:
            rerankers[name] = MllmReranker(args.mllm_dir)
        else:
            rerankers[name] = build_reranker(name, store) or eval_refer.KeepAll()
    candidates = None
    if args.boxes == "detector":
        candidates = eval_refer.detector_candidates(build_detector(cfg.detector, store))
    motions = None
    if args.video is not None:
        motions = eval_refer.track_motions(args.video, cfg, progress=not args.json)
    results = eval_refer.evaluate_refer(items, rerankers, candidates, progress=not args.json,
                                        motions=motions, places=camera_places(cfg, args.camera))
    if not args.json:
        print(f"{args.annotations} ({args.split}): {len(items)} expressions, candidates = "
              f"{args.boxes} boxes, motion {'from ' + str(args.video) if motions else 'unknown'}")
        print(eval_refer.format_table(results))
    return {"boxes": args.boxes, "split": args.split, "n_expressions": len(items),
            "motion": motions is not None, "results": results}


def camera_places(cfg: RefindConfig, camera: str | None) -> tuple:
    """The named places of ``camera`` in ``cfg`` (none without a camera); a camera the config
    lacks is a ValueError listing the ones it has."""
    if camera is None:
        return ()
    found = {c.name: c for c in cfg.cameras}
    if camera not in found:
        raise ValueError(f"--camera {camera!r} is not a camera of the config; it has "
                         f"{', '.join(sorted(found)) or 'none (add a cameras: section)'}")
    return found[camera].places


def _calibrate_compose(args: argparse.Namespace, cfg: RefindConfig,
                       items: list) -> dict[str, object]:
    """``eval refer --calibrate``: Platt scaling of the composing referrer's composed scores on
    ``items`` (models/referring.py keeps the result as CALIBRATION)."""
    from refind.evaluation import refer as eval_refer
    from refind.models.referring import ComposingReferrer, platt

    store = ModelStore.from_config(cfg.models)
    base = ComposingReferrer.from_store(store)
    raw = ComposingReferrer(base.attributes, base.pose, base.concepts, calibration=None)
    motions = (eval_refer.track_motions(args.video, cfg, progress=not args.json)
               if args.video is not None else None)
    labelled: dict[str, list[tuple[float, int]]] = {}
    eval_refer.evaluate_refer(items, {"compose": raw}, None, progress=not args.json,
                              motions=motions, scores_out=labelled,
                              places=camera_places(cfg, args.camera))
    pairs = labelled["compose"]
    a, b = eval_refer.fit_platt(pairs)
    probs = platt(np.array([x for x, _ in pairs]), (a, b))
    calibrated = [(float(q), y) for q, (_, y) in zip(probs, pairs, strict=True)]
    result = {"calibration": [round(a, 4), round(b, 4)], "candidates": len(pairs),
              "ece_before": eval_refer.expected_calibration_error(pairs),
              "ece_after": eval_refer.expected_calibration_error(calibrated)}
    if not args.json:
        print(f"compose on {args.annotations} ({args.split}): {len(pairs)} candidates; "
              f"CALIBRATION = ({a:.4f}, {b:.4f}); calibration error {result['ece_before']:.3f} "
              f"-> {result['ece_after']:.3f}")
    return result


def evaluate_search(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    """``refind eval search``: ingest the clip (unless ``--data-dir`` already holds it), run
    every query through the same search as ``refind search``, judge it over ground-truth
    identities (evaluation/search.py)."""
    import tempfile

    from refind.evaluation import search as eval_search
    from refind.evaluation.mot_metrics import load_mot

    queries = eval_search.read_queries(args.queries)  # bad input fails before models load
    if args.split != "all":
        queries = queries[0 if args.split == "even" else 1 :: 2]
    for p in (args.video, args.gt):
        if not p.is_file():
            raise FileNotFoundError(f"not found: {p}")
    camera = args.camera or args.video.stem
    with tempfile.TemporaryDirectory(prefix="refind-eval-search-") as scratch:
        if args.data_dir is None:  # a gallery of its own, gone afterwards
            cfg = cfg.model_copy(update={"data_dir": Path(scratch)})
        result = _search_clip(args, cfg, camera, queries, load_mot(args.gt, args.gt_scale))
    if not args.json:
        print(f"{args.queries} ({args.split}): {len(queries)} queries on {camera}, "
              f"{result['tracklets']} tracklets ({result['tracklets_with_identity']} with an "
              "identity)")
        print(eval_search.format_table(result))
    return result


def _search_clip(args: argparse.Namespace, cfg: RefindConfig, camera: str,
                 queries: list, gt: object) -> dict[str, object]:
    from refind.evaluation import search as eval_search

    serving = serving_version(cfg)
    store = ModelStore.from_config(cfg.models)
    if not _has_camera(serving.root, camera):
        source = VideoSource(args.video, camera=camera, sample_fps=cfg.ingest.sample_fps)
        run_ingest(serving.cfg, source, IngestPipeline.from_config(serving.cfg, store),
                   quiet=args.json, root=serving.root)
    embedder = build_embedder(serving.cfg.embedder, store)
    crops_by_track = _crops_by_track(serving.root, camera, embedder.model_id)
    identities = eval_search.track_identities(crops_by_track, gt)  # type: ignore[arg-type]
    crops = CropStore.from_config(cfg)
    tz = resolve_timezone(cfg.search.timezone)
    rows, answers = [], []
    with ShardedGallery.open(serving.root, cfg.gallery, embedder.model_id, embedder.dim) as gallery:
        engine = SearchEngine(cfg.search, embedder, gallery, crops,
                              RerankerPool(store, cfg.search.match_threshold, cfg.search.mllm_dir,
                                           EvidenceStore.in_data_dir(cfg.data_dir)),
                              places=cfg.places())
        for q in tqdm(queries, desc="eval search", unit="query", disable=args.json,
                      file=sys.stderr):
            plan = plan_query(q.text, now=datetime.now(tz), known_cameras=[camera], tz=tz,
                              cameras=[camera])
            try:
                ranked = engine.search_text(plan.text_query(len(crops_by_track) or 1,
                                                            rerank=args.rerank))
            except QueryError as err:  # refused, as `refind search` would: nothing found
                ranked = Ranked([], str(err))
            order = ranked.ranking or tuple(ranked.hits)
            metrics = eval_search.identity_metrics(
                [identities.get((h.camera, h.track_id)) for h in order],
                [identities.get((h.camera, h.track_id)) for h in ranked.hits], set(q.identities))
            rows.append((q, metrics))
            answers.append({"text": q.text, "kind": q.kind, "identities": list(q.identities),
                            "selected": [identities.get((h.camera, h.track_id))
                                         for h in ranked.hits],
                            "message": ranked.message, **metrics})
    return eval_search.summarise(rows) | {
        "tracklets": len(identities),
        "tracklets_with_identity": sum(v is not None for v in identities.values()),
        "queries": answers,
    }


def _has_camera(root: Path, camera: str) -> bool:
    for shard in existing_shards(root):
        with SqliteMetadata(shard / "metadata.sqlite3", read_only=True) as meta:
            if camera in meta.cameras():
                return True
    return False


def _crops_by_track(root: Path, camera: str, model_id: str) -> dict[tuple[str, int], list]:
    """Every stored crop of ``camera``'s tracks, by track."""
    out: dict[tuple[str, int], list] = {}
    for shard in existing_shards(root):
        with SqliteMetadata(shard / "metadata.sqlite3", read_only=True) as meta:
            for recent in meta.recent_tracks(model_id, SearchFilter(cameras=(camera,)),
                                             limit=10**9):
                t = recent.summary
                ids = meta.track_vector_ids(t.camera, t.track_id, model_id)
                out[(t.camera, t.track_id)] = meta.crops(ids)
    return out


def train_refer(args: argparse.Namespace, cfg: RefindConfig) -> dict[str, object]:
    """``refind train refer``: train the referring re-ranker on a TRAIN annotation file."""
    from refind.models.attributes import OpenVinoAttributes
    from refind.training.refer import TrainOptions
    from refind.training.refer import train_refer as run

    opts = TrainOptions(epochs=args.epochs, seed=args.seed, threads=args.threads)
    attributes = OpenVinoAttributes(ModelStore.from_config(cfg.models), threads=args.threads)
    report = run(args.annotations, args.out, attributes, opts, progress=not args.json)
    if not args.json:
        held = report["holdout"]
        print(f"refer: {report['train_expressions']} expressions, {opts.epochs} epochs in "
              f"{report['seconds']} s; held-out TRAIN frames: DensityF1 {held['density_f1']:.3f}, "
              f"rejection {held['rejection_rate']:.3f}; weights {report['weights']}")
    return report
