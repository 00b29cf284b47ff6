"""Query planning: split an operator's sentence into a description and search filters.

"woman with long hair and a backpack, red top, near camera 2, after 14:00" becomes the
description "woman with long hair and a backpack, red top" plus the filters camera "2" and
"start at 14:00 today". Pure Python, no models: the search runs the description through the
embedder or a re-ranker and applies the filters inside the FAISS search.

Filters read from text:
- cameras: "camera 2", "cam-2", "cameras 1 and 3", "near camera gate" or "the gate camera" (a
  name without a digit counts only when a camera of that name exists);
- time: "after 14:00", "since 2pm", "before 9am", "between 10:00 and 11:30", "from 10 am to
  noon", "today", "yesterday", "on 2024-05-03", "in the last 2 hours". Clock times are wall-clock
  times in ``tz`` (default UTC) on the day of ``now`` (or the day named); the gallery's ``ts_ns``
  are epoch nanoseconds;
- minimum track length: "seen for at least 5 s", "tracked for over 2 minutes".

Explicit filters (command-line flags, API fields) replace the same kind of filter read from the
text; the cameras named in the text are kept in ``text_cameras`` so that API key scopes apply to
them too. A window the wrong way round, an unknown camera or a bad time is a ``QueryError``.

Example:
    >>> plan = plan_query("man in a red top on camera 2 after 14:00",
    ...                   now=datetime(2024, 5, 3, 16, 0, tzinfo=timezone.utc),
    ...                   known_cameras=("cam-1", "cam-2"))
    >>> plan.text, plan.cameras, plan.start_ts_ns == 1714744800 * 10**9
    ('man in a red top', ('cam-2',), True)
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from refind.indexer.search import QueryError
from refind.streaming.records import CLIP_TIME_NS, TextQuery

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
MAX_RELATIVE_DAYS = 3650  # "in the last N days": at most ten years back
MAX_MIN_TRACK_S = 86_400.0
_NS = 10**9

_F = re.IGNORECASE | re.ASCII
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_CLOCK = (
    r"(?:\d{1,2}:\d{2}(?::\d{2})?(?:\s*[ap]\.?m\b\.?)?|\d{1,2}\s*[ap]\.?m\b\.?|noon|midnight)"
)
_UNITS_S = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
            "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
            "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
            "d": 86400, "day": 86400, "days": 86400}  # fmt: skip
_UNIT = r"(?:seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)"
_WORD_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
                 "six": 6, "ten": 10, "fifteen": 15, "twenty": 20, "thirty": 30}  # fmt: skip
_NUMBER = r"(?:\d+(?:\.\d+)?|" + "|".join(_WORD_NUMBERS) + r")"

_BETWEEN = re.compile(
    rf"\b(?:between|from)\s+(?P<a>{_CLOCK})\s*(?:and|to|until|till|-)\s*(?P<b>{_CLOCK})", _F
)
_RANGE = re.compile(rf"(?<![\w:])(?P<a>{_CLOCK})\s*-\s*(?P<b>{_CLOCK})", _F)
_AFTER = re.compile(rf"\b(?:after|since|from|later\s+than)\s+(?P<a>{_CLOCK})", _F)
_BEFORE = re.compile(rf"\b(?:before|until|till|by|earlier\s+than)\s+(?P<a>{_CLOCK})", _F)
_LAST = re.compile(
    rf"\b(?:(?:in|over|during|within)\s+the\s+)?(?:last|past|previous)\s+"
    rf"(?:(?P<n>{_NUMBER})\s*)?(?P<unit>{_UNIT})\b", _F,
)
_DAY = re.compile(r"\b(?:(?P<word>today|yesterday)|on\s+(?P<iso>\d{4}-\d{2}-\d{2}))\b", _F)
_MIN_TRACK = re.compile(
    rf"\b(?:(?:seen|tracked|visible|present|followed|there|on\s+screen)\s+)?(?:for\s+)?"
    rf"(?:at\s+least|more\s+than|longer\s+than|over|min(?:imum)?(?:\s+of)?)\s+"
    rf"(?P<n>{_NUMBER})\s*(?P<unit>seconds?|secs?|s|minutes?|mins?|m)\b(?:\s+long)?", _F,
)
_CAMERA = re.compile(
    r"\b(?:(?:on|at|near|from|in|by|of|via|to)\s+)?(?:the\s+)?(?:cameras?|cams?)\b[\s#:_-]*"
    r"|\b(?:(?:on|at|near|from|in|by|of|via|to)\s+)?(?:the\s+)?cam(?:era)?s?(?=[-_#]?\d)[-_#]?",
    _F,
)
_CAMERA_AFTER_NAME = re.compile(
    rf"\b(?:(?:on|at|near|from|in|by|of|via|to)\s+)?(?:the\s+)?(?P<name>{_NAME})\s+cam(?:era)?\b",
    _F,
)
_LIST_SEP = re.compile(r"\s*(?:,|\band\b|\bor\b|&|\+)\s*(?:(?:cameras?|cams?)[\s#:_-]*)?", _F)
_DANGLING = re.compile(
    r"^(?:\s|[,;:.-]|\b(?:and|or|near|on|at|in|from|by|who\s+was|seen|the|of)\b)+"
    r"|(?:\s|[,;:-]|\b(?:and|or|near|on|at|in|from|by|who\s+was|seen|the|of|was)\b)+$", _F,
)


class UnknownCamera(QueryError):
    """The query names a camera that does not exist (``name`` as written)."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown camera {name!r} in the query; known: "
                         f"{', '.join(sorted(known)) or '(none yet)'}")
        self.name = name


