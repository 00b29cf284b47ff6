"""What stands in front of the API when someone misuses it: every route behind a key or a
session, per-key search limits and sign-in limits (429 with Retry-After), body size limits on
every route, camera URLs checked against an allow-list, and an audit log whose hash chain shows
any edit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the API extra is not installed (pip install -e '.[api]')")
import httpx

from refind.app.api import create_app
from refind.app.api_guard import (
    ApiError,
    AuditLog,
    RateLimit,
    RateLimited,
    check_camera_url,
    verify_audit_log,
)
from refind.app.cli import main
from refind.config import parse_config
from tests.app.api_server import Server, api_config, sha

KEY = "hard-desk-1"
PUBLIC = {"/healthz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
          "/login"}


# ---- the audit chain ---------------------------------------------------------------------


def test_audit_log_chain_shows_an_edit_a_removal_and_continues_after_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(4):
        log.write({"key": "desk", "n": i})
    AuditLog(path).write({"key": "desk", "n": 4})  # a restarted API goes on from the last line
    check = verify_audit_log(path)
    assert (check.lines, check.unchained, check.broken_at) == (5, 0, None)
    assert main(["audit", "verify", "--log", str(path)]) == 0
    assert "5 lines, hash chain intact" in capsys.readouterr().out
    lines = path.read_text().splitlines()
    edited = [*lines[:2], lines[2].replace('"n":2', '"n":7'), *lines[3:]]
    path.write_text("\n".join(edited) + "\n")
    assert verify_audit_log(path).broken_at == 4  # the line after the edited one
    assert main(["audit", "verify", "--log", str(path)]) == 2
    assert "is broken: line 4" in capsys.readouterr().err
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # one line removed
    assert verify_audit_log(path).broken_at == 2


def test_audit_log_shared_by_two_replicas_keeps_both_chains(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    a, b = AuditLog(path), AuditLog(path)  # two API processes on one shared volume
    for i in range(6):
        (a if i % 2 else b).write({"key": "desk", "n": i})
    check = verify_audit_log(path)
    assert (check.lines, check.writers, check.broken_at) == (6, 2, None)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")  # one of a's lines removed
    assert verify_audit_log(path).broken_at == 5


def test_a_line_cut_short_by_a_crash_is_reported_and_later_lines_stay_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path).write({"key": "desk"})
    with path.open("a") as f:
        f.write('{"ts":1,"key":"des')  # the process died mid-write
    AuditLog(path).write({"key": "desk", "after": "restart"})
    assert json.loads(path.read_text().splitlines()[-1])["after"] == "restart"
    check = verify_audit_log(path)
    assert check.broken_at == 2 and "cut short" in str(check.problem)
    path.write_text("[1, 2]\n")
    assert "not a JSON object" in str(verify_audit_log(path).problem)


def test_audit_log_written_before_the_chain_is_reported_as_older(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"ts":1,"key":"old"}\n{"ts":2,"key":"old"}\n')
    AuditLog(path).write({"key": "new"})
    check = verify_audit_log(path)
    assert (check.lines, check.unchained, check.broken_at) == (3, 2, None)


# ---- rate limits and camera URLs -----------------------------------------------------------


def test_rate_limit_allows_a_burst_then_says_when_to_retry() -> None:
    limit = RateLimit(per_min=6, what="api.searches_per_min")  # a burst of 3, then one in 10 s
    for _ in range(3):
        limit.take("key 'desk'")
    with pytest.raises(RateLimited) as err:
        limit.take("key 'desk'")
    assert err.value.status == 429 and 1 <= err.value.retry_after_s <= 10
    assert "over api.searches_per_min (6 a minute)" in err.value.message
    limit.take("key 'other'")  # each key has its own bucket
    unlimited = RateLimit(per_min=0, what="x")
    for _ in range(1000):
        unlimited.take("k")


@pytest.mark.parametrize(
    ("url", "schemes", "hosts", "refusal"),
    [
        ("rtsp://10.4.0.21:554/stream1", None, (), None),
        ("https://192.168.1.9/video.ts", None, (), None),
        ("/srv/video/gate.mp4", None, (), "scheme 'file' is not allowed"),
        ("file:///etc/passwd", None, (), "scheme 'file' is not allowed"),
        ("/srv/video/gate.mp4", ("file",), (), None),
        ("gopher://10.0.0.1/", None, (), "scheme 'gopher'"),
        ("rtsp://127.0.0.1:8554/cam", None, (), "internal address (127.0.0.1)"),
        ("http://169.254.169.254/latest/meta-data", None, (), "internal address"),
        ("http://0.0.0.0:8080/", None, (), "internal address"),
        ("rtsp://[::1]/x", None, (), "internal address"),
        ("http://[::ffff:169.254.169.254]/", None, (), "internal address"),
        ("rtsp://[::ffff:127.0.0.1]:8554/cam", None, (), "internal address"),
        ("http://[64:ff9b::a9fe:a9fe]/", None, (), "internal address"),
        ("http://[2002:7f00:1::]/", None, (), "internal address"),
        ("rtsp://127.0.0.1:8554/cam", None, ("127.0.0.1/32",), None),
        ("rtsp://10.4.0.21/s", None, ("10.4.0.0/16",), None),
        ("rtsp://10.5.0.21/s", None, ("10.4.0.0/16",), "not in api.camera_hosts"),
        ("rtsp:///nohost", None, (), "has no host"),
        ("rtsp://no-such-host.invalid/x", None, (), "does not resolve"),
    ],
)
def test_camera_urls_are_checked_against_the_allow_list(
    url: str, schemes: tuple[str, ...] | None, hosts: tuple[str, ...], refusal: str | None
) -> None:
    allowed = schemes or ("rtsp", "rtsps", "http", "https", "udp")
    if refusal is None:
        check_camera_url(url, allowed, hosts)
        return
    with pytest.raises(ApiError) as err:
        check_camera_url(url, allowed, hosts)
    assert err.value.status == 400 and refusal in err.value.message


# ---- over HTTP -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(gallery: Path) -> Iterator[Server]:
    keys = [{"name": "desk", "key_sha256": sha(KEY), "forget": True, "manage_cameras": True}]
    cfg = parse_config(api_config(gallery, keys=keys, searches_per_min=4, key_failures_per_min=4,
                                  max_body_kb=8, serve_url="http://127.0.0.1:9"))
    with Server(create_app(cfg)) as s:
        yield s


def _routes(routes: list) -> Iterator[object]:
    """Every route, also those of included routers (FastAPI may keep an included router as one
    entry holding its own routes)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from _routes(inner.routes) if inner is not None else [route]


