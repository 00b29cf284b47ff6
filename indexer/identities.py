"""Global person ids across cameras, kept online as tracklets arrive.

A tracklet (one track of one camera) is described by its mean ReID vector (the unit mean of
its stored crops' vectors) and its time span. ``IdentityLinker.observe`` takes each new or
updated tracklet and keeps every tracklet in exactly one identity (a global id):

1. **Feasible identities.** A tracklet may join an identity only if no member of it rules the
   tracklet out in space-time: one person is never in two tracklets of one camera at once, nor
   in two cameras at once (more than ``overlap_tolerance_s``) unless the two views overlap
   (``overlapping_views``); with a camera graph (``links``), the step from the member just
   before the tracklet, and the step to the member just after it, must each stay in one
   camera or follow a link within its travel times. Identities not seen for ``window_s`` are
   not candidates.
2. **Link.** Among feasible identities, the tracklet joins the one whose nearest member is
   most similar (cosine), if that is at least ``link_threshold``; else it starts a new one.
3. **Revise.** When an assigned tracklet is updated (more crops, or its end), it is checked
   again: if its identity has become infeasible for it, or it is now below
   ``split_threshold`` to every other member, it is **split** off and linked afresh. After
   every link its identity tries to **merge** with any feasible identity whose nearest
   tracklets are at least ``merge_threshold`` alike (the older id survives).

Every change is an ``IdentityChange`` (assigned, merged, split), the record behind the
``refind.identities`` topic. The whole state is a JSON document (``to_json`` / ``from_json``),
so an actor that restarts picks up where it was.

Example:
    >>> linker = IdentityLinker(IdentityConfig())
    >>> v = np.eye(4, dtype=np.float32)[0]
    >>> [c.kind for c in linker.observe(Tracklet("a", 1, 0, 10**9, v))]
    ['assigned']
    >>> linker.observe(Tracklet("b", 7, 3 * 10**9, 4 * 10**9, v))[0].global_id
    1
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from refind.indexer.config import IdentityConfig

TrackKey = tuple[str, int]
"""A tracklet's name: (camera, track id)."""

ChangeKind = Literal["assigned", "merged", "split"]


