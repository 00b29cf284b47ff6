"""Image and text search: embed the query, search crops, aggregate crop hits into ranked
tracklets, optionally re-rank the best ones against the query's words (``refind.indexer.rerank``).

Filters (cameras, time window, minimum track length) are applied inside the FAISS search, so a
narrow filter still returns k tracklets when they exist, at any gallery size.

Text and instructions: with an instructable (IRM-style) embedder, text is embedded by
``embed_text`` and an image plus instruction by ``embed_query`` with a task read from the
instruction (``choose_task``). A plain ReID model cannot embed text, so a text query takes the
"first text path": the ``search.text_scan_tracks`` most recent tracks within the filters, each
scored on its best crop by the re-ranker (the attribute verifier unless another is chosen). When
more tracks than that are within the filters and ``search.text_probe`` names IRM weights whose
attribute probe reads this gallery's model, the whole gallery is searched through the probe's
query vector instead and its best tracks re-ranked; otherwise the answer says the scan was
bounded. An instruction on a plain model is a ``QueryError``.

Example:
    >>> engine = SearchEngine(cfg.search, embedder, gallery)                 # doctest: +SKIP
    >>> engine.search_image(ImageQuery(image=crop, k=5))[0].track_id          # doctest: +SKIP
    3
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from refind.indexer.blobs import CropStore
from refind.indexer.config import SearchConfig
from refind.indexer.metadata import TrackSummary
from refind.indexer.rerank import RerankerPool, rerank_hits
from refind.models.attribute_verifier import checkable
from refind.models.base import TASKS, InstructableEmbedder, ReidEmbedder
from refind.models.text_attributes import parse_attributes
from refind.streaming.config import PlaceConfig
from refind.streaming.records import CropHit, ImageQuery, SearchFilter, TextQuery, TrackletHit

if TYPE_CHECKING:  # the composing referrer (cv2, OpenVINO) is loaded only when chosen
    from refind.models.referring import ComposingReferrer

log = logging.getLogger(__name__)

MAX_QUERY_IMAGE_BYTES = 20 * 1024 * 1024
MAX_QUERY_IMAGE_SIDE = 8192


class QueryError(ValueError):
    """A query that cannot be run (bad image, bad filters); the message says what is wrong."""


def decode_query_image(data: bytes, what: str = "query image") -> np.ndarray:
    """Decode JPEG/PNG/BMP/WebP bytes into (h, w, 3) uint8 BGR, or raise QueryError."""
    if not data:
        raise QueryError(f"{what} is empty")
    if len(data) > MAX_QUERY_IMAGE_BYTES:
        raise QueryError(
            f"{what} is {len(data) / 1e6:.1f} MB; at most {MAX_QUERY_IMAGE_BYTES // 2**20} MiB"
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise QueryError(f"{what} is not an image (JPEG, PNG, BMP or WebP expected)")
    if max(image.shape[:2]) > MAX_QUERY_IMAGE_SIDE:
        raise QueryError(f"{what} is {image.shape[1]}x{image.shape[0]}; too large")
    return image


def read_query_image(path: str | Path) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise QueryError(f"query image not found: {p}")
    return decode_query_image(p.read_bytes(), f"query image {p}")


# Instruction wording -> IRM task, first match wins; any other instruction text is attribute_text.
_TASK_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("visible_infrared", re.compile(
        r"infra-?red|\bir\b|thermal|night[- ]?vision|gr[ae]y-?scale|black[- ]and[- ]white|"
        r"monochrome", re.I)),
    ("clothes_change", re.compile(
        r"ignor\w*\s+(?:the\s+|their\s+|his\s+|her\s+)?(?:cloth|outfit|dress)|"
        r"regardless\s+of\s+(?:the\s+|what\s+)?(?:cloth|wear|outfit)|"
        r"chang\w*\s+(?:\w+\s+)?(?:cloth|outfit)|different\s+(?:cloth|outfit)|"
        r"any\s+(?:cloth|outfit)|cloth\w*[- ]chang", re.I)),
)


class Gallery(Protocol):
    """What a search reads: one gallery shard (``GalleryStore``), several
    (``ShardedGallery``), or the live index writers (``refind.actors.supervisor``)."""

    model_id: str

    def search(self, query_vectors: np.ndarray, k_crops: int, filt: SearchFilter, /
               ) -> list[list[CropHit]]: ...

    def count_tracks(self, limit: int, filt: SearchFilter, /) -> int: ...

    def recent_track_keys(self, limit: int, filt: SearchFilter, /
                          ) -> list[tuple[int, str, int]]: ...

    def tracks(self, keys: Sequence[tuple[str, int]], /
               ) -> dict[tuple[str, int], TrackSummary]: ...


@dataclass(frozen=True)
class Ranked:
    """The answer to one query: hits best first, and what the operator should know.

    message: why there are no hits ("no tracklet matches ...") or that a text scan was bounded;
    reranker: the re-ranker applied ("none" if none); task: the embedder task used;
    scanned_tracks / scan_bounded: a text query on a plain ReID model scored that many tracks,
    and stopped at ``search.text_scan_tracks``; ranking: every candidate the re-ranker scored,
    best first, selected or not (what ``refind eval search`` ranks by; empty without one);
    understood: how the re-ranker read the words (terms, ignored words), when it says.
    """

    hits: list[TrackletHit]
    message: str | None = None
    reranker: str = "none"
    task: str | None = None
    scanned_tracks: int | None = None
    scan_bounded: bool = False
    ranking: tuple[TrackletHit, ...] = ()
    understood: dict[str, object] | None = None  # how the re-ranker read the words, if it says
    best: TrackletHit | None = None  # no hits: the nearest miss the message names


def choose_task(instruction: str | None, has_image: bool, task: str | None) -> str:
    """The IRM task of an image query: ``task`` if given, else read from the instruction."""
    if task is not None:
        if task not in TASKS or task == "text":
            valid = ", ".join(t for t in TASKS if t != "text")
            raise QueryError(f"unknown image query task {task!r}; valid: {valid}")
        return task
    if has_image:
        return "clothes_template"
    if not instruction or not instruction.strip():
        return "reid"
    for name, pattern in _TASK_WORDS:
        if pattern.search(instruction):
            return name
    return "attribute_text"


def embed_image_query(embedder: ReidEmbedder, query: ImageQuery) -> tuple[np.ndarray, str]:
    """(1, D) query vector of ``query`` and the task it was embedded for."""
    has_image = query.instruction_image is not None
    task = choose_task(query.instruction, has_image, query.task)
    if isinstance(embedder, InstructableEmbedder):
        instruction = query.instruction_image if has_image else query.instruction
        return embedder.embed_query([query.image], task, instruction or None).vectors, task
    if task != "reid" or has_image or (query.instruction and query.instruction.strip()):
        raise QueryError(
            f"model {embedder.model_id} does not take instructions (task {task}); configure "
            "embedder type irm (an instructable model) to search with an instruction"
        )
    return embedder([query.image]).vectors, task  # (1, D)


def photo_embed(embedder: ReidEmbedder) -> Callable[[np.ndarray, str | None],
                                                    tuple[np.ndarray, str]]:
    """(photo, instruction) -> (its (1, D) vector, model_id) with ``embedder``."""

    def embed(photo: np.ndarray, instruction: str | None) -> tuple[np.ndarray, str]:
        vector, _ = embed_image_query(embedder, ImageQuery(image=photo, instruction=instruction))
        return vector, embedder.model_id

    return embed


def _joined(message: str | None, note: str) -> str:
    """An answer's message with a note added."""
    return f"{message}; {note}" if message else note


