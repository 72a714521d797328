"""Full passes over all pairs producing small, mergeable states (private to ``tcm.metrics``).

Every pass takes ``shard=(shard_index, num_shards)``; the states of all shards merged with
``merge`` equal the state of one unsharded pass (counts add, collected values concatenate).

* :func:`tail_pass` - exact order statistics of the negative-pair similarities: for brackets
  ``[lo_q, hi_q]`` it counts negatives ``> hi_q`` and collects those inside the bracket.
* :func:`count_pass` - per-class counts of accepted pairs on a threshold grid.
* :func:`hist_pass` - positive / negative similarity histograms over fixed bins.
* :func:`negative_quantiles` - exact ``np.quantile(neg_sims, q)`` (linear) without ever holding
  all negatives, via a sampled bracket and one exact :func:`tail_pass`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tcm.metrics._pairs import Prepared, iter_blocks, sample_negative_similarities, select_ge

__all__ = [
    "CountState",
    "HistState",
    "TailState",
    "bucketize",
    "count_pass",
    "floor_to_dtype",
    "hist_pass",
    "lerp",
    "negative_quantiles",
    "quantile_index",
    "tail_pass",
]


def floor_to_dtype(t: float, dtype: torch.dtype) -> float:
    """Largest value representable in ``dtype`` that is ``<= t`` (``t`` may be +-inf).

    Used so that a cheap pre-filter ``S >= floor_to_dtype(t)`` in the block's dtype keeps every
    value with ``S >= t`` in exact (float64) arithmetic.
    """
    if math.isinf(t) or dtype == torch.float64:
        return t
    v = torch.tensor(t, dtype=torch.float64).to(dtype)
    if float(v) > t:
        v = torch.nextafter(v, torch.tensor(float("-inf"), dtype=dtype))
    return float(v)


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


@dataclass
class TailState:
    """Bracket counts of the negative similarities (mergeable).

    Attributes:
        lo, hi: ``(Q,)`` float64 bracket bounds (``-inf`` / ``+inf`` allowed).
        num_above: ``(Q,)`` int64 number of negative pairs with ``s > hi[q]``.
        values: ``Q`` float64 arrays of the negative similarities with ``lo[q] <= s <= hi[q]``
            (unsorted).
    """

    lo: np.ndarray
    hi: np.ndarray
    num_above: np.ndarray
    values: list[np.ndarray] = field(default_factory=list)

    def merge(self, other: TailState) -> TailState:
        """Combine two shards' states (same brackets)."""
        if not (np.array_equal(self.lo, other.lo) and np.array_equal(self.hi, other.hi)):
            raise ValueError("cannot merge TailStates computed with different brackets")
        return TailState(
            lo=self.lo,
            hi=self.hi,
            num_above=self.num_above + other.num_above,
            values=[np.concatenate([a, b]) for a, b in zip(self.values, other.values, strict=True)],
        )


def tail_pass(
    prep: Prepared,
    lo: Sequence[float] | np.ndarray,
    hi: Sequence[float] | np.ndarray,
    block_size: int,
    shard: tuple[int, int] = (0, 1),
) -> TailState:
    """One pass over the negative pairs: per bracket ``q`` count ``s > hi[q]`` and collect
    ``lo[q] <= s <= hi[q]`` (comparisons in float64). Blocks are pre-filtered by
    ``s >= min(lo)`` so only the tail is handled in detail."""
    lo_a = np.asarray(lo, dtype=np.float64)
    hi_a = np.asarray(hi, dtype=np.float64)
    nq = lo_a.shape[0]
    dtype = prep.x.dtype
    lo_min = float(lo_a.min())
    cut = floor_to_dtype(lo_min, dtype) if math.isfinite(lo_min) else float(torch.finfo(dtype).min)
    above = torch.zeros(nq, dtype=torch.int64, device=prep.x.device)
    chunks: list[list[torch.Tensor]] = [[] for _ in range(nq)]
    for blk in iter_blocks(prep, block_size, shard):
        sub = select_ge(blk.sims, cut)[1].to(torch.float64)
        for q in range(nq):
            lq, hq = float(lo_a[q]), float(hi_a[q])
            if lq == -math.inf and hq == math.inf:  # unbounded: collect everything
                chunks[q].append(sub)
                continue
            above[q] += torch.count_nonzero(sub > hq)
            chunks[q].append(sub[(sub >= lq) & (sub <= hq)])
    values = [torch.cat(c).cpu().numpy() if c else np.empty(0, dtype=np.float64) for c in chunks]
    return TailState(lo=lo_a, hi=hi_a, num_above=above.cpu().numpy(), values=values)


