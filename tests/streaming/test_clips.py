"""Track clips and the frame stored beside each crop: what is recorded, how it is bounded, that
the MP4 decodes as H.264 at the track's real speed with its box drawn, and that the files are
deleted with their crops."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from refind.indexer.blobs import CropStore, clip_path, context_path
from refind.indexer.forget import delete_files
from refind.streaming.clips import BOX_BGR, ClipRecorder, TrackClip
from refind.streaming.config import CropConfig
from refind.streaming.crops import CropSelector, as_stored
from refind.streaming.records import CropRecord, Frame, Tracks


def _scene(i: int) -> np.ndarray:
    image = np.full((240, 320, 3), 90, np.uint8)
    image[:, (i * 3) % 300 : (i * 3) % 300 + 10] = 200  # something moves
    return image


def _box(i: int) -> list[float]:
    return [20.0 + i, 40.0, 80.0 + i, 200.0]


def _decode(data: bytes, tmp_path: Path) -> tuple[str, list[np.ndarray], float]:
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as f:
        stream = f.streams.video[0]
        frames = [fr.to_ndarray(format="bgr24") for fr in f.decode(stream)]
        return stream.codec_context.name, frames, float(f.duration or 0) / 1e6


def test_a_clip_plays_the_track_at_its_speed_with_its_box(tmp_path: Path) -> None:
    rec = ClipRecorder(max_side=320, max_frames=12)
    for i in range(40):  # 40 analysed frames at 10 fps: a 3.9 s track
        ts = i * 100_000_000
        rec.update(Frame("gate", i, ts, _scene(i)), Tracks("gate", i, ts, [5], [_box(i)], [0.9]))
    clip = rec.end(5)
    assert isinstance(clip, TrackClip) and clip.camera == "gate" and clip.track_id == 5
    assert clip.frames == 10  # strides 1 -> 2 -> 4: every 4th of 40 frames
    codec, frames, seconds = _decode(clip.data, tmp_path)
    assert codec == "h264" and len(frames) == clip.frames
    assert 3.0 <= seconds <= 4.6  # the track's 3.6 s between its first and last sample
    first = frames[0].astype(int)
    edge = first[120, 20]  # on the box's left edge of frame 0: green (blurred by 4:2:0 chroma)
    assert edge[1] - max(edge[0], edge[2]) > 60, edge
    assert np.abs(first[120, 50] - 90).sum() < 40  # inside the box: the scene, untouched
    assert rec.frames_held == 0  # nothing held once no track needs a frame


def test_frames_held_stay_bounded_on_a_long_crowded_stream() -> None:
    rec = ClipRecorder(max_side=64, max_frames=8)
    image = np.zeros((48, 64, 3), np.uint8)
    held = []
    for i in range(2000):
        ids = [1, 2, 3] + ([100 + i // 50] if i % 50 < 30 else [])  # short tracks come and go
        boxes = [[1.0, 1.0, 20.0, 40.0]] * len(ids)
        rec.update(Frame("c", i, i * 10**8, image), Tracks("c", i, i * 10**8, ids, boxes,
                                                          [0.9] * len(ids)))
        if i % 50 == 30:
            assert rec.end(100 + i // 50) is not None
        held.append(rec.frames_held)
    # 3 long tracks share one grid: about max_frames per stride in use, never the whole stream
    assert max(held) <= 8 * 12, max(held)
    assert all(rec.end(t) is not None for t in (1, 2, 3))


def test_a_track_seen_once_has_no_clip() -> None:
    rec = ClipRecorder(max_side=64, max_frames=8)
    rec.update(Frame("c", 0, 0, np.zeros((48, 64, 3), np.uint8)),
               Tracks("c", 0, 0, [1], [[1.0, 1.0, 20.0, 40.0]], [0.9]))
    assert rec.end(1) is None
    assert rec.end(99) is None  # never seen


def test_recorder_refuses_sizes_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="max_side"):
        ClipRecorder(max_side=8)


def test_each_crop_carries_its_frame_downscaled_with_its_box() -> None:
    selector = CropSelector(CropConfig(context_px=160, min_height_px=20, edge_margin_px=0))
    image = np.full((480, 640, 3), 70, np.uint8)
    selector.update(Frame("gate", 3, 0, image),
                    Tracks("gate", 3, 0, [7], [[100, 100, 180, 300]], [0.9]))
    (crop,) = selector.flush()
    assert crop.context is not None and crop.context.shape == (120, 160, 3)
    assert tuple(crop.context[50, 25]) == BOX_BGR  # the box at a quarter of its frame's size
    stored = as_stored(crop, 90)
    assert stored.context_jpeg[:2] == b"\xff\xd8" and stored.context is None
    none = CropSelector(CropConfig(context_px=0, min_height_px=20, edge_margin_px=0))
    none.update(Frame("gate", 3, 0, image), Tracks("gate", 3, 0, [7], [[100, 100, 180, 300]],
                                                  [0.9]))
    assert none.flush()[0].context is None


def test_context_and_clip_files_go_with_their_crops(tmp_path: Path) -> None:
    store = CropStore(tmp_path / "crops")
    crop = np.full((40, 20, 3), 128, np.uint8)
    rel = store.put("gate", 7, 12, crop, context=b"\xff\xd8context")
    assert rel == "gate/7/000012.jpg"
    assert store.read_bytes(context_path(rel)) == b"\xff\xd8context"
    assert store.put_clip("gate", 7, b"mp4 bytes") == clip_path("gate", 7) == "gate/7/clip.mp4"
    assert store.exists(clip_path("gate", 7))
    record = CropRecord(vector_id=1, camera="gate", track_id=7, frame_index=12, ts_ns=0,
                        xyxy=(0.0, 0.0, 20.0, 40.0), confidence=0.9, quality=0.5,
                        crop_path=rel, model_id="m")
    assert delete_files(store, [record]) == 1
    assert not store.exists(rel) and not store.exists(context_path(rel))
    assert not store.exists(clip_path("gate", 7))
    assert list((tmp_path / "crops").rglob("*.*")) == []
