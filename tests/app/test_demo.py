"""`refind demo`: it never deletes what it did not make, fails on a missing clip before touching
anything, and on a real clip finds its query person first and prints commands that work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refind.app.cli import main
from refind.app.demo import DEMO_MARK, DemoOutputError, demo_config, prepare_out_dir, run_demo
from refind.config import RefindConfig
from refind.indexer.config import BlobStoreConfig, RedisMetadataConfig
from refind.streaming.config import IngestConfig, KafkaConfig


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("layout", ["new", "empty"])
def test_a_new_or_empty_folder_is_used(tmp_path, layout):
    out = tmp_path / "demo"
    if layout == "empty":
        out.mkdir()
    assert prepare_out_dir(out) == [] and out.is_dir()


@pytest.mark.parametrize(("files", "match"), [
    ({"notes.txt": "mine"}, "is not empty .* 'notes.txt'.* nothing was deleted"),
    ({"gallery/metadata.sqlite3": "x"}, "not made by `refind demo`"),  # even a gallery
])
def test_a_folder_the_demo_did_not_make_is_refused_and_kept(tmp_path, files, match):
    out = tmp_path / "mine"
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    before = _tree(out)
    with pytest.raises(DemoOutputError, match=match):
        prepare_out_dir(out)
    assert _tree(out) == before


def test_a_file_is_refused(tmp_path):
    f = tmp_path / "out"
    f.write_text("a file")
    with pytest.raises(DemoOutputError, match="is a file"):
        prepare_out_dir(f)
    assert f.read_text() == "a file"


def test_an_earlier_demo_folder_loses_only_what_refind_wrote(tmp_path):
    out = tmp_path / "demo"
    for rel in ("gallery/metadata.sqlite3", "crops/cam1/1/000001.jpg", "events/crops.jsonl",
                "query.jpg", "contact_sheet.png", "versions.json", "versions/x/gallery/db",
                "notes.txt", "../outside.txt"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")
    # the mark lists what the demo wrote; versions* came from a later `refind rebuild`
    (out / DEMO_MARK).write_text("gallery\ncrops\nevents\nquery.jpg\ncontact_sheet.png\n"
                                 "../outside.txt\n")
    removed = prepare_out_dir(out)
    assert removed == ["contact_sheet.png", "crops", "events", "gallery", "query.jpg",
                       "versions", "versions.json"]
    assert _tree(out) == {"notes.txt"}  # the user's own file stays, and so does the mark's ..
    assert (tmp_path / "outside.txt").exists()


def test_a_missing_clip_fails_before_the_folder_is_touched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match="video file not found"):
        run_demo(RefindConfig(), tmp_path / "nope.mp4", out)
    assert _tree(out) == {"notes.txt"}
    assert main(["demo", "--video", str(tmp_path / "nope.mp4"), "--out", str(out)]) == 2


def test_the_demo_writes_nothing_into_the_deployment(tmp_path):
    """`refind demo --config deploy.yaml`: its models and settings, never its Kafka, Redis or
    blob store (a demo camera's crops and events stay in --out)."""
    deployed = RefindConfig(
        data_dir=tmp_path / "prod", kafka=KafkaConfig(enabled=True),
        metadata=RedisMetadataConfig(), blobs=BlobStoreConfig(url="s3://prod-crops"),
        ingest=IngestConfig(max_frames=7),
    )
    cfg = demo_config(deployed, tmp_path / "demo")
    assert cfg.data_dir == tmp_path / "demo" and cfg.ingest.max_frames == 7
    assert not cfg.kafka.enabled and cfg.metadata.type == "sqlite" and cfg.blobs.url is None


@pytest.mark.slow
def test_the_demo_finds_its_query_and_its_next_commands_work(tmp_path, capsys, pets_video,
                                                             model_store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("refind-demo")
    assert main(["demo", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ingest"]["frames"] == 795 and result["hits"]
    sheet = Path(result["contact_sheet"])
    assert sheet.is_file() and sheet.stat().st_size > 10_000
    assert result["gallery"] == str(out) and (out / DEMO_MARK).is_file()
    # the query person is found first: the query's own track, from the query's frame
    first = result["hits"][0]
    assert first["start_ts"] <= result["query"]["frame_index"] / 10 <= first["end_ts"] + 0.1
    photo, text, _ = result["next"]
    for command in (photo, text):
        argv = command.split(" ", 1)[1]
        import shlex

        capsys.readouterr()
        assert main([*shlex.split(argv), "--json", "--k", "5"]) == 0, command
        hits = json.loads(capsys.readouterr().out)
        assert hits, f"{command} found nothing"
        if command == photo:  # the printed photo search answers as the demo did
            assert [(h["track_id"], h["score"]) for h in hits] == [
                (h["track_id"], h["score"]) for h in result["hits"]]
    assert result["ingest"]["gallery_vectors"] == result["ingest"]["crops"]
    # a second demo replaces the first one's gallery instead of adding to it (the clip's first
    # 200 frames, through a config of the user's: a whole second run took 70 s)
    short = Path("short.yaml")
    short.write_text("ingest: {max_frames: 200}\n")
    assert main(["demo", "--config", str(short), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["ingest"]["frames"] == 200 and again["gallery"] == str(out)
    assert 0 < again["ingest"]["crops"] < result["ingest"]["crops"]
    assert again["ingest"]["gallery_vectors"] == again["ingest"]["crops"]  # not both runs'
