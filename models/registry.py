"""Lazy registries of refind's models: a name maps to ``"module:Class"``, imported only when
chosen, so choosing YOLOX never loads torch and a typo lists the valid names. An import failure
is raised, never only logged.

A registered class is built with ``Class.from_config(section, store)`` (detectors, embedders) or
``Class.from_store(store)`` (re-rankers; the attribute verifier also takes its threshold).

Example:
    >>> sorted(EMBEDDERS)
    ['irm', 'openvino_reid']
    >>> build_reranker("none", store=None) is None
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from refind.extras import extra_of

if TYPE_CHECKING:
    from refind.models.base import Detector, ReidEmbedder, Reranker
    from refind.models.config import DetectorConfig, EmbedderConfig

DETECTORS: dict[str, str] = {
    "yolox": "refind.models.yolox:YoloxDetector",
    "omz_person": "refind.models.omz_detector:OmzPersonDetector",
}
EMBEDDERS: dict[str, str] = {
    "openvino_reid": "refind.models.openvino_reid:OpenVinoReidEmbedder",
    "irm": "refind.models.irm_cpu:IrmCpuEmbedder",  # the torch IrmEmbedder on a GPU
}
RERANKERS: dict[str, str] = {
    "attributes": "refind.models.attribute_verifier:AttributeVerifier",
    "compose": "refind.models.referring:ComposingReferrer",
    "refer": "refind.models.refer:ReferReranker",
    "mllm": "refind.models.mllm_refer:MllmReranker",
}
RERANKER_NAMES: tuple[str, ...] = ("none", *RERANKERS)
"""Every re-ranker name ("none": no re-ranking): the config, the command line and the API offer
exactly these."""


class RegistryError(ValueError):
    """An unknown model name; the message lists the valid ones."""


def load_class(kind: str, registry: dict[str, str], name: str,
               valid: Sequence[str] | None = None) -> type:
    """The class registered as ``name``; RegistryError naming the valid names (``valid``,
    default the registry's) when unknown."""
    if name not in registry:
        raise RegistryError(f"unknown {kind} {name!r}; valid: {', '.join(valid or registry)}")
    module_name, _, class_name = registry[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:  # raised, with the fix when it is a missing extra
        extra = extra_of(err.name)
        if extra is not None:
            raise ModuleNotFoundError(
                f"the {kind} {name!r} needs {err.name}: pip install 'refind[{extra}]'",
                name=err.name) from err
        raise
    return getattr(module, class_name)


def build_detector(section: DetectorConfig, store: object) -> Detector:
    """The detector of a ``detector:`` config section."""
    return load_class("detector", DETECTORS, section.type).from_config(section, store)


def build_embedder(section: EmbedderConfig, store: object) -> ReidEmbedder:
    """The ReID embedder of an ``embedder:`` config section."""
    return load_class("embedder", EMBEDDERS, section.type).from_config(section, store)


def build_reranker(
    name: str, store: object, threshold: float = 0.6, mllm_dir: Path | None = None,
    evidence: object | None = None,
) -> Reranker | None:
    """The re-ranker registered as ``name`` (None for "none"); the attribute verifier takes
    ``threshold``, the MLLM re-ranker its model directory (``search.mllm_dir``), the composing
    referrer a store of crop evidence (``refind.indexer.evidence.EvidenceStore``)."""
    if name == "none":
        return None
    cls = load_class("re-ranker", RERANKERS, name, RERANKER_NAMES)  # "none" is valid too
    if name == "attributes":
        return cls.from_store(store, threshold)
    if name == "mllm":
        return cls.from_dir(mllm_dir)
    if name == "compose":
        return cls.from_store(store, evidence=evidence)
    return cls.from_store(store)
