"""The FAISS gallery: unit vectors of one model under explicit 64-bit ids, searched by cosine.

The index comes from ``faiss.index_factory(dim, cfg.index_factory, METRIC_INNER_PRODUCT)``. IVF
indexes keep ids themselves; every other kind is wrapped in ``IndexIDMap2`` (which can also
``reconstruct`` by id). Indexes that need training (IVF, PQ, SQ) buffer vectors, answer searches
exactly over the buffer, and train once enough have arrived.

Filters are applied inside the search with an ``IDSelectorBitmap`` (``IDSelectorBatch`` for ids
far apart) in the kind's own search parameters, with the search effort (nprobe, efSearch) scaled
by 1/selectivity so that a narrow filter still fills k; rows that still come back short are
completed exhaustively.
"""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from refind.indexer.config import GalleryConfig
from refind.streaming.records import Embeddings

log = logging.getLogger(__name__)

_DEFAULT_TRAIN_NON_IVF = 40 * 256  # PQ/SQ without IVF: 40 points per PQ centroid (256 of them)
_EXACT_CHUNK = 65_536  # vectors reconstructed at a time by the exact path
_BITMAP_MAX_BITS = 1 << 24  # filters over ids below this use a bitmap selector (2 MiB at most)


def _unwrap(index: faiss.Index) -> faiss.Index:
    """The index under IDMap / PreTransform wrappers (where HNSW or Flat lives)."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap | faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def _kind(index: faiss.Index) -> str:
    """'ivf', 'hnsw' or 'flat' (anything searched exhaustively)."""
    if faiss.try_extract_index_ivf(index) is not None:
        return "ivf"
    if isinstance(_unwrap(index), faiss.IndexHNSW):
        return "hnsw"
    return "flat"


def _build(cfg: GalleryConfig, dim: int) -> faiss.Index:
    if cfg.index_factory.replace(" ", "").upper().startswith("IDMAP"):
        raise ValueError(
            f"gallery.index_factory {cfg.index_factory!r}: leave out 'IDMap', the gallery adds "
            "its own id map"
        )
    try:
        index = faiss.index_factory(dim, cfg.index_factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1]
        raise ValueError(
            f"gallery.index_factory {cfg.index_factory!r} is not a usable FAISS factory string "
            f"for dim {dim}: {reason}"
        ) from None
    if faiss.try_extract_index_ivf(index) is None:
        index = faiss.IndexIDMap2(index)
    return index


def _max_id(index: faiss.Index) -> int:
    """Largest id stored in the index, -1 when empty."""
    if index.ntotal == 0:
        return -1
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return int(faiss.vector_to_array(faiss.downcast_index(index).id_map).max())
    best, invlists = -1, ivf.invlists
    for lst in range(invlists.nlist):
        size = invlists.list_size(lst)
        if size:
            ptr = invlists.get_ids(lst)
            best = max(best, int(faiss.rev_swig_ptr(ptr, size).max()))
            invlists.release_ids(lst, ptr)
    return best


def _no_hits(q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(q, k) scores all -inf and ids all -1: the answer when nothing can match."""
    return np.full((q, k), -np.inf, np.float32), np.full((q, k), -1, np.int64)


