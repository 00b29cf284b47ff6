"""``refind watch add|list|remove`` as an operator types it: what is stored, what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refind.app.cli import main
from refind.indexer.watchlist import WatchStore
from tests.conftest import need_models


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_text_watches_are_added_listed_refused_and_removed(tmp_path: Path, capsys) -> None:
    d = ["--data-dir", str(tmp_path)]
    code, out, _ = run(capsys, "watch", "list", *d)
    assert code == 0 and "no watches" in out
    code, out, _ = run(capsys, "watch", "add", "red-coat", "--text", "woman in a red coat",
                       "--camera", "gate", "--threshold", "0.8", *d)
    assert code == 0 and "'red-coat' (text, threshold 0.8) on gate" in out
    code, _, err = run(capsys, "watch", "add", "red-coat", "--text", "a man", *d)
    assert code == 2 and "exists; remove it first" in err
    code, _, err = run(capsys, "watch", "add", "x", "--text", "a man", "--instruction", "y", *d)
    assert code == 2 and "--instruction goes with --image" in err
    code, _, err = run(capsys, "watch", "add", "x", "--text", "a man", "--threshold", "1", *d)
    assert code == 2 and "threshold" in err
    code, _, err = run(capsys, "watch", "add", "x", "--image", str(tmp_path / "none.jpg"), *d)
    assert code == 2 and "watch photo not found" in err
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    code, _, err = run(capsys, "watch", "add", "x", "--image", str(tmp_path / "bad.jpg"), *d)
    assert code == 2 and "watch photo" in err
    code, out, _ = run(capsys, "watch", "list", *d, "--json")
    listed = json.loads(out)
    assert [(w["name"], w["kind"], w["cameras"]) for w in listed] == [
        ("red-coat", "text", ["gate"])]
    code, out, _ = run(capsys, "watch", "remove", "red-coat", *d)
    assert code == 0 and "removed watch 'red-coat'" in out
    code, _, err = run(capsys, "watch", "remove", "red-coat", *d)
    assert code == 2 and "no watch named 'red-coat'" in err
    assert WatchStore.in_data_dir(tmp_path).all() == {}


def test_a_photo_watch_keeps_its_vector_model_and_photo(tmp_path: Path, capsys) -> None:
    need_models()
    photo = Path(__file__).resolve().parents[2] / "../shared/data/images/person.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} is absent")
    code, out, err = run(capsys, "watch", "add", "visitor", "--image", str(photo),
                         "--data-dir", str(tmp_path), "--json")
    assert code == 0, err
    made = json.loads(out)
    assert made["kind"] == "photo" and made["model_id"].startswith(
        "person-reidentification-retail-0277@")
    store = WatchStore.in_data_dir(tmp_path)
    assert len(store.get("visitor").vector or ()) == 256
    assert store.photo("visitor")[:2] == b"\xff\xd8"  # kept, so a new model can re-embed it
