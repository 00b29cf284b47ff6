"""Watchlists over HTTP, and the alerts they raise as a stream.

- ``GET /v1/watches``: the watches a key's cameras are covered by (no vectors);
- ``POST /v1/watches`` (multipart: ``name``, ``text`` or ``image`` [+ ``instruction``],
  ``threshold``, ``cameras``): a new watch, for keys with ``manage_watches: true``; a
  camera-scoped key must name cameras within its scope; audited;
- ``DELETE /v1/watches/{name}``: remove one (same keys; audited);
- ``GET /v1/alerts?limit=N``: the newest alerts from the durable record (``events/alerts.jsonl``
  under ``data_dir``, written by the identity actor of ``refind serve`` or by ``refind ingest``);
- the alerts appended to that record while the API runs are handed to every open
  ``/v1/alerts/stream`` (server-sent events, ``refind.app.web.AlertHub``) within a poll
  (``ALERT_POLL_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, UploadFile

from refind.app.api import Caller
from refind.app.api_guard import ApiError, AuditLog, Principal
from refind.app.identity_commands import add_watch
from refind.config import RefindConfig
from refind.indexer.journal import journal_dir
from refind.indexer.live_search import LiveSearch
from refind.indexer.search import QueryError
from refind.indexer.watchlist import Watch, WatchError, WatchExists, WatchStore
from refind.models.base import ModelInputError
from refind.streaming.records import ImageQuery

log = logging.getLogger(__name__)

ALERT_POLL_S = 0.25  # how often the alerts record is checked for new lines
MAX_ALERTS_SHOWN = 1000


def alerts_path(cfg: RefindConfig) -> Path:
    return journal_dir(cfg.data_dir) / "alerts.jsonl"


def newest_alerts(path: Path, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` alerts of the record, newest first, read from its end (torn lines
    skipped; alerts of tracks forgotten since, by the record's tombstones, left out)."""
    if not path.is_file():
        return []
    gone = _forgotten(path.parent / "forget.jsonl")
    out: list[dict[str, Any]] = []
    for line in _lines_from_end(path):
        try:
            alert = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (alert.get("camera"), alert.get("track_id")) in gone:
            continue
        out.append(alert)
        if len(out) >= limit:
            break
    return out


