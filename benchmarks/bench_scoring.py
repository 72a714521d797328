"""Benchmark of ``evaluate`` scored through AS-norm against plain cosine (issue 21).

Synthetic float32 ``(N, D)`` data with ``N / 10`` classes of 10 and a disjoint cohort. Rows
(each the fastest of ``--repeats`` runs, cosine and AS-norm interleaved so that a change of the
machine's load hits both; wall-clock seconds and CPU seconds of all threads, the latter less
sensitive to other processes on a loaded machine):

* ``prepare``   - ``ASNorm.prepare`` of the N rows alone (cohort statistics, done once; part
  of every AS-norm row below);
* ``pairs``     - ``evaluate(exclude=("retrieval",))``: the pair passes, each block mapped
  in place by ``score_block_``;
* ``retrieval`` - ``evaluate(include=("retrieval",))``: the leave-one-out kNN (AS-norm:
  float32 scores of the symmetric tiles, certified, candidates re-ranked in float64);
* ``evaluate``  - ``evaluate`` with its defaults (target: ratio <= 1.3 at N = 30000).

Usage::

    python benchmarks/bench_scoring.py --n 30000 --dim 64
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--cohort", type=int, default=2000)
    ap.add_argument("--top-k", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", default="pairs,retrieval,evaluate", help="comma-separated rows")
    args = ap.parse_args()

    import torch

    from tcm.metrics import evaluate
    from tcm.scoring import ASNorm

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(args.n // 10), 10)
    centers = rng.normal(size=(args.n // 10, args.dim))
    x = (centers[y] + 1.2 * rng.normal(size=(y.shape[0], args.dim))).astype(np.float32)
    cohort = rng.normal(size=(args.cohort, args.dim)).astype(np.float32)
    scorer = ASNorm(top_k=args.top_k).fit(cohort)

    def best(fns: list[Callable[[], Any]]) -> list[tuple[float, float]]:
        """Fastest wall-clock and CPU (all threads) seconds of each function."""
        wall = [float("inf")] * len(fns)
        cpu = [float("inf")] * len(fns)
        for _ in range(args.repeats):
            for i, fn in enumerate(fns):
                w0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall[i] = min(wall[i], time.perf_counter() - w0)
                cpu[i] = min(cpu[i], time.process_time() - c0)
        return list(zip(wall, cpu, strict=True))

    sections: dict[str, dict[str, Any]] = {
        "pairs": {"exclude": ("retrieval",)},
        "retrieval": {"include": ("retrieval",)},
        "evaluate": {},
    }
    load = os.getloadavg()
    print(
        f"N={y.shape[0]} D={args.dim} cohort={args.cohort} top_k={args.top_k} "
        f"threads={torch.get_num_threads()} repeats={args.repeats} "
        f"load={load[0]:.2f},{load[1]:.2f},{load[2]:.2f}"
    )
    print(f"{'':<10} {'---------- wall ----------':>28}  {'------- CPU (threads) -------':>29}")
    head = f"{'cosine s':>9} {'as-norm s':>10} {'ratio':>6}"
    print(f"{'row':<10} {head}   {head}")
    ((pw, pc),) = best([lambda: scorer.prepare(x)])
    print(f"{'prepare':<10} {'':>9} {pw:>10.2f} {'':>6}   {'':>9} {pc:>10.2f}", flush=True)
    for name in args.rows.split(","):
        kw = sections[name]
        (cw, cc), (sw, scpu) = best(
            [
                lambda kw=kw: evaluate(x, y, **kw),
                lambda kw=kw: evaluate(x, y, scorer=scorer, **kw),
            ]
        )
        print(
            f"{name:<10} {cw:>9.2f} {sw:>10.2f} {sw / cw:>6.2f}   "
            f"{cc:>9.2f} {scpu:>10.2f} {scpu / cc:>6.2f}",
            flush=True,
        )
    load = os.getloadavg()
    print(f"load at the end: {load[0]:.2f},{load[1]:.2f},{load[2]:.2f}")


if __name__ == "__main__":
    main()
