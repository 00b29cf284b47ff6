"""The IRM embedder through the command line on a CPU: a gallery ingested with configs/irm.yaml's
embedder, searched by text and by a photo with an instruction; its head and text encoder are
exported to OpenVINO once, into the model store's cache, and reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from refind.app.cli import main
from tests.conftest import MODELS_DIR, PETS_VIDEO

pytestmark = pytest.mark.slow


def test_irm_gallery_searched_by_text_and_instruction(tmp_path, monkeypatch, capsys,
                                                      pets_video, model_store):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a private model store cache
    config = tmp_path / "irm.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "models": {"dir": str(MODELS_DIR)},
        "embedder": {"type": "irm", "weights": "irm-pets-v3", "device": "cpu"},
    }))
    common = ["--config", str(config), "--json"]
    assert main(["ingest", str(PETS_VIDEO), "--camera", "pets", "--max-frames", "150",
                 *common]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["crops"] > 10
    exports = list((tmp_path / "cache" / "refind" / "models" / "derived").glob(
        "irm-pets-v3-openvino-*/manifest.json"))
    assert len(exports) == 1  # made once, on first use
    made = exports[0].stat().st_mtime_ns

    assert main(["search", "--text", "a person in a dark top", *common]) == 0
    text_hits = json.loads(capsys.readouterr().out)
    assert text_hits and all(h["camera"] == "pets" for h in text_hits)
    photo = next(p for p in (tmp_path / "data" / "crops").rglob("*.jpg")
                 if not p.name.endswith(".ctx.jpg"))  # a crop, not its frame
    assert main(["search", "--image", str(photo), "--k", "3", *common]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain and Path(plain[0]["thumbnail"]).parent == photo.parent  # its own track first
    assert main(["search", "--image", str(photo), "--instruction", "now wearing a red top",
                 "--k", "3", *common]) == 0
    edited = json.loads(capsys.readouterr().out)
    assert edited and [h["score"] for h in edited] != [h["score"] for h in plain]
    assert exports[0].stat().st_mtime_ns == made  # reused, not exported again
