"""Global ids on disk: where each ReID model's identity state lives, the ids reserved for it,
and what reads or rewrites that state besides the live service (``refind.indexer.identity_service``):
the search API (``GlobalIds``), ``refind reindex`` (``relink_gallery``) and ``refind forget``
(``forget_identities``).

Example:
    >>> GlobalIds(data_dir).lookup([("gate", 7)], model_id)                 # doctest: +SKIP
    {('gate', 7): 3}
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from refind.config import RefindConfig
from refind.indexer.gallery_store import atomic_write, index_stem
from refind.indexer.identities import IdentityChange, IdentityLinker, Tracklet, mean_vector
from refind.indexer.metadata import SqliteMetadata
from refind.indexer.record import EventRecord
from refind.streaming.events import IdentityEvent
from refind.streaming.records import TrackSpan


def state_path(data_dir: Path, model_id: str) -> Path:
    """Where the global ids of ``model_id``'s vectors are kept."""
    return Path(data_dir) / "identities" / f"{index_stem(model_id)}.json"


def load_linker(cfg: RefindConfig, model_id: str) -> IdentityLinker:
    """The saved linker of ``model_id`` under ``cfg.data_dir``, or a new one; its next id is
    above every id ever reserved for the model (``reserve_ids``), saved or not."""
    path = state_path(cfg.data_dir, model_id)
    linker = (IdentityLinker.from_json(path.read_text(encoding="utf-8"), cfg.identities)
              if path.is_file() else IdentityLinker(cfg.identities))
    linker.next_id = max(linker.next_id, reserved_ids(cfg.data_dir, model_id))
    return linker


def reserved_ids(data_dir: Path, model_id: str) -> int:
    """The id below which ids of ``model_id`` may have been handed out (1 when none were)."""
    path = state_path(data_dir, model_id).with_suffix(".ids")
    try:
        return int(path.read_text(encoding="utf-8").strip() or 1)
    except FileNotFoundError:
        return 1


def reserve_ids(data_dir: Path, model_id: str, below: int) -> None:
    """Record, durably, that ids below ``below`` may be handed out: a service that restarts
    from an older state never hands one out again."""
    path = state_path(data_dir, model_id).with_suffix(".ids")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, f"{below}\n".encode())


def identity_event(change: IdentityChange, model_id: str) -> IdentityEvent:
    sim = None if change.similarity is None else max(-1.0, min(1.0, change.similarity))
    return IdentityEvent(camera=change.camera, ts_ns=change.ts_ns, kind=change.kind,
                         track_id=change.track_id, global_id=change.global_id,
                         previous_global_id=change.previous, similarity=sim, model_id=model_id)


class GlobalIds:
    """Global ids read from the saved state (for the search API, another process than the
    identity actor): re-read when the file changed, at most once a second."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._by_model: dict[str, tuple[int, dict[tuple[str, int], int]]] = {}
        self._checked: dict[str, float] = {}

    def lookup(self, keys: Sequence[tuple[str, int]], model_id: str) -> dict[tuple[str, int], int]:
        ids = self._ids(model_id)
        return {k: ids[k] for k in keys if k in ids}

    def person(self, camera: str, track_id: int, model_id: str
               ) -> tuple[int, list[tuple[str, int]]] | None:
        """The global id of a track and every track of that person (itself too), sorted."""
        ids = self._ids(model_id)
        gid = ids.get((camera, track_id))
        if gid is None:
            return None
        return gid, sorted(k for k, g in ids.items() if g == gid)

    def _ids(self, model_id: str) -> dict[tuple[str, int], int]:
        now = time.monotonic()
        held = self._by_model.get(model_id)
        if held is not None and now - self._checked.get(model_id, 0.0) < 1.0:
            return held[1]
        self._checked[model_id] = now
        path = state_path(self.data_dir, model_id)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if held is None or held[0] != mtime:
            doc = json.loads(path.read_text(encoding="utf-8"))
            ids = {(str(c), int(t)): int(g) for c, t, g in doc.get("retired", [])}
            ids |= {(str(r["camera"]), int(r["track_id"])): int(r["global_id"])
                    for r in doc["tracklets"]}
            held = self._by_model[model_id] = (mtime, ids)
        return held[1]


def people_of(hits: Sequence[tuple[str, int]], ids: dict[tuple[str, int], int]
              ) -> list[dict[str, object]]:
    """Hits grouped by global id, in the order of each person's best hit: "this person: 3
    cameras, 5 tracklets"."""
    groups: dict[int, list[tuple[str, int]]] = {}
    for key in hits:
        gid = ids.get(key)
        if gid is not None:
            groups.setdefault(gid, []).append(key)
    return [{"global_id": gid, "cameras": sorted({c for c, _ in keys}),
             "tracklets": [{"camera": c, "track_id": t} for c, t in keys]}
            for gid, keys in groups.items()]


