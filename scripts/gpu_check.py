#!/usr/bin/env python
"""CUDA checks for a machine with a GPU (never run by the tests; CI has no GPU).

    python scripts/gpu_check.py --out gpu_check.json

1. ``threshold_consistency`` / ``operating_point`` / ``retrieval_metrics`` on CUDA tensors equal
   the CPU results (OPIS to 1e-9 relative, counts exactly).
2. Wall time of ``threshold_consistency`` at N = 100k, D = 128, 10k classes on the GPU.
3. ``TCMLoss`` forward + backward on CUDA at B = 4096, D = 512 (ours vs pytorch-metric-learning)
   and under bf16 autocast (finite).
4. ``retrieval_metrics`` at N = 120k on the GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tcm.losses import TCMLoss
from tcm.metrics import operating_point, retrieval_metrics, threshold_consistency


def clustered(n: int, d: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d))
    labels = rng.integers(0, c, size=n)
    x = centers[labels] + 1.5 * rng.normal(size=(n, d))
    return x.astype(np.float32), labels


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="gpu_check.json")
    a = p.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    dev = torch.device("cuda")
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    # 1. equality CPU vs CUDA
    x, y = clustered(6000, 64, 300, 0)
    cpu = threshold_consistency(x, y)
    gpu = threshold_consistency(torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev))
    res["opis_cpu"], res["opis_cuda"] = cpu.opis, gpu.opis
    res["opis_rel_diff"] = abs(cpu.opis - gpu.opis) / cpu.opis
    res["thresholds_max_abs_diff"] = float(np.abs(cpu.thresholds - gpu.thresholds).max())
    t = float(cpu.thresholds[50])
    oc, og = operating_point(x, y, t), operating_point(torch.from_numpy(x).to(dev), y, t)
    res["operating_point_equal"] = bool(np.array_equal(oc.far, og.far))
    rc = retrieval_metrics(x, y)
    rg = retrieval_metrics(torch.from_numpy(x).to(dev), y)
    res["retrieval_equal"] = bool(
        rc.recall_at_k == rg.recall_at_k
        and abs(rc.map_at_r - rg.map_at_r) < 1e-9
        and abs(rc.r_precision - rg.r_precision) < 1e-9
    )
    print({k: res[k] for k in list(res)[:8]}, flush=True)

    # 2. metrics at scale
    x, y = clustered(100_000, 128, 10_000, 1)
    xt = torch.from_numpy(x).to(dev)
    threshold_consistency(xt[:2000], y[:2000])  # warm-up
    r, s = timed(lambda: threshold_consistency(xt, y))
    res["tc_100k_s"] = s
    res["tc_100k_opis"] = r.opis
    print("threshold_consistency 100k on GPU:", s, "s", flush=True)

    # 4. retrieval at scale
    x, y = clustered(120_000, 128, 24_000, 2)
    xt = torch.from_numpy(x).to(dev)
    rr, s = timed(lambda: retrieval_metrics(xt, y))
    res["retrieval_120k_s"] = s
    res["retrieval_120k_r1"] = rr.recall_at_k[1]
    print("retrieval 120k on GPU:", s, "s", flush=True)

    # 3. loss
    g = torch.Generator(device="cpu").manual_seed(0)
    emb = torch.randn(4096, 512, generator=g).to(dev).requires_grad_(True)
    lab = torch.randint(0, 1024, (4096,), generator=g).to(dev)
    ours = TCMLoss()

    def step(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        emb.grad = None
        loss = fn(emb, lab)
        loss.backward()
        return float(loss)

    for name, fn in (("ours", ours),):
        step(fn)
        _, s = timed(lambda fn=fn: [step(fn) for _ in range(10)])
        res[f"tcm_b4096_{name}_ms"] = 1e3 * s / 10
    try:
        from pytorch_metric_learning.losses import ThresholdConsistentMarginLoss

        peer = ThresholdConsistentMarginLoss()
        torch.cuda.reset_peak_memory_stats()
        v_peer = step(peer)
        _, s = timed(lambda: [step(peer) for _ in range(3)])
        res["tcm_b4096_peer_ms"] = 1e3 * s / 3
        res["tcm_b4096_peer_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["tcm_b4096_value_diff"] = abs(v_peer - step(ours))
    except Exception as exc:  # peer OOM or missing
        res["tcm_b4096_peer_error"] = repr(exc)[:200]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        v = step(ours)
    res["tcm_bf16_finite"] = bool(np.isfinite(v)) and bool(torch.isfinite(emb.grad).all())
    print(json.dumps(res, indent=1), flush=True)
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
