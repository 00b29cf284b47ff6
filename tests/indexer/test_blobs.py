from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refind.indexer.blobs import CropStore, CropStoreError, safe_name


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


def test_fsspec_url_store_round_trip(tmp_path: Path) -> None:
    """Crops go to any fsspec URL (here fsspec's in-memory filesystem, a real implementation)."""
    pytest.importorskip("fsspec")
    import uuid

    url = f"memory://refind-test-{uuid.uuid4().hex}/crops"
    store = CropStore(tmp_path / "unused", url=url)
    image = np.full((40, 20, 3), 200, np.uint8)
    rel = store.put("cam", 3, 9, image)
    assert store.location(rel) == f"{url}/cam/3/000009.jpg"
    assert store.read(rel).shape == image.shape
    with pytest.raises(CropStoreError, match="missing"):
        store.read("cam/3/000010.jpg")
    with pytest.raises(CropStoreError):
        store.read("../elsewhere.jpg")


def test_from_config_uses_blob_url(tmp_path: Path) -> None:
    from refind.config import parse_config

    cfg = parse_config({"data_dir": str(tmp_path), "blobs": {"url": f"file://{tmp_path}/b"}})
    store = CropStore.from_config(cfg)
    rel = store.put("c", 1, 1, np.zeros((8, 8, 3), np.uint8))
    assert (tmp_path / "b" / rel).is_file()
