"""The operator's screen: pages for searching, reviewing a tracklet, watching cameras and alerts.

Served by ``refind api`` on the same origin as the JSON API, from server-rendered Jinja2
templates (``app/templates``), one small script and a style sheet (``app/static``), all in
the package: nothing is fetched from elsewhere at run time, and there is no build step. Every
search runs through the API's own functions (``refind.app.api.Operations``): the same key
scopes, the same checks, the same audit lines.

Pages:
- ``/``: one search box; the filters read from the words come back as chips that can be removed
  (each removal is a link: the filters live in the URL, so a search can be bookmarked); a photo
  search (file, drag-and-drop or paste, a box drawn to pick the person, an instruction or a
  garment photo); a grid of tracklet cards with the reasons each was chosen; "no one matches"
  with the nearest miss and what it lacked; "more"; "find similar" from any card (``?like=``).
- ``/tracks/{camera}/{track_id}``: the crops over time, the frame around a crop with its box,
  the track's clip, its times, looks and motion, and "forget this person" (with a reason).
- ``/cameras``: a tile per camera with its newest track and that frame, and its live state
  (from ``refind serve`` through ``api.serve_url``, else from Redis metadata: frames per second,
  drops, freshness, updated every 2 s); adding and removing cameras through serve.
- ``/alerts``: alerts as they arrive over server-sent events (``/v1/alerts/stream``).

A browser signs in once per session at ``/login`` with an API key: the key becomes a signed
session token in an HttpOnly, SameSite=Strict cookie (``refind.app.api_guard.Sessions``), which
the JSON routes accept too, so crops and clips load in ``<img>`` and ``<video>``. Forms that
change something are POSTs; a POST whose Origin is another site is refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

import cv2
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from refind.app.api import PHOTO_PATH, TextSearch, camera_report, clip_url, crop_url
from refind.app.api_guard import ApiError, Principal, RateLimited, Sessions
from refind.app.api_watch import alerts_path, newest_alerts, parse_cameras, visible
from refind.indexer.blobs import clip_path, context_path
from refind.indexer.live_search import GalleryUnavailable
from refind.indexer.query_plan import resolve_timezone, time_text
from refind.indexer.search import QueryError
from refind.indexer.watchlist import WatchStore
from refind.models.referring import describe_motion
from refind.streaming.clips import draw_box, scaled
from refind.streaming.config import NAME_PATTERN
from refind.streaming.records import CLIP_TIME_NS

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
PUBLIC_STATIC = {"ui.css"}  # the sign-in page's look; every other file needs a session
PAGE = 24  # cards per page; "more" asks for another page
_CAMERA = re.compile(NAME_PATTERN)  # what a camera's name may be: the only text notices echo
_SCORE_PREFIX = re.compile(r"^[a-z_]+ \d+\.\d+: ")  # a re-ranker's name and score
SSE_SECONDS = 25.0  # one alert stream lasts this long; the browser reconnects by itself
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self'; style-src 'self'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
       "base-uri 'none'")


class AlertHub:
    """Alerts handed to every open ``/v1/alerts/stream``: whatever calls ``publish`` (one call
    per alert, a JSON-able dict; watchlists, when they are built) reaches each open page."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self.published = 0

    def publish(self, alert: dict[str, Any]) -> None:
        self.published += 1
        for q in list(self._queues):
            if q.qsize() < 1000:  # a page that stopped reading loses alerts, not memory
                q.put_nowait(alert)

    async def stream(self, seconds: float) -> AsyncIterator[str]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues.add(q)
        try:
            yield "retry: 2000\nevent: hello\ndata: {}\n\n"
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while (left := end - loop.time()) > 0:
                try:
                    alert = await asyncio.wait_for(q.get(), timeout=min(left, 10.0))
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: alert\ndata: {json.dumps(alert)}\n\n"
        finally:
            self._queues.discard(q)


# ---- small helpers the templates use ------------------------------------------------------


def _who(request: Request) -> Principal | None:
    """The signed-in operator, or the anonymous one where the API allows it, else None."""
    found = request.app.state.sessions.principal(request.cookies.get(Sessions.COOKIE))
    if found is not None:
        return found
    try:
        return request.app.state.keys.authenticate(None)
    except ApiError:
        return None