def negative_quantiles(
    prep: Prepared,
    qs: Sequence[float],
    block_size: int,
    *,
    exact_cutoff: int = 20_000_000,
    sample_size: int = 2_000_000,
    seed: int = 0,
) -> np.ndarray:
    """Exact ``np.quantile(neg_sims, qs)`` (linear interpolation), returned as float64 ``(Q,)``.

    If the number of negative pairs ``M <= exact_cutoff`` all negatives are collected. Otherwise
    a bracket around each quantile is estimated from ``sample_size`` uniformly sampled negative
    pairs (rank +- 6 standard deviations of the sample quantile), and one exact
    :func:`tail_pass` finds the order statistics inside it. A bracket that misses its rank is
    widened (to unbounded on that side) and the pass repeated, so the result is always exact.
    """
    m = prep.num_negative_pairs
    pos = [quantile_index(m, float(q)) for q in qs]
    nq = len(pos)
    inf = float("inf")
    lo = np.full(nq, -inf)
    hi = np.full(nq, inf)
    if m > exact_cutoff:
        sample = torch.sort(sample_negative_similarities(prep, sample_size, seed)).values
        sample_np = sample.cpu().numpy()
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
        st = tail_pass(prep, [a for a, _ in keys], [b for _, b in keys], block_size)
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


