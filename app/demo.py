"""``refind demo``: the main job on the embedded default, end to end on a real clip.

Ingests a real clip (PETS09-S2L1 from ../shared/data, else the Intel sample clip, downloaded with
a checksum check when absent), takes a crop of one person from the clip as the query photo,
searches, prints the ranked tracklets and writes a contact sheet PNG of the hits.

The output folder holds a fresh gallery each run. The demo only ever deletes what an earlier
demo run wrote there: it marks a folder it made (``.refind-demo``, listing what it wrote), and
refuses a non-empty folder without that mark, deleting nothing.
"""

from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import cv2
import numpy as np

from refind.app.commands import format_hits, run_ingest
from refind.config import RefindConfig
from refind.indexer.blobs import CropStore
from refind.indexer.config import BlobStoreConfig, SqliteMetadataConfig
from refind.indexer.ingest import IngestPipeline
from refind.indexer.search import SearchEngine, read_query_image
from refind.indexer.shards import ShardedGallery
from refind.models.attributes import OpenVinoAttributes
from refind.models.base import ATTRIBUTE_NAMES, PersonAttributes
from refind.models.store import ModelFile, ModelSpec, ModelStore
from refind.streaming.boxes import crop_box
from refind.streaming.config import KafkaConfig
from refind.streaming.records import ImageQuery, TrackletHit
from refind.streaming.sources import VideoSource

log = logging.getLogger(__name__)

# Clips the demo may use, as model-store entries so they are found, fetched and checked the same
# way as weights. The data directory is searched before the download cache.
_CLIPS = {
    "pets09-s2l1": ModelSpec(
        "pets09-s2l1",
        (
            ModelFile(
                "pets09-s2l1/vtest.avi",
                "c766ad7c74437e27eada5596eef024d756d3e7673fc0779e8319d51e262b6153",
                None,
            ),
        ),
        "PETS 2009, University of Reading, free for research",
    ),
    "intel-one-by-one": ModelSpec(
        "intel-one-by-one",
        (
            ModelFile(
                "intel-sample-videos/one-by-one-person-detection.mp4",
                "a5964aa259099a482a8b360ffc2c57b5a30f84d5919236a4dad01f8e929ac07c",
                "https://github.com/intel-iot-devkit/sample-videos/raw/master/"
                "one-by-one-person-detection.mp4",
            ),
        ),
        "CC-BY-4.0 (Intel sample-videos)",
    ),
}


def resolve_demo_clip(store_cfg_dir: Path | None = None) -> Path:
    """The demo clip: PETS09 when present in ../shared/data, else the Intel clip (downloaded)."""
    repo_root = Path(__file__).resolve().parents[1]
    dirs = [d for d in (Path.cwd() / "../shared/data", repo_root / "../shared/data") if d.is_dir()]
    if store_cfg_dir is not None:
        dirs.insert(0, store_cfg_dir)
    cache = Path.home() / ".cache" / "refind" / "data"
    store = ModelStore(dirs, cache, allow_download=False, registry=_CLIPS)
    try:
        return store.resolve("pets09-s2l1").path
    except Exception:
        log.info("PETS09-S2L1 not found in %s; using the Intel sample clip", dirs)
    return ModelStore(dirs, cache, allow_download=True, registry=_CLIPS).resolve(
        "intel-one-by-one"
    ).path


DEMO_MARK = ".refind-demo"  # in an output folder the demo made: the names it wrote there


class DemoOutputError(ValueError):
    """The demo's output folder is not one it may write; nothing was deleted."""


# What a refind data directory holds: in a folder the demo made, these are the demo gallery's
# (also when a later command, a rebuild or a re-index of it, wrote them), never a user's own.
GALLERY_ENTRIES = ("gallery", "gallery-*", "crops", "events", "versions", "versions.json",
                   "versions.lock", "audit.jsonl", "query.jpg", "contact_sheet.png")