class SignInNeeded(Exception):
    """A page asked for without a session: the browser goes to the sign-in, and back after."""


def _operator(request: Request) -> Principal:
    """The signed-in operator of a page (a FastAPI dependency); SignInNeeded without one."""
    who = _who(request)
    if who is None:
        raise SignInNeeded
    return who


Operator = Annotated[Principal, Depends(_operator)]


def _to_login(request: Request) -> RedirectResponse:
    """To the sign-in, coming back to this page after it (a form's POST comes back to the
    search page: the form is not sent again)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = "/"
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never another host (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _same_origin(request: Request) -> bool:
    """A POST from this site (or from a client that sends no Origin, like curl)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _seconds(text: str | None, tz_name: str, what: str) -> float | None:
    """A datetime-local value ("2026-12-06T14:00", in the search time zone) or plain seconds
    (a clip's time) -> epoch seconds; ApiError(400) names a bad one."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, f"{what} must be a date and time like 2026-12-06T14:00, "
                            f"got {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=resolve_timezone(tz_name))
    return when.timestamp()


def _local(seconds: float | None, tz_name: str) -> str:
    """Epoch seconds -> a datetime-local value, or the seconds of a clip time."""
    if seconds is None:
        return ""
    if seconds * 1e9 < CLIP_TIME_NS:
        return f"{seconds:g}"
    return datetime.fromtimestamp(seconds, resolve_timezone(tz_name)).strftime("%Y-%m-%dT%H:%M")


def _reasons(hit: dict[str, Any]) -> list[dict[str, Any]]:
    """A hit's reasons as chips: each term, marked when it was not seen."""
    out = []
    for text in hit.get("reasons") or [hit.get("reason", "")]:
        text = _SCORE_PREFIX.sub("", str(text))  # "compose 0.53: top black": the card has it
        for part in _split_terms(text):
            out.append({"text": part.replace(" ✗", ""), "missed": "✗" in part})
    return [r for r in out if r["text"]]


def _split_terms(text: str) -> list[str]:
    """Split on commas and semicolons outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch in ",;" and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def _forgot_note(params: Any) -> str | None:
    """The line shown after a forget (``?forgot=CAMERA/TRACK&vectors=N&crops=M``): composed
    here from a camera name (its own pattern) and numbers; other text from the URL is never
    shown."""
    camera, _, track = str(params.get("forgot", "")).rpartition("/")
    counts = [params.get("vectors", "0"), params.get("crops", "0")]
    if not _CAMERA.fullmatch(camera) or not track.isdigit() or not all(c.isdigit() for c in counts):
        return None
    return (f"Forgot {camera} track {track}: {counts[0]} vectors and {counts[1]} crops deleted, "
            "for good.")


def _thumbnail_data_url(data: bytes, box: str | None = None) -> str | None:
    """The uploaded photo, small, with the box drawn on it (when one was), as a data: URL to
    show beside its results."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    image, scale = scaled(image, 320)
    try:
        xyxy = [float(v) for v in (box or "").split(",")] if box else []
    except ValueError:
        xyxy = []
    if len(xyxy) == 4:
        image = image.copy()
        draw_box(image, xyxy, scale)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None


# ---- the pages ----------------------------------------------------------------------------