def bucketize(th: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``searchsorted(th, v, right=True)`` = ``#{k : th[k] <= v}`` for float64 ``v``.

    ``th`` is an increasing grid; when it is (numerically) uniform the bucket is computed
    arithmetically and then corrected by exact comparisons with ``th`` (two rounds each way, the
    estimate is off by at most one), which is much cheaper than a binary search.
    """
    k = int(th.shape[0])
    if k < 3:
        return torch.searchsorted(th, v, right=True)
    t0, t1 = float(th[0]), float(th[-1])
    step = (t1 - t0) / (k - 1)
    if not step > 0:
        return torch.searchsorted(th, v, right=True)
    inf = torch.tensor([float("inf")], dtype=th.dtype, device=th.device)
    ext = torch.cat([-inf, th, inf])  # ext[b] = th[b - 1]; ext[0] = -inf, ext[k + 1] = inf
    b = ((v - t0) / step).floor_().clamp_(-1.0, float(k)).to(torch.int64) + 1
    for _ in range(2):  # index_select is much faster than advanced indexing on CPU
        b -= (ext.index_select(0, b) > v).to(torch.int64)  # th[b - 1] > v: too high
        b += (ext.index_select(0, b + 1) <= v).to(torch.int64)  # th[b] <= v: too low
    return b


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

    def merge(self, other: CountState) -> CountState:
        """Combine two shards' states (same grid)."""
        return CountState(neg=self.neg + other.neg, pos=self.pos + other.pos)

    @staticmethod
    def accepted(table: np.ndarray) -> np.ndarray:
        """``(C, K)`` number of pairs accepted at each threshold: ``sum_{b > k} table[:, b]``."""
        rev = np.cumsum(table[:, ::-1], axis=1)[:, ::-1]
        return np.ascontiguousarray(rev[:, 1:])


def count_pass(
    prep: Prepared,
    thresholds: np.ndarray,
    block_size: int,
    shard: tuple[int, int] = (0, 1),
) -> CountState:
    """Bucket every pair with ``s >= thresholds[0]`` by ``searchsorted(thresholds, s, right)``
    (float64 comparisons) and accumulate per-class tables (see :class:`CountState`)."""
    device = prep.x.device
    th = torch.as_tensor(np.asarray(thresholds, dtype=np.float64), device=device)
    kp1 = int(th.shape[0]) + 1
    c = prep.num_classes
    nbins = c * kp1
    neg = torch.zeros(nbins, dtype=torch.int64, device=device)
    pos = torch.zeros(nbins, dtype=torch.int64, device=device)
    cut = floor_to_dtype(float(thresholds[0]), prep.x.dtype)
    for blk in iter_blocks(prep, block_size, shard):
        if blk.pos_sims.numel():
            b = bucketize(th, blk.pos_sims.to(torch.float64).contiguous())
            pos += torch.bincount(blk.pos_codes * kp1 + b, minlength=nbins)
        flat, v32 = select_ge(blk.sims, cut)
        if flat.shape[0] == 0:
            continue
        ncols = blk.sims.shape[1]
        rows = torch.div(flat, ncols, rounding_mode="floor")
        cols = flat - rows * ncols
        b = bucketize(th, v32.to(torch.float64))
        # Rows / columns of a block cover a contiguous range of class codes (class-sorted order),
        # so a small local bincount over that range replaces scattered updates of the C x K table.
        for first, idx in ((blk.row0, rows), (blk.col0, cols)):
            last = first + ncols - 1 if idx is cols else first + blk.sims.shape[0] - 1
            c0, c1 = int(prep.codes[first]), int(prep.codes[last])
            cls = prep.codes_t.index_select(0, idx + first) - c0
            local = torch.bincount(cls * kp1 + b, minlength=(c1 - c0 + 1) * kp1)
            neg[c0 * kp1 : (c1 + 1) * kp1] += local
    return CountState(neg=neg.cpu().numpy().reshape(c, kp1), pos=pos.cpu().numpy().reshape(c, kp1))


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

    def merge(self, other: HistState) -> HistState:
        """Combine two shards' states (same edges)."""
        return HistState(edges=self.edges, pos=self.pos + other.pos, neg=self.neg + other.neg)


def _bin_index(s: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each float64 value (already clipped to the edge range), ``np.histogram`` style."""
    nb = edges.shape[0] - 1
    lo, hi = float(edges[0]), float(edges[-1])
    idx = ((s - lo) * (nb / (hi - lo))).floor().to(torch.int64).clamp_(0, nb - 1)
    idx -= (s < edges[idx]).to(torch.int64)
    idx += ((s >= edges[idx + 1]) & (idx != nb - 1)).to(torch.int64)
    return idx


def hist_pass(
    prep: Prepared, edges: np.ndarray, block_size: int, shard: tuple[int, int] = (0, 1)
) -> HistState:
    """Histogram all positive and negative pair similarities over ``edges`` (float64)."""
    device = prep.x.device
    e = torch.as_tensor(np.asarray(edges, dtype=np.float64), device=device)
    nb = int(e.shape[0]) - 1
    lo, hi = float(e[0]), float(e[-1])
    pos = torch.zeros(nb, dtype=torch.int64, device=device)
    neg = torch.zeros(nb, dtype=torch.int64, device=device)
    for blk in iter_blocks(prep, block_size, shard):
        if blk.pos_sims.numel():
            p = blk.pos_sims.to(torch.float64).clamp(lo, hi)
            pos += torch.bincount(_bin_index(p, e), minlength=nb)
        v = blk.sims[blk.sims > float("-inf")].to(torch.float64).clamp_(lo, hi)
        neg += torch.bincount(_bin_index(v, e), minlength=nb)
    return HistState(
        edges=np.asarray(edges, dtype=np.float64), pos=pos.cpu().numpy(), neg=neg.cpu().numpy()
    )
