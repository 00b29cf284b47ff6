"""INT8 copies of the OpenVINO ReID networks (training/quantize.py) and their place in the store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refind.models.base import ModelInputError
from refind.models.store import ModelStore, ModelStoreError
from tests.conftest import MODELS_DIR, PETS_VIDEO, need_models, need_pets

REID = "person-reidentification-retail-0277"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """0277 quantized with 48 crops from the PETS clip into a fresh store cache."""
    need_models()
    need_pets()
    pytest.importorskip("nncf", reason="INT8 quantization needs the quantize extra (NNCF)")
    from refind.training.quantize import calibration_crops, quantize_reid

    store = ModelStore([MODELS_DIR], tmp_path_factory.mktemp("cache"), allow_download=False)
    crops = calibration_crops(PETS_VIDEO, store, n=48, every_n_frames=20, progress=False)
    quantize_reid(store, REID, crops, source="PETS")
    return store, crops


def test_int8_copy_resolves_and_embeds_like_the_float_network(quantized):
    from refind.models.config import OpenVinoReidConfig
    from refind.models.openvino_reid import OpenVinoReidEmbedder

    store, crops = quantized
    resolved = store.resolve(f"{REID}-int8")
    assert resolved.model_id.startswith(f"{REID}-int8@") and resolved.path.suffix == ".xml"
    manifest = json.loads((resolved.path.parent / "manifest.json").read_text())
    assert manifest["base"].startswith(REID) and manifest["calibration"]["crops"] == 48
    fp = OpenVinoReidEmbedder(OpenVinoReidConfig(model=REID), store)(crops[:16])
    q8 = OpenVinoReidEmbedder(OpenVinoReidConfig(model=f"{REID}-int8"), store)(crops[:16])
    assert q8.model_id != fp.model_id and q8.vectors.shape == fp.vectors.shape
    cos = np.sum(fp.vectors * q8.vectors, axis=1)
    assert cos.min() > 0.8 and cos.mean() > 0.9, cos


def test_irm_runs_on_the_int8_backbone_under_its_own_model_id(quantized):
    from refind.models.irm_embedder import IrmEmbedder

    store, crops = quantized
    weights = store.resolve("irm-pets-v3")
    fp = IrmEmbedder.from_pretrained(weights.path, store, device="cpu", model_id="irm")
    q8 = IrmEmbedder.from_pretrained(
        weights.path, store, backbone=f"{REID}-int8", device="cpu", model_id="irm"
    )
    assert q8.model_id.startswith(f"irm+{REID}-int8@") and fp.model_id == "irm"
    a, b = fp(crops[:8]).vectors, q8(crops[:8]).vectors
    assert np.sum(a * b, axis=1).mean() > 0.9
    with pytest.raises(ModelInputError, match="trained on backbone"):
        IrmEmbedder.from_pretrained(
            weights.path, store, backbone="person-reidentification-retail-0288-int8"
        )


def test_tampered_int8_copy_is_refused(quantized, tmp_path):
    store, _ = quantized
    resolved = store.resolve(f"{REID}-int8")
    bin_path = next(p for p in resolved.paths if p.suffix == ".bin")
    original = bin_path.read_bytes()
    try:
        bin_path.write_bytes(original[:-16])
        fresh = ModelStore([MODELS_DIR], store.cache_dir, allow_download=False)
        with pytest.raises(ModelStoreError, match="expected"):
            fresh.resolve(f"{REID}-int8")
    finally:
        bin_path.write_bytes(original)


def test_missing_int8_copy_says_how_to_make_it(tmp_path):
    store = ModelStore([MODELS_DIR], tmp_path, allow_download=False)
    with pytest.raises(ModelStoreError, match="refind quantize --model " + REID):
        store.resolve(f"{REID}-int8")
    with pytest.raises(ModelStoreError, match="unknown model"):
        store.resolve("yolox_nano-int9")


def test_too_few_calibration_crops_are_refused(tmp_path):
    need_models()
    pytest.importorskip("nncf", reason="INT8 quantization needs the quantize extra (NNCF)")
    from refind.training.quantize import quantize_reid

    store = ModelStore([MODELS_DIR], tmp_path, allow_download=False)
    with pytest.raises(ModelInputError, match="at least 32"):
        quantize_reid(store, REID, [np.zeros((64, 32, 3), np.uint8)] * 4)
