from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.blobs import CropStore, CropStoreError, safe_name


def test_put_and_read_round_trip(tmp_path: Path) -> None:
    store = CropStore(tmp_path)
    image = np.full((64, 32, 3), 127, np.uint8)
    rel = store.put("gate/1", 7, 120, image)
    assert rel == "gate_1/7/000120.jpg"
    back = store.read(rel)
    assert back.shape == image.shape
    assert np.abs(back.astype(int) - 127).max() <= 2


@pytest.mark.parametrize("rel", ["../secret", "/etc/passwd", "a/../../x", ""])
def test_paths_cannot_leave_the_store(tmp_path: Path, rel: str) -> None:
    (tmp_path / "secret").write_text("x")
    store = CropStore(tmp_path / "crops")
    with pytest.raises(CropStoreError):
        store.resolve(rel)


@pytest.mark.parametrize(
    ("name", "safe"), [("cam 1", "cam_1"), ("../x", "x"), ("..", "_"), ("a/b", "a_b")]
)
def test_safe_name(name: str, safe: str) -> None:
    assert safe_name(name) == safe
