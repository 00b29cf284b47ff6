"""Global ids: the linker's rule as tables of tracklets -> ids, its revisions and its state."""

from __future__ import annotations

import numpy as np
import pytest

from refind.indexer.config import CameraLink, IdentityConfig
from refind.indexer.identities import IdentityLinker, Tracklet, mean_vector

S = 10**9
AXES = np.eye(8, dtype=np.float32)


def vec(*weights: float) -> np.ndarray:
    """A unit vector mostly along the given axes (weights per axis)."""
    v = np.zeros(8, np.float32)
    v[: len(weights)] = weights
    return v / np.linalg.norm(v)


def t(camera: str, track: int, start_s: float, end_s: float, v: np.ndarray,
      ended: bool = True) -> Tracklet:
    return Tracklet(camera, track, int(start_s * S), int(end_s * S), v, ended=ended)


def ids(linker: IdentityLinker, tracklets: list[Tracklet]) -> list[int | None]:
    for x in tracklets:
        linker.observe(x)
    return [linker.global_id(x.camera, x.track_id) for x in tracklets]


@pytest.mark.parametrize("tracklets, expected", [
    # one look, two cameras one after another: one person
    ([t("a", 1, 0, 5, AXES[0]), t("b", 1, 7, 9, AXES[0])], [1, 1]),
    # two looks: two people
    ([t("a", 1, 0, 5, AXES[0]), t("b", 1, 7, 9, AXES[1])], [1, 2]),
    # one look in two cameras at the same time: two people (not in two places at once)
    ([t("a", 1, 0, 5, AXES[0]), t("b", 1, 2, 9, AXES[0])], [1, 2]),
    # one look twice at once in ONE camera: two people
    ([t("a", 1, 0, 5, AXES[0]), t("a", 2, 1, 3, AXES[0])], [1, 2]),
    # a short overlap within overlap_tolerance_s (a track's end reported late) is allowed
    ([t("a", 1, 0, 5, AXES[0]), t("b", 1, 4.8, 9, AXES[0])], [1, 1]),
    # the nearest identity wins
    ([t("a", 1, 0, 2, vec(1, 0.2)), t("a", 2, 0, 2, vec(0.2, 1)), t("b", 1, 5, 6, vec(1, 0.3))],
     [1, 2, 1]),
])
def test_links_by_look_and_time(tracklets: list[Tracklet], expected: list[int]) -> None:
    assert ids(IdentityLinker(IdentityConfig()), tracklets) == expected


def test_overlapping_views_allow_one_person_in_two_cameras_at_once() -> None:
    cfg = IdentityConfig(overlapping_views=(("a", "b"),))
    assert ids(IdentityLinker(cfg), [t("a", 1, 0, 5, AXES[0]), t("b", 1, 2, 9, AXES[0])]) == [1, 1]


@pytest.mark.parametrize("gap_s, camera, expected", [
    (3.0, "b", [1, 1]),    # along the a-b link, within its travel times
    (30.0, "b", [1, 2]),   # too slow for the link
    (0.5, "b", [1, 2]),    # too fast: min_s is 1 s
    (3.0, "c", [1, 2]),    # no link a-c
    (300.0, "a", [1, 1]),  # back in the same camera: any time later
])
def test_camera_graph(gap_s: float, camera: str, expected: list[int]) -> None:
    cfg = IdentityConfig(links=(CameraLink(a="a", b="b", min_s=1.0, max_s=10.0),))
    assert ids(IdentityLinker(cfg), [t("a", 1, 0, 5, AXES[0]),
                                     t(camera, 2, 5 + gap_s, 9 + gap_s, AXES[0])]) == expected


def test_merge_when_a_bridge_tracklet_arrives() -> None:
    """Two identities far apart in look are merged once a tracklet close to both appears
    (merge_threshold); the older id survives and the change is an event."""
    cfg = IdentityConfig(link_threshold=0.8, merge_threshold=0.8)
    linker = IdentityLinker(cfg)
    assert ids(linker, [t("a", 1, 0, 2, vec(1, 0)), t("b", 1, 5, 6, vec(0.55, 1))]) == [1, 2]
    changes = linker.observe(t("c", 1, 10, 11, vec(1, 0.6)))  # cosine .86 to b/1, .86 to a/1
    kinds = [(c.kind, c.global_id, c.previous) for c in changes]
    assert kinds == [("assigned", 2, None), ("merged", 1, 2)]
    assert linker.global_id("b", 1) == 1 and linker.groups() == {
        1: [("a", 1), ("b", 1), ("c", 1)]}


