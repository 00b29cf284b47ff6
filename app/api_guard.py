"""What stands in front of the search API: keys and camera scopes, the audit log, upload limits
and request metrics. Plain Python plus two small ASGI wrappers; the routes are in ``refind.app.api``.

Example:
    >>> ring = KeyRing.from_config(ApiConfig(keys=(ApiKeyConfig(name="desk", key_sha256=h),)))  # doctest: +SKIP
    >>> ring.authenticate("the-key").name                                      # doctest: +SKIP
    'desk'
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

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
    key_sha256: str = field(default="", repr=False)  # which key: a rotated key is another
    may_manage_watches: bool = False

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

    def __init__(self, keys: dict[str, Principal], allow_anonymous: bool,
                 failures_per_min: int = 0) -> None:
        self._keys = keys  # sha256 hex -> principal
        self.allow_anonymous = allow_anonymous
        self.failures = RateLimit(failures_per_min, "api.key_failures_per_min")

    @classmethod
    def from_config(cls, cfg: ApiConfig) -> KeyRing:
        keys = {
            k.key_sha256: Principal(k.name, frozenset(k.cameras) if k.cameras else None, k.forget,
                                    k.manage_cameras, k.key_sha256, k.manage_watches)
            for k in cfg.keys
        }
        return cls(keys, cfg.allow_anonymous, cfg.key_failures_per_min)

    def by_name(self, name: str) -> Principal | None:
        """The principal of the configured key named ``name`` (a signed session names it)."""
        return next((p for p in self._keys.values() if p.name == name), None)

    def authenticate(self, key: str | None, source: str | None = None) -> Principal:
        """The principal of ``key``; raises 401 when it is missing or unknown. With ``source``
        (the client's address), a source over ``api.key_failures_per_min`` wrong keys gets 429
        (RateLimited) before its key is even looked at."""
        if not self._keys and self.allow_anonymous:
            return ANONYMOUS
        if source is not None:
            self.failures.check(source)
        try:
            return self._find(key)
        except ApiError:
            if source is not None and key:  # a wrong key, not a missing one, is a guess
                self.failures.spend(source)
            raise

    def _find(self, key: str | None) -> Principal:
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
    browser. A token names its key (and marks which key of that name, so a rotated key ends the
    old key's sessions) and when it expires, signed with HMAC-SHA256 under ``secret``: any
    replica holding the same secret accepts it, and nothing is stored per session. Each use
    looks the key up again, so a key removed or rotated in the config ends its sessions; a
    token signed out is refused by the replica that signed it out (others accept it until it
    expires: keep ``lifetime_s`` short where that matters)."""

    COOKIE = "refind_session"

    def __init__(self, keys: KeyRing, lifetime_s: float, secret: bytes | None = None) -> None:
        self.keys = keys
        self.lifetime_s = lifetime_s
        self._secret = secret or secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._ended: dict[str, float] = {}  # token -> its expiry, until then

    def start(self, principal: Principal) -> str:
        body = json.dumps({"k": principal.name, "f": self._key_mark(principal),
                           "e": round(time.time() + self.lifetime_s),
                           "n": secrets.token_urlsafe(9)}, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._sign(body))}"

    def _key_mark(self, principal: Principal) -> str:
        """Which key a session was started with, without carrying its hash: a session of a
        rotated key (same name, new key) is refused."""
        return self._sign(b"key:" + principal.key_sha256.encode()).hex()[:16]

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
            name, mark, expiry = str(claims["k"]), str(claims["f"]), float(claims["e"])
        except (ValueError, KeyError, TypeError):
            return None
        with self._lock:
            if time.time() >= expiry or token in self._ended:
                return None
        found = self.keys.by_name(name)
        if found is None or not hmac.compare_digest(self._key_mark(found), mark):
            return None
        return found

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
    """Appends one JSON line per audited request (thread-safe; flushed, not fsynced).

    The log is append-only and tamper-evident. Each writer (an API process; replicas may share
    one file) names itself in ``w`` and carries ``prev``: the sha256 of its own previous line,
    or for its first line the sha256 of the file's last line when it started (of "" for an
    empty file). So editing, removing or inserting a line breaks a chain at the next line of
    the same writer, and every writer's chain hangs from a line before it;
    ``verify_audit_log`` (``refind audit verify``) checks both. Lines cut from the very end of
    the file leave no trace. A line cut short by a crash is reported as damage.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._prev: str | None = None  # sha256 of this writer's last line, read lazily
        self._writer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    def write(self, entry: dict[str, object]) -> None:
        with self._lock:
            start = ""
            if self._prev is None:
                last, ended = _last_line(self.path)
                self._prev = _line_hash(last)
                start = "" if ended else "\n"  # a line cut short stays, on a line of its own
            line = json.dumps({"ts": round(time.time(), 3), **entry, "w": self._writer,
                               "prev": self._prev}, separators=(",", ":"))
            with self.path.open("a", encoding="utf-8") as f:
                f.write(start + line + "\n")
                f.flush()
            self._prev = _line_hash(line)


def _line_hash(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def _last_line(path: Path) -> tuple[str, bool]:
    """The last line of ``path`` ("" when it is empty or missing), and whether the file ends
    with a newline."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            block = b""
            while size > 0 and block.count(b"\n") < 2:
                step = min(size, 65536)
                size -= step
                f.seek(size)
                block = f.read(step) + block
    except FileNotFoundError:
        return "", True
    ended = not block or block.endswith(b"\n")
    lines = block.rstrip(b"\n").split(b"\n")
    return (lines[-1].decode("utf-8", "replace") if lines else ""), ended


