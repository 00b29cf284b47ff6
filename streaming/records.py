"""Typed records that flow between refind's stages.

camera -> Frame -> Detections -> Tracks -> Crop -> Embeddings -> gallery -> CropHit -> TrackletHit

Beside them: ``TrackSpan`` (when the tracker saw a track) and ``SearchFilter`` (which crops a
search may return).

Every record is a frozen dataclass validated when built; array columns carry their shape and
dtype in the docstring and units in their names (``ts_ns``, ``xyxy`` in pixels of the frame).
A stage returns a new record and never mutates its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from refind.streaming.motion import TrackMotion


def _as_boxes(xyxy: np.ndarray, name: str) -> np.ndarray:
    boxes = np.asarray(xyxy, dtype=np.float32)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}: xyxy must have shape (n, 4), got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{name}: xyxy contains NaN or inf")
    return boxes


def _column(values: np.ndarray, n: int, dtype: type, name: str, column: str) -> np.ndarray:
    col = np.asarray(values, dtype=dtype).reshape(-1)
    if col.shape[0] != n:
        raise ValueError(f"{name}: {column} has {col.shape[0]} rows, xyxy has {n}")
    return col


@dataclass(frozen=True)
class Frame:
    """One decoded video frame.

    image: (H, W, 3) uint8, BGR channel order (OpenCV's and the OpenVINO models' convention).
    index: 0-based position of the frame in its source; ts_ns: capture or presentation time;
    received_ns: wall-clock time the frame was decoded here (for freshness), 0 if unknown.

    Example:
        >>> Frame(camera="gate", index=0, ts_ns=0, image=np.zeros((4, 4, 3), np.uint8)).size_hw
        (4, 4)
    """

    camera: str
    index: int
    ts_ns: int
    image: np.ndarray
    received_ns: int = 0

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"Frame image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}"
            )
        if self.index < 0:
            raise ValueError(f"Frame index must be >= 0, got {self.index}")

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass(frozen=True)
class Detections:
    """Boxes found in one frame.

    xyxy: (n, 4) float32 pixels; confidence: (n,) float32 in [0, 1]; class_id: (n,) int32.

    Example:
        >>> d = Detections(xyxy=np.array([[0, 0, 10, 20]]), confidence=[0.9], class_id=[0])
        >>> len(d)
        1
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray

    def __post_init__(self) -> None:
        boxes = _as_boxes(self.xyxy, "Detections")
        n = boxes.shape[0]
        object.__setattr__(self, "xyxy", boxes)
        conf = _column(self.confidence, n, np.float32, "Detections", "confidence")
        object.__setattr__(self, "confidence", conf)
        object.__setattr__(
            self, "class_id", _column(self.class_id, n, np.int32, "Detections", "class_id")
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def select(self, mask: np.ndarray) -> Detections:
        """A new record with the rows where ``mask`` (bool (n,) or indices) is set."""
        return Detections(self.xyxy[mask], self.confidence[mask], self.class_id[mask])


@dataclass(frozen=True)
class Tracks:
    """Confirmed tracks visible in one frame of one camera.

    track_id: (n,) int64, unique per camera; xyxy: (n, 4) float32 pixels (the detection matched
    this frame, not the motion prediction); confidence: (n,) float32 of that detection.
    """

    camera: str
    frame_index: int
    ts_ns: int
    track_id: np.ndarray
    xyxy: np.ndarray
    confidence: np.ndarray

    def __post_init__(self) -> None:
        boxes = _as_boxes(self.xyxy, "Tracks")
        n = boxes.shape[0]
        object.__setattr__(self, "xyxy", boxes)
        object.__setattr__(self, "track_id", _column(self.track_id, n, np.int64, "Tracks", "track_id"))
        object.__setattr__(
            self, "confidence", _column(self.confidence, n, np.float32, "Tracks", "confidence")
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])


Box = tuple[float, float, float, float]
"""x1, y1, x2, y2 in pixels of the frame."""


