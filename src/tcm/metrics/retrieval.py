"""Exact retrieval evaluation: Recall@k, MAP@R and R-precision, chunked and shardable.

Convention: embeddings are L2-normalised internally and neighbours are ranked by cosine
**similarity** ``s(q, g) = <q, g> / (||q|| ||g||)`` in ``[-1, 1]``, highest first.

Definitions (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020). For a query ``q`` with
label ``y`` let ``R`` = number of gallery items with label ``y`` (in leave-one-out mode, when no
gallery is given, the query itself is excluded *by index*, so ``R = n_y - 1``), and let
``rel(i) = 1`` when the ``i``-th nearest gallery item has label ``y``:

* ``Recall@k = 1`` if ``rel(i) = 1`` for some ``i <= k`` else ``0`` (if fewer than ``k`` gallery
  items exist, all of them are used).
* ``R-precision = (1/R) * sum_{i<=R} rel(i)``.
* ``MAP@R = (1/R) * sum_{i<=R} P(i) * rel(i)`` with ``P(i) = (1/i) * sum_{j<=i} rel(j)``.

Each metric is the mean over queries with ``R >= 1``; queries with ``R = 0`` are excluded and
counted in :attr:`RetrievalMetrics.num_excluded_queries`.

Ties: neighbours are ordered by decreasing float64 similarity of the normalised vectors and, among
equal similarities, by increasing gallery index. Both backends (``"torch"``: chunked matmul +
``topk``; ``"faiss"``: ``IndexFlatIP``) return exactly this order (see :mod:`tcm.metrics._knn`).

Memory: queries are processed in chunks of ``B`` rows; the only large temporary is the ``(B, N)``
similarity block (``B`` chosen so it takes about 64 MiB on CPU, 512 MiB on CUDA). Labels are
encoded once to int codes and class sizes come from ``bincount`` (linear time, no class x sample
matrix); per chunk ``k = max(max(ks), max R in chunk)`` neighbours are retrieved. Leave-one-out
over all queries instead computes each similarity tile once for both of its row blocks
(:func:`tcm.metrics._knn.symmetric_candidates`; on CPU two 64 MiB tile buffers and faiss heaps of
``k + 8`` candidates per row), then certifies the exact order as above.

Sharding: :func:`retrieval_per_query` evaluates any subset of queries (``query_indices``) and
:func:`merge_per_query` combines the parts; splitting the queries across processes gives exactly
the numbers of one process (:func:`shard_query_indices` makes the split,
:func:`distributed_retrieval_metrics` does it with ``torch.distributed``).

Example:
    >>> import numpy as np
    >>> emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> m = retrieval_metrics(emb, [0, 0, 1, 1], ks=(1,))
    >>> m.recall_at_k[1], m.map_at_r, m.r_precision, m.num_queries
    (1.0, 1.0, 1.0, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from tcm._io import json_value
from tcm._validation import ArrayLike, as_embeddings, encode_labels, l2_normalize
from tcm.metrics._knn import (
    FaissSearcher,
    Searcher,
    TorchSearcher,
    canonical_similarity,
    certified_topk,
    exact_topk,
    faiss_available,
    symmetric_candidates,
)
from tcm.metrics._pairs import Prepared
from tcm.metrics._progress import stage
from tcm.metrics.distributed import Communicator

if TYPE_CHECKING:
    from tcm.scoring.base import Scorer, SideState

__all__ = [
    "PerClassRetrieval",
    "PerQueryRetrieval",
    "RetrievalInput",
    "RetrievalMetrics",
    "distributed_retrieval_metrics",
    "leave_one_out_input",
    "merge_per_query",
    "prepare_retrieval",
    "retrieval_metrics",
    "retrieval_metrics_of",
    "retrieval_per_query",
    "retrieval_per_query_of",
    "shard_query_indices",
]

Backend = Literal["auto", "torch", "faiss"]

_CPU_BLOCK_BYTES = 64 << 20
_CUDA_BLOCK_BYTES = 512 << 20
_MAX_CHUNK = 8192
_FAISS_CHUNK = 4096
# Leave-one-out over all queries uses the symmetry of the similarity (see _knn.symmetric_candidates)
_CPU_SYM_BYTES = 128 << 20  # CPU: one (b x b) float32 tile + its transposed copy -> b = 4096
_SYM_MAX_K = 64  # torch merge (CUDA / no faiss): above this the merges cost more than they save
_HEAP_MAX_K = 1024  # CPU faiss heaps: candidates per row ...
_HEAP_STATE_BYTES = 256 << 20  # ... and (N, kk) float32 scores + int64 ids at most this large


@dataclass(frozen=True)
class PerClassRetrieval:
    """Per-class means over the evaluated queries of each class (all arrays shape ``(C,)``).

    Only classes with at least one evaluated query (``R >= 1``) appear; ``classes`` holds the
    original label values, sorted.
    """

    classes: np.ndarray
    num_queries: np.ndarray
    recall_at_1: np.ndarray
    map_at_r: np.ndarray
    r_precision: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of lists."""
        return {
            "classes": json_value(self.classes),
            "num_queries": json_value(self.num_queries),
            "recall_at_1": json_value(self.recall_at_1),
            "map_at_r": json_value(self.map_at_r),
            "r_precision": json_value(self.r_precision),
        }


