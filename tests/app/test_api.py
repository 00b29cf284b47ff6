"""The search API over real HTTP: a uvicorn server on a loopback port, a gallery built by the real
ingest from PETS09-S2L1, real models. Checks search by upload, thumbnails, tracks, key scopes,
every refusal (4xx with a clear message, never 5xx), path traversal, the audit log, metrics, and
that rows written by an ingest running beside the API are searchable at once.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the API extra is not installed (pip install -e '.[api]')")
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refind.app.api import create_app
from refind.app.api_guard import ApiError, KeyRing
from refind.app.cli import main
from refind.app.config import ApiConfig
from refind.config import parse_config
from refind.streaming.config import ConfigError
from tests.app.api_server import KEYS, MAX_UPLOAD_MB, Server, api_config, key_configs
from tests.conftest import PETS_GT, PETS_GT_SCALE, PETS_VIDEO, need_pets

QUERY_FRAME = 120


# ---- without models: config and keys --------------------------------------------------------


def test_api_refuses_to_start_without_keys(tmp_path: Path) -> None:
    cfg = parse_config(api_config(tmp_path))
    with pytest.raises(ConfigError, match="allow_anonymous"):
        create_app(cfg, engine_factory=lambda c: pytest.fail("engine built before the check"))


@pytest.mark.parametrize(
    ("api", "message"),
    [
        ({"keys": [{"name": "a", "key_sha256": "secret"}]}, "key_sha256"),
        ({"keys": [{"name": "a", "key_sha256": "A" * 64}]}, "key_sha256"),
        ({"keys": [{"name": "a", "key_sha256": "0" * 64}, {"name": "a", "key_sha256": "1" * 64}]},
         "distinct name"),
        ({"allow_anonymous": True, "keys": [{"name": "a", "key_sha256": "0" * 64}]},
         "empty api.keys"),
        ({"max_upload_mb": 50}, "max_upload_mb"),
        ({"keyz": []}, "unknown key"),
    ],
)
def test_bad_api_config_names_the_key(api: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"api": api})


@pytest.mark.parametrize(
    ("presented", "expected"),
    [("desk-secret-1", "desk"), ("pets-secret-3", "pets-only"), ("", 401), (None, 401),
     ("desk-secret-1 ", 401), ("wrong", 401)],
)
def test_key_ring(presented: str | None, expected: str | int) -> None:
    ring = KeyRing.from_config(ApiConfig.model_validate({"keys": key_configs()}))
    if isinstance(expected, str):
        assert ring.authenticate(presented).name == expected
    else:
        with pytest.raises(ApiError) as err:
            ring.authenticate(presented)
        assert err.value.status == expected


# ---- a real gallery behind a real server ----------------------------------------------------


def _gt_box(frame: int) -> np.ndarray:
    """The tallest considered ground-truth person of 1-based ``frame``, in video pixels."""
    rows = np.loadtxt(PETS_GT, delimiter=",")
    rows = rows[(rows[:, 0] == frame) & (rows[:, 6] != 0)]
    r = rows[np.argmax(rows[:, 5])]
    return np.array([r[2], r[3], r[2] + r[4], r[3] + r[5]]) * PETS_GT_SCALE


def _frame(index: int) -> np.ndarray:
    import av

    with av.open(str(PETS_VIDEO)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                return f.to_ndarray(format="bgr24")
    raise AssertionError(f"no frame {index}")


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A JPEG of the tallest person of frame QUERY_FRAME (with a margin of background)."""
    need_pets()
    x1, y1, x2, y2 = (round(v) for v in _gt_box(QUERY_FRAME))
    ok, buf = cv2.imencode(".jpg", _frame(QUERY_FRAME - 1)[y1:y2, x1:x2])
    assert ok
    return buf.tobytes()


def _search(client: httpx.Client, image: bytes | None, key: str = "desk", **form: str):
    files = {"image": ("q.jpg", image, "image/jpeg")} if image is not None else None
    headers = {"X-API-Key": KEYS[key]} if key else {}
    return client.post("/v1/search/image", files=files, data=form or None, headers=headers)


