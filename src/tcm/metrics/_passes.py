"""Full passes over all pairs producing small, mergeable states (private to ``tcm.metrics``).

Every pass takes ``shard=(shard_index, num_shards)``; the states of all shards combined (counts
add, collected values concatenate) equal the state of one unsharded pass.

* :func:`tail_pass` - exact order statistics of the negative-pair similarities: for brackets
  ``[lo_q, hi_q]`` it counts negatives ``> hi_q`` and collects those inside the bracket.
* :func:`sweep` - per-class counts of accepted pairs on the union of threshold grids
  (:class:`CountState`), optionally the positive / negative similarity histograms over fixed
  bins (:class:`HistState`) and per-(class, group) counts (:class:`GroupState`), in one pass.
* :func:`negative_quantiles` - exact ``np.quantile(neg_sims, q)`` (linear) without ever holding
  all negatives, via a sampled bracket and one exact :func:`tail_pass`.

Exactness: similarities are those of the block matmul in the embeddings' dtype; every
comparison with a float64 bound ``t`` is exact because it is made against the nearest
representable value on the right side (``s >= t`` iff ``s >= ceil_to_dtype(t)``, ``s <= t`` iff
``s <= floor_to_dtype(t)``), so no similarity is ever converted to float64 except the few
collected in quantile brackets.

On CPU the per-block work is done with NumPy on the block buffer, in the worker threads of
:func:`~tcm.metrics._pairs.map_blocks`: one compare and one index scan over the block, then
only its tail (the ~10% of pairs at or above the lowest bound) is touched, with work arrays
reused from block to block (:class:`Scratch`). :func:`sweep` buckets the tail against the
threshold grid arithmetically plus one exact correcting comparison (:class:`Buckets`) and counts
both classes of every pair with a single small ``bincount`` per block. On other devices the
passes use torch ops; every pass takes ``backend=`` (:data:`PassBackend`: ``"torch"`` runs that
code on the CPU too, e.g. to test it against the NumPy code).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch

from tcm._validation import ceil_to_dtype
from tcm.metrics._pairs import (
    Block,
    Prepared,
    flatnonzero,
    iter_blocks,
    map_blocks,
    mask_buffer,
    sample_negative_similarities,
)

__all__ = [
    "PASS_BACKENDS",
    "Buckets",
    "CountState",
    "GroupSpec",
    "GroupState",
    "HistState",
    "MultiBuckets",
    "PassBackend",
    "Scratch",
    "Sweep",
    "TailState",
    "bucketize",
    "ceil_to_dtype",
    "floor_to_dtype",
    "lerp",
    "multi_bucketize",
    "negative_quantiles",
    "numpy_path",
    "quantile_index",
    "score_range",
    "sweep",
    "tail_pass",
]

PassBackend = Literal["auto", "numpy", "torch"]
"""The per-block code of a pass: ``"numpy"`` (CPU only), ``"torch"`` (any device; the code run
on CUDA) or ``"auto"`` (NumPy on CPU, torch elsewhere). Results are identical."""
PASS_BACKENDS: tuple[str, ...] = ("auto", "numpy", "torch")

MIN_SAMPLE_SIZE = 100_000
"""Smallest sample :func:`negative_quantiles` draws to bracket a quantile (unless capped by the
caller's ``sample_size``)."""


def floor_to_dtype(t: float, dtype: torch.dtype) -> float:
    """Largest value representable in ``dtype`` that is ``<= t`` (``t`` may be +-inf).

    For ``s`` of that dtype, ``s >= floor_to_dtype(t)`` keeps every ``s >= t`` (a safe
    pre-filter) and ``s <= floor_to_dtype(t)`` iff ``s <= t``.
    """
    if math.isinf(t) or dtype == torch.float64:
        return t
    v = torch.tensor(t, dtype=torch.float64).to(dtype)
    if float(v) > t:
        v = torch.nextafter(v, torch.tensor(float("-inf"), dtype=dtype))
    return float(v)


def _np_dtype(dtype: torch.dtype) -> type[np.floating]:
    return np.float64 if dtype == torch.float64 else np.float32


def numpy_path(prep: Prepared, backend: PassBackend = "auto") -> bool:
    """Whether the passes over ``prep`` run the NumPy per-block code (else the torch code).

    Raises:
        ValueError: an unknown ``backend``, or ``"numpy"`` for embeddings not on the CPU.
    """
    if backend not in PASS_BACKENDS:
        raise ValueError(f"backend must be one of {PASS_BACKENDS}; got {backend!r}")
    on_cpu = prep.x.device.type == "cpu"
    if backend == "numpy" and not on_cpu:
        raise ValueError(f"backend='numpy' needs embeddings on the CPU; got {prep.x.device}")
    return on_cpu and backend != "torch"


def quantile_index(m: int, q: float) -> tuple[int, int, float]:
    """NumPy's linear quantile position among ``m`` sorted values.

    Returns ``(i, i_next, gamma)`` with virtual index ``h = (m - 1) q``, ``i = floor(h)``,
    ``i_next = min(i + 1, m - 1)``, ``gamma = h - i``; the quantile is
    ``lerp(x[i], x[i_next], gamma)`` over the ascending values ``x``.
    """
    h = (m - 1) * q
    i = math.floor(h)
    gamma = h - i
    i = min(max(i, 0), m - 1)
    return i, min(i + 1, m - 1), gamma


def lerp(a: float, b: float, t: float) -> float:
    """Linear interpolation with NumPy's formula: ``a + (b - a) t``, or ``b - (b - a)(1 - t)``
    when ``t >= 0.5`` (so that results match ``np.quantile`` bit for bit)."""
    d = b - a
    return b - d * (1.0 - t) if t >= 0.5 else a + d * t


# ----------------------------------------------------------------------------- tail pass


@dataclass
class TailState:
    """Bracket counts of the negative similarities (mergeable).

    Attributes:
        lo, hi: ``(Q,)`` float64 bracket bounds (``-inf`` / ``+inf`` allowed).
        num_above: ``(Q,)`` int64 number of negative pairs with ``s > hi[q]``.
        values: ``Q`` arrays of the negative similarities with ``lo[q] <= s <= hi[q]``
            (unsorted; in the similarities' dtype, so exact).
    """

    lo: np.ndarray
    hi: np.ndarray
    num_above: np.ndarray
    values: list[np.ndarray] = field(default_factory=list)


def tail_pass(
    prep: Prepared,
    lo: Sequence[float] | np.ndarray,
    hi: Sequence[float] | np.ndarray,
    block_size: int,
    shard: tuple[int, int] = (0, 1),
    *,
    backend: PassBackend = "auto",
) -> TailState:
    """One pass over the negative pairs: per bracket ``q`` count ``s > hi[q]`` and collect
    ``lo[q] <= s <= hi[q]`` (exact comparisons, see the module docstring). Each block is first
    cut to its tail ``s >= min(lo)``; the brackets are then applied to that tail."""
    lo_a = np.asarray(lo, dtype=np.float64)
    hi_a = np.asarray(hi, dtype=np.float64)
    nq = lo_a.shape[0]
    dtype = prep.x.dtype
    lo_c = [ceil_to_dtype(float(v), dtype) for v in lo_a]
    hi_f = [floor_to_dtype(float(v), dtype) for v in hi_a]
    cut = min(lo_c, default=math.inf)
    use_numpy = numpy_path(prep, backend)
    tiny = float(torch.finfo(dtype).min)

    def work(blocks: Iterator[Block]) -> tuple[np.ndarray, list[list[np.ndarray]]]:
        above = np.zeros(nq, dtype=np.int64)
        chunks: list[list[np.ndarray]] = [[] for _ in range(nq)]
        mbuf = mask_buffer(prep, block_size) if use_numpy else None
        tbuf = mask_buffer(prep, block_size)
        sc = Scratch(_np_dtype(dtype))
        for blk in blocks:
            if mbuf is not None:
                idx = blk.negative_indices(cut, mbuf)
                sc.ensure(idx.shape[0])
                v = sc.tail[: idx.shape[0]]
                np.take(blk.sims.numpy().reshape(-1), idx, out=v, mode="clip")
            else:
                s = blk.mask_non_negatives_()
                v = s[s >= max(cut, tiny)].cpu().numpy()  # never the -inf of non-negatives
            t = v.shape[0]
            for q in range(nq):
                if hi_f[q] == math.inf:  # unbounded above: everything >= lo
                    chunks[q].append(v.copy() if lo_c[q] <= cut else v[v >= lo_c[q]])
                    continue
                # the bands are a small part of the tail: select them by index (fast when
                # sparse) rather than compressing the whole tail
                m = tbuf[:t]
                np.less_equal(v, hi_f[q], out=m)
                above[q] += t - int(np.count_nonzero(m))
                if lo_c[q] > cut:
                    m &= v >= lo_c[q]
                chunks[q].append(v[flatnonzero(tbuf, t)])
        return above, chunks

    parts = map_blocks(prep, block_size, shard, work, desc="pairs: FAR quantiles")
    values = [
        np.concatenate([c for _, ch in parts for c in ch[q]])
        if any(ch[q] for _, ch in parts)
        else np.empty(0, dtype=_np_dtype(dtype))
        for q in range(nq)
    ]
    num_above = np.asarray(np.sum([a for a, _ in parts], axis=0, dtype=np.int64)).reshape(nq)
    return TailState(lo=lo_a, hi=hi_a, num_above=num_above, values=values)


def negative_quantiles(
    prep: Prepared,
    qs: Sequence[float],
    block_size: int,
    *,
    exact_cutoff: int = 20_000_000,
    sample_size: int = 2_000_000,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    merge: Callable[[TailState], TailState] | None = None,
    backend: PassBackend = "auto",
) -> np.ndarray:
    """Exact ``np.quantile(neg_sims, qs)`` (linear interpolation), returned as float64 ``(Q,)``.

    Sharded use: every shard calls this with the same arguments and its own ``shard``; ``merge``
    combines the shards' :class:`TailState` (sum of counts, concatenation of the collected
    values; e.g. over ``torch.distributed``) and must return the same merged state everywhere.

    If the number of negative pairs ``M <= exact_cutoff`` all negatives are collected. Otherwise
    a bracket around each quantile is estimated from ``min(sample_size, max(100_000, M // 5000))``
    uniformly sampled negative pairs (rank +- 6 standard deviations of the sample quantile), and
    one exact :func:`tail_pass` finds the order statistics inside it. A bracket that misses its
    rank is widened (to unbounded on that side) and the pass repeated, so the result is always
    exact. (The sample is capped relative to ``M`` because drawing it costs about 0.5 us per
    pair, a lot next to a pass at small ``M``; a wider bracket only means more collected values.)
    ``backend``: the per-block code (:data:`PassBackend`).
    """
    m = prep.num_negative_pairs
    pos = [quantile_index(m, float(q)) for q in qs]
    nq = len(pos)
    inf = float("inf")
    lo = np.full(nq, -inf)
    hi = np.full(nq, inf)
    if m > exact_cutoff:
        num = min(sample_size, max(MIN_SAMPLE_SIZE, m // 5000))
        sample_np = np.sort(sample_negative_similarities(prep, num, seed).cpu().numpy())
        r = sample_np.shape[0]
        for k, q in enumerate(qs):
            center = float(q) * (r - 1)
            half = 6.0 * math.sqrt(r * float(q) * (1.0 - float(q))) + 8.0
            i_lo = math.floor(center - half)
            i_hi = math.ceil(center + half)
            lo[k] = sample_np[i_lo] if i_lo >= 0 else -inf
            hi[k] = sample_np[i_hi] if i_hi < r else inf
    out = np.empty(nq, dtype=np.float64)
    todo = list(range(nq))
    while todo:
        # identical brackets (e.g. all unbounded on the exact path) are evaluated once
        keys = sorted({(float(lo[k]), float(hi[k])) for k in todo})
        st = tail_pass(
            prep, [a for a, _ in keys], [b for _, b in keys], block_size, shard, backend=backend
        )
        if merge is not None:
            st = merge(st)
        retry: list[int] = []
        for k in todo:
            slot = keys.index((float(lo[k]), float(hi[k])))
            i, i_next, gamma = pos[k]
            raw = st.values[slot]
            below = m - int(st.num_above[slot]) - raw.shape[0]
            ranks = [r - below for r in (i, i_next) if 0 <= r - below < raw.shape[0]]
            vals = np.partition(raw, ranks) if ranks else raw
            ok = True
            if i < below:
                lo[k], ok = -inf, False
            if i_next >= below + vals.shape[0]:
                hi[k], ok = inf, False
            if ok:
                out[k] = lerp(float(vals[i - below]), float(vals[i_next - below]), gamma)
            else:
                retry.append(k)
        todo = retry
    return out


# ----------------------------------------------------------------------------- score range


def score_range(
    prep: Prepared, block_size: int, shard: tuple[int, int] = (0, 1)
) -> tuple[float, float]:
    """``(min, max)`` of the values of all pairs of ``shard`` (positive and negative; ``(inf,
    -inf)`` for none): the edges of a histogram of scores that have no fixed range."""

    def work(blocks: Iterator[Block]) -> tuple[float, float]:
        lo, hi = math.inf, -math.inf
        for blk in blocks:
            if blk.pos_sims.numel():
                lo = min(lo, float(blk.pos_sims.min()))
                hi = max(hi, float(blk.pos_sims.max()))
            s = blk.mask_non_negatives_()
            if not s.numel():
                continue
            b_lo, b_hi = torch.aminmax(s)
            if float(b_lo) == -math.inf:  # masked entries: the min of the others (a copy)
                v = s[s > -math.inf]
                if not v.numel():
                    continue
                b_lo = v.min()
            lo, hi = min(lo, float(b_lo)), max(hi, float(b_hi))
        return lo, hi

    parts = map_blocks(prep, block_size, shard, work, desc="pairs: score range")
    return min(p[0] for p in parts), max(p[1] for p in parts)


# ----------------------------------------------------------------------------- count sweep


def bucketize(th: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``searchsorted(th, v, right=True)`` = ``#{k : th[k] <= v}`` for float64 ``v`` (torch).

    ``th`` is a non-decreasing grid; when it is (numerically) uniform the bucket is computed
    arithmetically and then corrected by exact comparisons with ``th`` (two rounds each way, the
    estimate is off by at most one), which is much cheaper than a binary search. "Uniform" is
    checked, not assumed: with ``dev`` the largest distance of a ``th[k]`` from ``t0 + k * step``
    and ``err`` a bound on the rounding of ``(v - t0) / step`` (both in steps), the arithmetic
    path needs ``dev + err < 1/2``. A grid narrower than a few ulps (repeated values, e.g. from a
    calibration range whose ends nearly coincide) fails that and takes the binary search.
    """
    k = int(th.shape[0])
    if k < 3:
        return torch.searchsorted(th, v, right=True)
    t0, t1 = float(th[0]), float(th[-1])
    step = (t1 - t0) / (k - 1)
    if not step > 0:
        return torch.searchsorted(th, v, right=True)
    uniform = t0 + step * torch.arange(k, dtype=torch.float64, device=th.device)
    dev = float((th.to(torch.float64) - uniform).abs().max()) / step
    err = 4.0 * float(torch.finfo(v.dtype).eps) * max(abs(t0), abs(t1)) / step
    if not dev + err < 0.5:
        return torch.searchsorted(th, v, right=True)
    inf = torch.tensor([float("inf")], dtype=th.dtype, device=th.device)
    ext = torch.cat([-inf, th, inf])  # ext[b] = th[b - 1]; ext[0] = -inf, ext[k + 1] = inf
    b = ((v - t0) / step).floor_().clamp_(-1.0, float(k)).to(torch.int64) + 1
    for _ in range(2):  # index_select is much faster than advanced indexing on CPU
        b -= (ext.index_select(0, b) > v).to(torch.int64)  # th[b - 1] > v: too high
        b += (ext.index_select(0, b + 1) <= v).to(torch.int64)  # th[b] <= v: too low
    return b


class Buckets:
    """``b(v) = #{k : t_k <= v}`` for NumPy values ``v`` of one float dtype (exact).

    The float64 thresholds are replaced by ``c_k = ceil_to_dtype(t_k)`` (same comparisons).
    When the ``c_k`` are close enough to a uniform grid the bucket is estimated as
    ``e = floor((v - c_0) / step + 1/2)`` in the values' dtype and corrected with one exact
    comparison, ``b = e + [c_e <= v]``: with ``delta`` the largest distance of a ``c_k`` from the
    uniform grid and ``eps`` a bound on the rounding error of the estimate (both in steps),
    ``delta + eps < 1/2`` guarantees ``b in {e, e + 1}``. Otherwise (degenerate grids) a binary
    search is used.
    """

    def __init__(self, thresholds: np.ndarray, dtype: torch.dtype) -> None:
        self.dt = _np_dtype(dtype)
        c64 = np.array([ceil_to_dtype(float(t), dtype) for t in thresholds], dtype=np.float64)
        self.c = c64.astype(self.dt)
        self.k = int(c64.shape[0])
        self.ext = np.append(self.c, self.dt(np.inf))
        self.mode = "search"
        if self.k == 1:
            self.mode = "one"
            return
        step = float(c64[-1] - c64[0]) / (self.k - 1)
        big = float(np.finfo(self.dt).max) / 16  # keeps (v - c0h) * inv finite for |v| <= 4
        if not (step > 1.0 / big and abs(float(c64[0])) < 2.0):
            return
        self.c0h = self.dt(c64[0] - 0.5 * step)
        self.inv = self.dt(1.0 / step)
        delta = float(np.max(np.abs(c64 - (c64[0] + np.arange(self.k) * step)))) / step
        # the float64 evaluation of that distance is itself off by up to ~2 ulps of the largest
        # threshold: count it (a grid only a few ulps wide, e.g. three thresholds within 2e-16,
        # then falls back to the binary search)
        delta += 4.0 * float(np.finfo(np.float64).eps) * float(np.max(np.abs(c64))) / step
        u = float(np.finfo(self.dt).eps) / 2  # unit roundoff
        eps = 3.01 * u * (self.k + 2) + abs(float(self.c0h) - (c64[0] - 0.5 * step)) / step
        if delta + eps + 1e-6 < 0.5:
            self.mode = "grid"

    def __call__(self, v: np.ndarray, scratch: Scratch | None = None) -> np.ndarray:
        """int64 buckets of the 1-D array ``v`` (dtype of the grid, all ``>= t_0``); with
        ``scratch`` the result is a view of ``scratch.buckets`` (valid until its next use)."""
        n = v.shape[0]
        sc = scratch if scratch is not None else Scratch(self.dt)
        sc.ensure(n)
        e = sc.buckets[:n]
        if self.mode == "one":
            m = sc.mask[:n]
            np.less_equal(self.c[0], v, out=m)
            np.copyto(e, m, casting="unsafe")
            return e
        if self.mode == "search":
            e[:] = np.searchsorted(self.c, v, side="right")
            return e
        t = sc.scaled[:n]
        np.subtract(v, self.c0h, out=t)
        np.multiply(t, self.inv, out=t)
        np.clip(t, 0, self.k, out=t)  # (clip is faster than minimum)
        np.copyto(e, t, casting="unsafe")  # truncation = floor (t >= 0)
        np.take(self.ext, e, out=t, mode="clip")
        m = sc.mask[:n]
        np.less_equal(t, v, out=m)
        np.add(e, m, out=e)
        return e


class Scratch:
    """Work arrays reused from block to block by one thread (fresh temporaries of a few hundred
    KiB each cost page faults and cache misses; reused ones stay in cache).

    Attributes (each holds at least ``n`` entries after :meth:`ensure`):
        tail: the block's similarities gathered for bucketing (values' dtype).
        scaled: :class:`Buckets`' arithmetic bucket estimate before truncation (values' dtype).
        buckets: int64 buckets of one grid (:class:`Buckets`' result).
        bucket_sum: int64 sum of the per-grid buckets (:class:`MultiBuckets`' result).
        cols: int64 block column of each tail entry.
        keys: ``(2 n,)`` int64 ``class * (K + 1) + bucket`` keys of both classes of each pair.
        mask: bool comparison results.
    """

    def __init__(self, dtype: type[np.floating]) -> None:
        self.dtype = dtype
        self.cap = -1
        self.ensure(0)

    def ensure(self, n: int) -> None:
        """Make every array hold at least ``n`` entries (``keys``: ``2 n``)."""
        if n <= self.cap:
            return
        cap = max(n, int(self.cap * 1.25), 1024)
        self.cap = cap
        self.scaled = np.empty(cap, dtype=self.dtype)
        self.tail = np.empty(cap, dtype=self.dtype)
        self.buckets = np.empty(cap, dtype=np.int64)
        self.cols = np.empty(cap, dtype=np.int64)
        self.bucket_sum = np.empty(cap, dtype=np.int64)
        self.keys = np.empty(2 * cap, dtype=np.int64)
        self.mask = np.empty(cap, dtype=bool)


class MultiBuckets:
    """Buckets against the sorted union (a multiset) of several threshold grids (exact).

    ``#{t in union : t <= v}`` is the sum of the per-grid counts, so each grid keeps its fast
    path (:class:`Buckets`: arithmetic on a uniform grid, binary search on a short irregular
    list) and the union never needs a binary search of its own. Duplicated values are fine:
    a bucket between two equal thresholds is simply never hit.

    Attributes:
        thresholds: ``(K,)`` float64 sorted union of the grids.
        k: ``K``; ``dt``: the NumPy dtype of the values; ``cut``: the smallest threshold rounded
            up to that dtype (values below it fall in bucket 0).
    """

    def __init__(self, grids: Sequence[np.ndarray], dtype: torch.dtype) -> None:
        parts = [np.asarray(g, dtype=np.float64).reshape(-1) for g in grids]
        parts = [g for g in parts if g.shape[0]]
        self.parts = [Buckets(g, dtype) for g in parts]
        self.thresholds = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.float64)
        self.k = int(self.thresholds.shape[0])
        self.dt = _np_dtype(dtype)
        self.cut = ceil_to_dtype(float(self.thresholds[0]), dtype) if self.k else math.inf

    def __call__(self, v: np.ndarray, scratch: Scratch) -> np.ndarray:
        """int64 union buckets of ``v``; a view of ``scratch.buckets`` (one grid) or
        ``scratch.bucket_sum`` (valid until the scratch is used again)."""
        if len(self.parts) == 1:  # the common case: no copy (a view of ``scratch.buckets``)
            return self.parts[0](v, scratch)
        n = v.shape[0]
        scratch.ensure(n)
        acc = scratch.bucket_sum[:n]
        np.copyto(acc, self.parts[0](v, scratch))
        for part in self.parts[1:]:
            np.add(acc, part(v, scratch), out=acc)
        return acc


def multi_bucketize(grids: Sequence[torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """Torch version of :class:`MultiBuckets` for float64 ``v``: sum of :func:`bucketize`."""
    out = torch.zeros(v.shape, dtype=torch.int64, device=v.device)
    for g in grids:
        if g.shape[0]:
            out += bucketize(g, v) if _is_uniform(g) else torch.searchsorted(g, v, right=True)
    return out


def _is_uniform(th: torch.Tensor) -> bool:
    """Whether the corrected arithmetic bucketing of :func:`bucketize` is valid for ``th``:
    every point within a quarter step of the uniform grid through its end points."""
    k = int(th.shape[0])
    if k < 3:
        return True  # bucketize uses a binary search then
    t0, t1 = float(th[0]), float(th[-1])
    step = (t1 - t0) / (k - 1)
    if not step > 0:
        return True
    ideal = t0 + step * torch.arange(k, dtype=torch.float64, device=th.device)
    return bool((th - ideal).abs().max() <= 0.25 * step)


@dataclass
class CountState:
    """Per-class bucket counts on a threshold grid ``t_0 <= ... <= t_{K-1}`` (mergeable).

    Bucket of a similarity ``s`` is ``b = #{k : t_k <= s}`` in ``[0, K]``; the pair is accepted
    at ``t_k`` iff ``k < b``. Pairs with ``s < t_0`` may be left out (bucket 0 is never used).

    Attributes:
        neg: ``(C, K + 1)`` int64; each negative pair is counted once for each of its two classes.
        pos: ``(C, K + 1)`` int64; each positive pair is counted once for its class.
    """

    neg: np.ndarray
    pos: np.ndarray

    @staticmethod
    def accepted(table: np.ndarray) -> np.ndarray:
        """``(..., K)`` number of pairs accepted at each threshold of a ``(..., K + 1)`` bucket
        table (e.g. ``(C, K + 1)``): ``sum_{b > k} table[..., b]``."""
        rev = np.cumsum(table[..., ::-1], axis=-1)[..., ::-1]
        return np.ascontiguousarray(rev[..., 1:])


@dataclass
class _Span:
    """Class layout of the rows ``[p, q)`` of one block row / column (class-sorted order)."""

    c0: int  # first class code
    nc: int  # number of classes
    bounds: np.ndarray  # (nc + 1,) local row where each class starts, then q - p
    key: np.ndarray  # (q - p,) (class - c0) * (K + 1) of each row


def _spans(prep: Prepared, block_size: int, kp1: int) -> dict[int, _Span]:
    """:class:`_Span` of every block start ``p`` (multiples of ``block_size``)."""
    codes, starts = prep.codes, prep.starts
    out: dict[int, _Span] = {}
    for p in range(0, prep.n, block_size):
        q = min(prep.n, p + block_size)
        c0 = int(codes[p])
        nc = int(codes[q - 1]) - c0 + 1
        bounds = np.concatenate([[0], starts[c0 + 1 : c0 + nc] - p, [q - p]]).astype(np.int64)
        out[p] = _Span(c0=c0, nc=nc, bounds=bounds, key=(codes[p:q] - c0) * kp1)
    return out


def _count_block_numpy(
    blk: Block,
    bk: MultiBuckets,
    spans: dict[int, _Span],
    mbuf: np.ndarray,
    sc: Scratch,
    neg: np.ndarray,
    pos: np.ndarray,
) -> None:
    """Add one block's counts to the flat ``(C * (K + 1),)`` tables ``neg`` / ``pos``."""
    kp1 = bk.k + 1
    cut = bk.cut
    if blk.pos_sims.numel():
        pv = blk.pos_sims.numpy()
        sel = np.flatnonzero(pv >= cut)
        if sel.shape[0]:
            pc = blk.pos_codes.numpy()[sel]
            c_lo, c_hi = int(pc[0]), int(pc[-1])  # positives come in class order
            key = (pc - c_lo) * kp1 + bk(pv[sel], sc)
            pos[c_lo * kp1 : (c_hi + 1) * kp1] += np.bincount(
                key, minlength=(c_hi - c_lo + 1) * kp1
            )
    idx = blk.negative_indices(cut, mbuf)
    t = idx.shape[0]
    if t == 0:
        return
    s = blk.sims.numpy()
    w = s.shape[1]
    sc.ensure(t)
    v = sc.tail[:t]
    np.take(s.reshape(-1), idx, out=v, mode="clip")
    b = bk(v, sc)
    # Rows / columns of a block cover contiguous ranges of class codes (class-sorted order), so
    # one small local bincount over both ranges (columns' classes first, then rows') replaces
    # scattered updates of the C x K table.
    rs, cs = spans[blk.row0], spans[blk.col0]
    keys = sc.keys[: 2 * t]
    cols = sc.cols[:t]
    if w & (w - 1) == 0:
        np.bitwise_and(idx, w - 1, out=cols)
    else:  # (% is slower)
        np.floor_divide(idx, w, out=cols)
        np.multiply(cols, w, out=cols)
        np.subtract(idx, cols, out=cols)
    np.take(cs.key, cols, out=keys[:t], mode="clip")
    np.add(keys[:t], b, out=keys[:t])
    # row side: idx is sorted, so each row class is one segment of it
    seg = np.searchsorted(idx, rs.bounds * w)
    offsets = np.arange(cs.nc, cs.nc + rs.nc, dtype=np.int64) * kp1
    np.add(np.repeat(offsets, seg[1:] - seg[:-1]), b, out=keys[t:])
    local = np.bincount(keys, minlength=(cs.nc + rs.nc) * kp1)
    neg[cs.c0 * kp1 : (cs.c0 + cs.nc) * kp1] += local[: cs.nc * kp1]
    neg[rs.c0 * kp1 : (rs.c0 + rs.nc) * kp1] += local[cs.nc * kp1 :]


def _select_ge_torch(s: torch.Tensor, cut: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (row-major) indices and values of the entries of the 2-D ``s`` with ``s >= cut``."""
    flat = torch.nonzero((s >= cut).view(-1)).squeeze(1)
    return flat, s.reshape(-1).index_select(0, flat)


def _count_block_torch(
    prep: Prepared,
    blk: Block,
    grids: Sequence[torch.Tensor],
    kp1: int,
    cut: float,
    neg: torch.Tensor,
    pos: torch.Tensor,
) -> torch.Tensor:
    """Torch version of :func:`_count_block_numpy` (float64 comparisons; any device). Returns
    the block's similarities with every non-negative entry set to ``-inf``."""
    if blk.pos_sims.numel() and cut < math.inf:
        b = multi_bucketize(grids, blk.pos_sims.to(torch.float64).contiguous())
        pos += torch.bincount(blk.pos_codes * kp1 + b, minlength=pos.shape[0])
    sims = blk.mask_non_negatives_()
    if cut == math.inf:
        return sims
    flat, v = _select_ge_torch(sims, cut)
    if flat.shape[0] == 0:
        return sims
    ncols = sims.shape[1]
    rows = torch.div(flat, ncols, rounding_mode="floor")
    cols = flat - rows * ncols
    b = multi_bucketize(grids, v.to(torch.float64))
    for first, idx, size in ((blk.row0, rows, sims.shape[0]), (blk.col0, cols, ncols)):
        c0, c1 = int(prep.codes[first]), int(prep.codes[first + size - 1])
        cls = prep.codes_t.index_select(0, idx + first) - c0
        local = torch.bincount(cls * kp1 + b, minlength=(c1 - c0 + 1) * kp1)
        neg[c0 * kp1 : (c1 + 1) * kp1] += local
    return sims


def _hist_block_numpy(
    blk: Block,
    eb: Buckets,
    mbuf: np.ndarray,
    sc: Scratch,
    hneg: np.ndarray,
    hpos: np.ndarray,
) -> None:
    """Add one block's pairs to the histograms ``hneg`` / ``hpos`` of ``B + 2`` slots: slot
    ``#{edges <= s}`` (exact comparisons), later folded into the ``B`` bins."""
    nb2 = hneg.shape[0]
    if blk.pos_sims.numel():
        pv = blk.pos_sims.numpy()
        hpos += np.bincount(eb(pv, sc), minlength=nb2)
    idx = blk.negative_indices(-math.inf, mbuf)
    t = idx.shape[0]
    if t == 0:
        return
    sc.ensure(t)
    v = sc.tail[:t]
    np.take(blk.sims.numpy().reshape(-1), idx, out=v, mode="clip")
    hneg += np.bincount(eb(v, sc), minlength=nb2)


def _fold_hist(slots: np.ndarray) -> np.ndarray:
    """``B + 2`` slots ``#{edges <= s}`` -> ``B`` bins, ``np.histogram`` style after clipping to
    ``[edges[0], edges[-1]]``: slot 0 (below the range) joins bin 0, slots ``B`` (on the last
    edge) and ``B + 1`` (above) join the last bin."""
    out = slots[1:-1].copy()
    out[0] += slots[0]
    out[-1] += slots[-1]
    return out


@dataclass
class GroupState:
    """Per-(class, group) bucket counts (mergeable by summation).

    ``G`` groups, ``K`` union thresholds, ``P`` cross thresholds (a sorted subset of values at
    which the cross-group matrices are counted). Buckets as in :class:`CountState`:
    ``#{t <= s}`` over the union (``gpos`` / ``gneg``) or over the cross thresholds (``x*``).

    Attributes:
        gpos: ``(C, G, K + 1)`` positive pairs of class ``c`` with both samples in group ``g``.
        gneg: ``(C, G, K + 1)`` negative pairs with both samples in ``g``, counted once for each
            of the two classes.
        xpos: ``(C, G, G, P + 1)`` positive pairs of class ``c`` with one sample in ``g`` and
            one in ``h``, counted at ``[c, g_i, g_j]`` and at ``[c, g_j, g_i]`` (so a pair
            within one group is counted twice on the diagonal).
        xneg: ``(C, G, G, P + 1)`` negative pairs ``(i, j)`` counted at ``[c_i, g_i, g_j]`` and
            at ``[c_j, g_j, g_i]``.
    """

    gpos: np.ndarray
    gneg: np.ndarray
    xpos: np.ndarray
    xneg: np.ndarray

    def merge(self, other: GroupState) -> GroupState:
        """Combine two shards' states (same thresholds and groups)."""
        return GroupState(
            gpos=self.gpos + other.gpos,
            gneg=self.gneg + other.gneg,
            xpos=self.xpos + other.xpos,
            xneg=self.xneg + other.xneg,
        )


@dataclass
class HistState:
    """Positive / negative pair counts per similarity bin (mergeable).

    Attributes:
        edges: ``(B + 1,)`` float64 bin edges; bin ``b`` is ``[edges[b], edges[b+1])``, the last
            bin is closed. Similarities are clipped to ``[edges[0], edges[-1]]`` first.
        pos, neg: ``(B,)`` int64 counts.
    """

    edges: np.ndarray
    pos: np.ndarray
    neg: np.ndarray


def _bin_index(s: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each float64 value (already clipped to the edge range), ``np.histogram`` style."""
    nb = edges.shape[0] - 1
    lo, hi = float(edges[0]), float(edges[-1])
    idx = ((s - lo) * (nb / (hi - lo))).floor().to(torch.int64).clamp_(0, nb - 1)
    idx -= (s < edges[idx]).to(torch.int64)
    idx += ((s >= edges[idx + 1]) & (idx != nb - 1)).to(torch.int64)
    return idx


class GroupSpec(NamedTuple):
    """What :func:`sweep` needs to fill a :class:`GroupState`."""

    codes: np.ndarray
    """``(N,)`` group code of every class-sorted row."""
    num_groups: int
    """``G``."""
    cross: np.ndarray
    """The thresholds of the cross-group tables (float64)."""


def _count_into(table: torch.Tensor, idx: torch.Tensor) -> None:
    """``table[i] += 1`` for every entry ``i`` of ``idx`` (repeats counted; int64, exact).

    On CPU, with fewer entries than an eighth of the table, one ``index_add_`` over the
    entries: a ``bincount`` of the table's length would allocate, zero and add a whole table
    per block, which dominates a grouped sweep over thousands of classes (the per-(class,
    group) tables hold ``C G (K + 1)`` counts). Otherwise (and on other devices) a
    ``bincount``; both count the same."""
    if table.device.type == "cpu" and 8 * idx.shape[0] < table.shape[0]:
        table.index_add_(0, idx, torch.ones_like(idx))
    else:
        table += torch.bincount(idx, minlength=table.shape[0])


class _GroupCounter:
    """Accumulates one worker's :class:`GroupState` block by block (torch ops, any device;
    comparisons in float64 against float64 thresholds, hence exact)."""

    def __init__(self, prep: Prepared, spec: GroupSpec, grids: Sequence[np.ndarray]) -> None:
        dev = prep.x.device
        self.prep = prep
        self.g = torch.as_tensor(np.asarray(spec.codes, dtype=np.int64), device=dev)
        self.ng = int(spec.num_groups)
        self.grids = [torch.as_tensor(np.asarray(t, np.float64), device=dev) for t in grids]
        self.cross = torch.as_tensor(np.sort(np.asarray(spec.cross, np.float64)), device=dev)
        self.kp1 = sum(int(t.shape[0]) for t in self.grids) + 1
        self.pp1 = int(self.cross.shape[0]) + 1
        lowest = min(
            [float(t.min()) for t in self.grids if t.shape[0]]
            + ([float(self.cross[0])] if self.cross.shape[0] else []),
            default=math.inf,
        )
        self.cut = ceil_to_dtype(lowest, prep.x.dtype)
        c = prep.num_classes
        z = functools.partial(torch.zeros, dtype=torch.int64, device=dev)
        self.gpos, self.gneg = z(c * self.ng * self.kp1), z(c * self.ng * self.kp1)
        self.xpos = z(c * self.ng * self.ng * self.pp1)
        self.xneg = z(c * self.ng * self.ng * self.pp1)

    def _add(
        self, v: torch.Tensor, ci: torch.Tensor, cj: torch.Tensor, gi: torch.Tensor,
        gj: torch.Tensor, both_classes: bool,
    ) -> None:  # fmt: skip
        b = multi_bucketize(self.grids, v)
        xb = torch.searchsorted(self.cross, v, right=True)
        ng, kp1, pp1 = self.ng, self.kp1, self.pp1
        m = gi == gj
        within = [(ci[m] * ng + gi[m]) * kp1 + b[m]]
        cross = [((ci * ng + gi) * ng + gj) * pp1 + xb, ((cj * ng + gj) * ng + gi) * pp1 + xb]
        if both_classes:
            within.append((cj[m] * ng + gi[m]) * kp1 + b[m])
        gt, xt = (self.gneg, self.xneg) if both_classes else (self.gpos, self.xpos)
        _count_into(gt, torch.cat(within))
        _count_into(xt, torch.cat(cross))

    def add(self, blk: Block, mbuf: np.ndarray | None) -> None:
        """Count one block (``mbuf``: the CPU mask buffer, or None on the torch path)."""
        if self.cut == math.inf:
            return
        dev = self.g.device
        codes = self.prep.codes_t
        if blk.pos_sims.numel():
            r = torch.as_tensor(blk.pos_rows, device=dev)
            c = torch.as_tensor(blk.pos_cols, device=dev)
            cls = blk.pos_codes
            self._add(blk.pos_sims.to(torch.float64), cls, cls, self.g[r], self.g[c], False)
        if mbuf is not None:
            flat = torch.from_numpy(blk.negative_indices(self.cut, mbuf))
            v = blk.sims.reshape(-1).index_select(0, flat)
        else:
            flat, v = _select_ge_torch(blk.mask_non_negatives_(), self.cut)
        if flat.shape[0] == 0:
            return
        w = blk.sims.shape[1]
        rows = torch.div(flat, w, rounding_mode="floor") + blk.row0
        cols = flat - (rows - blk.row0) * w + blk.col0
        self._add(v.to(torch.float64), codes[rows], codes[cols], self.g[rows], self.g[cols], True)

    def state(self) -> GroupState:
        """The counts so far as NumPy arrays."""
        c, ng = self.prep.num_classes, self.ng
        return GroupState(
            gpos=self.gpos.cpu().numpy().reshape(c, ng, self.kp1),
            gneg=self.gneg.cpu().numpy().reshape(c, ng, self.kp1),
            xpos=self.xpos.cpu().numpy().reshape(c, ng, ng, self.pp1),
            xneg=self.xneg.cpu().numpy().reshape(c, ng, ng, self.pp1),
        )


class Sweep(NamedTuple):
    """The states one :func:`sweep` fills."""

    counts: CountState
    """Per-class bucket counts on the union of the grids."""
    hist: HistState | None
    """The similarity histograms (when ``edges`` was given)."""
    groups: GroupState | None
    """Per-(class, group) counts (when ``groups`` was given)."""


def sweep(
    prep: Prepared,
    grids: Sequence[np.ndarray],
    block_size: int,
    shard: tuple[int, int] = (0, 1),
    *,
    edges: np.ndarray | None = None,
    groups: GroupSpec | None = None,
    backend: PassBackend = "auto",
) -> Sweep:
    """One pass over the pairs of ``shard``: per-class bucket counts on the sorted union of
    ``grids`` (see :class:`CountState`; only pairs at or above the smallest threshold are
    touched) and, when ``edges`` (float64, increasing, ``B + 1`` values) is given, the exact
    positive / negative similarity histograms over all pairs. With ``groups`` it also fills a
    :class:`GroupState`. ``backend``: the per-block code (:data:`PassBackend`)."""
    if numpy_path(prep, backend):
        return _sweep_numpy(prep, grids, block_size, shard, edges, groups)
    return _sweep_torch(prep, grids, block_size, shard, edges, groups)


class _WorkerCounts(NamedTuple):
    """One worker thread's flat tables in :func:`_sweep_numpy`."""

    neg: np.ndarray  # (C * (K + 1),) negative pairs per (class, bucket)
    pos: np.ndarray  # (C * (K + 1),) positive pairs per (class, bucket)
    hist_neg: np.ndarray  # (B + 2,) negative pairs per histogram slot (see _fold_hist)
    hist_pos: np.ndarray  # (B + 2,) positive pairs per histogram slot
    groups: GroupState | None


def _sum_parts(arrays: list[np.ndarray]) -> np.ndarray:
    """Element-wise int64 sum of the workers' tables."""
    return np.asarray(np.sum(arrays, axis=0, dtype=np.int64))


def _sweep_numpy(
    prep: Prepared,
    grids: Sequence[np.ndarray],
    block_size: int,
    shard: tuple[int, int],
    edges: np.ndarray | None,
    groups: GroupSpec | None,
) -> Sweep:
    """:func:`sweep` with the NumPy per-block code, one worker thread per core (CPU)."""
    c = prep.num_classes
    bk = MultiBuckets(grids, prep.x.dtype)
    kp1 = bk.k + 1
    spans = _spans(prep, block_size, kp1) if bk.k else {}
    eb = Buckets(np.asarray(edges, dtype=np.float64), prep.x.dtype) if edges is not None else None
    num_slots = 0 if edges is None else int(np.asarray(edges).shape[0]) + 1

    def work(blocks: Iterator[Block]) -> _WorkerCounts:
        gc = _GroupCounter(prep, groups, grids) if groups is not None else None
        neg = np.zeros(c * kp1, dtype=np.int64)
        pos = np.zeros(c * kp1, dtype=np.int64)
        hneg = np.zeros(num_slots, dtype=np.int64)
        hpos = np.zeros(num_slots, dtype=np.int64)
        mbuf = mask_buffer(prep, block_size)
        sc = Scratch(bk.dt)
        for blk in blocks:
            if bk.k:
                _count_block_numpy(blk, bk, spans, mbuf, sc, neg, pos)
            if eb is not None:
                _hist_block_numpy(blk, eb, mbuf, sc, hneg, hpos)
            if gc is not None:
                gc.add(blk, mbuf)
        return _WorkerCounts(neg, pos, hneg, hpos, None if gc is None else gc.state())

    parts = map_blocks(prep, block_size, shard, work, desc="pairs: counts")
    counts = CountState(
        neg=_sum_parts([p.neg for p in parts]).reshape(c, kp1),
        pos=_sum_parts([p.pos for p in parts]).reshape(c, kp1),
    )
    hist = None
    if edges is not None:
        hist = HistState(
            edges=np.asarray(edges, dtype=np.float64),
            pos=_fold_hist(_sum_parts([p.hist_pos for p in parts])),
            neg=_fold_hist(_sum_parts([p.hist_neg for p in parts])),
        )
    gstate = None
    if groups is not None:
        states = [p.groups for p in parts if p.groups is not None]
        gstate = functools.reduce(GroupState.merge, states)
    return Sweep(counts, hist, gstate)


def _sweep_torch(
    prep: Prepared,
    grids: Sequence[np.ndarray],
    block_size: int,
    shard: tuple[int, int],
    edges: np.ndarray | None,
    groups: GroupSpec | None,
) -> Sweep:
    """:func:`sweep` with the torch per-block code (any device; float64 comparisons)."""
    c = prep.num_classes
    device = prep.x.device
    grids_t = [torch.as_tensor(np.asarray(g, dtype=np.float64), device=device) for g in grids]
    union = MultiBuckets(grids, prep.x.dtype)  # only for k and the cut
    kp1 = union.k + 1
    neg_t = torch.zeros(c * kp1, dtype=torch.int64, device=device)
    pos_t = torch.zeros(c * kp1, dtype=torch.int64, device=device)
    cut = floor_to_dtype(float(union.thresholds[0]), prep.x.dtype) if union.k else math.inf
    e_t = None if edges is None else torch.as_tensor(np.asarray(edges, np.float64), device=device)
    nb = 0 if e_t is None else int(e_t.shape[0]) - 1
    hpos_t = torch.zeros(nb, dtype=torch.int64, device=device)
    hneg_t = torch.zeros(nb, dtype=torch.int64, device=device)
    gc = _GroupCounter(prep, groups, grids) if groups is not None else None
    for blk in iter_blocks(prep, block_size, shard, desc="pairs: counts"):
        if e_t is not None and blk.pos_sims.numel():
            lo, hi = float(e_t[0]), float(e_t[-1])
            p = blk.pos_sims.to(torch.float64).clamp(lo, hi)
            hpos_t += torch.bincount(_bin_index(p, e_t), minlength=nb)
        sims = _count_block_torch(prep, blk, grids_t, kp1, cut, neg_t, pos_t)
        if e_t is not None:
            lo, hi = float(e_t[0]), float(e_t[-1])
            v = sims[sims > float("-inf")].to(torch.float64).clamp_(lo, hi)
            hneg_t += torch.bincount(_bin_index(v, e_t), minlength=nb)
        if gc is not None:
            gc.add(blk, None)
    counts = CountState(
        neg=neg_t.cpu().numpy().reshape(c, kp1), pos=pos_t.cpu().numpy().reshape(c, kp1)
    )
    hist = None
    if edges is not None:
        hist = HistState(
            edges=np.asarray(edges, dtype=np.float64),
            pos=hpos_t.cpu().numpy(),
            neg=hneg_t.cpu().numpy(),
        )
    return Sweep(counts, hist, None if gc is None else gc.state())
