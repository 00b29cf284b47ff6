"""Evaluation of instruction-editable ReID (IRM) on the six query tasks.

A set folder (written by ``refind datasets irm-eval``) holds one sub-folder per task:

    <sets>/<task>/query/<identity>/<file>.png      the query crops (reid ... visible_infrared)
    <sets>/<task>/gallery/<identity>/<file>.png    original colour crops, the same for every task
    <sets>/<task>/queries.jsonl                    per query: {"query": "<identity>/<file>",
                                                   "instruction": TEXT or null,
                                                   "instruction_image": PATH or null}
    <sets>/text/queries.jsonl                      text task: {"text": ..., "identity": ...}

Queries of an ``InstructableEmbedder`` go through ``embed_query(crops, task, instruction)``
(queries with the same text instruction in one call, an image instruction one query per call),
text queries through ``embed_text``; the gallery always through ``__call__``. A plain
``ReidEmbedder`` embeds queries with ``__call__`` (it ignores instructions) and cannot do the text
task (reported as not supported).

Metrics per task: mAP (with its 95 % interval when identities are resampled,
``mAP_ci95_lo``/``_hi``) and CMC rank-1/5/10 (``refind.evaluation.reid.reid_metrics``); the expected mAP
and rank-k of a random ranking (``chance_*``) and the one-sided p-value of each observed rank-k
rate under random rankings (``chance_p_rank*``); for the tasks whose instruction is text
(attribute_text, text) also ``mAP_tau`` / ``rank1_tau`` of Instruct-ReID++: a gallery crop counts
as a true match only when its identity is the query's AND it agrees with the instruction text
(``refind.models.text_attributes.agreement``: the fraction of the attributes and colours named in the
text that the 0230 attribute model confirms on that crop) at least ``tau`` (default 0.5: half of
what the text names must be seen on the crop). Queries left with no true match are skipped and
counted. The text task also reports ``attribute_scan_*``: the same captions ranked by the
attribute model's agreement with every gallery crop (no embedder), for reference.

Example:
    >>> evaluate_irm(Path("/tmp/irm-eval"), embedder, attributes)["reid"]["mAP"]  # doctest: +SKIP
    0.52
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from refind.evaluation.reid import (
    identity_bootstrap_ci,
    load_identity_folder,
    rank_queries,
    reid_metrics,
)
from refind.models.base import (
    TASKS,
    AttributeModel,
    InstructableEmbedder,
    PersonAttributes,
    ReidEmbedder,
)
from refind.models.text_attributes import agreement, parse_attributes

log = logging.getLogger(__name__)

TAU = 0.5
TEXT_INSTRUCTED = ("attribute_text", "text")
RANKS = (1, 5, 10)


@dataclass(frozen=True)
class Gallery:
    """Embedded gallery crops: vectors (n, d) unit rows, identities, names, optional attributes."""

    vectors: np.ndarray
    ids: list[str]
    names: list[str]
    attributes: PersonAttributes | None = None


def is_instructable(embedder: ReidEmbedder) -> bool:
    return isinstance(embedder, InstructableEmbedder)


def read_jsonl(path: Path, required: Sequence[str]) -> list[dict]:
    """Lines of a JSON-lines file as dicts with the ``required`` keys; blank lines skipped.

    Raises ValueError naming the file and line number of a line that is not a JSON object or
    lacks a required key, and for a missing or empty file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"queries file {path} does not exist")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {n}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"{path} line {n}: missing key(s) {', '.join(missing)}")
        for k in required:
            if not isinstance(row[k], str) or not row[k].strip():
                raise ValueError(f"{path} line {n}: {k!r} must be a non-empty string")
        rows.append(row)
    if not rows:
        raise ValueError(f"queries file {path} holds no queries")
    return rows


def embed_gallery(
    gallery_dir: Path, embedder: ReidEmbedder, attributes: AttributeModel | None = None
) -> Gallery:
    """Embed (and, with an attribute model, describe) every crop of an identity folder."""
    images, ids, names = load_identity_folder(gallery_dir)
    vectors = embedder(images).vectors
    attrs = attributes(images) if attributes is not None else None
    return Gallery(vectors, ids, names, attrs)


