"""Config sections of the models: where weights come from, the detector and the embedder
(plugin sections keyed on ``type:``, each naming the class ``refind.models.registry`` builds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    Tag,
    model_validator,
)

from refind.streaming.config import Section, type_tag


class ModelStoreConfig(Section):
    dir: Path | None = Field(
        None,
        description="Directory holding model files. Default: ../shared/models when it exists, "
        "else ~/.cache/refind/models.",
    )
    allow_download: bool = Field(
        True, description="Download missing weights from their upstream release (sha256-checked)."
    )


class YoloxDetectorConfig(Section):
    type: Literal["yolox"] = "yolox"
    model: str = Field("yolox_nano", description="Model store name of the YOLOX ONNX file.")
    input_size: int = Field(
        416, ge=32, le=1920, multiple_of=32,
        description="Longest side of the network input. Frames whose longer side fits run at "
        "native scale (padded to a multiple of 32); larger frames are scaled down to it.",
    )
    conf_threshold: float = Field(
        0.1, ge=0.0, le=1.0, description="Lowest score kept (the tracker uses low boxes too)."
    )
    nms_iou: float = Field(0.45, gt=0.0, le=1.0, description="IoU above which NMS suppresses.")
    classes: tuple[int, ...] = Field((0,), description="COCO class ids kept; 0 is person.")
    batch_size: int = Field(4, ge=1, le=64, description="Frames per inference call.")
    threads: int = Field(0, ge=0, le=256, description="onnxruntime intra-op threads; 0 = auto.")


# `fit` left out: the models whose best on PETS09-S2L1 was not `stretch` (figures in `fit`'s
# description and docs/benchmarks.md#detectors)
_BEST_FIT = {"person-detection-0202": "aspect"}


class OmzPersonDetectorConfig(Section):
    """An Open Model Zoo person detector (SSD-style, person only) on OpenVINO's CPU runner:
    person-detection-0200 (256x256), -0202 (512x512) or person-detection-retail-0013."""

    type: Literal["omz_person"] = "omz_person"
    model: str = Field(
        "person-detection-0202", description="Model store name: person-detection-0200, "
        "person-detection-0202 or person-detection-retail-0013.",
    )
    conf_threshold: float = Field(
        0.1, ge=0.0, le=1.0, description="Lowest score kept (the tracker uses low boxes too)."
    )
    nms_iou: float = Field(0.45, gt=0.0, le=1.0, description="IoU above which NMS suppresses.")
    fit: Literal["aspect", "stretch", "letterbox"] = Field(
        None, validate_default=False, description="How a frame goes into the network: `aspect` "
        "reshapes the network's input to the frame's aspect at about its own pixel count (sides "
        "multiples of 32; one compiled network per frame shape), so people keep their shape and "
        "no pixel is padding; `stretch` resizes the frame to the network's own input; `letterbox` "
        "fits it there with its aspect kept and pads the rest. Left out: what measured best for "
        "the model on PETS09-S2L1 (every 5th frame, IoU 0.5, score 0.3): `aspect` for "
        "person-detection-0202 (precision 0.85 -> 0.92 at recall 0.91), `stretch` for 0200 "
        "(recall 0.89 against 0.85) and retail-0013 (precision 0.92 against 0.74).",
    )
    input_area: float = Field(
        1.0, gt=0.05, le=4.0, description="With `fit: aspect`: the input's pixel count as a "
        "share of the network's own. The detector's time goes with it; below 1 it sees small "
        "(far) people at fewer pixels: 0202 at 0.5 ran 22.5 ms a PETS frame against 35.6, and "
        "tracked PETS09-S2L1's frames 1-400 at IDF1 0.751 against 0.865 (docs/benchmarks.md, "
        "live cameras). The other fits keep the network's own input.",
    )
    batch_size: int = Field(4, ge=1, le=64, description="Frames per inference call.")
    threads: int = Field(0, ge=0, le=256, description="OpenVINO inference threads; 0 = auto.")

    @model_validator(mode="after")
    def _area_needs_aspect(self) -> OmzPersonDetectorConfig:
        if self.input_area != 1.0 and self.fit != "aspect":
            raise ValueError(f"input_area reshapes the network's input, which only "
                             f"`fit: aspect` does; set `fit: aspect` or leave input_area out "
                             f"(fit is {self.fit})")
        return self

    @model_validator(mode="before")
    @classmethod
    def _fit_of_the_model(cls, data: object) -> object:
        """``fit`` left out: the model's measured best (see its description). ``letterbox:
        true|false`` was the setting before ``fit`` and keeps its meaning."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "letterbox" in data:
            flag = data.pop("letterbox")
            if "fit" in data:
                raise ValueError("detector: give `fit` alone (`letterbox` is its older spelling)")
            if not isinstance(flag, bool):
                raise ValueError(f"detector: letterbox must be true or false, not {flag!r}")
            data["fit"] = "letterbox" if flag else "stretch"
        if data.get("fit") is None:
            model = data.get("model", cls.model_fields["model"].default)
            data["fit"] = _BEST_FIT.get(model, "stretch")
        return data


