"""INT8 copies of the OpenVINO ReID networks (NNCF post-training quantization) for CPU speed.

``refind quantize --model person-reidentification-retail-0277 --video CLIP`` cuts person crops
from CLIP with refind's detector, calibrates NNCF on them and writes the INT8 network into the
model store's cache as ``<model>-int8`` (``<cache>/derived/<model>-int8/``, with a manifest of
checksums and how it was made). The store then resolves ``<model>-int8`` like any other name,
so ``embedder: {model: ...-int8}`` or the IRM ``backbone: ...-int8`` select it. Vectors carry
its own model id: a gallery never mixes INT8 and float vectors.

Calibrate on footage like the cameras', not on the clips an evaluation reports on.

Example:
    >>> crops = calibration_crops(Path("clip.mp4"), store, n=300)       # doctest: +SKIP
    >>> quantize_reid(store, "person-reidentification-retail-0277", crops)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from refind.models.base import INT8_SUFFIX, ModelInputError, crops_to_batch
from refind.models.openvino_util import ir_input_hw
from refind.models.store import derived_dir, sha256_of

log = logging.getLogger(__name__)

MIN_CROP_HEIGHT = 48  # px: smaller people are mostly upsampling blur, poor calibration data


def calibration_crops(
    video: Path, store: object, n: int = 300, every_n_frames: int = 5, progress: bool = True
) -> list[np.ndarray]:
    """Up to ``n`` person crops (BGR) from ``video``: refind's default detector on every
    ``every_n_frames``-th frame, people at least ``MIN_CROP_HEIGHT`` px tall."""
    from refind.config import RefindConfig
    from refind.models.registry import build_detector
    from refind.streaming.boxes import box_pixels
    from refind.streaming.sources import VideoSource

    cfg = RefindConfig()
    detector = build_detector(cfg.detector, store)  # type: ignore[arg-type]
    crops: list[np.ndarray] = []
    bar = tqdm(total=n, desc="calibration crops", unit="crop", disable=not progress)
    for frame in VideoSource(Path(video), camera=Path(video).stem):
        if frame.index % every_n_frames:
            continue
        dets = detector([frame.image])[0]
        for box, conf in zip(dets.xyxy, dets.confidence, strict=True):
            if conf >= cfg.tracker.high_threshold and box[3] - box[1] >= MIN_CROP_HEIGHT:
                crops.append(np.ascontiguousarray(box_pixels(frame.image, box)))
                bar.update(1)
        if len(crops) >= n:
            break
    bar.close()
    if not crops:
        raise ModelInputError(f"no person of {MIN_CROP_HEIGHT} px or more found in {video}")
    return crops[:n]


def quantize_reid(store: object, name: str, crops: Sequence[np.ndarray], source: str = "") -> Path:
    """Quantize the store's OpenVINO network ``name`` to INT8 with NNCF, calibrated on
    ``crops``; writes ``<name>-int8`` into the store cache and returns its ``.xml``."""
    try:
        import nncf
    except ImportError:
        raise ModelInputError(
            "INT8 quantization needs NNCF: pip install 'refind[quantize]'"
        ) from None
    import openvino as ov

    if name.endswith(INT8_SUFFIX):
        raise ModelInputError(f"{name!r} is already an INT8 model")
    if len(crops) < 32:
        raise ModelInputError(f"{len(crops)} calibration crops: at least 32 are needed")
    resolved = store.resolve(name)  # type: ignore[attr-defined]
    if resolved.path.suffix != ".xml":
        raise ModelInputError(f"{name!r} is not an OpenVINO IR network ({resolved.path.name})")
    core = ov.Core()
    model = core.read_model(str(resolved.path))
    hw = ir_input_hw(model)
    # the IR's static batch of 1: one crop per calibration sample
    data = nncf.Dataset([crops_to_batch([c], hw, "calibration crop") for c in crops])
    t0 = time.perf_counter()
    quantized = nncf.quantize(
        model, data, subset_size=len(crops), preset=nncf.QuantizationPreset.PERFORMANCE
    )
    out_name = name + INT8_SUFFIX
    out = derived_dir(store.cache_dir, out_name)  # type: ignore[attr-defined]
    out.mkdir(parents=True, exist_ok=True)
    xml = out / f"{out_name}.xml"
    ov.save_model(quantized, str(xml), compress_to_fp16=False)

    manifest = {
        "name": out_name,
        "base": resolved.model_id,
        "files": {p.name: sha256_of(p) for p in (xml, xml.with_suffix(".bin"))},
        "calibration": {"crops": len(crops), "source": source},
        "nncf": nncf.__version__,
        "openvino": ov.__version__,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log.info("wrote %s (%d calibration crops)", xml, len(crops))
    return xml