def embed_queries(
    embedder: ReidEmbedder,
    task: str,
    images: Sequence[np.ndarray],
    instructions: Sequence[str | np.ndarray | None],
) -> np.ndarray:
    """(n, d) query vectors: grouped ``embed_query`` calls, or ``__call__`` for a plain model."""
    if not is_instructable(embedder):
        return embedder(list(images)).vectors
    out: list[np.ndarray | None] = [None] * len(images)
    groups: dict[str | None, list[int]] = {}
    for k, ins in enumerate(instructions):
        if isinstance(ins, np.ndarray):  # an image instruction: its own call
            out[k] = embedder.embed_query([images[k]], task, ins).vectors[0]  # type: ignore[attr-defined]
        else:
            groups.setdefault(ins, []).append(k)
    for ins, idx in groups.items():
        vecs = embedder.embed_query([images[k] for k in idx], task, ins).vectors  # type: ignore[attr-defined]
        for k, v in zip(idx, vecs, strict=True):
            out[k] = v
    return np.stack(out).astype(np.float32)  # type: ignore[arg-type]


def chance_metrics(n_true: Sequence[int], n_gallery: int) -> dict[str, float]:
    """Expected mAP and rank-k of a uniformly random ranking, averaged over queries with
    ``n_true`` true matches each among ``n_gallery`` entries.

    E[AP] = (H_N + (R-1)/(N-1) * (N - H_N)) / N for R true matches among N (H_N harmonic);
    P(rank-k hit) = 1 - C(N-R, k) / C(N, k).
    """
    n = n_gallery
    h_n = sum(1.0 / i for i in range(1, n + 1))
    aps: list[float] = []
    ranks: dict[int, list[float]] = {k: [] for k in RANKS}
    for r in n_true:
        if r <= 0:
            continue
        aps.append((h_n + ((r - 1) / (n - 1) if n > 1 else 0.0) * (n - h_n)) / n)
        for k in RANKS:
            ranks[k].append(_hit_chance(r, n, k))
    out = {"chance_mAP": float(np.mean(aps)) if aps else float("nan")}
    out |= {f"chance_rank{k}": float(np.mean(v)) if v else float("nan") for k, v in ranks.items()}
    return out


def _hit_chance(r: int, n: int, k: int) -> float:
    """P(a random ranking of n entries, r of them true, has a true one in its top k)."""
    return 1.0 - (math.comb(n - r, k) / math.comb(n, k) if k <= n else 0.0)


def chance_p_values(
    n_true: Sequence[int], n_gallery: int, rank_rates: dict[int, float]
) -> dict[str, float]:
    """One-sided p-value of each observed rank-k rate against random rankings: the probability
    that at least as many queries hit in the top k by chance (Poisson-binomial over the queries,
    each hitting with ``1 - C(N-R, k) / C(N, k)``)."""
    out: dict[str, float] = {}
    for k, rate in rank_rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rank-{k} rate {rate} is not in [0, 1]")
        probs = [_hit_chance(r, n_gallery, k) for r in n_true if r > 0]
        dist = np.zeros(len(probs) + 1)  # dist[j]: P(j hits among the queries so far)
        dist[0] = 1.0
        for p in probs:
            dist[1:] = dist[1:] * (1 - p) + dist[:-1] * p
            dist[0] *= 1 - p
        hits = round(rate * len(probs))
        out[f"chance_p_rank{k}"] = float(min(1.0, dist[hits:].sum()))
    return out


def _agreements(texts: Sequence[str], attrs: PersonAttributes) -> dict[str, np.ndarray]:
    """Per distinct text, (n_gallery,) ``agreement`` of every gallery crop with it."""
    wanted = {t: parse_attributes(t) for t in dict.fromkeys(texts)}
    rows = range(len(attrs))
    return {t: np.array([agreement(w, attrs, j) for j in rows]) for t, w in wanted.items()}


def attribute_scan_metrics(
    texts: Sequence[str], ids: Sequence[str], gallery: Gallery, orders: int = 20, seed: int = 0
) -> dict[str, float]:
    """The text task without an embedder, for reference: every gallery crop scored by the
    attribute model's ``agreement`` with the text (the measure mAP_tau uses; the ``attributes``
    re-ranker scores crops in its own way, ``refind.indexer.rerank``). Agreement takes few values, so
    ties are broken at random: the figures are the mean over ``orders`` random tie orders (fixed
    seed)."""
    if gallery.attributes is None:
        raise ValueError("the attribute scan needs the gallery's attributes (an attribute model)")
    agree = _agreements(texts, gallery.attributes)
    scores = np.stack([agree[t] for t in texts])  # (n_query, n_gallery) in [0, 1]
    rng = np.random.default_rng(seed)
    names = [f"text:{k}" for k in range(len(texts))]
    runs = []
    for _ in range(orders):  # scores as query rows against one-hot gallery "vectors"
        jittered = scores + 1e-3 * rng.random(scores.shape)  # agreement steps are >= 1/12
        runs.append(reid_metrics(jittered, list(ids), names, np.eye(len(gallery.ids)),
                                 gallery.ids, gallery.names))  # fmt: skip
    return {f"attribute_scan_{m}": float(np.mean([r[m] for r in runs]))
            for m in ("mAP", "rank1", "rank5")}  # fmt: skip


