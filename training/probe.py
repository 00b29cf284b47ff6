"""Fit the attribute probe (``refind.models.attribute_probe``) of an IRM model's gallery space and write
the model's weights again with it: ``refind train probe --weights irm-pets-v3 --out NEW``.

Data (nothing of the held-out PETS identities): the ground-truth crops of the PETS training
identities and the tracks of refind's detector + tracker on the Intel clip (``refind.datasets.irm``),
each in four views: the original, two clothes recolourings and a texture swap, so the colour
read-outs see more than PETS's dark clothes. Every view is embedded by the model's gallery path
and described by the OMZ 0230 attribute model; the probe is fitted on those pairs with its L2
chosen by identity-grouped cross-validation. Identities only group the folds: no identity label
is a target. The weight of attribute text on a photo query (``AttributeProbe.compose``) is
chosen by a second cross-validation over the PETS training identities
(``choose_photo_text_weight``). Seeds fixed; progress shown; a JSON report beside the weights
(``.probe.json``).

Example:
    >>> old, new = Path("irm-pets-v2.safetensors"), Path("new.safetensors")       # doctest: +SKIP
    >>> train_probe(old, new, store)                                             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from refind.datasets import irm as data
from refind.evaluation.reid import reid_metrics
from refind.models.attribute_probe import AttributeProbe
from refind.models.base import PersonAttributes
from refind.models.irm import load_weights, save_head
from refind.models.irm_embedder import IrmEmbedder
from refind.models.store import ModelStore, sha256_of
from refind.training.probe_fit import fit_at, fit_probe, grouped_folds

log = logging.getLogger(__name__)

VIEWS = ("original", "recolour_a", "recolour_b", "texture_swap")
WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # lambda of AttributeProbe.compose


def probe_crops(store: ModelStore, seed: int = 0, progress: bool = True) -> tuple[list, list]:
    """(images, identities): every training crop in ``VIEWS`` (views share their identity)."""
    train_ids, _ = data.pets_identity_split()
    crops = data.load_pets_crops(train_ids)
    if data.INTEL_VIDEO.is_file():
        crops += data.load_tracklet_crops(data.INTEL_VIDEO, store)
    else:
        log.warning("attribute probe: %s is absent; fitting on PETS alone", data.INTEL_VIDEO)
    rng = np.random.default_rng(seed)
    images, groups = [], []
    for crop in tqdm(crops, desc="probe views", unit="crop", disable=not progress):
        recoloured = [data.recolour_clothes(crop.image, rng) for _ in range(2)]
        images += [crop.image, *recoloured, data.texture_swap(crop.image, rng)]  # VIEWS' order
        groups += [crop.identity] * len(VIEWS)
    return images, groups


def _describe(
    images: list, embedder: IrmEmbedder, store: ModelStore, progress: bool
) -> tuple[np.ndarray, PersonAttributes]:
    """(n, D) gallery vectors of ``images`` and the attribute model's reading of them."""
    from refind.models.attributes import OpenVinoAttributes

    attribute_model = OpenVinoAttributes(store)
    vectors, parts = [], []
    chunks = range(0, len(images), 64)
    for s in tqdm(chunks, desc="probe embed", unit="batch", disable=not progress):
        vectors.append(embedder(images[s : s + 64]).vectors)  # (b, D)
        parts.append(attribute_model(images[s : s + 64]))
    return np.concatenate(vectors), PersonAttributes.concat(parts)


def _attribute_texts(ident: np.ndarray, attrs: PersonAttributes, originals: np.ndarray,
                     seed: int) -> dict[str, str]:  # fmt: skip
    """Per identity, attribute text describing its real clothes ("now wearing a black top and
    blue trousers"), from the attribute model's reading of its original crops, as
    ``refind datasets irm-eval`` writes it."""
    keys, per_id = data.aggregate_attributes(attrs.take(originals), list(ident[originals]))
    rng = np.random.default_rng(seed)
    return {k: data.instruction_for("attribute_text", rng, per_id, i) for i, k in enumerate(keys)}


