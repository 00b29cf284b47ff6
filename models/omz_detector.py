"""Open Model Zoo person detectors (person-detection-0200, -0202, -retail-0013) on OpenVINO.

SSD-style networks that find people only: the frame is resized to the network's input
(``fit``: by default into the network reshaped to the frame's aspect at about its own pixel
count, which these SSDs allow, their prior boxes following the input's size; or stretched to the
network's own input; or fitted there with its aspect kept and padded), fed as BGR 0-255, and
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

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

import cv2
import numpy as np
import openvino as ov

from refind.models.base import check_bgr_image
from refind.models.config import OmzPersonDetectorConfig
from refind.models.openvino_util import CpuRunner, ir_input_hw
from refind.models.store import ModelStore
from refind.streaming.records import Detections

_SHAPES_KEPT = 8  # compiled networks for fit: aspect, one per frame shape, least recent dropped


def frame_input_hw(frame_hw: tuple[int, int], network_hw: tuple[int, int],
                   area_share: float = 1.0) -> tuple[int, int]:
    """The network input (h, w) of a frame's aspect with about ``area_share`` of the network's
    pixel count, each side a multiple of 32 (the SSDs' largest stride).

    Example:
        >>> frame_input_hw((576, 768), (512, 512))
        (448, 576)
        >>> frame_input_hw((720, 1280), (512, 512), area_share=0.5)
        (256, 480)
    """
    (h, w), area = frame_hw, network_hw[0] * network_hw[1] * area_share
    side = [max(32, round(math.sqrt(area * a) / 32) * 32) for a in (h / w, w / h)]
    return side[0], side[1]


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
        self._core = ov.Core()
        self._model = self._core.read_model(str(resolved.path))
        self._h, self._w = ir_input_hw(self._model)
        self._run_model = self._runner(self._model)
        self._by_shape: OrderedDict[tuple[int, int], CpuRunner] = OrderedDict()
        self._shapes_lock = threading.Lock()

    def _runner(self, model: ov.Model) -> CpuRunner:
        return CpuRunner(self._core, model, self.cfg.threads, PERFORMANCE_HINT="LATENCY")

    def _shaped(self, hw: tuple[int, int]) -> CpuRunner:
        """The network compiled for input ``hw`` (compiled at a shape's first frame, ~0.3 s)."""
        with self._shapes_lock:
            if hw == (self._h, self._w):
                return self._run_model
            if hw not in self._by_shape:
                model = self._model.clone()
                model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([1, 3, *hw])})
                self._by_shape[hw] = self._runner(model)
                if len(self._by_shape) > _SHAPES_KEPT:
                    self._by_shape.popitem(last=False)
            self._by_shape.move_to_end(hw)
            return self._by_shape[hw]

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for each image, in order."""
        out = []
        for i, image in enumerate(images):
            check_bgr_image(image, f"detector input {i}")
            out.append(self._detect(image))
        return out

    def _detect(self, image: np.ndarray) -> Detections:
        h, w = image.shape[:2]
        run = self._run_model
        if self.cfg.fit == "aspect":
            in_h, in_w = frame_input_hw((h, w), (self._h, self._w), self.cfg.input_area)
            run = self._shaped((in_h, in_w))
            resized = cv2.resize(image, (in_w, in_h), interpolation=cv2.INTER_AREA)
            span = np.array([w, h, w, h], dtype=np.float32)
        elif self.cfg.fit == "letterbox":
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
        (raw,) = run([batch])
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
