"""Fit the attribute probe (``models.attribute_probe``) of an IRM model's gallery space and write
the model's weights again with it: ``refind train probe --weights irm-pets-v3 --out NEW``.

Data (nothing of the held-out PETS identities): the ground-truth crops of the PETS training
identities and the tracks of refind's detector + tracker on the Intel clip (``models.irm_data``),
each in four views: the original, two clothes recolourings and a texture swap, so the colour
read-outs see more than PETS's dark clothes. Every view is embedded by the model's gallery path
and described by the OMZ 0230 attribute model; the probe is fitted on those pairs with its L2
chosen by identity-grouped cross-validation. Identities only group the folds: no identity label
is a target. The weight of attribute text on a photo query (``AttributeProbe.compose``) is chosen
by a second cross-validation over the PETS training identities (``choose_photo_text_weight``). Seeds fixed; progress shown; a JSON report beside the weights (``.probe.json``).

Example:
    >>> train_probe(Path("irm-pets-v2.safetensors"), Path("new.safetensors"), store)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models import irm_data as data
from models.attribute_probe import fit_at, fit_probe, grouped_folds
from models.base import PersonAttributes
from models.eval_reid import reid_metrics
from models.irm import IrmEmbedder, load_weights, save_head
from models.store import ModelStore, sha256_of

log = logging.getLogger(__name__)

INTEL_VIDEO = data.REPO_ROOT / "../shared/data/intel-sample-videos/one-by-one-person-detection.mp4"
VIEWS = ("original", "recolour_a", "recolour_b", "texture_swap")
WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # lambda of AttributeProbe.compose


def probe_crops(store: ModelStore, seed: int = 0, progress: bool = True) -> tuple[list, list]:
    """(images, identities): every training crop in ``VIEWS`` (views share their identity)."""
    train_ids, _ = data.pets_identity_split()
    crops = data.load_pets_crops(train_ids)
    if INTEL_VIDEO.is_file():
        crops += data.load_tracklet_crops(INTEL_VIDEO, store)
    else:
        log.warning("attribute probe: %s is absent; fitting on PETS alone", INTEL_VIDEO)
    rng = np.random.default_rng(seed)
    images, groups = [], []
    for crop in tqdm(crops, desc="probe views", unit="crop", disable=not progress):
        images += [crop.image, data.recolour_clothes(crop.image, rng),
                   data.recolour_clothes(crop.image, rng), data.texture_swap(crop.image, rng)]  # fmt: skip
        groups += [crop.identity] * len(VIEWS)
    return images, groups


def _describe(
    images: list, embedder: IrmEmbedder, store: ModelStore, progress: bool
) -> tuple[np.ndarray, PersonAttributes]:
    from models.attributes import OpenVinoAttributes

    attribute_model = OpenVinoAttributes(store)
    vectors, parts = [], []
    for s in tqdm(
        range(0, len(images), 64), desc="probe embed", unit="batch", disable=not progress
    ):
        vectors.append(embedder(images[s : s + 64]).vectors)
        parts.append(attribute_model(images[s : s + 64]))
    attrs = PersonAttributes(
        probs=np.concatenate([p.probs for p in parts]),
        top_bgr=np.concatenate([p.top_bgr for p in parts]),
        bottom_bgr=np.concatenate([p.bottom_bgr for p in parts]),
        top_colour=tuple(c for p in parts for c in p.top_colour),
        bottom_colour=tuple(c for p in parts for c in p.bottom_colour),
    )
    return np.concatenate(vectors), attrs


def _take(attrs: PersonAttributes, rows: np.ndarray) -> PersonAttributes:
    return PersonAttributes(attrs.probs[rows], attrs.top_bgr[rows], attrs.bottom_bgr[rows],
                            tuple(attrs.top_colour[i] for i in rows),
                            tuple(attrs.bottom_colour[i] for i in rows))  # fmt: skip


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
    person's real clothes (``instruction_for("attribute_text")`` from the attribute model's
    reading of their original crops, as ``scripts/build_irm_eval.py`` writes it), against their
    original crops (its own left out). The weight with the best mean mAP wins; 0 unless one
    beats it."""
    nv = len(VIEWS)
    ident = np.asarray(groups)
    originals = np.arange(0, len(images), nv)
    pets = [g for g in ident[originals] if g.startswith("pets:")]
    keys, per_id = data.aggregate_attributes(_take(attrs, originals), list(ident[originals]))
    row = {k: i for i, k in enumerate(keys)}
    rng = np.random.default_rng(seed)
    text_of = {k: data.instruction_for("attribute_text", rng, per_id, row[k]) for k in keys}
    table: dict[float, list[float]] = {w: [] for w in WEIGHT_GRID}
    for held in grouped_folds(pets, 2, seed):
        val = set(np.asarray(pets)[held])
        fit_rows = np.flatnonzero(~np.isin(ident, list(val)))
        probe = fit_at(vectors[fit_rows], _take(attrs, fit_rows), l2)
        gal = originals[np.isin(ident[originals], list(val))]
        names = [str(i) for i in gal]
        photos = {k: embedder.embed_query([images[i + 1] for i in gal if ident[i] == k],
                                          "attribute_text", text_of[k]).vectors for k in val}  # fmt: skip
        for w in WEIGHT_GRID:
            edited = dataclasses.replace(probe, photo_text_weight=w)
            q_vecs, q_ids, q_names = [], [], []
            for k in sorted(val):
                composed = edited.compose(photos[k], text_of[k])
                q_vecs.append(photos[k] if composed is None else composed)
                q_ids += [k] * len(photos[k])
                q_names += [str(i) for i in gal if ident[i] == k]
            m = reid_metrics(np.concatenate(q_vecs), q_ids, q_names, vectors[gal],
                             list(ident[gal]), names)  # fmt: skip
            table[w].append(round(float(m["mAP"]), 4))
    rows = [{"weight": w, "mAPs": maps, "mean_gain": round(float(np.mean(maps)
             - np.mean(table[0.0])), 4)} for w, maps in table.items()]  # fmt: skip
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
