"""Benchmark: TCM loss forward+backward time and peak memory, ours vs pytorch-metric-learning.

Each (method, batch size) runs in its own subprocess under a memory limit (``RLIMIT_AS`` on CPU:
the address space after imports plus ``--mem-gb``),
so an out-of-memory peer shows up as "OOM" in the table instead of crashing the run.

Usage (tiny check)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_losses.py --sizes 256 512

Full run (quiet machine)::

    .venv/bin/python benchmarks/bench_losses.py --sizes 256 512 1024 2048 4096 --mem-gb 24

Methods: ``tcm`` (tcm.losses.TCMLoss), ``pml_tcm`` (pytorch-metric-learning
ThresholdConsistentMarginLoss), and optionally ``smooth_ap`` / ``rsk`` (our ranking losses).
Memory: peak RSS growth of the worker during the timed loop (CPU, MiB) or
``torch.cuda.max_memory_allocated`` growth (CUDA, MiB). Time: median of ``--repeats`` runs (ms).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

DEFAULT_METHODS = ("tcm", "pml_tcm")


def _make_loss(method: str) -> Any:
    if method == "tcm":
        from tcm.losses import TCMLoss

        return TCMLoss()
    if method == "pml_tcm":
        from pytorch_metric_learning.losses import ThresholdConsistentMarginLoss

        return ThresholdConsistentMarginLoss()
    if method == "smooth_ap":
        from tcm.losses import SmoothAPLoss

        return SmoothAPLoss()
    if method == "rsk":
        from tcm.losses import RecallAtKSurrogateLoss

        return RecallAtKSurrogateLoss()
    raise ValueError(f"unknown method {method!r}; valid: tcm, pml_tcm, smooth_ap, rsk")


def _vm_size_bytes() -> int:
    """Current virtual address-space size of this process (Linux ``/proc``; 0 if unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _worker(
    method: str, b: int, dim: int, repeats: int, device: str, mem_gb: float
) -> dict[str, Any]:
    import torch

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, dim, generator=g).to(dev)
    labels = torch.arange(b // 4).repeat_interleave(4)[:b]
    labels = torch.cat([labels, torch.zeros(b - labels.numel(), dtype=torch.long)]).to(dev)
    loss_fn = _make_loss(method)
    if device == "cpu" and mem_gb > 0:
        # The limit is on address space *added* after imports and set-up (torch alone maps ~3 GiB
        # of virtual memory that is never resident), i.e. roughly the memory the loss may use.
        limit = _vm_size_bytes() + int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def step() -> None:
        e = x.clone().requires_grad_(True)
        loss = loss_fn(e, labels)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times: list[float] = []
    try:
        step()  # warm-up (also the first peak-memory sample)
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    except (MemoryError, RuntimeError) as exc:  # torch raises RuntimeError on failed allocation
        msg = str(exc)
        if isinstance(exc, MemoryError) or "memory" in msg.lower() or "alloc" in msg.lower():
            return {"status": "OOM"}
        raise
    if dev.type == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"status": "ok", "ms": 1e3 * statistics.median(times), "peak_mib": peak_mib}


def _run_one(args: argparse.Namespace, method: str, b: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_worker",
        method,
        str(b),
        "--dim",
        str(args.dim),
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
        "--mem-gb",
        str(args.mem_gb),
    ]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            out: dict[str, Any] = json.loads(line)
            return out
    # killed by the OOM killer / signal, or an allocation failure outside the try block
    err = proc.stderr.lower()
    if proc.returncode < 0 or "memory" in err or "alloc" in err:
        return {"status": "OOM"}
    return {"status": f"error rc={proc.returncode}: {proc.stderr.strip()[-200:]}"}


def _fmt(r: dict[str, Any], key: str, spec: str) -> str:
    return format(r[key], spec) if r.get("status") == "ok" else str(r.get("status"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--mem-gb",
        type=float,
        default=24.0,
        help="memory (GiB) a CPU worker may add after set-up (RLIMIT_AS)",
    )
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for workers (0: keep)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per (method, size)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--_worker", nargs=2, metavar=("METHOD", "B"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        res = _worker(
            args._worker[0], int(args._worker[1]), args.dim, args.repeats, args.device, args.mem_gb
        )
        print(json.dumps(res), flush=True)
        return 0

    results: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in args.methods}
    for b in args.sizes:
        for m in args.methods:
            results[m][b] = _run_one(args, m, b)
            print(f"# {m:10s} B={b:5d}: {results[m][b]}", file=sys.stderr, flush=True)

    ours, peer = "tcm", "pml_tcm"
    cols = ["B"]
    for m in args.methods:
        cols += [f"{m} ms", f"{m} MiB"]
    have_ratio = ours in results and peer in results
    if have_ratio:
        cols += ["speed-up (pml/ours)", "memory ratio (pml/ours)"]
    print(f"device={args.device} D={args.dim} repeats={args.repeats} mem limit={args.mem_gb} GiB")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for b in args.sizes:
        row = [str(b)]
        for m in args.methods:
            row += [_fmt(results[m][b], "ms", ".1f"), _fmt(results[m][b], "peak_mib", ".0f")]
        if have_ratio:
            a, c = results[ours][b], results[peer][b]
            if a.get("status") == "ok" and c.get("status") == "ok":
                row.append(f"{c['ms'] / a['ms']:.1f}x")
                row.append(f"{c['peak_mib'] / max(a['peak_mib'], 1.0):.1f}x")
            else:
                row += ["n/a", "n/a"]
        print("| " + " | ".join(row) + " |")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(
                {m: {str(b): r for b, r in d.items()} for m, d in results.items()}, f, indent=2
            )
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