@dataclass(frozen=True)
class TrackSpan:
    """When and where the tracker saw one track of one camera.

    first_ts_ns, last_ts_ns: the first and last frame the track was reported in; last_xyxy: its
    box in the last of them (zeros when unknown, as in spans read back from storage); frames:
    how many frames reported it (0 when unknown); motion: how it moved over the whole track
    (``refind.streaming.motion``; set when the track ends, None when unknown).

    Example:
        >>> TrackSpan("gate", 7, 1_000, 3_000).seconds
        2e-06
    """

    camera: str
    track_id: int
    first_ts_ns: int
    last_ts_ns: int
    last_xyxy: Box = (0.0, 0.0, 0.0, 0.0)
    frames: int = 0
    motion: TrackMotion | None = None

    def __post_init__(self) -> None:
        if self.last_ts_ns < self.first_ts_ns:
            raise ValueError(
                f"track {self.camera}/{self.track_id}: span ends ({self.last_ts_ns}) before it "
                f"starts ({self.first_ts_ns})"
            )

    @property
    def seconds(self) -> float:
        return (self.last_ts_ns - self.first_ts_ns) / 1e9

    def widened(self, other: TrackSpan) -> TrackSpan:
        """The span covering this one and ``other`` (the same track recorded twice, say): the
        later one's box, the larger frame count, the later known motion."""
        later = other if other.last_ts_ns >= self.last_ts_ns else self
        earlier = self if later is other else other
        return replace(
            later,
            first_ts_ns=min(self.first_ts_ns, other.first_ts_ns),
            last_ts_ns=max(self.last_ts_ns, other.last_ts_ns),
            frames=max(self.frames, other.frames),
            motion=later.motion if later.motion is not None else earlier.motion,
        )


@dataclass(frozen=True)
class Crop:
    """A chosen image of one track at one moment, with why it was chosen.

    image: (h, w, 3) uint8 BGR cut from the frame at ``xyxy``; quality: higher is better;
    jpeg: the crop as it will be stored, once encoded (``refind.streaming.crops.as_stored``); image is
    then that JPEG's decoded pixels, so a vector made from it is the vector a re-index or a
    rebuild makes from the stored crop. context: the downscaled frame with the box drawn
    (``refind.streaming.crops.CropSelector``), as pixels until ``as_stored`` encodes it as
    ``context_jpeg``.
    """

    camera: str
    track_id: int
    frame_index: int
    ts_ns: int
    xyxy: tuple[float, float, float, float]
    confidence: float
    quality: float
    image: np.ndarray = field(repr=False)
    jpeg: bytes = field(default=b"", repr=False)
    context: np.ndarray | None = field(default=None, repr=False)
    context_jpeg: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"Crop image must be (h, w, 3) uint8, got {self.image.shape}")
        if self.image.shape[0] == 0 or self.image.shape[1] == 0:
            raise ValueError(f"Crop of track {self.track_id} has zero size")


@dataclass(frozen=True)
class Embeddings:
    """L2-normalised vectors from one model.

    vectors: (n, d) float32, each row of unit length; model_id names the model and its weights,
    so that one index never mixes vectors of different models.
    """

    vectors: np.ndarray
    model_id: str

    def __post_init__(self) -> None:
        vec = np.asarray(self.vectors, dtype=np.float32)
        if vec.ndim != 2:
            raise ValueError(f"Embeddings must be (n, d), got {vec.shape}")
        if not np.isfinite(vec).all():
            raise ValueError(f"Embeddings from {self.model_id} contain NaN or inf")
        if not self.model_id:
            raise ValueError("Embeddings need a model_id")
        object.__setattr__(self, "vectors", vec)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclass(frozen=True)
class CropRecord:
    """Metadata stored beside one gallery vector (what the vector came from)."""

    vector_id: int
    camera: str
    track_id: int
    frame_index: int
    ts_ns: int
    xyxy: tuple[float, float, float, float]
    confidence: float
    quality: float
    crop_path: str
    model_id: str


@dataclass(frozen=True)
class CropHit:
    """One gallery crop found by a search, with its cosine similarity to the query."""

    record: CropRecord
    score: float


@dataclass(frozen=True)
class SearchFilter:
    """Which crops a search may return.

    cameras: only these (all when empty); start_ts_ns / end_ts_ns: crop times within this
    window (either end open when None); min_track_s: only crops of tracks seen at least this
    long.

    Example:
        >>> SearchFilter(cameras=("gate",), min_track_s=2.0).min_track_ns
        2000000000
        >>> SearchFilter().narrows
        False
    """

    cameras: tuple[str, ...] = ()
    start_ts_ns: int | None = None
    end_ts_ns: int | None = None
    min_track_s: float | None = None

    def __post_init__(self) -> None:
        if self.min_track_s is not None and self.min_track_s < 0:
            raise ValueError(f"min_track_s must be >= 0, got {self.min_track_s}")
        if (self.start_ts_ns is not None and self.end_ts_ns is not None
                and self.start_ts_ns > self.end_ts_ns):
            raise ValueError("time window is the wrong way round: start is after end")
        object.__setattr__(self, "cameras", tuple(self.cameras))

    @property
    def min_track_ns(self) -> int | None:
        """The minimum track length in ns; None when there is none (0 counts as none)."""
        return int(self.min_track_s * 1e9) if self.min_track_s else None

    @property
    def narrows(self) -> bool:
        """True when the filter leaves out any crop at all."""
        return bool(self.cameras or self.start_ts_ns is not None or self.end_ts_ns is not None
                    or self.min_track_ns)