@dataclass(frozen=True)
class RetrievalMetrics:
    """Retrieval accuracy averaged over the queries with ``R >= 1`` (values in ``[0, 1]``).

    Attributes:
        recall_at_k: ``{k: Recall@k}`` for the requested ``ks``.
        map_at_r: mean MAP@R.
        r_precision: mean R-precision.
        per_class: per-class means (see :class:`PerClassRetrieval`).
        num_queries: number of evaluated queries (``R >= 1``).
        num_excluded_queries: queries skipped because no gallery item shares their label.
        num_gallery: gallery size (the query set itself in leave-one-out mode).
        leave_one_out: ``True`` when no separate gallery was given.
        backend: backend actually used (``"torch"`` or ``"faiss"``).
    """

    recall_at_k: dict[int, float]
    map_at_r: float
    r_precision: float
    per_class: PerClassRetrieval
    num_queries: int
    num_excluded_queries: int
    num_gallery: int
    leave_one_out: bool
    backend: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``recall_at_k`` keys become strings)."""
        return {
            "recall_at_k": {str(k): v for k, v in self.recall_at_k.items()},
            "map_at_r": self.map_at_r,
            "r_precision": self.r_precision,
            "per_class": self.per_class.to_dict(),
            "num_queries": self.num_queries,
            "num_excluded_queries": self.num_excluded_queries,
            "num_gallery": self.num_gallery,
            "leave_one_out": self.leave_one_out,
            "backend": self.backend,
        }


@dataclass(frozen=True)
class PerQueryRetrieval:
    """Per-query results for a subset of queries (the unit of sharding).

    Attributes (``M`` = number of queries in the subset):
        query_indices: ``(M,)`` int64 positions in the full query set.
        labels: ``(M,)`` original label values.
        r: ``(M,)`` int64 number of relevant gallery items ``R`` (0 = excluded query).
        ks: the requested ``ks`` (sorted, unique).
        hits: ``(M, len(ks))`` bool; ``hits[m, j]``: a relevant item is among the ``ks[j]``
            nearest.
        map_at_r: ``(M,)`` float64, NaN where ``R = 0``.
        r_precision: ``(M,)`` float64, NaN where ``R = 0``.
        num_gallery, leave_one_out, backend: as in :class:`RetrievalMetrics`.
    """

    query_indices: np.ndarray
    labels: np.ndarray
    r: np.ndarray
    ks: tuple[int, ...]
    hits: np.ndarray
    map_at_r: np.ndarray
    r_precision: np.ndarray
    num_gallery: int
    leave_one_out: bool
    backend: str


# --------------------------------------------------------------------------- validation


def _check_ks(ks: int | Sequence[int]) -> tuple[int, ...]:
    items: Sequence[Any] = (ks,) if isinstance(ks, int | np.integer) else ks
    if isinstance(items, str | bytes) or not isinstance(items, Sequence | np.ndarray):
        raise ValueError(f"ks must be a positive int or a sequence of them; got {ks!r}")
    if len(items) == 0:
        raise ValueError("ks is empty; pass at least one k, e.g. ks=(1,)")
    out = []
    for k in items:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"every k in ks must be an integer >= 1; got {k!r} in {ks!r}")
        out.append(int(k))
    return tuple(sorted(set(out)))


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'faiss'; got {backend!r}")
    if backend == "faiss" and not faiss_available():
        raise ImportError("backend='faiss' needs the faiss package (pip install faiss-cpu)")
    if backend == "auto":
        return "torch"
    return backend


def _labels_numpy(labels: ArrayLike, n: int, name: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    elif labels is None:
        raise ValueError(f"{name} is None but embeddings were given")
    else:
        arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (N,); got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]} but there are {n} embeddings")
    return arr


def _concat_labels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and b.dtype.kind in "iu" and np.result_type(a, b).kind == "f":
        # int64 + uint64 would promote to float64 and merge ids > 2**53
        return np.concatenate([a.astype(object), b.astype(object)])
    return np.concatenate([a, b])


def _as_index_array(query_indices: ArrayLike | slice | None, n: int) -> np.ndarray:
    if query_indices is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(query_indices, slice):
        return np.arange(n, dtype=np.int64)[query_indices]
    if isinstance(query_indices, torch.Tensor):
        arr = query_indices.detach().cpu().numpy()
    else:
        arr = np.asarray(query_indices)
    if arr.ndim != 1 or (arr.size > 0 and arr.dtype.kind not in "iu"):
        raise ValueError(
            f"query_indices must be a 1-D integer array; got shape {arr.shape}, dtype {arr.dtype}"
        )
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        bad = arr[(arr < 0) | (arr >= n)][0]
        raise ValueError(f"query_indices must be in [0, {n}); got {int(bad)}")
    if np.unique(arr).size != arr.size:
        raise ValueError("query_indices contain duplicates")
    return arr


def _sym_block(device: torch.device) -> int:
    budget = _CUDA_BLOCK_BYTES if device.type == "cuda" else _CPU_SYM_BYTES
    return int(max(256, (budget // 8) ** 0.5))  # tile + its transposed copy, float32


def _use_symmetric(n: int, kk: int, device: torch.device) -> bool:
    """Whether the symmetric leave-one-out candidate search pays off for ``kk`` per row."""
    if device.type == "cpu" and faiss_available():
        return kk <= _HEAP_MAX_K and n * kk * 12 <= _HEAP_STATE_BYTES
    return kk <= _SYM_MAX_K + 8


def _auto_chunk(n_gallery: int, elem_bytes: int, device: torch.device, backend: str) -> int:
    if backend == "faiss":
        return _FAISS_CHUNK
    budget = _CUDA_BLOCK_BYTES if device.type == "cuda" else _CPU_BLOCK_BYTES
    return int(max(1, min(_MAX_CHUNK, budget // max(1, n_gallery * elem_bytes))))


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class RetrievalInput:
    """Query and gallery sets validated and L2-normalised once (see :func:`prepare_retrieval`,
    :func:`leave_one_out_input`).

    Attributes:
        queries: ``(Nq, D)`` L2-normalised query rows, in input order.
        gallery: ``(Ng, D)`` L2-normalised gallery rows (the ``queries`` tensor itself in
            leave-one-out mode), same device and dtype as ``queries``.
        query_codes, gallery_codes: int64 label codes; ``classes[code]`` is the label.
        classes: ``(C,)`` sorted distinct labels of queries and gallery.
        leave_one_out: no separate gallery: each query is excluded from its own ranking.
    """

    queries: torch.Tensor
    gallery: torch.Tensor
    query_codes: np.ndarray
    gallery_codes: np.ndarray
    classes: np.ndarray
    leave_one_out: bool
    scorer: Scorer | None = None
    query_state: SideState | None = None
    gallery_state: SideState | None = None


def prepare_retrieval(
    query_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_emb: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    backend: Backend = "auto",
) -> RetrievalInput:
    """Validate and L2-normalise the arguments of :func:`retrieval_metrics` (``backend`` is only
    checked, at the point where :func:`retrieval_per_query` has always checked it)."""
    q = as_embeddings(query_emb, "query_emb")
    nq = q.shape[0]
    q_lab = _labels_numpy(query_labels, nq, "query_labels")
    loo = gallery_emb is None
    if loo:
        if gallery_labels is not None:
            raise ValueError("gallery_labels given without gallery_emb")
        g = q
        all_codes, classes = encode_labels(q_lab, name="query_labels")
        q_codes_np = g_codes_np = all_codes
    else:
        g = as_embeddings(gallery_emb, "gallery_emb")
        if g.shape[1] != q.shape[1]:
            raise ValueError(
                f"query_emb has dimension {q.shape[1]} but gallery_emb has dimension {g.shape[1]}"
            )
        g_lab = _labels_numpy(gallery_labels, g.shape[0], "gallery_labels")
        all_codes, classes = encode_labels(_concat_labels(q_lab, g_lab), name="labels")
        q_codes_np, g_codes_np = all_codes[:nq], all_codes[nq:]
    dtype = torch.promote_types(q.dtype, g.dtype)
    _resolve_backend(backend, q.device)
    qn = l2_normalize(q.to(dtype), "query_emb")
    gn = qn if loo else l2_normalize(g.to(device=q.device, dtype=dtype), "gallery_emb")
    return RetrievalInput(qn, gn, q_codes_np, g_codes_np, classes, loo)


def leave_one_out_input(prep: Prepared) -> RetrievalInput:
    """The leave-one-out input of rows already prepared for the pair passes (e.g.
    :attr:`tcm.metrics.PairIndex.prepared`): their normalised rows and label codes put back in
    input order, so neither is validated or normalised again. Equal, bit for bit, to
    ``prepare_retrieval(embeddings, labels)`` (the same normalisation of the same rows)."""
    inverse = np.empty_like(prep.order)
    inverse[prep.order] = np.arange(prep.n, dtype=inverse.dtype)
    x = prep.x[torch.as_tensor(inverse, device=prep.x.device)]
    codes = np.empty_like(prep.codes)
    codes[prep.order] = prep.codes
    if prep.scorer is not None and prep.state is not None:
        st = prep.state[inverse]  # the scorer's state, prepared once, in input order
        return RetrievalInput(x, x, codes, codes, prep.classes, True, prep.scorer, st, st)
    return RetrievalInput(x, x, codes, codes, prep.classes, True)


# --------------------------------------------------------------------------- core


def retrieval_per_query(
    query_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_emb: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ks: int | Sequence[int] = (1, 2, 4, 8),
    backend: Backend = "auto",
    chunk_size: int | None = None,
    query_indices: ArrayLike | slice | None = None,
    comm: Communicator | None = None,
) -> PerQueryRetrieval:
    """Per-query Recall@k hits, MAP@R and R-precision for a subset of the queries.

    Arguments are those of :func:`retrieval_metrics` plus ``query_indices`` (``None`` = all
    queries, a slice, or a 1-D int array of positions in the query set) and ``comm``: in
    leave-one-out mode, every shard of a :class:`~tcm.metrics.distributed.Communicator` calls
    this with the same data and its own ``query_indices``; the symmetric candidate search is
    then split over the shards by tiles and its candidates exchanged (so the similarity work is
    divided, not repeated) before each shard ranks its own queries exactly. Always pass the *full*
    query and gallery sets: in leave-one-out mode the gallery is the whole query set, and the
    labels of all items are needed to compute ``R``. Results for disjoint subsets can be combined
    with :func:`merge_per_query` and give exactly the numbers of one call on all queries.

    Example:
        >>> emb = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]
        >>> part = retrieval_per_query(emb, [0, 0, 1, 1], ks=(1,), query_indices=[2, 3])
        >>> part.hits[:, 0].tolist(), part.r.tolist()
        ([True, True], [1, 1])
    """
    _check_ks(ks)
    _check_chunk_size(chunk_size)
    inp = prepare_retrieval(query_emb, query_labels, gallery_emb, gallery_labels, backend)
    return retrieval_per_query_of(inp, ks, backend, chunk_size, query_indices, comm)


def retrieval_per_query_of(
    inp: RetrievalInput,
    ks: int | Sequence[int] = (1, 2, 4, 8),
    backend: Backend = "auto",
    chunk_size: int | None = None,
    query_indices: ArrayLike | slice | None = None,
    comm: Communicator | None = None,
) -> PerQueryRetrieval:
    """:func:`retrieval_per_query` of an already prepared input."""
    ks_t = _check_ks(ks)
    _check_chunk_size(chunk_size)
    backend_used = _resolve_backend(backend, inp.queries.device)
    loo = inp.leave_one_out
    sel = _as_index_array(query_indices, int(inp.queries.shape[0]))
    counts = np.bincount(inp.gallery_codes, minlength=inp.classes.shape[0])
    r_all = counts[inp.query_codes[sel]] - int(loo)  # (M,)
    shared = None
    if (
        comm is not None
        and loo
        and backend_used == "torch"
        and comm.world > 1
        and inp.scorer is None
    ):
        shared = _sharded_candidates(inp, ks_t, counts, chunk_size, comm)
    hits, map_r, r_prec = _score_queries(
        inp, ks_t, backend_used, chunk_size, sel, r_all, counts, shared, query_indices is None
    )
    return PerQueryRetrieval(
        query_indices=sel,
        labels=inp.classes[inp.query_codes[sel]],
        r=r_all.astype(np.int64),
        ks=ks_t,
        hits=hits,
        map_at_r=map_r,
        r_precision=r_prec,
        num_gallery=int(inp.gallery.shape[0]),
        leave_one_out=loo,
        backend=backend_used,
    )


Candidates = tuple[torch.Tensor, torch.Tensor, float]
"""``(scores, ids, unit roundoff of the scores)``: leave-one-out top-``kk`` of every row."""


def _sharded_candidates(
    inp: RetrievalInput,
    ks: tuple[int, ...],
    counts: np.ndarray,
    chunk_size: int | None,
    comm: Communicator,
) -> Candidates | None:
    """The symmetric candidate search split over the shards by tiles, the candidates exchanged
    (every shard gets those of all rows); None when it does not pay off. Decided from global
    quantities only, so every shard takes the same branch."""
    gn = inp.gallery
    device = gn.device
    ng = int(gn.shape[0])
    r_glob = counts[inp.query_codes] - 1
    n_avail_g = ng - 1
    k_glob = min(max(ks[-1], int(r_glob.max())), n_avail_g)
    kk_g = min(k_glob + 8, n_avail_g)
    if not (int(r_glob.max()) > 0 and _use_symmetric(ng, kk_g, device)):
        return None
    xs = gn.float() if device.type == "cpu" else gn
    block = chunk_size or _sym_block(device)
    cv, ci = symmetric_candidates(xs, kk_g, block, shard=(comm.rank, comm.world))
    vals = comm.concat(cv.cpu().numpy().reshape(-1)).reshape(comm.world, ng, kk_g)
    ids = comm.concat(ci.cpu().numpy().reshape(-1)).reshape(comm.world, ng, kk_g)
    v_all = torch.from_numpy(np.concatenate(list(vals), axis=1))
    i_all = torch.from_numpy(np.concatenate(list(ids), axis=1))
    top = torch.topk(v_all, kk_g, dim=1, sorted=True)
    u0g = float(torch.finfo(xs.dtype).eps) * (1.0 if xs.dtype == gn.dtype else 2.0)
    return top.values.to(device), torch.gather(i_all, 1, top.indices).to(device), u0g


def _local_candidates(gn: torch.Tensor, kk: int, chunk_size: int | None) -> Candidates:
    """All queries = the whole gallery: compute each similarity tile once (symmetry). On CPU
    the candidates are searched in float32 (faiss heaps), certified with the float32 error
    bound, and only near-ties are re-ranked in float64."""
    block = chunk_size or _sym_block(gn.device)
    xs = gn.float() if gn.device.type == "cpu" else gn
    u0 = float(torch.finfo(xs.dtype).eps) * (1.0 if xs.dtype == gn.dtype else 2.0)
    return (*symmetric_candidates(xs, kk, block), u0)


def _score_queries(
    inp: RetrievalInput,
    ks: tuple[int, ...],
    backend: str,
    chunk_size: int | None,
    sel: np.ndarray,
    r_all: np.ndarray,
    counts: np.ndarray,
    shared: Candidates | None,
    all_queries: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hits ``(M, len(ks))``, MAP@R and R-precision ``(M,)`` of the queries ``sel`` with ``R =
    r_all`` relevant items (False / NaN where ``R = 0``), chunk by chunk of queries."""
    m = sel.shape[0]
    hits = np.zeros((m, len(ks)), dtype=bool)
    map_r = np.full(m, np.nan)
    r_prec = np.full(m, np.nan)
    valid_pos = np.flatnonzero(r_all > 0)
    if not valid_pos.size:
        return hits, map_r, r_prec
    qn, gn, loo = inp.queries, inp.gallery, inp.leave_one_out
    device = qn.device
    ng = int(gn.shape[0])
    searcher: Searcher = FaissSearcher(gn) if backend == "faiss" else TorchSearcher(gn)
    g_codes = torch.from_numpy(inp.gallery_codes).to(device)
    q_codes = torch.from_numpy(inp.query_codes).to(device)
    r_t = torch.from_numpy(r_all).to(device)
    chunk = chunk_size or _auto_chunk(ng, gn.element_size(), device, backend)
    n_avail = ng - int(loo)
    kmax = ks[-1]
    # score width shared by every chunk and shard, so float sums are bit-identical
    width = min(max(kmax, int(counts[inp.query_codes].max()) - int(loo)), n_avail)
    k_all = min(max(kmax, int(r_all.max())), n_avail)
    kk = min(k_all + 8, n_avail)
    cand = shared
    ranker = _ScoredRanker.of(inp, chunk)
    if cand is None and loo and backend == "torch" and all_queries and inp.scorer is None:
        cand = _local_candidates(gn, kk, chunk_size) if _use_symmetric(ng, kk, device) else None
    elif ranker is not None and ranker.symmetric and all_queries and _use_symmetric(ng, kk, device):
        cand = ranker.symmetric_candidates(kk, chunk_size)
    pre: torch.Tensor | None = None
    if cand is not None:
        vq = torch.from_numpy(sel[valid_pos]).to(device)
        initial = (cand[0][vq], cand[1][vq])
        if ranker is not None:
            pre = ranker.topk(vq, k_all, initial)
        else:
            pre = exact_topk(
                searcher, qn[vq], gn, k_all, vq, initial=initial, initial_unit_roundoff=cand[2],
                max_rows=chunk,
            )  # fmt: skip
        del cand, initial
    # without candidates every query scans the gallery: (query, item) pairs as progress
    with stage("kNN", 0 if pre is not None else valid_pos.size * ng) as tick:
        for lo in range(0, valid_pos.size, chunk):
            pos = torch.from_numpy(valid_pos[lo : lo + chunk]).to(device)
            qi = torch.from_numpy(sel[valid_pos[lo : lo + chunk]]).to(device)
            rc = r_t[pos]
            if pre is not None:
                idx = pre[lo : lo + chunk]
            else:
                k = min(max(kmax, int(rc.max())), n_avail)
                if ranker is not None:
                    idx = ranker.topk(qi, k)
                elif inp.scorer is not None:
                    idx = _scored_topk(inp, qi, k)
                else:
                    idx = exact_topk(searcher, qn[qi], gn, k, qi if loo else None, max_rows=chunk)
            h, ap, rp = _chunk_scores(g_codes[idx], q_codes[qi], rc, ks, width)
            p = pos.cpu().numpy()
            hits[p] = h.cpu().numpy()
            map_r[p] = ap.cpu().numpy()
            r_prec[p] = rp.cpu().numpy()
            tick(int(p.shape[0]) * ng)
    return hits, map_r, r_prec