def install_ui(app: FastAPI) -> None:
    """Add the pages, the static files and the alert stream to the API's ``app``."""
    templates = Jinja2Templates(directory=str(TEMPLATES))
    ops = app.state.ops
    cfg = ops.cfg
    tz = cfg.search.timezone
    zone = resolve_timezone(tz)
    alerts = app.state.alerts = AlertHub()
    router = APIRouter(include_in_schema=False)

    @app.exception_handler(SignInNeeded)
    async def sign_in_first(request: Request, err: SignInNeeded) -> RedirectResponse:
        return _to_login(request)

    def when(seconds: float) -> str:
        return time_text(int(seconds * 1e9), zone)

    templates.env.globals |= {"when": when, "crop_url": crop_url}

    def page(request: Request, name: str, who: Principal | None, status: int = 200,
             **context: Any) -> HTMLResponse:
        response = templates.TemplateResponse(
            request, name, {"who": who, "nav": name.split(".")[0], **context},
            status_code=status)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    def cards(payload: dict[str, Any]) -> list[dict[str, Any]]:
        """The hits as cards; a card whose person (global id) has other hits here says so."""
        people = {p["global_id"]: p for p in payload.get("people", [])}
        out = []
        for rank, hit in enumerate(payload["hits"], 1):
            person = people.get(hit.get("global_id"))
            same = None
            if person is not None and len(person["tracklets"]) > 1:
                cams = person["cameras"]
                same = (f"person {person['global_id']}: {len(person['tracklets'])} tracklets "
                        f"here, {len(cams)} camera{'s' if len(cams) > 1 else ''}")
            out.append(hit | {"rank": rank, "chips": _reasons(hit), "person": same,
                              "url": f"/tracks/{quote(hit['camera'], safe='')}/{hit['track_id']}"})
        return out

    def nearest(payload: dict[str, Any]) -> dict[str, Any] | None:
        best = payload.get("best_candidate")
        if not best:
            return None
        return best | {"chips": _reasons(best),
                       "url": f"/tracks/{quote(best['camera'], safe='')}/{best['track_id']}"}

    # -- signing in ---------------------------------------------------------------------------

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return page(request, "login.html", None, next=_safe_next(next), error=None)

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await request.form()
        target = _safe_next(str(form.get("next") or "/"))
        if not _same_origin(request):
            return page(request, "login.html", None, 403, next=target,
                        error="This sign-in came from another site and was refused.")
        address = request.client.host if request.client else "?"
        try:
            who = app.state.keys.authenticate(str(form.get("key") or "").strip() or None,
                                              f"address {address}")
        except RateLimited as err:
            ops.audit.write({"key": None, "endpoint": "/login", "status": 429,
                             "address": address})
            response = page(request, "login.html", None, 429, next=target,
                            error=f"Too many wrong keys from here: {err.message}.")
            response.headers["Retry-After"] = str(err.retry_after_s)
            return response
        except ApiError as err:
            ops.audit.write({"key": None, "endpoint": "/login", "status": 401,
                             "error": err.message})
            return page(request, "login.html", None, 401, next=target,
                        error="That key is not valid. Check it and try again (keys are listed "
                              "as sha256 hashes under api.keys in the config).")
        token = app.state.sessions.start(who)
        ops.audit.write({"key": who.name, "endpoint": "/login", "status": 200})
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(Sessions.COOKIE, token, httponly=True, samesite="strict",
                            secure=cfg.api.secure_cookies or request.url.scheme == "https",
                            path="/")
        return response

    @router.post("/logout")
    def logout(request: Request) -> Response:
        app.state.sessions.end(request.cookies.get(Sessions.COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(Sessions.COOKIE, path="/")
        return response

    # -- search ----------------------------------------------------------------------------

    def search_context(request: Request, who: Principal) -> dict[str, Any]:
        """Everything the search page shows for the query in the URL."""
        params = request.query_params
        q = params.get("q", "")
        cameras = [c for c in params.getlist("camera") if c.strip()]
        k = params.get("k", str(PAGE))
        context = _empty(who) | {
            "q": q, "cameras": cameras, "since": params.get("since", ""),
            "until": params.get("until", ""), "min_track": params.get("min_track", ""),
            "flash": _forgot_note(params), "like": params.get("like", ""),
        }
        try:
            k_value = max(1, min(1000, int(k)))
        except ValueError:
            k_value = PAGE
        context["k"] = k_value
        try:
            if context["like"]:
                camera, _, track = context["like"].rpartition("/")
                if not camera or not track.isdigit():
                    raise ApiError(400, f"like={context['like']!r}: expected CAMERA/TRACK")
                result = ops.similar_search(who, camera, int(track), k_value, "/ (find similar)")
                context |= {"mode": "like", "seed": {"camera": camera, "track_id": int(track),
                                                     "url": f"/tracks/{quote(camera, safe='')}/"
                                                            f"{int(track)}"}}
                payload = ops.respond(result)
            elif q.strip():
                since = _seconds(context["since"], tz, "since")
                until = _seconds(context["until"], tz, "until")
                min_track = float(context["min_track"]) if context["min_track"] else None
                body = TextSearch(text=q, k=k_value, cameras=cameras, since=since,
                                     until=until, min_track_s=min_track)
                result, plan = ops.text_search(who, body, "/ (text)")
                payload = ops.respond(result) | {"plan": plan}
                context["chips"] = filter_chips(q, plan, payload.get("understood"))
                context["read"] = payload.get("understood")
            else:
                return context
        except ValidationError as err:
            context["error"] = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                                         for e in err.errors())
            return context
        except (ApiError, QueryError, ValueError, GalleryUnavailable) as err:
            context["error"] = getattr(err, "message", str(err))
            return context
        context["results"] = cards(payload)
        context["message"] = payload.get("message")
        context["nearest"] = nearest(payload)
        context["took_ms"] = payload.get("took_ms", {}).get("total")
        context["more_url"] = (request.url.path + "?" + urlencode(
            [(n, v) for n, v in params.multi_items() if n != "k"] + [("k", k_value + PAGE)])
            if len(payload["hits"]) >= k_value and k_value + PAGE <= 1000 else None)
        return context

    def filter_chips(q: str, plan: dict[str, Any], understood: dict[str, Any] | None
                     ) -> list[dict[str, Any]]:
        """Chips of what the query was read as. Removing a filter is a link: the text without
        its filters plus the other filters as URL fields (so they stay removable one by one)."""
        base = {"q": plan.get("text") or q, "camera": list(plan.get("cameras") or []),
                "since": _local(plan.get("since"), tz), "until": _local(plan.get("until"), tz),
                "min_track": "" if plan.get("min_track_s") is None else
                f"{plan['min_track_s']:g}"}

        def without(field: str, value: str | None = None) -> str:
            fields = dict(base)
            if field == "camera":
                fields["camera"] = [c for c in base["camera"] if c != value]
            else:
                fields[field] = ""
            pairs = [("q", fields["q"])] + [("camera", c) for c in fields["camera"]]
            pairs += [(n, fields[n]) for n in ("since", "until", "min_track") if fields[n]]
            return "/?" + urlencode(pairs)

        chips = [{"kind": "camera", "label": f"camera {c}", "remove": without("camera", c)}
                 for c in base["camera"]]
        if plan.get("since") is not None:
            chips.append({"kind": "time", "label": f"from {when(plan['since'])}",
                          "remove": without("since")})
        if plan.get("until") is not None:
            chips.append({"kind": "time", "label": f"until {when(plan['until'])}",
                          "remove": without("until")})
        if plan.get("min_track_s") is not None:
            chips.append({"kind": "length", "label": f"tracks ≥ {plan['min_track_s']:g} s",
                          "remove": without("min_track")})
        if understood:
            chips += [{"kind": "term", "label": t} for t in understood.get("terms", [])]
            if understood.get("ignored"):
                chips.append({"kind": "ignored",
                              "label": "ignored: " + ", ".join(understood["ignored"])})
        return chips

    @router.get("/", response_class=HTMLResponse)
    def search_page(request: Request, who: Operator) -> Response:
        return page(request, "search.html", who, **search_context(request, who))

    @router.post(PHOTO_PATH, response_class=HTMLResponse)
    async def photo_search(request: Request, who: Operator) -> Response:
        if not _same_origin(request):
            return page(request, "search.html", who, 403, **_empty(who),
                        error="This search came from another site and was refused.")
        form = await request.form()
        image = form.get("image")
        upload = image if isinstance(image, UploadFile) and image.filename else None
        garment = form.get("instruction_image")
        fields: dict[str, Any] = {
            "k": str(form.get("k") or PAGE), "box": str(form.get("box") or "") or None,
            "cameras": ",".join(str(c) for c in form.getlist("camera") if str(c).strip()) or None,
            "instruction": str(form.get("instruction") or "") or None,
            "instruction_image": garment if isinstance(garment, UploadFile) and
            garment.filename else None,
        }
        context = _empty(who) | {"mode": "photo", "instruction": fields["instruction"] or "",
                                 "cameras": [c for c in (fields["cameras"] or "").split(",") if c]}
        try:
            if upload is None:
                raise ApiError(400, "choose a photo first: drop it here, paste it, or pick a file")
            data = await upload.read()
            await upload.seek(0)
            context["photo"] = await asyncio.to_thread(_thumbnail_data_url, data, fields["box"])
            result = await asyncio.to_thread(ops.image_search, who, upload, fields, PHOTO_PATH)
        except ApiError as err:
            return page(request, "search.html", who, err.status, **context, error=err.message)
        except GalleryUnavailable as err:
            return page(request, "search.html", who, 503, **context, error=str(err))
        payload = ops.respond(result)
        context |= {"results": cards(payload), "message": payload.get("message"),
                    "nearest": nearest(payload), "took_ms": payload.get("took_ms", {}).get("total")}
        return page(request, "search.html", who, **context)

    def _empty(who: Principal) -> dict[str, Any]:
        """The search page with nothing asked yet."""
        try:
            known = [c for c in ops.live.cameras() if who.sees(c)]
        except GalleryUnavailable:  # a fresh install: the page still shows, saying so below
            known = []
        return {"q": "", "cameras": [], "since": "", "until": "", "min_track": "", "k": PAGE,
                "known_cameras": known, "results": None, "error": None, "chips": [],
                "read": None, "mode": "text", "flash": None, "like": "", "more_url": None}

    # -- a tracklet --------------------------------------------------------------------------

    @router.get("/tracks/{camera}/{track_id}", response_class=HTMLResponse)
    def track_page(request: Request, who: Operator, camera: str, track_id: int) -> Response:
        if not who.sees(camera):
            return page(request, "error.html", who, 403,
                        error=f"key {who.name!r} may not view camera {camera!r}")
        try:
            found = ops.live.track(camera, track_id)
        except GalleryUnavailable as err:
            return page(request, "error.html", who, 503, error=str(err))
        if found is None:
            return page(request, "error.html", who, 404,
                        error=f"camera {camera!r} has no track {track_id} (it may have been "
                              "forgotten, or removed by retention)")
        summary, records = found
        crops = [{"ts": r.ts_ns / 1e9, "frame_index": r.frame_index,
                  "url": crop_url(r.crop_path),
                  "context_url": crop_url(context_path(r.crop_path))
                  if ops.crops.exists(context_path(r.crop_path)) else None,
                  "best": r.crop_path == summary.best.crop_path} for r in records]
        best = next((c for c in crops if c["best"]), crops[0] if crops else None)
        clip = clip_url(camera, track_id) if ops.crops.exists(clip_path(camera, track_id)) else None
        looks = ops.live.describe_track(records)
        motion = describe_motion(summary.motion) if summary.motion is not None else []
        duration = (summary.end_ts_ns - summary.start_ts_ns) / 1e9
        person = None
        found_person = request.app.state.global_ids.person(camera, track_id, ops.live.model_id)
        if found_person is not None:
            gid, keys = found_person
            seen = [(c, t) for c, t in keys if who.sees(c) and (c, t) != (camera, track_id)]
            person = {"global_id": gid, "cameras": sorted({c for c, _ in seen}),
                      "tracklets": [{"camera": c, "track_id": t,
                                     "url": f"/tracks/{quote(c, safe='')}/{t}"}
                                    for c, t in seen]}
        return page(request, "track.html", who, camera=camera, track_id=track_id,
                    start=summary.start_ts_ns / 1e9, end=summary.end_ts_ns / 1e9,
                    duration=duration, n_crops=summary.n_crops, crops=crops, best=best,
                    clip=clip, looks=looks, motion=motion, person=person,
                    like_url="/?" + urlencode({"like": f"{camera}/{track_id}"}),
                    may_forget=who.may_forget, may_watch=who.may_manage_watches,
                    scope=",".join(sorted(who.cameras)) if who.cameras is not None else "",
                    error=None)

    @router.post("/tracks/{camera}/{track_id}/forget", response_class=HTMLResponse)
    async def forget(request: Request, who: Operator, camera: str, track_id: int) -> Response:
        if not _same_origin(request):
            return page(request, "error.html", who, 403,
                        error="This request came from another site and was refused.")
        form = await request.form()
        if form.get("confirm") != "yes":
            return page(request, "error.html", who, 400,
                        error="Tick the box to confirm: forgetting deletes this person's crops, "
                              "vectors and clip for good.")
        try:
            report = await asyncio.to_thread(ops.forget, who, camera, track_id,
                                             str(form.get("reason") or ""),
                                             f"/tracks/{camera}/{track_id}/forget")
        except ApiError as err:
            return page(request, "error.html", who, err.status, error=err.message)
        done = {"forgot": f"{camera}/{track_id}", "vectors": report["vectors_deleted"],
                "crops": report["crop_files_deleted"]}
        return RedirectResponse("/?" + urlencode(done), status_code=303)

    # -- watches -----------------------------------------------------------------------------

    @router.post("/watches/add", response_class=HTMLResponse)
    async def add_watch_form(request: Request, who: Operator) -> Response:
        """A watch from the alerts page (a description) or a tracklet page (its best crop as
        the photo); the same checks and audit as ``POST /v1/watches``."""
        if not _same_origin(request):
            return page(request, "error.html", who, 403,
                        error="This request came from another site and was refused.")
        form = await request.form()
        name = str(form.get("name") or "").strip()
        source = str(form.get("from_track") or "")
        try:
            threshold = float(str(form.get("threshold") or "0.9"))
        except ValueError:
            return page(request, "error.html", who, 400, error="threshold must be a number "
                        "between 0 and 1, e.g. 0.9")
        cameras = parse_cameras(str(form.get("cameras") or ""))
        image = None
        try:
            if source:
                camera, _, track = source.rpartition("/")
                if not camera or not track.isdigit() or not who.sees(camera):
                    raise ApiError(400, f"from_track={source!r}: expected a CAMERA/TRACK you "
                                        "may see")
                found = ops.live.track(camera, int(track))
                if found is None:
                    raise ApiError(404, f"camera {camera!r} has no track {track}")
                image = ops.crops.read_bytes(found[0].best.crop_path)
            watches = request.app.state.watches
            await asyncio.to_thread(
                watches.make, who, name, text=None if source else str(form.get("text") or ""),
                image=image, threshold=threshold, cameras=cameras, endpoint="/watches/add",
                source=source or None)
        except ApiError as err:
            return page(request, "error.html", who, err.status, error=err.message)
        return RedirectResponse("/alerts?" + urlencode({"watched": name}), status_code=303)

    @router.post("/watches/{name}/remove", response_class=HTMLResponse)
    async def remove_watch_form(request: Request, who: Operator, name: str) -> Response:
        if not _same_origin(request):
            return page(request, "error.html", who, 403,
                        error="This request came from another site and was refused.")
        try:
            await asyncio.to_thread(request.app.state.watches.drop, who, name,
                                    "/watches/{name}/remove")
        except ApiError as err:
            return page(request, "error.html", who, err.status, error=err.message)
        return RedirectResponse("/alerts?" + urlencode({"unwatched": name}), status_code=303)

    # -- cameras and alerts ------------------------------------------------------------------

    @router.get("/cameras", response_class=HTMLResponse)
    def cameras_page(request: Request, who: Operator) -> Response:
        return cameras_view(request, who)

    def cameras_view(request: Request, who: Principal, error: str | None = None,
                     status: int = 200) -> Response:
        added, removed = (request.query_params.get(k, "") for k in ("added", "removed"))
        flash = (f"Added camera {added}: it shows here once it is running."
                 if _CAMERA.fullmatch(added) else
                 f"Removed camera {removed}; its stored tracks stay searchable."
                 if _CAMERA.fullmatch(removed) else None)
        try:
            tiles = [t for t in camera_report(cfg, ops.live, ops.crops) if who.sees(t["camera"])]
        except ApiError as err:  # serve did not answer: what is stored, and why no live state
            error = err.message
            tiles = [t for t in camera_report(cfg.model_copy(update={"api": cfg.api.model_copy(
                update={"serve_url": None})}), ops.live, ops.crops) if who.sees(t["camera"])]
        return page(request, "cameras.html", who, status, tiles=tiles,
                    serve=bool(cfg.api.serve_url),
                    live_link=bool(cfg.api.serve_url) or cfg.metadata.type == "redis",
                    manage=who.may_manage_cameras and bool(cfg.api.serve_url), error=error,
                    flash=flash)

    @router.post("/cameras/add")
    async def add_camera(request: Request, who: Operator) -> Response:
        form = await request.form()
        name, url = str(form.get("name") or "").strip(), str(form.get("url") or "").strip()
        camera: dict[str, object] = {"name": name, "url": url}
        if str(form.get("sample_fps") or "").strip():
            camera["sample_fps"] = str(form.get("sample_fps")).strip()
        return await camera_change(request, who, "POST", name, camera)

    @router.post("/cameras/{name}/remove")
    async def remove_camera(request: Request, who: Operator, name: str) -> Response:
        return await camera_change(request, who, "DELETE", name, None)

    async def camera_change(request: Request, who: Principal, method: str, name: str,
                            camera: dict[str, object] | None) -> Response:
        if not _same_origin(request):
            return page(request, "error.html", who, 403,
                        error="This request came from another site and was refused.")
        try:
            if not name:
                raise ApiError(400, "a camera needs a name and a URL (rtsp://, http(s)://, "
                                    "udp:// or a file)")
            await asyncio.to_thread(ops.manage_camera, who, method, name, camera,
                                    f"/cameras ({'add' if method == 'POST' else 'remove'})")
        except ApiError as err:
            return cameras_view(request, who, err.message, err.status)
        done = {"added" if method == "POST" else "removed": name}
        return RedirectResponse("/cameras?" + urlencode(done), status_code=303)

    @router.get("/alerts", response_class=HTMLResponse)
    def alerts_page(request: Request, who: Operator) -> Response:
        recent = [a for a in newest_alerts(alerts_path(cfg), 200)
                  if who.sees(str(a.get("camera", "")))][:50]
        watches = [w for w in WatchStore.in_data_dir(cfg.data_dir).all().values()
                   if visible(who, w)]
        params = request.query_params
        flash = None  # composed here, echoing only a watch-shaped name
        for key, what in (("watched", "Watching for {}: alerts appear here."),
                          ("unwatched", "Removed watch {}.")):
            name = params.get(key, "")
            if re.fullmatch(NAME_PATTERN, name):
                flash = what.format(name)
        return page(request, "alerts.html", who, recent=recent, watches=watches, flash=flash,
                    may_watch=who.may_manage_watches,
                    scope=",".join(sorted(who.cameras)) if who.cameras is not None else "")

    @app.get("/v1/alerts/stream", summary="Alerts as server-sent events (watchlists publish)",
             response_class=StreamingResponse)
    def alert_stream(request: Request) -> StreamingResponse:
        who = _who(request) or app.state.keys.authenticate(request.headers.get("x-api-key"))
        stream = alerts.stream(SSE_SECONDS)

        async def visible() -> AsyncIterator[str]:
            async for chunk in stream:
                if chunk.startswith("event: alert"):
                    camera = json.loads(chunk.split("data: ", 1)[1]).get("camera", "")
                    if not who.sees(str(camera)):
                        continue
                yield chunk

        return StreamingResponse(visible(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    # -- static files ----------------------------------------------------------------------

    types = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}

    @router.get("/static/{name}")
    def static(request: Request, name: str) -> Response:
        path = (STATIC / name).resolve()
        if path.parent != STATIC or not path.is_file() or path.suffix not in types:
            return Response("not found", status_code=404, media_type="text/plain")
        if name not in PUBLIC_STATIC and _who(request) is None:
            return Response("sign in first", status_code=401, media_type="text/plain")
        return Response(path.read_bytes(), media_type=types[path.suffix],
                        headers={"Cache-Control": "private, max-age=300"})

    app.include_router(router)
