"""Benchmark of ``tcm.metrics.evaluate`` (one evaluation = 1 kNN pass + 2 pair passes).

Rows, all on the same synthetic data (float32 ``(N, D)``, ``N / 10`` classes), in one process:

* ``retrieval``   - ``retrieval_metrics`` (Recall@1/2/4/8, MAP@R, R-precision);
* ``consistency`` - ``threshold_consistency`` (OPIS, eps-OPIS);
* ``ret + cons``  - their sum: the reference an evaluation is compared with;
* ``evaluate``    - ``evaluate`` with its defaults (the above + TAR@FAR at 1e-4..1e-1 +
  calibration at FAR 1e-3): target <= 1.3x ``ret + cons``;
* ``separate``    - what ``tcm evaluate`` did before: retrieval, consistency and 4x
  (``threshold_at_far`` + ``operating_point``), each preparing the input again.

Then the same ``evaluate`` under ``torchrun --nproc-per-node W`` (gloo, 1 thread per process):
the in-process time of ``evaluate`` on rank 0 and the wall time of the whole command, against
one process with ``W`` threads, and whether both produce identical metrics. Usage::

    python benchmarks/bench_evaluate.py --n 30000 --dim 128
    python benchmarks/bench_evaluate.py --n 5000 --repeats 1        # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

WORKER = """
import json, sys, time
import numpy as np, torch
import torch.distributed as dist
from tcm.metrics import evaluate
z = np.load(sys.argv[1])
x, y = z["embeddings"], z["labels"]
if dist.is_available() and "RANK" in __import__("os").environ:
    dist.init_process_group("gloo")
evaluate(x[:2000], y[:2000])  # warm-up (imports, thread pools)
if dist.is_initialized():
    dist.barrier()
t0 = time.perf_counter()
ev = evaluate(x, y)
dt = time.perf_counter() - t0
rank = dist.get_rank() if dist.is_initialized() else 0
if rank == 0:
    with open(sys.argv[2], "w") as f:
        json.dump({"seconds": dt, "metrics": ev.metrics()}, f)
"""


def make_data(n: int, dim: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float32 embeddings around Gaussian class centres and int64 labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    centers = rng.normal(size=(num_classes, dim)).astype(np.float32)
    x = rng.normal(size=(n, dim)).astype(np.float32) + centers[y]
    return x, y


def best_of(repeats: int, fn: Any) -> tuple[float, Any]:
    """Smallest wall time of ``repeats`` calls and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def separate(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The pre-``evaluate`` way: one public call per figure."""
    from tcm.metrics import (
        operating_point,
        retrieval_metrics,
        threshold_at_far,
        threshold_consistency,
    )

    ret = retrieval_metrics(x, y)
    tc = threshold_consistency(x, y)
    out = {"recall_at_1": ret.recall_at_k[1], "opis": tc.opis}
    for far in (1e-4, 1e-3, 1e-2, 1e-1):
        t = threshold_at_far(x, y, far=far)
        out[f"tar_{far:g}"] = operating_point(x, y, t).global_tar
    t = threshold_at_far(x, y, far=1e-3)
    operating_point(x, y, t)  # the calibration's operating point
    return out


def run_worker(npz: Path, world: int, threads: int) -> tuple[float, float, dict[str, float]]:
    """(evaluate seconds on rank 0, command wall seconds, metrics)."""
    with tempfile.TemporaryDirectory() as d:
        script, res = Path(d) / "w.py", Path(d) / "r.json"
        script.write_text(WORKER)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        launcher = (
            ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
            if world > 1
            else []
        )
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, *launcher, str(script), str(npz), str(res)],
            check=True,
            env=env,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
        r = json.loads(res.read_text())
    return float(r["seconds"]), wall, dict(r["metrics"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=30_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--ratio", type=float, default=0.1, help="classes per sample")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--world", type=int, default=2, help="torchrun processes")
    p.add_argument("--no-separate", action="store_true", help="skip the slow 'separate' row")
    args = p.parse_args()

    import torch

    from tcm.metrics import evaluate, retrieval_metrics, threshold_consistency

    x, y = make_data(args.n, args.dim, max(2, round(args.n * args.ratio)))
    threads = torch.get_num_threads()
    evaluate(x[:2000], y[:2000])  # warm-up
    t_ret, _ = best_of(args.repeats, lambda: retrieval_metrics(x, y))
    t_tc, _ = best_of(args.repeats, lambda: threshold_consistency(x, y))
    t_ev, ev = best_of(args.repeats, lambda: evaluate(x, y))
    rows = [
        ("retrieval", t_ret),
        ("consistency", t_tc),
        ("ret + cons", t_ret + t_tc),
        ("evaluate", t_ev),
    ]
    if not args.no_separate:
        t_sep, _ = best_of(1, lambda: separate(x, y))
        rows.append(("separate", t_sep))
    print(f"N={args.n} D={args.dim} classes={len(np.unique(y))} threads={threads}")
    print(f"{'what':<14} {'seconds':>8} {'/ (ret+cons)':>13}")
    for name, t in rows:
        print(f"{name:<14} {t:8.2f} {t / (t_ret + t_tc):13.2f}")

    with tempfile.TemporaryDirectory() as d:
        npz = Path(d) / "emb.npz"
        np.savez(npz, embeddings=x, labels=y)
        e1, w1, m1 = run_worker(npz, 1, threads)
        ew, ww, mw = run_worker(npz, args.world, max(1, threads // args.world))
    same = m1 == mw == ev.metrics()
    print(f"\n{'processes':<10} {'evaluate s':>10} {'command s':>10}")
    print(f"{'1 x ' + str(threads) + 'thr':<10} {e1:10.2f} {w1:10.2f}")
    print(f"{str(args.world) + ' (torchrun)':<10} {ew:10.2f} {ww:10.2f}")
    print(
        f"ratio torchrun / one process: evaluate {ew / e1:.2f}, command {ww / w1:.2f}; "
        f"identical metrics: {same}"
    )


if __name__ == "__main__":
    main()
