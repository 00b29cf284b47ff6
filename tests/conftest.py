"""Shared builders and locations for refind's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

# Fixtures: live cameras (tests.cameras); real Kafka (Tansu) and Redis servers (tests.servers).
pytest_plugins = ["tests.cameras", "tests.servers"]

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / "../shared").resolve()
MODELS_DIR = SHARED / "models"
PETS_DIR = SHARED / "data" / "pets09-s2l1"
PETS_VIDEO = PETS_DIR / "vtest.avi"
PETS_GT = PETS_DIR / "gt.txt"
PETS_GT_SCALE = 480 / 768


def need_models() -> None:
    if not (MODELS_DIR / "yolox_nano.onnx").is_file():
        pytest.skip(f"pretrained weights not found in {MODELS_DIR} (../shared/models)")


def need_pets() -> None:
    if not PETS_VIDEO.is_file() or not PETS_GT.is_file():
        pytest.skip(f"PETS09-S2L1 clip and ground truth not found in {PETS_DIR}")


@pytest.fixture(scope="session")
def model_store():
    from models.store import ModelStore

    need_models()
    return ModelStore([MODELS_DIR], REPO / ".pytest_cache" / "models", allow_download=False)


@pytest.fixture(scope="session")
def pets_video() -> Path:
    need_pets()
    return PETS_VIDEO
