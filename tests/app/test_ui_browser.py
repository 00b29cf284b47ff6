"""The web UI as an operator uses it: a real ``refind api`` process over a gallery ingested from
the PETS clip (the IRM embedder, so a photo may carry an instruction), driven in Debian's
Chromium by Playwright. Each test asserts what the page shows; screenshots of every page are
written to ``$REFIND_SCREENSHOTS`` (default: the test's temporary folder), and every page is
checked by axe-core for serious or critical accessibility violations.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import yaml

from tests.app.api_server import sha
from tests.conftest import LIGHT_DETECTOR, MODELS_DIR, PETS_VIDEO, http_get, need_models, need_pets
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
KEY = "ui-desk-key-1"
SCOPED_KEY = "ui-other-key-2"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ui_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole PETS09-S2L1 clip ingested as camera cam1 with the IRM embedder."""
    from refind.app.cli import main

    need_models()
    need_pets()
    data = tmp_path_factory.mktemp("ui-gallery")
    config = _config(data)
    argv = ["ingest", str(PETS_VIDEO), "--camera", "cam1", "--config", str(config), "--json"]
    assert main(argv) == 0
    return data


def _config(data: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "irm.yaml").read_text())
    cfg |= {"data_dir": str(data), "models": {"dir": str(MODELS_DIR), "allow_download": False},
            "detector": LIGHT_DETECTOR,
            "api": {"host": "127.0.0.1", "port": 0, "key_failures_per_min": 0, "keys": [
                {"name": "desk", "key_sha256": sha(KEY), "forget": True},
                {"name": "other-desk", "key_sha256": sha(SCOPED_KEY), "cameras": ["gate"]},
            ]}}
    path = data / "ui.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def api_url(ui_gallery: Path) -> Iterator[str]:
    """``refind api --config`` over the gallery, in its own process, on a free port."""
    config = ui_gallery / "ui.yaml"
    cfg = yaml.safe_load(config.read_text())
    port = free_port()
    cfg["api"]["port"] = port
    config.write_text(yaml.safe_dump(cfg))
    log = (ui_gallery / "api.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "refind.app.cli", "api", "--config",
                             str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (ui_gallery / "api.log").read_text()[-3000:]
        try:
            if http_get(url + "/healthz")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "refind api did not answer /healthz in 120 s"
        time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api", reason="the test extra's playwright")
    assert CHROMIUM.exists(), "Debian's chromium is missing: apt-get install chromium"
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("REFIND_SCREENSHOTS", tmp_path / "screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def page(browser, api_url: str) -> Iterator[object]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=api_url)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda err: errors.append(str(err)))
    yield pg
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def sign_in(page, key: str = KEY) -> None:  # type: ignore[no-untyped-def]
    page.goto("/")
    page.fill("#key", key)
    page.click("form[action='/login'] button")
    page.wait_for_selector("#q")


def check_accessible(page) -> None:  # type: ignore[no-untyped-def]
    """axe-core over the page: no serious or critical violation."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [(v["id"], v["impact"], len(v["nodes"])) for v in results.response["violations"]
           if v["impact"] in ("serious", "critical")]
    assert not bad, f"accessibility violations on {page.url}: {bad}"


def wait_until(page, expression: str, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``expression`` in the page until it is true (the pages' Content-Security-Policy
    forbids the eval that Playwright's wait_for_function polls with)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"{expression} still false after {timeout_s} s"
        time.sleep(0.1)


def audit_lines(gallery: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (gallery / "audit.jsonl").read_text().splitlines()]


# ---- the tests -----------------------------------------------------------------------------


def test_a_wrong_key_is_refused_and_the_right_one_signs_in(page, shots: Path,
                                                             api_url: str) -> None:
    response = page.goto("/?q=a+man")
    assert "/login" in page.url  # the search waits behind the sign-in, and comes back after
    check_accessible(page)
    page.screenshot(path=str(shots / "ui-login.png"))
    page.fill("#key", "not-the-key")
    with page.expect_response(lambda r: r.url.endswith("/login")) as refused:
        page.click("form[action='/login'] button")
    assert refused.value.status == 401
    assert "That key is not valid" in page.inner_text("[role=alert]")
    page.fill("#key", KEY)
    page.click("form[action='/login'] button")
    page.wait_for_selector("#results, .nomatch")
    assert "Signed in as desk" in page.inner_text("header")
    assert page.input_value("#q") == "a man"
    # the session cookie is HttpOnly: scripts never see it, the key is never stored
    assert page.evaluate("document.cookie") == ""
    # and the JSON API refuses a caller without key or session
    assert response is not None
    status, _ = http_get(api_url + "/v1/cameras")
    assert status == 401


def test_search_by_words_shows_filters_reasons_and_moves_by_keyboard(page, shots: Path,
                                                                      ui_gallery: Path) -> None:
    sign_in(page)
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("a man in a black top on camera cam1")
    page.keyboard.press("Enter")
    page.wait_for_selector("#results .card")
    chips = page.locator(".chips .chip").all_inner_texts()
    assert any(c.startswith("camera cam1") for c in chips), chips
    assert any("top black" in c for c in chips), chips
    cards = page.locator("#results .card")
    assert cards.count() >= 3
    first = cards.nth(0).inner_text()
    assert "cam1" in first and "top black" in first  # the reasons each hit was chosen on
    check_accessible(page)
    page.screenshot(path=str(shots / "ui-search.png"))
    # arrows move between cards, Enter opens one
    page.locator("#results .card a.open").nth(0).focus()
    page.keyboard.press("ArrowRight")
    second = page.locator("#results .card a.open").nth(1).get_attribute("href")
    assert page.evaluate("document.activeElement.getAttribute('href')") == second
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/tracks/cam1/\d+$"))
    assert page.url.endswith(second)
    page.go_back()
    # the camera the words named is a chip; removing it keeps the description, drops the filter
    page.click(".chips a[aria-label='Remove filter: camera cam1']")
    page.wait_for_selector("#results .card")
    assert page.input_value("#q") == "a man in a black top"
    assert "camera=" not in page.url
    assert not any(c.startswith("camera") for c in page.locator(".chips .chip").all_inner_texts())
    texts = [e for e in audit_lines(ui_gallery) if e.get("endpoint") == "/ (text)"]
    assert texts and texts[-1]["key"] == "desk"  # every search is audited, as in the API


def test_no_one_matching_is_an_answer_with_the_nearest_miss(page, shots: Path) -> None:
    sign_in(page)
    page.goto("/?q=a+person+in+a+purple+top+with+an+umbrella")
    box = page.locator(".nomatch")
    assert "No one matches" in box.inner_text()
    assert "lacked" in box.inner_text()
    assert box.locator(".card").count() == 1  # the nearest candidate, with what it lacked
    assert box.locator(".reasons li.missed").count() >= 1
    assert any("ignored: umbrella" in c for c in page.locator(".chips .chip").all_inner_texts())
    page.screenshot(path=str(shots / "ui-no-match.png"))


def _track_frame(gallery: Path) -> tuple[int, tuple[float, float, float, float], Path]:
    """A track and the full frame of its best crop (several people in it), as a PNG."""
    from refind.indexer.metadata import SqliteMetadata
    from refind.indexer.shards import existing_shards

    shard = existing_shards(gallery)[0]
    with SqliteMetadata(shard / "metadata.sqlite3") as meta:
        model = meta.models()[0].model_id
        tracks = meta.recent_tracks(model, limit=100)
    best = max((t.summary for t in tracks), key=lambda s: s.best.xyxy[3] - s.best.xyxy[1])
    cap = cv2.VideoCapture(str(PETS_VIDEO))
    cap.set(cv2.CAP_PROP_POS_FRAMES, best.best.frame_index)
    ok, frame = cap.read()
    cap.release()
    assert ok
    path = gallery / f"frame-{best.best.frame_index}.png"
    cv2.imwrite(str(path), frame)
    return best.track_id, best.best.xyxy, path


def test_photo_search_with_a_box_drawn_around_one_person(page, shots: Path,
                                                         ui_gallery: Path) -> None:
    track_id, (x1, y1, x2, y2), photo = _track_frame(ui_gallery)
    sign_in(page)
    page.click("details.photo summary")
    page.set_input_files("#image", str(photo))
    page.wait_for_selector("#picker:not([hidden])")
    wait_until(page, "document.getElementById('preview').naturalWidth > 0")
    rect = page.locator("#preview").bounding_box()
    natural = page.evaluate("[preview.naturalWidth, preview.naturalHeight]")
    sx, sy = rect["width"] / natural[0], rect["height"] / natural[1]
    page.mouse.move(rect["x"] + x1 * sx, rect["y"] + y1 * sy)
    page.mouse.down()
    page.mouse.move(rect["x"] + x2 * sx, rect["y"] + y2 * sy, steps=5)
    page.mouse.up()
    drawn = [float(v) for v in page.input_value("#box-field").split(",")]
    assert all(abs(a - b) < 6 for a, b in zip(drawn, (x1, y1, x2, y2), strict=True)), drawn
    page.screenshot(path=str(shots / "ui-photo-box.png"))
    page.click("#photo-search button[type=submit]")
    page.wait_for_selector("#results .card")
    tops = [page.locator("#results .card").nth(i).inner_text() for i in range(3)]
    assert any(f"track {track_id}\n" in t or f"track {track_id} " in t for t in tops), (
        track_id, tops)
    assert page.locator("figure.query img").count() == 1  # the query photo beside its results
    check_accessible(page)
    page.screenshot(path=str(shots / "ui-photo-results.png"))


def test_photo_dropped_on_the_page_with_an_instruction(page, ui_gallery: Path) -> None:
    _, (x1, y1, x2, y2), photo = _track_frame(ui_gallery)
    crop = cv2.imread(str(photo))[int(y1):int(y2), int(x1):int(x2)]
    ok, png = cv2.imencode(".png", crop)
    assert ok
    sign_in(page)
    page.click("details.photo summary")
    page.evaluate(
        """async (b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "person.png", { type: "image/png" }));
            document.getElementById("drop").dispatchEvent(
                new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""", __import__("base64").b64encode(png.tobytes()).decode())
    page.wait_for_selector("#picker:not([hidden])")
    assert page.evaluate("document.getElementById('image').files.length") == 1
    page.fill("#instruction", "ignore the clothes")
    page.click("#photo-search button[type=submit]")
    page.wait_for_selector("#results .card")
    assert "ignore the clothes" in page.inner_text("figure.query figcaption")
    photos = [e for e in audit_lines(ui_gallery) if e.get("endpoint") == "/ui/search/photo"]
    assert photos[-1]["status"] == 200
    assert photos[-1]["query"]["instruction"] == "ignore the clothes"  # type: ignore[index]


def test_tracklet_page_shows_its_frame_and_plays_its_clip(page, shots: Path) -> None:
    sign_in(page)
    page.goto("/?q=a+man+in+a+black+top")
    page.locator("#results .card a.open").nth(0).click()
    page.wait_for_url(re.compile(r"/tracks/cam1/\d+$"))
    assert page.evaluate("document.getElementById('context').naturalWidth") > 100
    assert page.locator(".strip button.crop").count() >= 2
    looks = page.locator("section[aria-labelledby=looks-h] .reasons").inner_text()
    assert "top:" in looks
    wait_until(page, "document.getElementById('clip').readyState >= 2")
    size = page.evaluate("[clip.videoWidth, clip.videoHeight, clip.duration]")
    assert size[0] >= 160 and size[1] >= 120 and size[2] > 0.5, size
    page.evaluate("clip.play()")
    wait_until(page, "clip.currentTime > 0.3")  # it plays in the browser
    page.evaluate("clip.pause()")
    # a crop of the strip shows the frame it was taken from
    strip = page.locator(".strip button.crop")
    target = strip.nth(strip.count() - 1).get_attribute("data-context")
    strip.nth(strip.count() - 1).click()
    assert page.get_attribute("#context", "src") == target
    check_accessible(page)
    page.screenshot(path=str(shots / "ui-track.png"), full_page=True)


def test_find_similar_from_a_card(page) -> None:
    sign_in(page)
    page.goto("/?q=a+man+in+a+black+top")
    seed = page.locator("#results .card").nth(0)
    seed_track = re.search(r"track (\d+)", seed.inner_text())[1]  # type: ignore[index]
    seed.locator("a.similar").click()
    page.wait_for_selector("#results .card")
    assert f"look like cam1 track {seed_track}" in page.inner_text("p.context")
    hits = page.locator("#results .card").all_inner_texts()
    assert len(hits) >= 3
    assert not any(re.search(rf"track {seed_track}\b", h) for h in hits)  # not itself


def test_cameras_and_alerts_pages(page, shots: Path, ui_gallery: Path) -> None:
    from refind.indexer.journal import EventJournal, journal_dir
    from refind.streaming.events import AlertEvent

    sign_in(page)
    page.goto("/cameras")
    tile = page.locator(".tile[data-camera=cam1]")
    assert "stored only" in tile.inner_text()
    assert page.evaluate("document.querySelector('.tile img').naturalWidth") > 100
    check_accessible(page)
    page.screenshot(path=str(shots / "ui-cameras.png"))
    # an alert in the record before the page opens, and one written while it is open (as the
    # identity actor writes them), each with its track's stored crop
    crops = sorted((ui_gallery / "crops" / "cam1").glob("*/*.jpg"))
    crops = [c for c in crops if not c.name.endswith(".ctx.jpg")]

    def alert(crop: Path, score: float) -> AlertEvent:
        track = int(crop.parent.name)
        return AlertEvent(camera="cam1", ts_ns=10**9 * track, watch="red-coat",
                          track_id=track, global_id=track, first_ts_ns=10**9 * track,
                          score=score, reasons=("text watch", "red top 0.91"),
                          thumbnail=str(crop.relative_to(ui_gallery / "crops")))

    journal = EventJournal(journal_dir(ui_gallery))
    journal.append([alert(crops[0], 0.93)])
    page.goto("/alerts")
    wait_until(page, "document.getElementById('alert-state').textContent == 'connected'")
    assert page.locator(".alert").count() == 1
    journal.append([alert(crops[-1], 0.97)])
    wait_until(page, "document.querySelectorAll('.alert').length == 2")
    time.sleep(1.0)  # the first alert may reach the stream too: it is not shown twice
    assert page.locator(".alert").count() == 2
    first = page.locator(".alert").first.inner_text()
    assert "red-coat: cam1 track" in first and "0.97" in first and "person" in first
    wait_until(page, "[...document.querySelectorAll('.alert img')].every(i => i.naturalWidth > 0)")
    check_accessible(page)
    page.screenshot(path=str(shots / "ui-alerts.png"))


def test_a_scoped_key_sees_only_its_cameras(page) -> None:
    sign_in(page, SCOPED_KEY)
    page.goto("/tracks/cam1/1")
    assert "may not view camera 'cam1'" in page.inner_text("[role=alert]")
    assert page.request.get("/v1/crops/cam1/1/000001.jpg").status == 403
    page.goto("/?q=a+man+in+a+black+top")
    assert page.locator("#results .card").count() == 0  # nothing of cam1 reaches this key


def test_forget_a_person_from_the_tracklet_page(page, ui_gallery: Path) -> None:
    sign_in(page)
    page.goto("/?q=a+man+in+a+black+top&k=50")
    page.wait_for_selector("#results .card")
    last = page.locator("#results .card a.open").last.get_attribute("href")
    track_id = int(last.rsplit("/", 1)[1])  # type: ignore[union-attr]
    page.goto(last)
    clip = page.get_attribute("#clip", "src")
    page.fill("#reason", "erasure request UI-1")
    page.check("input[name=confirm]")
    page.click("#forget button")
    page.wait_for_url(re.compile(r"/\?forgot="))
    assert f"Forgot cam1 track {track_id}" in page.inner_text(".flash")
    gone = page.goto(last)
    assert gone is not None and gone.status == 404
    assert page.request.get(clip).status == 404  # its clip went with it
    entry = [e for e in audit_lines(ui_gallery) if str(e.get("endpoint", "")).endswith("/forget")]
    assert entry[-1]["reason"] == "erasure request UI-1" and entry[-1]["key"] == "desk"
    assert not list((ui_gallery / "crops" / "cam1" / str(track_id)).glob("*.jpg"))


def test_keys_and_sessions_never_reach_the_logs(browser, api_url: str,
                                                ui_gallery: Path) -> None:
    """After every test above: the keys and the session tokens appear in no log line."""
    context = browser.new_context(base_url=api_url)
    page = context.new_page()
    sign_in(page)
    page.goto("/?q=a+man+in+a+black+top")
    tokens = [c["value"] for c in context.cookies() if c["name"] == "refind_session"]
    context.close()
    assert tokens
    logs = (ui_gallery / "api.log").read_text() + (ui_gallery / "audit.jsonl").read_text()
    for secret in (KEY, SCOPED_KEY, *tokens):
        assert secret not in logs