def prepare_out_dir(out_dir: Path) -> list[str]:
    """Make ``out_dir`` ready for a fresh demo: a new or empty folder is used as is; a folder
    an earlier demo made loses what that demo wrote and the gallery entries refind commands
    added to it since (other files stay); anything else is refused, nothing deleted. Returns
    the names removed."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoOutputError(f"--out {out_dir} is a file, not a folder; choose a folder")
    mark = out_dir / DEMO_MARK
    entries = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if entries and not mark.is_file():
        raise DemoOutputError(
            f"--out {out_dir} is not empty ({len(entries)} entries, e.g. {entries[0]!r}) and was "
            "not made by `refind demo`; nothing was deleted. Choose a new or empty folder."
        )
    removed = []
    if mark.is_file():
        listed = set(mark.read_text(encoding="utf-8").split())
        ours = {n for n in entries if n in listed or any(fnmatch(n, g) for g in GALLERY_ENTRIES)}
        for name in sorted(ours - {DEMO_MARK}):
            path = out_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(name)
        mark.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    return removed


def _mark_out_dir(out_dir: Path, kept: set[str]) -> None:
    """Write the mark: every entry of ``out_dir`` but those that were there before the run."""
    made = sorted(p.name for p in out_dir.iterdir() if p.name not in kept | {DEMO_MARK})
    (out_dir / DEMO_MARK).write_text("\n".join(made) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class QueryPick:
    frame_index: int
    xyxy: tuple[float, float, float, float]
    image: np.ndarray


def pick_query(video: Path, pipeline: IngestPipeline, at: float = 0.5) -> QueryPick:
    """A clear crop of one person from the frame ``at`` of the way into the clip.

    The tallest confident person box that is not cut by the frame edge and overlaps nobody
    else is chosen, so the query shows one whole person at the best resolution available.
    """
    source = VideoSource(video, camera="query")
    total = source.frame_count_hint() or 100
    wanted = int(total * at)
    for frame in source:
        if frame.index < wanted:
            continue
        [dets] = pipeline.detector([frame.image])
        h, w = frame.size_hw
        best = None
        for i in np.argsort(-(dets.xyxy[:, 3] - dets.xyxy[:, 1])):  # tallest first
            x1, y1, x2, y2 = dets.xyxy[i]
            inside = x1 > 4 and y1 > 4 and x2 < w - 4 and y2 < h - 4
            others = np.delete(dets.xyxy, i, axis=0)
            alone = not len(others) or _max_overlap(dets.xyxy[i], others) < 0.05
            if dets.confidence[i] >= 0.6 and inside and alone and y2 - y1 >= 48:
                best = i
                break
        if best is not None:
            box = tuple(float(v) for v in dets.xyxy[best])
            return QueryPick(frame.index, box, crop_box(frame.image, box))  # type: ignore[arg-type]
        wanted = frame.index + 5  # nobody clear here: look a little later
    raise RuntimeError(f"no clear person found in {video} to use as the demo query")


def _max_overlap(box: np.ndarray, others: np.ndarray) -> float:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    return float((inter / area).max())


def contact_sheet(query: np.ndarray, hits: list[TrackletHit], crops: CropStore) -> np.ndarray:
    """One row: the query, then each hit's thumbnail with its rank, camera, track and score."""
    cell_w, cell_h, label_h = 128, 256, 40
    tiles = [_tile(query, "query", "", cell_w, cell_h, label_h, (0, 160, 255))]
    for rank, h in enumerate(hits, 1):
        image = crops.read(h.thumbnail)
        line2 = f"{h.camera} t{h.track_id} {h.start_ts_ns / 1e9:.0f}-{h.end_ts_ns / 1e9:.0f}s"
        tiles.append(
            _tile(image, f"#{rank}  {h.score:.3f}", line2, cell_w, cell_h, label_h, (60, 200, 60))
        )
    gap = np.full((cell_h + label_h, 6, 3), 255, np.uint8)
    parts = []
    for t in tiles:
        parts += [t, gap]
    return np.concatenate(parts[:-1], axis=1)