def test_split_when_an_update_no_longer_fits() -> None:
    """A tracklet linked at its first crop is split off when its update looks like someone
    else, then linked afresh."""
    linker = IdentityLinker(IdentityConfig())
    linker.observe(t("a", 1, 0, 5, AXES[0]))
    linker.observe(t("b", 1, 7, 8, AXES[0], ended=False))
    assert linker.global_id("b", 1) == 1
    changes = linker.observe(t("b", 1, 7, 12, AXES[3]))
    assert [(c.kind, c.global_id, c.previous) for c in changes] == [
        ("split", 1, 1), ("assigned", 2, 1)]
    assert linker.global_id("b", 1) == 2


def test_split_when_an_update_overlaps_in_time() -> None:
    """Linked while open, a tracklet that goes on into another camera's time is split."""
    linker = IdentityLinker(IdentityConfig())
    linker.observe(t("a", 1, 10, 15, AXES[0]))
    linker.observe(t("b", 1, 0, 2, AXES[0], ended=False))  # before a/1: one person so far
    assert linker.global_id("b", 1) == 1
    linker.observe(t("b", 1, 0, 14, AXES[0]))  # it was still in b while a/1 was seen
    assert linker.global_id("b", 1) == 2


def test_state_round_trip_and_prune() -> None:
    cfg = IdentityConfig(window_s=60.0)
    linker = IdentityLinker(cfg)
    ids(linker, [t("a", 1, 0, 5, AXES[0]), t("b", 1, 7, 9, AXES[0]), t("a", 2, 8, 9, AXES[1])])
    again = IdentityLinker.from_json(linker.to_json(), cfg)
    assert again.groups() == linker.groups() and again.next_id == linker.next_id
    assert again.prune(now_ns=200 * S) == 3
    assert again.global_id("b", 1) == 1 and not again.tracklets  # ids kept, vectors gone
    assert ids(again, [t("c", 1, 201, 202, AXES[0])]) == [3]  # retired: never a candidate
    third = IdentityLinker.from_json(again.to_json(), cfg)
    assert third.global_id("a", 2) == 2 and third.groups()[1] == [("a", 1), ("b", 1)]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="non-zero"):
        Tracklet("a", 1, 0, 1, np.zeros(4))
    with pytest.raises(ValueError, match="ends before"):
        Tracklet("a", 1, 5, 1, AXES[0])
    with pytest.raises(ValueError, match="version"):
        IdentityLinker.from_json('{"version": 9}', IdentityConfig())
    with pytest.raises(ValueError, match="max_s"):
        CameraLink(a="a", b="b", min_s=5, max_s=1)


def test_mean_vector_is_unit() -> None:
    m = mean_vector(np.stack([AXES[0], AXES[1]]))
    assert np.isclose(np.linalg.norm(m), 1.0) and np.allclose(m[:2], [0.7071, 0.7071], atol=1e-3)


def test_merge_along_a_chain_of_links() -> None:
    """c1 -> c3 -> c2: two identities joined through the camera between them, though c1 and
    c2 have no link of their own."""
    links = (CameraLink(a="c1", b="c3", max_s=10), CameraLink(a="c3", b="c2", max_s=10))
    cfg = IdentityConfig(links=links, link_threshold=0.9, merge_threshold=0.9)
    linker = IdentityLinker(cfg)
    assert ids(linker, [t("c1", 1, 0, 2, vec(1, 0.3)), t("c2", 1, 8, 9, vec(1, -0.3))]) == [1, 2]
    changes = linker.observe(t("c3", 1, 4, 6, vec(1, 0)))  # .96 to both: links, then merges
    assert [(c.kind, c.global_id, c.track_id) for c in changes] == [
        ("assigned", 1, 1), ("merged", 1, 1)]
    assert linker.groups() == {1: [("c1", 1), ("c2", 1), ("c3", 1)]}


def test_prune_keeps_open_tracks_and_a_retired_one_is_linked_again() -> None:
    linker = IdentityLinker(IdentityConfig(window_s=60.0))
    ids(linker, [t("a", 1, 0, 5, AXES[0], ended=False), t("b", 1, 0, 5, AXES[1])])
    assert linker.prune(now_ns=100 * S, keep={("a", 1)}) == 1  # b/1 only: a/1 is still open
    assert linker.global_id("a", 1) == 1 and linker.global_id("b", 1) == 2
    changes = linker.observe(t("b", 1, 0, 120, AXES[1]))  # news of the retired one after all
    assert [(c.kind, c.global_id) for c in changes] == []  # it keeps its id, listed once
    assert linker.groups() == {1: [("a", 1)], 2: [("b", 1)]}
