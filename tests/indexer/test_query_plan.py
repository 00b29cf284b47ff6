"""Query planning: many phrasings of cameras, times and track lengths, explicit overrides, refusals,
and a fuzz test that any text gives a plan or a QueryError, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refind.indexer.query_plan import MAX_QUERY_CHARS, QueryPlan, UnknownCamera, plan_query
from refind.indexer.search import QueryError

NOW = datetime(2024, 5, 3, 16, 0, tzinfo=UTC)  # a Friday, 16:00 UTC
CAMS = ("cam-1", "cam-2", "cam-3", "gate", "lobby")


def at(h: int, m: int = 0, s: int = 0, day: int = 3) -> int:
    """Epoch ns of 2024-05-<day> h:m:s UTC."""
    return int(datetime(2024, 5, day, h, m, s, tzinfo=UTC).timestamp()) * 10**9


END_OF = 10**9 - 1  # "until 11:30" includes the whole of that second
DAY_NS = 86_400 * 10**9


def plan(text: str, **kw: object) -> QueryPlan:
    return plan_query(text, now=NOW, known_cameras=CAMS, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "description", "cameras", "start", "end", "min_track"),
    [
        ("woman with long hair and a backpack, red top, near camera 2, after 14:00",
         "woman with long hair and a backpack, red top", ("cam-2",), at(14), None, None),
        ("man in a red top on camera 2 after 14:00", "man in a red top", ("cam-2",), at(14),
         None, None),
        ("cam-2 between 10:00 and 11:30 man with hat", "man with hat", ("cam-2",), at(10),
         at(11, 30) + END_OF, None),
        ("cam2 person in black", "person in black", ("cam-2",), None, None, None),
        ("Camera 3: girl with a bag", "girl with a bag", ("cam-3",), None, None, None),
        ("person on cameras 1 and 3 before 9am", "person", ("cam-1", "cam-3"), None, at(9), None),
        ("on cameras 1, 2 and 3 a man", "a man", ("cam-1", "cam-2", "cam-3"), None, None, None),
        ("near camera gate, blue jeans", "blue jeans", ("gate",), None, None, None),
        ("the lobby camera, backpack", "backpack", ("lobby",), None, None, None),
        ("red top near CAMERA GATE", "red top", ("gate",), None, None, None),
        ("man with a bag since 2pm", "man with a bag", (), at(14), None, None),
        ("man with a bag after 2:30 p.m.", "man with a bag", (), at(14, 30), None, None),
        ("woman until noon", "woman", (), None, at(12), None),
        ("woman before midnight", "woman", (), None, at(0), None),
        ("from 10 am to 11:15 am, green coat", "green coat", (), at(10), at(11, 15) + END_OF,
         None),
        ("man 10:00-11:30", "man", (), at(10), at(11, 30) + END_OF, None),
        ("red top today", "red top", (), at(0), at(0) + DAY_NS - 1, None),
        ("red top yesterday after 14:00", "red top", (), at(14, day=2), at(0, day=3) - 1, None),
        ("red top on 2024-05-01", "red top", (), at(0, day=1), at(0, day=2) - 1, None),
        ("in the last 2 hours someone in black", "someone in black", (), at(14), at(16), None),
        ("someone in black over the past 30 minutes", "someone in black", (), at(15, 30), at(16),
         None),
        ("in the last hour, a hat", "a hat", (), at(15), at(16), None),
        ("after 00:00:15 a man", "a man", (), at(0, 0, 15), None, None),
        ("seen for at least 5 s, red top", "red top", (), None, None, 5.0),
        ("red top, tracked for over 2 minutes", "red top", (), None, None, 120.0),
        ("a man visible for more than 10 seconds", "a man", (), None, None, 10.0),
        # nothing to take out: words that only look like filters stay in the description
        ("walking toward the camera with a bag", "walking toward the camera with a bag", (),
         None, None, None),
        ("a cameraman in a red top", "a cameraman in a red top", (), None, None, None),
        ("walked past a man in a hat", "walked past a man in a hat", (), None, None, None),
        ("last seen in a blue jacket", "last seen in a blue jacket", (), None, None, None),
        ("   tall  man\tin\n grey   ", "tall man in grey", (), None, None, None),
    ],
)
def test_filters_are_read_from_text(
    text: str, description: str, cameras: tuple[str, ...], start: int | None, end: int | None,
    min_track: float | None,
) -> None:
    p = plan(text)
    assert p.text == description
    assert p.cameras == cameras and p.text_cameras == cameras
    assert (p.start_ts_ns, p.end_ts_ns) == (start, end)
    assert p.min_track_s == min_track
    filtered = bool(cameras) or start is not None or end is not None or min_track is not None
    assert bool(p.parsed) == filtered  # each filter read is reported


def test_clock_times_are_read_in_the_configured_time_zone() -> None:
    p = plan_query("after 14:00, a man", now=NOW, known_cameras=CAMS, tz="Europe/Paris")
    assert p.start_ts_ns == at(12)  # 14:00 in Paris (CEST, UTC+2) is 12:00 UTC
    with pytest.raises(QueryError, match="unknown time zone"):
        plan_query("a man", now=NOW, tz="Mars/Olympus")


def test_explicit_filters_replace_the_parsed_ones_but_text_cameras_are_kept() -> None:
    p = plan("red top on camera 2 after 14:00 seen for at least 5 s",
             cameras=("gate",), start_ts_ns=at(9), min_track_s=1.0)
    assert p.cameras == ("gate",) and p.text_cameras == ("cam-2",)  # scopes check both
    assert p.start_ts_ns == at(9) and p.end_ts_ns is None and p.min_track_s == 1.0
    assert plan("red top", end_ts_ns=at(10)).end_ts_ns == at(10)


@pytest.mark.parametrize(
    ("text", "kw", "message"),
    [
        ("", {}, "empty"),
        ("   \n\t ", {}, "empty"),
        ("\x00\x01", {}, "empty"),
        ("x" * (MAX_QUERY_CHARS + 1), {}, f"at most {MAX_QUERY_CHARS}"),
        ("a" * 10_000, {}, "10000 characters"),
        ("man after 15:00 before 14:00", {}, "wrong way round"),
        ("man between 12:00 and 10:00", {}, "wrong way round"),
        ("man in the last 2 hours before 9am", {}, "wrong way round"),
        ("man after 14:00", {"end_ts_ns": at(13)}, "wrong way round"),
        ("man", {"start_ts_ns": at(13), "end_ts_ns": at(12)}, "wrong way round"),
        ("man after 25:00", {}, "not a time of day"),
        ("man after 13pm", {}, "not a time of day"),
        ("man after 10:75", {}, "not a time of day"),
        ("man on camera 7", {}, "unknown camera '7'"),
        ("man on cam-9", {}, "unknown camera"),
        ("man on 2024-02-30", {}, "not a date"),
        ("man on 1900-01-01", {}, "1970 to 2200"),
        ("man today on 2024-05-01", {}, "two days"),
        ("man in the last 99999 days", {}, "too far"),
        ("man seen for at least 999999 s", {}, "at most"),
        ("man", {"min_track_s": -1.0}, "min_track_s"),
    ],
)
def test_bad_queries_are_a_query_error(text: str, kw: dict[str, object], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        plan(text, **kw)


def test_unknown_camera_names_the_camera() -> None:
    with pytest.raises(UnknownCamera) as err:
        plan("a man near camera 12")
    assert err.value.name == "12" and "cam-1" in str(err.value)


def test_without_known_cameras_names_with_digits_are_taken_as_written() -> None:
    p = plan_query("man on camera 12 near the camera door", now=NOW)
    assert p.cameras == ("12",) and "camera door" in p.text


def test_relative_times_follow_now() -> None:
    later = NOW + timedelta(hours=5)
    p = plan_query("in the last 10 minutes, a man", now=later)
    assert p.end_ts_ns - p.start_ts_ns == 600 * 10**9
    assert p.end_ts_ns == int(later.timestamp()) * 10**9


_words = st.sampled_from([
    "camera", "cam-2", "cameras", "1", "and", "3", "gate", "after", "before", "between", "14:00",
    "9am", "noon", "midnight", "today", "yesterday", "in", "the", "last", "2", "hours", "seen",
    "for", "at", "least", "5", "s", "red", "top", "man", ",", "-", "10:00-11:30", "on",
    "2024-05-01", "99:99", "0:00", "12pm", "past", "a", "minute", "from", "to", "over", "99999",
])


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(st.text(max_size=200), st.lists(_words, max_size=25).map(" ".join)),
    known=st.one_of(st.none(), st.lists(st.text(min_size=1, max_size=8), max_size=4)),
    tz=st.sampled_from(["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York"]),
)
def test_any_text_gives_a_plan_or_a_query_error(
    text: str, known: list[str] | None, tz: str
) -> None:
    try:
        p = plan_query(text, now=NOW, known_cameras=known, tz=tz)
    except QueryError:
        return
    assert len(p.text) <= MAX_QUERY_CHARS
    if p.start_ts_ns is not None and p.end_ts_ns is not None:
        assert p.start_ts_ns <= p.end_ts_ns
    if known is not None:
        assert set(p.cameras) <= set(known)