def tau_metrics(
    q_vecs: np.ndarray,
    q_ids: Sequence[str],
    texts: Sequence[str],
    gallery: Gallery,
    tau: float = TAU,
) -> dict[str, float | int]:
    """mAP_tau and rank1_tau: a true match must share the identity and agree with the query's
    instruction text at least ``tau`` (see the module docstring)."""
    if gallery.attributes is None:
        raise ValueError("mAP_tau needs the gallery's attributes (an attribute model)")
    agree = _agreements(texts, gallery.attributes)
    g_ids = np.asarray(gallery.ids)
    g_names = [f"g{j}" for j in range(len(g_ids))]
    aps, r1, skipped = [], [], 0
    for vec, qid, text in zip(q_vecs, q_ids, texts, strict=True):
        positive = (g_ids == qid) & (agree[text] >= tau)
        if not positive.any():
            skipped += 1
            continue
        m = reid_metrics(
            vec[None], ["+"], ["q"], gallery.vectors, np.where(positive, "+", "-").tolist(), g_names
        )
        aps.append(m["mAP"])
        r1.append(m["rank1"])
    return {
        "mAP_tau": float(np.mean(aps)) if aps else float("nan"),
        "rank1_tau": float(np.mean(r1)) if r1 else float("nan"),
        "tau": tau,
        "n_queries_tau_skipped": skipped,
    }


def _score(
    q_vecs: np.ndarray, q_ids: list[str], q_names: list[str], gallery: Gallery,
    per_query: bool = False,
) -> dict[str, object]:  # fmt: skip
    """reid_metrics with chance figures; with ``per_query`` also each query's AP (``query_ap``)."""
    ranks = rank_queries(q_vecs, q_ids, q_names, gallery.vectors, gallery.ids, gallery.names)
    metrics = ranks.metrics()
    g_ids, g_names = np.asarray(gallery.ids), np.asarray(gallery.names)
    # true matches as reid_metrics counts them: a gallery entry named as the query is left out
    n_true = [
        int(((g_ids == q) & (g_names != name)).sum())
        for q, name in zip(q_ids, q_names, strict=True)
    ]
    rates = {k: float(metrics[f"rank{k}"]) for k in RANKS}
    out: dict[str, object] = {
        **metrics,
        **chance_metrics(n_true, len(g_ids)),
        **chance_p_values(n_true, len(g_ids), rates),
    }
    if per_query:
        out["query_ap"] = ranks.per_query()
    return out


def read_task_queries(
    task_dir: Path,
) -> tuple[list[np.ndarray], list[str], list[str], list[str | np.ndarray | None]]:
    """Query crops of one task folder with each query's instruction (text, image or None)."""
    task_dir = Path(task_dir)
    images, ids, names = load_identity_folder(task_dir / "query")
    spec_file = task_dir / "queries.jsonl"
    specs = (
        {r["query"]: r for r in read_jsonl(spec_file, ("query",))} if spec_file.is_file() else {}
    )
    instructions: list[str | np.ndarray | None] = []
    for name in names:
        spec = specs.get(name, {})
        if spec.get("instruction_image"):
            path = task_dir / spec["instruction_image"]
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"{spec_file}: instruction image {path} is missing or unreadable")
            instructions.append(image)
        else:
            instructions.append(spec.get("instruction") or None)
    return images, ids, names, instructions


def evaluate_task(
    task_dir: Path,
    task: str,
    embedder: ReidEmbedder,
    gallery: Gallery | None = None,
    tau: float = TAU,
    per_query: bool = False,
) -> dict[str, object]:
    """Score one image-query task folder (any task but "text"); ``per_query``: see ``_score``."""
    if task not in TASKS or task == "text":
        raise ValueError(f"evaluate_task takes one of {', '.join(TASKS[:-1])}, got {task!r}")
    images, ids, names, instructions = read_task_queries(task_dir)
    gallery = gallery or embed_gallery(Path(task_dir) / "gallery", embedder)
    q_vecs = embed_queries(embedder, task, images, instructions)
    result: dict[str, object] = {
        "task": task, **_score(q_vecs, ids, names, gallery, per_query), "n_query": len(ids),
        "n_gallery": len(gallery.ids), "instructed": is_instructable(embedder),
    }  # fmt: skip
    texts = [i for i in instructions if isinstance(i, str)]
    if task in TEXT_INSTRUCTED and gallery.attributes is not None and len(texts) == len(ids):
        result |= tau_metrics(q_vecs, ids, texts, gallery, tau)
    return result


