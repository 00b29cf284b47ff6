"""Watchlists: standing queries checked against every new or updated tracklet, live.

A ``Watch`` is a photo (its ReID vector, with the instruction it was embedded with, and the
model's ``model_id``) or a text (read by the composing referrer), with a threshold and
optionally the cameras it covers. ``WatchStore`` keeps each watch as one JSON file under
``<data_dir>/watches/``, written atomically: watches survive restarts and gallery rebuilds, a
name is never silently replaced, and only ``remove`` deletes one.

**One number, one meaning.** A watch's score is the probability that the tracklet is the
person watched, however the watch was made:

- a text watch's score is the composing referrer's calibrated probability that a candidate is
  the target (``refind.models.referring.CALIBRATION``, fitted by ``refind eval refer
  --calibrate``);
- a photo watch's score is Platt scaling of the cosine between the watch's vector and the
  tracklet's mean vector, ``sigmoid(a * logit((cos + 1) / 2) + b)``, fitted per ReID model on
  same-person and other-person tracklet pairs (``PHOTO_CALIBRATION``, fitted by ``refind eval
  watch --calibrate``).

So ``--threshold 0.9`` asks for the same confidence from a photo watch and a text watch.

``WatchMatcher.check`` scores one tracklet against every watch and raises at most one
``Alert`` per tracklet per watch; a tracklet of a global id already alerted in that camera
does not alert again, a new camera or a new global id does.

Example:
    >>> store = WatchStore(Path(tmp) / "watches")                          # doctest: +SKIP
    >>> store.add(photo_watch("gate-visitor", vector, model_id, threshold=0.9))  # doctest: +SKIP
    >>> WatchMatcher(store).check(view)                                     # doctest: +SKIP
    [Alert(watch='gate-visitor', camera='gate', track_id=7, score=0.97, ...)]
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from refind.indexer.gallery_store import atomic_write
from refind.streaming.config import NAME_PATTERN

log = logging.getLogger(__name__)

PHOTO_CALIBRATION: dict[str, tuple[float, float]] = {
    # model name (model_id before "@") -> Platt (a, b); refind eval watch --calibrate
    "person-reidentification-retail-0277": (3.5535, -6.7853),  # PETS left/right, even ids
}
DEFAULT_THRESHOLD = 0.9
MAX_WATCHES = 1000
REMEMBERED = 200_000  # tracklets and identities remembered as alerted (memory stays bounded)


class WatchError(ValueError):
    """A watch that cannot be made, found or kept; the message says what to do."""


class WatchExists(WatchError):
    """A watch of that name exists already (it is never replaced)."""


class Watch(BaseModel):
    """One standing query (see the module docstring); stored as JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=NAME_PATTERN)
    kind: Literal["photo", "text"]
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0.0, lt=1.0)
    cameras: tuple[str, ...] = ()
    text: str | None = Field(None, max_length=500)
    instruction: str | None = Field(None, max_length=500)
    vector: tuple[float, ...] | None = None
    model_id: str | None = None
    more_vectors: dict[str, tuple[float, ...]] = Field(
        default_factory=dict, description="The photo embedded by other ReID models (model_id "
        "-> vector), added by `refind reindex`, so the watch goes on matching after a switch.")
    created_ns: int = 0
    created_by: str = ""

    @field_validator("cameras")
    @classmethod
    def _camera_names(cls, cameras: tuple[str, ...]) -> tuple[str, ...]:
        for c in cameras:
            if not re.fullmatch(NAME_PATTERN, c):
                raise ValueError(f"camera {c!r}: names are 1-64 of A-Z a-z 0-9 _ . -")
        return cameras

    def model_post_init(self, _: object) -> None:
        if self.kind == "photo" and (self.vector is None or not self.model_id):
            raise ValueError(f"photo watch {self.name!r} needs a vector and its model_id")
        if self.kind == "text" and not (self.text and self.text.strip()):
            raise ValueError(f"text watch {self.name!r} needs a text")

    def covers(self, camera: str) -> bool:
        return not self.cameras or camera in self.cameras

    def vector_for(self, model_id: str) -> np.ndarray | None:
        """The photo's (d,) vector under ``model_id``, when it has one."""
        if model_id == self.model_id and self.vector is not None:
            return np.asarray(self.vector, np.float32)
        found = self.more_vectors.get(model_id)
        return None if found is None else np.asarray(found, np.float32)


def photo_watch(name: str, vector: np.ndarray, model_id: str, threshold: float = DEFAULT_THRESHOLD,
                cameras: Sequence[str] = (), instruction: str | None = None,
                created_by: str = "") -> Watch:
    """A photo watch from its query vector ((d,) or (1, d), unit length)."""
    vec = np.asarray(vector, np.float32).reshape(-1)
    vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
    return _watch(name=name, kind="photo", threshold=threshold, cameras=tuple(cameras),
                  instruction=instruction, vector=tuple(round(float(x), 6) for x in vec),
                  model_id=model_id, created_ns=time.time_ns(), created_by=created_by)


