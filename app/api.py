"""The HTTP search API: find a person by photo, look at tracks and crops, over a live gallery.

Endpoints (``api.host``:``api.port``; every ``/v1`` call needs an ``X-API-Key`` header):
- ``POST /v1/search/image``: multipart ``image`` plus optional form fields ``k``, ``cameras``
  (comma list), ``since``/``until`` (seconds), ``box`` (``x1,y1,x2,y2``), ``min_track_s``,
  ``instruction`` (text) or an ``instruction_image`` file (a garment), ``task`` and ``rerank``;
  returns ranked ``hits`` (each with ``thumbnail_url``, ``reason`` and ``reasons``), ``message``
  and ``took_ms``. Audited.
- ``POST /v1/search/text``: JSON ``{text, k, cameras, since, until, min_track_s, rerank}``; the
  text's own filters ("on camera 2 after 14:00") are read by ``refind.indexer.query_plan`` (explicit
  fields win) and the key's scope applies to them too. Returns ``hits``, ``plan`` (what was
  read), ``message`` (e.g. "no tracklet matches ...") and ``took_ms``. Audited.
- ``GET /v1/tracks/{camera}/{track_id}``: a track's span and its stored crops.
- ``GET /v1/crops/{path}``: one stored crop, ``image/jpeg``.
- ``GET /v1/cameras``: cameras with stored tracks that the key may see.
- ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /openapi.json``: no key needed.

A key's cameras bound everything it does: a search runs only over them (inside the FAISS
filter, so k hits still come back), and naming any other camera is 403. Refusals are 4xx with
``{"error": "..."}``; a search that fails leaves nothing behind but its audit line.

Example:
    >>> app = create_app(load_config("configs/api.yaml"))                     # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8090)                          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import posixpath
import re
import secrets
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from fastapi import Depends, FastAPI, File, Form, Header, Path, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException as StarletteHTTPException

from refind.app.api_guard import (
    ApiError,
    AuditLog,
    KeyRing,
    Principal,
    RateLimit,
    RateLimited,
    RequestMetrics,
    Sessions,
    UploadLimit,
    check_camera_url,
)
from refind.app.config import ApiKeyConfig
from refind.config import RefindConfig
from refind.indexer.blobs import CropStore, CropStoreError, clip_path, context_path, safe_name
from refind.indexer.forget import UnknownTrackError
from refind.indexer.gallery_store import GalleryLockedError
from refind.indexer.identity_state import GlobalIds, people_of
from refind.indexer.live_search import GalleryUnavailable, LiveSearch, SearchResult
from refind.indexer.metadata import TrackSummary
from refind.indexer.query_plan import MAX_MIN_TRACK_S, UnknownCamera, check_query_text, plan_query
from refind.indexer.search import QueryError, decode_query_image
from refind.models.base import ModelInputError, ModelUnavailable
from refind.models.registry import RERANKER_NAMES, RegistryError
from refind.models.store import ModelStoreError
from refind.streaming.boxes import crop_box
from refind.streaming.config import ConfigError
from refind.streaming.metrics import CONTENT_TYPE, Metrics
from refind.streaming.records import CropRecord, ImageQuery, TextQuery, TrackletHit

Q = TypeVar("Q", ImageQuery, TextQuery)

log = logging.getLogger(__name__)

SEARCH_PATH = "/v1/search/image"
TEXT_PATH = "/v1/search/text"
SIMILAR_PATH = "/v1/tracks/{camera}/{track_id}/similar"
FORGET_PATH = "/v1/tracks/{camera}/{track_id}/forget"
PHOTO_PATH = "/ui/search/photo"  # the web UI's photo search form (refind.app.web)
SERVE_TIMEOUT_S = 5.0  # a call to refind serve's control port
INSTRUCTION_FIELDS = ("min_track_s", "instruction", "instruction_image", "task", "rerank")
MAX_TEXT_BODY_BYTES = 64 * 1024  # a 1000-character query and its filters fit many times over
MAX_SECONDS = 4e9  # timestamps are int64 nanoseconds (up to 9.2e9 s): year 2096 is plenty
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small text fields

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key of api.keys")


def _principal(request: Request, key: Annotated[str | None, Security(_api_key)]) -> Principal:
    """The caller: by its X-API-Key header, else by its web UI session cookie."""
    keys: KeyRing = request.app.state.keys
    if not key:
        sessions: Sessions = request.app.state.sessions
        found = sessions.principal(request.cookies.get(Sessions.COOKIE))
        if found is not None:
            return found
    return keys.authenticate(key, f"address {request.client.host if request.client else '?'}")


Caller = Annotated[Principal, Depends(_principal)]


def _check_startable(cfg: RefindConfig) -> None:
    if not cfg.api.keys and not cfg.api.allow_anonymous:
        raise ConfigError(
            "api.keys is empty, so the API refuses to start: add a key (name, key_sha256 = "
            "sha256 hex of the key, cameras) or set api.allow_anonymous: true (every caller "
            "then sees every camera; for loopback development only)"
        )


# ---- form parsing: each field's own error message ------------------------------------------


def _parse_k(text: str | None) -> int:
    if text is None or text.strip() == "":
        return 10
    try:
        k = int(text.strip())
    except ValueError:
        raise ApiError(400, f"k must be an integer in 1..1000, got {text!r}") from None
    if not 1 <= k <= 1000:
        raise ApiError(400, f"k must be in 1..1000, got {k}")
    return k


def _parse_seconds(text: str | None, name: str) -> int | None:
    """Seconds as given -> nanoseconds, or None when the field is absent or empty."""
    if text is None or text.strip() == "":
        return None
    try:
        value = float(text.strip())
    except ValueError:
        raise ApiError(400, f"{name} must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= MAX_SECONDS:
        raise ApiError(400, f"{name} must be seconds in 0..{MAX_SECONDS:.0e}, got {text!r}")
    return int(value * 1e9)


def _parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None or text.strip() == "":
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ApiError(400, f"box must be x1,y1,x2,y2 in pixels, got {text!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ApiError(400, f"box must be four finite numbers x1,y1,x2,y2, got {text!r}")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise ApiError(400, f"box {text!r} has zero or negative size")
    return x1, y1, x2, y2


def _parse_cameras(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))


def _parse_min_track(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0.0 <= value <= MAX_MIN_TRACK_S:
        raise ApiError(400, f"min_track_s must be seconds in 0..{MAX_MIN_TRACK_S:.0f}, "
                            f"got {text!r}")
    return value


def _parse_rerank(text: str | None) -> str | None:
    if text is None or text.strip() == "":
        return None
    if text.strip() not in RERANKER_NAMES:
        raise ApiError(400, f"unknown rerank {text!r}; valid: {', '.join(RERANKER_NAMES)}")
    return text.strip()


RerankerName = Literal[RERANKER_NAMES]  # type: ignore[valid-type]  # the registry's names


class TextSearch(BaseModel):
    """The body of ``POST /v1/search/text``."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., description="Who to find, with optional filters in words: 'woman "
                      "with a backpack, red top, on camera 2, after 14:00' (1..1000 characters)")
    k: int = Field(10, ge=1, le=1000, description="Tracklets returned")
    cameras: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=256, description="Only these cameras (replace any "
        "the text names); default: the text's, else every camera the key sees")
    since: float | None = Field(None, ge=0.0, le=MAX_SECONDS, allow_inf_nan=False,
                                description="Earliest time, epoch seconds (replaces the text's)")
    until: float | None = Field(None, ge=0.0, le=MAX_SECONDS, allow_inf_nan=False,
                                description="Latest time, epoch seconds (replaces the text's)")
    min_track_s: float | None = Field(None, ge=0.0, le=MAX_MIN_TRACK_S, allow_inf_nan=False,
                                      description="Only tracks seen at least this long")
    rerank: RerankerName | None = Field(None, description="Re-ranker; default search.rerank")