@dataclass(frozen=True)
class QueryPlan:
    """A query split into its description and its filters.

    text: the description left once filters are taken out (may be empty); cameras: the cameras
    to search (empty = all); start_ts_ns / end_ts_ns: the window, epoch ns, inclusive;
    min_track_s: shortest track kept; text_cameras: cameras the text named (before explicit
    ones replaced them); parsed: each filter as read from the text, for the response.
    """

    text: str
    cameras: tuple[str, ...] = ()
    start_ts_ns: int | None = None
    end_ts_ns: int | None = None
    min_track_s: float | None = None
    text_cameras: tuple[str, ...] = ()
    parsed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "text": self.text, "cameras": list(self.cameras),
            "since": None if self.start_ts_ns is None else self.start_ts_ns / 1e9,
            "until": None if self.end_ts_ns is None else self.end_ts_ns / 1e9,
            "min_track_s": self.min_track_s, "parsed": list(self.parsed),
        }

    def text_query(
        self, k: int, cameras: tuple[str, ...] | None = None, rerank: str | None = None
    ) -> TextQuery:
        """The search this plan asks for (``cameras`` replaces the plan's, e.g. a key's scope);
        QueryError when only filters are left and nobody is described."""
        if not self.text:
            raise QueryError(f"the query has only filters ({', '.join(self.parsed)}): describe "
                             "the person too")
        return TextQuery(text=self.text, k=k, cameras=self.cameras if cameras is None else cameras,
                         start_ts_ns=self.start_ts_ns, end_ts_ns=self.end_ts_ns,
                         min_track_s=self.min_track_s, rerank=rerank)


def resolve_timezone(name: str) -> tzinfo:
    """The tzinfo of an IANA name ("UTC", "Europe/Paris"); QueryError names a bad one."""
    try:
        return UTC if name.upper() == "UTC" else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise QueryError(f"unknown time zone {name!r}: {err}") from None


def time_text(ts_ns: int, tz: tzinfo) -> str:
    """A stored time as people read it: seconds into a clip (a gallery ingested without a start
    time), or a clock time in ``tz``."""
    if ts_ns < CLIP_TIME_NS:
        return f"{ts_ns / 1e9:.1f} s"
    return datetime.fromtimestamp(ts_ns / 1e9, tz).strftime("%Y-%m-%d %H:%M:%S")


