"""refind installs as one package, its folders keep to their part of the flow, and serving code
never reaches training, dataset building, evaluation or torch."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

FOLDERS = ("streaming", "models", "indexer", "actors", "app", "training", "datasets", "evaluation")
# Whatever serves a live deployment or a search: no training, dataset building or evaluation.
SERVING = (
    "refind.app.cli", "refind.app.commands", "refind.app.demo", "refind.app.serve",
    "refind.app.api", "refind.actors.supervisor", "refind.actors.camera", "refind.actors.writer",
    "refind.actors.pools", "refind.indexer.live_search", "refind.indexer.ingest",
    "refind.indexer.rebuild", "refind.indexer.search", "refind.models.registry",
    "refind.models.yolox", "refind.models.openvino_reid", "refind.models.attribute_verifier",
    "refind.models.irm_cpu", "refind.extras",
)  # fmt: skip


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_folder_is_a_listed_subpackage_of_refind():
    tool = _pyproject()["tool"]["setuptools"]
    found = {"refind"} | {
        "refind." + ".".join(init.parent.relative_to(REPO).parts)
        for top in FOLDERS for init in (REPO / top).rglob("__init__.py")
    }
    assert set(tool["packages"]) == found
    assert tool["package-dir"] == {"refind": "refind"} | {f"refind.{t}": t for t in FOLDERS}


def test_no_code_imports_a_folder_by_its_bare_name():
    bare = re.compile(rf"^\s*(from|import)\s+({'|'.join(FOLDERS)})(\.|\s|$)", re.M)
    offenders = []
    for top in (*FOLDERS, "refind", "tests", "bench"):
        for path in (REPO / top).rglob("*.py"):
            if bare.search(path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def _run(code: str, cwd: Path) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=cwd).stdout.strip()


def test_site_packages_has_refind_and_not_its_folders(tmp_path):
    """Outside the checkout, refind resolves and a generic name like ``models`` does not."""
    code = ("import importlib.util, refind\n"
            f"print([n for n in {FOLDERS!r} if importlib.util.find_spec(n)], "
            "importlib.util.find_spec('refind.models.base') is not None)")
    assert _run(code, tmp_path) == "[] True"


def test_serving_code_imports_no_training_datasets_evaluation_or_torch(tmp_path):
    pytest.importorskip("ray", reason="the actors need the live extra")
    pytest.importorskip("fastapi", reason="the API needs the api extra")
    code = ("import importlib, sys\n"
            f"for m in {SERVING!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[:2] in (['refind', 'training'],"
            " ['refind', 'datasets'], ['refind', 'evaluation']) or m in ('torch', 'transformers'))"
            "\nprint(bad)")
    assert _run(code, tmp_path) == "[]"
