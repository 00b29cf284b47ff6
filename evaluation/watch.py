"""Watchlist evaluation: photo watches made from each person's early crops, alerts on the rest.

The cameras of a multi-camera config run through the pipeline (``refind.evaluation.mtmc``).
Every real person gets a photo watch made from the crops of their first tracklet (the mean of
its stored crops' vectors: an operator's photos of them), added when that tracklet ends. All
tracklet updates then reach a ``WatchMatcher`` in video-time order, as they would live (a
tracklet is checked at its first crop and at every update after, with the global id the
``IdentityLinker`` gives it); the watch's own tracklet does not count. Then:

- **precision**: alerts whose tracklet is the watched person / all alerts (an alert on a camera
  without ground truth, or on a track that holds no real person, is wrong);
- **recall**: watched people who appear again after their watch was made and get at least one
  right alert / all such people;
- **latency**: video time from the first frame of the alerted tracklet (or the watch's making,
  if later) to the update that raised the alert (a live system adds its processing delay).

People are split by ground-truth id: even ids are development (the calibration is fitted on
them, ``calibrate=True``), odd ids are held out; both are reported.

Example:
    >>> evaluate_watch(cfg, {"left": Path("gt.txt")}, 0.625, Path(tmp))      # doctest: +SKIP
    {'held_out': {'precision': 0.96, 'recall': 0.9, 'latency_p95_s': 1.1, ...}, ...}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refind.config import RefindConfig
from refind.evaluation.mtmc import (
    CameraRun,
    camera_truth,
    check_gts,
    run_cameras,
    tracklet_truth,
)
from refind.evaluation.refer import expected_calibration_error, fit_platt
from refind.indexer.identities import IdentityLinker, Tracklet, mean_vector
from refind.indexer.watchlist import (
    DEFAULT_THRESHOLD,
    TrackletView,
    WatchMatcher,
    WatchStore,
    photo_probability,
    photo_watch,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Photo:
    """A person's watch: made at ``at_ns`` from the tracklet ``source``'s crops."""

    person: int
    source: tuple[str, int]
    at_ns: int
    vector: np.ndarray


def _photos(runs: list[CameraRun], truth: dict[tuple[str, int], int]) -> dict[int, _Photo]:
    """Person -> a watch from their first tracklet's crops, made when that tracklet ends."""
    final = {}
    for r in runs:
        for u in r.updates:
            final[(u.camera, u.track_id)] = u
    out: dict[int, _Photo] = {}
    for key, u in sorted(final.items(), key=lambda kv: kv[1].first_ts_ns):
        person = truth.get(key)
        if person is not None and person not in out:
            out[person] = _Photo(person, key, u.at_ns, mean_vector(u.vectors))
    return out


def _rest(runs: list[CameraRun], photo: _Photo) -> list:
    """Updates after ``photo`` was made, of tracklets other than its source."""
    return [u for r in runs for u in r.updates
            if u.at_ns >= photo.at_ns and (u.camera, u.track_id) != photo.source]


def _scores(photos: dict[int, _Photo], runs: list[CameraRun],
            truth: dict[tuple[str, int], int], people: set[int]) -> list[tuple[float, int]]:
    """(cosine, same person) of each watch of ``people`` and each later tracklet (final)."""
    out = []
    for p in sorted(people & set(photos)):
        final = {(u.camera, u.track_id): u for u in _rest(runs, photos[p])}
        for key, u in final.items():
            out.append((float(photos[p].vector @ mean_vector(u.vectors)), int(truth.get(key) == p)))
    return out