@dataclass(frozen=True)
class Tracklet:
    """What the linker knows of one tracklet at one moment.

    vector: (d,) float32, the unit mean of its crops' ReID vectors; first_ts_ns / last_ts_ns:
    the frames it was first and (so far) last seen in; crops: how many crops the vector
    averages; ended: the track has ended (its span is final).
    """

    camera: str
    track_id: int
    first_ts_ns: int
    last_ts_ns: int
    vector: np.ndarray = field(repr=False)
    crops: int = 1
    ended: bool = False

    def __post_init__(self) -> None:
        vec = np.asarray(self.vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(vec).all() or norm == 0.0:
            raise ValueError(f"tracklet {self.camera}/{self.track_id}: vector must be finite "
                             "and non-zero")
        if self.last_ts_ns < self.first_ts_ns:
            raise ValueError(f"tracklet {self.camera}/{self.track_id}: ends before it starts")
        object.__setattr__(self, "vector", vec / norm)

    @property
    def key(self) -> TrackKey:
        return self.camera, self.track_id


@dataclass(frozen=True)
class IdentityChange:
    """One change of the global ids: a tracklet ``assigned`` to ``global_id``; identity
    ``previous`` ``merged`` into ``global_id`` (every tracklet of it); a tracklet ``split`` off
    ``previous`` (followed by its new assignment). ``ts_ns`` is the tracklet's last seen time."""

    kind: ChangeKind
    global_id: int
    camera: str
    track_id: int
    ts_ns: int
    previous: int | None = None
    similarity: float | None = None


def mean_vector(vectors: np.ndarray) -> np.ndarray:
    """The unit mean of (n, d) unit vectors: a tracklet's vector from its crops'."""
    mean = np.asarray(vectors, np.float32).reshape(len(vectors), -1).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


class IdentityLinker:
    """Keeps every observed tracklet in one global identity (see the module docstring).

    Not thread-safe: one owner (the identity actor, or an offline loop) calls ``observe``.
    """

    def __init__(self, cfg: IdentityConfig, next_id: int = 1) -> None:
        self.cfg = cfg
        self.next_id = next_id
        self.tracklets: dict[TrackKey, Tracklet] = {}
        self.identity_of: dict[TrackKey, int] = {}
        self.members: dict[int, set[TrackKey]] = {}
        self.retired: dict[TrackKey, int] = {}  # tracklets of identities no longer linked to
        self._overlap = {frozenset(p) for p in cfg.overlapping_views}
        self._links: dict[frozenset[str], tuple[float, float]] = {
            frozenset((k.a, k.b)): (k.min_s, k.max_s) for k in cfg.links}
        self.comparisons = 0  # tracklet-to-tracklet similarity checks, for cost figures

    # --- the rule ------------------------------------------------------------------------

    def observe(self, tracklet: Tracklet) -> list[IdentityChange]:
        """Take a new or updated tracklet; returns what changed (empty: nothing did)."""
        key = tracklet.key
        self.tracklets[key] = tracklet
        changes: list[IdentityChange] = []
        current = self.identity_of.get(key)
        if current is None and key in self.retired:  # news of a retired one: linked afresh
            current = self.retired.pop(key)
            self.members.setdefault(current, set()).add(key)
            self.identity_of[key] = current
        if current is not None:
            if self._still_belongs(tracklet, current):
                return self._merge_around(current, tracklet)
            self._remove(key)
            changes.append(IdentityChange("split", current, *key, tracklet.last_ts_ns,
                                          previous=current))
        gid, sim = self._best_identity(tracklet)
        if gid is None:
            gid = self.next_id
            self.next_id += 1
            self.members[gid] = set()
        self.members[gid].add(key)
        self.identity_of[key] = gid
        changes.append(IdentityChange("assigned", gid, *key, tracklet.last_ts_ns,
                                      previous=current, similarity=sim))
        return changes + self._merge_around(gid, tracklet)

    def global_id(self, camera: str, track_id: int) -> int | None:
        key = (camera, track_id)
        return self.identity_of.get(key, self.retired.get(key))

    def prune(self, now_ns: int, keep: Set[TrackKey] = frozenset()) -> int:
        """Retire identities not seen for ``window_s`` before ``now_ns`` (none with a tracklet
        in ``keep``: tracks still open): their tracklets keep their global ids but drop their
        vectors and are no longer compared. Returns how many tracklets were retired."""
        horizon = now_ns - int(self.cfg.window_s * 1e9)
        old = [gid for gid, keys in self.members.items()
               if not keys & keep and all(self.tracklets[k].last_ts_ns < horizon for k in keys)]
        n = 0
        for gid in old:
            for key in self.members.pop(gid):
                self.retired[key] = gid
                del self.identity_of[key], self.tracklets[key]
                n += 1
        return n

    def _still_belongs(self, tracklet: Tracklet, gid: int) -> bool:
        others = [self.tracklets[k] for k in self.members[gid] if k != tracklet.key]
        if not others:
            return True
        if not self._feasible(tracklet, others):
            return False
        return self._similarity(tracklet, others) >= self.cfg.split_threshold

    def _best_identity(self, tracklet: Tracklet) -> tuple[int | None, float | None]:
        best, best_sim = None, None
        for gid in self._candidates(tracklet.first_ts_ns):
            members = [self.tracklets[k] for k in self.members[gid]]
            sim = self._similarity(tracklet, members)
            if sim < self.cfg.link_threshold or (best_sim is not None and sim <= best_sim):
                continue
            if self._feasible(tracklet, members):
                best, best_sim = gid, sim
        return best, best_sim

    def _merge_around(self, gid: int, cause: Tracklet) -> list[IdentityChange]:
        """Merge ``gid`` with every feasible identity alike enough, the older id surviving;
        each change names the tracklet whose news caused it."""
        changes: list[IdentityChange] = []
        while True:
            mine = [self.tracklets[k] for k in self.members[gid]]
            found = None
            for other in self._candidates(min(t.first_ts_ns for t in mine)):
                if other == gid:
                    continue
                theirs = [self.tracklets[k] for k in self.members[other]]
                sim = max(self._similarity(t, theirs) for t in mine)
                if sim >= self.cfg.merge_threshold and self._consistent([*mine, *theirs]):
                    found = (other, sim)
                    break
            if found is None:
                return changes
            other, sim = found
            keep, gone = min(gid, other), max(gid, other)
            for key in self.members.pop(gone):
                self.members[keep].add(key)
                self.identity_of[key] = keep
            changes.append(IdentityChange("merged", keep, *cause.key, cause.last_ts_ns,
                                          previous=gone, similarity=sim))
            gid = keep

    def _remove(self, key: TrackKey) -> None:
        gid = self.identity_of.pop(key)
        self.members[gid].discard(key)
        if not self.members[gid]:
            del self.members[gid]

    def _candidates(self, since_ns: int) -> Iterable[int]:
        """Identities seen within ``window_s`` of ``since_ns``."""
        horizon = since_ns - int(self.cfg.window_s * 1e9)
        for gid, keys in list(self.members.items()):
            if any(self.tracklets[k].last_ts_ns >= horizon for k in keys):
                yield gid

    # --- appearance and space-time ---------------------------------------------------------

    def _similarity(self, tracklet: Tracklet, members: list[Tracklet]) -> float:
        """Cosine of ``tracklet`` to its nearest member (itself left out)."""
        others = [m.vector for m in members if m.key != tracklet.key]
        if not others:
            return -1.0
        self.comparisons += len(others)
        return float(np.max(np.stack(others) @ tracklet.vector))

    def _feasible(self, tracklet: Tracklet, members: list[Tracklet]) -> bool:
        """Whether one person could be ``tracklet`` and every one of ``members``."""
        tol = int(self.cfg.overlap_tolerance_s * 1e9)
        before = after = None
        for m in members:
            if m.key == tracklet.key:
                continue
            overlap = (min(m.last_ts_ns, tracklet.last_ts_ns)
                       - max(m.first_ts_ns, tracklet.first_ts_ns))
            if overlap >= 0:
                if m.camera == tracklet.camera:
                    return False  # two tracks of one camera at once are two people
                if frozenset((m.camera, tracklet.camera)) not in self._overlap and overlap > tol:
                    return False
                continue
            if m.last_ts_ns < tracklet.first_ts_ns:
                if before is None or m.last_ts_ns > before.last_ts_ns:
                    before = m
            elif after is None or m.first_ts_ns < after.first_ts_ns:
                after = m
        if not self._links:
            return True
        return all(self._walkable(a, b) for a, b in ((before, tracklet), (tracklet, after))
                   if a is not None and b is not None)

    def _consistent(self, tracklets: list[Tracklet]) -> bool:
        """Whether one person could be all of ``tracklets``: no two at once where that is
        impossible, and every step between them in time walkable along the camera graph."""
        ordered = sorted(tracklets, key=lambda t: (t.first_ts_ns, t.last_ts_ns))
        for i, t in enumerate(ordered):
            if not self._feasible(t, ordered[i + 1:]) or not self._feasible(t, ordered[:i]):
                return False
        return True

    def _walkable(self, a: Tracklet, b: Tracklet) -> bool:
        """Whether a person can go from tracklet ``a`` (earlier) to ``b`` along the graph."""
        if a.camera == b.camera or frozenset((a.camera, b.camera)) in self._overlap:
            return True
        link = self._links.get(frozenset((a.camera, b.camera)))
        if link is None:
            return False
        gap_s = (b.first_ts_ns - a.last_ts_ns) / 1e9
        return link[0] <= gap_s <= link[1]

    # --- state -----------------------------------------------------------------------------

    def to_json(self) -> str:
        """The whole state, for ``from_json`` after a restart."""
        return json.dumps({
            "version": 1,
            "next_id": self.next_id,
            "retired": [[c, t, g] for (c, t), g in self.retired.items()],
            "tracklets": [
                {"camera": t.camera, "track_id": t.track_id, "first_ts_ns": t.first_ts_ns,
                 "last_ts_ns": t.last_ts_ns, "crops": t.crops, "ended": t.ended,
                 "global_id": self.identity_of[t.key],
                 "vector": [round(float(x), 6) for x in t.vector]}
                for t in self.tracklets.values()],
        })

    @classmethod
    def from_json(cls, text: str, cfg: IdentityConfig) -> IdentityLinker:
        doc = json.loads(text)
        if doc.get("version") != 1:
            raise ValueError(f"identity state version {doc.get('version')!r}: this refind "
                             "reads version 1")
        linker = cls(cfg, next_id=int(doc["next_id"]))
        linker.retired = {(str(c), int(t)): int(g) for c, t, g in doc.get("retired", [])}
        for row in doc["tracklets"]:
            t = Tracklet(row["camera"], int(row["track_id"]), int(row["first_ts_ns"]),
                         int(row["last_ts_ns"]), np.asarray(row["vector"], np.float32),
                         int(row["crops"]), bool(row["ended"]))
            gid = int(row["global_id"])
            linker.tracklets[t.key] = t
            linker.identity_of[t.key] = gid
            linker.members.setdefault(gid, set()).add(t.key)
        return linker

    def groups(self) -> dict[int, list[TrackKey]]:
        """Every identity's tracklets (retired ones too), sorted."""
        out: dict[int, list[TrackKey]] = {}
        for key, gid in [*self.identity_of.items(), *self.retired.items()]:
            out.setdefault(gid, []).append(key)
        return {gid: sorted(keys) for gid, keys in sorted(out.items())}