def _tile(
    image: np.ndarray, line1: str, line2: str, w: int, h: int, label_h: int,
    colour: tuple[int, int, int],
) -> np.ndarray:
    scale = min(w / image.shape[1], h / image.shape[0])
    resized = cv2.resize(image, (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale))))
    tile = np.full((h + label_h, w, 3), 255, np.uint8)
    y0, x0 = (h - resized.shape[0]) // 2, (w - resized.shape[1]) // 2
    tile[y0 : y0 + resized.shape[0], x0 : x0 + resized.shape[1]] = resized
    cv2.rectangle(tile, (0, 0), (w - 1, h - 1), colour, 2)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(tile, line1, (4, h + 16), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(tile, line2, (4, h + 34), font, 0.35, (60, 60, 60), 1, cv2.LINE_AA)
    return tile


def run_demo(
    cfg: RefindConfig, video: Path | None, out_dir: Path, k: int = 5, quiet: bool = False
) -> dict[str, object]:
    """Ingest, query and write the contact sheet; returns hits and figures as JSON."""
    if video is not None and not Path(video).is_file():
        raise FileNotFoundError(f"video file not found: {video}")
    clip = video or resolve_demo_clip()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    removed = prepare_out_dir(out_dir)  # a fresh gallery each run: demos do not stack up
    if removed:
        say(f"refind demo: removed the previous demo's {', '.join(removed)} from {out_dir}")
    kept = {p.name for p in out_dir.iterdir()}
    try:
        return _demo(demo_config(cfg, out_dir), clip, k, quiet, say)
    finally:  # even after a failure: the next run may remove what this one wrote
        _mark_out_dir(out_dir, kept)


def demo_config(cfg: RefindConfig, out_dir: Path) -> RefindConfig:
    """The user's config with everything the demo writes kept in ``out_dir``: its gallery,
    crops and journal there, and none of its events or tracks in the deployment's Kafka,
    Redis or blob store."""
    return cfg.model_copy(update={"data_dir": out_dir, "kafka": KafkaConfig(),
                                  "metadata": SqliteMetadataConfig(), "blobs": BlobStoreConfig()})


def _demo(cfg: RefindConfig, clip: Path, k: int, quiet: bool, say) -> dict[str, object]:  # type: ignore[no-untyped-def]
    out_dir = Path(cfg.data_dir)
    say(f"refind demo: ingesting {clip}")
    pipeline = IngestPipeline.from_config(cfg)
    report = run_ingest(cfg, VideoSource(clip, camera="cam1"), pipeline, quiet=quiet)
    say(
        f"ingested {report['frames']} frames in {report['seconds']} s ({report['fps']} frames/s): "
        f"{report['tracks']} tracks, {report['crops']} crops"
    )
    pick = pick_query(clip, pipeline)
    query_path = out_dir / "query.jpg"
    cv2.imwrite(str(query_path), pick.image)
    say(f"query: person at {[round(v) for v in pick.xyxy]} in frame {pick.frame_index} -> {query_path}")
    photo = read_query_image(query_path)  # the saved photo: the printed search gives these hits
    crops = CropStore.from_config(cfg)
    emb = pipeline.embedder
    with ShardedGallery.open(out_dir, cfg.gallery, emb.model_id, emb.dim) as gallery:
        hits = SearchEngine(cfg.search, pipeline.embedder, gallery).search_image(
            ImageQuery(image=photo, k=k)
        )
    if not quiet:
        print(format_hits(hits, crops))
    sheet_path = out_dir / "contact_sheet.png"
    cv2.imwrite(str(sheet_path), contact_sheet(pick.image, hits, crops))
    say(f"contact sheet: {sheet_path}")
    described = describe_person(OpenVinoAttributes(ModelStore.from_config(cfg.models))([pick.image]))
    steps = next_steps(out_dir, query_path, described)
    say(f"\nthe gallery is in {out_dir}/ (camera cam1: {report['tracks']} tracks, "
        f"{report['crops']} crops). Try next:\n" + "\n".join(f"  {c}" for c in steps))
    return {
        "clip": str(clip),
        "ingest": report,
        "query": {"frame_index": pick.frame_index, "xyxy": list(pick.xyxy), "path": str(query_path),
                  "described": described},
        "hits": [h.to_json() for h in hits],
        "contact_sheet": str(sheet_path),
        "gallery": str(out_dir),
        "next": steps,
    }


def describe_person(attrs: PersonAttributes, i: int = 0) -> str:
    """Words for row ``i`` of the attribute model's reading: the clothing colours, and man or
    woman when the model is sure (p > 0.7 either way)."""
    male = float(attrs.probs[i, ATTRIBUTE_NAMES.index("is_male")])
    who = "man" if male > 0.7 else "woman" if male < 0.3 else "person"
    return f"a {who} in a {attrs.top_colour[i]} top and {attrs.bottom_colour[i]} trousers"


def next_steps(out_dir: Path, query: Path, described: str) -> list[str]:
    """Commands to try on the demo's gallery: the photo search, a text search that describes
    the query person, and ingesting a clip of one's own beside it; ``refind`` as this run was
    called (``.venv/bin/refind`` from ``scripts/demo.sh``) when that is not the one on PATH."""
    refind = _this_command()
    return [
        f"{refind} search --data-dir {out_dir} --image {query}",
        f'{refind} search --data-dir {out_dir} --text "{described}, on camera cam1"',
        f"{refind} ingest YOUR_CLIP.mp4 --camera door --data-dir {out_dir}",
    ]


def _this_command() -> str:
    """``refind`` when the one on PATH is the one running, else the path it was run by."""
    ran = Path(sys.argv[0])
    if ran.name != "refind":  # python -m refind, or a test: the installed command
        return "refind"
    on_path = shutil.which("refind")
    if on_path is not None and Path(on_path).resolve() == ran.resolve():
        return "refind"
    try:
        return str(ran.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(ran)