def _trial(cfg: RefindConfig, runs: list[CameraRun], truth: dict[tuple[str, int], int],
           photos: dict[int, _Photo], people: set[int], model_id: str, threshold: float,
           folder: Path) -> dict:
    store = WatchStore(folder)
    pending = sorted((photos[p] for p in people & set(photos)), key=lambda ph: ph.at_ns)
    matcher = WatchMatcher(store, calibration=cfg.identities.photo_calibration)
    linker = IdentityLinker(cfg.identities)
    updates = sorted((u for r in runs for u in r.updates), key=lambda u: (u.at_ns, u.camera))
    present = {p for p in people & set(photos)
               if any(truth.get((u.camera, u.track_id)) == p for u in _rest(runs, photos[p]))}
    made_at: dict[int, int] = {}
    alerts, right, found, latency = 0, 0, set(), []
    for u in updates:
        while pending and pending[0].at_ns <= u.at_ns:
            ph = pending.pop(0)
            store.add(photo_watch(f"person-{ph.person}", ph.vector, model_id, threshold))
            made_at[ph.person] = ph.at_ns
        vec = mean_vector(u.vectors)
        linker.observe(Tracklet(u.camera, u.track_id, u.first_ts_ns, u.last_ts_ns, vec,
                                len(u.vectors), u.ended))
        view = TrackletView(u.camera, u.track_id, u.at_ns, u.first_ts_ns, vec, model_id,
                            linker.global_id(u.camera, u.track_id))
        own = {f"person-{p}" for p, ph in photos.items() if ph.source == (u.camera, u.track_id)}
        for alert in matcher.check(view, skip=own):  # a watch is not checked on its own photo
            person = int(alert.watch.split("-", 1)[1])
            alerts += 1
            if truth.get((u.camera, u.track_id)) == person:
                right += 1
                found.add(person)
                latency.append((u.at_ns - max(u.first_ts_ns, made_at[person])) / 1e9)
    return {
        "watches": len(made_at), "people_present": len(present), "alerts": alerts,
        "right_alerts": right,
        "precision": round(right / alerts, 4) if alerts else None,
        "recall": round(len(found & present) / len(present), 4) if present else None,
        "latency_p50_s": round(float(np.percentile(latency, 50)), 2) if latency else None,
        "latency_p95_s": round(float(np.percentile(latency, 95)), 2) if latency else None,
        "checks": matcher.checked,
    }


def evaluate_watch(cfg: RefindConfig, gts: dict[str, Path], gt_scale: float, folder: Path, threshold: float = DEFAULT_THRESHOLD, calibrate: bool = False,
                   progress: bool = True, runs: list[CameraRun] | None = None) -> dict:
    """See the module docstring; ``folder`` holds the trial's watch stores (made empty)."""
    check_gts(cfg, gts)
    runs = runs if runs is not None else run_cameras(cfg, progress)
    truth: dict[tuple[str, int], int] = {}
    for cam, run in zip(cfg.cameras, runs, strict=True):
        if cam.name in gts:
            truth |= tracklet_truth(run, camera_truth(cam, run, gts[cam.name], gt_scale))
    from refind.models.registry import build_embedder
    from refind.models.store import ModelStore

    model_id = build_embedder(cfg.embedder, ModelStore.from_config(cfg.models)).model_id
    photos = _photos(runs, truth)
    everyone = set(truth.values())
    parts = {"development": {p for p in everyone if p % 2 == 0},
             "held_out": {p for p in everyone if p % 2 == 1}}
    out: dict = {"model_id": model_id, "threshold": threshold}
    if calibrate:
        ab = fit_platt([((c + 1) / 2, y) for c, y in
                        _scores(photos, runs, truth, parts["development"])])
        out["calibration"] = {"a": round(ab[0], 4), "b": round(ab[1], 4)}
        return out
    for name, people in parts.items():
        pairs = _scores(photos, runs, truth, people)
        probs = photo_probability(np.array([c for c, _ in pairs]), model_id,
                                  cfg.identities.photo_calibration)
        result = _trial(cfg, runs, truth, photos, people, model_id, threshold, folder / name)
        result["ece"] = round(expected_calibration_error(
            list(zip(probs.tolist(), [y for _, y in pairs], strict=True))), 4)
        out[name] = result
    return out
