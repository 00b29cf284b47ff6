"""Global ids and watch alerts for tracks as their crops are stored: one plain class that the
live identity actor (``actors/identity.py``) and offline ingest both run.

``IdentityService.crops`` hears of every stored crop (its track, time, ReID vector, where it is
stored); ``ended`` of every ended track. For each track touched it:

1. updates the track's mean vector and links it (``refind.indexer.identities``): the
   ``IdentityEvent`` s of what changed go to the durable record (the journal under
   ``data_dir/events``, and Kafka when it is on);
2. checks it against every watch (``refind.indexer.watchlist``) at once, at its first crop, not
   when it ends: an ``AlertEvent`` goes to the record (``events/alerts.jsonl`` is what the API
   streams to operators);
3. with ``kafka.publish_embeddings``, publishes the track's vector (``EmbeddingEvent``).

Vectors of different ReID models never meet: each ``model_id`` has its own linker, kept on
disk (``refind.indexer.identity_state``; written atomically every ``save_interval_s`` while
news comes in, and on close), so a restarted actor picks up where it was. Ids are reserved on
disk before they are handed out, so none is handed out twice, even after a crash. The state is
read again when another process rewrote it (``refind reindex`` relinking a new model).

Example:
    >>> service = IdentityService(cfg, EventRecord.open(cfg))              # doctest: +SKIP
    >>> service.crops([CropNews("gate", 7, ts, vector, model_id, "gate/7/1.jpg")])  # doctest: +SKIP
    [Alert(watch='visitor', camera='gate', track_id=7, ...)]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from refind.config import RefindConfig
from refind.indexer.gallery_store import atomic_write
from refind.indexer.identities import IdentityLinker, Tracklet, mean_vector
from refind.indexer.identity_state import (
    identity_event,
    load_linker,
    reserve_ids,
    reserved_ids,
    state_path,
)
from refind.indexer.record import EventRecord
from refind.indexer.watchlist import Alert, TextScorer, TrackletView, WatchMatcher, WatchStore
from refind.streaming.events import AlertEvent, BaseEvent, EmbeddingEvent
from refind.streaming.records import Crop, CropRecord, Embeddings, TrackSpan

log = logging.getLogger(__name__)

KEPT_CROPS = 4  # crops of an open track kept (decoded) for text watches
ID_BLOCK = 1000  # global ids reserved on disk at a time (never handed out twice)


@dataclass(frozen=True)
class CropNews:
    """One crop stored for a track: its ReID vector ((d,) float32 of ``model_id``), where it
    is stored, and its JPEG (for text watches; may be empty)."""

    camera: str
    track_id: int
    ts_ns: int
    vector: np.ndarray = field(repr=False)
    model_id: str
    crop_path: str = ""
    jpeg: bytes = field(default=b"", repr=False)


@dataclass
class _Open:
    """What the service holds of a track still open."""

    first_ts_ns: int
    last_ts_ns: int
    vectors: list[np.ndarray] = field(default_factory=list)
    jpegs: list[bytes] = field(default_factory=list)
    thumbnail: str = ""
    model_id: str = ""


def crop_news(crops: Sequence[Crop], embeddings: Embeddings, stored: Sequence[CropRecord]
              ) -> list[CropNews]:
    """News of the crops that were stored (``stored``: their records), with their vectors."""
    row = {(c.camera, c.track_id, c.frame_index): i for i, c in enumerate(crops)}
    out = []
    for rec in stored:
        i = row.get((rec.camera, rec.track_id, rec.frame_index))
        if i is not None:
            out.append(CropNews(rec.camera, rec.track_id, rec.ts_ns, embeddings.vectors[i],
                                embeddings.model_id, rec.crop_path, crops[i].jpeg))
    return out


class IdentityService:
    """See the module docstring. One owner calls it (an actor runs one call at a time)."""

    def __init__(self, cfg: RefindConfig, record: EventRecord | None = None,
                 text_scorer: Callable[[], TextScorer] | None = None,
                 save_interval_s: float = 2.0) -> None:
        self.cfg = cfg
        self.record = record
        self.watches = WatchMatcher(WatchStore.in_data_dir(cfg.data_dir),
                                    calibration=cfg.identities.photo_calibration)
        self._make_text_scorer = text_scorer
        self._linkers: dict[str, IdentityLinker] = {}
        self._reserved: dict[str, int] = {}  # per model: ids below it may be handed out
        self._stamp: dict[str, tuple[int | None, float]] = {}  # (state file mtime, checked at)
        self._open: dict[tuple[str, int], _Open] = {}
        self._dirty: set[str] = set()
        self._saved_at = time.monotonic()
        self.save_interval_s = save_interval_s
        self.counts = {"crops": 0, "tracks_ended": 0, "changes": 0, "alerts": 0}
        self.link_seconds = 0.0
        self._scorer_retry_at = 0.0

    def linker(self, model_id: str) -> IdentityLinker:
        """``model_id``'s linker; loaded again when another process (``refind reindex``)
        rewrote its state since this service last read or wrote it."""
        now = time.monotonic()
        known, checked = self._stamp.get(model_id, (None, 0.0))
        if model_id in self._linkers and now - checked < 1.0:
            return self._linkers[model_id]
        mtime = _mtime(state_path(self.cfg.data_dir, model_id))
        if model_id not in self._linkers or mtime != known:
            if model_id in self._linkers:
                log.warning("global ids of %s were rewritten by another process (refind "
                            "reindex?): reloading them", model_id)
            self._linkers[model_id] = load_linker(self.cfg, model_id)
            self._reserved[model_id] = reserved_ids(self.cfg.data_dir, model_id)
        self._stamp[model_id] = (mtime, now)
        return self._linkers[model_id]

    # --- news --------------------------------------------------------------------------------

    def crops(self, news: Sequence[CropNews]) -> list[Alert]:
        """Stored crops: link their tracks, check them against the watches; the alerts."""
        touched: list[tuple[str, int]] = []
        for n in news:
            key = (n.camera, n.track_id)
            track = self._open.get(key)
            if track is None or track.model_id != n.model_id:  # a new model starts afresh
                track = self._open[key] = self._reopen(key, n.model_id, n.ts_ns, n.crop_path)
            track.first_ts_ns = min(track.first_ts_ns, n.ts_ns)
            track.last_ts_ns = max(track.last_ts_ns, n.ts_ns)
            track.vectors.append(np.asarray(n.vector, np.float32).reshape(-1))
            if n.jpeg:
                track.jpegs = [*track.jpegs, n.jpeg][-KEPT_CROPS:]
            if key not in touched:
                touched.append(key)
        self.counts["crops"] += len(news)
        alerts: list[Alert] = []
        events: list[BaseEvent] = []
        for key in touched:
            alerts += self._update(key, self._open[key], None, events)
        self._publish(events)
        self._save_due()
        return alerts

    def ended(self, spans: Sequence[TrackSpan]) -> list[Alert]:
        """Ended tracks: their final spans relinked; what the service held of them let go."""
        alerts: list[Alert] = []
        events: list[BaseEvent] = []
        for span in spans:
            key = (span.camera, span.track_id)
            track = self._open.pop(key, None)
            if track is None:  # held before a restart, else no crop was stored: no identity
                track = self._reopen(key, None, span.first_ts_ns, "")
                if not track.vectors:
                    continue
            self.counts["tracks_ended"] += 1
            alerts += self._update((span.camera, span.track_id), track, span, events)
        self._publish(events)
        if spans:
            now = max(s.last_ts_ns for s in spans)
            lost = [k for k, t in self._open.items()
                    if t.last_ts_ns < now - int(self.cfg.identities.window_s * 1e9)]
            for key in lost:  # a track whose end never came (its writer lost it)
                del self._open[key]
            for linker in self._linkers.values():
                linker.prune(now, keep=set(self._open))
        self._save_due()
        return alerts

    def _reopen(self, key: tuple[str, int], model_id: str | None, ts_ns: int,
                thumbnail: str) -> _Open:
        """A track to hold: what the saved state knows of it (a restarted service goes on
        with its vector and span, weighted by its crops), else a new one."""
        for model in [model_id] if model_id else list(self._linkers):
            known = self.linker(model).tracklets.get(key)
            if known is not None:
                return _Open(known.first_ts_ns, known.last_ts_ns, [known.vector] * known.crops,
                             thumbnail=thumbnail, model_id=model)
        return _Open(ts_ns, ts_ns, model_id=model_id or "", thumbnail=thumbnail)

    def _update(self, key: tuple[str, int], track: _Open, span: TrackSpan | None,
                events: list[BaseEvent]) -> list[Alert]:
        linker = self.linker(track.model_id)
        vector = mean_vector(np.stack(track.vectors))
        first = min(track.first_ts_ns, span.first_ts_ns) if span else track.first_ts_ns
        last = max(track.last_ts_ns, span.last_ts_ns) if span else track.last_ts_ns
        if linker.next_id >= self._reserved.get(track.model_id, 1):  # before it is handed out
            self._reserved[track.model_id] = linker.next_id + ID_BLOCK
            reserve_ids(self.cfg.data_dir, track.model_id, self._reserved[track.model_id])
        t0 = time.perf_counter()
        changes = linker.observe(Tracklet(key[0], key[1], first, last, vector,
                                          len(track.vectors), span is not None))
        self.link_seconds += time.perf_counter() - t0
        self._dirty.add(track.model_id)
        self.counts["changes"] += len(changes)
        events += [identity_event(c, track.model_id) for c in changes]
        gid = linker.global_id(*key)
        if self.cfg.kafka.publish_embeddings:
            events.append(EmbeddingEvent(
                camera=key[0], ts_ns=last, track_id=key[1], global_id=gid,
                model_id=track.model_id, vector=tuple(float(x) for x in vector),
                crops=len(track.vectors), final=span is not None))
        self._text_scorer_if_needed()
        crops = tuple(img for img in (_decode(j) for j in track.jpegs) if img is not None)
        alerts = self.watches.check(TrackletView(key[0], key[1], last, first, vector,
                                                 track.model_id, gid, crops,
                                                 track.thumbnail or None))
        self.counts["alerts"] += len(alerts)
        events += [AlertEvent(camera=a.camera, ts_ns=a.ts_ns, watch=a.watch,
                              track_id=a.track_id, global_id=a.global_id,
                              first_ts_ns=a.first_ts_ns, score=min(1.0, a.score),
                              reasons=a.reasons, thumbnail=a.thumbnail) for a in alerts]
        return alerts

    def _text_scorer_if_needed(self) -> None:
        """Build the text watches' scorer when the first text watch appears (it loads the
        attribute and pose models); a failure is logged, and tried again a minute later."""
        if self._make_text_scorer is None or self.watches.text_scorer is not None:
            return
        if time.monotonic() < self._scorer_retry_at or not any(
                w.kind == "text" for w in self.watches.store.all().values()):
            return
        try:
            self.watches.text_scorer = self._make_text_scorer()
        except Exception as err:  # missing models or extras: text watches wait, ids go on
            self._scorer_retry_at = time.monotonic() + 60.0
            log.error("text watches cannot be checked (tried again in 60 s): %s", err)

    def _publish(self, events: list[BaseEvent]) -> None:
        """Ids and alerts to the durable record; the tracks' vectors to Kafka only."""
        if self.record is not None and events:
            self.record.append([e for e in events if not isinstance(e, EmbeddingEvent)],
                               stream=[e for e in events if isinstance(e, EmbeddingEvent)])

    # --- answers and state ---------------------------------------------------------------------

    def global_ids(self, keys: Sequence[tuple[str, int]], model_id: str) -> dict[tuple[str, int],
                                                                            int]:
        linker = self.linker(model_id)
        return {k: g for k in keys if (g := linker.global_id(*k)) is not None}

    def stats(self) -> dict[str, object]:
        linkers = {m: {"tracklets": len(x.tracklets), "identities": len(x.members),
                       "retired": len(x.retired), "comparisons": x.comparisons}
                   for m, x in self._linkers.items()}
        return {**self.counts, "open_tracks": len(self._open), "watches":
                len(self.watches.store.all()), "link_seconds": round(self.link_seconds, 4),
                "linkers": linkers}

    def _save_due(self) -> None:
        if time.monotonic() - self._saved_at >= self.save_interval_s:
            self.save()

    def save(self) -> None:
        for model_id in sorted(self._dirty):
            path = state_path(self.cfg.data_dir, model_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, self._linkers[model_id].to_json().encode("utf-8"))
            self._stamp[model_id] = (_mtime(path), time.monotonic())
        self._dirty.clear()
        self._saved_at = time.monotonic()

    def close(self) -> None:
        self.save()


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _decode(jpeg: bytes) -> np.ndarray | None:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return image if image is not None and image.size else None


def referrer_text_scorer(cfg: RefindConfig) -> TextScorer:
    """Text watches' scorer: the composing referrer's calibrated probability that a tracklet
    (its crops, as views of one person) is the person described."""
    from refind.models.base import Region
    from refind.models.referring import ComposingReferrer
    from refind.models.store import ModelStore

    referrer = ComposingReferrer.from_store(ModelStore.from_config(cfg.models))

    def score(text: str, crops: Sequence[np.ndarray]) -> tuple[float, str]:
        h, w = crops[0].shape[:2]
        region = Region(crop=crops[0], xyxy=(0.0, 0.0, float(w), float(h)), frame_wh=(w, h),
                        views=tuple(crops[1:]))
        result = referrer(text, [region])
        return float(result.scores[0]), result.reasons[0]

    return score


