"""The README's Kafka consumer example, run as written against a real broker (Tansu) that
refind's own bus filled with identity and alert events."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from refind.streaming.bus import EventBus
from refind.streaming.config import KafkaConfig
from refind.streaming.events import AlertEvent, IdentityEvent

README = Path(__file__).resolve().parents[1] / "README.md"


def consumer_example() -> str:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "refind.identities" in b and "KafkaConsumer" in b]
    assert len(found) == 1, "the README's consumer example is gone"
    return found[0]


@pytest.mark.integration
def test_the_readme_consumer_follows_ids_and_alerts(tansu, tmp_path: Path) -> None:
    m = "reid@1"
    events = [
        IdentityEvent(camera="gate", ts_ns=1, kind="assigned", track_id=1, global_id=1, model_id=m),
        IdentityEvent(camera="hall", ts_ns=2, kind="assigned", track_id=7, global_id=2, model_id=m),
        IdentityEvent(camera="hall", ts_ns=3, kind="merged", track_id=7, global_id=1,
                      previous_global_id=2, model_id=m),
        AlertEvent(camera="yard", ts_ns=4, watch="visitor", track_id=3, global_id=1,
                   first_ts_ns=3, score=0.93),
    ]
    with EventBus(KafkaConfig(enabled=True, bootstrap_servers=tansu.bootstrap)) as bus:
        assert bus.wait_connected(30)
        for e in [*events, events[-1]]:  # the alert twice: at-least-once delivery
            assert bus.publish(e)
        assert bus.flush(30)
    script = tmp_path / "consumer.py"
    script.write_text(consumer_example().replace('group_id="where-else"',
                                                 f'group_id="t-{uuid.uuid4().hex}"'))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env=os.environ | {"KAFKA": tansu.bootstrap})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 1, lines  # the repeated alert was dropped by its event_id
    # the two topics are read in no set order: the alert may come before the ids it names
    assert lines[0].startswith("visitor: yard track 3, p=0.93; this person was also seen as ")
    assert lines[0].endswith(("[('gate', 1), ('hall', 7)]", "[('gate', 1)]", "[]"))
