"""Watchlists: durable storage that never replaces, one calibrated meaning, one alert per
tracklet per watch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refind.indexer.watchlist import (
    PHOTO_CALIBRATION,
    TrackletView,
    WatchError,
    WatchMatcher,
    WatchStore,
    photo_probability,
    photo_watch,
    text_watch,
)

MODEL = "person-reidentification-retail-0277@82039b1bb986"
AXES = np.eye(4, dtype=np.float32)


def view(camera: str, track: int, v: np.ndarray, gid: int | None = None,
         crops: tuple[np.ndarray, ...] = ()) -> TrackletView:
    return TrackletView(camera, track, 10, 0, v, MODEL, gid, crops, f"{camera}/{track}.jpg")


def test_store_keeps_refuses_and_removes(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "w")
    assert store.all() == {}
    store.add(photo_watch("visitor", AXES[0], MODEL, 0.8, ["gate"]), b"\xff\xd8jpeg")
    store.add(text_watch("red-coat", "woman in a red coat", cameras=()))
    with pytest.raises(WatchError, match="exists; remove it first"):
        store.add(text_watch("visitor", "anyone"))
    again = WatchStore(tmp_path / "w")  # another process, or after a restart
    assert sorted(again.all()) == ["red-coat", "visitor"]
    assert again.get("visitor").threshold == 0.8 and again.photo("visitor") == b"\xff\xd8jpeg"
    assert again.get("visitor").cameras == ("gate",)
    again.remove("visitor")
    assert sorted(store.all()) == ["red-coat"] and not (tmp_path / "w" / "visitor.jpg").exists()
    with pytest.raises(WatchError, match="no watch named 'visitor'"):
        store.remove("visitor")


@pytest.mark.parametrize("make, problem", [
    (lambda: text_watch("bad name", "x"), "name"),
    (lambda: text_watch("ok", "x", threshold=1.5), "threshold"),
    (lambda: text_watch("ok", "x", cameras=["no way"]), "cameras"),
    (lambda: text_watch("ok", "   "), "needs a text"),
])
def test_bad_watches_name_the_problem(make, problem: str) -> None:
    with pytest.raises(WatchError, match=problem):
        make()


def test_an_unreadable_file_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = WatchStore(tmp_path)
    store.add(text_watch("fine", "a man"))
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    assert list(WatchStore(tmp_path).all()) == ["fine"]


def test_photo_probability_is_monotonic_and_calibrated_per_model() -> None:
    p = photo_probability(np.array([-0.2, 0.3, 0.6, 0.9]), MODEL)
    assert np.all(np.diff(p) > 0) and 0.0 < p[0] < p[-1] < 1.0
    assert MODEL.split("@")[0] in PHOTO_CALIBRATION
    with pytest.raises(WatchError, match="no calibration for model other@1"):
        photo_probability(0.5, "other@1")


def test_one_alert_per_tracklet_and_again_for_a_new_camera_or_person(tmp_path: Path) -> None:
    store = WatchStore(tmp_path)
    store.add(photo_watch("visitor", AXES[0], MODEL, threshold=0.5))
    store.add(photo_watch("gate-only", AXES[0], MODEL, threshold=0.5, cameras=["gate"]))
    matcher = WatchMatcher(store)
    first = matcher.check(view("hall", 1, AXES[0], gid=7))
    assert [a.watch for a in first] == ["visitor"]  # gate-only does not cover the hall
    assert first[0].score > 0.5 and first[0].thumbnail == "hall/1.jpg"
    assert matcher.check(view("hall", 1, AXES[0], gid=7)) == []  # the same tracklet, updated
    assert matcher.check(view("hall", 2, AXES[0], gid=7)) == []  # same person, same camera
    assert sorted(a.watch for a in matcher.check(view("gate", 3, AXES[0], gid=7))) == [
        "gate-only", "visitor"]  # a new camera
    assert len(matcher.check(view("hall", 4, AXES[0], gid=8))) == 1  # a new person
    assert matcher.check(view("hall", 5, AXES[1], gid=9)) == []  # someone else


def test_a_watch_of_another_model_never_matches(tmp_path: Path) -> None:
    store = WatchStore(tmp_path)
    store.add(photo_watch("visitor", AXES[0], "other-model@1", threshold=0.5))
    assert WatchMatcher(store).check(view("hall", 1, AXES[0])) == []


def test_text_watches_use_the_text_scorer_with_the_tracklets_crops(tmp_path: Path) -> None:
    store = WatchStore(tmp_path)
    store.add(text_watch("red", "a person in red", threshold=0.6))
    seen = []

    def scorer(text: str, crops) -> tuple[float, str]:
        seen.append((text, len(crops)))
        red = float(np.mean([c[..., 2].mean() > 128 for c in crops]))
        return red, "red top" if red else "no red"

    matcher = WatchMatcher(store, scorer)
    red = np.zeros((8, 4, 3), np.uint8)
    red[..., 2] = 255
    grey = np.full((8, 4, 3), 90, np.uint8)
    assert matcher.check(view("hall", 1, AXES[0], crops=(grey,))) == []
    alerts = matcher.check(view("hall", 2, AXES[0], crops=(red, red)))
    assert [(a.watch, a.track_id, a.reasons[1]) for a in alerts] == [("red", 2, "red top")]
    assert seen == [("a person in red", 1), ("a person in red", 2)]


def test_a_new_model_gets_the_photo_embedded_again(tmp_path: Path) -> None:
    """After a re-index the photo watch matches tracklets of the new model, from its photo."""
    import cv2

    from refind.indexer.watchlist import reembed_watches

    store = WatchStore(tmp_path)
    photo = np.full((64, 32, 3), 200, np.uint8)
    store.add(photo_watch("visitor", AXES[0], MODEL, threshold=0.5, instruction="no hat"),
              cv2.imencode(".jpg", photo)[1].tobytes())
    store.add(text_watch("words", "a man"))
    matcher = WatchMatcher(store)
    new = TrackletView("hall", 1, 10, 0, AXES[1], "person-reidentification-retail-0277@new")
    assert matcher.check(new) == []  # no vector for the new model yet
    calls = []

    def embed(image: np.ndarray, instruction: str | None) -> tuple[np.ndarray, str]:
        calls.append((image.shape, instruction))
        return AXES[1][None], new.model_id

    assert reembed_watches(store, embed) == 1 and calls == [((64, 32, 3), "no hat")]
    assert reembed_watches(store, embed) == 0  # already there: nothing to do
    again = WatchStore(tmp_path).get("visitor")
    assert again.vector == store.get("visitor").vector and again.model_id == MODEL  # kept
    assert [a.watch for a in WatchMatcher(store).check(new)] == ["visitor"]


def test_an_uncalibrated_model_is_refused_at_creation_and_never_crashes_matching(
        tmp_path: Path) -> None:
    from refind.app.identity_commands import add_watch
    from refind.config import RefindConfig
    from refind.indexer.config import IdentityConfig

    store = WatchStore(tmp_path)
    cfg = RefindConfig(data_dir=tmp_path)
    photo = np.full((64, 32, 3), 200, np.uint8)
    import cv2

    jpeg = cv2.imencode(".jpg", photo)[1].tobytes()

    def embed(image: np.ndarray, instruction: str | None) -> tuple[np.ndarray, str]:
        return AXES[0], "irm-new@1"

    with pytest.raises(WatchError, match=r"identities.photo_calibration \{irm-new: \[a, b\]\}"):
        add_watch(cfg, store, "v", image=jpeg, embed=embed)
    assert store.all() == {}  # nothing half-made
    calibrated = cfg.model_copy(update={"identities": IdentityConfig(
        photo_calibration={"irm-new": (4.0, -3.0)})})
    add_watch(calibrated, store, "v", image=jpeg, embed=embed, threshold=0.5)
    view = TrackletView("hall", 1, 10, 0, AXES[0], "irm-new@1")
    assert WatchMatcher(store).check(view) == []  # a matcher without it: logged, no alert
    alerts = WatchMatcher(store, calibration={"irm-new": (4.0, -3.0)}).check(view)
    assert [a.watch for a in alerts] == ["v"] and alerts[0].score > 0.9


def test_ids_of_two_models_are_not_confused_and_a_failing_scorer_alerts_nothing(
        tmp_path: Path) -> None:
    store = WatchStore(tmp_path)
    store.add(photo_watch("visitor", AXES[0], MODEL, threshold=0.5))
    store.add(text_watch("words", "a man", threshold=0.5))

    def broken(text: str, crops) -> tuple[float, str]:
        raise RuntimeError("attribute model crashed")

    matcher = WatchMatcher(store, broken)
    assert [a.watch for a in matcher.check(view("hall", 1, AXES[0], gid=7,
                                                crops=(np.zeros((8, 4, 3), np.uint8),)))] == [
        "visitor"]  # the text watch failed on its own; the photo watch still alerted
    other_model = TrackletView("hall", 2, 10, 0, AXES[0], MODEL + "x", 7)
    store.add(photo_watch("other", AXES[0], MODEL + "x", threshold=0.5))
    # global id 7 of another model is another person: it may alert
    assert "other" in [a.watch for a in matcher.check(other_model)]
    assert matcher.check(view("hall", 3, AXES[0], gid=7), skip={"visitor"}) == []