def check_query_text(text: object, what: str = "query text") -> str:
    """``text`` normalised (NFKC, control characters as spaces, trimmed), or QueryError."""
    if not isinstance(text, str):
        raise QueryError(f"{what} must be a string, got {type(text).__name__}")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"{what} is {len(text)} characters; at most {MAX_QUERY_CHARS}")
    clean = unicodedata.normalize("NFKC", text)
    clean = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in clean)
    clean = " ".join(clean.split())
    if not clean:
        raise QueryError(f"{what} is empty")
    return clean[:MAX_QUERY_CHARS]


def plan_query(
    text: str,
    *,
    now: datetime | None = None,
    known_cameras: Sequence[str] | None = None,
    tz: str | tzinfo = "UTC",
    cameras: Sequence[str] = (),
    start_ts_ns: int | None = None,
    end_ts_ns: int | None = None,
    min_track_s: float | None = None,
) -> QueryPlan:
    """Split ``text`` into a description and filters; explicit filters replace parsed ones.

    ``now`` anchors "today" and "in the last 2 hours" (default: the current time);
    ``known_cameras`` lets names without a digit ("camera gate") be recognised and refuses
    unknown ones (None: any name with a digit is taken as it is written).
    """
    clean = check_query_text(text)
    zone = resolve_timezone(tz) if isinstance(tz, str) else tz
    now = now or datetime.now(zone)
    if now.tzinfo is None:
        now = now.replace(tzinfo=zone)
    now = now.astimezone(zone)
    reader = _Reader(clean, now, known_cameras)
    reader.read()
    plan = _merge(reader, cameras, start_ts_ns, end_ts_ns, min_track_s)
    log.debug("planned %r -> %s", text[:80], plan)
    return plan


def _merge(
    reader: _Reader,
    cameras: Sequence[str],
    start_ts_ns: int | None,
    end_ts_ns: int | None,
    min_track_s: float | None,
) -> QueryPlan:
    start = start_ts_ns if start_ts_ns is not None else reader.start
    end = end_ts_ns if end_ts_ns is not None else reader.end
    if start is not None and end is not None and start > end:
        raise QueryError(
            f"time window is the wrong way round: starts {_iso(start)} after it ends {_iso(end)}"
            + (f" (read from the text: {', '.join(reader.time_notes)})" if reader.time_notes else "")
        )
    if min_track_s is not None and not 0.0 <= min_track_s <= MAX_MIN_TRACK_S:
        raise QueryError(f"min_track_s must be in 0..{MAX_MIN_TRACK_S:.0f}, got {min_track_s}")
    text_cameras = tuple(dict.fromkeys(reader.cameras))
    return QueryPlan(
        text=reader.description(),
        cameras=tuple(dict.fromkeys(cameras)) if cameras else text_cameras,
        start_ts_ns=start,
        end_ts_ns=end,
        min_track_s=min_track_s if min_track_s is not None else reader.min_track_s,
        text_cameras=text_cameras,
        parsed=tuple(reader.notes),
    )