class _ScoredRanker:
    """Exact ranking by a scorer with a rounding bound (:meth:`~tcm.scoring.Scorer.error_terms`):
    scores computed in the embeddings' dtype, block by block in place (``score_block_``), give
    ``k + 8`` candidates per query; a query whose ``k``-th candidate score beats the last one by
    more than twice the bound has its exact top ``k`` among them, which are then ordered by
    ``(-score64, j)``, ``score64`` the scorer's float64 score of the canonical float64 cosine
    (:func:`~tcm.metrics._knn.canonical_similarity`; :meth:`~tcm.scoring.Scorer.score_pairs`).
    The other queries are searched again with twice the candidates (up to the whole gallery),
    as in the cosine kNN (:func:`~tcm.metrics._knn.certified_topk`)."""

    def __init__(self, inp: RetrievalInput, chunk: int, terms: tuple[torch.Tensor, ...]) -> None:
        assert inp.scorer is not None and inp.query_state is not None
        assert inp.gallery_state is not None
        self.inp, self.scorer, self.chunk = inp, inp.scorer, chunk
        self.qs, self.gs = inp.query_state, inp.gallery_state
        g = inp.gallery
        self.symmetric = inp.leave_one_out and self.scorer.symmetric()
        u = float(torch.finfo(g.dtype).eps)
        e = (g.shape[1] + 2) * u  # |computed cosine - canonical cosine| (see _knn)
        lip_a, mag_a, lip_b, mag_b = (t.to(g.device) for t in terms)
        self.tol = 2.0 * (e * (lip_a + lip_b.max()) + u * (mag_a + mag_b.max()))
        self.buf: torch.Tensor | None = None

    @classmethod
    def of(cls, inp: RetrievalInput, chunk: int) -> _ScoredRanker | None:
        """The ranker of ``inp``'s scorer; None without a scorer or a rounding bound."""
        if inp.scorer is None or inp.query_state is None or inp.gallery_state is None:
            return None
        terms = inp.scorer.error_terms(inp.query_state, inp.gallery_state)
        return None if terms is None else cls(inp, chunk, terms)

    def _search(self, qi: torch.Tensor, kt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``kt`` by computed scores of the queries ``qi`` (at most ``chunk`` of them)."""
        g = self.inp.gallery
        r, ng = int(qi.numel()), int(g.shape[0])
        if self.buf is None:  # one block buffer, reused by every call
            self.buf = torch.empty(self.chunk * ng, dtype=g.dtype, device=g.device)
        s = self.buf[: r * ng].view(r, ng)
        torch.mm(self.inp.queries.index_select(0, qi), g.T, out=s)
        self.scorer.score_block_(s, self.qs[qi], self.gs)
        if self.inp.leave_one_out:
            s[torch.arange(r, device=s.device), qi] = -torch.inf
        vals, idx = torch.topk(s, kt, dim=1, sorted=True)
        return vals, idx

    def _canon(self, qi: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        c = canonical_similarity(self.inp.queries[qi], self.inp.gallery, idx)
        out = self.scorer.score_pairs(c, self.qs[qi], self.gs, idx)
        assert out is not None  # error_terms promised it
        return out

    def topk(
        self,
        qi: torch.Tensor,
        k: int,
        initial: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Exact top ``k`` of the queries ``qi`` (``initial``: their symmetric candidates)."""
        n_avail = int(self.inp.gallery.shape[0]) - int(self.inp.leave_one_out)
        return certified_topk(
            lambda rows, kt: self._search(qi[rows], kt),
            lambda rows, idx: self._canon(qi[rows], idx),
            int(qi.numel()), k, n_avail, self.tol[qi], initial=initial,
            max_rows=self.chunk, device=qi.device,
        )  # fmt: skip

    def symmetric_candidates(self, kk: int, chunk_size: int | None) -> Candidates:
        """Leave-one-out candidates of all rows by the (symmetric) score, each tile scored in
        place once for both of its row blocks."""
        g, st = self.inp.gallery, self.gs

        def tile_map(t: torch.Tensor, i0: int, j0: int) -> None:
            h, w = t.shape
            self.scorer.score_block_(t, st[i0 : i0 + h], st[j0 : j0 + w])

        block = chunk_size or _sym_block(g.device)
        v, i = symmetric_candidates(g, kk, block, tile_map=tile_map)
        return v, i, float(torch.finfo(g.dtype).eps)


def _scored_topk(inp: RetrievalInput, qi: torch.Tensor, k: int) -> torch.Tensor:
    """Exact top ``k`` gallery items of the queries ``qi`` by the scorer's score, for scorers
    without a rounding bound: the whole ``(B, Ng)`` block scored in float64, ordered by
    ``(-score, j)`` (the cosine tie rule), the query itself excluded in leave-one-out mode. A
    scorer that normalises the gallery side can reorder neighbours, so cosine candidates are
    not used."""
    assert inp.scorer is not None and inp.query_state is not None
    assert inp.gallery_state is not None
    q = inp.queries.index_select(0, qi).to(torch.float64)
    cos = q @ inp.gallery.to(torch.float64).T
    rows = qi.cpu().numpy()
    s = inp.scorer.score_block_(cos, inp.query_state[rows], inp.gallery_state)
    if inp.leave_one_out:
        s[torch.arange(s.shape[0], device=s.device), qi] = -torch.inf
    n = int(s.shape[1])
    kk = min(k + 8, n)
    vals, cand = torch.topk(s, kk, dim=1, sorted=True)
    # rows whose k-th score beats the kk-th strictly have their exact top k among the
    # candidates; order those by (-score, j), the rest by a stable sort of the whole row
    sure = (
        vals[:, k - 1] > vals[:, kk - 1]
        if kk > k
        else torch.ones_like(vals[:, 0], dtype=torch.bool)
    )
    cand, _ = torch.sort(cand, dim=1)  # ascending j, then a stable sort by score keeps it
    cs = torch.gather(s, 1, cand)
    out = torch.gather(cand, 1, torch.sort(-cs, dim=1, stable=True).indices)[:, :k]
    redo = torch.nonzero(~sure).squeeze(1)
    if redo.numel():  # ties across the candidate boundary: the whole row, exactly
        out[redo] = torch.sort(-s[redo], dim=1, stable=True).indices[:, :k]
    return out


def _chunk_scores(
    nn_codes: torch.Tensor,
    q_codes: torch.Tensor,
    r: torch.Tensor,
    ks: tuple[int, ...],
    width: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vectorised metrics for ``B`` queries from their ``(B, k)`` neighbour label codes.

    ``rel = nn_codes == q_codes[:, None]`` (padded with ``False`` to ``width >= k`` columns so
    that every chunk sums over the same width); hits ``(B, len(ks))``; MAP@R and R-precision
    ``(B,)`` float64 via a cumulative sum over ``rel`` restricted to the first ``R`` columns.
    """
    rel = nn_codes == q_codes[:, None]  # (B, k)
    if rel.shape[1] < width:
        rel = torch.nn.functional.pad(rel, (0, width - rel.shape[1]), value=False)
    k = rel.shape[1]
    cols = torch.arange(1, k + 1, device=rel.device)
    rel_r = rel & (cols[None, :] <= r[:, None])  # relevant and within the first R
    r64 = r.to(torch.float64)
    r_prec = rel_r.sum(dim=1).to(torch.float64) / r64
    prec = rel.cumsum(dim=1).to(torch.float64) / cols.to(torch.float64)  # P(i)
    ap = (prec * rel_r).sum(dim=1) / r64
    hits = torch.stack([rel[:, : min(kk, k)].any(dim=1) for kk in ks], dim=1)
    return hits, ap, r_prec


def merge_per_query(parts: Sequence[PerQueryRetrieval]) -> RetrievalMetrics:
    """Combine per-query results of disjoint query subsets into :class:`RetrievalMetrics`.

    Parts are re-ordered by query index first, so any split gives bit-identical means.

    Raises:
        ValueError: no parts, parts from different settings (ks, gallery), overlapping query
            subsets, or no query with ``R >= 1``.
    """
    if len(parts) == 0:
        raise ValueError("merge_per_query needs at least one PerQueryRetrieval part")
    first = parts[0]
    for p in parts[1:]:
        if (p.ks, p.num_gallery, p.leave_one_out) != (
            first.ks,
            first.num_gallery,
            first.leave_one_out,
        ):
            raise ValueError(
                "parts were computed with different settings: "
                f"{(p.ks, p.num_gallery, p.leave_one_out)} vs "
                f"{(first.ks, first.num_gallery, first.leave_one_out)}"
            )
    qidx = np.concatenate([p.query_indices for p in parts])
    order = np.argsort(qidx, kind="stable")
    qidx = qidx[order]
    if qidx.size > 1 and bool(np.any(qidx[1:] == qidx[:-1])):
        dup = int(qidx[1:][qidx[1:] == qidx[:-1]][0])
        raise ValueError(f"query subsets overlap: query index {dup} appears twice")
    labels = np.concatenate([p.labels for p in parts])[order]
    r = np.concatenate([p.r for p in parts])[order]
    hits = np.concatenate([p.hits for p in parts])[order]
    ap = np.concatenate([p.map_at_r for p in parts])[order]
    rp = np.concatenate([p.r_precision for p in parts])[order]

    valid = r > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError(
            f"no valid query: none of the {r.size} queries has a gallery item with its label "
            "(R = 0 for all)"
        )
    hits_v, ap_v, rp_v = hits[valid], ap[valid], rp[valid]
    recall = {k: float(hits_v[:, j].mean()) for j, k in enumerate(first.ks)}
    classes, codes = np.unique(labels[valid], return_inverse=True)
    codes = codes.reshape(-1)
    nc = classes.shape[0]
    per_n = np.bincount(codes, minlength=nc)
    r1 = hits_v[:, 0] if first.ks[0] == 1 else None
    per_class = PerClassRetrieval(
        classes=classes,
        num_queries=per_n.astype(np.int64),
        recall_at_1=(
            np.bincount(codes, weights=r1.astype(np.float64), minlength=nc) / per_n
            if r1 is not None
            else np.full(nc, np.nan)
        ),
        map_at_r=np.bincount(codes, weights=ap_v, minlength=nc) / per_n,
        r_precision=np.bincount(codes, weights=rp_v, minlength=nc) / per_n,
    )
    return RetrievalMetrics(
        recall_at_k=recall,
        map_at_r=float(ap_v.mean()),
        r_precision=float(rp_v.mean()),
        per_class=per_class,
        num_queries=n_valid,
        num_excluded_queries=int(r.size - n_valid),
        num_gallery=first.num_gallery,
        leave_one_out=first.leave_one_out,
        backend=first.backend,
    )


def retrieval_metrics(
    query_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_emb: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ks: int | Sequence[int] = (1, 2, 4, 8),
    backend: Backend = "auto",
    chunk_size: int | None = None,
    *,
    scorer: Scorer | None = None,
) -> RetrievalMetrics:
    """Exact Recall@k, MAP@R and R-precision of a query set against a gallery.

    Args:
        query_emb: ``(Nq, D)`` float embeddings (NumPy or torch, CPU/CUDA); L2-normalised here.
        query_labels: ``(Nq,)`` labels: integers of any width or strings (never cast to float).
        gallery_emb: ``(Ng, D)`` gallery embeddings, or ``None`` for leave-one-out on the query
            set (each query's own row is excluded by index, not by similarity value).
        gallery_labels: ``(Ng,)`` gallery labels (required with ``gallery_emb``).
        ks: the ``k`` of Recall@k (positive ints). Per-class R@1 is filled only if 1 is in ``ks``.
        backend: ``"torch"`` (chunked matmul + topk, any device), ``"faiss"`` (``IndexFlatIP``,
            float32 CPU) or ``"auto"`` (torch). Both give identical results.
        chunk_size: queries per block; ``None`` picks it so the ``(B, Ng)`` similarity block
            is ~64 MiB (CPU) / 512 MiB (CUDA).
        scorer: a fitted :class:`~tcm.scoring.Scorer`: neighbours are ranked exactly by its
            float64 score of the canonical cosine (no cosine candidates, since a scorer that
            normalises the gallery side can reorder them; with a rounding bound, e.g. AS-norm,
            by certified candidates of scores in the embeddings' dtype, see
            :class:`_ScoredRanker`; else every ``(B, Ng)`` block scored in float64).
            ``None`` / ``Cosine``: cosine similarity.

    Returns:
        :class:`RetrievalMetrics`; similarities are cosine similarities, ranked descending,
        ties broken by ascending gallery index.

    Raises:
        ValueError: shape/length mismatch, NaN/inf or all-zero embeddings, empty input, bad
            ``ks``/``chunk_size``, unknown backend, or no query with ``R >= 1``.

    Example:
        >>> emb = [[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]]
        >>> m = retrieval_metrics(emb, ["a", "b", "a", "b"], ks=(1, 2))
        >>> m.recall_at_k, m.r_precision
        ({1: 0.0, 2: 0.5}, 0.0)
    """
    if scorer is None or scorer.kind == "cosine":
        part = retrieval_per_query(
            query_emb, query_labels, gallery_emb, gallery_labels, ks, backend, chunk_size
        )
        return merge_per_query([part])
    _check_ks(ks)
    _check_chunk_size(chunk_size)
    inp = with_scorer(
        prepare_retrieval(query_emb, query_labels, gallery_emb, gallery_labels, backend), scorer
    )
    return merge_per_query([retrieval_per_query_of(inp, ks, backend, chunk_size)])


def with_scorer(inp: RetrievalInput, scorer: Scorer | None) -> RetrievalInput:
    """``inp`` ranked by ``scorer`` (its state prepared once per side); ``None`` / ``Cosine``:
    ``inp`` itself. Raises ValueError for a scorer fitted on another dimension."""
    if scorer is None or scorer.kind == "cosine":
        return inp
    from dataclasses import replace

    scorer.check_compatible(int(inp.queries.shape[1]))
    qs = scorer.prepare(inp.queries)
    gs = qs if inp.leave_one_out else scorer.prepare(inp.gallery)
    return replace(inp, scorer=scorer, query_state=qs, gallery_state=gs)


def shard_query_indices(num_queries: int, rank: int, world_size: int) -> np.ndarray:
    """Contiguous, balanced split of ``range(num_queries)``: the indices of shard ``rank``.

    Example:
        >>> shard_query_indices(5, 1, 2).tolist()
        [2, 3, 4]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size; got rank={rank}, world_size={world_size}")
    if num_queries < 0:
        raise ValueError(f"num_queries must be >= 0; got {num_queries}")
    bounds = (np.arange(world_size + 1, dtype=np.int64) * num_queries) // world_size
    return np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)


def distributed_retrieval_metrics(
    query_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_emb: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ks: int | Sequence[int] = (1, 2, 4, 8),
    backend: Backend = "auto",
    chunk_size: int | None = None,
) -> RetrievalMetrics:
    """:func:`retrieval_metrics` with the queries split across ``torch.distributed`` ranks.

    Every rank passes the same full query/gallery sets, evaluates its shard
    (:func:`shard_query_indices`), and the per-query parts are all-gathered; every rank returns
    the same result, equal to the single-process one. In leave-one-out mode the symmetric
    candidate tiles are split over the ranks too (``retrieval_per_query(comm=...)``). Without a
    process group of more than one rank this is :func:`retrieval_metrics`.
    """
    from tcm.metrics.distributed import default_communicator

    comm = default_communicator()
    _check_ks(ks)
    _check_chunk_size(chunk_size)
    inp = prepare_retrieval(query_emb, query_labels, gallery_emb, gallery_labels, backend)
    return retrieval_metrics_of(inp, ks, backend, chunk_size, comm)


def retrieval_metrics_of(
    inp: RetrievalInput,
    ks: int | Sequence[int] = (1, 2, 4, 8),
    backend: Backend = "auto",
    chunk_size: int | None = None,
    comm: Communicator | None = None,
) -> RetrievalMetrics:
    """:func:`retrieval_metrics` (``comm=None``) or :func:`distributed_retrieval_metrics` (the
    queries split over the shards of ``comm``, every shard gets the merged result) of an
    already prepared input."""
    if comm is None:
        return merge_per_query([retrieval_per_query_of(inp, ks, backend, chunk_size)])
    import torch.distributed as dist

    from tcm._distributed import collective

    shard = shard_query_indices(int(inp.queries.shape[0]), comm.rank, comm.world)
    part = retrieval_per_query_of(inp, ks, backend, chunk_size, query_indices=shard, comm=comm)
    parts: list[Any] = [None] * comm.world
    with collective("all_gather_object"):
        dist.all_gather_object(parts, part)
    return merge_per_query(parts)