@dataclass(frozen=True)
class AuditCheck:
    """What ``verify_audit_log`` found: lines read, lines before the chain began (written by
    an older refind), writers seen, and the first line (1-based) that breaks it, if any."""

    lines: int
    unchained: int
    broken_at: int | None
    problem: str | None = None
    writers: int = 0


def verify_audit_log(path: Path) -> AuditCheck:
    """Check the hash chains of the audit log at ``path`` (see ``AuditLog``)."""
    seen = {_line_hash("")}  # hashes of the lines so far: where a new writer may hang from
    last: dict[str, str] = {}  # writer -> hash of its last line
    unchained = n = 0

    def broken(problem: str) -> AuditCheck:
        return AuditCheck(n, unchained, n, problem, len(last))

    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            try:
                entry = json.loads(line)
            except ValueError:
                return broken(f"line {n} is not JSON (changed, or a write cut short)")
            if not isinstance(entry, dict):
                return broken(f"line {n} is not a JSON object")
            prev, writer = entry.get("prev"), str(entry.get("w", ""))
            if prev is None:
                if last:
                    return broken(f"line {n} has no prev after the chain began")
                unchained += 1
            elif not isinstance(prev, str):
                return broken(f"line {n}: prev is not a hash")
            elif writer in last and prev != last[writer]:
                return broken(f"line {n}: prev {prev[:12]}... is not the hash of its writer's "
                              "line before it: a line was changed, removed or inserted")
            elif writer not in last and prev not in seen:
                return broken(f"line {n}: its writer's first line follows no line before it")
            digest = _line_hash(line)
            seen.add(digest)
            if prev is not None:
                last[writer] = digest
    return AuditCheck(n, unchained, None, None, len(last))


class RateLimit:
    """Token buckets by name (a key, a client address): ``per_min`` requests a minute, in bursts
    of up to ``per_min / 2`` (thirty seconds' worth, at least 1); 0 is no limit. ``take`` raises
    ApiError 429 with the seconds to wait."""

    def __init__(self, per_min: int, what: str) -> None:
        self.per_min = per_min
        self.what = what
        self.burst = max(1.0, per_min / 2)
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)

    def take(self, name: str) -> None:
        """Spend one request of ``name``'s; RateLimited (429) when it has none left."""
        self._use(name, spend=True)

    def check(self, name: str) -> None:
        """RateLimited when ``name`` has nothing left, spending nothing (count failures only:
        ``check`` first, ``spend`` on a failure)."""
        self._use(name, spend=False)

    def spend(self, name: str) -> None:
        """Spend one of ``name``'s, down to none, never refusing."""
        with contextlib.suppress(RateLimited):
            self._use(name, spend=True)

    def _use(self, name: str, spend: bool) -> None:
        if self.per_min <= 0:
            return
        now = time.monotonic()
        rate = self.per_min / 60.0
        with self._lock:
            if len(self._buckets) > 10_000:  # forget idle ones: they would be full anyway
                self._buckets = {k: v for k, v in self._buckets.items()
                                 if now - v[1] < self.burst / rate}
            tokens, at = self._buckets.get(name, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * rate)
            if tokens < 1.0:
                wait = math.ceil((1.0 - tokens) / rate)
                self._buckets[name] = (tokens, now)
                raise RateLimited(f"{name} is over {self.what} ({self.per_min} a minute): retry "
                                  f"in {wait} s", wait)
            self._buckets[name] = (tokens - (1.0 if spend else 0.0), now)