def _lines_from_end(path: Path, block: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a file, last first, reading it backwards a block at a time."""
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        tail = b""
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start) + tail
            lines = chunk.split(b"\n")
            tail = lines.pop(0) if start > 0 else b""
            for line in reversed(lines):
                if line.strip():
                    yield line
            end = start
        if tail.strip():
            yield tail


def _forgotten(path: Path) -> set[tuple[str, int]]:
    """(camera, track) of every tombstone in the record."""
    if not path.is_file():
        return set()
    out = set()
    for line in path.read_bytes().splitlines():
        try:
            event = json.loads(line)
            out.add((event["camera"], int(event["track_id"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return out


async def follow_alerts(path: Path, publish: Any, stop: asyncio.Event) -> None:
    """Hand every alert appended to ``path`` from now on to ``publish`` (one dict each)."""
    offset = path.stat().st_size if path.is_file() else 0
    partial = b""
    while not stop.is_set():
        try:
            size = path.stat().st_size if path.is_file() else 0
            if size < offset:  # replaced by a new record: start at its beginning
                offset, partial = 0, b""
            if size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = partial + f.read(size - offset)
                offset = size
                *lines, partial = data.split(b"\n")
                for line in lines:
                    try:
                        publish(json.loads(line))
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        log.warning("skipping an unreadable line of %s", path)
        except OSError as err:
            log.warning("cannot read alerts from %s: %s", path, err)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ALERT_POLL_S)


def parse_cameras(text: str | None) -> tuple[str, ...]:
    """``"gate, hall"`` -> ("gate", "hall")."""
    return tuple(dict.fromkeys(c.strip() for c in (text or "").split(",") if c.strip()))


@dataclass(frozen=True)
class WatchOps:
    """What the UI's watch forms do, through the same checks and audit as the JSON routes."""

    store: WatchStore
    make: Callable[..., Watch]
    drop: Callable[..., None]


def public(watch: Watch) -> dict[str, object]:
    """What a watch shows to callers: not its vectors (the person's biometric template)."""
    return watch.model_dump(exclude={"vector", "more_vectors"})


def visible(who: Principal, watch: Watch) -> bool:
    """A camera-scoped key sees the watches that cover only cameras it sees."""
    return who.cameras is None or (bool(watch.cameras) and set(watch.cameras) <= who.cameras)


def install_watches(app: FastAPI, cfg: RefindConfig, live: LiveSearch, audit: AuditLog) -> None:
    """The watch endpoints (module docstring) on ``app``; the app's lifespan runs the feed
    (``follow_alerts``)."""
    store = WatchStore.in_data_dir(cfg.data_dir)
    path = alerts_path(cfg)

    def check_manager(who: Principal, cameras: tuple[str, ...]) -> None:
        if not who.may_manage_watches:
            raise ApiError(403, f"key {who.name!r} may not add or remove watches: give it "
                                "`manage_watches: true` in api.keys")
        if who.cameras is not None and not cameras:
            raise ApiError(403, f"key {who.name!r} sees only some cameras: name them in "
                                "`cameras` (a watch of every camera is for unscoped keys)")
        who.check_cameras(cameras, "watch")

    @app.get("/v1/watches", summary="Watches (standing queries) on the key's cameras")
    def list_watches(who: Caller) -> dict[str, object]:
        return {"watches": [public(w) for w in store.all().values() if visible(who, w)]}

    def make(who: Principal, name: str, *, text: str | None = None, image: bytes | None = None,
             instruction: str | None = None, threshold: float | None = None,
             cameras: tuple[str, ...] = (), endpoint: str = "/v1/watches",
             source: str | None = None) -> Watch:
        """A new watch for ``who`` (checked, stored, audited); ApiError when refused."""
        entry: dict[str, object] = {"key": who.name, "endpoint": endpoint, "method": "POST",
                                    "watch": name, "cameras": list(cameras), "source": source}
        try:
            check_manager(who, cameras)
            made = add_watch(cfg, store, name, image=image, instruction=instruction or None,
                             text=text if text and text.strip() else None, threshold=threshold,
                             cameras=cameras, created_by=who.name,
                             embed=lambda photo, instruction: live.embed_photo(
                                 ImageQuery(image=photo, instruction=instruction)))
        except (WatchError, QueryError, ModelInputError) as err:
            code = 409 if isinstance(err, WatchExists) else 400
            audit.write({**entry, "status": code, "error": str(err)})
            raise ApiError(code, str(err)) from None
        except ApiError as err:
            audit.write({**entry, "status": err.status, "error": err.message})
            raise
        except Exception as err:  # a bug or a broken disk: audited as what it was
            audit.write({**entry, "status": 500, "error": f"{type(err).__name__}: {err}"})
            raise
        audit.write({**entry, "status": 201, "kind": made.kind})
        return made

    def drop(who: Principal, name: str, endpoint: str = "/v1/watches/{name}") -> None:
        """Remove ``who``'s watch ``name`` (checked, audited); ApiError when refused."""
        entry: dict[str, object] = {"key": who.name, "endpoint": endpoint, "method": "DELETE",
                                    "watch": name}
        try:
            try:
                watch = store.get(name)
            except WatchError as err:
                raise ApiError(404, str(err)) from None
            check_manager(who, watch.cameras)
            try:
                store.remove(name)
            except WatchError as err:  # removed by another caller meanwhile
                raise ApiError(404, str(err)) from None
        except ApiError as err:
            audit.write({**entry, "status": err.status, "error": err.message})
            raise
        audit.write({**entry, "status": 200})

    app.state.watches = WatchOps(store, make, drop)

    @app.post("/v1/watches", status_code=201,
              summary="Watch for a person (photo or description); alerts as they show up")
    def create_watch(
        who: Caller,
        name: Annotated[str, Form(description="1-64 of A-Z a-z 0-9 _ . -")],
        text: Annotated[str | None, Form(description="A description of the person")] = None,
        image: Annotated[UploadFile | None, File(description="A photo of the person")] = None,
        instruction: Annotated[str | None, Form(description="With image: what to change or "
                                                "ignore (instructable models)")] = None,
        threshold: Annotated[float | None, Form(gt=0.0, lt=1.0, description=(
            "Probability that a track is the person at which to alert (default 0.9)"))] = None,
        cameras: Annotated[str | None, Form(description="Comma list; default every camera")]
        = None,
    ) -> dict[str, object]:
        data = None
        if image is not None:
            data = image.file.read(int(cfg.api.max_upload_mb * 2**20) + 1)
            if len(data) > cfg.api.max_upload_mb * 2**20:
                raise ApiError(413, f"image is over api.max_upload_mb "
                                    f"({cfg.api.max_upload_mb} MiB)")
        return public(make(who, name, text=text, image=data, instruction=instruction,
                           threshold=threshold, cameras=parse_cameras(cameras)))

    @app.delete("/v1/watches/{name}", summary="Stop a watch and delete it (audited)")
    def delete_watch(who: Caller, name: str) -> dict[str, object]:
        drop(who, name)
        return {"removed": name}

    @app.get("/v1/alerts", summary="The newest alerts, newest first")
    def recent_alerts(
        who: Caller, limit: Annotated[int, Query(ge=1, le=MAX_ALERTS_SHOWN)] = 50,
    ) -> dict[str, object]:
        rows = [a for a in newest_alerts(path, MAX_ALERTS_SHOWN)
                if who.sees(str(a.get("camera", "")))][:limit]
        # where people were seen: who read it is audited like a search
        audit.write({"key": who.name, "endpoint": "/v1/alerts", "method": "GET", "status": 200,
                     "limit": limit, "returned": [[a.get("camera"), a.get("track_id")]
                                                  for a in rows]})
        return {"alerts": rows}