def test_every_route_needs_a_key_or_a_session(limited: Server) -> None:
    app = limited.server.config.app
    c = httpx.Client(base_url=limited.url, timeout=30, follow_redirects=False)
    checked = []
    for route in _routes(app.routes):
        path = getattr(route, "path", "")
        if path in PUBLIC:
            continue
        url = (path.replace("{camera}", "pets").replace("{track_id}", "1")
               .replace("{path:path}", "pets/1/000001.jpg").replace("{name}", "ui.js"))
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method == "HEAD":
                continue
            r = c.request(method, url)
            if url.startswith(("/v1/", "/static/")):
                assert r.status_code == 401, (method, url, r.status_code, r.text[:200])
            else:  # a page: to the sign-in, and back after it
                assert r.status_code == 303 and r.headers["location"].startswith("/login"), (
                    method, url, r.status_code)
            checked.append(f"{method} {path}")
    assert len(checked) >= 20, checked
    assert c.get("/static/ui.css").status_code == 200  # the sign-in page's look, nothing more


def test_searches_over_the_key_limit_get_429_with_retry_after(limited: Server,
                                                              gallery: Path) -> None:
    c = httpx.Client(base_url=limited.url, timeout=60, headers={"X-API-Key": KEY})
    codes = [c.post("/v1/search/text", json={"text": "a man in a black top"}).status_code
             for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429  # a burst of two at 4 a minute
    r = c.post("/v1/search/text", json={"text": "a man in a black top"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "over api.searches_per_min" in r.json()["error"]
    last = json.loads((gallery / "audit.jsonl").read_text().splitlines()[-1])
    assert last["status"] == 429 and last["key"] == "desk"  # refusals are audited


def test_right_keys_are_never_counted_as_failures() -> None:
    from refind.app.api_guard import KeyRing
    from refind.app.config import ApiConfig, ApiKeyConfig

    ring = KeyRing.from_config(ApiConfig(keys=(ApiKeyConfig(name="d", key_sha256=sha(KEY)),),
                                         key_failures_per_min=2))
    for _ in range(50):
        assert ring.authenticate(KEY, "address 10.0.0.1").name == "d"
    with pytest.raises(ApiError):
        ring.authenticate("wrong", "address 10.0.0.1")
    with pytest.raises(RateLimited):
        ring.authenticate(KEY, "address 10.0.0.1")  # out of tries: wait, even with the key
    assert ring.authenticate(KEY, "address 10.0.0.2").name == "d"  # another address


def test_bodies_over_the_limit_are_refused_on_every_route(limited: Server) -> None:
    c = httpx.Client(base_url=limited.url, timeout=30, headers={"X-API-Key": KEY})
    big = {"reason": "x" * 10_000}
    r = c.post("/v1/tracks/pets/1/forget", json=big)
    assert r.status_code == 413 and "api.max_body_kb" in r.json()["error"]
    r = c.post("/v1/cameras", json={"name": "a", "url": "rtsp://10.0.0.1/" + "x" * 9000})
    assert r.status_code == 413


def test_camera_added_through_the_api_is_checked_before_serve_is_asked(limited: Server,
                                                                       gallery: Path) -> None:
    c = httpx.Client(base_url=limited.url, timeout=30, headers={"X-API-Key": KEY})
    r = c.post("/v1/cameras", json={"name": "x", "url": "file:///etc/passwd"})
    assert r.status_code == 400 and "scheme 'file' is not allowed" in r.json()["error"]
    r = c.post("/v1/cameras", json={"name": "x", "url": "http://169.254.169.254/"})
    assert r.status_code == 400 and "internal address" in r.json()["error"]
    r = c.post("/v1/cameras", json={"name": "x", "url": "rtsp://10.0.0.7/stream"})
    assert r.status_code == 503 and "did not answer" in r.json()["error"]  # serve is not there
    last = json.loads((gallery / "audit.jsonl").read_text().splitlines()[-1])
    assert last["endpoint"] == "/v1/cameras" and last["status"] == 503


def test_wrong_keys_are_limited_per_address_at_sign_in_and_in_the_header(
    limited: Server,
) -> None:
    """Last in the module: it leaves this address out of tries for a while."""
    c = httpx.Client(base_url=limited.url, timeout=30)
    codes = [c.post("/login", data={"key": f"guess-{i}"}).status_code for i in range(2)]
    assert codes == [401, 401]  # a burst of two wrong keys at 4 a minute
    assert c.get("/v1/cameras", headers={"X-API-Key": "guess-3"}).status_code == 429
    r = c.post("/login", data={"key": KEY})  # even the right key waits now
    assert r.status_code == 429 and "Too many wrong keys" in r.text
    assert int(r.headers["retry-after"]) >= 1