def text_watch(name: str, text: str, threshold: float = DEFAULT_THRESHOLD,
               cameras: Sequence[str] = (), created_by: str = "") -> Watch:
    return _watch(name=name, kind="text", threshold=threshold, cameras=tuple(cameras),
                  text=text.strip(), created_ns=time.time_ns(), created_by=created_by)


def _watch(**fields: object) -> Watch:
    """A Watch, or WatchError naming each bad field in one line."""
    try:
        return Watch(**fields)  # type: ignore[arg-type]
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'watch'}: {e['msg']}"
                             for e in err.errors(include_url=False))
        raise WatchError(f"watch {fields.get('name')!r}: {problems}") from None


class WatchStore:
    """Watches as JSON files in one folder; re-read when the folder changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._seen: tuple[int, int] | None = None
        self._watches: dict[str, Watch] = {}

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> WatchStore:
        return cls(Path(data_dir) / "watches")

    def _path(self, name: str) -> Path:
        if not re.fullmatch(NAME_PATTERN, name):
            raise WatchError(f"watch name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        return self.folder / f"{name}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer of the folder at a time, across processes (the API, the CLI, reindex)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file closes
            yield
        self._seen = None

    def add(self, watch: Watch, photo_jpeg: bytes | None = None) -> Watch:
        """Store a new watch (and its photo, kept so that a new ReID model can re-embed it);
        a name in use is refused (remove the old one first)."""
        path = self._path(watch.name)
        with self._locked():
            if path.exists():
                raise WatchExists(f"a watch named {watch.name!r} exists; remove it first "
                                  f"(refind watch remove {watch.name}) or choose another name")
            if len(self.all()) >= MAX_WATCHES:
                raise WatchError(f"{MAX_WATCHES} watches exist; remove some before adding more")
            if photo_jpeg:  # the photo first: a watch file always has its photo beside it
                atomic_write(path.with_suffix(".jpg"), photo_jpeg)
            atomic_write(path, watch.model_dump_json().encode("utf-8"))
        return watch

    def add_vector(self, name: str, model_id: str, vector: np.ndarray) -> Watch | None:
        """Keep ``name``'s photo as embedded by another model (``refind reindex``); the file is
        replaced atomically with everything else in it unchanged. None when the watch was
        removed meanwhile (it is not brought back)."""
        vec = np.asarray(vector, np.float32).reshape(-1)
        vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        with self._locked():
            self._seen = None
            watch = self.all().get(name)
            if watch is None:
                return None
            updated = watch.model_copy(update={"more_vectors": watch.more_vectors | {
                model_id: tuple(round(float(x), 6) for x in vec)}})
            atomic_write(self._path(name), updated.model_dump_json().encode("utf-8"))
        return updated

    def remove(self, name: str) -> Watch:
        path = self._path(name)
        with self._locked():
            self._seen = None
            watch = self.get(name)
            path.unlink()
            path.with_suffix(".jpg").unlink(missing_ok=True)
        return watch

    def photo(self, name: str) -> bytes | None:
        """The photo a watch was made from (JPEG), when it has one."""
        path = self._path(name).with_suffix(".jpg")
        return path.read_bytes() if path.is_file() else None

    def get(self, name: str) -> Watch:
        found = self.all().get(name)
        if found is None:
            raise WatchError(f"no watch named {name!r}; `refind watch list` shows them")
        return found

    def all(self) -> dict[str, Watch]:
        """Every watch by name (re-read when a file was added or removed)."""
        try:
            stat = self.folder.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, len(os.listdir(self.folder)))
        if stamp != self._seen:
            watches = {}
            for path in sorted(self.folder.glob("*.json")):
                try:
                    w = Watch.model_validate_json(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as err:
                    log.error("watch file %s is unreadable and is skipped: %s", path, err)
                    continue
                watches[w.name] = w
            self._watches, self._seen = watches, stamp
        return dict(self._watches)


def photo_probability(cosine: np.ndarray | float, model_id: str,
                      more: Mapping[str, tuple[float, float]] | None = None) -> np.ndarray:
    """P(same person) of ReID cosines under ``model_id``'s Platt scaling (``more``:
    ``identities.photo_calibration``, by model name)."""
    name = model_id.split("@")[0]
    ab = (more or {}).get(name) or PHOTO_CALIBRATION.get(name)
    if ab is None:
        raise WatchError(f"photo watches have no calibration for model {model_id}: run "
                         "`refind eval watch --calibrate --config CAMERAS.yaml --gt ...` on "
                         f"footage with ground truth and set identities.photo_calibration "
                         f"{{{name}: [a, b]}}")
    s = np.clip((np.asarray(cosine, np.float64) + 1.0) / 2.0, 1e-4, 1 - 1e-4)
    return 1.0 / (1.0 + np.exp(-(ab[0] * np.log(s / (1 - s)) + ab[1])))


@dataclass(frozen=True)
class TrackletView:
    """What the matcher sees of a tracklet: its mean vector (of ``model_id``), its crops'
    pixels (for text watches; may be empty) and where its best crop is stored."""

    camera: str
    track_id: int
    ts_ns: int
    first_ts_ns: int
    vector: np.ndarray = field(repr=False)
    model_id: str
    global_id: int | None = None
    crops: tuple[np.ndarray, ...] = field(default=(), repr=False)
    thumbnail: str | None = None


@dataclass(frozen=True)
class Alert:
    """A watch matched a tracklet: the record behind the ``refind.alerts`` topic."""

    watch: str
    camera: str
    track_id: int
    global_id: int | None
    ts_ns: int
    first_ts_ns: int
    score: float
    reasons: tuple[str, ...]
    thumbnail: str | None = None


TextScorer = Callable[[str, Sequence[np.ndarray]], tuple[float, str]]
"""(text, a tracklet's crops) -> (probability it is the person described, why)."""


class WatchMatcher:
    """Scores tracklets against every watch of a store and decides which alert (see the
    module docstring). ``text_scorer`` is needed only for text watches (built lazily by the
    caller: it loads the attribute and pose models)."""

    def __init__(self, store: WatchStore, text_scorer: TextScorer | None = None,
                 calibration: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.store = store
        self.text_scorer = text_scorer
        self.calibration = dict(calibration or {})
        # what alerted already, the oldest forgotten first past REMEMBERED: (watch, camera,
        # track id) and (watch, camera, model, global id), as ids are per model
        self._alerted: OrderedDict[tuple, None] = OrderedDict()
        self._warned: set[tuple[str, str]] = set()
        self.checked = 0

    def score(self, watch: Watch, view: TrackletView) -> tuple[float, str]:
        if watch.kind == "photo":
            mine = watch.vector_for(view.model_id)
            if mine is None:
                if (watch.name, view.model_id) not in self._warned:
                    self._warned.add((watch.name, view.model_id))
                    log.warning("photo watch %r has no vector for model %s (made with %s): "
                                "refind reindex adds it, or add the watch again", watch.name,
                                view.model_id, watch.model_id)
                return 0.0, f"watch made with {watch.model_id}, tracklet of {view.model_id}"
            cos = float(mine @ view.vector)
            try:
                p = float(photo_probability(cos, view.model_id, self.calibration))
            except WatchError as err:
                if (watch.name, view.model_id) not in self._warned:
                    self._warned.add((watch.name, view.model_id))
                    log.error("photo watch %r cannot be scored: %s", watch.name, err)
                return 0.0, str(err)
            return p, f"looks alike (cosine {cos:.2f})"
        if self.text_scorer is None or not view.crops:
            return 0.0, "text watches need the tracklet's crops and the referrer"
        try:
            return self.text_scorer(watch.text or "", view.crops)
        except Exception as err:  # a model that failed on these crops: logged, no alert
            log.error("text watch %r could not score %s/%d: %s", watch.name, view.camera,
                      view.track_id, err)
            return 0.0, f"not scored: {err}"

    def check(self, view: TrackletView, skip: Set[str] = frozenset()) -> list[Alert]:
        """Alerts of ``view`` (none for a tracklet or identity already alerted here; none of
        the watches named in ``skip``)."""
        out = []
        for watch in self.store.all().values():
            keys = [(watch.name, view.camera, view.track_id)]
            if view.global_id is not None:
                keys.append((watch.name, view.camera, view.model_id, view.global_id))
            if (watch.name in skip or not watch.covers(view.camera)
                    or any(k in self._alerted for k in keys)):
                continue
            self.checked += 1
            score, why = self.score(watch, view)
            if score < watch.threshold:
                continue
            for k in keys:
                self._alerted[k] = None
            while len(self._alerted) > REMEMBERED:
                self._alerted.popitem(last=False)
            out.append(Alert(watch.name, view.camera, view.track_id, view.global_id,
                             view.ts_ns, view.first_ts_ns, score,
                             (f"{watch.kind} watch", why, f"p {score:.2f} >= {watch.threshold}"),
                             view.thumbnail))
        return out


PhotoEmbed = Callable[[np.ndarray, str | None], tuple[np.ndarray, str]]
"""(a photo's BGR pixels, its instruction) -> ((1, d) or (d,) vector, model_id)."""


def reembed_watches(store: WatchStore, embed: PhotoEmbed) -> int:
    """Give every photo watch a vector from ``embed``'s model (``refind reindex``, for the new
    model), from the photo it was made from; returns how many were added."""
    import cv2

    added = 0
    for watch in store.all().values():
        jpeg = store.photo(watch.name) if watch.kind == "photo" else None
        if jpeg is None:
            continue
        photo = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if photo is None:
            log.error("the photo of watch %r is unreadable; it is not re-embedded", watch.name)
            continue
        vector, model_id = embed(photo, watch.instruction)
        if watch.vector_for(model_id) is None and store.add_vector(watch.name, model_id,
                                                                   vector) is not None:
            added += 1
    return added
