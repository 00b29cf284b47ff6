"""The Open Model Zoo person detectors on real PETS frames: each finds the people the ground
truth has (recall and precision at IoU 0.5 over a few frames), in frame pixels, as person boxes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from refind.config import parse_config
from refind.models.registry import build_detector
from refind.streaming.matching import iou_matrix
from tests.conftest import PETS_VIDEO, need_models, need_pets, pets_gt_boxes

FRAMES = (1, 101, 201, 301, 401)  # 1-based MOT frame numbers


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    need_pets()
    cap = cv2.VideoCapture(str(PETS_VIDEO))
    out = []
    for n in FRAMES:
        cap.set(cv2.CAP_PROP_POS_FRAMES, n - 1)
        ok, frame = cap.read()
        assert ok
        out.append(frame)
    cap.release()
    return out


@pytest.mark.parametrize("name", ["person-detection-0200", "person-detection-0202",
                                  "person-detection-retail-0013"])
def test_finds_the_people_of_the_ground_truth(name: str, frames, model_store) -> None:
    need_models()
    cfg = parse_config({"detector": {"type": "omz_person", "model": name}})
    detector = build_detector(cfg.detector, model_store)
    assert detector.model_id.startswith(f"{name}@")
    recall, precision = _recall_precision(detector(frames), frames)
    assert recall >= 0.7 and precision >= 0.7, (name, recall, precision)


def _recall_precision(found, frames) -> tuple[float, float]:
    """Of boxes scored 0.3 or more against the ground truth at IoU 0.5, over ``FRAMES``."""
    hits = n_gt = n_det = 0
    for n, frame, dets in zip(FRAMES, frames, found, strict=True):
        assert (dets.class_id == 0).all()
        h, w = frame.shape[:2]
        assert (dets.xyxy[:, [0, 2]] <= w).all() and (dets.xyxy[:, [1, 3]] <= h).all()
        sure = dets.xyxy[dets.confidence >= 0.3]
        gt = np.array(list(pets_gt_boxes(n).values()))
        n_gt, n_det = n_gt + len(gt), n_det + len(sure)
        if len(gt) and len(sure):
            hits += int((iou_matrix(gt, sure).max(axis=1) >= 0.5).sum())
    return hits / n_gt, hits / max(n_det, 1)


def test_a_smaller_input_area_runs_a_smaller_network_and_still_finds_people(
    frames, model_store
) -> None:
    """``input_area: 0.5``: a 4:3 PETS frame goes into 0202 at 320x416 (about half its 512x512
    pixels, sides multiples of 32), and the people are still found, in frame pixels."""
    need_models()
    cfg = parse_config({"detector": {"type": "omz_person", "input_area": 0.5}})
    detector = build_detector(cfg.detector, model_store)
    recall, precision = _recall_precision(detector(frames), frames)
    assert list(detector._by_shape) == [(320, 416)]
    assert recall >= 0.7 and precision >= 0.7, (recall, precision)


@pytest.mark.parametrize("fit", ["aspect", "letterbox"])
def test_a_narrow_view_keeps_its_aspect_and_its_pixels(fit: str, frames, model_store) -> None:
    """A camera cut to the left 47 % of PETS (a portrait view) keeps its aspect: in a network
    reshaped to it (``aspect``, 640x416 for 0202) or padded inside the 512x512 input
    (``letterbox``); the boxes come back in the cut's own pixels. Frames of the full view run
    between the cut's, so the detector holds two shapes at once."""
    need_models()
    cfg = parse_config({"detector": {"type": "omz_person", "fit": fit}})
    detector = build_detector(cfg.detector, model_store)
    cut_w = int(frames[0].shape[1] * 0.47)
    views = [np.ascontiguousarray(f[:, :cut_w]) for f in frames]
    found = [detector([view, frame])[0] for view, frame in zip(views, frames, strict=True)]
    hits = n_gt = n_det = 0
    for n, view, dets in zip(FRAMES, views, found, strict=True):
        h, w = view.shape[:2]
        assert (dets.xyxy >= 0).all()
        assert (dets.xyxy[:, [0, 2]] <= w).all() and (dets.xyxy[:, [1, 3]] <= h).all()
        sure = dets.xyxy[dets.confidence >= 0.3]
        gt = np.array([b for b in pets_gt_boxes(n).values() if b[2] <= cut_w])  # wholly inside
        n_gt, n_det = n_gt + len(gt), n_det + len(sure)
        if len(gt) and len(sure):
            hits += int((iou_matrix(gt, sure).max(axis=1) >= 0.5).sum())
    assert n_gt >= 5
    assert hits / n_gt >= 0.7 and hits / max(n_det, 1) >= 0.6, (hits, n_gt, n_det)
