"""The API tests' gallery and server (imported lazily: the API extra may not be installed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.app.api_server import Server


# ---- the API tests' gallery and server (one of each per test module) -----------------------


@pytest.fixture(scope="session")
def _pets150(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 150 PETS09-S2L1 frames ingested as camera "pets", once: never changed, only
    copied (a gallery holds no absolute path, so a copy is a gallery of its own)."""
    from refind.app.cli import main
    from tests.conftest import PETS_VIDEO, need_models, need_pets

    need_models()
    need_pets()
    data = tmp_path_factory.mktemp("pets150") / "data"
    argv = ["ingest", str(PETS_VIDEO), "--camera", "pets", "--data-dir", str(data),
            "--max-frames", "150", "--json"]
    assert main(argv) == 0
    return data


@pytest.fixture(scope="module")
def gallery(_pets150: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory of its own per test module: a copy of ``_pets150``."""
    import shutil

    data = tmp_path_factory.mktemp("api-gallery") / "data"
    shutil.copytree(_pets150, data)
    return data


@pytest.fixture(scope="module")
def server(gallery: Path) -> Iterator[Server]:
    """The API over ``gallery`` with the keys of ``tests.app.api_server``, under uvicorn."""
    from refind.app.api import create_app
    from refind.config import parse_config
    from tests.app.api_server import Server, api_config, key_configs

    cfg = parse_config(api_config(gallery, keys=key_configs()))
    with Server(create_app(cfg)) as s:
        yield s