def evaluate_text(
    queries: Path,
    gallery_dir: Path | Gallery,
    embedder: ReidEmbedder,
    tau: float = TAU,
    attributes: AttributeModel | None = None,
    per_query: bool = False,
) -> dict[str, object]:
    """Text-to-image retrieval: JSON lines ``{"text", "identity"}`` against an identity folder.
    With an attribute model (or a ``Gallery`` that has attributes) mAP_tau is reported too;
    ``per_query``: see ``_score``."""
    rows = read_jsonl(Path(queries), ("text", "identity"))
    if not is_instructable(embedder):
        raise ValueError(
            f"model {embedder.model_id} cannot embed text: text queries need an instructable "
            "(IRM) model; choose one with --model"
        )
    gallery = (
        gallery_dir
        if isinstance(gallery_dir, Gallery)
        else embed_gallery(gallery_dir, embedder, attributes)
    )
    known = set(gallery.ids)
    for n, row in enumerate(rows, 1):
        if row["identity"] not in known:
            raise ValueError(
                f"{queries}: query {n} names identity {row['identity']!r}, which has no folder "
                f"in the gallery (identities: {', '.join(sorted(known)[:10])}...)"
            )
    texts, ids = [r["text"] for r in rows], [r["identity"] for r in rows]
    q_vecs = embedder.embed_text(texts).vectors  # type: ignore[attr-defined]
    result: dict[str, object] = {
        "task": "text",
        **_score(q_vecs, ids, [f"text:{k}" for k in range(len(ids))], gallery, per_query),
        "n_query": len(ids), "n_gallery": len(gallery.ids), "instructed": True,
    }  # fmt: skip
    if gallery.attributes is not None:
        result |= tau_metrics(q_vecs, ids, texts, gallery, tau)
        result |= attribute_scan_metrics(texts, ids, gallery)
    return result


def evaluate_instructed(
    query_dir: Path,
    gallery_dir: Path,
    embedder: ReidEmbedder,
    task: str = "reid",
    instruction: str | np.ndarray | None = None,
) -> dict[str, object]:
    """``refind eval reid --task T [--instruction X]``: identity folders, one task.

    The instruction of every query: ``instruction`` when given; else the per-query ones of a
    ``queries.jsonl`` beside ``query_dir`` (a folder built by ``refind datasets irm-eval``);
    else the task's canonical instruction (clothes_template: each query crop is its own garment
    template; attribute_text has none and needs ``instruction``). A plain ReidEmbedder takes no
    instruction: giving one is an error; a task without one falls back to plain embedding
    (``"instructed": False`` in the result).
    """
    from refind.datasets.irm import instruction_for

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if task == "text":
        raise ValueError(
            "task text has text queries, not photos: use `refind eval text --queries FILE "
            "--gallery DIR`"
        )
    instructable = is_instructable(embedder)
    if instruction is not None and not instructable:
        raise ValueError(
            f"model {embedder.model_id} takes no instruction (it is not an instructable IRM "
            "model): leave out --instruction or choose an IRM model with --model"
        )
    query_dir = Path(query_dir)
    images, ids, names = load_identity_folder(query_dir)
    if instruction is not None:
        instructions: list[str | np.ndarray | None] = [instruction] * len(images)
    elif (query_dir.parent / "queries.jsonl").is_file() and query_dir.name == "query":
        instructions = read_task_queries(query_dir.parent)[3]
    elif task == "clothes_template":
        instructions = list(images)
    elif task == "attribute_text":
        if instructable:
            raise ValueError(
                "task attribute_text needs --instruction TEXT (what the person wears now)"
            )
        instructions = [None] * len(images)
    else:
        instructions = [instruction_for(task, None)] * len(images)
    if not instructable and task != "reid":
        log.warning("model %s is not instructable: task %s uses plain embeddings",
                    embedder.model_id, task)  # fmt: skip
    gallery = embed_gallery(Path(gallery_dir), embedder)
    q_vecs = embed_queries(embedder, task, images, instructions)
    return {
        "task": task, **_score(q_vecs, ids, names, gallery), "n_query": len(ids),
        "n_gallery": len(gallery.ids), "instructed": instructable, "model_id": embedder.model_id,
    }  # fmt: skip


