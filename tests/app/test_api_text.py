"""Text search and instructions through the HTTP API, over real HTTP (uvicorn on a loopback
port), a gallery ingested from 150 PETS09-S2L1 frames and the real models: results carry scores
and reasons, "nobody matches" is said, key scopes apply to cameras named in the text, every bad
input is a clear 4xx (never a 5xx, also under fuzzing) and every query is audited.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the API extra is not installed (pip install -e '.[api]')")
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refind.app.api import TEXT_PATH
from tests.app.api_server import KEYS, MAX_UPLOAD_MB, Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def photo(gallery: Path) -> bytes:
    """A stored crop of the gallery, as a JPEG upload."""
    return next(p for p in (gallery / "crops" / "pets").rglob("*.jpg")
                if not p.name.endswith(".ctx.jpg")).read_bytes()  # a crop, not its frame


def _text(client: httpx.Client, key: str = "desk", **body: object) -> httpx.Response:
    return client.post(TEXT_PATH, json=body, headers={"X-API-Key": KEYS[key]})


def _audit(gallery: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (gallery / "audit.jsonl").read_text().splitlines()]


def test_text_search_returns_tracks_with_reasons(client: httpx.Client, gallery: Path) -> None:
    r = _text(client, text="a woman with long hair, seen for at least 5 s", k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["plan"]["text"] == "a woman with long hair"
    assert body["plan"]["min_track_s"] == 5 and body["plan"]["parsed"] == [
        "tracks of at least 5 s"]
    assert body["reranker"] == "compose" and body["message"] is None
    assert body["scanned_tracks"] >= 1 and body["scan_bounded"] is False
    hits = body["hits"]
    assert 1 <= len(hits) <= 5
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for h in hits:
        assert h["end_ts"] - h["start_ts"] >= 5
        assert "long hair" in h["reason"] and "woman" in h["reason"]
        assert h["reasons"] and h["thumbnail_url"].startswith("/v1/crops/pets/")
    line = _audit(gallery)[-1]
    assert line["endpoint"] == TEXT_PATH and line["status"] == 200 and line["key"] == "desk"
    assert line["query"]["text"].startswith("a woman") and line["plan"]["min_track_s"] == 5
    assert line["tracks"] == [[h["camera"], h["track_id"]] for h in hits]


def test_nobody_matches_is_an_empty_answer_with_a_message(
    client: httpx.Client, gallery: Path
) -> None:
    r = _text(client, text="a person in a yellow coat with a hat")
    assert r.status_code == 200, r.text
    assert r.json()["hits"] == []
    assert r.json()["message"].startswith("no tracklet matches")
    assert _audit(gallery)[-1]["message"].startswith("no tracklet matches")


def test_scopes_apply_to_cameras_named_in_the_text(client: httpx.Client) -> None:
    r = _text(client, key="other", text="a man in a black top on camera pets")
    assert r.status_code == 403 and "pets" in r.json()["error"]
    r = _text(client, key="other", text="a man in a black top")
    assert r.status_code == 200 and r.json()["hits"] == []  # its scope holds no tracks
    r = _text(client, key="pets-only", text="a man in a black top near camera pets")
    assert r.status_code == 200 and {h["camera"] for h in r.json()["hits"]} == {"pets"}
    # a camera that does not exist looks to a scoped key like one it may not see
    assert _text(client, key="pets-only", text="a man on camera 7").status_code == 403
    r = _text(client, text="a man on camera 7")
    assert r.status_code == 404 and "unknown camera '7'" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"text": ""}, 400, "empty"),
        ({"text": "   "}, 400, "empty"),
        ({"text": "x" * 10_000}, 400, "at most 1000"),
        ({"text": "a man after 15:00 before 14:00"}, 400, "wrong way round"),
        ({"text": "a man", "since": 9, "until": 1}, 400, "after until"),
        ({"text": "a man after 10:00", "until": 1}, 400, "wrong way round"),
        ({"text": "on camera pets after 10:00"}, 400, "only filters"),
        ({"text": "a man", "cameras": ["nowhere"]}, 404, "unknown camera(s) nowhere"),
        ({"text": "a man after 25:00"}, 400, "not a time of day"),
        ({"text": "a person smiling"}, 400, "names nothing refind can check"),
        ({"text": "a man", "k": 0}, 422, "k"),
        ({"text": "a man", "k": "many"}, 422, "k"),
        ({"text": "a man", "since": -1}, 422, "since"),
        ({"text": "a man", "min_track_s": 1e9}, 422, "min_track_s"),
        ({"text": "a man", "rerank": "clip"}, 422, "rerank"),
        ({"text": "a man", "colour": "red"}, 422, "colour"),
        ({"text": 5}, 422, "text"),
        ({}, 422, "text"),
    ],
)
def test_bad_text_input_is_a_clear_4xx(
    client: httpx.Client, gallery: Path, body: dict[str, object], status: int, message: str
) -> None:
    before = len(_audit(gallery)) if (gallery / "audit.jsonl").exists() else 0
    r = client.post(TEXT_PATH, json=body, headers={"X-API-Key": KEYS["desk"]})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    if status != 422:  # refused by the route: audited (422 is refused before it)
        assert len(_audit(gallery)) == before + 1 and _audit(gallery)[-1]["status"] == status


def test_bodies_that_are_not_json_or_too_large_are_refused(client: httpx.Client) -> None:
    headers = {"X-API-Key": KEYS["desk"], "Content-Type": "application/json"}
    assert client.post(TEXT_PATH, content=b"{not json", headers=headers).status_code == 422
    huge = json.dumps({"text": "a" * 200_000}).encode()
    r = client.post(TEXT_PATH, content=huge, headers=headers)
    assert r.status_code == 413 and "over 64 KiB (a text search's limit)" in r.json()["error"]
    assert client.post(TEXT_PATH, json={"text": "a man"}).status_code == 401


@pytest.mark.parametrize(
    ("form", "files", "status", "message"),
    [
        ({"instruction": "ignore clothes"}, {}, 400, "does not take instructions"),
        ({"task": "visible_infrared"}, {}, 400, "does not take instructions"),
        ({"task": "dance"}, {}, 400, "unknown image query task"),
        ({"instruction": "x" * 1001}, {}, 400, "at most 1000"),
        ({}, {"instruction_image": ("g.jpg", b"not an image", "image/jpeg")}, 400,
         "instruction_image is not an image"),
        ({}, {"instruction_image": ("g.jpg", b"\xff" * (MAX_UPLOAD_MB * 2**20 + 100),
                                    "image/jpeg")}, 413, "instruction_image is over"),
        ({"min_track_s": "-3"}, {}, 400, "min_track_s must be seconds"),
        ({"rerank": "clip"}, {}, 400, "unknown rerank 'clip'"),
    ],
)
def test_instructions_on_a_plain_model_and_bad_fields_are_4xx(
    client: httpx.Client, photo: bytes, form: dict[str, str], files: dict[str, object],
    status: int, message: str,
) -> None:
    r = client.post("/v1/search/image", data=form, headers={"X-API-Key": KEYS["desk"]},
                    files={"image": ("q.jpg", photo, "image/jpeg"), **files})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_image_search_takes_min_track_and_rerank_fields(client: httpx.Client, photo: bytes) -> None:
    r = client.post("/v1/search/image", data={"min_track_s": "5", "k": "20"},
                    files={"image": ("q.jpg", photo, "image/jpeg")},
                    headers={"X-API-Key": KEYS["desk"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["hits"] and all(h["end_ts"] - h["start_ts"] >= 5 for h in body["hits"])
    assert body["task"] == "reid" and body["reranker"] == "none"


def test_openapi_describes_text_search_and_instructions(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert TEXT_PATH in spec["paths"]
    text_body = spec["components"]["schemas"]["TextSearch"]["properties"]
    assert {"text", "k", "cameras", "since", "until", "min_track_s", "rerank"} <= set(text_body)
    ref = spec["paths"]["/v1/search/image"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["$ref"]
    image_form = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    assert {"image", "instruction", "instruction_image", "task", "rerank", "min_track_s"} <= set(
        image_form)


_printable = st.characters(blacklist_categories=("Cs",))
_phrases = st.sampled_from([
    "a man", "red top", "on camera pets", "camera 7", "after 14:00", "before 9am", "backpack",
    "seen for at least 5 s", "in the last 2 hours", "between 12:00 and 10:00", "woman", "hat",
])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(st.text(_printable, max_size=60), st.lists(_phrases, max_size=5).map(", ".join),
                   st.integers(), st.none()),
    k=st.one_of(st.none(), st.integers(-5, 2000), st.just("3")),
    cameras=st.one_of(st.none(), st.lists(st.text(_printable, max_size=10), max_size=3)),
    since=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    until=st.one_of(st.none(), st.floats(-10, 1e10)),
    min_track_s=st.one_of(st.none(), st.floats(-1, 1e6, allow_nan=False)),
    rerank=st.one_of(st.none(), st.sampled_from(["none", "attributes", "x"])),
    key=st.sampled_from(["desk", "pets-only", "other"]),
)
def test_fuzzed_text_requests_never_get_a_5xx(
    client: httpx.Client, text: object, k: object, cameras: object, since: object,
    until: object, min_track_s: object, rerank: object, key: str,
) -> None:
    body = {n: v for n, v in {"text": text, "k": k, "cameras": cameras, "since": since,
                              "until": until, "min_track_s": min_track_s,
                              "rerank": rerank}.items() if v is not None}
    r = _text(client, key=key, **body)
    assert r.status_code < 500, r.text
    assert r.status_code == 200 or "error" in r.json()


def test_a_hit_reason_is_what_the_attribute_model_reads(
    client: httpx.Client, gallery: Path
) -> None:
    """What the verifier read is what the hits claim: re-read one hit's crop and compare."""
    from refind.models.attributes import OpenVinoAttributes
    from refind.models.store import ModelStore
    from tests.conftest import MODELS_DIR

    r = _text(client, text="someone in a black top", k=3, rerank="attributes")
    assert r.status_code == 200 and r.json()["hits"]
    hit = r.json()["hits"][0]
    crop = cv2.imread(str(gallery / "crops" / hit["thumbnail_url"].removeprefix("/v1/crops/")))
    assert isinstance(crop, np.ndarray)
    store = ModelStore([MODELS_DIR], gallery / "cache", allow_download=False)
    seen = OpenVinoAttributes(store)([crop]).top_colour[0]
    assert f"black top (seen: {seen})" in hit["reason"] and seen == "black"
