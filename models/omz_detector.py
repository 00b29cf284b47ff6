"""Open Model Zoo person detectors (person-detection-0200, -0202, -retail-0013) on OpenVINO.

SSD-style networks that find people only: the frame is resized to the network's input
(stretched; with ``letterbox``, fitted with its aspect kept and padded), fed as BGR 0-255, and
the ``DetectionOutput`` rows ``(image_id, label, conf, x1, y1, x2, y2)`` (coordinates 0..1) come
back already suppressed; rows under ``conf_threshold`` are dropped and boxes are scaled to frame
pixels. Every box is a person (class 0, as YOLOX's COCO person). One frame per inference
request: the network's output joins a batch's rows, so frames run one after another on the
compiled model (a static batch of 4 ran at about half the frames/s here, 2026-12-07).

Example:
    >>> det = OmzPersonDetector(OmzPersonDetectorConfig(), store)      # doctest: +SKIP
    >>> [len(d) for d in det([frame_a, frame_b])]                       # doctest: +SKIP
    [7, 5]
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import openvino as ov

from refind.models.base import check_bgr_image
from refind.models.config import OmzPersonDetectorConfig
from refind.models.openvino_util import CpuRunner, ir_input_hw
from refind.models.store import ModelStore
from refind.streaming.records import Detections


class OmzPersonDetector:
    """Person boxes of each BGR frame, in frame pixels (module docstring)."""

    @classmethod
    def from_config(cls, cfg: OmzPersonDetectorConfig, store: ModelStore) -> OmzPersonDetector:
        """The model of its config section (``refind.models.registry`` builds it so)."""
        return cls(cfg, store)

    def __init__(self, cfg: OmzPersonDetectorConfig, store: ModelStore) -> None:
        self.cfg = cfg
        resolved = store.resolve(cfg.model)
        self.model_id = resolved.model_id
        core = ov.Core()
        model = core.read_model(str(resolved.path))
        self._h, self._w = ir_input_hw(model)
        self._run_model = CpuRunner(core, model, cfg.threads, PERFORMANCE_HINT="LATENCY")

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for each image, in order."""
        out = []
        for i, image in enumerate(images):
            check_bgr_image(image, f"detector input {i}")
            out.append(self._detect(image))
        return out

    def _detect(self, image: np.ndarray) -> Detections:
        h, w = image.shape[:2]
        if self.cfg.letterbox:
            scale = min(self._w / w, self._h / h)
            rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
            resized = np.zeros((self._h, self._w, 3), dtype=np.uint8)
            resized[:rh, :rw] = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA)
            # outputs are 0..1 of the padded input: scale back by the input's size over `scale`
            span = np.array([self._w, self._h, self._w, self._h], dtype=np.float32) / scale
        else:
            resized = cv2.resize(image, (self._w, self._h), interpolation=cv2.INTER_AREA)
            span = np.array([w, h, w, h], dtype=np.float32)
        batch = resized.transpose(2, 0, 1)[None].astype(np.float32)  # (1, 3, H, W) BGR 0-255
        (raw,) = self._run_model([batch])
        rows = np.asarray(raw, dtype=np.float32).reshape(-1, 7)
        rows = rows[(rows[:, 0] >= 0) & (rows[:, 2] >= self.cfg.conf_threshold)]
        if len(rows) == 0:
            return Detections.empty()
        xyxy = rows[:, 3:7] * span
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
        score = rows[:, 2]
        valid = (xyxy[:, 2] - xyxy[:, 0] > 1) & (xyxy[:, 3] - xyxy[:, 1] > 1)
        xyxy, score = xyxy[valid], score[valid]
        if len(score) == 0:
            return Detections.empty()
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        keep = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), score.tolist(),
                                           self.cfg.conf_threshold, self.cfg.nms_iou),
                          dtype=np.int64).reshape(-1)
        return Detections(xyxy[keep], score[keep], np.zeros(len(keep), dtype=np.int32))
