"""`refind events tail` against a real Tansu broker: events published by the bus come out as
JSON lines."""

from __future__ import annotations

import json
import uuid

from refind.app.cli import main
from refind.streaming.bus import EventBus
from refind.streaming.config import KafkaConfig
from refind.streaming.events import TrackEvent, decode


def test_events_tail_prints_published_events(tansu, tmp_path, capsys) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    cfg = KafkaConfig(enabled=True, bootstrap_servers=tansu.bootstrap, topic_prefix=prefix,
                      linger_ms=5)
    sent = [
        TrackEvent(camera="gate", ts_ns=i, phase="start", track_id=i, first_ts_ns=i,
                   last_ts_ns=i, last_box=(1.0, 2.0, 30.0, 80.0))
        for i in range(3)
    ]
    with EventBus(cfg) as bus:
        assert bus.wait_connected(10)
        assert all(bus.publish(e) for e in sent)
        assert bus.flush(10)
    config = tmp_path / "refind.yaml"
    config.write_text(
        f"kafka:\n  enabled: true\n  bootstrap_servers: {tansu.bootstrap}\n"
        f"  topic_prefix: {prefix}\n"
    )
    capsys.readouterr()
    # no --group: read from the beginning without joining a group (joins on Tansu can take
    # several seconds under load; group reading is covered in tests/streaming/test_bus.py)
    code = main(["events", "tail", "--topic", "tracks", "--max", "3", "--timeout", "30",
                 "--config", str(config)])
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    got = [decode(ln) for ln in lines]
    assert [e.event_id for e in got] == [e.event_id for e in sent]
    assert all(json.loads(ln)["schema"] == "refind.track.v1" for ln in lines)


def test_events_tail_with_no_broker_is_one_clear_error(tmp_path, capsys) -> None:
    config = tmp_path / "refind.yaml"
    config.write_text("kafka:\n  enabled: true\n  bootstrap_servers: 127.0.0.1:9\n")
    assert main(["events", "tail", "--topic", "tracks", "--max", "1", "--timeout", "2",
                 "--config", str(config)]) == 2
    assert "refind: error:" in capsys.readouterr().err


def test_a_missing_extra_is_one_clear_error(tmp_path, capsys):
    """A command whose extra is not installed names the extra and the command that installs it
    (here Ray is made unimportable in a fresh interpreter)."""
    import subprocess
    import sys

    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ModuleNotFoundError('no ray here', name='ray')\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\ncameras: [{{name: a, url: x.mp4}}]\n")
    import os

    out = subprocess.run(
        [sys.executable, "-m", "refind", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
        env=os.environ | {"PYTHONPATH": str(blocker)},
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "refind: error: refind serve needs the live extra (ray is not installed): "
        "pip install -e '.[live]' (or bash scripts/setup.sh live)")
