"""Watchlists and alerts over real HTTP (a uvicorn server on a loopback port, a gallery ingested
from PETS09-S2L1 by the real ingest, with global ids): who may add and remove watches, what a
scoped key sees, alerts from the durable record as JSON and as server-sent events, and global
ids on search hits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the API extra is not installed (pip install -e '.[api]')")
import httpx

from refind.app.api import create_app
from refind.config import parse_config
from refind.indexer.journal import EventJournal, journal_dir
from refind.streaming.events import AlertEvent
from tests.app.api_server import KEYS, Server, api_config, key_configs, sha

WATCHER = "watcher-secret-4"
PETS_WATCHER = "pets-watcher-secret-5"


@pytest.fixture(scope="module")
def web(gallery: Path) -> Iterator[Server]:
    keys = [*key_configs(),
            {"name": "watcher", "key_sha256": sha(WATCHER), "manage_watches": True},
            {"name": "pets-watcher", "key_sha256": sha(PETS_WATCHER), "cameras": ["pets"],
             "manage_watches": True}]
    with Server(create_app(parse_config(api_config(gallery, keys=keys)))) as s:
        yield s


def client(server: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=60)


def test_watches_are_made_listed_refused_and_removed(web: Server, gallery: Path) -> None:
    admin, desk = client(web, WATCHER), client(web, KEYS["desk"])
    pets = client(web, PETS_WATCHER)
    made = admin.post("/v1/watches", data={"name": "red-coat", "text": "woman in a red coat",
                                           "threshold": "0.8"})
    assert made.status_code == 201, made.text
    assert made.json()["kind"] == "text" and made.json()["created_by"] == "watcher"
    again = admin.post("/v1/watches", data={"name": "red-coat", "text": "anyone"})
    assert again.status_code == 409 and "remove it first" in again.json()["error"]
    denied = desk.post("/v1/watches", data={"name": "x", "text": "a man"})
    assert denied.status_code == 403 and "manage_watches: true" in denied.json()["error"]
    everywhere = pets.post("/v1/watches", data={"name": "y", "text": "a man"})
    assert everywhere.status_code == 403 and "name them" in everywhere.json()["error"]
    outside = pets.post("/v1/watches", data={"name": "y", "text": "a man", "cameras": "other"})
    assert outside.status_code == 403
    crop = next((gallery / "crops").rglob("*.jpg"))
    photo = pets.post("/v1/watches", data={"name": "pets-man", "cameras": "pets"},
                      files={"image": ("p.jpg", crop.read_bytes(), "image/jpeg")})
    assert photo.status_code == 201, photo.text
    assert photo.json()["kind"] == "photo" and photo.json()["model_id"].startswith("person-")
    assert "vector" not in photo.json() and "more_vectors" not in photo.json()
    for bad, why in (({"name": "z"}, "--image"), ({"name": "z", "text": "x", "threshold": "2"},
                                                  "threshold"),
                     ({"name": "bad name", "text": "x"}, "name")):
        r = admin.post("/v1/watches", data=bad)
        assert r.status_code in (400, 422) and why in r.text, (bad, r.text)
    broken = admin.post("/v1/watches", data={"name": "z"},
                        files={"image": ("p.jpg", b"not an image", "image/jpeg")})
    assert broken.status_code == 400 and "image" in broken.json()["error"]
    assert sorted(w["name"] for w in desk.get("/v1/watches").json()["watches"]) == [
        "pets-man", "red-coat"]
    assert [w["name"] for w in pets.get("/v1/watches").json()["watches"]] == ["pets-man"]
    assert pets.delete("/v1/watches/red-coat").status_code == 403  # not within its cameras
    assert admin.delete("/v1/watches/red-coat").json() == {"removed": "red-coat"}
    assert admin.delete("/v1/watches/red-coat").status_code == 404
    audit = [json.loads(x) for x in (gallery / "audit.jsonl").read_text().splitlines()]
    seen = [(a["method"], a["watch"], a["status"]) for a in audit if a.get("watch")]
    assert ("POST", "red-coat", 201) in seen and ("DELETE", "red-coat", 200) in seen
    assert ("POST", "x", 403) in seen


def test_alerts_from_the_record_reach_the_list_and_the_stream(web: Server, gallery: Path) -> None:
    c = client(web, KEYS["desk"])
    got: list[dict] = []

    def listen() -> None:
        with c.stream("GET", "/v1/alerts/stream") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: {\"") and "watch" in line:
                    got.append(json.loads(line[6:]))
                    return

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    time.sleep(1.0)  # the stream is open before the alert is written
    alert = AlertEvent(camera="pets", ts_ns=5 * 10**9, watch="pets-man", track_id=3,
                       global_id=2, first_ts_ns=4 * 10**9, score=0.91,
                       reasons=("photo watch",), thumbnail="pets/3/x.jpg")
    EventJournal(journal_dir(gallery)).append([alert])  # as the identity actor writes it
    reader.join(timeout=20)
    assert got and got[0]["watch"] == "pets-man" and got[0]["global_id"] == 2
    listed = c.get("/v1/alerts", params={"limit": 5}).json()["alerts"]
    assert listed[0]["event_id"] == alert.event_id
    assert client(web, KEYS["other"]).get("/v1/alerts").json()["alerts"] == []  # not its camera
    signed_in = httpx.Client(base_url=web.url, timeout=60)
    assert signed_in.post("/login", data={"key": KEYS["desk"], "next": "/"}).status_code == 303
    page = signed_in.get("/alerts")
    assert page.status_code == 200 and "pets-man: pets track 3" in page.text
    assert "/v1/crops/pets/3/x.jpg" in page.text and "pets-man" in page.text


def test_search_hits_carry_global_ids_and_people(web: Server, gallery: Path) -> None:
    assert list((gallery / "identities").glob("*.json")), "ingest wrote no global ids"
    crop = next((gallery / "crops").rglob("*.jpg"))
    r = client(web, KEYS["desk"]).post("/v1/search/image", files={
        "image": ("q.jpg", crop.read_bytes(), "image/jpeg")}, data={"k": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert all(isinstance(h["global_id"], int) for h in body["hits"])
    grouped = sum(len(p["tracklets"]) for p in body["people"])
    assert grouped == len(body["hits"]) and len(body["people"]) <= len(body["hits"])


def signed_in(server: Server, key: str) -> httpx.Client:
    c = httpx.Client(base_url=server.url, timeout=60)
    assert c.post("/login", data={"key": key, "next": "/"}).status_code == 303
    return c


def test_watch_from_a_tracklet_page_and_from_the_alerts_page(web: Server, gallery: Path) -> None:
    track = int(next(p for p in (gallery / "crops" / "pets").iterdir() if p.is_dir()).name)
    c = signed_in(web, WATCHER)
    page = c.get(f"/tracks/pets/{track}").text
    assert "This person elsewhere" in page and "Person " in page and 'action="/watches/add"' in page
    made = c.post("/watches/add", data={"from_track": f"pets/{track}", "name": "seen-once",
                                        "threshold": "0.8", "cameras": "pets"})
    assert made.status_code == 303 and made.headers["location"] == "/alerts?watched=seen-once"
    shown = c.get("/alerts?watched=seen-once").text
    assert "Watching for seen-once" in shown and 'action="/watches/seen-once/remove"' in shown
    watch = client(web, WATCHER).get("/v1/watches").json()["watches"]
    assert {"name": "seen-once", "kind": "photo", "cameras": ["pets"]}.items() <= next(
        w for w in watch if w["name"] == "seen-once").items()
    text = c.post("/watches/add", data={"name": "by-words", "text": "a man in black"})
    assert text.status_code == 303
    bad = c.post("/watches/add", data={"name": "x", "text": "a man", "threshold": "lots"})
    assert bad.status_code == 400 and "threshold must be a number" in bad.text
    foreign = c.post("/watches/add", data={"name": "y", "text": "a man"},
                     headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert c.get("/alerts?watched=<b>x</b>").text.count("Watching for") == 0  # never echoed
    for name in ("seen-once", "by-words"):
        gone = c.post(f"/watches/{name}/remove")
        assert gone.status_code == 303 and gone.headers["location"].endswith(f"unwatched={name}")
    desk = signed_in(web, KEYS["desk"])
    assert 'action="/watches/add"' not in desk.get(f"/tracks/pets/{track}").text
    refused = desk.post("/watches/add", data={"name": "z", "text": "a man"})
    assert refused.status_code == 403 and "manage_watches: true" in refused.text