def _audit(gallery: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (gallery / "audit.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_search_by_photo_returns_tracks_with_thumbnails(
    client: httpx.Client, gallery: Path, photo: bytes
) -> None:
    r = _search(client, photo, k="5")
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["hits"]
    assert 1 <= len(hits) <= 5
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert set(body["took_ms"]) == {"embed", "refresh", "search", "total"}
    top = hits[0]
    assert top["camera"] == "pets" and top["score"] > 0.5
    assert top["reason"].startswith(f"appearance similarity {top['score']:.2f}")
    for h in hits:
        thumb = client.get(h["thumbnail_url"], headers={"X-API-Key": KEYS["desk"]})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR) is not None

    track = client.get(f"/v1/tracks/pets/{top['track_id']}", headers={"X-API-Key": KEYS["desk"]})
    assert track.status_code == 200
    summary = track.json()
    assert summary["n_crops"] == len(summary["crops"]) >= 1
    assert summary["start_ts"] <= top["start_ts"] + 1e-6
    for c in summary["crops"]:
        assert client.get(c["url"], headers={"X-API-Key": KEYS["desk"]}).status_code == 200

    line = _audit(gallery)[-1]
    assert line["key"] == "desk" and line["endpoint"] == "/v1/search/image"
    assert line["status"] == 200 and line["query"]["k"] == "5"
    assert line["image"] == {"sha256": hashlib.sha256(photo).hexdigest(), "bytes": len(photo)}
    assert line["tracks"] == [[h["camera"], h["track_id"]] for h in hits]


@pytest.mark.slow
def test_box_and_time_window_narrow_the_search(client: httpx.Client, photo: bytes) -> None:
    frame = _frame(QUERY_FRAME - 1)
    _, buf = cv2.imencode(".png", frame)
    box = ",".join(f"{v:.0f}" for v in _gt_box(QUERY_FRAME))
    whole = _search(client, buf.tobytes(), k="3", box=box)
    assert whole.status_code == 200, whole.text
    assert whole.json()["hits"]
    late = _search(client, photo, k="50", since="3", until="4")
    assert late.status_code == 200
    assert all(h["end_ts"] >= 3 and h["start_ts"] <= 4 for h in late.json()["hits"])