def evaluate_irm(
    sets_dir: Path,
    embedder: ReidEmbedder,
    attributes: AttributeModel | None = None,
    tau: float = TAU,
    tasks: Sequence[str] = TASKS,
    per_query: bool = False,
) -> dict[str, dict[str, object]]:
    """Every task of a set folder; the gallery (the same crops for every task) is embedded once.
    A task the model cannot do (text with a plain model) gets ``{"supported": False}``. With
    ``per_query`` each result keeps its queries' APs (``query_ap``), for ``paired_difference``."""
    sets_dir = Path(sets_dir)
    missing = [t for t in tasks if not (sets_dir / t).is_dir()]
    if missing:
        raise ValueError(
            f"{sets_dir} lacks task folder(s) {', '.join(missing)}: build it with "
            "refind datasets irm-eval --out DIR"
        )
    cache: dict[tuple[str, ...], Gallery] = {}
    results: dict[str, dict[str, object]] = {}
    for task in tasks:
        g_dir = sets_dir / task / "gallery"
        if task == "text" and not is_instructable(embedder):
            results[task] = {"task": task, "supported": False, "model_id": embedder.model_id}
            continue
        key = tuple(sorted(str(p.relative_to(g_dir)) for p in g_dir.rglob("*") if p.is_file()))
        if key not in cache:
            cache[key] = embed_gallery(g_dir, embedder, attributes)
        if task == "text":
            results[task] = evaluate_text(
                sets_dir / task / "queries.jsonl", cache[key], embedder, tau, per_query=per_query
            )
        else:
            results[task] = evaluate_task(
                sets_dir / task, task, embedder, cache[key], tau, per_query=per_query
            )
        results[task] |= {"supported": True, "model_id": embedder.model_id}
        log.info("irm eval %s: mAP %.3f", task, results[task]["mAP"])
    return results


def paired_difference(
    model: dict[str, dict[str, object]], baseline: dict[str, dict[str, object]]
) -> dict[str, dict[str, object]]:
    """Per task both ran: mAP of ``model`` minus ``baseline``'s on the same queries, with a 95 %
    interval over identities (``identity_bootstrap_ci`` of the per-query AP differences). Results
    of ``evaluate_irm(..., per_query=True)`` on the same sets; runs whose queries differ (by
    name or identity) are refused."""
    out: dict[str, dict[str, object]] = {}
    for task, a in model.items():
        b = baseline.get(task, {})
        if not (a.get("supported") and b.get("supported")):
            continue
        if "query_ap" not in a or "query_ap" not in b:
            raise ValueError(f"task {task}: no per-query APs (evaluate_irm(..., per_query=True))")
        qa, qb = a["query_ap"], b["query_ap"]
        if qa["names"] != qb["names"] or qa["ids"] != qb["ids"]:  # type: ignore[index]
            raise ValueError(f"task {task}: the two runs evaluated different queries")
        diff = np.asarray(qa["ap"]) - np.asarray(qb["ap"])  # type: ignore[index]
        lo, hi = identity_bootstrap_ci(diff, qa["ids"])  # type: ignore[index]
        out[task] = {"mAP_diff": float(diff.mean()), "ci95_lo": lo, "ci95_hi": hi,
                     "n_queries": len(diff), "n_identities": len(set(qa["ids"]))}  # type: ignore[index]  # fmt: skip
    return out


def format_table(results: dict[str, dict[str, object]]) -> str:
    """The per-task figures as a fixed-width text table."""
    cols = (
        "mAP",
        "mAP_ci95",
        "rank1",
        "rank5",
        "rank10",
        "chance_mAP",
        "chance_rank5",
        "chance_p_rank5",
        "mAP_tau",
        "n_query",
    )
    lines = [f"{'task':<17}" + "".join(f"{c:>15}" for c in cols)]
    for task, r in results.items():
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "mAP_ci95" and "mAP_ci95_lo" in r:  # the identity-bootstrap interval
                v = f"{r['mAP_ci95_lo']:.3f}-{r['mAP_ci95_hi']:.3f}"
            cells.append(
                "n/a" if not r.get("supported", True) or v is None
                else f"{v:.4f}" if isinstance(v, float) else str(v)
            )  # fmt: skip
        lines.append(f"{task:<17}" + "".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)


def format_difference(difference: dict[str, dict[str, object]]) -> str:
    """``paired_difference`` as a text table: the model's mAP minus the baseline's, per task."""
    lines = [f"{'task':<17}{'mAP diff':>12}{'95 % interval':>20}{'queries':>9}{'people':>8}"]
    for task, d in difference.items():
        interval = f"{d['ci95_lo']:+.3f} to {d['ci95_hi']:+.3f}"
        lines.append(f"{task:<17}{d['mAP_diff']:>+12.4f}{interval:>20}{d['n_queries']:>9}"
                     f"{d['n_identities']:>8}")  # fmt: skip
    return "\n".join(lines)