class RateLimited(ApiError):
    """429, with the seconds to wait (sent as Retry-After)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(429, message)
        self.retry_after_s = retry_after_s


def check_camera_url(url: str, schemes: Iterable[str], hosts: Iterable[str]) -> None:
    """Refuse (ApiError 400) a camera URL added at run time whose scheme is not in ``schemes``
    (a bare path is ``file``), or whose host is not in ``hosts`` (names or CIDR ranges) when
    that is given, or resolves to a loopback, link-local (cloud metadata) or unspecified
    address that ``hosts`` does not list."""
    schemes, hosts = tuple(schemes), tuple(hosts)
    parts = urlsplit(url)
    scheme = parts.scheme.lower() if "://" in url else "file"
    if scheme not in schemes:
        raise ApiError(400, f"camera URL scheme {scheme!r} is not allowed here (allowed: "
                            f"{', '.join(schemes)}; api.camera_url_schemes)")
    if scheme == "file":
        return
    host = parts.hostname
    if not host:
        raise ApiError(400, f"camera URL {parts.scheme}://... has no host")
    try:
        found = {ipaddress.ip_address(a[4][0].split("%")[0])
                 for a in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, ValueError, UnicodeError) as err:
        raise ApiError(400, f"camera host {host!r} does not resolve: {err}") from None
    listed = any(_host_matches(host, found, entry) for entry in hosts)
    if hosts and not listed:
        raise ApiError(400, f"camera host {host!r} is not in api.camera_hosts "
                            f"({', '.join(hosts)})")
    internal = sorted(str(a) for a in found if _internal(a))
    if internal and not listed:
        raise ApiError(400, f"camera host {host!r} is an internal address ({', '.join(internal)}):"
                            " refused unless api.camera_hosts lists it")


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, link-local or unspecified, also when wrapped in an IPv6 address (IPv4-mapped,
    6to4, NAT64: ``[::ffff:169.254.169.254]`` is the metadata service too)."""
    inner: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        inner += [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
        if address in ipaddress.ip_network("64:ff9b::/96"):  # NAT64: the IPv4 address last
            inner.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return any(a.is_loopback or a.is_link_local or a.is_unspecified for a in inner)


def _host_matches(host: str, addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address],
                  entry: str) -> bool:
    try:
        net = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return host.lower() == entry.lower()
    return bool(addresses) and all(a in net for a in addresses)


def _json_response(status: int, message: str) -> list[Message]:
    body = json.dumps({"error": message}).encode()
    return [
        {"type": "http.response.start", "status": status,
         "headers": [(b"content-type", b"application/json"),
                     (b"content-length", str(len(body)).encode())]},
        {"type": "http.response.body", "body": body},
    ]


class UploadLimit:
    """ASGI wrapper: bodies sent to ``path`` (or, with ``path`` None, to any path but ``skip``)
    over ``max_bytes`` get 413 before any parsing.

    Checks the declared Content-Length first, then counts the bytes as they stream in (a chunked
    upload has no length); the body is then replayed to the app from memory.
    """

    def __init__(self, app: ASGIApp, path: str | None, max_bytes: int,
                 skip: Iterable[str] = (), what: str = "api.max_upload_mb + form") -> None:
        self.app = app
        self.path = path  # None: every path but those in ``skip`` (their own limits)
        self.skip = frozenset(skip)
        self.max_bytes = max_bytes
        self.what = what

    def _too_large(self) -> str:
        size = (f"{self.max_bytes / 2**20:.1f} MiB" if self.max_bytes >= 2**20
                else f"{self.max_bytes // 1024} KiB")
        return f"request body over {size} ({self.what})"

    def _applies(self, path: str) -> bool:
        return path == self.path if self.path is not None else path not in self.skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._applies(scope["path"]):
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
