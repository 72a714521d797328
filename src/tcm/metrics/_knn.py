"""Exact k-nearest-neighbour search by cosine similarity with a deterministic tie rule (private).

Rows of ``q`` (shape ``(B, D)``) and ``g`` (shape ``(N, D)``) are already L2-normalised, so the
inner product is the cosine **similarity** ``s(i, j) = <q_i, g_j>`` in ``[-1, 1]``
(higher = closer).

Tie rule (identical for every backend): neighbours are ordered by the key ``(-s64, j)``, i.e. by
decreasing *canonical* similarity ``s64`` and, among equal similarities, by increasing gallery
index ``j``. ``s64`` is the float64 dot product of the normalised vectors, computed elementwise
(multiply, then sum over ``D``) so that a given pair always gets the same value whatever backend
or batch produced the candidate.

Exactness: a backend (torch matmul or faiss ``IndexFlatIP``) returns ``kk = k + extra`` candidates
by its own, rounded, scores. Every inner product of unit vectors computed in precision ``u`` is
within ``err <= (D + 2) u`` of ``s64``; if the backend's ``k``-th score exceeds its ``kk``-th by
more than ``tol = 2 err``, no item outside the candidates can belong to the exact top ``k``.
Rows that fail the test are searched again with ``kk`` doubled (up to the whole gallery), so
the returned top ``k`` is always exactly the first ``k`` items of the gallery sorted by
``(-s64, j)``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np
import torch

from tcm.metrics._progress import stage, tile_pairs
from tcm.metrics._threads import run_single_threaded

__all__ = [
    "FaissSearcher",
    "Searcher",
    "TorchSearcher",
    "certified_topk",
    "exact_topk",
    "faiss_available",
    "symmetric_candidates",
]

BackendName = Literal["torch", "faiss"]

# Elements (B * m * D) of the float64 gather used for canonical similarities per sub-batch.
_CANON_ELEMS = 1 << 22


def faiss_available() -> bool:
    """Return ``True`` when the optional ``faiss`` package can be imported."""
    return importlib.util.find_spec("faiss") is not None


class Searcher(Protocol):
    """Top-``k`` search over a fixed gallery by (possibly rounded) inner product."""

    name: BackendName
    unit_roundoff: float

    def search(
        self, q: torch.Tensor, k: int, self_idx: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(scores, indices)`` of shape ``(B, k)``, scores descending, self excluded."""
        ...


