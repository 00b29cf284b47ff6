"""What stands in front of the search API: keys and camera scopes, the audit log, upload limits
and request metrics. Plain Python plus two small ASGI wrappers; the routes are in ``refind.app.api``.

Example:
    >>> ring = KeyRing.from_config(ApiConfig(keys=(ApiKeyConfig(name="desk", key_sha256=h),)))  # doctest: +SKIP
    >>> ring.authenticate("the-key").name                                      # doctest: +SKIP
    'desk'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from refind.app.config import ApiConfig
from refind.streaming.metrics import Metrics


class ApiError(Exception):
    """A request the API refuses: sent as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name and the cameras it may see (None = every camera)."""

    name: str
    cameras: frozenset[str] | None
    may_forget: bool = False
    may_manage_cameras: bool = False

    def check_cameras(self, cameras: Iterable[str], what: str) -> None:
        """Raise 403 naming the cameras outside this key's scope."""
        if self.cameras is None:
            return
        outside = sorted(set(cameras) - self.cameras)
        if outside:
            raise ApiError(403, f"key {self.name!r} may not {what} camera(s) {', '.join(outside)}")

    def sees(self, camera: str) -> bool:
        return self.cameras is None or camera in self.cameras


ANONYMOUS = Principal("anonymous", None)


class KeyRing:
    """API keys by their sha256; a presented key is hashed and compared in constant time."""

    def __init__(self, keys: dict[str, Principal], allow_anonymous: bool) -> None:
        self._keys = keys  # sha256 hex -> principal
        self.allow_anonymous = allow_anonymous

    @classmethod
    def from_config(cls, cfg: ApiConfig) -> KeyRing:
        keys = {
            k.key_sha256: Principal(k.name, frozenset(k.cameras) if k.cameras else None, k.forget,
                                    k.manage_cameras)
            for k in cfg.keys
        }
        return cls(keys, cfg.allow_anonymous)

    def by_name(self, name: str) -> Principal | None:
        """The principal of the configured key named ``name`` (a signed session names it)."""
        return next((p for p in self._keys.values() if p.name == name), None)

    def authenticate(self, key: str | None) -> Principal:
        """The principal of ``key``; raises 401 when it is missing or unknown."""
        if not self._keys and self.allow_anonymous:
            return ANONYMOUS
        if not key:
            raise ApiError(401, "missing API key: send it in the X-API-Key header")
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        found = None
        for stored, principal in self._keys.items():  # every entry compared: no early exit
            if hmac.compare_digest(stored, digest):
                found = principal
        if found is None:
            raise ApiError(401, "unknown API key")
        return found


class Sessions:
    """Web UI sessions: a key entered once in a browser becomes a signed session token (sent
    back as an HttpOnly, SameSite=Strict cookie), so the key itself is never kept in the
    browser. A token names its key and when it expires, signed with HMAC-SHA256 under
    ``secret``: any replica holding the same secret accepts it, and nothing is stored per
    session. Each use looks the key up again, so a key removed from the config ends its
    sessions; a token signed out is refused by the replica that signed it out (others accept it
    until it expires: keep ``lifetime_s`` short where that matters)."""

    COOKIE = "refind_session"

    def __init__(self, keys: KeyRing, lifetime_s: float, secret: bytes | None = None) -> None:
        self.keys = keys
        self.lifetime_s = lifetime_s
        self._secret = secret or secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._ended: dict[str, float] = {}  # token -> its expiry, until then

    def start(self, principal: Principal) -> str:
        body = json.dumps({"k": principal.name, "e": round(time.time() + self.lifetime_s),
                           "n": secrets.token_urlsafe(9)}, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._sign(body))}"

    def principal(self, token: str | None) -> Principal | None:
        """Who the session ``token`` is; None when it is malformed, forged, expired, signed out
        here, or its key is no longer configured."""
        if not token or token.count(".") != 1 or len(token) > 512:
            return None
        body_text, mac_text = token.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
            if not hmac.compare_digest(mac, self._sign(body)):
                return None
            claims = json.loads(body)
            name, expiry = str(claims["k"]), float(claims["e"])
        except (ValueError, KeyError, TypeError):
            return None
        with self._lock:
            if time.time() >= expiry or token in self._ended:
                return None
        return self.keys.by_name(name)

    def end(self, token: str | None) -> None:
        """Sign ``token`` out (on this replica: see the class docstring)."""
        if self.principal(token) is None:
            return
        now = time.time()
        with self._lock:
            self._ended = {t: e for t, e in self._ended.items() if e > now}
            self._ended[str(token)] = now + self.lifetime_s

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AuditLog:
    """Appends one JSON line per audited request (thread-safe; flushed, not fsynced)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, entry: dict[str, object]) -> None:
        line = json.dumps({"ts": round(time.time(), 3), **entry}, separators=(",", ":"))
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()


def _json_response(status: int, message: str) -> list[Message]:
    body = json.dumps({"error": message}).encode()
    return [
        {"type": "http.response.start", "status": status,
         "headers": [(b"content-type", b"application/json"),
                     (b"content-length", str(len(body)).encode())]},
        {"type": "http.response.body", "body": body},
    ]


class UploadLimit:
    """ASGI wrapper: bodies sent to ``path`` over ``max_bytes`` get 413 before any parsing.

    Checks the declared Content-Length first, then counts the bytes as they stream in (a chunked
    upload has no length); the body is then replayed to the app from memory.
    """

    def __init__(self, app: ASGIApp, path: str, max_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"request body over {self.max_bytes / 2**20:.1f} MiB (api.max_upload_mb + form)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            for message in _json_response(413, self._too_large()):
                await send(message)
            return
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                for reply in _json_response(413, self._too_large()):
                    await send(reply)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RequestMetrics:
    """ASGI wrapper counting requests and their latency by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, fixed_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.fixed_paths = frozenset(fixed_paths)  # named as themselves when no route matched
        self.requests = metrics.api_requests
        self.latency = metrics.api_latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # the route template, never the raw path: crop paths would explode the label set
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in self.fixed_paths else "unmatched"
            )
            self.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.latency.labels(endpoint).observe(time.perf_counter() - t0)
