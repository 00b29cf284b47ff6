"""Named places of a camera's view: reading the words that relate a person to one, finding the
place a camera calls so, judging the relation from boxes and the track's path, and the config."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from pydantic import ValidationError

from refind.models.language import parse_query
from refind.models.places import find_places, place_probability, read_places
from refind.models.referring import ComposingReferrer
from refind.streaming.config import CameraConfig, PlaceConfig
from refind.streaming.motion import TrackMotion, track_motion
from tests.models.test_referring import PEOPLE, _Attributes, _BoxPose

FRAME = (480, 360)
# a lamp post in the middle of the frame, standing on the ground at y = 0.7 (252 px)
POST = PlaceConfig(name="lamp post", also=("lamppost", "street light"),
                   box=(0.49, 0.1, 0.51, 0.7))
SIGN = PlaceConfig(name="sign", box=(0.48, 0.3, 0.53, 0.38), ground=(0.5, 0.7))
CONES = (PlaceConfig(name="cone", box=(0.1, 0.8, 0.12, 0.85)),
         PlaceConfig(name="cone", box=(0.8, 0.8, 0.82, 0.85)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("just left of the lamp post", [("left", "lamppost")]),
        ("on the right hand side of the lamppost", [("right", "lamppost")]),
        ("on the left of the street light", [("left", "streetlight")]),
        ("beside the white van", [("near", "whitevan")]),
        ("next to the sign on the lamp post", [("near", "sign")]),
        ("the two standing by the signpost", [("near", "signpost")]),
        ("right behind the parked van", [("behind", "parkedvan")]),
        ("passing in front of the lamp post", [("front", "lamppost")]),
        ("standing in the doorway", [("inside", "doorway")]),
        ("walking towards the gate", [("towards", "gate")]),
        ("walks away from the fountain", [("away", "fountain")]),
        ("half obscured by a van", [("behind", "van")]),
        # no place: a person, the camera, clothing, the ground (its colour tells), each other
        ("the man next to the woman in red", []),
        ("walking towards the camera", []),
        ("a man in a red coat", []),
        ("walking on the grass", []),
        ("two people next to each other", []),
        ("listening to music", []),  # after "to", only a word of the scene is a place
    ],
)
def test_place_phrases_are_read(text: str, expected: list[tuple[str, str]]) -> None:
    assert [(p.relation, p.names[0]) for p in read_places(text.split())] == expected


def test_a_place_is_found_by_any_of_its_names_and_several_boxes_may_share_one() -> None:
    places = (POST, SIGN, *CONES)
    assert find_places(("streetlight",), places) == [POST]
    assert find_places(("lampposts",), places) == []  # names are read by place_key, not here
    assert find_places(("cone",), places) == list(CONES)
    assert find_places(("bench",), places) == []
    # the encoder's nearest name, where no name matches
    assert find_places(("lamp",), places, "lamp", lambda w, names: names.index("lamp post")) \
        == [POST]


# person boxes (x1, y1, x2, y2) in a 480x360 frame; the post is at x 235-245, base y 252
LEFT_NEAR = (190.0, 150.0, 226.0, 240.0)
RIGHT_NEAR = (254.0, 150.0, 290.0, 240.0)
FAR_LEFT = (20.0, 150.0, 56.0, 240.0)
BEHIND = (228.0, 110.0, 250.0, 170.0)  # further away than the post's base, lined up with it
IN_FRONT = (222.0, 220.0, 262.0, 320.0)  # feet below the post's base: nearer the camera


@pytest.mark.parametrize(
    ("relation", "box", "more_likely_than", "than_box"),
    [
        ("near", LEFT_NEAR, "near", FAR_LEFT),
        ("left", LEFT_NEAR, "left", RIGHT_NEAR),
        ("right", RIGHT_NEAR, "right", LEFT_NEAR),
        ("left", LEFT_NEAR, "left", FAR_LEFT),  # left of it, and around it
        ("behind", BEHIND, "behind", IN_FRONT),
        ("front", IN_FRONT, "front", BEHIND),
    ],
)
def test_relations_are_judged_from_the_boxes(relation: str, box: tuple, more_likely_than: str,
                                             than_box: tuple) -> None:
    p = place_probability(relation, [POST], box, FRAME)
    q = place_probability(more_likely_than, [POST], than_box, FRAME)
    assert p is not None and q is not None
    assert p > 0.5 > q, (p, q)


def test_inside_an_area_is_the_feet_in_its_box() -> None:
    crossing = PlaceConfig(name="crossing", box=(0.3, 0.6, 0.7, 0.8))
    assert place_probability("inside", [crossing], (200.0, 150.0, 230.0, 250.0), FRAME) > 0.9
    assert place_probability("inside", [crossing], (20.0, 150.0, 50.0, 250.0), FRAME) < 0.1


def _walk_path(x0: float, x1: float, y: float = 250.0) -> TrackMotion:
    t = np.linspace(0.0, 4.0, 20)
    x = np.linspace(x0, x1, 20)
    boxes = np.stack([x - 15, np.full(20, y - 90), x + 15, np.full(20, y)], axis=1)
    m = track_motion(t, boxes, FRAME)
    assert m is not None
    return m


def test_going_towards_or_away_from_a_place_is_read_from_the_path() -> None:
    box = (0.0, 0.0, 30.0, 90.0)
    to_post, from_post = _walk_path(20, 230), _walk_path(230, 20)
    # to it, then on past it: it still went to it
    there_and_on = TrackMotion.from_dict(_walk_path(20, 460).as_dict())
    assert place_probability("towards", [POST], box, FRAME, to_post) > 0.9
    assert place_probability("towards", [POST], box, FRAME, from_post) < 0.2
    assert place_probability("away", [POST], box, FRAME, from_post) > 0.9
    assert place_probability("towards", [POST], box, FRAME, there_and_on) > 0.9
    # without the path (motion stored before it was kept) it cannot be told
    assert place_probability("towards", [POST], box, FRAME, replace(to_post, path=())) is None


def test_the_path_is_stored_as_plain_numbers_and_words() -> None:
    m = _walk_path(20, 230)
    d = m.as_dict()
    assert all(isinstance(v, float | str) for v in d.values())  # a track event's motion
    back = TrackMotion.from_dict(d)
    assert back.frame_wh == FRAME and len(back.path) == 8
    assert back.path[0] == pytest.approx((20.0, 250.0)) and back.path[-1][0] == pytest.approx(230)
    old = {k: v for k, v in d.items() if k not in ("frame_w", "frame_h", "path")}
    assert TrackMotion.from_dict(old).path == ()  # motion stored before the path was kept
    with pytest.raises(ValueError, match="path must read 'x,y x,y"):
        TrackMotion.from_dict(d | {"path": "12;40"})


def _in_frame(places: tuple[PlaceConfig, ...]) -> list:
    """The three test people, moved around a lamp post, in a frame whose camera has
    ``places``: 0 just left of the post, 1 far left, 2 right of it."""
    boxes = [LEFT_NEAR, FAR_LEFT, RIGHT_NEAR]
    return [replace(r, xyxy=b, places=places) for r, b in zip(PEOPLE, boxes, strict=True)]


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        ("the person just left of the lamp post", [0]),
        ("someone on the right side of the street light", [2]),
        ("the person closest to the lamp post", [0]),
        ("people next to the lamppost", [0, 2]),
        ("the person in a red top next to the lamp post", [0]),
        ("the one in a green top left of the lamp post", []),  # green is right of it
    ],
)
def test_the_referrer_selects_by_a_named_place(text: str, selected: list[int]) -> None:
    referrer = ComposingReferrer(_Attributes(), _BoxPose())  # type: ignore[arg-type]
    result = referrer(text, _in_frame((POST, SIGN)))
    assert list(np.nonzero(result.selected)[0]) == selected, result.reasons


def test_a_place_the_camera_does_not_name_is_unknown_and_said_so() -> None:
    referrer = ComposingReferrer(_Attributes(), _BoxPose())  # type: ignore[arg-type]
    result = referrer("the person in a red top next to the fountain", _in_frame((POST,)))
    assert list(np.nonzero(result.selected)[0]) == [0]  # judged on the rest
    assert "next to the fountain unknown (no place called 'fountain' on this camera)" \
        in result.reasons[0]
    alone = referrer("the person next to the fountain", _in_frame((POST,)))
    assert not alone.selected.any()  # nothing else to go on: nobody


def test_colour_blends_count_either_name() -> None:
    assert [t.label() for t in parse_query("a grey-brown jacket").terms] == ["top grey-brown"]
    assert [t.label() for t in parse_query("a red-and-blue top").terms] == ["top red",
                                                                            "top blue"]
    referrer = ComposingReferrer(_Attributes(), _BoxPose())  # type: ignore[arg-type]
    result = referrer("someone in a blue-green top", PEOPLE)
    assert list(np.nonzero(result.selected)[0]) == [2], result.reasons  # the green top


@pytest.mark.parametrize(
    ("place", "error"),
    [
        ({"name": "gate", "box": [0.5, 0.2, 0.4, 0.3]}, "x1 < x2"),
        ({"name": "gate", "box": [0.1, 0.2, 0.4, 0.3], "ground": [0.2, 1.4]}, "ground"),
        ({"name": "gate/2", "box": [0.1, 0.2, 0.4, 0.3]}, "pattern"),
        ({"name": "gate", "box": [0.1, 0.2, 0.4, 0.3], "colour": "red"}, "Extra inputs"),
    ],
)
def test_a_bad_place_is_refused_naming_the_problem(place: dict, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        CameraConfig(name="cam", url="a.mp4", places=[place])


def test_one_name_for_two_different_places_is_refused() -> None:
    with pytest.raises(ValidationError, match="'post' is given to both 'lamp post' and 'gate'"):
        CameraConfig(name="cam", url="a.mp4", places=[
            {"name": "lamp post", "also": ["post"], "box": [0.1, 0.1, 0.2, 0.7]},
            {"name": "gate", "also": ["post"], "box": [0.5, 0.1, 0.7, 0.7]}])
    # several boxes of one name are one kind of place, seen several times
    cam = CameraConfig(name="cam", url="a.mp4", places=[c.model_dump() for c in CONES])
    assert [p.name for p in cam.places] == ["cone", "cone"]


def test_eval_refer_takes_the_places_of_a_camera_of_the_config() -> None:
    from refind.app.commands import camera_places
    from refind.config import RefindConfig

    cfg = RefindConfig(cameras=[CameraConfig(name="gate", url="a.mp4", places=[POST])])
    assert camera_places(cfg, "gate") == (POST,)
    assert camera_places(cfg, None) == ()
    with pytest.raises(ValueError, match="--camera 'hall' is not a camera of the config; it has "
                       "gate"):
        camera_places(cfg, "hall")


@pytest.mark.parametrize(
    ("text", "target", "relation", "anchor"),
    [
        ("the man next to the woman in red", {"man"}, "next to the woman in red",
         {"woman", "outfit red"}),
        ("a woman walking behind a man in a blue jacket", {"woman", "moving"},
         "behind a man in a blue jacket", {"man", "top blue"}),
        ("the guy to the left of the woman with the backpack", {"man"},
         "left of the woman with the backpack", {"woman", "backpack"}),
        ("the man next to the woman in red, carrying a bag", {"man", "bag"},
         "next to the woman in red", {"woman", "outfit red"}),
    ],
)
def test_another_person_named_is_read_apart(text: str, target: set, relation: str,
                                            anchor: set) -> None:
    q = parse_query(text)
    assert {t.label() for t in q.terms if t.kind != "person"} == target
    assert [t.label() for t in q.terms if t.kind == "person"] == [relation]
    assert q.anchor is not None and {t.label() for t in q.anchor.terms} == anchor


@pytest.mark.parametrize("text", ["two people next to each other", "a woman with long hair",
                                  "the man in black next to the lamp post", "a man with a bag",
                                  "a woman walking together with a man in a blue jacket"])
def test_no_other_person_no_split(text: str) -> None:
    assert parse_query(text).anchor is None


def test_the_referrer_finds_a_person_by_the_one_beside_them() -> None:
    """Red at the left, black just beside red, green further right: "next to the person in a
    red top" is black, though red is the one the words describe."""
    boxes = [(40.0, 100.0, 76.0, 190.0), (82.0, 100.0, 118.0, 190.0), (300.0, 100.0, 336.0, 190.0)]
    people = [replace(r, xyxy=b) for r, b in zip(PEOPLE, boxes, strict=True)]
    referrer = ComposingReferrer(_Attributes(), _BoxPose())  # type: ignore[arg-type]
    result = referrer("the person next to the person in a red top", people)
    assert list(np.nonzero(result.selected)[0]) == [1], result.reasons
    assert "next to the person in a red top 0.9" in result.reasons[1]
    behind = referrer("the man behind the person in a green top",
                      [*people[:2], replace(people[2], xyxy=(300.0, 140.0, 336.0, 230.0)),
                       replace(people[1], xyxy=(296.0, 60.0, 326.0, 135.0))])
    assert list(np.nonzero(behind.selected)[0]) == [3], behind.reasons
    # judged alone, as a tracklet in search is: unknown, not false
    alone = referrer("the person next to the person in a red top", people[1:2])
    assert "unknown (nobody else in view to judge it by)" in alone.reasons[0]

