"""The identity service: global ids and alerts from stored crops, written to the durable
record, state kept across a restart, models kept apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from refind.config import RefindConfig
from refind.indexer.identity_service import CropNews, IdentityService
from refind.indexer.identity_state import GlobalIds, people_of, state_path
from refind.indexer.journal import EventJournal, journal_dir
from refind.indexer.record import EventRecord
from refind.indexer.watchlist import WatchStore, photo_watch
from refind.streaming.records import TrackSpan

MODEL = "person-reidentification-retail-0277@82039b1bb986"
AXES = np.eye(4, dtype=np.float32)
S = 10**9


def service(tmp_path: Path) -> IdentityService:
    cfg = RefindConfig(data_dir=tmp_path)
    return IdentityService(cfg, EventRecord(EventJournal(journal_dir(tmp_path))),
                           save_interval_s=0.0)


def news(camera: str, track: int, t_s: float, v: np.ndarray, model: str = MODEL) -> CropNews:
    return CropNews(camera, track, int(t_s * S), v, model, f"{camera}/{track}/{t_s}.jpg")


def lines(tmp_path: Path, kind: str) -> list[dict]:
    path = journal_dir(tmp_path) / f"{kind}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_links_alerts_and_records(tmp_path: Path) -> None:
    WatchStore.in_data_dir(tmp_path).add(photo_watch("visitor", AXES[0], MODEL, 0.5))
    svc = service(tmp_path)
    alerts = svc.crops([news("gate", 1, 1.0, AXES[0]), news("hall", 4, 1.2, AXES[1])])
    assert [(a.watch, a.camera, a.track_id, a.global_id) for a in alerts] == [
        ("visitor", "gate", 1, 1)]
    svc.ended([TrackSpan("gate", 1, int(0.5 * S), 3 * S)])
    assert svc.crops([news("yard", 2, 6.0, AXES[0])])[0].global_id == 1  # a new camera
    got = [(e["kind"], e["camera"], e["track_id"], e["global_id"])
           for e in lines(tmp_path, "identities")]
    assert got == [("assigned", "gate", 1, 1), ("assigned", "hall", 4, 2),
                   ("assigned", "yard", 2, 1)]
    assert [(a["watch"], a["camera"], a["schema"]) for a in lines(tmp_path, "alerts")] == [
        ("visitor", "gate", "refind.alert.v1"), ("visitor", "yard", "refind.alert.v1")]
    assert lines(tmp_path, "embeddings") == []  # vectors go to Kafka only, when asked
    assert svc.stats()["alerts"] == 2 and svc.stats()["open_tracks"] == 2


def test_state_survives_a_restart(tmp_path: Path) -> None:
    svc = service(tmp_path)
    svc.crops([news("gate", 1, 1.0, AXES[0]), news("hall", 4, 1.2, AXES[1])])
    svc.close()
    assert state_path(tmp_path, MODEL).is_file()
    again = service(tmp_path)  # the actor restarted
    again.crops([news("yard", 9, 5.0, AXES[1]), news("yard", 10, 5.0, AXES[2])])
    ids = again.global_ids([("gate", 1), ("hall", 4), ("yard", 9), ("yard", 10)], MODEL)
    assert ids[("gate", 1)] == 1 and ids[("yard", 9)] == ids[("hall", 4)] == 2  # linked
    assert ids[("yard", 10)] > 2  # a new person: a new id (past the ids reserved before)


def test_ids_are_never_handed_out_twice_after_a_crash(tmp_path: Path) -> None:
    """Events went out, the state was not saved (the process died): the ids in those events
    are never given to someone else."""
    cfg = RefindConfig(data_dir=tmp_path)
    first = IdentityService(cfg, EventRecord(EventJournal(journal_dir(tmp_path))),
                            save_interval_s=3600.0)
    first.crops([news("gate", n, float(n), AXES[n % 4]) for n in range(1, 4)])
    published = {e["global_id"] for e in lines(tmp_path, "identities")}
    assert published == {1, 2, 3} and not state_path(tmp_path, MODEL).exists()  # never saved
    second = service(tmp_path)
    second.crops([news("yard", 1, 9.0, -AXES[0])])
    assert second.global_ids([("yard", 1)], MODEL)[("yard", 1)] not in published


def test_models_never_mix(tmp_path: Path) -> None:
    svc = service(tmp_path)
    svc.crops([news("gate", 1, 1.0, AXES[0])])
    svc.crops([news("gate", 2, 9.0, AXES[0], model="other@1")])
    assert svc.global_ids([("gate", 1), ("gate", 2)], MODEL) == {("gate", 1): 1}
    assert svc.global_ids([("gate", 2)], "other@1") == {("gate", 2): 1}
    svc.close()
    assert state_path(tmp_path, "other@1").is_file()


def test_global_ids_are_read_by_another_process_and_grouped(tmp_path: Path) -> None:
    svc = service(tmp_path)
    svc.crops([news("gate", 1, 1.0, AXES[0]), news("hall", 4, 1.2, AXES[1]),
               news("yard", 2, 6.0, AXES[0])])
    svc.close()
    ids = GlobalIds(tmp_path).lookup([("gate", 1), ("hall", 4), ("yard", 2), ("x", 1)], MODEL)
    assert ids == {("gate", 1): 1, ("hall", 4): 2, ("yard", 2): 1}
    assert people_of([("gate", 1), ("hall", 4), ("yard", 2)], ids) == [
        {"global_id": 1, "cameras": ["gate", "yard"],
         "tracklets": [{"camera": "gate", "track_id": 1}, {"camera": "yard", "track_id": 2}]},
        {"global_id": 2, "cameras": ["hall"], "tracklets": [{"camera": "hall", "track_id": 4}]}]
    assert GlobalIds(tmp_path / "nothing").lookup([("gate", 1)], MODEL) == {}


def test_a_forgotten_track_leaves_every_saved_state(tmp_path: Path) -> None:
    from refind.indexer.identity_state import forget_identities

    svc = service(tmp_path)
    svc.crops([news("gate", 1, 1.0, AXES[0]), news("hall", 4, 1.2, AXES[1])])
    svc.crops([news("gate", 1, 9.0, AXES[0], model="other@1")])
    svc.close()
    assert forget_identities(tmp_path, "gate", 1) == 2  # both models' states held it
    assert GlobalIds(tmp_path).lookup([("gate", 1), ("hall", 4)], MODEL) == {("hall", 4): 2}
    assert "gate" not in state_path(tmp_path, "other@1").read_text()
    assert forget_identities(tmp_path, "gate", 1) == 0


def test_a_restarted_service_goes_on_with_an_open_track(tmp_path: Path) -> None:
    """A track open across a restart keeps its id and the crops seen before it (its vector is
    not replaced by the next crop's alone), and its end is still linked."""
    svc = service(tmp_path)
    lean = AXES[0] * 0.8 + AXES[1] * 0.6
    svc.crops([news("gate", 1, 1.0, AXES[0]), news("gate", 1, 2.0, AXES[0]),
               news("gate", 1, 3.0, AXES[0]), news("hall", 2, 1.0, AXES[1])])
    svc.close()
    again = service(tmp_path)
    changes_before = len(lines(tmp_path, "identities"))
    again.crops([news("gate", 1, 4.0, lean)])  # alone it would be nearer hall/2 than before
    again.ended([TrackSpan("gate", 1, int(0.5 * S), 5 * S)])
    assert again.global_ids([("gate", 1), ("hall", 2)], MODEL) == {("gate", 1): 1,
                                                                   ("hall", 2): 2}
    assert len(lines(tmp_path, "identities")) == changes_before  # no split, no new id
    assert again.stats()["tracks_ended"] == 1
    held = again.linker(MODEL).tracklets[("gate", 1)]
    assert held.crops == 4 and held.vector @ AXES[0] > 0.95  # 3 crops before, 1 after
