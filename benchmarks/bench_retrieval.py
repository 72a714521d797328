"""Benchmark tcm.metrics.retrieval against pytorch-metric-learning's AccuracyCalculator.

Identical synthetic embeddings (D = 128, L2-normalised cosine similarity, SOP-like classes of 2..8
samples, ~5 on average) are evaluated leave-one-out by both implementations, each in its own
subprocess so that wall time and peak resident memory (ru_maxrss) are measured separately:

* ours: ``retrieval_metrics(emb, labels)`` (gallery = queries, self excluded by index);
* peer: ``AccuracyCalculator(k="max_bin_count").get_accuracy(emb, labels, emb, labels,
  ref_includes_query=True)`` with precision_at_1, mean_average_precision_at_r and r_precision.

Prints one row per N with wall time (s), peak RSS (MiB), the increase of RSS over the post-import /
post-data baseline (MiB), ratios peer/ours, and max |difference| of R@1, MAP@R and R-precision,
EQUAL if all are <= 1e-6 else DIFF (and exits 1 on DIFF), and CPU time (user + sys, all
threads; less sensitive than wall time to other load on the machine).

With ``--repeats R`` each implementation runs R times per N (alternating, fresh subprocesses) and
the fastest run of each is reported (less noise on a shared machine). The 1-minute load average
before and after each N is printed, since other jobs on the machine inflate both timings.

Usage:
    .venv/bin/python benchmarks/bench_retrieval.py --sizes 10000 60000 120000 [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

TOL = 1e-6
METRICS = ("r_at_1", "map_at_r", "r_precision")


def make_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-structured unit vectors ``x = normalise(c_y + noise)``; sizes uniform in 2..8; float32.

    Normalised here because the peer ranks by L2 distance on the raw vectors.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, size=n // 2 + 1)
    labels = np.repeat(np.arange(sizes.size), sizes)[:n]
    if labels.size < n:
        raise RuntimeError("not enough classes drawn")
    centers = rng.standard_normal((sizes.size, dim)).astype(np.float32)
    emb = centers[labels] + 1.8 * rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # unit norm: L2 ranking == cosine ranking
    perm = rng.permutation(n)
    return np.ascontiguousarray(emb[perm]), labels[perm].astype(np.int64)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(which: str, n: int, dim: int, seed: int) -> dict[str, Any]:
    """Run one implementation; returns time, memory and the three metric values."""
    import torch

    if which == "ours":
        from tcm.metrics.retrieval import retrieval_metrics
    else:
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    emb, labels = make_data(n, dim, seed)
    base = _rss_mib()
    c0 = time.process_time()
    t0 = time.perf_counter()
    if which == "ours":
        m = retrieval_metrics(emb, labels, ks=(1,))
        vals = {"r_at_1": m.recall_at_k[1], "map_at_r": m.map_at_r, "r_precision": m.r_precision}
    else:
        calc = AccuracyCalculator(
            include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
            k="max_bin_count",
            device=torch.device("cpu"),
        )
        t_emb = torch.from_numpy(emb)
        t_lab = torch.from_numpy(labels)
        acc = calc.get_accuracy(t_emb, t_lab, t_emb, t_lab, ref_includes_query=True)
        vals = {
            "r_at_1": acc["precision_at_1"],
            "map_at_r": acc["mean_average_precision_at_r"],
            "r_precision": acc["r_precision"],
        }
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "cpu_s": cpu, "peak_mib": peak, "delta_mib": peak - base, **vals}


def run_sub(which: str, n: int, dim: int, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", which, "--sizes", str(n), "--dim", str(dim)]
    cmd += ["--seed", str(seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000, 120_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="runs per implementation and N")
    ap.add_argument("--worker", choices=("ours", "pml"), default=None)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.sizes[0], args.dim, args.seed)))
        return 0

    head = (
        f"{'N':>7} | {'ours s':>7} {'pml s':>7} {'x faster':>8} | {'ours MiB':>8} {'pml MiB':>8} "
        f"{'ratio':>5} | {'ours +MiB':>9} {'pml +MiB':>8} {'ratio':>5} | "
        f"{'dR@1':>8} {'dMAP@R':>8} {'dRP':>8} | result | {'ours cpu':>8} {'pml cpu':>8} {'x':>5}"
    )
    print(
        f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, D={args.dim}, "
        f"cpus: {os.cpu_count()}"
    )
    print(head)
    print("-" * len(head))
    ok = True
    for n in args.sizes:
        load0 = os.getloadavg()[0]
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "pml": []}
        for _ in range(max(1, args.repeats)):
            for which in ("ours", "pml"):
                runs[which].append(run_sub(which, n, args.dim, args.seed))
        ours = min(runs["ours"], key=lambda r: r["seconds"])
        pml = min(runs["pml"], key=lambda r: r["seconds"])
        diffs = [abs(ours[k] - pml[k]) for k in METRICS]
        equal = max(diffs) <= TOL
        ok &= equal
        print(
            f"{n:>7} | {ours['seconds']:>7.2f} {pml['seconds']:>7.2f} "
            f"{pml['seconds'] / ours['seconds']:>8.2f} | {ours['peak_mib']:>8.0f} "
            f"{pml['peak_mib']:>8.0f} {ours['peak_mib'] / pml['peak_mib']:>5.2f} | "
            f"{ours['delta_mib']:>9.0f} {pml['delta_mib']:>8.0f} "
            f"{ours['delta_mib'] / max(pml['delta_mib'], 1e-9):>5.2f} | "
            f"{diffs[0]:>8.1e} {diffs[1]:>8.1e} {diffs[2]:>8.1e} | "
            f"{'EQUAL' if equal else 'DIFF':>6} | "
            f"{ours['cpu_s']:>8.2f} {pml['cpu_s']:>8.2f} {pml['cpu_s'] / ours['cpu_s']:>5.2f}"
        )
        print(
            f"        values ours R@1={ours['r_at_1']:.6f} MAP@R={ours['map_at_r']:.6f} "
            f"RP={ours['r_precision']:.6f}; load avg (1 min) {load0:.2f} -> "
            f"{os.getloadavg()[0]:.2f}; best of {max(1, args.repeats)}",
            flush=True,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