class ErrorBody(BaseModel):
    """Every refusal: one sentence naming the problem and, where there is one, the fix."""

    error: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": what} for code, what in (
        (400, "Bad input: the message names the field and what it takes"),
        (401, "Missing or unknown API key (X-API-Key), and no signed-in session"),
        (403, "The key may not do this, or not on this camera"),
        (404, "No such camera, track, crop or clip"),
        (409, "Not possible in this deployment: a re-ranker or model it has not set up, or no "
              "refind serve linked (the message names the setting)"),
        (413, "Body over the limit (api.max_upload_mb, api.max_body_kb)"),
        (422, "The request does not match the schema"),
        (429, "Over the key's api.searches_per_min: retry after Retry-After seconds"),
        (502, "refind serve refused"),
        (503, "No gallery yet, or refind serve does not answer"),
    )
}


class ForgetBody(BaseModel):
    """The body of ``POST /v1/tracks/{camera}/{track_id}/forget``."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(..., min_length=1, max_length=500,
                        description="Why this person is forgotten (kept in the audit log)")


@dataclass(frozen=True)
class Operations:
    """What the API does, for the web UI's pages to do the same way (same checks, same audit)."""

    cfg: RefindConfig
    live: LiveSearch
    crops: CropStore
    text_search: Callable[..., tuple[SearchResult, dict[str, object]]]
    image_search: Callable[..., SearchResult]
    similar_search: Callable[..., SearchResult]
    forget: Callable[..., dict[str, object]]
    respond: Callable[[SearchResult], dict[str, object]]
    audit: AuditLog
    manage_camera: Callable[..., dict[str, object]]


# ---- response pieces -----------------------------------------------------------------------