@pytest.mark.slow
def test_key_scope_bounds_every_endpoint(client: httpx.Client, photo: bytes) -> None:
    other = {"X-API-Key": KEYS["other"]}
    r = _search(client, photo, key="other")
    assert r.status_code == 200 and r.json()["hits"] == []  # filtered inside the search
    r = _search(client, photo, key="other", cameras="pets")
    assert r.status_code == 403 and "pets" in r.json()["error"]
    assert client.get("/v1/cameras", headers=other).json() == {"cameras": []}
    mine = _search(client, photo, key="pets-only").json()["hits"]
    assert mine and {h["camera"] for h in mine} == {"pets"}
    track = client.get(f"/v1/tracks/pets/{mine[0]['track_id']}", headers=other)
    assert track.status_code == 403
    assert client.get(mine[0]["thumbnail_url"], headers=other).status_code == 403
    assert client.get(mine[0]["thumbnail_url"],
                      headers={"X-API-Key": KEYS["pets-only"]}).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/cameras"), ("GET", "/v1/tracks/pets/1"), ("GET", "/v1/crops/pets/1/000001.jpg"),
     ("POST", "/v1/search/image")],
)
@pytest.mark.parametrize("key", [None, "", "nope"])
def test_no_valid_key_is_401(client: httpx.Client, method: str, path: str, key: str | None) -> None:
    headers = {} if key is None else {"X-API-Key": key}
    r = client.request(method, path, headers=headers, files={"image": ("q.jpg", b"x")}
                       if method == "POST" else None)
    assert r.status_code == 401 and "key" in r.json()["error"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("form", "image", "status", "message"),
    [
        ({}, None, 400, "`image`"),
        ({}, b"", 400, "empty"),
        ({}, b"GIF89a not really", 400, "not an image"),
        ({}, b"\x00" * (MAX_UPLOAD_MB * 2**20 + 100), 413, "max_upload_mb"),
        ({"k": "0"}, "photo", 400, "k must be in 1..1000"),
        ({"k": "1001"}, "photo", 400, "k must be in 1..1000"),
        ({"k": "ten"}, "photo", 400, "k must be an integer"),
        ({"since": "9", "until": "1"}, "photo", 400, "after until"),
        ({"since": "-1"}, "photo", 400, "since must be seconds"),
        ({"until": "nan"}, "photo", 400, "until must be seconds"),
        ({"until": "1e400"}, "photo", 400, "until must be seconds"),
        ({"until": "9.3e9"}, "photo", 400, "until must be seconds"),  # past int64 ns
        ({"cameras": "pets,nowhere"}, "photo", 404, "unknown camera(s) nowhere"),
        ({"box": "1,2,3"}, "photo", 400, "four finite numbers"),
        ({"box": "a,b,c,d"}, "photo", 400, "box must be x1,y1,x2,y2"),
        ({"box": "10,10,5,20"}, "photo", 400, "zero or negative size"),
        ({"box": "900,900,990,990"}, "photo", 400, "empty inside"),
    ],
)
def test_bad_search_input_is_a_clear_4xx(
    client: httpx.Client, gallery: Path, photo: bytes, form: dict[str, str],
    image: bytes | str | None, status: int, message: str,
) -> None:
    before = len(_audit(gallery)) if (gallery / "audit.jsonl").exists() else 0
    r = _search(client, photo if image == "photo" else image, **form)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    lines = _audit(gallery)
    assert len(lines) == before + 1 and lines[-1]["status"] == status  # refusals are audited


def _multipart(payload: bytes) -> tuple[bytes, str]:
    boundary = "refindboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            "filename=\"q.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    return head + payload + f"\r\n--{boundary}--\r\n".encode(), boundary


@pytest.mark.slow
def test_oversized_upload_is_413_declared_or_streamed(client: httpx.Client) -> None:
    body, boundary = _multipart(b"\xff" * (MAX_UPLOAD_MB * 2**20 + 200_000))
    headers = {"X-API-Key": KEYS["desk"], "Content-Type": f"multipart/form-data; boundary={boundary}"}
    declared = client.post("/v1/search/image", content=body, headers=headers)
    assert declared.status_code == 413 and "MiB" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    streamed = client.post("/v1/search/image", content=chunks(), headers=headers)
    assert streamed.status_code == 413


TRAVERSALS = [
    "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "pets/..%2F..%2F..%2Fetc%2Fpasswd",
    "pets%5C..%5C..%5Cetc%5Cpasswd", "pets/%00.jpg", "....//....//etc/passwd", "%2e%2e/%2e%2e/etc/passwd",
    "pets/../../gallery/metadata.sqlite3", "..", ".", "pets/link.jpg", "",
]


@pytest.mark.slow
@pytest.mark.parametrize("path", TRAVERSALS)
def test_crop_paths_cannot_leave_the_crop_store(server: Server, gallery: Path, path: str) -> None:
    link = gallery / "crops" / "pets" / "link.jpg"
    if not link.is_symlink():
        link.symlink_to("/etc/passwd")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/v1/crops/" + path, headers={"X-API-Key": KEYS["desk"]})  # sent raw
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status in (400, 403, 404), (resp.status, body)
    assert b"root:" not in body and b"SQLite" not in body
    assert "error" in json.loads(body)