NO_FILTER = SearchFilter()

# Crop times below this count from the start of a clip ingested without --start-time, not from
# 1970: they have no date (a time in 1971 or later is a clock time).
CLIP_TIME_NS = 366 * 86_400 * 10**9


def _check_filters(
    k: int, start_ts_ns: int | None, end_ts_ns: int | None, min_track_s: float | None
) -> None:
    """What ImageQuery and TextQuery share: k, the time window and the minimum track length."""
    if not 1 <= k <= 1000:
        raise ValueError(f"k must be in 1..1000, got {k}")
    SearchFilter((), start_ts_ns, end_ts_ns, min_track_s)  # raises on a bad window or length


@dataclass(frozen=True)
class ImageQuery:
    """Find tracklets that look like the person in ``image`` ((h, w, 3) uint8 BGR)."""

    image: np.ndarray = field(repr=False)
    k: int = 10
    cameras: tuple[str, ...] = ()
    start_ts_ns: int | None = None
    end_ts_ns: int | None = None
    min_track_s: float | None = None
    # An instruction for an instructable (IRM-style) embedder: text ("ignore clothes", "now
    # wearing a black jacket") or a garment photo ((h, w, 3) uint8 BGR); task overrides the
    # task the search would pick from the instruction (refind.models.base.TASKS).
    instruction: str | None = None
    instruction_image: np.ndarray | None = field(default=None, repr=False)
    task: str | None = None
    rerank: str | None = None  # None = search.image_rerank

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"query image must be (h, w, 3) uint8, got {self.image.shape}")
        if min(self.image.shape[:2]) < 2:
            raise ValueError(f"query image is too small: {self.image.shape[1]}x{self.image.shape[0]}")
        _check_filters(self.k, self.start_ts_ns, self.end_ts_ns, self.min_track_s)

    @property
    def filter(self) -> SearchFilter:
        return SearchFilter(self.cameras, self.start_ts_ns, self.end_ts_ns, self.min_track_s)


@dataclass(frozen=True)
class TextQuery:
    """Find tracklets of a described person ("woman, red top, backpack"), within filters.

    ``text`` is the description alone (``refind.indexer.query_plan`` takes the filters out of an
    operator's sentence); rerank None = search.rerank.
    """

    text: str
    k: int = 10
    cameras: tuple[str, ...] = ()
    start_ts_ns: int | None = None
    end_ts_ns: int | None = None
    min_track_s: float | None = None
    rerank: str | None = None

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("query text is empty: describe the person")
        _check_filters(self.k, self.start_ts_ns, self.end_ts_ns, self.min_track_s)

    @property
    def filter(self) -> SearchFilter:
        return SearchFilter(self.cameras, self.start_ts_ns, self.end_ts_ns, self.min_track_s)


@dataclass(frozen=True)
class TrackletHit:
    """One ranked answer: a track of one camera, how well it matches, and where to look."""

    camera: str
    track_id: int
    score: float
    start_ts_ns: int
    end_ts_ns: int
    n_crops: int
    best_frame_index: int
    best_xyxy: tuple[float, float, float, float]
    thumbnail: str
    reasons: tuple[str, ...] = ()  # why it ranks here, e.g. ("backpack 0.93", "red top")
    motion: TrackMotion | None = None  # how the track moved, when its span recorded it
    views: tuple[str, ...] = ()  # other crops of the track (paths, as thumbnail), for evidence
    part: dict[str, object] | None = None  # the part the text asked about (PartRegion.to_json)

    def to_json(self) -> dict[str, object]:
        return {
            "track_id": self.track_id,
            "camera": self.camera,
            "score": round(self.score, 6),
            "start_ts": self.start_ts_ns / 1e9,
            "end_ts": self.end_ts_ns / 1e9,
            "n_crops": self.n_crops,
            "best_frame_index": self.best_frame_index,
            "best_xyxy": [round(v, 1) for v in self.best_xyxy],
            "thumbnail": self.thumbnail,
            "reasons": list(self.reasons),
            "motion": self.motion.as_dict() if self.motion is not None else None,
            "part": self.part,
        }
