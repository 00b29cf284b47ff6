"""Benchmark: how fast the web UI paints results on a gallery of ~100k tracklets.

The gallery is synthetic in its vectors but real everywhere else: ``--crops`` crops (default
800k, in tracks of 4-12: ~100k tracklets on 8 cameras) shaped like ReID output
(``bench/search_latency.synthesise``), written through ``GalleryStore`` under the real embedder's
model id, each row pointing at one of 200 real PETS person crops; the text path's evidence is
stored as ingest stores it. A real ``refind api`` process serves it, and Debian's Chromium
(Playwright) loads each page as an operator would: from the request to the first result card's
image decoded and shown (``first_results_ms``, measured in the page from navigation start), and
until the page's load event. Pages: a text search, "find similar", a photo search (the form
posted with a crop), a tracklet page. Writes ``bench/results/ui_pages-<date>.json``.

    python bench/ui_pages.py [--crops 800000] [--repeats 10] [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import code_version, write_result  # noqa: E402
from search_latency import CAMERAS, DEFAULT_CACHE, crop_pool, synthesise  # noqa: E402

from refind.config import RefindConfig  # noqa: E402
from refind.indexer.config import GalleryConfig  # noqa: E402
from refind.indexer.gallery_store import GalleryStore  # noqa: E402
from refind.models.registry import build_embedder  # noqa: E402
from refind.models.store import ModelStore  # noqa: E402
from refind.streaming.records import CropRecord, Embeddings  # noqa: E402

KEY = "bench-ui-key"
CHROMIUM = "/usr/bin/chromium"
FIRST_CARD = ("(() => { const i = document.querySelector('#results .card img, .nomatch p');"
              " return !!i && (i.tagName !== 'IMG' || (i.complete && i.naturalWidth > 0)); })()")


def build(data_dir: Path, n: int, model_id: str, dim: int) -> dict[str, object]:
    """The gallery (once; reused while its manifest matches)."""
    manifest = data_dir / "bench.json"
    want = {"crops": n, "model_id": model_id, "dim": dim}
    if manifest.is_file() and json.loads(manifest.read_text()) == want:
        return want
    shutil.rmtree(data_dir, ignore_errors=True)
    pool = crop_pool(DEFAULT_CACHE)
    shutil.copytree(pool.root / "pool", data_dir / "crops" / "pool")
    n_pool = len(list((data_dir / "crops" / "pool").rglob("*.jpg")))
    syn = synthesise(n, dim, 1)
    with GalleryStore(data_dir / "gallery", GalleryConfig(index_factory="Flat"), model_id,
                      dim) as store:
        for a in tqdm(range(0, n, 20_000), desc="writing the gallery", unit="batch"):
            b = min(a + 20_000, n)
            first = store.next_vector_id()
            rows = [CropRecord(
                vector_id=first + i - a, camera=CAMERAS[syn.camera[i]],
                track_id=int(syn.track_id[i]), frame_index=int(syn.frame_index[i]),
                ts_ns=int(syn.ts_ns[i]), xyxy=(10.0, 20.0, 74.0, 220.0), confidence=0.9,
                quality=0.5 + 0.01 * (i % 7),
                crop_path=f"pool/0/{(int(syn.track_id[i]) + 31 * int(syn.camera[i])) % n_pool:06d}"
                          ".jpg", model_id=model_id) for i in range(a, b)]
            store.add(rows, Embeddings(syn.vectors[a:b], model_id))
        store.save()
    manifest.write_text(json.dumps(want))
    return want


def wait_for(url: str, proc: subprocess.Popen, what: str, seconds: float = 240) -> None:
    """Return once ``url`` answers; SystemExit when ``proc`` ends or time runs out first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.5)