def _fold_map(
    probe: AttributeProbe,
    photos: dict[str, np.ndarray],
    texts: dict[str, str],
    own: dict[str, np.ndarray],
    vectors: np.ndarray,
    ident: np.ndarray,
) -> float:
    """mAP of a fold's photo queries (``photos[k]``: (n_k, D), one per row of ``own[k]``), edited
    by their identity's text, against the fold's original crops (a query's own left out)."""
    q_vecs = []
    for k, photo in photos.items():
        text_vector = probe.query_vector(texts[k])
        edited = None if text_vector is None else probe.compose(photo, text_vector)
        q_vecs.append(photo if edited is None else edited)  # (n_k, D)
    rows = np.concatenate([own[k] for k in photos])  # the queries' original crops
    gal = np.sort(rows)
    m = reid_metrics(np.concatenate(q_vecs), list(ident[rows]), [str(i) for i in rows],
                     vectors[gal], list(ident[gal]), [str(i) for i in gal])  # fmt: skip
    return round(float(m["mAP"]), 4)


def choose_photo_text_weight(
    embedder: IrmEmbedder,
    images: list,
    groups: list[str],
    vectors: np.ndarray,
    attrs: PersonAttributes,
    l2: float,
    seed: int = 0,
) -> tuple[float, list[dict[str, object]]]:
    """lambda of ``AttributeProbe.compose`` by 2-fold cross-validation over the PETS training
    identities (5 per fold). Per fold: the probe is refitted without the fold's people; each of
    their crops, recoloured (``VIEWS[1]``), is a photo query with attribute text describing the
    person's real clothes, against their original crops (its own left out). ``images``,
    ``groups``, ``vectors`` (n, D) and ``attrs`` hold ``VIEWS`` per crop, in order. The weight
    with the best mean mAP wins; 0 unless one beats it."""
    ident = np.asarray(groups)
    originals = np.arange(0, len(images), len(VIEWS))
    pets = [g for g in ident[originals] if g.startswith("pets:")]
    texts = _attribute_texts(ident, attrs, originals, seed)
    table: dict[float, list[float]] = {w: [] for w in WEIGHT_GRID}
    for held in grouped_folds(pets, 2, seed):
        val = sorted(set(np.asarray(pets)[held]))
        fit_rows = np.flatnonzero(~np.isin(ident, val))
        probe = fit_at(vectors[fit_rows], attrs.take(fit_rows), l2)
        own = {k: originals[ident[originals] == k] for k in val}
        photos = {
            k: embedder.embed_query([images[i + 1] for i in own[k]], "attribute_text", texts[k])
            .vectors for k in val
        }  # fmt: skip
        for w in WEIGHT_GRID:
            edited = dataclasses.replace(probe, photo_text_weight=w)
            table[w].append(_fold_map(edited, photos, texts, own, vectors, ident))
    base = float(np.mean(table[0.0]))
    rows = [{"weight": w, "mAPs": maps, "mean_gain": round(float(np.mean(maps)) - base, 4)}
            for w, maps in table.items()]  # fmt: skip
    best = max(rows, key=lambda r: (r["mean_gain"], -r["weight"]))
    return (float(best["weight"]) if best["mean_gain"] > 0 else 0.0), rows


def train_probe(
    weights: Path,
    out: Path,
    store: ModelStore,
    seed: int = 0,
    folds: int = 5,
    progress: bool = True,
) -> dict[str, object]:
    """Fit the probe for the model at ``weights`` and write it with the model to ``out``."""
    start = time.monotonic()
    weights, out = Path(weights), Path(out)
    if out.resolve() == weights.resolve():
        raise ValueError(f"--out {out} would overwrite the weights it reads; name a new file")
    embedder = IrmEmbedder.from_pretrained(weights, store, device="cpu")
    embedder.probe = None  # a probe already in the file must not edit the CV's photo queries
    images, groups = probe_crops(store, seed, progress)
    vectors, attrs = _describe(images, embedder, store, progress)
    probe, report = fit_probe(vectors, attrs, groups, folds=folds, seed=seed)
    weight, weight_table = choose_photo_text_weight(
        embedder, images, groups, vectors, attrs, probe.l2, seed
    )
    probe = dataclasses.replace(probe, photo_text_weight=weight)
    report |= {"photo_text_weight": weight, "photo_text_cv_table": weight_table}
    head, _, meta = load_weights(weights)
    meta = {**meta, "attribute_probe": json.dumps({"l2": probe.l2, "n_crops": len(images),
            "photo_text_weight": probe.photo_text_weight,
            "source": f"{weights.name}@{sha256_of(weights)[:12]}"})}  # fmt: skip
    save_head(head, out, meta, probe=probe)
    report = {
        "weights": out.name, "from": weights.name, "from_sha256": sha256_of(weights),
        "views": list(VIEWS), "seed": seed, **report,
        "seconds": round(time.monotonic() - start, 1),
    }  # fmt: skip
    out.with_suffix(".probe.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