def clip_url(camera: str, track_id: int) -> str:
    return f"/v1/clips/{quote(camera, safe='')}/{int(track_id)}"


def byte_range(data: bytes, media_type: str, header: str | None) -> Response:
    """``data``, or the one byte range a ``Range: bytes=a-b`` header asks for (206): what a
    browser's video element needs to seek."""
    size = len(data)
    base = {"Accept-Ranges": "bytes", "Cache-Control": "private"}
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if m is None or (not m[1] and not m[2]):
        return Response(data, media_type=media_type, headers=base)
    if m[1]:
        start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
    else:  # the last N bytes
        start, end = max(0, size - int(m[2])), size - 1
    if start >= size:  # past the end: unsatisfiable
        return Response(status_code=416, headers=base | {"Content-Range": f"bytes */{size}"})
    if start > end:  # "bytes=5-3" is not a valid range (RFC 9110 14.1.1): the whole of it
        return Response(data, media_type=media_type, headers=base)
    return Response(data[start:end + 1], status_code=206, media_type=media_type,
                    headers=base | {"Content-Range": f"bytes {start}-{end}/{size}"})


def camera_report(cfg: RefindConfig, live: LiveSearch, crops: CropStore) -> list[dict[str, object]]:
    """Per camera: its newest stored track and that crop's frame, and its live state: from
    ``refind serve`` (``api.serve_url``: state, frames per second, drops, freshness) or from
    Redis when metadata is there (state, frames in and dropped, reconnects, when)."""
    rows: dict[str, dict[str, object]] = {}
    for item in live.overview():
        newest = item["newest"]
        row: dict[str, object] = {"camera": item["camera"], "state": None, "newest": None}
        if isinstance(newest, TrackSummary):
            best = newest.best
            context = context_path(best.crop_path)
            row["newest"] = {
                "track_id": newest.track_id, "end_ts": newest.end_ts_ns / 1e9,
                "thumbnail_url": crop_url(best.crop_path),
                "frame_url": crop_url(context) if crops.exists(context) else None,
            }
        rows[str(item["camera"])] = row
    if cfg.metadata.type == "redis":
        from refind.indexer.redis_meta import MetadataUnavailable, RedisMetadata

        try:
            entries = RedisMetadata(cfg.metadata).cameras()  # type: ignore[arg-type]
        except MetadataUnavailable as err:
            entries = []
            log.warning("camera status: redis unavailable: %s", err)
        for e in entries:
            row = rows.setdefault(e.name, {"camera": e.name, "newest": None})
            row |= {"state": str(e.state), "message": e.message,
                    "frames_in": e.counters.frames_in, "frames_dropped": e.counters.frames_dropped,
                    "reconnects": e.counters.reconnects, "updated": e.updated_ns / 1e9}
    if cfg.api.serve_url:
        for name, report in serve_call(cfg, "GET", "/cameras").items():
            row = rows.setdefault(name, {"camera": name, "newest": None})
            if "state" not in report:  # serve could not reach the camera's actor
                row |= {"state": "failed", "message": str(report.get("error", ""))}
                continue
            fresh = report.get("freshness") or {}
            counts = fresh.get("counts") or []
            row |= {"state": report["state"],
                    "message": report.get("error") or report.get("message", ""),
                    "frames_in": report["frames_in"], "frames_dropped": report["frames_dropped"],
                    "rate_fps": report["rate_fps"], "crops_stored": report["crops_stored"],
                    "freshness_s": fresh.get("total", 0.0) / sum(counts) if sum(counts) else None,
                    "latency_p95_s": report.get("latency_p95_s"), "updated": time.time()}
    return [rows[name] for name in sorted(rows)]


def serve_call(cfg: RefindConfig, method: str, path: str,
               body: dict[str, object] | None = None) -> dict[str, Any]:
    """A call to ``refind serve``'s control port (``api.serve_url``); its refusals come back as
    ApiError with serve's own message, an unreachable serve as 503 naming the URL."""
    base = (cfg.api.serve_url or "").rstrip("/")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=SERVE_TIMEOUT_S) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read()).get("error", str(err))
        except ValueError:
            message = str(err)
        raise ApiError(err.code if 400 <= err.code < 500 else 502,
                       f"refind serve refused: {message}") from None
    except (OSError, ValueError) as err:
        raise ApiError(503, f"refind serve at {base} (api.serve_url) did not answer: {err}; is "
                            "it running?") from None


def crop_url(rel: str) -> str:
    return "/v1/crops/" + quote(rel, safe="/")


def reason(hit: TrackletHit, aggregation: str) -> str:
    if hit.reasons:  # re-ranked: the re-ranker's words
        return "; ".join(hit.reasons)
    how = "its best crop" if aggregation == "max" else "mean of its best two matching crops"
    return (f"appearance similarity {hit.score:.2f} ({how}) over a track of {hit.n_crops} "
            f"stored crop{'s' if hit.n_crops != 1 else ''}")


