"""Benchmark of ``tcm.metrics.threshold_consistency`` against the matmul floor and a NumPy baseline.

For each N it runs, each in a fresh subprocess (so peak RSS = ``ru_maxrss`` of that method alone):

* ``ours``     - ``threshold_consistency`` (defaults: far_range (1e-2, 1e-1), 101 thresholds);
* ``floor``    - the bare block matmuls ``X_i X_j^T`` over the upper triangle, each unordered pair
  once, run exactly as ``ours`` runs them (same blocks and default block size, same worker
  threads, outputs written into a reused buffer) with nothing else done per block. ``ours``
  makes two such passes (exact quantiles, then counts) plus a small sample, so ``ours/fl``
  cannot go below ~2;
* ``mm-serial`` - the same pairs as a plain loop of multi-threaded ``x_i @ x_j.T`` over 4096-row
  blocks with a fresh output per block (the floor as first defined; page faults for the 64 MiB
  outputs and thread barriers make it slower than ``floor``, much slower on a busy machine);
* ``baseline`` - what a user writes by hand: full N x N float64 similarity matrix, ``np.quantile``
  of the negatives, then a loop over classes and thresholds (skipped when its peak memory,
  about 24 N^2 bytes, would exceed 80% of the available memory: it is killed otherwise).

Synthetic data: ``N`` float32 embeddings of dimension ``--dim``, ``round(N * ratio)`` classes
(Gaussian class centres plus noise). Usage::

    python benchmarks/bench_metrics.py --sizes 10000 30000 100000
    python benchmarks/bench_metrics.py --sizes 2000 --threads 1     # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

BASELINE_BYTES_PER_PAIR = 24  # N x N float64 matrix + triu indices + the upper-triangle copies


def available_bytes() -> int:
    """``MemAvailable`` from /proc/meminfo (8 GiB where that cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def make_data(n: int, dim: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: float32 ``(n, dim)`` embeddings and int64 ``(n,)`` labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    centers = rng.normal(size=(num_classes, dim)).astype(np.float32)
    x = rng.normal(size=(n, dim)).astype(np.float32) + 1.0 * centers[y]
    return x, y


def run_ours(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from tcm.metrics import threshold_consistency

    t = time.perf_counter()
    r = threshold_consistency(x, y)
    return {"time": time.perf_counter() - t, "opis": r.opis}


def run_floor(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from tcm.metrics._pairs import Block, check_block_size, map_blocks, prepare

    def drain(blocks: Iterator[Block]) -> int:
        return sum(1 for _ in blocks)

    t = time.perf_counter()
    prep = prepare(x, y)
    map_blocks(prep, check_block_size(None, prep), (0, 1), drain)
    return {"time": time.perf_counter() - t, "opis": None}


def run_mm_serial(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    import torch

    t = time.perf_counter()
    xt = torch.nn.functional.normalize(torch.as_tensor(x), dim=1)
    n = xt.shape[0]
    b = 4096
    for i in range(0, n, b):
        for j in range(i, n, b):
            _ = xt[i : i + b] @ xt[j : j + b].T
    return {"time": time.perf_counter() - t, "opis": None}


def run_baseline(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Straightforward per-threshold NumPy implementation (the definition, by hand)."""
    t = time.perf_counter()
    xn = x.astype(np.float64)
    xn /= np.linalg.norm(xn, axis=1, keepdims=True)
    s = xn @ xn.T
    n = len(y)
    iu = np.triu_indices(n, 1)
    same = y[iu[0]] == y[iu[1]]
    neg = s[iu][~same]
    del iu, same
    th = np.linspace(np.quantile(neg, 0.9), np.quantile(neg, 0.99), 101)
    del neg
    classes, counts = np.unique(y, return_counts=True)
    utils = []
    for c, nc in zip(classes, counts, strict=True):
        if nc < 2:
            continue
        m = y == c
        sc = s[m]
        pos = np.sort(sc[:, m][np.triu_indices(nc, 1)])
        negc = np.sort(sc[:, ~m].ravel())
        row = []
        for thr in th:
            tar = (len(pos) - np.searchsorted(pos, thr, side="left")) / len(pos)
            trr = np.searchsorted(negc, thr, side="left") / len(negc)
            row.append(0.0 if tar + trr == 0 else 2 * tar * trr / (tar + trr))
        utils.append(row)
    u = np.array(utils)
    opis = float(np.mean(np.var(u, axis=0)))
    return {"time": time.perf_counter() - t, "opis": opis}


METHODS = {
    "ours": run_ours,
    "floor": run_floor,
    "mm-serial": run_mm_serial,
    "baseline": run_baseline,
}


def worker(method: str, n: int, dim: int, num_classes: int) -> None:
    x, y = make_data(n, dim, num_classes)
    out = METHODS[method](x, y)
    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(out))


def spawn(method: str, n: int, dim: int, num_classes: int, threads: int | None) -> dict[str, Any]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "--worker", method, str(n), str(dim), str(num_classes)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
        return {"error": last or f"exit code {res.returncode}"}
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument(
        "--classes-per-sample", type=float, default=0.1, help="classes = N * ratio (default 0.1)"
    )
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the workers")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), int(a.worker[2]), int(a.worker[3]))
        return
    hdr = (
        f"{'N':>7} {'C':>6} | {'ours s':>8} {'RSS MiB':>8} | {'floor s':>8} {'ours/fl':>7} | "
        f"{'mm-ser s':>8} | {'base s':>8} {'RSS MiB':>8} {'base/ours':>9} | {'|dOPIS|':>8}"
    )
    print(f"threshold_consistency, D={a.dim}, far_range=(1e-2, 1e-1), K=101")
    print(hdr)
    print("-" * len(hdr))
    for n in a.sizes:
        c = max(2, round(n * a.classes_per_sample))
        ours = spawn("ours", n, a.dim, c, a.threads)
        floor = spawn("floor", n, a.dim, c, a.threads)
        mm = spawn("mm-serial", n, a.dim, c, a.threads)
        if "error" in ours or "error" in floor or "error" in mm:
            err = ours.get("error") or floor.get("error") or mm.get("error")
            print(f"{n:>7} {c:>6} | error: {err}")
            continue
        ratio = ours["time"] / max(floor["time"], 1e-9)
        row = (
            f"{n:>7} {c:>6} | {ours['time']:8.2f} {ours['rss_mib']:8.0f} | "
            f"{floor['time']:8.2f} {ratio:7.2f} | {mm['time']:8.2f} | "
        )
        if a.no_baseline:
            row += "skipped (--no-baseline)"
        elif BASELINE_BYTES_PER_PAIR * n * n > 0.8 * available_bytes():
            row += f"skipped (N^2 memory: ~{BASELINE_BYTES_PER_PAIR * n * n / 2**30:.0f} GiB)"
        else:
            base = spawn("baseline", n, a.dim, c, a.threads)
            if "error" in base:
                row += f"baseline error: {base['error']}"
            else:
                d = abs(base["opis"] - ours["opis"])
                row += (
                    f"{base['time']:8.2f} {base['rss_mib']:8.0f} "
                    f"{base['time'] / ours['time']:9.1f} | {d:8.1e}"
                )
        print(row, flush=True)


if __name__ == "__main__":
    main()
