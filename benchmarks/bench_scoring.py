"""Benchmark of ``evaluate`` scored through AS-norm against plain cosine (issue 21).

Synthetic float32 ``(N, D)`` data with ``N / 10`` classes and a disjoint cohort. Rows:

* ``prepare``     - ``ASNorm.prepare`` of the N rows alone (cohort statistics, done once);
* ``pairs``       - ``evaluate(exclude=("retrieval",))``: cosine vs AS-norm (the pair passes,
  each block mapped by ``score_block``; includes the prepare); target <= 1.3x;
* ``evaluate``    - ``evaluate`` with its defaults: cosine vs AS-norm (the scored kNN ranks
  whole ``(B, N)`` blocks exactly, without the cosine candidate search).

Usage::

    python benchmarks/bench_scoring.py --n 30000 --dim 128
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--cohort", type=int, default=2000)
    ap.add_argument("--top-k", type=int, default=300)
    ap.add_argument("--no-retrieval", action="store_true", help="skip the full evaluate row")
    args = ap.parse_args()

    from tcm.metrics import evaluate
    from tcm.scoring import ASNorm

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(args.n // 10), 10)
    centers = rng.normal(size=(args.n // 10, args.dim))
    x = (centers[y] + 1.2 * rng.normal(size=(y.shape[0], args.dim))).astype(np.float32)
    cohort = rng.normal(size=(args.cohort, args.dim)).astype(np.float32)
    scorer = ASNorm(top_k=args.top_k).fit(cohort)

    def timed(fn: object) -> float:
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        return time.perf_counter() - t0

    t_prep = timed(lambda: scorer.prepare(x))
    print(f"N={y.shape[0]} D={args.dim} cohort={args.cohort} top_k={args.top_k}")
    print(f"{'row':<10} {'cosine s':>9} {'as-norm s':>10} {'ratio':>6}")
    print(f"{'prepare':<10} {'':>9} {t_prep:>10.2f}")
    rows = [("pairs", {"exclude": ("retrieval",)})]
    if not args.no_retrieval:
        rows.append(("evaluate", {}))
    for name, kw in rows:
        c = timed(lambda kw=kw: evaluate(x, y, **kw))
        s = timed(lambda kw=kw: evaluate(x, y, scorer=scorer, **kw))
        print(f"{name:<10} {c:>9.2f} {s:>10.2f} {s / c:>6.2f}")


if __name__ == "__main__":
    main()
