"""The web UI's server side over real HTTP (no browser): signing in, sessions, what a session
may reach, clips with byte ranges, find similar, forget with its permission and audit, camera
status, the static files, and the key ``refind api`` makes when none is configured. The browser
itself is driven in ``test_ui_browser.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the API extra is not installed (pip install -e '.[api]')")
import httpx

from refind.app.api import create_app, with_session_key
from refind.app.api_guard import KeyRing, Sessions
from refind.app.config import ApiConfig, ApiKeyConfig
from refind.app.web import _safe_next
from refind.config import parse_config
from refind.indexer.blobs import clip_path
from refind.streaming.config import ConfigError
from tests.app.api_server import Server, api_config, sha

KEY, READER, SCOPED = "web-desk-1", "web-reader-2", "web-gate-3"


@pytest.fixture(scope="module")
def web(gallery: Path) -> Iterator[Server]:
    keys = [{"name": "desk", "key_sha256": sha(KEY), "forget": True},
            {"name": "reader", "key_sha256": sha(READER)},
            {"name": "gate-desk", "key_sha256": sha(SCOPED), "cameras": ["gate"]}]
    with Server(create_app(parse_config(api_config(gallery, keys=keys)))) as s:
        yield s


def client(web: Server, key: str | None = None) -> httpx.Client:
    c = httpx.Client(base_url=web.url, timeout=60, follow_redirects=False)
    if key is not None:
        r = c.post("/login", data={"key": key, "next": "/"})
        assert r.status_code == 303, r.text
    return c


def a_track(web: Server) -> tuple[str, int]:
    c = client(web, KEY)
    rows = c.get("/v1/cameras/status").json()["cameras"]
    return rows[0]["camera"], rows[0]["newest"]["track_id"]


def test_pages_wait_behind_sign_in_and_a_session_opens_the_api(web: Server) -> None:
    c = client(web)
    r = c.get("/?q=a+man")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F%3Fq%3Da%2Bman"
    assert c.get("/v1/cameras").status_code == 401
    bad = c.post("/login", data={"key": "wrong", "next": "/"})
    assert bad.status_code == 401 and "That key is not valid" in bad.text
    ok = c.post("/login", data={"key": KEY, "next": "/?q=a+man"})
    assert ok.status_code == 303 and ok.headers["location"] == "/?q=a+man"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and KEY not in cookie
    assert c.get("/v1/cameras").json() == {"cameras": ["pets"]}
    page = c.get("/")
    assert page.status_code == 200 and "Signed in as <strong>desk</strong>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    c.post("/logout")
    assert c.get("/v1/cameras").status_code == 401  # the session ended with the sign-out


def test_a_sign_in_from_another_site_is_refused(web: Server) -> None:
    c = client(web)
    r = c.post("/login", data={"key": KEY}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers
    assert _safe_next("//evil.example/x") == "/" and _safe_next("https://evil.example") == "/"
    assert _safe_next("/tracks/a/1") == "/tracks/a/1"


def test_sessions_are_signed_expire_and_follow_the_key_config() -> None:
    ring = KeyRing.from_config(ApiConfig(keys=(ApiKeyConfig(name="desk", key_sha256=sha(KEY)),)))
    desk = ring.authenticate(KEY)
    sessions = Sessions(ring, lifetime_s=3600, secret=b"s" * 32)
    token = sessions.start(desk)
    assert KEY not in token and sessions.principal(token) == desk
    # another replica with the same secret accepts it; one with another secret does not
    assert Sessions(ring, 3600, b"s" * 32).principal(token) == desk
    assert Sessions(ring, 3600, b"t" * 32).principal(token) is None
    body, mac = token.split(".")
    forged = body.replace(body[5], "A" if body[5] != "A" else "B") + "." + mac
    assert sessions.principal(forged) is None
    assert sessions.principal(None) is None and sessions.principal("made-up") is None
    assert Sessions(ring, lifetime_s=-1, secret=b"s" * 32).principal(
        Sessions(ring, -1, b"s" * 32).start(desk)) is None  # expired
    emptied = KeyRing.from_config(ApiConfig(keys=(ApiKeyConfig(name="other",
                                                               key_sha256=sha("x")),)))
    assert Sessions(emptied, 3600, b"s" * 32).principal(token) is None  # the key was removed
    rotated = KeyRing.from_config(ApiConfig(keys=(ApiKeyConfig(name="desk",
                                                               key_sha256=sha("new-key")),)))
    assert Sessions(rotated, 3600, b"s" * 32).principal(token) is None  # same name, new key
    sessions.end(token)
    assert sessions.principal(token) is None  # signed out


def test_text_search_page_shows_chips_cards_and_removal_links(web: Server,
                                                              gallery: Path) -> None:
    c = client(web, KEY)
    r = c.get("/", params={"q": "a man in a black top on camera pets"})
    assert r.status_code == 200
    assert 'class="chip camera">camera pets' in r.text
    assert 'href="/?q=a+man+in+a+black+top"' in r.text  # removing the camera keeps the words
    assert r.text.count('<li class="card">') >= 1
    last = json.loads((gallery / "audit.jsonl").read_text().splitlines()[-1])
    assert last["endpoint"] == "/ (text)" and last["key"] == "desk" and last["status"] == 200
    bad = c.get("/", params={"q": "a man", "since": "yesterday-ish"})
    assert "since must be a date and time" in bad.text


def test_clip_is_served_whole_or_by_range_within_the_key_scope(web: Server,
                                                               gallery: Path) -> None:
    camera, track = a_track(web)
    c = client(web, KEY)
    meta = c.get(f"/v1/tracks/{camera}/{track}").json()
    assert meta["clip_url"] == f"/v1/clips/{camera}/{track}"
    whole = c.get(meta["clip_url"])
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.content == (gallery / "crops" / clip_path(camera, track)).read_bytes()
    part = c.get(meta["clip_url"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == whole.content[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{len(whole.content)}"
    tail = c.get(meta["clip_url"], headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    past = c.get(meta["clip_url"], headers={"Range": f"bytes={len(whole.content)}-"})
    assert past.status_code == 416
    backwards = c.get(meta["clip_url"], headers={"Range": "bytes=5-3"})
    assert backwards.status_code == 200 and backwards.content == whole.content
    assert client(web, SCOPED).get(meta["clip_url"]).status_code == 403
    assert c.get(f"/v1/clips/{camera}/999999").status_code == 404
    context = meta["best"]["url"].replace(".jpg", ".ctx.jpg")
    assert c.get(context).headers["content-type"] == "image/jpeg"


def test_find_similar_leaves_the_seed_out(web: Server) -> None:
    camera, track = a_track(web)
    c = client(web, KEY)
    body = c.get(f"/v1/tracks/{camera}/{track}/similar", params={"k": 5}).json()
    assert 1 <= len(body["hits"]) <= 5
    assert all((h["camera"], h["track_id"]) != (camera, track) for h in body["hits"])
    assert c.get(f"/v1/tracks/{camera}/999999/similar").status_code == 404
    page = c.get("/", params={"like": f"{camera}/{track}"})
    assert f"look like <a href=\"/tracks/{camera}/{track}\">" in page.text


def test_forget_needs_the_permission_and_a_reason_and_is_audited(web: Server,
                                                                  gallery: Path) -> None:
    camera, track = a_track(web)
    url = f"/v1/tracks/{camera}/{track}/forget"
    refused = client(web, READER).post(url, json={"reason": "test"})
    assert refused.status_code == 403 and "forget: true" in refused.json()["error"]
    assert client(web, SCOPED).post(url, json={"reason": "test"}).status_code == 403
    c = client(web, KEY)
    assert c.post(url, json={"reason": ""}).status_code == 422
    page = c.post(f"/tracks/{camera}/{track}/forget", data={"reason": "x"})
    assert page.status_code == 400 and "Tick the box" in page.text  # not confirmed: kept
    assert c.get(f"/v1/tracks/{camera}/{track}").status_code == 200
    done = c.post(f"/tracks/{camera}/{track}/forget",
                  data={"reason": "erasure request 7", "confirm": "yes"})
    assert done.status_code == 303 and "forgot=" in done.headers["location"]
    assert c.get(f"/v1/tracks/{camera}/{track}").status_code == 404
    assert not (gallery / "crops" / clip_path(camera, track)).exists()
    lines = [json.loads(x) for x in (gallery / "audit.jsonl").read_text().splitlines()]
    forgets = [x for x in lines if str(x.get("endpoint", "")).endswith("/forget")]
    assert [x["status"] for x in forgets[-3:]] == [403, 403, 200]  # refusals audited too
    assert forgets[-1]["reason"] == "erasure request 7" and forgets[-1]["key"] == "desk"
    assert forgets[-1]["vectors_deleted"] >= 1


def test_static_files_and_alert_stream(web: Server) -> None:
    anon = client(web)
    assert anon.get("/static/ui.css").status_code == 200  # the sign-in page's look
    assert anon.get("/static/ui.js").status_code == 401
    assert anon.get("/static/..%2Fapi.py").status_code == 404
    c = client(web, KEY)
    assert c.get("/static/ui.js").headers["content-type"].startswith("text/javascript")
    with c.stream("GET", "/v1/alerts/stream") as stream:
        first = next(stream.iter_lines())
        assert first == "retry: 2000"
    assert anon.get("/v1/alerts/stream").status_code == 401


def test_refind_api_makes_a_loopback_key_when_none_is_configured(tmp_path: Path) -> None:
    cfg = parse_config(api_config(tmp_path))
    made, key = with_session_key(cfg)
    assert key is not None and len(key) >= 24
    who = KeyRing.from_config(made.api).authenticate(key)
    assert who.name == "operator" and who.cameras is None and who.may_forget
    exposed = parse_config(api_config(tmp_path, host="0.0.0.0"))
    assert with_session_key(exposed) == (exposed, None)  # another host: no key is made
    with pytest.raises(ConfigError, match=r"api\.keys is empty"):
        create_app(exposed, engine_factory=lambda c: pytest.fail("engine built"))


def test_notes_on_the_page_are_composed_never_echoed_from_the_url(web: Server) -> None:
    c = client(web, KEY)
    assert 'class="flash"' not in c.get("/", params={"flash": "Send your key to x"}).text
    assert 'class="flash"' not in c.get("/", params={"forgot": "a/1", "vectors": "evil"}).text
    shown = c.get("/", params={"forgot": "pets/3", "vectors": "4", "crops": "4"}).text
    assert "Forgot pets track 3: 4 vectors and 4 crops deleted" in shown


def test_forget_while_a_writer_holds_the_gallery_changes_nothing(web: Server,
                                                                  gallery: Path) -> None:
    """refind serve or an ingest writing the gallery: a clear 409, no tombstone, track kept."""
    import os

    from refind.indexer.gallery_store import lock_gallery
    from refind.indexer.shards import existing_shards

    camera, track = a_track(web)
    journal = gallery / "events" / "forget.jsonl"
    before = journal.read_text() if journal.exists() else ""
    fd = lock_gallery(existing_shards(gallery)[0])  # as a live writer holds it
    try:
        r = client(web, KEY).post(f"/v1/tracks/{camera}/{track}/forget", json={"reason": "x"})
    finally:
        os.close(fd)
    assert r.status_code == 409 and "cannot forget now" in r.json()["error"]
    assert (journal.read_text() if journal.exists() else "") == before
    assert client(web, KEY).get(f"/v1/tracks/{camera}/{track}").status_code == 200
    lines = [json.loads(x) for x in (gallery / "audit.jsonl").read_text().splitlines()]
    last = [x for x in lines if str(x.get("endpoint", "")).endswith("/forget")][-1]
    assert last["status"] == 409 and last["reason"] == "x"
