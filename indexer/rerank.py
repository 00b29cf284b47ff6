"""Re-ranking in search: check the best candidates against what the query text says, explain
each one, and say "nobody matches" when no candidate passes.

``rerank_hits`` applies any re-ranker (``refind.models.registry.build_reranker``: "attributes",
the default, is ``refind.models.attribute_verifier.AttributeVerifier``) to ranked tracklets: a
hit's score becomes ``(1 - weight) * retrieval + weight * rerank`` (the re-rank score alone when
there is no retrieval score, as in a text scan), only selected hits are kept, and when none is
selected the answer is empty with a message naming the best candidate and what it lacked.
``RerankerPool`` builds each re-ranker, and the text probe, once.

Example:
    >>> pool = RerankerPool(store)                                             # doctest: +SKIP
    >>> rerank_hits(pool.get("attributes"), "woman in a red top", hits, crops).hits  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from refind.indexer.blobs import CropStore, CropStoreError
from refind.models.attribute_verifier import MISS
from refind.models.base import (
    INT8_SUFFIX,
    Region,
    Reranker,
    model_name,
)
from refind.models.registry import build_reranker
from refind.streaming.config import PlaceConfig
from refind.streaming.records import TrackletHit

if TYPE_CHECKING:  # torch comes with it: imported only when a probe is used
    from refind.models.attribute_probe import AttributeProbe

log = logging.getLogger(__name__)

class RerankerPool:
    """Query-time models built on first use and kept, each loaded once: the re-rankers, and the
    text probe a plain gallery is searched through when it is too large to scan."""

    def __init__(
        self, store: object, threshold: float = 0.6, mllm_dir: Path | None = None,
        evidence: object | None = None,
    ) -> None:
        self.store = store
        self.threshold = threshold
        self.mllm_dir = mllm_dir
        self.evidence = evidence  # crop evidence on disk, for the composing referrer
        self._built: dict[str, Reranker | None] = {}
        # a load failure is kept with its first traceback: raising the same exception again
        # would grow its traceback by a query's frames each time
        self._probes: dict[tuple[str, str], AttributeProbe | tuple[Exception, object] | None] = {}

    def get(self, name: str) -> Reranker | None:
        if name not in self._built:
            self._built[name] = build_reranker(name, self.store, self.threshold,
                                               self.mllm_dir, self.evidence)
        return self._built[name]

    def text_probe(self, weights: str | None, model_id: str) -> AttributeProbe | None:
        """The attribute probe of the IRM weights named ``weights`` (model store) as it reads a
        plain gallery of ``model_id`` (``refind.models.attribute_probe.teacher_probe``); None for no name, or when
        the weights' teacher is another model (then a plain gallery has no probe). A failure to
        load is kept and raised again, so weights are not read from disk on every query."""
        if weights is None:
            return None
        key = (weights, model_id)
        if key not in self._probes:
            try:
                self._probes[key] = _load_text_probe(self.store, weights, model_id)
            except Exception as err:
                self._probes[key] = (err, err.__traceback__)
        found = self._probes[key]
        if isinstance(found, tuple):
            err, tb = found
            raise err.with_traceback(tb)  # type: ignore[arg-type]
        return found


def _load_text_probe(store: object, weights: str, model_id: str) -> AttributeProbe | None:
    from refind.models.attribute_probe import teacher_probe

    probe, teacher = teacher_probe(store.resolve(weights).path)  # type: ignore[attr-defined]
    if model_name(model_id).removesuffix(INT8_SUFFIX) != teacher:
        log.info("text probe of %s reads %s vectors, not %s: text queries scan",
                 weights, teacher, model_id)  # fmt: skip
        return None
    return probe


@dataclass(frozen=True)
class Reranked:
    """Hits after re-ranking, best first; ``message`` says why there are none (or None)."""

    hits: list[TrackletHit]
    message: str | None = None
    dropped: int = 0
    ranking: tuple[TrackletHit, ...] = ()  # every candidate scored, best first, selected or not
    best: TrackletHit | None = None  # with no hits: the candidate the message names


def _regions(hits: Sequence[TrackletHit], crops: CropStore,
             places: Mapping[str, tuple[PlaceConfig, ...]] | None = None,
             ) -> tuple[list[Region], list[int]]:
    """Regions of the hits whose crop can be read, with their cameras' named ``places``, and
    their positions in ``hits``."""
    # The gallery keeps boxes, not frame sizes: a camera's frame is at least as large as the
    # union of its candidates' boxes, which is what position cues are judged against.
    extent: dict[str, tuple[float, float]] = {}
    for h in hits:
        w, ht = extent.get(h.camera, (1.0, 1.0))
        extent[h.camera] = (max(w, h.best_xyxy[2]), max(ht, h.best_xyxy[3]))
    groups: dict[tuple[str, int], int] = {}
    regions, kept = [], []
    for i, h in enumerate(hits):
        try:
            image = crops.read(h.thumbnail)
        except CropStoreError as err:  # removed by retention or forget since the search
            log.warning("re-rank skips %s track %d: %s", h.camera, h.track_id, err)
            continue
        views, paths = [], [h.thumbnail]
        for path in h.views:  # other crops of the tracklet: evidence over its time
            try:
                views.append(crops.read(path))
                paths.append(path)
            except CropStoreError:
                continue
        w, ht = extent[h.camera]
        # the track's motion knows its frame's size when it was stored with it
        frame_wh = h.motion.frame_wh if h.motion is not None and h.motion.frame_wh else (
            math.ceil(w), math.ceil(ht))
        group = groups.setdefault((h.camera, h.best_frame_index), len(groups))
        regions.append(Region(crop=image, xyxy=h.best_xyxy, frame_wh=frame_wh, group=group,
                              motion=h.motion, views=tuple(views), paths=tuple(paths),
                              places=(places or {}).get(h.camera, ())))
        kept.append(i)
    return regions, kept


def rerank_hits(
    reranker: Reranker,
    expression: str,
    hits: Sequence[TrackletHit],
    crops: CropStore,
    *,
    weight: float,
    with_retrieval: bool,
    places: Mapping[str, tuple[PlaceConfig, ...]] | None = None,
) -> Reranked:
    """Re-score ``hits`` with ``reranker`` against ``expression``; keep the selected ones.

    With ``with_retrieval`` a hit's score is ``(1 - weight) * retrieval + weight * rerank``
    (retrieval clipped to [0, 1]); without, the re-rank score alone.
    """
    if not hits:
        return Reranked([])
    regions, kept = _regions(hits, crops, places)
    if not regions:
        return Reranked([], "no candidate crop could be read for re-ranking", len(hits))
    result = reranker(expression, regions)
    if len(result.scores) != len(regions) or len(result.reasons) != len(regions):
        raise RuntimeError(f"re-ranker {reranker.name} answered {len(result.scores)} scores for "
                           f"{len(regions)} regions")
    scored = []
    for j, i in enumerate(kept):
        hit, rr = hits[i], float(result.scores[j])
        if with_retrieval:
            score = (1.0 - weight) * min(max(hit.score, 0.0), 1.0) + weight * rr
            why = (f"appearance {hit.score:.2f}", f"{reranker.name} {rr:.2f}: {result.reasons[j]}")
        else:
            score, why = rr, (f"{reranker.name} {rr:.2f}: {result.reasons[j]}",)
        part = result.parts[j] if j < len(result.parts) else None
        scored.append((bool(result.selected[j]),
                       replace(hit, score=score, reasons=why,
                               part=part.to_json() if part is not None else None), rr, j))
    scored.sort(key=lambda s: s[1].score, reverse=True)
    ranking = tuple(h for _, h, _, _ in scored)
    selected = [h for ok, h, _, _ in scored if ok]
    if selected:
        return Reranked(selected, dropped=len(hits) - len(selected), ranking=ranking)
    _, best, rr, j = max(scored, key=lambda s: s[2])
    reason = result.reasons[j]
    parts = re.split(r",\s(?![^()]*\))", reason)  # commas outside parentheses
    lacked = [t.replace(f" {MISS}", "") for t in parts if MISS in t]
    had = [t for t in parts if MISS not in t]
    what = f"was too weak a match: {reason}"
    if lacked:
        what = f"lacked {', '.join(lacked)}" + (f" (had {', '.join(had)})" if had else "")
    message = (f"no tracklet matches {expression!r}: the best candidate, {best.camera} track "
               f"{best.track_id} ({reranker.name} score {rr:.2f}), {what}")
    return Reranked([], message, len(hits), ranking, best=best)
