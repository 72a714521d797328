"""Benchmark the exact range matcher (tcm.deploy.Matcher) against its floor and faiss.

Random L2-normalised gallery ``(M, D)`` and queries ``(N, D)`` (float32, standard normal rows);
the threshold is chosen so that each query matches about ``--per-query`` gallery items (the
normal approximation of the cosine of random directions, ``t = z / sqrt(D)``). Three runs on the
same data, each the fastest of ``--repeats`` (after one warm-up block of the floor):

* ``floor``: the bare blocked torch matmul ``Q_b @ G_b.T`` plus the threshold compare and
  ``nonzero`` over the same blocks as the matcher (no sorting, no result assembly): the least
  work any exact blocked matcher must do;
* ``matcher``: ``Matcher(G, t).match(Q)`` (range mode: every item >= t, grouped by query, best
  first);
* ``faiss``: ``faiss.IndexFlatIP`` + ``range_search`` (exact, faiss's own BLAS blocking;
  results kept if score >= t).

Prints a table with seconds, queries per second, the ratio to the floor, the number of results
and whether the matcher's (query, gallery) pairs equal faiss's (they can differ only for scores
within a float32 rounding of t). Exits 1 if the matcher is slower than 1.5 x the floor.

Usage:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_matcher.py --gallery 1000000 \
        --queries 10000 --dim 128
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tcm.deploy.matcher import DEFAULT_GALLERY_BLOCK, DEFAULT_QUERY_BLOCK, Matcher


def _best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def floor(q: torch.Tensor, g: torch.Tensor, t: float, qb: int, gb: int) -> int:
    """Blocked matmul + compare + nonzero over the matcher's blocks; returns the count."""
    n = 0
    for a in range(0, q.shape[0], qb):
        qq = q[a : a + qb]
        for b in range(0, g.shape[0], gb):
            s = qq @ g[b : b + gb].T
            n += int(torch.nonzero(s >= t).shape[0])
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gallery", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--per-query", type=float, default=10.0, help="expected matches per query")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-faiss", action="store_true")
    args = ap.parse_args()
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    g = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    t = float(norm.isf(args.per_query / args.gallery) / np.sqrt(args.dim))
    print(
        f"gallery {args.gallery:,} x {args.dim}, queries {args.queries:,}, t = {t:.4f}, "
        f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', '-')}, load {os.getloadavg()[0]:.2f}"
    )
    m = Matcher(g, t)
    gt, qt = m.gallery, torch.from_numpy(q)
    floor(
        qt[:DEFAULT_QUERY_BLOCK], gt, m._t32, DEFAULT_QUERY_BLOCK, DEFAULT_GALLERY_BLOCK
    )  # warm-up
    rows = []
    sec_f, n_f = _best_of(
        lambda: floor(qt, gt, m._t32, DEFAULT_QUERY_BLOCK, DEFAULT_GALLERY_BLOCK), args.repeats
    )
    rows.append(("floor (blocked matmul + compare)", sec_f, n_f))
    sec_m, res = _best_of(lambda: m.match(q), args.repeats)
    rows.append(("tcm Matcher (range, sorted)", sec_m, len(res)))
    same = "-"
    if not args.no_faiss:
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        index = faiss.IndexFlatIP(args.dim)
        index.add(g)
        radius = float(np.nextafter(np.float32(t), np.float32(-np.inf)))
        sec_x, (lims, dist, lab) = _best_of(lambda: index.range_search(q, radius), args.repeats)
        keep = dist >= np.float32(m._t32)
        qi = np.repeat(np.arange(args.queries), np.diff(lims.astype(np.int64)))[keep]
        rows.append(("faiss IndexFlatIP.range_search", sec_x, int(keep.sum())))
        a = set(zip(qi.tolist(), lab[keep].tolist(), strict=True))
        b = set(zip(res.query_index.tolist(), res.gallery_index.tolist(), strict=True))
        same = "yes" if a == b else f"no ({len(a ^ b)} pairs differ)"
    print(f"{'method':<34} {'seconds':>9} {'queries/s':>10} {'x floor':>8} {'results':>10}")
    for name, sec, n in rows:
        print(f"{name:<34} {sec:>9.2f} {args.queries / sec:>10.0f} {sec / sec_f:>8.2f} {n:>10,}")
    print(f"matcher pairs == faiss pairs: {same}")
    return 0 if sec_m <= 1.5 * sec_f else 1


if __name__ == "__main__":
    raise SystemExit(main())
