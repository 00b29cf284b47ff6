"""Small protocols every learned model of refind sits behind.

A model runner is a plain class: ``__init__`` loads, ``__call__`` runs one batch. Ray wrappers in
``actors/`` hold one of these; tests use them directly.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar, runtime_checkable

import cv2
import numpy as np

from refind.streaming.config import PlaceConfig
from refind.streaming.motion import TrackMotion
from refind.streaming.records import Detections, Embeddings

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Kept(Generic[K, V]):
    """Values by key, at most ``size`` of them (least recently used dropped first); a call
    computes the missing ones in one batch (encoded texts, what a model read from a crop).

    Example:
        >>> kept = Kept(size=2)
        >>> kept(["a", "b", "a"], lambda todo: [k.upper() for k in todo])
        ['A', 'B', 'A']
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: OrderedDict[K, V] = OrderedDict()

    def __call__(self, keys: Sequence[K], compute: Callable[[list[K]], Sequence[V]]) -> list[V]:
        """The values of ``keys``, ``compute`` running once on the missing ones (sorted)."""
        found = {k: self._kept[k] for k in set(keys) if k in self._kept}
        todo = sorted(set(keys) - found.keys())  # type: ignore[type-var]
        if todo:
            found.update(zip(todo, compute(todo), strict=True))
        for key, value in found.items():
            self._kept[key] = value
            self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
        return [found[k] for k in keys]

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        self._kept.clear()


def crop_key(crop: np.ndarray, salt: bytes = b"") -> bytes:
    """A 16-byte key of a crop's pixels (and ``salt``: the models that read them), by which
    what a model read from it is kept."""
    return hashlib.blake2b(crop.tobytes() + str(crop.shape).encode() + salt,
                           digest_size=16).digest()


class ModelUnavailable(RuntimeError):
    """A model this deployment has not set up (no local weights configured, an extra not
    installed): the request is fine, this server cannot answer it; the message names the
    setting that would."""


class ModelInputError(ValueError):
    """An input a model cannot take (wrong shape, dtype, empty); the message names it."""


@runtime_checkable
class Detector(Protocol):
    """Finds objects in a batch of BGR frames ((H, W, 3) uint8 each)."""

    model_id: str

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]: ...


@runtime_checkable
class ReidEmbedder(Protocol):
    """Maps person crops ((h, w, 3) uint8 BGR each) to unit vectors of one model."""

    model_id: str
    dim: int

    def __call__(self, crops: Sequence[np.ndarray]) -> Embeddings: ...


# The six query tasks of an instruction-editable (IRM-style) ReID model.
Task = Literal[
    "reid",  # a person photo, clothes as they are
    "clothes_change",  # a person photo + "ignore clothes": body, hair, build
    "clothes_template",  # a garment photo (optionally + a person photo): people wearing it
    "attribute_text",  # a person photo + attribute text ("now wearing a black jacket")
    "visible_infrared",  # an infrared / greyscale query against colour footage, or the reverse
    "text",  # text alone ("young man, white t-shirt, blue jeans, backpack")
]
# A model store name + this suffix names an INT8 copy of that network made on this machine by
# `refind quantize` (training/quantize.py; the store resolves it, refind.models.store.derived_dir).
INT8_SUFFIX = "-int8"


def model_id_for(name: str, sha256: str) -> str:
    """The ``model_id`` vectors of a weights file carry: its name, ``@``, 12 hex digits of its
    sha256 (one index never mixes two)."""
    return f"{name}@{sha256[:12]}"


def model_name(model_id: str) -> str:
    """The name in a ``model_id`` (what ``model_id_for`` put before the ``@``)."""
    return model_id.split("@", 1)[0]


TASKS: tuple[str, ...] = (
    "reid", "clothes_change", "clothes_template", "attribute_text", "visible_infrared", "text",
)


