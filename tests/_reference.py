"""Test-only entry points into the private passes of ``tcm.metrics`` (single-purpose
wrappers of :func:`tcm.metrics._passes.sweep` and the shard merges that only tests use)."""

from __future__ import annotations

import numpy as np

from tcm.metrics._pairs import Prepared
from tcm.metrics._passes import CountState, HistState, PassBackend, TailState, sweep


def count_pass(
    prep: Prepared,
    thresholds: np.ndarray,
    block_size: int,
    shard: tuple[int, int] = (0, 1),
    *,
    backend: PassBackend = "auto",
) -> CountState:
    """Per-class bucket counts of the pairs on one threshold grid: the single-grid sweep."""
    grid = np.asarray(thresholds, dtype=np.float64)
    return sweep(prep, [grid], block_size, shard, backend=backend).counts


def hist_pass(
    prep: Prepared,
    edges: np.ndarray,
    block_size: int,
    shard: tuple[int, int] = (0, 1),
    *,
    backend: PassBackend = "auto",
) -> HistState:
    """Positive / negative similarity histograms over ``edges``: the histogram-only sweep."""
    e = np.asarray(edges, dtype=np.float64)
    hist = sweep(prep, [], block_size, shard, edges=e, backend=backend).hist
    assert hist is not None
    return hist


def merge_counts(a: CountState, b: CountState) -> CountState:
    """Two shards' count tables (same grid) added."""
    return CountState(neg=a.neg + b.neg, pos=a.pos + b.pos)


def merge_hists(a: HistState, b: HistState) -> HistState:
    """Two shards' histograms (same edges) added."""
    assert np.array_equal(a.edges, b.edges)
    return HistState(edges=a.edges, pos=a.pos + b.pos, neg=a.neg + b.neg)


def merge_tails(a: TailState, b: TailState) -> TailState:
    """Two shards' bracket states (same brackets): counts added, values concatenated."""
    assert np.array_equal(a.lo, b.lo) and np.array_equal(a.hi, b.hi)
    values = [np.concatenate([u, v]) for u, v in zip(a.values, b.values, strict=True)]
    return TailState(lo=a.lo, hi=a.hi, num_above=a.num_above + b.num_above, values=values)