@pytest.mark.slow
def test_service_endpoints(client: httpx.Client, photo: bytes) -> None:
    assert _search(client, photo).status_code == 200
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["vectors"] > 0 and health["shards"] == 1
    spec = client.get("/openapi.json").json()
    assert {"/v1/search/image", "/v1/tracks/{camera}/{track_id}", "/v1/crops/{path}",
            "/v1/cameras"} <= set(spec["paths"])
    metrics = client.get("/metrics").text
    assert 'refind_api_requests_total{endpoint="/v1/search/image",method="POST",status="200"}' \
        in metrics
    assert 'refind_api_request_seconds_bucket{endpoint="/v1/crops/{path:path}"' in metrics
    assert "crops/pets" not in metrics  # raw paths never become labels
    assert client.get("/v1/cameras", headers={"X-API-Key": KEYS["desk"]}).json() == {
        "cameras": ["pets"]}
    bad_track = client.get("/v1/tracks/pets/x", headers={"X-API-Key": KEYS["desk"]})
    assert bad_track.status_code == 422 and "track_id" in bad_track.json()["error"]
    assert client.get("/v1/tracks/pets/999999", headers={"X-API-Key": KEYS["desk"]}).status_code \
        == 404


@pytest.mark.slow
def test_rows_from_a_running_ingest_are_searchable_at_once(
    client: httpx.Client, gallery: Path, photo: bytes
) -> None:
    argv = ["ingest", str(PETS_VIDEO), "--camera", "gate", "--data-dir", str(gallery),
            "--max-frames", "40", "--json"]
    assert main(argv) == 0  # the API keeps its read-only view open meanwhile
    desk = {"X-API-Key": KEYS["desk"]}
    assert client.get("/v1/cameras", headers=desk).json() == {"cameras": ["gate", "pets"]}
    r = _search(client, photo, cameras="gate")
    assert r.status_code == 200 and r.json()["hits"]
    assert {h["camera"] for h in r.json()["hits"]} == {"gate"}


@pytest.mark.slow
def test_concurrent_searches_all_answer(server: Server, photo: bytes) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> tuple[int, int]:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = _search(c, photo, k=str(1 + i % 5))
            t = c.get("/v1/cameras", headers={"X-API-Key": KEYS["desk"]})
            return r.status_code, t.status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(24))) == {(200, 200)}


_printable = st.characters(blacklist_categories=("Cs",))  # surrogates cannot be sent as UTF-8
_texts = st.one_of(st.none(), st.text(_printable, max_size=30), st.sampled_from(
    ["0", "1", "1000", "1001", "-5", "1e309", "9.3e9", "nan", "3,4", "0,0,10,10", "1,1,1,1", "pets", ","]
))


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    image=st.one_of(st.none(), st.binary(max_size=3000), st.just(b"photo")),
    k=_texts, cameras=_texts, since=_texts, until=_texts, box=_texts,
    crop=st.text(_printable, max_size=40),
    instruction=st.one_of(st.none(), st.text(_printable, max_size=30), st.just("ignore clothes")),
    task=st.one_of(st.none(), st.sampled_from(["reid", "clothes_change", "text", "x"])),
    rerank=st.one_of(st.none(), st.sampled_from(["none", "attributes", "x"])),
    min_track_s=_texts,
)
def test_fuzzed_requests_never_get_a_5xx(
    client: httpx.Client, photo: bytes, image: bytes | None, k: str | None,
    cameras: str | None, since: str | None, until: str | None, box: str | None, crop: str,
    instruction: str | None, task: str | None, rerank: str | None, min_track_s: str | None,
) -> None:
    form = {n: v for n, v in
            {"k": k, "cameras": cameras, "since": since, "until": until, "box": box,
             "instruction": instruction, "task": task, "rerank": rerank,
             "min_track_s": min_track_s}.items()
            if v is not None}
    r = _search(client, photo if image == b"photo" else image, **form)
    assert r.status_code < 500, r.text
    assert r.status_code == 200 or "error" in r.json()
    r = client.get("/v1/crops/" + quote(crop, safe="/"), headers={"X-API-Key": KEYS["pets-only"]})
    assert r.status_code < 500, r.text