def _hit(summary: TrackSummary) -> TrackletHit:
    best = summary.best
    return TrackletHit(
        camera=summary.camera, track_id=summary.track_id, score=0.0,
        start_ts_ns=summary.start_ts_ns, end_ts_ns=summary.end_ts_ns, n_crops=summary.n_crops,
        best_frame_index=best.frame_index, best_xyxy=best.xyxy, thumbnail=best.crop_path,
        motion=summary.motion, views=tuple(v.crop_path for v in summary.views),
    )


def _aggregate(scores: list[float], how: str) -> float:
    best = sorted(scores, reverse=True)
    if how == "max" or len(best) == 1:
        return best[0]
    return float(np.mean(best[:2]))


class SearchEngine:
    """Answers image queries against one gallery with one embedder (the gallery's model)."""

    def __init__(
        self,
        cfg: SearchConfig,
        embedder: ReidEmbedder,
        gallery: Gallery,
        crops: CropStore | None = None,
        rerankers: RerankerPool | None = None,
        places: Mapping[str, tuple[PlaceConfig, ...]] | None = None,
    ) -> None:
        if embedder.model_id != gallery.model_id:
            raise QueryError(
                f"embedder {embedder.model_id} cannot search a gallery of {gallery.model_id}"
            )
        self.cfg = cfg
        self.embedder = embedder
        self.gallery = gallery
        self.crops = crops  # re-rankers read candidates' crops from it
        self.rerankers = rerankers
        self.places = places or {}  # each camera's named places, for "next to the lamp post"

    def search_image(self, query: ImageQuery) -> list[TrackletHit]:
        return self.rank_image(query).hits

    def rank_image(self, query: ImageQuery) -> Ranked:
        """Rank tracklets like the person in ``query.image`` (with its instruction, if any)."""
        vector, task = embed_image_query(self.embedder, query)
        return self.rank_vector(vector, query, task)

    def search_vector(
        self, vector: np.ndarray, query: ImageQuery | TextQuery, k: int | None = None
    ) -> list[TrackletHit]:
        """The best ``k`` (default ``query.k``) tracklets for a query vector, in its filters."""
        k = query.k if k is None else k
        [hits] = self.gallery.search(vector, k * self.cfg.overfetch, query.filter)
        return self._tracklets(hits, k)

    def rank_vector(self, vector: np.ndarray, query: ImageQuery, task: str | None = None) -> Ranked:
        """Image search; re-ranked against the instruction's words when it has some and
        ``query.rerank`` (default ``search.image_rerank``) names a re-ranker."""
        name = query.rerank or self.cfg.image_rerank
        if name == "none" or not (query.instruction and query.instruction.strip()):
            return Ranked(self.search_vector(vector, query), task=task)
        return replace(self._retrieve_and_rerank(name, query.instruction, vector, query), task=task)

    def search_text(self, query: TextQuery) -> Ranked:
        """Rank tracklets of the person ``query.text`` describes (module docstring)."""
        name = query.rerank or self.cfg.rerank
        if isinstance(self.embedder, InstructableEmbedder):
            vector = self.embedder.embed_text([query.text]).vectors  # (1, D)
            if name == "none":
                return Ranked(self.search_vector(vector, query), task="text")
            return replace(self._retrieve_and_rerank(name, query.text, vector, query), task="text")
        name = "attributes" if name == "none" else name  # the only way to read the text here
        if name == "compose" and self.rerankers is not None:
            _check_composable(self.rerankers.get(name),  # type: ignore[arg-type]
                              query.text, self.embedder.model_id)
        if name == "attributes" and not checkable(parse_attributes(query.text)):
            raise QueryError(
                f"model {self.embedder.model_id} cannot embed text, and {query.text!r} names "
                "nothing the attribute model can check: name a top or bottom colour, a bag, "
                "backpack or hat, long or short hair or sleeves, a man or a woman (or configure "
                "embedder type irm)"
            )
        cap = self.cfg.text_scan_tracks
        bounded = self.gallery.count_tracks(cap + 1, query.filter) > cap  # a count, no reads
        if bounded and (by_probe := self._search_text_by_probe(name, query)) is not None:
            return by_probe
        keys = self.gallery.recent_track_keys(cap, query.filter)
        summaries = self.gallery.tracks([(camera, track) for _, camera, track in keys[:cap]])
        candidates = [_hit(summaries[(camera, track)]) for _, camera, track in keys[:cap]
                      if (camera, track) in summaries]
        ranked = self._rerank(name, query.text, candidates, query.k, False)
        message = ranked.message
        if not candidates:
            message = "no track has crops within the filters"
        if bounded:
            note = (f"scanned only the {cap} most recent tracks within the filters "
                    f"(search.text_scan_tracks, model {self.embedder.model_id} cannot embed "
                    "text): narrow the time window or cameras to reach older ones")
            message = _joined(message, note)
        return replace(ranked, message=message, scanned_tracks=len(candidates),
                       scan_bounded=bounded)

    def _search_text_by_probe(self, name: str, query: TextQuery) -> Ranked | None:
        """A plain gallery too large to scan: retrieve over all of it by the attribute probe's
        query vector (``search.text_probe``), re-rank the best. None when there is no probe for
        this gallery's model or the text names nothing it reads."""
        if self.rerankers is None:
            return None
        probe = self.rerankers.text_probe(self.cfg.text_probe, self.embedder.model_id)
        vector = None if probe is None else probe.query_vector(query.text)  # (D,) or None
        if vector is None:
            return None
        ranked = self._retrieve_and_rerank(name, query.text, vector[None], query)
        note = (f"more than {self.cfg.text_scan_tracks} tracks within the filters: searched all "
                f"of them through the attribute probe of {self.cfg.text_probe} "
                "(search.text_probe), then re-ranked the best")  # fmt: skip
        return replace(ranked, message=_joined(ranked.message, note), task="text")

    def _retrieve_and_rerank(
        self, name: str, text: str, vector: np.ndarray, query: ImageQuery | TextQuery
    ) -> Ranked:
        """The best ``search.rerank_top`` tracklets for (1, D) ``vector``, re-ranked by ``text``
        with the re-ranker ``name``; retrieval scores count (``search.rerank_weight``)."""
        hits = self.search_vector(vector, query, max(query.k, self.cfg.rerank_top))
        return self._rerank(name, text, hits, query.k, True)

    def _rerank(
        self, name: str, text: str, hits: list[TrackletHit], k: int, with_retrieval: bool
    ) -> Ranked:
        if self.rerankers is None or self.crops is None:
            raise QueryError(f"re-ranker {name!r} needs the crop store and the model store: "
                             "build the SearchEngine with crops= and rerankers=")
        reranker = self.rerankers.get(name)
        if reranker is None:
            return Ranked(hits[:k])
        done = rerank_hits(reranker, text, hits, self.crops, places=self.places,
                           weight=self.cfg.rerank_weight,
                           with_retrieval=with_retrieval)
        read = getattr(reranker, "read", None)  # a referrer that says how it read the words
        understood = read(text).as_dict() if callable(read) else None
        return Ranked(done.hits[:k], done.message, reranker.name, ranking=done.ranking,
                      understood=understood, best=done.best)

    def _tracklets(self, hits: list[CropHit], k: int | None = None) -> list[TrackletHit]:
        """The best ``k`` tracklets (all if None) of the crop hits, best first."""
        groups: dict[tuple[str, int], list[CropHit]] = defaultdict(list)
        for hit in hits:
            groups[(hit.record.camera, hit.record.track_id)].append(hit)
        ranked = sorted(
            ((_aggregate([h.score for h in m], self.cfg.aggregation), key, m)
             for key, m in groups.items()),
            key=lambda g: g[0], reverse=True,
        )
        out = []
        summaries = self.gallery.tracks([key for _, key, _ in ranked[:k]])  # the kept ones only
        for score, (camera, track_id), members in ranked[:k]:
            best_record = max(members, key=lambda h: h.score).record
            summary = summaries.get((camera, track_id))
            out.append(
                TrackletHit(
                    camera=camera,
                    track_id=track_id,
                    score=score,
                    start_ts_ns=summary.start_ts_ns if summary else best_record.ts_ns,
                    end_ts_ns=summary.end_ts_ns if summary else best_record.ts_ns,
                    n_crops=summary.n_crops if summary else len(members),
                    best_frame_index=best_record.frame_index,
                    best_xyxy=best_record.xyxy,
                    thumbnail=best_record.crop_path,
                    motion=summary.motion if summary else None,
                    views=tuple(v.crop_path for v in summary.views
                                if v.crop_path != best_record.crop_path) if summary else (),
                )
            )
        return out


def _check_composable(reranker: ComposingReferrer, text: str, model_id: str) -> None:
    """A plain gallery is read only through the composing referrer: refuse text in which it
    understands nothing at all, naming the words it could not read."""
    query = reranker.read(text)
    if not query.terms:
        unread = f" (not understood: {', '.join(query.ignored)})" if query.ignored else ""
        raise QueryError(
            f"model {model_id} cannot embed text, and {text!r} names nothing refind can check"
            f"{unread}: name clothing colours, a bag, backpack or hat, hair, a man or a woman, "
            "where the person is in the frame or how they move, or configure embedder type irm"
        )
