"""Tests for tcm.losses.TCMLoss against pytorch-metric-learning and brute-force loops."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning.losses import ThresholdConsistentMarginLoss

from tcm.losses import TCMLoss


def brute_tcm(
    emb: Any,
    labels: Any,
    ref: Any = None,
    ref_labels: Any = None,
    lp: float = 1.0,
    ln: float = 1.0,
    mp: float = 0.9,
    mn: float = 0.5,
) -> float:
    """Independent loop reference of docs/definitions.md §4 (float64, Python floats)."""
    x = np.asarray(emb, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if ref is None:
        r, rl, skip_diag = x, list(labels), True
    else:
        r = np.asarray(ref, dtype=np.float64)
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
        rl, skip_diag = list(ref_labels), False
    pos, neg = [], []
    for i in range(len(x)):
        for j in range(len(r)):
            if skip_diag and i == j:
                continue
            s = float(np.dot(x[i], r[j]))
            if labels[i] == rl[j]:
                if s <= mp:
                    pos.append(mp - s)
            elif s >= mn:
                neg.append(s - mn)
    tp = sum(pos) / len(pos) if pos else 0.0
    tn = sum(neg) / len(neg) if neg else 0.0
    return lp * tp + ln * tn


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "params", [(1.0, 1.0, 0.9, 0.5), (0.5, 2.0, 0.3, 0.1), (1.0, 1.0, 0.0, -0.2)]
)
def test_matches_pml_without_ref(seed: int, params: tuple[float, float, float, float]) -> None:
    lp, ln, mp, mn = params
    g = torch.Generator().manual_seed(seed)
    b = 8 + 9 * seed
    emb = torch.randn(b, 12, generator=g)
    labels = torch.randint(0, 1 + seed, (b,), generator=g)
    ours = TCMLoss(lp, ln, mp, mn)(emb, labels)
    peer = ThresholdConsistentMarginLoss(
        lambda_plus=lp, lambda_minus=ln, margin_plus=mp, margin_minus=mn
    )(emb, labels)
    assert abs(float(ours) - float(peer)) <= 1e-6
    assert abs(float(ours) - brute_tcm(emb.numpy(), labels.tolist(), None, None, *params)) < 1e-5


def test_matches_pml_gradient() -> None:
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(40, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (40,), generator=g)
    e1 = emb.clone().requires_grad_(True)
    e2 = emb.clone().requires_grad_(True)
    TCMLoss(margin_pos=0.5, margin_neg=0.1)(e1, labels).backward()
    ThresholdConsistentMarginLoss(margin_plus=0.5, margin_minus=0.1)(e2, labels).backward()
    torch.testing.assert_close(e1.grad, e2.grad, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("seed", range(4))
def test_ref_emb_matches_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    emb = torch.randn(7 + seed, 5, generator=g, dtype=torch.float64)
    ref = torch.randn(11, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (emb.shape[0],), generator=g)
    ref_labels = torch.randint(0, 4, (11,), generator=g)
    got = TCMLoss(margin_pos=0.2, margin_neg=-0.1)(emb, labels, ref, ref_labels)
    want = brute_tcm(
        emb.numpy(), labels.tolist(), ref.numpy(), ref_labels.tolist(), mp=0.2, mn=-0.1
    )
    assert abs(float(got) - want) < 1e-12


def test_ref_emb_string_labels_are_compared_across_sets() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ref = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # "a"-"a" positive pairs: (0, 1) s=1.0 (no violation); "b"-"a": negatives (1,1) s=0 ok,
    # (0,0) "a" vs "x" s=0.6 >= 0.5 violates by 0.1; (1,0) "b" vs "x" s=0.8 violates by 0.3.
    got = TCMLoss()(emb, ["a", "b"], ref, np.array(["x", "a"]))
    want = brute_tcm(emb.numpy(), ["a", "b"], ref.numpy(), ["x", "a"])
    assert abs(float(got) - want) < 1e-6
    assert abs(want - 0.2) < 1e-6


def test_hand_computed_value() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    # positives: s=0.8 (twice, ordered) -> 0.1; negatives: 0.0 (ok), 0.6 -> 0.1
    assert abs(float(TCMLoss()(emb, torch.tensor([0, 0, 1]))) - 0.2) < 1e-6


def test_ordered_vs_unordered_pairs_give_same_mean() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(20, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (20,), generator=g)
    x = emb / emb.norm(dim=1, keepdim=True)
    s = x @ x.T
    iu = torch.triu_indices(20, 20, offset=1)
    su = s[iu[0], iu[1]]
    same = labels[iu[0]] == labels[iu[1]]
    pv = su[same & (su <= 0.9)]
    nv = su[~same & (su >= 0.5)]
    unordered = (0.9 - pv).mean() + (nv - 0.5).mean()
    assert abs(float(TCMLoss()(emb, labels)) - float(unordered)) < 1e-12


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(2, 24),
    scale=st.floats(0.01, 100.0),
    mp=st.floats(-0.5, 1.0),
    gap=st.floats(0.01, 1.0),
)
def test_properties(seed: int, b: int, scale: float, mp: float, gap: float) -> None:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (b,), generator=g)
    mn = max(-1.0, mp - gap)
    fn = TCMLoss(margin_pos=mp, margin_neg=mn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        base = float(fn(emb, labels))
        # non-negative and bounded by (1 + m+) + (1 - m-)
        assert 0.0 <= base <= (1 + mp) + (1 - mn) + 1e-12
        # L2-normalised inside: invariant to positive row scaling
        assert math.isclose(float(fn(emb * scale, labels)), base, abs_tol=1e-9)
        # invariant to permuting the batch and to relabelling classes
        perm = torch.randperm(b, generator=g)
        assert math.isclose(float(fn(emb[perm], labels[perm])), base, abs_tol=1e-9)
        assert math.isclose(float(fn(emb, labels * 7 + 3)), base, abs_tol=1e-9)
        # linear in the lambdas
        lin = TCMLoss(2.0, 0.0, mp, mn)(emb, labels) + TCMLoss(0.0, 3.0, mp, mn)(emb, labels)
        pos_t = float(TCMLoss(1.0, 0.0, mp, mn)(emb, labels))
        neg_t = float(TCMLoss(0.0, 1.0, mp, mn)(emb, labels))
        assert math.isclose(float(lin), 2 * pos_t + 3 * neg_t, abs_tol=1e-9)
        assert math.isclose(pos_t + neg_t, base, abs_tol=1e-9)


def _away_from_kinks(emb: Any, mp: float, mn: float, tol: float = 1e-3) -> bool:
    x = emb / emb.norm(dim=1, keepdim=True)
    s = x @ x.T
    return bool(((s - mp).abs() > tol).all() and ((s - mn).abs() > tol).all())


@pytest.mark.parametrize("use_ref", [False, True])
def test_gradcheck_float64(use_ref: bool) -> None:
    g = torch.Generator().manual_seed(7)
    mp, mn = 0.4, 0.0
    while True:
        emb = torch.randn(10, 4, generator=g, dtype=torch.float64)
        ref = torch.randn(6, 4, generator=g, dtype=torch.float64)
        if _away_from_kinks(emb, mp, mn) and _away_from_kinks(torch.cat([emb, ref]), mp, mn):
            break
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    ref_labels = torch.tensor([0, 1, 2, 3, 4, 0])
    fn = TCMLoss(1.3, 0.7, mp, mn)
    emb.requires_grad_(True)
    ref.requires_grad_(True)
    if use_ref:
        assert torch.autograd.gradcheck(
            lambda e, r: fn(e, labels, r, ref_labels), (emb, ref), eps=1e-6, atol=1e-6
        )
    else:
        assert torch.autograd.gradcheck(lambda e: fn(e, labels), (emb,), eps=1e-6, atol=1e-6)


def test_bfloat16_autocast_cpu_finite() -> None:
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(32, 16, generator=g)
    labels = torch.arange(8).repeat_interleave(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = lin(x)
        assert emb.dtype == torch.bfloat16
        loss = TCMLoss(margin_pos=0.9, margin_neg=0.0)(emb, labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss)
    assert loss.item() > 0
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in lin.parameters())


def test_float16_input_computed_in_float32() -> None:
    g = torch.Generator().manual_seed(2)
    emb32 = torch.randn(32, 16, generator=g)
    labels = torch.arange(8).repeat_interleave(4)
    emb16 = emb32.half().requires_grad_(True)
    loss = TCMLoss(margin_pos=0.9, margin_neg=0.0)(emb16, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and emb16.grad is not None
    assert torch.isfinite(loss) and torch.isfinite(emb16.grad.float()).all()
    ref = TCMLoss(margin_pos=0.9, margin_neg=0.0)(emb16.detach().float(), labels)
    assert abs(loss.item() - float(ref)) < 1e-6


def test_no_positive_pair_zero_term_and_warns_once() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 2])
    fn = TCMLoss(margin_neg=0.5)
    with pytest.warns(RuntimeWarning, match="ClassBalancedBatchSampler"):
        loss = fn(emb, labels)
    # only the negative term: violators 0.8 and 0.6 (each twice) -> mean (0.3 + 0.1) / 2
    assert abs(float(loss) - 0.2) < 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(emb, labels)  # second time: no warning


def test_no_violations_gives_exact_zero_with_grad() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0]], requires_grad=True)
    loss = TCMLoss()(emb, torch.tensor([0, 0, 1]))
    assert loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_accepts_numpy_and_list_labels() -> None:
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(12, 3, generator=g)
    lab = [3, 3, 5, 5, 9, 9, 3, 5, 9, 1, 1, 1]
    a = TCMLoss()(emb, torch.tensor(lab))
    assert float(a) == float(TCMLoss()(emb, np.array(lab)))
    assert float(a) == float(TCMLoss()(emb, [str(v) for v in lab]))


# --- error paths -------------------------------------------------------------------------------


def test_error_length_mismatch() -> None:
    with pytest.raises(ValueError, match="length 3"):
        TCMLoss()(torch.randn(4, 2), torch.tensor([0, 0, 1]))


def test_error_ref_length_mismatch() -> None:
    with pytest.raises(ValueError, match="ref_labels has length 2"):
        TCMLoss()(
            torch.randn(4, 2),
            torch.zeros(4, dtype=torch.long),
            torch.randn(3, 2),
            torch.tensor([0, 1]),
        )


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_error_non_finite_embeddings(bad: float) -> None:
    emb = torch.randn(4, 2)
    emb[2, 1] = bad
    with pytest.raises(ValueError, match="first bad row index 2"):
        TCMLoss()(emb, torch.tensor([0, 0, 1, 1]))


def test_error_non_finite_ref_emb() -> None:
    ref = torch.randn(3, 2)
    ref[0, 0] = math.nan
    with pytest.raises(ValueError, match="ref_emb contain NaN"):
        TCMLoss()(torch.randn(2, 2), torch.tensor([0, 1]), ref, torch.tensor([0, 1, 1]))


def test_error_not_2d() -> None:
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        TCMLoss()(torch.randn(4), torch.tensor([0, 0, 1, 1]))


def test_error_zero_row() -> None:
    with pytest.raises(ValueError, match="all-zero"):
        TCMLoss()(torch.zeros(3, 2), torch.tensor([0, 0, 1]))


@pytest.mark.parametrize("kw", [{"margin_pos": 1.5}, {"margin_neg": -1.2, "margin_pos": 0.3}])
def test_error_margin_outside_range(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        TCMLoss(**kw)


@pytest.mark.parametrize(("mp", "mn"), [(0.5, 0.5), (0.3, 0.6)])
def test_error_margin_order(mp: float, mn: float) -> None:
    with pytest.raises(ValueError, match="margin_neg must be < margin_pos"):
        TCMLoss(margin_pos=mp, margin_neg=mn)


@pytest.mark.parametrize("name", ["lambda_pos", "lambda_neg"])
def test_error_negative_lambda(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be >= 0; got -0.1"):
        TCMLoss(**{name: -0.1})


def test_error_nan_param() -> None:
    with pytest.raises(ValueError, match="margin_pos must be finite"):
        TCMLoss(margin_pos=math.nan)


def test_error_ref_emb_without_ref_labels() -> None:
    with pytest.raises(ValueError, match="ref_emb and ref_labels must be given together"):
        TCMLoss()(torch.randn(3, 2), torch.tensor([0, 0, 1]), ref_emb=torch.randn(2, 2))


def test_error_ref_labels_without_ref_emb() -> None:
    with pytest.raises(ValueError, match="ref_emb and ref_labels must be given together"):
        TCMLoss()(torch.randn(3, 2), torch.tensor([0, 0, 1]), ref_labels=torch.tensor([0, 1]))


def test_error_ref_dim_mismatch() -> None:
    with pytest.raises(ValueError, match="ref_emb has dimension 3"):
        TCMLoss()(
            torch.randn(3, 2), torch.tensor([0, 0, 1]), torch.randn(2, 3), torch.tensor([0, 1])
        )


def test_error_not_a_tensor() -> None:
    with pytest.raises(ValueError, match=r"must be a torch\.Tensor"):
        TCMLoss()(np.ones((3, 2)), torch.tensor([0, 0, 1]))


@pytest.mark.parametrize("use_ref", [False, True])
def test_custom_backward_matches_autograd_of_matrix_formula(use_ref: bool) -> None:
    from tcm.losses import tcm_loss_from_similarities

    g = torch.Generator().manual_seed(9)
    emb = torch.randn(30, 5, generator=g, dtype=torch.float64)
    ref = torch.randn(12, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (30,), generator=g)
    ref_labels = torch.randint(0, 4, (12,), generator=g)
    e1, r1 = emb.clone().requires_grad_(True), ref.clone().requires_grad_(True)
    e2, r2 = emb.clone().requires_grad_(True), ref.clone().requires_grad_(True)
    fn = TCMLoss(0.7, 1.9, 0.3, 0.0)
    x2 = e2 / e2.norm(dim=1, keepdim=True)
    if use_ref:
        got = fn(e1, labels, r1, ref_labels)
        y2 = r2 / r2.norm(dim=1, keepdim=True)
        pos = labels[:, None] == ref_labels[None, :]
        neg = ~pos
        want = tcm_loss_from_similarities(x2 @ y2.T, pos, neg, 0.7, 1.9, 0.3, 0.0)
    else:
        got = fn(e1, labels)
        same = labels[:, None] == labels[None, :]
        pos = same & ~torch.eye(30, dtype=torch.bool)
        want = tcm_loss_from_similarities(x2 @ x2.T, pos, ~same, 0.7, 1.9, 0.3, 0.0)
    (3.0 * got).backward()
    (3.0 * want).backward()
    assert abs(got.item() - want.item()) < 1e-12
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-10, atol=1e-12)
    if use_ref:
        torch.testing.assert_close(r1.grad, r2.grad, rtol=1e-10, atol=1e-12)


def test_ref_without_grad_only_gives_batch_gradient() -> None:
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(6, 3, generator=g, requires_grad=True)
    ref = torch.randn(5, 3, generator=g)
    TCMLoss(margin_pos=0.5, margin_neg=-0.5)(
        emb, torch.tensor([0, 0, 1, 1, 2, 2]), ref, torch.tensor([0, 1, 2, 3, 4])
    ).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert ref.grad is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float16_autocast_matches_cpu() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(64, 32, generator=g)
    labels = torch.arange(16).repeat_interleave(4)
    lin = torch.nn.Linear(32, 16)
    cpu = TCMLoss(margin_neg=0.0)(lin(x), labels).item()
    lin_c = lin.cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        loss = TCMLoss(margin_neg=0.0)(lin_c(x.cuda()), labels.cuda())
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(
        p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in lin_c.parameters()
    )
    assert abs(loss.item() - cpu) < 5e-3


def test_error_labels_not_1d() -> None:
    with pytest.raises(ValueError, match=r"labels must be 1-D; got shape \(2, 2\)"):
        TCMLoss()(torch.randn(4, 2), torch.zeros(2, 2, dtype=torch.long))


def test_error_ref_labels_not_1d() -> None:
    with pytest.raises(ValueError, match=r"ref_labels must be 1-D; got shape \(1, 2\)"):
        TCMLoss()(
            torch.randn(2, 2), torch.tensor([0, 1]), torch.randn(2, 2), torch.ones(1, 2).long()
        )


def test_error_ref_labels_length_with_string_labels() -> None:
    with pytest.raises(ValueError, match="ref_labels has length 3 but there are 2 embeddings"):
        TCMLoss()(torch.randn(2, 2), ["a", "b"], torch.randn(2, 2), ["a", "b", "c"])


def test_error_fractional_float_labels() -> None:
    with pytest.raises(ValueError, match="fractional part"):
        TCMLoss()(torch.randn(2, 2), torch.tensor([0.5, 1.0]))
