"""Benchmark: TCM with a cross-batch memory vs its floor, one similarity matmul, on CPU.

Steady state of ``build_loss("none", tcm=True, memory_size=M)`` (the memory already full): the
batch ``(B, D)`` is compared with the reference set ``[batch; memory]`` of ``B + M`` rows. The
floor is the unavoidable work of any pair loss on that reference set: one ``B x (B + M)``
similarity matmul forward and its backward (two matmuls). Time: median of ``--repeats`` runs,
the two timed alternately so that a busy machine slows both alike.

Usage::

    python benchmarks/bench_memory.py                       # M=4096, B=512, D=128
    python benchmarks/bench_memory.py --memory 4096 --batch 512 --dim 128 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def _interleaved_medians(
    fns: list[Callable[[], None]], repeats: int, warmup: int = 3
) -> list[float]:
    """Median ms of each function, timed alternately (a busy machine slows both alike)."""
    for _ in range(warmup):
        for f in fns:
            f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for f, t in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            f()
            t.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def run(memory: int, batch: int, dim: int, repeats: int, classes: int) -> dict[str, float]:
    """Return ``{"tcm_xbm_ms", "matmul_ms", "ratio"}`` for one configuration."""
    from tcm.losses import build_loss

    g = torch.Generator().manual_seed(0)
    loss_fn = build_loss("none", tcm=True, memory_size=memory)
    assert loss_fn.memory is not None
    loss_fn.memory.enqueue(
        torch.nn.functional.normalize(torch.randn(memory, dim, generator=g), dim=1),
        torch.randint(0, classes, (memory,), generator=g),
    )
    x = torch.randn(batch, dim, generator=g)
    labels = torch.arange(batch // 4).repeat_interleave(4) % classes

    def tcm_step() -> None:
        emb = x.clone().requires_grad_(True)
        loss_fn(emb, labels).backward()

    mem_emb, _ = loss_fn.memory.contents()
    ones = torch.ones(batch, batch + memory)

    def floor_step() -> None:
        emb = x.clone().requires_grad_(True)
        ref = torch.cat([emb, mem_emb])
        sims = emb @ ref.T
        sims.backward(ones)

    tcm_ms, floor_ms = _interleaved_medians([tcm_step, floor_step], repeats)
    return {"tcm_xbm_ms": tcm_ms, "matmul_ms": floor_ms, "ratio": tcm_ms / floor_ms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--memory", type=int, nargs="+", default=[4096])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--classes", type=int, default=1000, help="label range of the memory rows")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args()
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print("| M | B | D | TCM + memory fwd+bwd | B x (B+M) matmul fwd+bwd | ratio |")
    print("|---|---|---|---|---|---|")
    for m in a.memory:
        r = run(m, a.batch, a.dim, a.repeats, a.classes)
        print(
            f"| {m} | {a.batch} | {a.dim} | {r['tcm_xbm_ms']:.1f} ms | {r['matmul_ms']:.1f} ms "
            f"| {r['ratio']:.2f}x |"
        )


if __name__ == "__main__":
    main()