class TorchSearcher:
    """Dense ``q @ g.T`` followed by ``torch.topk`` (CPU or CUDA, dtype of ``g``)."""

    name: BackendName = "torch"

    def __init__(self, g: torch.Tensor) -> None:
        self.g = g
        self.unit_roundoff = float(torch.finfo(g.dtype).eps)

    def search(
        self, q: torch.Tensor, k: int, self_idx: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = q @ self.g.T  # (B, N) cosine similarities
        if self_idx is not None:
            s[torch.arange(q.shape[0], device=q.device), self_idx] = -torch.inf
        vals, idx = torch.topk(s, k, dim=1, largest=True, sorted=True)
        return vals, idx


class FaissSearcher:
    """faiss ``IndexFlatIP`` (exact, float32, CPU); results are moved to the device of ``q``."""

    name: BackendName = "faiss"

    def __init__(self, g: torch.Tensor) -> None:
        import faiss

        gn = np.ascontiguousarray(g.detach().to("cpu", torch.float32).numpy())
        self.index: Any = faiss.IndexFlatIP(gn.shape[1])
        self.index.add(gn)
        self.n = gn.shape[0]
        # float32 scores, plus rounding of float64 inputs to float32.
        self.unit_roundoff = 2.0 * float(np.finfo(np.float32).eps)

    def search(
        self, q: torch.Tensor, k: int, self_idx: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qn = np.ascontiguousarray(q.detach().to("cpu", torch.float32).numpy())
        loo = self_idx is not None
        dist, ind = self.index.search(qn, k + int(loo))
        if loo:
            assert self_idx is not None
            own = self_idx.detach().cpu().numpy()
            keep = ind != own[:, None]
            # rows that did not retrieve themselves drop their last (lowest) candidate instead
            keep[keep.all(axis=1), -1] = False
            dist = dist[keep].reshape(qn.shape[0], k)
            ind = ind[keep].reshape(qn.shape[0], k)
        return (
            torch.from_numpy(dist).to(q.device),
            torch.from_numpy(ind.astype(np.int64)).to(q.device),
        )


def canonical_similarity(q: torch.Tensor, g: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Float64 similarities ``s64[b, m] = sum_d q[b, d] * g[idx[b, m], d]``, shape ``(B, M)``.

    Computed elementwise so the value of a pair does not depend on the batch it is computed in.
    """
    b, m = idx.shape
    d = q.shape[1]
    out = torch.empty((b, m), dtype=torch.float64, device=q.device)
    step = max(1, _CANON_ELEMS // max(1, m * d))
    for lo in range(0, b, step):
        hi = min(b, lo + step)
        gg = g[idx[lo:hi]].to(torch.float64)  # (b', M, D)
        out[lo:hi] = (gg * q[lo:hi, None, :].to(torch.float64)).sum(dim=-1)
    return out


Canon = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``canon(rows, idx)``: the exact float64 ranking scores ``(R, M)`` of the query rows ``rows``
(positions in the batch) against the gallery items ``idx`` ``(R, M)``."""
Search = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
"""``search(rows, kt)``: the top ``kt`` ``(scores, indices)`` of the query rows ``rows`` by the
backend's rounded scores, descending, self excluded."""


def _order(canon: Canon, rows: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    """Sort candidate rows by ``(-canonical score, index)`` and keep the first ``k``."""
    idx_sorted, _ = torch.sort(idx, dim=1)
    s = canon(rows, idx_sorted)
    _, perm = torch.sort(s, dim=1, descending=True, stable=True)
    return idx_sorted.gather(1, perm)[:, :k]


def _settle(
    out: torch.Tensor,
    rows: torch.Tensor,
    canon: Canon,
    vals: torch.Tensor,
    idx: torch.Tensor,
    k: int,
    complete: bool,
    tol: float | torch.Tensor,
) -> torch.Tensor:
    """Write the exact top-``k`` of the certified rows into ``out[rows]``; return the ok mask.

    ``vals``/``idx`` (``(R, kk)``, scores descending) are the candidates of the query rows
    ``rows``; ``complete``: they hold the whole gallery (nothing can be missing). ``tol``: twice
    the error bound of the scores, one for all rows or per row of the batch (``tol[rows]``).
    """
    kk = vals.shape[1]
    t = tol if isinstance(tol, float) else tol[rows]
    if complete:
        ok = torch.ones(rows.numel(), dtype=torch.bool, device=out.device)
    else:
        ok = (vals[:, k - 1].double() - vals[:, kk - 1].double()) > t
    if bool(ok.any()):
        v, i = vals[ok], idx[ok]
        t_ok = t if isinstance(t, float) else t[ok][:, None]
        # rows whose first k + 1 scores are separated by more than tol are already in the
        # exact (-s64, j) order; only rows with near-ties are re-sorted canonically (float64)
        m = min(k + 1, kk)
        gaps = v[:, : m - 1].double() - v[:, 1:m].double()
        clear = (gaps > t_ok).all(dim=1)
        res = i[:, :k].clone()
        if not bool(clear.all()):
            res[~clear] = _order(canon, rows[ok][~clear], i[~clear], k)
        out[rows[ok]] = res
    return ok


def exact_topk(
    searcher: Searcher,
    q: torch.Tensor,
    g: torch.Tensor,
    k: int,
    self_idx: torch.Tensor | None,
    extra: int = 8,
    initial: tuple[torch.Tensor, torch.Tensor] | None = None,
    initial_unit_roundoff: float | None = None,
    max_rows: int | None = None,
) -> torch.Tensor:
    """Exact top-``k`` gallery indices for each query row, ordered by ``(-s64, index)``.

    Args:
        searcher: backend over ``g``.
        q: ``(B, D)`` unit-norm queries.
        g: ``(N, D)`` unit-norm gallery (same device as ``q``).
        k: neighbours wanted; ``1 <= k <= N - (self_idx is not None)``.
        self_idx: ``(B,)`` gallery index of each query to exclude (leave-one-out), or ``None``.
        extra: additional candidates fetched to certify the cut.
        initial: optional first-round ``(scores, indices)`` of shape ``(B, kk)`` (``kk >= k``,
            the top ``kk`` by those scores, descending, self excluded), e.g. from
            :func:`symmetric_candidates`.
        initial_unit_roundoff: unit roundoff of the ``initial`` scores (default: the
            searcher's), e.g. ``2 * eps(float32)`` for float32 scores of float64 inputs.
        max_rows: at most this many rows per ``searcher.search`` call (bounds the ``(rows, N)``
            block of the backend); ``None``: all rows at once.

    Returns:
        int64 tensor ``(B, k)`` of gallery indices.

    Example:
        >>> g = torch.eye(3)
        >>> exact_topk(TorchSearcher(g), g[:1], g, 2, torch.tensor([0])).tolist()
        [[1, 2]]
    """
    n_avail = g.shape[0] - int(self_idx is not None)
    u0 = searcher.unit_roundoff if initial_unit_roundoff is None else initial_unit_roundoff
    d2 = q.shape[1] + 2

    def search(rows: torch.Tensor, kt: int) -> tuple[torch.Tensor, torch.Tensor]:
        return searcher.search(q[rows], kt, None if self_idx is None else self_idx[rows])

    def canon(rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return canonical_similarity(q[rows], g, idx)

    tol0, tol = 2.0 * d2 * u0, 2.0 * d2 * searcher.unit_roundoff
    return certified_topk(
        search, canon, q.shape[0], k, n_avail, tol, extra, initial, tol0, max_rows, q.device
    )


def certified_topk(
    search: Search,
    canon: Canon,
    b: int,
    k: int,
    n_avail: int,
    tol: float | torch.Tensor,
    extra: int = 8,
    initial: tuple[torch.Tensor, torch.Tensor] | None = None,
    initial_tol: float | torch.Tensor | None = None,
    max_rows: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """The loop of :func:`exact_topk` for any rounded ``search`` and exact ``canon`` scores:
    the top ``k`` of ``b`` query rows by ``(-canon, index)``, ``(b, k)`` int64.

    ``tol`` (``initial_tol`` for ``initial``'s scores): twice the largest difference between a
    searched score and its canonical one, a float or a ``(b,)`` tensor (per row). A row whose
    ``k``-th searched score beats the last candidate's by more than ``tol`` holds its exact top
    ``k`` among the candidates; the others are searched again with twice the candidates (up to
    the whole gallery)."""
    if not 1 <= k <= n_avail:
        raise ValueError(f"k must be in [1, {n_avail}]; got {k}")
    out = torch.empty((b, k), dtype=torch.int64, device=device)
    rows = torch.arange(b, device=device)
    kk = min(k + extra, n_avail)
    if initial is not None:
        vals, idx = initial
        kk0 = vals.shape[1]
        if not k <= kk0 <= n_avail or vals.shape[0] != b:
            raise ValueError(f"initial candidates: need shape ({b}, kk), {k} <= kk <= {n_avail}")
        tol0 = tol if initial_tol is None else initial_tol
        ok = _settle(out, rows, canon, vals, idx, k, kk0 >= n_avail, tol0)
        rows = rows[~ok]
        kk = min(2 * kk0, n_avail)
    step = max(1, max_rows or rows.numel())
    for lo in range(0, rows.numel(), step):
        todo = rows[lo : lo + step]
        kt = kk
        while todo.numel() > 0:
            vals, idx = search(todo, kt)
            ok = _settle(out, todo, canon, vals, idx, k, kt >= n_avail, tol)
            todo = todo[~ok]
            kt = min(2 * kt, n_avail)
    return out


def _merge_lines(
    run_v: torch.Tensor,
    run_i: torch.Tensor,
    lo: int,
    tile: torch.Tensor,
    offset: int,
    by_column: bool,
) -> None:
    """Merge a contiguous similarity tile into the running top-``kk`` of rows ``lo .. lo + L``.

    ``by_column=False``: line ``l`` is row ``l`` of ``tile`` and column ``j`` is gallery item
    ``offset + j``; ``by_column=True``: line ``l`` is column ``l`` and row ``j`` is item
    ``offset + j``. Only entries above a line's current ``kk``-th best score can enter, so once a
    line has seen ``kk`` items one comparison pass selects the few candidates (no full top-k).
    """
    s = tile.T if by_column else tile
    lines, n = s.shape
    hi = lo + lines
    kk = run_v.shape[1]
    thr = run_v[lo:hi, -1]
    if bool(torch.isneginf(thr).any()):
        v, c = torch.topk(s, min(kk, n), dim=1, largest=True, sorted=False)
    else:
        if by_column:
            row, col = (tile > thr[None, :]).nonzero(as_tuple=True)
            order = torch.argsort(col, stable=True)
            r, c0 = col[order], row[order]
        else:
            r, c0 = (tile > thr[:, None]).nonzero(as_tuple=True)  # grouped by line
        if r.numel() == 0:
            return
        cnt = torch.bincount(r, minlength=lines)
        width = int(cnt.max())
        start = torch.cumsum(cnt, 0) - cnt
        slot = torch.arange(r.numel(), device=s.device) - start[r]
        v = torch.full((lines, width), -torch.inf, dtype=s.dtype, device=s.device)
        c = torch.zeros((lines, width), dtype=torch.int64, device=s.device)
        v[r, slot] = s[r, c0]
        c[r, slot] = c0
    cv = torch.cat([run_v[lo:hi], v], dim=1)
    ci = torch.cat([run_i[lo:hi], c + offset], dim=1)
    top_v, pos = torch.topk(cv, kk, dim=1, largest=True, sorted=True)
    run_v[lo:hi] = top_v
    run_i[lo:hi] = ci.gather(1, pos)


TileMap = Callable[[torch.Tensor, int, int], None]
"""``tile_map(tile, i0, j0)``: replace the cosine tile ``S[i0:, j0:]`` in place by symmetric
scores."""


def symmetric_candidates(
    x: torch.Tensor,
    kk: int,
    block: int,
    shard: tuple[int, int] = (0, 1),
    tile_map: TileMap | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out top-``kk`` candidates of every row of ``x`` against all other rows.

    With ``shard=(r, W)`` only the tiles ``t`` with ``t % W == r`` are visited; the row-wise
    top-``kk`` of the union of the shards' candidates (e.g. gathered over ``torch.distributed``)
    is then the unsharded result (up to ids of exact ties at the ``kk`` boundary). Rows without
    any visited tile keep score ``-inf`` (torch) / ``-FLT_MAX`` (faiss heaps).

    Uses the symmetry ``s(i, j) = s(j, i)``: each ``(block x block)`` tile ``X_I X_J^T`` with
    ``J >= I`` is computed once and feeds the running top-``kk`` of the rows of ``I`` (row-wise)
    and of ``J`` (column-wise), halving the matmul work of the leave-one-out case. Memory: one or
    two tiles plus ``(N, kk)`` running scores and indices.

    For a float32 CPU ``x`` with faiss installed, the running top-``kk`` are faiss min-heaps
    (one fused C++ comparison pass per tile and side, :func:`_symmetric_candidates_heap`);
    otherwise torch threshold-and-merge (:func:`_symmetric_candidates_torch`, any device/dtype).

    Returns:
        ``(scores, indices)`` of shape ``(N, kk)`` in ``x.dtype``, scores descending (the top
        ``kk`` by the computed scores), self excluded; ties at the cut are arbitrary (pass them
        as ``initial`` to :func:`exact_topk`).

    ``tile_map`` ranks by a symmetric score instead of the cosine: each tile is mapped in place
    right after its matmul (e.g. by a scorer's ``score_block_``).
    """
    n = x.shape[0]
    if not 1 <= kk <= n - 1:
        raise ValueError(f"kk must be in [1, {n - 1}]; got {kk}")
    if block < 1:
        raise ValueError(f"block must be >= 1; got {block}")
    if x.device.type == "cpu" and x.dtype == torch.float32 and faiss_available():
        return _symmetric_candidates_heap(x, kk, block, shard=shard, tile_map=tile_map)
    return _symmetric_candidates_torch(x, kk, block, shard=shard, tile_map=tile_map)


_THREADED_HEAP_BYTES = 256 << 20  # all workers' (N, kk) heaps together at most this large


def _symmetric_candidates_heap(
    x: torch.Tensor,
    kk: int,
    block: int,
    workers: int | None = None,
    shard: tuple[int, int] = (0, 1),
    tile_map: TileMap | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`symmetric_candidates` for float32 CPU ``x`` with faiss ``float_minheap_array_t``.

    Per tile ``S = X_I X_J^T`` (written into a reused buffer, no allocation): ``heaps.addn``
    pushes the rows of ``S`` into the heaps of ``I`` (ids ``J``), then ``S^T`` (copied into a
    second buffer) into the heaps of ``J``. A heap only does work for a score above its current
    minimum, so each side costs one comparison pass.

    With ``workers > 1`` (default: ``torch.get_num_threads()``) the tiles are dealt round-robin
    to that many Python threads, each running single-threaded matmul, transpose and heap
    updates into its own heaps (torch and faiss release the GIL), over tiles of ``block // 2``
    (if ``block >= 512``); the per-worker candidates are merged by one ``topk`` at the end. On
    2 cores this is ~25 % faster than one multi-threaded loop, whose transposed copy runs on
    one core. The candidate *values* are the same either way; ids of exactly tied scores at the
    ``kk`` boundary may differ, which the caller's exact ordering (with its ``+8`` margin) makes
    irrelevant.
    Memory: ``workers * (2 * tile**2 floats + (N, kk) scores and ids)``.
    """
    import faiss

    n = x.shape[0]
    xc = x.detach().contiguous()
    w = max(1, int(workers if workers is not None else torch.get_num_threads()))
    if n * kk * 12 * w > _THREADED_HEAP_BYTES:  # per-worker heaps would cost too much memory
        w = 1
    b = min(block // 2 if (w > 1 and block >= 512) else block, n)
    tiles = [(i0, j0) for i0 in range(0, n, b) for j0 in range(i0, n, b)]
    tiles = tiles[shard[0] :: shard[1]]
    w = max(1, min(w, len(tiles)))
    sizes = [tile_pairs(i0, min(i0 + b, n), j0, min(j0 + b, n)) for i0, j0 in tiles]

    def work(widx: int) -> tuple[np.ndarray, np.ndarray]:
        vals = np.empty((n, kk), dtype=np.float32)
        ids = np.empty((n, kk), dtype=np.int64)
        heaps: Any = faiss.float_minheap_array_t()
        heaps.k = kk
        heaps.nh = n
        heaps.val = faiss.swig_ptr(vals)
        heaps.ids = faiss.swig_ptr(ids)
        heaps.heapify()  # all slots = -FLT_MAX; -inf (self) never enters
        buf = torch.empty(b * b, dtype=torch.float32)
        buf_t = torch.empty(b * min(b, max(0, n - b)), dtype=torch.float32)
        for t, (i0, j0) in enumerate(tiles):
            if t % w != widx:
                continue
            bi, bj = min(b, n - i0), min(b, n - j0)
            s = buf[: bi * bj].view(bi, bj)
            torch.mm(xc[i0 : i0 + bi], xc[j0 : j0 + bj].T, out=s)
            if tile_map is not None:
                tile_map(s, i0, j0)
            if j0 == i0:
                s.fill_diagonal_(-torch.inf)
            heaps.addn(bj, faiss.swig_ptr(s.numpy()), j0, i0, bi)
            if j0 != i0:
                st = buf_t[: bi * bj].view(bj, bi)
                st.copy_(s.T)
                heaps.addn(bi, faiss.swig_ptr(st.numpy()), i0, j0, bj)
            tick(sizes[t])
        if w == 1:
            heaps.reorder()  # each row sorted by decreasing score
        return vals, ids

    with stage("kNN", sum(sizes)) as tick:
        done = run_single_threaded(w, work, setup=lambda: faiss.omp_set_num_threads(1))
    if w == 1:
        return torch.from_numpy(done[0][0]), torch.from_numpy(done[0][1])
    v = torch.from_numpy(np.concatenate([st[0] for st in done], axis=1))
    i = torch.from_numpy(np.concatenate([st[1] for st in done], axis=1))
    top = torch.topk(v, kk, dim=1, sorted=True)
    return top.values, torch.gather(i, 1, top.indices)


def _symmetric_candidates_torch(
    x: torch.Tensor,
    kk: int,
    block: int,
    shard: tuple[int, int] = (0, 1),
    tile_map: TileMap | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`symmetric_candidates` in torch (any device and float dtype)."""
    n = x.shape[0]
    run_v = torch.full((n, kk), -torch.inf, dtype=x.dtype, device=x.device)
    run_i = torch.zeros((n, kk), dtype=torch.int64, device=x.device)
    starts = range(0, n, block)
    # diagonal tiles first: afterwards every row has a finite running threshold, so all
    # off-diagonal tiles take the cheap comparison path
    pairs = [(i0, i0) for i0 in starts] + [(i0, j0) for i0 in starts for j0 in starts if j0 > i0]
    mine = pairs[shard[0] :: shard[1]]
    sizes = [tile_pairs(i0, min(i0 + block, n), j0, min(j0 + block, n)) for i0, j0 in mine]
    with stage("kNN", sum(sizes)) as tick:
        for (i0, j0), size in zip(mine, sizes, strict=True):
            s = x[i0 : i0 + block] @ x[j0 : j0 + block].T  # (bi, bj) cosine similarities
            if tile_map is not None:
                tile_map(s, i0, j0)
            if j0 == i0:
                s.fill_diagonal_(-torch.inf)
            _merge_lines(run_v, run_i, i0, s, j0, by_column=False)
            if j0 != i0:
                _merge_lines(run_v, run_i, j0, s, i0, by_column=True)
            tick(size)
    return run_v, run_i
