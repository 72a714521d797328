"""Tests for SmoothAPLoss and RecallAtKSurrogateLoss against brute-force loop formulas."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tcm.losses import RecallAtKSurrogateLoss, SmoothAPLoss


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _sims(emb: Any) -> Any:
    x = np.asarray(emb, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def brute_smooth_ap(emb: Any, labels: Any, tau: float) -> float:
    s = _sims(emb)
    n = len(labels)
    aps = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        total = 0.0
        for j in pos:
            r_all = 1.0 + sum(_sig((s[i, k] - s[i, j]) / tau) for k in range(n) if k not in (i, j))
            r_pos = 1.0 + sum(_sig((s[i, k] - s[i, j]) / tau) for k in pos if k != j)
            total += r_pos / r_all
        aps.append(total / len(pos))
    return 1.0 - sum(aps) / len(aps)


def brute_rsk(emb: Any, labels: Any, ks: Any, tau1: float, tau2: float) -> float:
    s = _sims(emb)
    n = len(labels)
    per_k = []
    for k in ks:
        recalls = []
        for i in range(n):
            pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
            if not pos:
                continue
            hit = 0.0
            for j in pos:
                rank = 1.0 + sum(
                    _sig((s[i, q] - s[i, j]) / tau1) for q in range(n) if q not in (i, j)
                )
                hit += _sig((k - rank) / tau2)
            recalls.append(hit / min(k, len(pos)))
        per_k.append(1.0 - sum(recalls) / len(recalls))
    return float(sum(per_k) / len(per_k))


def _batch(
    seed: int, b: int = 14, d: int = 5, classes: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (b,), generator=g)
    return emb, labels


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tau", [0.01, 0.1])
@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_smooth_ap_matches_brute_force(seed: int, tau: float, chunk: Any) -> None:
    emb, labels = _batch(seed)  # unbalanced classes, possibly singletons (skipped queries)
    got = SmoothAPLoss(temperature=tau, chunk_size=chunk)(emb, labels)
    assert abs(float(got) - brute_smooth_ap(emb.numpy(), labels.tolist(), tau)) < 1e-10


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("chunk", [None, 3])
def test_rsk_matches_brute_force(seed: int, chunk: Any) -> None:
    emb, labels = _batch(seed, b=16)
    ks, tau1, tau2 = (1, 2, 4), 0.05, 1.0
    got = RecallAtKSurrogateLoss(ks=ks, tau1=tau1, tau2=tau2, chunk_size=chunk)(emb, labels)
    assert abs(float(got) - brute_rsk(emb.numpy(), labels.tolist(), ks, tau1, tau2)) < 1e-10


def test_rsk_default_parameters_match_brute_force() -> None:
    emb, labels = _batch(11, b=20, classes=3)
    got = RecallAtKSurrogateLoss()(emb, labels)
    want = brute_rsk(emb.numpy(), labels.tolist(), (1, 2, 4, 8, 16), 0.01, 1.0)
    assert abs(float(got) - want) < 1e-10


def test_auto_chunking_by_budget_matches_full_and_gradients() -> None:
    emb, labels = _batch(3, b=24, classes=3)
    for cls in (SmoothAPLoss, RecallAtKSurrogateLoss):
        e1 = emb.clone().requires_grad_(True)
        e2 = emb.clone().requires_grad_(True)
        full = cls()(e1, labels)
        small = cls(max_elements=100)(e2, labels)  # forces chunks + checkpointing
        full.backward()
        small.backward()
        assert abs(full.item() - small.item()) < 1e-12
        torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 2])
def test_gradcheck_smooth_ap(chunk: Any) -> None:
    emb, labels = _batch(21, b=9, d=3, classes=3)
    fn = SmoothAPLoss(temperature=0.1, chunk_size=chunk)
    assert torch.autograd.gradcheck(
        lambda e: fn(e, labels), (emb.requires_grad_(True),), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("chunk", [None, 2])
def test_gradcheck_rsk(chunk: Any) -> None:
    emb, labels = _batch(22, b=9, d=3, classes=3)
    fn = RecallAtKSurrogateLoss(ks=(1, 2, 4), tau1=0.1, tau2=1.0, chunk_size=chunk)
    assert torch.autograd.gradcheck(
        lambda e: fn(e, labels), (emb.requires_grad_(True),), eps=1e-6, atol=1e-6
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(3, 20), scale=st.floats(0.01, 100.0))
def test_properties(seed: int, b: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (b,), generator=g)
    if len(set(labels.tolist())) == b:
        labels[0] = labels[1]
    ap = SmoothAPLoss(temperature=0.05)
    rs = RecallAtKSurrogateLoss(ks=(1, 4), tau1=0.05)
    v_ap, v_rs = float(ap(emb, labels)), float(rs(emb, labels))
    assert 0.0 <= v_ap < 1.0
    assert -1.0 <= v_rs <= 1.0  # sigmoid(k - r) can exceed the hard recall slightly
    perm = torch.randperm(b, generator=g)
    assert math.isclose(float(ap(emb[perm] * scale, labels[perm])), v_ap, abs_tol=1e-9)
    assert math.isclose(float(rs(emb[perm] * scale, labels[perm])), v_rs, abs_tol=1e-9)


def test_perfect_separation_gives_near_zero_smooth_ap() -> None:
    # 3 classes on orthogonal axes, tiny noise: every positive outranks every negative
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    emb = centres[labels] + 1e-3 * torch.randn(9, 3, generator=g, dtype=torch.float64)
    assert float(SmoothAPLoss(temperature=0.01)(emb, labels)) < 1e-6
    # and reversed geometry (positives far, negatives close) is bad
    assert float(SmoothAPLoss(temperature=0.01)(emb, torch.tensor([0, 1, 2] * 3))) > 0.3


def test_no_positive_gives_zero_and_warns_once() -> None:
    emb = torch.randn(4, 3, requires_grad=True)
    for cls in (SmoothAPLoss, RecallAtKSurrogateLoss):
        fn = cls()
        with pytest.warns(RuntimeWarning, match="ClassBalancedBatchSampler"):
            loss = fn(emb, torch.tensor([0, 1, 2, 3]))
        assert loss.item() == 0.0
        loss.backward()  # connected to the graph, zero gradient
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fn(emb, torch.tensor([0, 1, 2, 3]))


def test_bfloat16_autocast_cpu_finite() -> None:
    lin = torch.nn.Linear(8, 6)
    x = torch.randn(16, 8)
    labels = torch.arange(4).repeat_interleave(4)
    for cls in (SmoothAPLoss, RecallAtKSurrogateLoss):
        lin.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = cls()(lin(x), labels)
        loss.backward()
        assert torch.isfinite(loss) and loss.dtype == torch.float32
        assert all(
            p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in lin.parameters()
        )


# --- error paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, -0.1, math.inf])
def test_error_bad_temperature(tau: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        SmoothAPLoss(temperature=tau)


@pytest.mark.parametrize("name", ["tau1", "tau2"])
def test_error_bad_rsk_tau(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be > 0"):
        RecallAtKSurrogateLoss(**{name: 0.0})  # type: ignore[arg-type]


@pytest.mark.parametrize("ks", [(), (0, 1), (1, 2.5), 4])
def test_error_bad_ks(ks: Any) -> None:
    with pytest.raises(ValueError, match="ks must"):
        RecallAtKSurrogateLoss(ks=ks)


@pytest.mark.parametrize("chunk", [0, -3, 2.5])
def test_error_bad_chunk_size(chunk: Any) -> None:
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        SmoothAPLoss(chunk_size=chunk)


def test_error_bad_max_elements() -> None:
    with pytest.raises(ValueError, match="max_elements must be a positive integer; got 0"):
        RecallAtKSurrogateLoss(max_elements=0)


@pytest.mark.parametrize("cls", [SmoothAPLoss, RecallAtKSurrogateLoss])
def test_error_length_mismatch(cls: Any) -> None:
    with pytest.raises(ValueError, match="length 3"):
        cls()(torch.randn(4, 2), torch.tensor([0, 0, 1]))


@pytest.mark.parametrize("cls", [SmoothAPLoss, RecallAtKSurrogateLoss])
def test_error_non_finite(cls: Any) -> None:
    emb = torch.randn(4, 2)
    emb[1, 0] = math.inf
    with pytest.raises(ValueError, match="first bad row index 1"):
        cls()(emb, torch.tensor([0, 0, 1, 1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [SmoothAPLoss, RecallAtKSurrogateLoss])
def test_cuda_matches_cpu(cls: Any) -> None:
    emb, labels = _batch(8, b=32, classes=5)
    cpu = cls()(emb, labels).item()
    e = emb.cuda().requires_grad_(True)
    loss = cls(chunk_size=7)(e, labels.cuda())
    loss.backward()
    assert abs(loss.item() - cpu) < 1e-9
    assert e.grad is not None and torch.isfinite(e.grad).all()