def _topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k of (q, n) scores over (n,) ids, padded with -inf / -1."""
    q, n = scores.shape
    out_s, out_i = _no_hits(q, k)
    take = min(k, n)
    if take == 0:
        return out_s, out_i
    part = np.argpartition(-scores, take - 1, axis=1)[:, :take]  # (q, take), unordered
    part_s = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_s, axis=1, kind="stable")
    out_s[:, :take] = np.take_along_axis(part_s, order, axis=1)
    out_i[:, :take] = ids[np.take_along_axis(part, order, axis=1)]
    return out_s, out_i


class FaissGallery:
    """Vectors of one model in one FAISS index, with explicit int64 ids and filtered search.

    Ids must be added in increasing order (each batch above every id seen before); the gallery
    store guarantees this. HNSW graphs cannot delete, so ``remove`` tombstones their ids.

    Example:
        >>> g = FaissGallery(GalleryConfig(), model_id="reid-0277", dim=4)
        >>> g.add(np.array([7]), Embeddings(np.array([[1, 0, 0, 0]]), "reid-0277"))
        >>> g.search(np.array([[1, 0, 0, 0]], np.float32), k=2)[1].tolist()
        [[7, -1]]
    """

    def __init__(
        self,
        cfg: GalleryConfig,
        model_id: str,
        dim: int,
        *,
        index: faiss.Index | None = None,
        removed_ids: np.ndarray | tuple[int, ...] = (),
        max_id: int = -1,
    ) -> None:
        if not model_id:
            raise ValueError("FaissGallery needs a model_id")
        if dim < 1:
            raise ValueError(f"FaissGallery dim must be >= 1, got {dim}")
        self._cfg = cfg
        self._model_id = model_id
        self._dim = dim
        self._index = index if index is not None else _build(cfg, dim)
        self._kind = _kind(self._index)
        if self._kind == "hnsw":  # not a saved property: applies to the vectors added from now
            _unwrap(self._index).hnsw.efConstruction = cfg.ef_construction
        self._removed = np.unique(np.asarray(removed_ids, np.int64))
        if self._removed.size and self._kind != "hnsw":
            raise ValueError(f"removed_ids only apply to HNSW indexes, not {self._kind}")
        self._buf_ids: list[np.ndarray] = []
        self._buf_vecs: list[np.ndarray] = []
        # removed ids leave the index, yet new ids must still exceed them: ``max_id`` remembers
        self._max_id = max(_max_id(self._index), int(max_id))
        self._present: np.ndarray | None = None  # hnsw: sorted ids in the index, cached

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def kind(self) -> str:
        """'ivf', 'hnsw' or 'flat'."""
        return self._kind

    @property
    def is_trained(self) -> bool:
        """False while vectors are buffered waiting for training."""
        return bool(self._index.is_trained)

    @property
    def max_id(self) -> int:
        """Largest id ever added (buffered ones included), -1 when none."""
        return self._max_id

    @property
    def removed_ids(self) -> np.ndarray:
        """Tombstoned ids (HNSW only), sorted int64."""
        return self._removed.copy()

    def __len__(self) -> int:
        buffered = sum(len(b) for b in self._buf_ids)
        return int(self._index.ntotal) + buffered - int(self._removed.size)

    def add(self, ids: np.ndarray, embeddings: Embeddings) -> None:
        """Add (n,) int64 ids with their (n, d) vectors; ids must exceed every id added before."""
        self._check_embeddings(embeddings)
        ids = self._check_ids(ids, len(embeddings))
        if ids.size == 0:
            return
        if self.is_trained:
            self._index.add_with_ids(embeddings.vectors, ids)
        else:
            self._buf_ids.append(ids)
            self._buf_vecs.append(embeddings.vectors)
            self._train_if_ready()
        self._max_id = int(ids[-1])
        self._present = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""
        ids = np.unique(np.asarray(ids, np.int64).reshape(-1))
        n = self._remove_from_buffer(ids)
        if not self.is_trained or ids.size == 0:
            return n
        if self._kind == "hnsw":
            new = np.setdiff1d(ids[np.isin(ids, self._present_ids())], self._removed)
            self._removed = np.union1d(self._removed, new)
            return n + int(new.size)
        self._present = None
        return n + int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (q, k) float32 scores and (q, k) int64 ids, -1 / -inf padded.

        ``allowed_ids`` restricts the answer to those ids (filtered inside the search).
        """
        q = self._check_queries(queries)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        allowed = None
        if allowed_ids is not None:
            allowed = np.asarray(allowed_ids, np.int64).reshape(-1)
            if allowed.size > 1 and not (np.diff(allowed) > 0).all():  # sorted unique: as is
                allowed = np.unique(allowed)
            if self._removed.size:
                allowed = np.setdiff1d(allowed, self._removed, assume_unique=True)
        if not self.is_trained:
            return self._search_buffer(q, k, allowed)
        if allowed is not None and allowed.size == 0:
            return _no_hits(len(q), k)
        return self._search_index(q, k, allowed)

    def to_bytes(self) -> bytes:
        """The FAISS index serialised (buffered, untrained vectors are not included)."""
        return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        cfg: GalleryConfig,
        model_id: str,
        dim: int,
        removed_ids: np.ndarray | tuple[int, ...] = (),
        max_id: int = -1,
    ) -> FaissGallery:
        """Rebuild a gallery from ``to_bytes`` output; ValueError if unreadable or of another dim.

        ``max_id``: the largest id ever added, when ids above those left were removed."""
        try:
            index = faiss.deserialize_index(np.frombuffer(data, np.uint8).copy())
        except RuntimeError as err:
            reason = str(err).strip().splitlines()[-1]
            raise ValueError(f"not a readable FAISS index ({len(data)} bytes): {reason}") from None
        if index.d != dim:
            raise ValueError(f"FAISS index has dim {index.d}, expected {dim}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"FAISS index metric is {index.metric_type}, expected inner product")
        if faiss.try_extract_index_ivf(index) is None and not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"FAISS index {type(index).__name__} is neither IVF nor IndexIDMap2")
        return cls(cfg, model_id, dim, index=index, removed_ids=removed_ids, max_id=max_id)

    # -- checks -----------------------------------------------------------------------------

    def _check_embeddings(self, emb: Embeddings) -> None:
        if emb.model_id != self._model_id:
            raise ValueError(
                f"embeddings of model {emb.model_id!r} cannot go into the gallery of model "
                f"{self._model_id!r} (one index never mixes models)"
            )
        if len(emb) and emb.dim != self._dim:
            raise ValueError(f"embeddings have dim {emb.dim}, the gallery has dim {self._dim}")

    def _check_ids(self, ids: np.ndarray, n: int) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.shape[0] != n or (n and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"ids must be ({n},) integers, got {arr.shape} {arr.dtype}")
        arr = arr.astype(np.int64)
        if n and (arr[0] <= self._max_id or np.any(np.diff(arr) <= 0)):
            raise ValueError(
                f"ids must increase and exceed the largest id so far ({self._max_id}); "
                f"got {arr[:5].tolist()}{'...' if n > 5 else ''}"
            )
        return arr

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self._dim:
            raise ValueError(f"queries must be (q, {self._dim}) float32, got {q.shape}")
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or inf")
        return q

    # -- training buffer --------------------------------------------------------------------

    def _train_size(self) -> int:
        if self._cfg.train_min_vectors:
            return self._cfg.train_min_vectors
        ivf = faiss.try_extract_index_ivf(self._index)
        return 40 * ivf.nlist if ivf is not None else _DEFAULT_TRAIN_NON_IVF

    def _train_if_ready(self) -> None:
        n = sum(len(b) for b in self._buf_ids)
        if n < self._train_size():
            return
        ids, vecs = np.concatenate(self._buf_ids), np.concatenate(self._buf_vecs)
        log.info("training %s index of %s on %d vectors", self._cfg.index_factory, self._model_id, n)
        self._index.train(vecs)
        self._index.add_with_ids(vecs, ids)
        self._buf_ids, self._buf_vecs = [], []

    def _remove_from_buffer(self, ids: np.ndarray) -> int:
        n = 0
        for i, (b_ids, b_vecs) in enumerate(zip(self._buf_ids, self._buf_vecs, strict=True)):
            keep = ~np.isin(b_ids, ids)
            n += int((~keep).sum())
            self._buf_ids[i], self._buf_vecs[i] = b_ids[keep], b_vecs[keep]
        return n

    def _search_buffer(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if not self._buf_ids:
            return _no_hits(len(q), k)
        ids, vecs = np.concatenate(self._buf_ids), np.concatenate(self._buf_vecs)
        if allowed is not None:
            keep = np.isin(ids, allowed)
            ids, vecs = ids[keep], vecs[keep]
        return _topk(q @ vecs.T, ids, k)

    # -- index search -----------------------------------------------------------------------

    def _present_ids(self) -> np.ndarray:
        """Sorted ids stored in an IDMap2 index (tombstoned ones included)."""
        if self._present is None:
            self._present = np.sort(faiss.vector_to_array(self._index.id_map))
        return self._present

    def _search_index(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._kind == "hnsw" and allowed is not None:
            allowed = allowed[np.isin(allowed, self._present_ids())]
            if allowed.size <= self._cfg.exact_filter_max:
                return self._search_exact(q, k, allowed)
        n_allowed = len(self) if allowed is None else int(allowed.size)
        if n_allowed == 0:
            return _no_hits(len(q), k)
        # Visit about as many allowed vectors as an unfiltered search visits vectors.
        scale = max(1.0, self._index.ntotal / n_allowed)
        sel = self._selector(allowed)
        scores, ids = self._index.search(q, k, params=self._params(sel, scale, k))
        short = (ids >= 0).sum(axis=1) < min(k, n_allowed)
        if short.any() and self._kind != "flat":  # flat selector searches are already complete
            log.debug("%d of %d rows short of %d hits; completing", short.sum(), len(q), k)
            scores[short], ids[short] = self._search_complete(q[short], k, allowed, sel)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _search_complete(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None, sel: list[faiss.IDSelector]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive search: every IVF list, or every allowed vector of an HNSW index."""
        if self._kind == "ivf":
            return self._index.search(q, k, params=self._params(sel, math.inf, k))
        if allowed is None:
            allowed = np.setdiff1d(self._present_ids(), self._removed, assume_unique=True)
        return self._search_exact(q, k, allowed)

    def _search_exact(
        self, q: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Score only the ``allowed`` vectors (reconstructed from an IDMap2 index)."""
        best = _no_hits(len(q), k)
        for start in range(0, allowed.size, _EXACT_CHUNK):
            chunk = allowed[start : start + _EXACT_CHUNK]
            vecs = self._index.reconstruct_batch(chunk)  # (c, d)
            scores = np.concatenate([best[0], q @ vecs.T], axis=1)  # (q, k + c)
            ids = np.concatenate([best[1], np.broadcast_to(chunk, (len(q), chunk.size))], axis=1)
            part_s, cols = _topk(scores, np.arange(scores.shape[1]), k)
            part_i = np.take_along_axis(ids, np.maximum(cols, 0), axis=1)
            best = part_s, np.where(cols >= 0, part_i, -1)
        return best

    def _selector(self, allowed: np.ndarray | None) -> list[faiss.IDSelector]:
        """[selector, *objects it points to] (kept alive by the caller), or [] for no filter."""
        if allowed is not None and allowed.size and allowed[0] >= 0 and allowed[-1] < max(
            _BITMAP_MAX_BITS, 64 * allowed.size
        ):  # one bit per id up to the largest: built and probed faster than a hash set
            bits = np.zeros(int(allowed[-1]) + 1, bool)
            bits[allowed] = True
            bitmap = np.packbits(bits, bitorder="little")
            return [faiss.IDSelectorBitmap(bitmap.size, faiss.swig_ptr(bitmap)), bitmap]
        if allowed is not None:
            return [faiss.IDSelectorBatch(allowed)]
        if self._removed.size:
            dead = faiss.IDSelectorBatch(self._removed)
            return [faiss.IDSelectorNot(dead), dead]
        return []

    def _params(
        self, sel: list[faiss.IDSelector], scale: float, k: int
    ) -> faiss.SearchParameters | None:
        """The kind's search parameters: config nprobe / efSearch times ``scale``, capped."""
        selector = sel[0] if sel else None
        if self._kind == "ivf":
            nlist = faiss.try_extract_index_ivf(self._index).nlist
            nprobe = nlist if math.isinf(scale) else min(nlist, math.ceil(self._cfg.nprobe * scale))
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        if self._kind == "hnsw":
            ef = min(max(int(self._index.ntotal), k), math.ceil(self._cfg.ef_search * scale))
            return faiss.SearchParametersHNSW(sel=selector, efSearch=max(ef, k))
        return faiss.SearchParameters(sel=selector) if selector is not None else None