def _iso(ts_ns: int) -> str:
    try:
        return datetime.fromtimestamp(ts_ns / _NS, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{ts_ns / _NS:.0f} s"


def _number(word: str | None) -> float:
    if word is None:
        return 1.0
    return float(_WORD_NUMBERS.get(word.lower(), word))


def _camera_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return re.sub(r"^(?:camera|cam)(?=.)", "", key)


class _Reader:
    """Takes filters out of one cleaned query text, left to right by kind."""

    def __init__(self, text: str, now: datetime, known: Sequence[str] | None) -> None:
        self.text = text
        self.now = now
        self.known = None if known is None else tuple(known)
        self.cameras: list[str] = []
        self.start: int | None = None
        self.end: int | None = None
        self.min_track_s: float | None = None
        self.notes: list[str] = []
        self.time_notes: list[str] = []
        self._day: date | None = None

    def read(self) -> None:
        self._take(_MIN_TRACK, self._min_track)
        self._take(_DAY, self._day_word)
        self._take(_BETWEEN, self._between)
        self._take(_RANGE, self._between)
        self._take(_AFTER, lambda m: self._bound(m, "start"))
        self._take(_BEFORE, lambda m: self._bound(m, "end"))
        self._take(_LAST, self._last)
        if self._day is not None:  # a day alone is the whole day; with clock times, their day
            midnight = self._at(self._day, 0, 0, 0)
            self._narrow(midnight, midnight + 86_400 * _NS - 1, None)
        self._read_cameras()

    def description(self) -> str:
        text = re.sub(r"\s+", " ", self.text)
        text = re.sub(r"\s*([,;])(?:\s*[,;])+", r"\1", text)
        text = re.sub(r"\s+([,;.])", r"\1", text)
        prev = None
        while prev != text:
            prev, text = text, _DANGLING.sub("", text).strip()
        return text

    # -- taking spans out --------------------------------------------------------------------

    def _take(self, pattern: re.Pattern[str], handle) -> None:
        out, last = [], 0
        for m in pattern.finditer(self.text):
            if handle(m) is False:
                continue
            out.append(self.text[last : m.start()])
            out.append(" , ")
            last = m.end()
        out.append(self.text[last:])
        self.text = "".join(out)

    def _min_track(self, m: re.Match[str]) -> None:
        seconds = _number(m["n"]) * _UNITS_S[m["unit"].lower()]
        if seconds > MAX_MIN_TRACK_S:
            raise QueryError(f"{m[0].strip()!r}: a track length of at most "
                             f"{MAX_MIN_TRACK_S:.0f} s can be asked for")
        self.min_track_s = max(self.min_track_s or 0.0, seconds)
        self.notes.append(f"tracks of at least {seconds:g} s")

    def _day_word(self, m: re.Match[str]) -> None:
        if m["word"]:
            day = self.now.date() - timedelta(days=1 if m["word"].lower() == "yesterday" else 0)
        else:
            try:
                day = date.fromisoformat(m["iso"])
            except ValueError:
                raise QueryError(f"{m['iso']!r} is not a date (YYYY-MM-DD)") from None
        if self._day is not None and self._day != day:
            raise QueryError(f"the query names two days: {self._day} and {day}")
        self._day = day
        self._note(m[0].strip())

    def _between(self, m: re.Match[str]) -> None:
        a, b = self._clock(m["a"]), self._clock(m["b"])
        self._narrow(a, b + _NS - 1, m[0].strip())

    def _bound(self, m: re.Match[str], which: str) -> None:
        t = self._clock(m["a"])
        if which == "start":
            self._narrow(t, None, m[0].strip())
        else:
            self._narrow(None, t, m[0].strip())

    def _last(self, m: re.Match[str]) -> None:
        seconds = _number(m["n"]) * _UNITS_S[m["unit"].lower()]
        if seconds > MAX_RELATIVE_DAYS * 86_400:
            raise QueryError(f"{m[0].strip()!r} reaches back too far: at most "
                             f"{MAX_RELATIVE_DAYS} days")
        now_ns = self._ns(self.now)
        self._narrow(now_ns - int(seconds * _NS), now_ns, m[0].strip())

    def _note(self, what: str) -> None:
        self.notes.append(what)
        self.time_notes.append(what)

    def _narrow(self, start: int | None, end: int | None, note: str | None) -> None:
        """Intersect the window with [start, end]; a note records what the text said."""
        if start is not None:
            self.start = start if self.start is None else max(self.start, start)
        if end is not None:
            self.end = end if self.end is None else min(self.end, end)
        if note:
            self._note(note)
        if self.start is not None and self.end is not None and self.start > self.end:
            raise QueryError(
                f"time window is the wrong way round: {', '.join(self.time_notes)} leaves no "
                f"time between {_iso(self.start)} and {_iso(self.end)}"
            )

    def _clock(self, token: str) -> int:
        """Epoch ns of a clock time on the query's day."""
        t = token.lower().replace(".", "").replace(" ", "")
        if t in ("noon", "midnight"):
            h, mi, s = (12 if t == "noon" else 0), 0, 0
        else:
            ampm = t[-2:] if t.endswith(("am", "pm")) else None
            parts = (t[:-2] if ampm else t).split(":")
            h, mi = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
            s = int(parts[2]) if len(parts) > 2 else 0
            if ampm:
                if not 1 <= h <= 12:
                    raise QueryError(f"{token!r} is not a time of day (1-12 with am/pm)")
                h = h % 12 + (12 if ampm == "pm" else 0)
            if h > 23 or mi > 59 or s > 59:
                raise QueryError(f"{token!r} is not a time of day (00:00 to 23:59)")
        return self._at(self._day or self.now.date(), h, mi, s)

    def _at(self, day: date, h: int, mi: int, s: int) -> int:
        if not 1970 <= day.year <= 2200:
            raise QueryError(f"{day}: dates from 1970 to 2200 can be searched")
        try:
            local = datetime(day.year, day.month, day.day, h, mi, s, tzinfo=self.now.tzinfo)
            return self._ns(local)
        except (ValueError, OverflowError) as err:
            raise QueryError(f"bad time {day} {h:02d}:{mi:02d}: {err}") from None

    @staticmethod
    def _ns(moment: datetime) -> int:
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1000

    # -- cameras -----------------------------------------------------------------------------

    def _resolve(self, token: str) -> str | None:
        """The camera ``token`` names, None if it names none (a plain word)."""
        token = token.rstrip(".-_")
        if not token:
            return None
        has_digit = any(c.isdigit() for c in token)
        if self.known is None:
            return token if has_digit else None
        exact = [c for c in self.known if c.lower() == token.lower()]
        if exact:
            return exact[0]
        key = _camera_key(token)
        found = sorted({c for c in self.known if key and _camera_key(c) == key})
        if len(found) > 1:
            raise QueryError(f"camera {token!r} is ambiguous: {', '.join(found)}")
        if found:
            return found[0]
        if has_digit:
            raise UnknownCamera(token, self.known)
        return None

    def _read_cameras(self) -> None:
        out, last, pos = [], 0, 0
        while (m := _CAMERA.search(self.text, pos)) is not None:
            names, end = self._camera_list(m.end())
            if not names:
                pos = m.end()
                continue
            self.cameras.extend(names)
            self.notes.append(f"camera{'s' if len(names) > 1 else ''} {', '.join(names)}")
            out.append(self.text[last : m.start()] + " , ")
            last = pos = end
        out.append(self.text[last:])
        self.text = "".join(out)
        if self.known is not None:
            self._take(_CAMERA_AFTER_NAME, self._named_camera)

    def _camera_list(self, pos: int) -> tuple[list[str], int]:
        names: list[str] = []
        first = True
        while True:
            sep = None if first else _LIST_SEP.match(self.text, pos)
            start = pos if first else (sep.end() if sep else -1)
            m = re.compile(_NAME, _F).match(self.text, start) if start >= 0 else None
            if m is None:
                return names, pos
            resolved = self._resolve(m[0]) if first or any(c.isdigit() for c in m[0]) or (
                self.known is not None and m[0].lower() in {c.lower() for c in self.known}
            ) else None
            if resolved is None:
                return names, pos
            names.append(resolved)
            pos, first = m.end(), False

    def _named_camera(self, m: re.Match[str]) -> bool:
        name = m["name"]
        if name.lower() in ("the", "a", "an", "this", "that", "same", "other", "any"):
            return False
        resolved = self._resolve(name) if self.known is not None else None
        if resolved is None:
            return False
        self.cameras.append(resolved)
        self.notes.append(f"camera {resolved}")
        return True