@runtime_checkable
class InstructableEmbedder(ReidEmbedder, Protocol):
    """A ReID embedder whose queries may carry an instruction (Instruct-ReID's IRM).

    ``__call__`` encodes gallery crops once, with no task; ``embed_query`` encodes a query for one
    task into the same space, so a task acts on the query side only.
    """

    def embed_query(
        self,
        crops: Sequence[np.ndarray],
        task: Task = "reid",
        instruction: str | np.ndarray | None = None,
    ) -> Embeddings:
        """(n,) query crops + one instruction (text, or a BGR image for clothes templates)."""
        ...

    def embed_text(self, texts: Sequence[str]) -> Embeddings:
        """Text-only queries (task "text") into the gallery space."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    """Maps sentences to unit vectors, (n, dim) float32."""

    model_id: str
    dim: int

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


ATTRIBUTE_NAMES: tuple[str, ...] = (
    "is_male", "has_bag", "has_backpack", "has_hat",
    "has_longsleeves", "has_longpants", "has_longhair", "has_coat_jacket",
)


@dataclass(frozen=True)
class PersonAttributes:
    """Attributes of n person crops.

    probs: (n, 8) float32 in [0, 1], columns in ``ATTRIBUTE_NAMES`` order; top_bgr, bottom_bgr:
    (n, 3) uint8 clothing colours sampled where the model points; top_colour, bottom_colour: the
    colour names of those samples (``refind.models.colours.COLOUR_NAMES``).
    """

    probs: np.ndarray
    top_bgr: np.ndarray
    bottom_bgr: np.ndarray
    top_colour: tuple[str, ...]
    bottom_colour: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def take(self, rows: np.ndarray | Sequence[int]) -> PersonAttributes:
        """The given rows (indices), in that order, as a new record."""
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        return PersonAttributes(
            self.probs[idx], self.top_bgr[idx], self.bottom_bgr[idx],
            tuple(self.top_colour[i] for i in idx), tuple(self.bottom_colour[i] for i in idx),
        )  # fmt: skip

    @staticmethod
    def concat(parts: Sequence[PersonAttributes]) -> PersonAttributes:
        """The rows of ``parts`` one after another (at least one part)."""
        return PersonAttributes(
            probs=np.concatenate([p.probs for p in parts]),
            top_bgr=np.concatenate([p.top_bgr for p in parts]),
            bottom_bgr=np.concatenate([p.bottom_bgr for p in parts]),
            top_colour=tuple(c for p in parts for c in p.top_colour),
            bottom_colour=tuple(c for p in parts for c in p.bottom_colour),
        )


@runtime_checkable
class AttributeModel(Protocol):
    """Person attributes and clothing colours for a batch of BGR crops."""

    model_id: str

    def __call__(self, crops: Sequence[np.ndarray]) -> PersonAttributes: ...


@dataclass(frozen=True)
class Region:
    """One candidate person for a re-ranker: its crop and where it stood in its frame.

    crop: (h, w, 3) uint8 BGR; xyxy: the box in frame pixels; frame_wh: the frame's size, so
    positions ("leftmost", "near the edge") can be judged; group: regions with the same group
    come from the same frame (relations such as "next to" hold only within a group); motion:
    how the person's track moves around that moment (None when unknown); views: other crops of
    the same tracklet, so evidence can be read over its time (position comes from ``xyxy``);
    places: the named places of its camera's view ("next to the lamp post").
    """

    crop: np.ndarray = field(repr=False)
    xyxy: tuple[float, float, float, float]
    frame_wh: tuple[int, int]
    group: int = 0
    motion: TrackMotion | None = None
    views: tuple[np.ndarray, ...] = field(default=(), repr=False)
    paths: tuple[str, ...] = ()  # where crop and views are stored, when they are
    places: tuple[PlaceConfig, ...] = ()  # the named places of the camera that saw it


@dataclass(frozen=True)
class RerankResult:
    """Scores for n regions against one expression.

    scores: (n,) float32 in [0, 1]; selected: (n,) bool, possibly all False (nobody matches) or
    several True; reasons: one short human-readable reason per region.
    """

    scores: np.ndarray
    selected: np.ndarray
    reasons: tuple[str, ...]
    parts: tuple[PartRegion | None, ...] = ()  # per region, when the text is about a part


@dataclass(frozen=True)
class PartRegion:
    """Where a part of a person is ("her trousers", "the red bag"), in frame pixels.

    part: top | bottom | shoes | hair | head; xyxy: its box; polygon: its outline ((k, 2) x, y
    points, from the person mask cut by the body's keypoints), empty when unknown.
    """

    part: str
    xyxy: tuple[float, float, float, float]
    polygon: tuple[tuple[float, float], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"part": self.part, "box": [round(v, 1) for v in self.xyxy],
                "polygon": [[round(x, 1), round(y, 1)] for x, y in self.polygon]}


@runtime_checkable
class Reranker(Protocol):
    """Scores candidate people against a referring expression (RexSeek-style)."""

    name: str

    def __call__(self, expression: str, regions: Sequence[Region]) -> RerankResult: ...


def check_bgr_image(image: np.ndarray, what: str) -> None:
    """Raise ModelInputError unless ``image`` is a non-empty (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray):
        raise ModelInputError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ModelInputError(f"{what} must be (H, W, 3) uint8 BGR, got {image.shape} {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ModelInputError(f"{what} has zero size: {image.shape[1]}x{image.shape[0]}")


PARALLEL_RESIZE_MIN = 64  # crops: smaller batches resize on the calling thread
PARALLEL_RESIZE_THREADS = 8  # at most, by default; an embedder's resize_threads sets it
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max ..."
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (pid, workers) -> resize pool
_pools_lock = threading.Lock()


@functools.cache
def usable_cpus() -> int:
    """CPUs this process may use: its affinity set, capped by a cgroup v2 CPU quota (a
    container's ``--cpus``). Read once per process (a fork inherits both)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus or 1, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable: the affinity set
    return max(1, cpus or 1)


def resize_workers(setting: int = 0) -> int:
    """Threads that resize a big batch: ``setting`` when above 0 (an embedder's
    ``resize_threads``), else the usable CPUs, at most ``PARALLEL_RESIZE_THREADS``."""
    if setting < 0:
        raise ModelInputError(f"resize_threads must be >= 0, got {setting}")
    return setting or min(PARALLEL_RESIZE_THREADS, usable_cpus())


def _resize_pool(workers: int) -> ThreadPoolExecutor:
    """This process's pool of ``workers`` resize threads (cv2 releases the GIL). Keyed by
    process id too: a forked child makes its own, its parent's threads are not in it."""
    key = (os.getpid(), workers)
    with _pools_lock:  # first big batches of several threads at once: still one pool
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(workers, thread_name_prefix="resize")
        return _pools[key]


def crops_to_batch(
    crops: Sequence[np.ndarray], hw: tuple[int, int], what: str, offset: int = 0,
    resize_threads: int = 0,
) -> np.ndarray:
    """Person crops -> (B, 3, h, w) float32 BGR 0-255, the input of the OMZ crop models.

    Each crop is checked (``check_bgr_image``, at least 2x2 px) and named ``f"{what} {offset + i}"``
    in errors, before any is resized. Batches of ``PARALLEL_RESIZE_MIN`` crops or more are
    resized on a thread pool (``resize_workers(resize_threads)`` threads), with the same pixels: on an H100, resizing on one CPU thread held
    0277 to 3,300 crops/s end to end while the model ran 11,100.
    """
    h, w = hw
    for i, crop in enumerate(crops):
        name = f"{what} {offset + i}"
        check_bgr_image(crop, name)
        if min(crop.shape[:2]) < 2:
            raise ModelInputError(f"{name} is too small: {crop.shape[1]}x{crop.shape[0]}")
    batch = np.empty((len(crops), 3, h, w), np.float32)  # (B, 3, h, w)

    def fill(rows: Sequence[int]) -> None:
        for i in rows:
            resized = cv2.resize(crops[i], (w, h), interpolation=cv2.INTER_LINEAR)  # (h, w, 3)
            batch[i] = resized.transpose(2, 0, 1)

    workers = resize_workers(resize_threads) if len(crops) >= PARALLEL_RESIZE_MIN else 1
    if workers == 1:
        fill(range(len(crops)))
    else:
        parts = np.array_split(np.arange(len(crops)), workers)
        list(_resize_pool(workers).map(fill, parts))  # list(): a worker's error raises here
    return batch
