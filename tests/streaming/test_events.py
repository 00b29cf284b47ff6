from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from refind.streaming.events import (
    AlertEvent,
    CameraStatusEvent,
    CropEvent,
    DetectionEvent,
    EmbeddingEvent,
    EventDecodeError,
    ForgetEvent,
    IdentityEvent,
    TrackEvent,
    decode,
    encode,
    resolve_topic,
    topic_for,
)
from refind.streaming.records import CropRecord, Detections

EVENTS = [
    DetectionEvent(camera="gate", ts_ns=1_000, frame_index=7,
                   boxes=((1.5, 2.0, 30.0, 80.0), (0, 0, 0, 0)), confidences=(0.9, 0.0)),
    DetectionEvent(camera="gate", ts_ns=0, frame_index=0),
    TrackEvent(camera="lobby.2", ts_ns=5_000, phase="start", track_id=3, first_ts_ns=5_000,
               last_ts_ns=5_000, last_box=(10, 20, 40, 120)),
    TrackEvent(camera="lobby.2", ts_ns=9_000, phase="end", track_id=3, first_ts_ns=5_000,
               last_ts_ns=9_000, last_box=(12, 20, 42, 121), n_crops=2,
               best_crop="s3://crops/lobby.2/3/1.jpg", vector_ids=(41, 42), model_id="reid-0277"),
    CropEvent(camera="yard", ts_ns=7, vector_id=41, track_id=3, frame_index=2,
              crop_path="crops/yard/3/2.jpg", box=(1, 2, 3, 4), quality=0.75, model_id="reid-0277"),
    CameraStatusEvent(camera="dock_1", ts_ns=3, state="reconnecting", message="EOF from RTSP",
                      frames_in=120, frames_dropped=4, reconnects=1),
    ForgetEvent(camera="gate", ts_ns=11, track_id=3, vector_ids=(41, 42), reason="GDPR erasure"),
    IdentityEvent(camera="gate", ts_ns=12, kind="merged", track_id=3, global_id=2,
                  previous_global_id=5, similarity=0.81, model_id="reid-0277"),
    AlertEvent(camera="gate", ts_ns=13, watch="visitor", track_id=3, global_id=2,
               first_ts_ns=10, score=0.93, reasons=("photo watch", "cosine 0.81"),
               thumbnail="gate/3/1.jpg"),
    EmbeddingEvent(camera="gate", ts_ns=14, track_id=3, global_id=None, model_id="reid-0277",
                   vector=(0.6, 0.8), crops=2, final=True),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_round_trip_keeps_every_field(event):
    data = encode(event)
    assert json.loads(data)["schema"] == event.schema_id
    assert decode(data) == event
    assert decode(data.decode()) == event


@pytest.mark.parametrize(
    ("event_type", "prefix", "topic"),
    [
        (DetectionEvent, "refind", "refind.detections"),
        (TrackEvent, "refind", "refind.tracks"),
        (CropEvent, "site-1.refind", "site-1.refind.crops"),
        (CameraStatusEvent, "refind", "refind.camera-status"),
        (ForgetEvent, "refind", "refind.forget"),
        (IdentityEvent, "refind", "refind.identities"),
        (AlertEvent, "site-1", "site-1.alerts"),
        (EmbeddingEvent, "refind", "refind.embeddings"),
        (EVENTS[2], "refind", "refind.tracks"),
    ],
)
def test_topic_for(event_type, prefix, topic):
    assert topic_for(event_type, prefix) == topic


@pytest.mark.parametrize(
    ("name", "topic"),
    [("tracks", "x.tracks"), ("x.camera-status", "x.camera-status"), ("crops", "x.crops")],
)
def test_resolve_topic(name, topic):
    assert resolve_topic(name, "x") == topic


def test_resolve_topic_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown topic 'track'.*tracks"):
        resolve_topic("track", "x")


def _json(**fields) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"{", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (_json(camera="gate"), "has no 'schema' field"),
        (_json(schema="refind.track.v2"), r"'refind.track.v2' is not supported.*refind.track v1"),
        (_json(schema="refind.trak.v1"), r"unknown event schema 'refind.trak.v1'; known: "),
        (_json(schema=5), "unknown event schema 5"),
        (_json(schema="refind.camera-status.v1", camera="gate", ts_ns=1, state="napping"),
         r"invalid refind.camera-status.v1 event: state: "),
        (_json(schema="refind.detection.v1", camera="gate", ts_ns=1, frame_index=0, color="red"),
         "color: Extra inputs are not permitted"),
    ],
)
def test_decode_refuses_with_a_clear_error(data, message):
    with pytest.raises(EventDecodeError, match=message):
        decode(data)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DetectionEvent(camera="g", ts_ns=0, frame_index=0, boxes=((0, 0, 1, 1),)),
         "1 boxes but 0 confidences"),
        (lambda: DetectionEvent(camera="g", ts_ns=0, frame_index=0, boxes=((0, 0, 1, 1),),
                                confidences=(1.5,)), r"confidences must be in \[0, 1\]"),
        (lambda: DetectionEvent(camera="g", ts_ns=0, frame_index=0,
                                boxes=((0, 0, float("nan"), 1),), confidences=(0.5,)), "finite"),
        (lambda: CropEvent(camera="g", ts_ns=0, vector_id=1, track_id=1, frame_index=0,
                           crop_path="c.jpg", box=(5, 0, 1, 1), quality=1, model_id="m"),
         "x2 >= x1"),
        (lambda: TrackEvent(camera="g", ts_ns=0, phase="update", track_id=1, first_ts_ns=9,
                            last_ts_ns=3, last_box=(0, 0, 1, 1)), "before first_ts_ns"),
        (lambda: TrackEvent(camera="g", ts_ns=0, phase="update", track_id=1, first_ts_ns=0,
                            last_ts_ns=3, last_box=(0, 0, 1, 1), vector_ids=(1,)),
         "without the model_id"),
        (lambda: TrackEvent(camera="g", ts_ns=0, phase="pause", track_id=1, first_ts_ns=0,
                            last_ts_ns=3, last_box=(0, 0, 1, 1)), "phase"),
        (lambda: CameraStatusEvent(camera="gate 2", ts_ns=0, state="live"), "camera"),
        (lambda: CameraStatusEvent(camera="g", ts_ns=-1, state="live"), "ts_ns"),
        (lambda: CameraStatusEvent(camera="g", ts_ns=0, state="live", fps=3), "fps"),
        (lambda: IdentityEvent(camera="g", ts_ns=0, kind="renamed", track_id=1, global_id=1,
                               model_id="m"), "kind"),
        (lambda: IdentityEvent(camera="g", ts_ns=0, kind="assigned", track_id=1, global_id=0,
                               model_id="m"), "global_id"),
        (lambda: AlertEvent(camera="g", ts_ns=0, watch="w", track_id=1, first_ts_ns=0,
                            score=1.5), "score"),
        (lambda: EmbeddingEvent(camera="g", ts_ns=0, track_id=1, model_id="m", vector=(),
                                crops=1), "vector"),
    ],
)
def test_invalid_events_are_refused(make, message):
    with pytest.raises(ValidationError, match=message):
        make()


