"""`refind serve` on real Ray stores into the same durable record as `refind ingest`: after
serving a real clip and stopping, `refind rebuild` restores the same tracks, spans and search
results, with Kafka off (from the journal) and on (from the journal and from Kafka)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from refind.app.cli import main
from refind.app.serve import run_serve
from refind.config import load_config
from refind.indexer.journal import journal_dir
from refind.indexer.metadata import SqliteMetadata
from refind.indexer.shards import existing_shards
from refind.indexer.versions import serving_version
from tests.conftest import (
    LIGHT_DETECTOR,
    MODELS_DIR,
    PETS_VIDEO,
    STARTS_RAY,
    need_models,
    need_pets,
)

pytestmark = [pytest.mark.slow, STARTS_RAY]

FRAMES = 200


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first FRAMES frames of PETS09-S2L1 as a clip of its own (H.264, 10 frames/s)."""
    need_models()
    need_pets()
    path = tmp_path_factory.mktemp("clip") / "pets200.mp4"
    with av.open(str(PETS_VIDEO)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i == FRAMES:
                break
            img = frame.to_ndarray(format="bgr24")
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _serve(config: Path) -> None:
    """`refind serve` until the camera has played the whole clip, then stop it."""
    from refind.actors.supervisor import wait_until

    cfg = load_config(config)
    stop = threading.Event()
    seen: dict[str, object] = {}
    thread = threading.Thread(target=run_serve, args=(cfg, stop),
                              kwargs={"on_start": lambda sup: seen.update(supervisor=sup)})
    thread.start()
    try:
        assert wait_until(lambda: "supervisor" in seen, 120)
        sup = seen["supervisor"]

        def played() -> bool:  # the file ended and every frame kept was analysed and stored
            report = sup.status()["pets"]  # type: ignore[attr-defined]
            return not isinstance(report, str) and report.state == "stopped" and (
                report.frames_processed > 0 and report.queue_depth == report.in_flight
                == report.stores_in_flight == 0)

        assert wait_until(played, 240), sup.status()  # type: ignore[attr-defined]
    finally:
        stop.set()
        thread.join(timeout=180)
    assert not thread.is_alive()


def _rows(config: Path) -> tuple[list[tuple], list[tuple]]:
    """The serving version's crops (id, camera, track, frame, time, box, quality, path) and the
    track spans, sorted."""
    cfg = load_config(config)
    crops, spans = [], []
    for shard in existing_shards(serving_version(cfg).root):
        with SqliteMetadata(shard / "metadata.sqlite3", read_only=True) as meta:
            for model_id, _ in meta.models():
                crops += [(r.vector_id, r.camera, r.track_id, r.frame_index, r.ts_ns, r.xyxy,
                           r.quality, r.crop_path) for r in meta.crops(meta.vector_ids(model_id))]
            spans += [(s.camera, s.track_id, s.first_ts_ns, s.last_ts_ns)
                      for s in meta.track_spans()]
    return sorted(crops), sorted(spans)


def _searches(config: Path, photos: list[Path], capsys) -> list[list[tuple[int, float]]]:
    out = []
    for photo in photos:
        capsys.readouterr()
        assert main(["search", "--image", str(photo), "--k", "5", "--config", str(config),
                     "--json"]) == 0
        out.append([(h["track_id"], h["score"]) for h in json.loads(capsys.readouterr().out)])
    return out


def _same(a: list[list[tuple[int, float]]], b: list[list[tuple[int, float]]]) -> None:
    """The same hits per photo with the same scores, to within the embedder's arithmetic (the
    camera and the rebuild both embed the stored JPEG's pixels, in batches of other sizes)."""
    for hits_a, hits_b in zip(a, b, strict=True):
        assert [t for t, _ in hits_a] == [t for t, _ in hits_b]
        assert np.allclose([s for _, s in hits_a], [s for _, s in hits_b], atol=0.005)


def _rebuild(config: Path, capsys, *more: str) -> dict:
    capsys.readouterr()
    assert main(["rebuild", "--config", str(config), "--json", *more]) == 0
    return json.loads(capsys.readouterr().out)


def _config(tmp: Path, clip: Path, extra: dict) -> Path:
    data = {
        "data_dir": str(tmp / "data"),
        "models": {"dir": str(MODELS_DIR)},
        "cameras": [{"name": "pets", "url": str(clip), "realtime": False}],
        "ray": {"num_cpus": 2, "detector_num_cpus": 0, "embedder_num_cpus": 0},
        "serve": {"port": 0, "save_interval_s": 1.0},
        "detector": LIGHT_DETECTOR,
        **extra,
    }
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("kafka", [False, True])
def test_serve_then_rebuild_gives_the_same_tracks_and_results(
    ray_local, clip, tmp_path, capsys, kafka, request
) -> None:
    extra = {}
    if kafka:
        tansu = request.getfixturevalue("tansu")
        extra["kafka"] = {"enabled": True, "bootstrap_servers": tansu.bootstrap,
                          "topic_prefix": f"t{time.time_ns()}", "linger_ms": 5,
                          "publish_detections": False}
    config = _config(tmp_path, clip, extra)
    _serve(config)

    served = _rows(config)
    crops, spans = served
    assert len(crops) >= 20 and len({c[2] for c in crops}) >= 5, served
    assert {c[2] for c in crops} <= {s[1] for s in spans}  # every stored track ended, recorded
    data = tmp_path / "data"
    photos = []
    for c in crops[:: max(1, len(crops) // 3)][:3]:
        photos.append(tmp_path / f"q{c[0]}.jpg")
        shutil.copy(data / "crops" / c[7], photos[-1])
    before = _searches(config, photos, capsys)

    report = _rebuild(config, capsys)
    assert (report["gallery_crops"], report["record_crops"], report["crops"]) == (
        len(crops), len(crops), len(crops))
    assert _rows(config) == served  # the same crops, tracks and spans, from the record
    _same(before, _searches(config, photos, capsys))

    if kafka:  # the same events went to Kafka: the data volume's views and journal lost
        for shard in existing_shards(serving_version(load_config(config)).root):
            shutil.rmtree(shard)
        shutil.rmtree(journal_dir(data))
        report = _rebuild(config, capsys, "--from-kafka", "--idle", "3")
        assert report["crops"] == len(crops)
        assert _rows(config) == served
        _same(before, _searches(config, photos, capsys))
    else:  # nothing in the record: the rebuild refuses, the gallery stays
        shutil.rmtree(journal_dir(data))
        assert main(["rebuild", "--config", str(config)]) == 2
        assert "rebuild refused" in capsys.readouterr().err
        assert _rows(config) == served