# Plugin sections: unions discriminated on `type:` (the embedded default's type when left out;
# a detector's follows its model's name: a yolox* model is yolox, any other omz_person).
DetectorConfig = Annotated[
    Annotated[YoloxDetectorConfig, Tag("yolox")]
    | Annotated[OmzPersonDetectorConfig, Tag("omz_person")],
    type_tag("omz_person", by_model={"yolox": "yolox"}),
]


class OpenVinoReidConfig(Section):
    type: Literal["openvino_reid"] = "openvino_reid"
    model: str = Field(
        "person-reidentification-retail-0277",
        description="Model store name of an OMZ person ReID model (0277, 0286, 0287, 0288), or "
        "of its INT8 copy made by `refind quantize` (NAME-int8).",
    )
    batch_size: int = Field(32, ge=1, le=1024, description="Crops per inference call.")
    threads: int = Field(0, ge=0, le=256, description="OpenVINO inference threads; 0 = auto.")
    resize_threads: int = Field(
        0, ge=0, le=64, description="Threads resizing a batch of 64 or more crops; 0 = up to 8, "
        "within the CPUs this process may use (affinity, cgroup quota); 1 = never threaded.",
    )


class IrmEmbedderConfig(Section):
    """The instruction-editable ReID model (models/irm.py; run by models/irm_cpu.py on a CPU,
    models/irm_embedder.py on a GPU): 512-d vectors, queries may carry an instruction (text or
    a garment photo). Its weights were trained on one backbone's features."""

    type: Literal["irm"] = "irm"
    weights: str = Field(
        "irm-pets-v3", description="Model store name (or path of a .safetensors file) of the head."
    )
    backbone: str = Field(
        "person-reidentification-retail-0277",
        description="Model store name of the frozen backbone; must be the one the head was "
        "trained on, or its INT8 copy (NAME-int8, CPU only, made by `refind quantize`).",
    )
    batch_size: int = Field(32, ge=1, le=1024, description="Crops per inference call.")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="auto = a CUDA GPU when torch sees one, else the CPU (OpenVINO).",
    )
    threads: int = Field(0, ge=0, le=256, description="OpenVINO backbone threads; 0 = auto.")
    resize_threads: int = Field(
        0, ge=0, le=64, description="Threads resizing a batch of 64 or more crops; 0 = up to 8, "
        "within the CPUs this process may use (affinity, cgroup quota); 1 = never threaded.",
    )


EmbedderConfig = Annotated[
    Annotated[OpenVinoReidConfig, Tag("openvino_reid")] | Annotated[IrmEmbedderConfig, Tag("irm")],
    type_tag("openvino_reid"),
]
