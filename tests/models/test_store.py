from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from refind.models.base import model_id_for, model_name
from refind.models.store import ModelFile, ModelSpec, ModelStore, ModelStoreError
from tests.conftest import serve_directory

PAYLOAD = b"pretend weights\n" * 100
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _spec(url: str | None, sha: str = SHA) -> dict[str, ModelSpec]:
    return {"toy": ModelSpec("toy", (ModelFile("toy/w.bin", sha, url),), "test")}


@pytest.fixture
def http_server(tmp_path: Path):
    """A real HTTP server on a free loopback port serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "w.bin").write_bytes(PAYLOAD)
    (www / "bad.bin").write_bytes(b"tampered")

    with serve_directory(www) as url:
        yield url


def test_finds_file_in_search_dir(tmp_path: Path) -> None:
    (tmp_path / "m" / "toy").mkdir(parents=True)
    (tmp_path / "m" / "toy" / "w.bin").write_bytes(PAYLOAD)
    store = ModelStore([tmp_path / "m"], tmp_path / "cache", False, _spec(None))
    resolved = store.resolve("toy")
    assert resolved.path == tmp_path / "m" / "toy" / "w.bin"
    assert resolved.model_id == f"toy@{SHA[:12]}"


def test_wrong_checksum_is_refused_and_named(tmp_path: Path) -> None:
    (tmp_path / "m" / "toy").mkdir(parents=True)
    (tmp_path / "m" / "toy" / "w.bin").write_bytes(b"corrupted")
    store = ModelStore([tmp_path / "m"], tmp_path / "cache", False, _spec(None))
    with pytest.raises(ModelStoreError, match="expected " + SHA):
        store.resolve("toy")


def test_missing_file_says_where_to_put_it(tmp_path: Path) -> None:
    store = ModelStore([tmp_path / "m"], tmp_path / "cache", False, _spec("http://x/w.bin"))
    with pytest.raises(ModelStoreError, match=r"Put the file at <models dir>/toy/w\.bin"):
        store.resolve("toy")


def test_unknown_model_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="known models: toy"):
        ModelStore([], tmp_path, False, _spec(None)).resolve("nope")


def test_downloads_and_verifies(tmp_path: Path, http_server: str) -> None:
    store = ModelStore([], tmp_path / "cache", True, _spec(f"{http_server}/w.bin"))
    path = store.resolve("toy").path
    assert path.read_bytes() == PAYLOAD
    assert path.is_relative_to(tmp_path / "cache")


def test_download_with_wrong_checksum_leaves_nothing(tmp_path: Path, http_server: str) -> None:
    store = ModelStore([], tmp_path / "cache", True, _spec(f"{http_server}/bad.bin"))
    with pytest.raises(ModelStoreError, match="refusing to use it"):
        store.resolve("toy")
    assert not list((tmp_path / "cache").rglob("*.bin"))


def test_unreachable_upstream_is_a_clear_error(tmp_path: Path) -> None:
    store = ModelStore([], tmp_path / "cache", True, _spec("http://127.0.0.1:9/w.bin"))
    with pytest.raises(ModelStoreError, match="could not download"):
        store.resolve("toy")


def test_shared_models_all_verify(model_store: ModelStore) -> None:
    for name in model_store.registry:
        assert model_store.resolve(name).path.is_file()


@pytest.mark.parametrize(
    "model_id, name",
    [
        (model_id_for("toy", SHA), "toy"),
        (model_id_for("irm:irm-pets-v3", "0123456789abcdef"), "irm:irm-pets-v3"),
        (
            "person-reidentification-retail-0277-int8@abc",
            "person-reidentification-retail-0277-int8",
        ),
        ("no-checksum", "no-checksum"),
    ],
)
def test_model_name_reads_back_what_model_id_for_wrote(model_id: str, name: str) -> None:
    assert model_name(model_id) == name


def test_model_id_for_keeps_twelve_hex_digits() -> None:
    assert model_id_for("toy", SHA) == f"toy@{SHA[:12]}"
