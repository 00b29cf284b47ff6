"""The lazy model registries: a name builds its class from its config section, an unknown name
lists the valid ones, an import failure is raised, and choosing a model loads only its module."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from refind.config import RefindConfig
from refind.models.config import OpenVinoReidConfig
from refind.models.registry import (
    DETECTORS,
    EMBEDDERS,
    RERANKER_NAMES,
    RERANKERS,
    RegistryError,
    build_detector,
    build_embedder,
    load_class,
)


@pytest.mark.parametrize(("kind", "registry", "name", "valid"), [
    ("detector", DETECTORS, "yolov9", "yolox, omz_person"),
    ("embedder", EMBEDDERS, "clip", "openvino_reid, irm"),
    ("re-ranker", RERANKERS, "none", "attributes, compose, refer, mllm"),  # "none": no class to load
])
def test_an_unknown_name_lists_the_valid_ones(kind, registry, name, valid):
    with pytest.raises(RegistryError, match=f"unknown {kind} {name!r}; valid: {valid}$"):
        load_class(kind, registry, name)


def test_an_import_failure_is_raised(monkeypatch):
    monkeypatch.setitem(EMBEDDERS, "broken", "refind.models.no_such_module:Nothing")
    with pytest.raises(ImportError, match="no_such_module"):
        load_class("embedder", EMBEDDERS, "broken")


def test_every_registered_class_has_the_builder_the_registry_calls():
    for registry, builder in ((DETECTORS, "from_config"), (EMBEDDERS, "from_config"),
                              (RERANKERS, "from_store")):
        for name in registry:
            if name in ("refer", "mllm"):
                continue  # torch: tests/indexer/test_rerank.py builds them
            cls = load_class("model", registry, name)
            assert inspect.ismethod(getattr(cls, builder, None)), (name, builder)
    assert RERANKER_NAMES == ("none", "attributes", "compose", "refer", "mllm")


def test_choosing_the_default_models_loads_neither_torch_nor_transformers():
    """The registry imports a module only when its name is chosen: the default detector and
    embedder modules, and the config tree, never import torch."""
    code = ("import sys\n"
            "import refind.config, refind.models.registry as r\n"
            "for name in ('yolox',): r.load_class('d', r.DETECTORS, name)\n"
            "r.load_class('e', r.EMBEDDERS, 'openvino_reid')\n"
            "r.load_class('r', r.RERANKERS, 'attributes')\n"
            "r.load_class('r', r.RERANKERS, 'compose')\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_default_sections_build_real_models(model_store):
    detector = build_detector(RefindConfig().detector, model_store)
    embedder = build_embedder(OpenVinoReidConfig(), model_store)
    assert detector.model_id.startswith("person-detection-0202@")
    assert embedder.model_id.startswith("person-reidentification-retail-0277@")
    assert embedder.dim == 256