def _crop_json(r: CropRecord) -> dict[str, object]:
    return {
        "frame_index": r.frame_index, "ts": r.ts_ns / 1e9,
        "xyxy": [round(v, 1) for v in r.xyxy], "quality": round(r.quality, 4),
        "confidence": round(r.confidence, 4), "url": crop_url(r.crop_path),
    }


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "X-API-Key"} if err.status == 401 else None
        if isinstance(err, RateLimited):
            headers = {"Retry-After": str(err.retry_after_s)}
        return _error(err.status, err.message, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                 for e in err.errors()]
        return _error(422, "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), err.headers)

    @app.exception_handler(GalleryUnavailable)
    async def no_gallery(request: Request, err: GalleryUnavailable) -> JSONResponse:
        return _error(503, str(err))


# ---- the app -------------------------------------------------------------------------------


def create_app(
    cfg: RefindConfig, engine_factory: Callable[[RefindConfig], LiveSearch] = LiveSearch.from_config
) -> FastAPI:
    """The API over ``cfg.data_dir``'s gallery; raises ConfigError when no key is configured."""
    _check_startable(cfg)
    keys = KeyRing.from_config(cfg.api)
    audit = AuditLog(cfg.api.audit_log or cfg.data_dir / "audit.jsonl")
    crops = CropStore.from_config(cfg)
    live = engine_factory(cfg)
    global_ids = GlobalIds(cfg.data_dir)
    max_image_bytes = int(cfg.api.max_upload_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from refind.app.api_watch import alerts_path, follow_alerts

        stop = asyncio.Event()  # new alerts in the durable record reach the open streams
        feed = asyncio.create_task(follow_alerts(alerts_path(cfg), app.state.alerts.publish,
                                                 stop))
        yield
        stop.set()
        await feed
        live.close()

    # no /docs or /redoc: they load their scripts from a CDN, and the UI works offline; the
    # schema itself is at /openapi.json
    app = FastAPI(title="refind", version="1", lifespan=lifespan, responses=ERROR_RESPONSES,
                  docs_url=None, redoc_url=None,
                  description="Find a person across camera streams by photo or description.")
    app.state.keys = keys
    app.state.global_ids = global_ids
    app.state.sessions = Sessions(keys, cfg.api.session_hours * 3600,
                                  (cfg.api.session_secret or "").encode() or None)
    _install_error_handlers(app)
    counts = Metrics()
    app.add_middleware(UploadLimit, path=SEARCH_PATH, max_bytes=max_image_bytes + FORM_OVERHEAD_BYTES)
    app.add_middleware(UploadLimit, path=TEXT_PATH, max_bytes=MAX_TEXT_BODY_BYTES,
                       what="a text search's limit")
    app.add_middleware(UploadLimit, path=PHOTO_PATH,
                       max_bytes=2 * max_image_bytes + FORM_OVERHEAD_BYTES)
    app.add_middleware(UploadLimit, path=None, max_bytes=cfg.api.max_body_kb * 1024,
                       skip=(SEARCH_PATH, TEXT_PATH, PHOTO_PATH), what="api.max_body_kb")
    searches = RateLimit(cfg.api.searches_per_min, "api.searches_per_min")
    app.add_middleware(RequestMetrics, metrics=counts, fixed_paths=(SEARCH_PATH, TEXT_PATH))

    def known_cameras(cameras: tuple[str, ...]) -> list[str]:
        """The gallery's cameras; 404 naming any of ``cameras`` that is not one of them."""
        known = live.cameras()
        unknown = [c for c in cameras if c not in known]
        if unknown:
            raise ApiError(404, f"unknown camera(s) {', '.join(unknown)}; known: "
                                f"{', '.join(known) or '(none yet)'}")
        return known

    def read_upload(upload: UploadFile, what: str, entry_key: str,
                    entry: dict[str, object]) -> bytes:
        data = upload.file.read(max_image_bytes + 1)
        entry[entry_key] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        if len(data) > max_image_bytes:
            raise ApiError(413, f"{what} is over api.max_upload_mb ({cfg.api.max_upload_mb} MiB)")
        return data

    def instruction_fields(
        more: Mapping[str, object], entry: dict[str, object]
    ) -> dict[str, object]:
        """min_track_s, instruction (text or image), task and rerank of an image search form."""
        text = more.get("instruction")
        instruction = check_query_text(text, "instruction") if isinstance(text, str) and \
            text.strip() else None
        task = more.get("task")
        upload = more.get("instruction_image")
        image = None
        if isinstance(upload, StarletteUpload):  # what FastAPI hands over for a file field
            data = read_upload(upload, "instruction_image", "instruction_image", entry)
            image = decode_query_image(data, "instruction_image")
        return {
            "min_track_s": _parse_min_track(more.get("min_track_s")),  # type: ignore[arg-type]
            "instruction": instruction, "instruction_image": image,
            "task": task.strip() if isinstance(task, str) and task.strip() else None,
            "rerank": _parse_rerank(more.get("rerank")),  # type: ignore[arg-type]
        }

    def build_query(
        who: Principal, image: UploadFile | None, k: str | None, cameras: str | None,
        since: str | None, until: str | None, box: str | None, entry: dict[str, object],
        more: Mapping[str, object] | None = None,
    ) -> ImageQuery:
        """The query a form describes (noted in ``entry`` for the audit); raises on bad input."""
        more = more or {}
        entry["query"] = {"k": k, "cameras": cameras, "since": since, "until": until, "box": box,
                          **{n: v for n, v in more.items() if isinstance(v, str)}}
        requested = _parse_cameras(cameras)
        who.check_cameras(requested, "search")
        k_value, box_xyxy = _parse_k(k), _parse_box(box)
        start, end = _parse_seconds(since, "since"), _parse_seconds(until, "until")
        if start is not None and end is not None and start > end:
            raise ApiError(400, f"since ({since}) is after until ({until})")
        if image is None:
            raise ApiError(400, "multipart field `image` (the query photo) is required")
        data = read_upload(image, "image", "image", entry)
        extra = instruction_fields(more, entry)
        known_cameras(requested)
        pixels = decode_query_image(data, "uploaded image")
        if box_xyxy is not None:
            pixels = crop_box(pixels, box_xyxy)
        scope = requested or (tuple(sorted(who.cameras)) if who.cameras is not None else ())
        return ImageQuery(image=pixels, k=k_value, cameras=scope, start_ts_ns=start,
                          end_ts_ns=end, **extra)  # type: ignore[arg-type]

    def run_search(fn: Callable[[], SearchResult]) -> SearchResult:
        """Run a search; what the query asks that the models refuse is a 4xx."""
        try:
            return fn()
        except (QueryError, ModelInputError, RegistryError) as err:
            raise ApiError(400, str(err)) from None
        except (ImportError, ModelUnavailable) as err:  # a model this server has not set up
            raise ApiError(409, f"not available on this server: {err}") from None
        except CropStoreError as err:  # a crop gone from the store (retention, a forget)
            raise ApiError(404, f"a stored crop is missing: {err}") from None
        except ModelStoreError as err:  # weights missing or damaged on this server
            raise ApiError(503, f"a model's weights are not available: {err}") from None

    def respond(result: SearchResult) -> dict[str, object]:
        def card(h: TrackletHit) -> dict[str, object]:
            return h.to_json() | {"thumbnail_url": crop_url(h.thumbnail),
                                  "reason": reason(h, cfg.search.aggregation)}

        keys = [(h.camera, h.track_id) for h in result.hits]
        ids = global_ids.lookup(keys, live.model_id)
        out = {"hits": [card(h) | {"global_id": ids.get((h.camera, h.track_id))}
                        for h in result.hits],
               "people": people_of(keys, ids), "message": result.message,
               **result.details, "took_ms": result.took_ms}
        if result.best is not None:
            out["best_candidate"] = card(result.best)
        return out

    def build_text_query(who: Principal, body: TextSearch, entry: dict[str, object]) -> TextQuery:
        """The query of a text search body (its plan noted in ``entry``); raises on bad input."""
        explicit = tuple(dict.fromkeys(c.strip() for c in body.cameras if c.strip()))
        who.check_cameras(explicit, "search")
        start = None if body.since is None else int(body.since * 1e9)
        end = None if body.until is None else int(body.until * 1e9)
        if start is not None and end is not None and start > end:
            raise ApiError(400, f"since ({body.since}) is after until ({body.until})")
        known = known_cameras(explicit)
        try:
            plan = plan_query(body.text, known_cameras=known, tz=cfg.search.timezone,
                              cameras=explicit, start_ts_ns=start, end_ts_ns=end,
                              min_track_s=body.min_track_s)
        except UnknownCamera as err:
            # to a scoped key, a camera it cannot see and one that does not exist look alike
            who.check_cameras([err.name], "search")
            raise ApiError(404, str(err)) from None
        entry["plan"] = plan.to_json()
        who.check_cameras(plan.text_cameras, "search")
        scope = plan.cameras or (tuple(sorted(who.cameras)) if who.cameras is not None else ())
        return plan.text_query(body.k, cameras=scope, rerank=body.rerank)

    def audited_search(
        entry: dict[str, object],
        make_query: Callable[[], Q],
        search: Callable[[Q], SearchResult],
    ) -> SearchResult:
        """Build a query (bad input: 400), run it, and audit the outcome: hits or the error.
        A key over ``api.searches_per_min`` gets 429 (audited too)."""
        try:
            searches.take(f"key {entry['key']!r}")
            try:
                query = make_query()
            except (QueryError, ValueError) as err:
                raise ApiError(400, str(err)) from None
            result = run_search(lambda: search(query))
        except (ApiError, GalleryUnavailable) as err:
            status = err.status if isinstance(err, ApiError) else 503
            audit.write({**entry, "status": status, "error": str(err)})
            raise
        audit.write({**entry, "status": 200, "message": result.message,
                     "tracks": [[h.camera, h.track_id] for h in result.hits]})
        return result

    def text_search(who: Principal, body: TextSearch,
                    endpoint: str = TEXT_PATH) -> tuple[SearchResult, dict[str, object]]:
        """An audited text search: its result and its plan (what the words were read as)."""
        query_json = body.model_dump() | {"text": body.text[:1000], "text_chars": len(body.text)}
        entry: dict[str, object] = {"key": who.name, "endpoint": endpoint, "query": query_json}
        result = audited_search(entry, lambda: build_text_query(who, body, entry), live.search_text)
        return result, entry["plan"]  # type: ignore[return-value]

    def image_search(
        who: Principal, image: UploadFile | None, fields: Mapping[str, object],
        endpoint: str = SEARCH_PATH,
    ) -> SearchResult:
        """An audited photo search of a form's fields (k, cameras, since, until, box, and the
        instruction fields)."""
        entry: dict[str, object] = {"key": who.name, "endpoint": endpoint}
        text = {n: v if isinstance(v, str) or v is None else None for n, v in fields.items()}
        more = {n: v for n, v in fields.items()
                if n in INSTRUCTION_FIELDS and v is not None}
        return audited_search(
            entry,
            lambda: build_query(who, image, text.get("k"), text.get("cameras"), text.get("since"),
                                text.get("until"), text.get("box"), entry, more),
            live.search,
        )

    def similar_search(who: Principal, camera: str, track_id: int, k: int,
                       endpoint: str) -> SearchResult:
        """Audited "find similar": tracklets like a stored track, within the key's cameras."""
        who.check_cameras([camera], "view")
        if live.track(camera, track_id) is None:
            raise ApiError(404, f"camera {camera!r} has no track {track_id}")
        entry: dict[str, object] = {"key": who.name, "endpoint": endpoint,
                                    "query": {"camera": camera, "track_id": track_id, "k": k}}
        scope = tuple(sorted(who.cameras)) if who.cameras is not None else ()
        return audited_search(
            entry, lambda: (camera, track_id),
            lambda q: live.search_similar(q[0], q[1], k, cameras=scope),  # type: ignore[arg-type]
        )

    def forget_person(who: Principal, camera: str, track_id: int, reason: str,
                      endpoint: str) -> dict[str, object]:
        """Forget a track for good, for a key allowed to, with a reason; audited either way."""
        entry: dict[str, object] = {"key": who.name, "endpoint": endpoint, "camera": camera,
                                    "track_id": track_id, "reason": reason[:500]}
        try:
            who.check_cameras([camera], "forget tracks of")
            if not who.may_forget:
                raise ApiError(403, f"key {who.name!r} may not forget people: give it "
                                    "`forget: true` in api.keys")
            if not reason.strip():
                raise ApiError(400, "say why this person is forgotten (a reason is required)")
            try:
                report = live.forget(camera, track_id, reason.strip()[:500])
            except UnknownTrackError as err:
                raise ApiError(404, str(err)) from None
            except GalleryLockedError as err:  # refind serve or an ingest writes it now
                raise ApiError(409, f"cannot forget now: {err}. Nothing was changed; forget "
                                    "again when that writer has stopped (forgetting through "
                                    "refind serve's own writers is not built yet)") from None
        except ApiError as err:
            audit.write({**entry, "status": err.status, "error": err.message})
            raise
        out = {"camera": report.camera, "track_id": report.track_id,
               "vectors_deleted": sum(len(v) for v in report.vector_ids.values()),
               "crop_files_deleted": report.crops_deleted}
        audit.write({**entry, "status": 200, **out})
        return out

    def manage_camera(who: Principal, method: str, name: str,
                      camera: dict[str, object] | None, endpoint: str) -> dict[str, object]:
        """Add (``POST`` with its config) or remove (``DELETE``) a live camera through
        ``refind serve``, for a key allowed to; audited either way."""
        entry: dict[str, object] = {"key": who.name, "endpoint": endpoint, "method": method,
                                    "camera": name}
        try:
            if not who.may_manage_cameras:
                raise ApiError(403, f"key {who.name!r} may not add or remove cameras: give it "
                                    "`manage_cameras: true` in api.keys")
            who.check_cameras([name], "manage")
            if not cfg.api.serve_url:
                raise ApiError(409, "this API is not linked to refind serve: set api.serve_url "
                                    "to serve's control port to add and remove cameras")
            if camera is not None:
                check_camera_url(str(camera.get("url", "")), cfg.api.camera_url_schemes,
                                 cfg.api.camera_hosts)
            path = "/cameras" if method == "POST" else f"/cameras/{quote(name, safe='')}"
            out = serve_call(cfg, method, path, camera)
        except ApiError as err:
            audit.write({**entry, "status": err.status, "error": err.message})
            raise
        audit.write({**entry, "status": 200})
        return out

    app.state.ops = Operations(cfg, live, crops, text_search, image_search, similar_search,
                               forget_person, respond, audit, manage_camera)

    @app.post(TEXT_PATH, summary="Rank tracklets of a described person; filters in words too")
    def search_text(who: Caller, body: TextSearch) -> dict[str, object]:
        result, plan = text_search(who, body)
        return respond(result) | {"plan": plan}

    @app.post(SEARCH_PATH, summary="Rank tracklets like the person in a photo")
    def search_image(
        who: Caller,
        image: Annotated[UploadFile | None, File(description="JPEG/PNG/BMP/WebP photo")] = None,
        k: Annotated[str | None, Form(description="Tracklets returned, 1..1000")] = None,
        cameras: Annotated[str | None, Form(description="Comma list; default every camera")] = None,
        since: Annotated[str | None, Form(description="Earliest time, seconds")] = None,
        until: Annotated[str | None, Form(description="Latest time, seconds")] = None,
        box: Annotated[str | None, Form(description="x1,y1,x2,y2: the person in the photo")] = None,
        min_track_s: Annotated[str | None, Form(description="Only tracks seen this long, s")] = None,
        instruction: Annotated[str | None, Form(
            description="Instruction for an instructable (IRM) model: 'ignore clothes', 'now "
            "wearing a black jacket', 'infrared'")] = None,
        instruction_image: Annotated[UploadFile | None, File(
            description="A garment photo: people wearing it (task clothes_template)")] = None,
        task: Annotated[str | None, Form(description="IRM task; default read from the "
                                         "instruction (refind.models.base.TASKS)")] = None,
        rerank: Annotated[str | None, Form(description="none, attributes, refer or mllm; "
                                           "default search.image_rerank")] = None,
    ) -> dict[str, object]:
        fields = {"k": k, "cameras": cameras, "since": since, "until": until, "box": box,
                  "min_track_s": min_track_s, "instruction": instruction,
                  "instruction_image": instruction_image, "task": task, "rerank": rerank}
        return respond(image_search(who, image, fields))

    @app.get("/v1/tracks/{camera}/{track_id}/similar",
             summary="Tracklets like a stored track (find similar), the track itself left out")
    def similar(
        who: Caller, camera: str, track_id: Annotated[int, Path(ge=0, le=2**62)],
        k: Annotated[int, Query(ge=1, le=1000)] = 10,
    ) -> dict[str, object]:
        return respond(similar_search(who, camera, track_id, k, SIMILAR_PATH))

    @app.post("/v1/tracks/{camera}/{track_id}/forget",
              summary="Forget a person's track for good (keys with forget: true; audited)")
    def forget(
        who: Caller, camera: str, track_id: Annotated[int, Path(ge=0, le=2**62)],
        body: ForgetBody,
    ) -> dict[str, object]:
        return forget_person(who, camera, track_id, body.reason, FORGET_PATH)

    @app.get("/v1/tracks/{camera}/{track_id}", summary="A track's time span and stored crops")
    def track(
        who: Caller, camera: str, track_id: Annotated[int, Path(ge=0, le=2**62)]
    ) -> dict[str, object]:
        who.check_cameras([camera], "view")
        found = live.track(camera, track_id)
        if found is None:
            raise ApiError(404, f"camera {camera!r} has no track {track_id}")
        summary, records = found
        has_clip = crops.exists(clip_path(camera, track_id))
        return {
            "camera": summary.camera, "track_id": summary.track_id,
            "start_ts": summary.start_ts_ns / 1e9, "end_ts": summary.end_ts_ns / 1e9,
            "n_crops": summary.n_crops, "best": _crop_json(summary.best),
            "crops": [_crop_json(r) for r in records],
            "motion": summary.motion.as_dict() if summary.motion is not None else None,
            "clip_url": clip_url(camera, track_id) if has_clip else None,
        }

    @app.get("/v1/clips/{camera}/{track_id}", summary="A track's clip (H.264 MP4, box drawn)",
             response_class=Response, responses={200: {"content": {"video/mp4": {}}}})
    def clip(
        who: Caller, camera: str, track_id: Annotated[int, Path(ge=0, le=2**62)],
        range_header: Annotated[str | None, Header(alias="Range")] = None,
    ) -> Response:
        who.check_cameras([camera], "view")
        try:
            data = crops.read_bytes(clip_path(camera, track_id))
        except CropStoreError:
            raise ApiError(404, f"camera {camera!r} track {track_id} has no clip") from None
        return byte_range(data, "video/mp4", range_header)

    @app.get("/v1/crops/{path:path}", summary="One stored crop (JPEG)",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def crop(who: Caller, path: str) -> Response:
        try:
            crops.location(path)  # refuses absolute paths, backslashes, NUL and any '..' escape
        except CropStoreError as err:
            raise ApiError(400, str(err)) from None
        norm = posixpath.normpath(path)
        folder = norm.split("/", 1)[0]
        if who.cameras is not None and folder not in {safe_name(c) for c in who.cameras}:
            raise ApiError(403, f"key {who.name!r} may not view crops of {folder!r}")
        if not norm.endswith(".jpg"):
            raise ApiError(404, f"no crop at {path!r}")
        try:
            data = crops.read_bytes(norm)
        except CropStoreError:
            raise ApiError(404, f"no crop at {path!r}") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private"})

    @app.get("/v1/cameras", summary="Cameras with stored tracks that this key may see")
    def list_cameras(who: Caller) -> dict[str, object]:
        return {"cameras": [c for c in live.cameras() if who.sees(c)]}

    @app.post("/v1/cameras", summary="Add a live camera to refind serve (api.serve_url; keys "
              "with manage_cameras: true)", status_code=201)
    def add_camera(who: Caller, body: dict[str, Any]) -> dict[str, object]:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "a camera needs a name (and a url)")
        return manage_camera(who, "POST", name, body, "/v1/cameras")

    @app.delete("/v1/cameras/{name}", summary="Remove a live camera from refind serve (its "
                "stored tracks stay)")
    def remove_camera(who: Caller, name: str) -> dict[str, object]:
        return manage_camera(who, "DELETE", name, None, "/v1/cameras/{name}")

    @app.get("/v1/cameras/status",
             summary="Each camera this key sees: live state (when metadata is in Redis), "
             "counters, newest track and its frame")
    def camera_status(who: Caller) -> dict[str, object]:
        return {"cameras": [c for c in camera_report(cfg, live, crops) if who.sees(c["camera"])],
                "live_link": bool(cfg.api.serve_url) or cfg.metadata.type == "redis",
                "now": time.time()}

    @app.get("/healthz", summary="Liveness and what is searchable now")
    def healthz() -> dict[str, object]:
        return {"status": "ok", **live.stats()}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(counts.render(), media_type=CONTENT_TYPE)

    from refind.app.api_watch import install_watches
    from refind.app.web import install_ui

    install_ui(app)
    install_watches(app, cfg, live, audit)
    return app


def serve_api(cfg: RefindConfig) -> None:
    """Run the API with uvicorn on ``api.host``:``api.port`` until interrupted."""
    import uvicorn

    cfg, key = with_session_key(cfg)
    app = create_app(cfg)
    if cfg.api.allow_anonymous and cfg.api.host not in LOOPBACK:
        log.warning("api.allow_anonymous on %s: anyone who can reach it sees every camera",
                    cfg.api.host)
    if key is not None:
        print(f"refind api: no api.keys are configured, so this run made one key, valid until it "
              f"stops (loopback only; may see, forget and manage every camera and watch):\n\n    {key}\n\n"
              f"Open http://{cfg.api.host}:{cfg.api.port}/ and enter it, or send it as the "
              "X-API-Key header. Configure api.keys to keep keys across runs.", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again once its
    # own handlers are gone: this takes it (or one before uvicorn started), so a clean stop
    # exits with status 0
    def stopped(sig: int, _frame: object) -> None:
        print(f"refind api stopped ({signal.Signals(sig).name})", flush=True)
        raise SystemExit(0)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stopped)
    uvicorn.run(app, host=cfg.api.host, port=cfg.api.port, log_level="info",
                timeout_graceful_shutdown=5)


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def with_session_key(cfg: RefindConfig) -> tuple[RefindConfig, str | None]:
    """``cfg`` as it is when it has keys or allows anonymous callers; else, on a loopback host,
    ``cfg`` with one random key for this run (named ``operator``: every camera, may forget,
    manage cameras and watches) and
    that key, as Jupyter does for its token. Another host with no keys stays refused."""
    if cfg.api.keys or cfg.api.allow_anonymous or cfg.api.host not in LOOPBACK:
        return cfg, None
    key = secrets.token_urlsafe(24)
    entry = ApiKeyConfig(name="operator", key_sha256=hashlib.sha256(key.encode()).hexdigest(),
                         forget=True, manage_cameras=True, manage_watches=True)
    api = cfg.api.model_copy(update={"keys": (entry,)})
    return cfg.model_copy(update={"api": api}), key