def start_api(data_dir: Path, port: int, key: str = KEY, name: str = "api",
              **api: object) -> subprocess.Popen:
    """``refind api`` over ``data_dir`` on ``port`` with one key (and any other api settings),
    its config written to ``<data_dir>/<name>.yaml``; returns once it answers."""
    cfg = {"data_dir": str(data_dir), "api": {"port": port, **api, "keys": [
        {"name": "bench", "key_sha256": hashlib.sha256(key.encode()).hexdigest()}]}}
    path = data_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "refind.app.cli", "api", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(f"http://127.0.0.1:{port}/healthz", proc, "refind api")
    return proc


def painted(page) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Milliseconds from navigation start to the first result shown, and to the load event."""
    deadline = time.monotonic() + 60
    while not page.evaluate(FIRST_CARD):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no result painted on {page.url}")
        time.sleep(0.01)
    first = page.evaluate("performance.now()")
    page.wait_for_load_state("load")
    load = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    return {"first_results_ms": round(first, 1), "load_ms": round(load, 1)}


def stats(rows: list[dict[str, float]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in rows[0]:
        v = np.array([r[key] for r in rows])
        out[key] = {"p50": round(float(np.percentile(v, 50)), 1),
                    "p95": round(float(np.percentile(v, 95)), 1), "max": round(float(v.max()), 1)}
    return out


def cached_gallery(cache: Path, crops: int) -> tuple[Path, dict[str, object]]:
    """The benchmark gallery of ``crops`` crops for the default embedder, under ``cache``:
    its data directory and what it holds."""
    cfg = RefindConfig()
    embedder = build_embedder(cfg.embedder, ModelStore.from_config(cfg.models))
    data_dir = cache / f"n{crops}"
    return data_dir, build(data_dir, crops, embedder.model_id, embedder.dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=800_000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE / "ui-pages")
    parser.add_argument("--port", type=int, default=8097)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    data_dir, info = cached_gallery(args.cache, args.crops)
    photo = next((data_dir / "crops" / "pool").rglob("*.jpg"))
    proc = start_api(data_dir, args.port)
    base = f"http://127.0.0.1:{args.port}"
    result: dict[str, object] = {"benchmark": "ui_pages", "gallery": info}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1280, "height": 860}, base_url=base)
            page.goto("/login")
            page.fill("#key", KEY)
            page.click("form[action='/login'] button")
            page.wait_for_selector("#q")
            vectors = int(page.evaluate("fetch('/healthz').then(r => r.json())")["vectors"])
            pages = {
                "text": ["/?q=a+man+in+a+black+top", "/?q=a+woman+with+a+backpack",
                         "/?q=someone+in+a+red+jacket+walking+left"],
                "find_similar": [f"/?like={c}/{t}" for c in CAMERAS[:3] for t in (1, 50, 500)],
                "track": [f"/tracks/{c}/{t}" for c in CAMERAS[:3] for t in (2, 60, 700)],
            }
            for name, urls in pages.items():
                for url in urls[:2]:  # warm: models loaded, evidence of the pool crops stored
                    page.goto(url)
                    painted(page) if name != "track" else page.wait_for_load_state("load")
                rows = []
                for i in range(args.repeats):
                    page.goto(urls[i % len(urls)])
                    if name == "track":
                        page.wait_for_selector(".strip img")
                        page.wait_for_load_state("load")
                        rows.append({"load_ms": round(page.evaluate(
                            "performance.getEntriesByType('navigation')[0].loadEventEnd"), 1)})
                    else:
                        rows.append(painted(page))
                result[name] = stats(rows)
            rows = []
            for _ in range(args.repeats + 1):
                page.goto("/")
                page.click("details.photo summary")
                page.set_input_files("#image", str(photo))
                page.click("#photo-search button[type=submit]")
                page.wait_for_load_state("commit")
                rows.append(painted(page))
            result["photo"] = stats(rows[1:])
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result |= {"vectors": vectors, "target_first_results_ms": 1000,
               "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "load_avg": list(os.getloadavg()), "commit": code_version()}
    write_result(args.out, "ui_pages", result)


if __name__ == "__main__":
    main()