def test_events_are_frozen_and_ids_unique():
    a = CameraStatusEvent(camera="g", ts_ns=0, state="live")
    b = CameraStatusEvent(camera="g", ts_ns=0, state="live")
    assert a.event_id != b.event_id and len(a.event_id) == 32
    with pytest.raises(ValidationError, match="frozen"):
        a.state = "failed"


def test_encode_refuses_other_objects():
    with pytest.raises(TypeError, match="not a refind event: dict"):
        encode({"schema": "refind.track.v1"})


def test_detection_event_from_detections_record():
    det = Detections(xyxy=np.array([[0, 0, 10, 20], [5, 5, 6, 7]]), confidence=[0.9, 0.2],
                     class_id=[0, 0])
    e = DetectionEvent.from_detections("gate", 4, 99, det)
    assert e.boxes == ((0, 0, 10, 20), (5, 5, 6, 7))
    assert e.confidences == pytest.approx((0.9, 0.2))
    assert (e.frame_index, e.ts_ns) == (4, 99)


def test_crop_event_from_record():
    rec = CropRecord(vector_id=8, camera="yard", track_id=2, frame_index=11, ts_ns=5,
                     xyxy=(1, 2, 3, 4), confidence=0.8, quality=0.6, crop_path="c/8.jpg",
                     model_id="reid-0277")
    e = CropEvent.from_record(rec)
    assert (e.vector_id, e.camera, e.track_id, e.box, e.model_id) == (8, "yard", 2, (1, 2, 3, 4),
                                                                      "reid-0277")
    assert decode(encode(e)) == e