def relink_gallery(cfg: RefindConfig, metas: Sequence[SqliteMetadata], model_id: str) -> dict:
    """Global ids for every track of a gallery (its shards' ``metas``) from ``model_id``'s
    vectors, written as that model's saved state and published as ``IdentityEvent`` s of that
    model: what ``refind reindex`` does for a new model. Tracks are linked in the order they
    ended, each with its final span and mean vector. A state already saved for the model is
    kept beside, renamed, never overwritten."""
    vectors: dict[tuple[str, int], list[np.ndarray]] = {}
    times: dict[tuple[str, int], list[int]] = {}
    spans: dict[tuple[str, int], TrackSpan] = {}
    for meta in metas:
        for ids, vecs in meta.vectors_after(-1, model_id):
            found = meta.crops_found(ids.tolist())
            for vid, vec in zip(ids.tolist(), vecs, strict=True):
                rec = found.get(vid)
                if rec is not None:
                    key = (rec.camera, rec.track_id)
                    vectors.setdefault(key, []).append(vec)
                    times.setdefault(key, []).append(rec.ts_ns)
        spans |= {(s.camera, s.track_id): s for s in meta.track_spans()}
    linker = IdentityLinker(cfg.identities)
    linker.next_id = reserved_ids(cfg.data_dir, model_id)  # above any id handed out before
    order = sorted(vectors, key=lambda k: (spans[k].last_ts_ns if k in spans else max(times[k])))
    changes: list[IdentityChange] = []
    t0 = time.perf_counter()
    for key in order:
        span = spans.get(key)
        first = min(times[key]) if span is None else min(span.first_ts_ns, min(times[key]))
        last = max(times[key]) if span is None else max(span.last_ts_ns, max(times[key]))
        changes += linker.observe(Tracklet(key[0], key[1], first, last,
                                           mean_vector(np.stack(vectors[key])),
                                           len(vectors[key]), True))
    seconds = time.perf_counter() - t0
    reserve_ids(cfg.data_dir, model_id, linker.next_id)
    path = state_path(cfg.data_dir, model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.rename(path.with_name(f"{path.stem}.before-{time.time_ns()}.json"))
    atomic_write(path, linker.to_json().encode("utf-8"))
    # consumers learn the new model's ids as they learn live ones (each event names its model)
    record = EventRecord.open(cfg)
    try:
        for start in range(0, len(changes), 1000):
            record.append([identity_event(c, model_id) for c in changes[start:start + 1000]])
    finally:
        record.close()
    return {"tracks": len(order), "global_ids": len(linker.groups()),
            "link_ms_per_track": round(1e3 * seconds / max(len(order), 1), 3), "path": str(path)}


def forget_identities(data_dir: Path, camera: str, track_id: int) -> int:
    """Remove a forgotten track from every saved identity state (each model's, and the ones
    kept beside by a re-index): its vector and its global id. Returns the files changed."""
    changed = 0
    for path in sorted((Path(data_dir) / "identities").glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        rows = [r for r in doc.get("tracklets", [])
                if (r["camera"], int(r["track_id"])) != (camera, track_id)]
        retired = [r for r in doc.get("retired", []) if (r[0], int(r[1])) != (camera, track_id)]
        if len(rows) != len(doc.get("tracklets", [])) or len(retired) != len(
                doc.get("retired", [])):
            atomic_write(path, json.dumps(doc | {"tracklets": rows, "retired": retired})
                         .encode("utf-8"))
            changed += 1
    return changed
