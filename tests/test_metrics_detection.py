"""tcm.metrics.detection against independent brute-force reimplementations (and torchmetrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcm.metrics import act_dcf, cllr, det_curve, log_auc, min_dcf, werm

EPS64 = np.finfo(np.float64).eps


def _data(seed: int, n: int = 60, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.4
    same[:2] = [True, False]
    s = rng.normal(size=n) * 0.2 + np.where(same, 0.6, 0.4)
    s = np.clip(s, 0.001, 0.999)
    if ties:
        s = np.round(s, 1)  # many ties, mixed classes within a tie
    return s, same


def _rates(s: np.ndarray, same: np.ndarray, t: float) -> tuple[float, float]:
    gen = [x for x, m in zip(s, same, strict=True) if m]
    imp = [x for x, m in zip(s, same, strict=True) if not m]
    fmr = sum(1 for x in imp if x >= t) / len(imp)
    fnmr = sum(1 for x in gen if x < t) / len(gen)
    return fmr, fnmr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_det_curve_brute_force(seed: int) -> None:
    s, same = _data(seed)
    c = det_curve(s, same)
    ts = [*sorted(set(s.tolist())), math.inf]
    assert c.thresholds.tolist() == ts
    for t, fmr, fnmr in zip(ts, c.fmr, c.fnmr, strict=True):
        assert (fmr, fnmr) == _rates(s, same, t)  # exact: same counts / same divisions


@pytest.mark.parametrize("p_target,c_miss,c_fa", [(0.01, 1, 1), (0.5, 1, 1), (0.05, 10, 1)])
def test_min_dcf_brute_force(p_target: float, c_miss: float, c_fa: float) -> None:
    s, same = _data(3)
    best = math.inf
    for t in [*s.tolist(), math.inf, -math.inf]:
        fmr, fnmr = _rates(s, same, t)
        best = min(best, c_miss * p_target * fnmr + c_fa * (1 - p_target) * fmr)
    want = best / min(c_miss * p_target, c_fa * (1 - p_target))
    assert min_dcf(s, same, p_target, c_miss, c_fa) == pytest.approx(want, rel=8 * EPS64)


def test_act_dcf_brute_force_llr_and_probability() -> None:
    rng = np.random.default_rng(4)
    same = np.arange(50) % 3 == 0
    llr = rng.normal(size=50) + np.where(same, 2.0, -2.0)
    p_t, cm, cf = 0.1, 2.0, 1.0
    theta = math.log(cf * (1 - p_t) / (cm * p_t))
    miss = sum(1 for x, m in zip(llr, same, strict=True) if m and x < theta) / same.sum()
    fa = sum(1 for x, m in zip(llr, same, strict=True) if not m and x >= theta) / (~same).sum()
    want = (cm * p_t * miss + cf * (1 - p_t) * fa) / min(cm * p_t, cf * (1 - p_t))
    assert act_dcf(llr, same, p_t, cm, cf) == pytest.approx(want, rel=8 * EPS64)
    # A posterior at prior 0.2 carries llr + logit(0.2).
    prior = 0.2
    post = 1 / (1 + np.exp(-(llr + math.log(prior / (1 - prior)))))
    got = act_dcf(post, same, p_t, cm, cf, kind="probability", prior=prior)
    assert got == pytest.approx(want, rel=8 * EPS64)
    assert act_dcf(llr, same, p_t, cm, cf) >= min_dcf(llr, same, p_t, cm, cf)


def test_cllr_brute_force() -> None:
    rng = np.random.default_rng(5)
    same = np.arange(40) % 4 == 0
    llr = rng.normal(size=40) * 3
    gen = [math.log2(1 + math.exp(-x)) for x, m in zip(llr, same, strict=True) if m]
    imp = [math.log2(1 + math.exp(x)) for x, m in zip(llr, same, strict=True) if not m]
    want = 0.5 * (sum(gen) / len(gen) + sum(imp) / len(imp))
    assert cllr(llr, same) == pytest.approx(want, rel=64 * EPS64)
    p = 1 / (1 + np.exp(-llr))
    assert cllr(p, same, kind="probability") == pytest.approx(want, rel=1e-12)
    # Confidently wrong: infinite cost.
    assert cllr([1.0, 0.0], [False, True], kind="probability") == math.inf


def test_cllr_uninformative_is_one() -> None:
    assert cllr(np.zeros(7), np.arange(7) < 3) == 1.0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    levels=st.integers(2, 30),
    extra=st.integers(0, 40),
    rng_ab=st.sampled_from([(1e-3, 1e-1), (0.01, 0.5), (0.05, 0.95), (0.2, 0.3)]),
)
def test_log_auc_equals_torchmetrics(
    seed: int, levels: int, extra: int, rng_ab: tuple[float, float]
) -> None:
    """Equality with torchmetrics' BinaryLogAUC on ROC curves without vertical runs.

    Every distinct score holds a genuine and an impostor, so no two ROC vertices share a FAR:
    torchmetrics 1.9.0 sorts the vertices with an unstable argsort before interpolating, and
    with tied FARs it may interpolate from any vertex of a vertical run (see the next test).
    """
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    rng = np.random.default_rng(seed)
    grid = np.sort(rng.choice(np.arange(1, 1000), size=levels, replace=False)) / 1000
    s = np.concatenate([grid, grid, rng.choice(grid, size=extra)])
    same = np.concatenate([np.ones(levels, bool), np.zeros(levels, bool), rng.random(extra) < 0.5])
    metric = tm.BinaryLogAUC(fpr_range=rng_ab)
    metric.update(torch.tensor(s, dtype=torch.float64), torch.tensor(same.astype(np.int64)))
    want = float(metric.compute())
    # torchmetrics computes FPR / TPR in float32 (relative error ~6e-8 per rate, amplified by the
    # 1 / log10(b / a) >= 1 / 3.3 rescaling and the slope of interpolation); 1e-5 absolute
    # covers it with margin while any real difference of definition is far larger.
    assert log_auc(s, same, far_range=rng_ab) == pytest.approx(want, abs=1e-5)


def test_log_auc_flat_segment_known_answer() -> None:
    """TAR is 1/3 on all of FAR in [0, 1/7]: LogAUC over (1e-3, 0.1) is exactly 1/3 (the
    curve starts with a vertical run of four FAR = 0 vertices)."""
    s = np.array([0.9, 0.85, 0.8, 0.7] + [0.6, 0.5, 0.4, 0.3, 0.2, 0.1] + [0.05] * 6)
    same = np.array([True] * 3 + [False] + [True] * 6 + [False] * 6)
    assert log_auc(s, same, (1e-3, 0.1)) == pytest.approx(1 / 3, rel=8 * EPS64)


def test_log_auc_perfect_and_random() -> None:
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    same = np.array([True, True, True, False, False, False])
    assert log_auc(s, same, (0.01, 0.5)) == 1.0
    assert log_auc(-s, same, (0.01, 0.5)) == 0.0


def test_werm_brute_force_and_paper_epsilon() -> None:
    fmr = [0.001, 0.0005, 0.004, 0.0]
    fnmr = [0.02, 0.05, 0.03, 0.01]
    eps = 1e-5
    geo_a = float(np.prod([x + eps for x in fmr])) ** (1 / 4)
    geo_b = float(np.prod([x + eps for x in fnmr])) ** (1 / 4)
    want = (max(fmr) / geo_a) ** 0.5 * (max(fnmr) / geo_b) ** 0.5
    assert werm(fmr, fnmr) == pytest.approx(want, rel=1e-12)
    want_w = (max(fmr) / geo_a) ** 0.3 * (max(fnmr) / geo_b) ** 0.7
    assert werm(fmr, fnmr, alpha=0.3, beta=0.7) == pytest.approx(want_w, rel=1e-12)
    # Equal rates (far above epsilon) are fair: WERM close to 1.
    assert werm([0.01] * 3, [0.1] * 3) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: det_curve([0.1, 0.2], [True, True]), "both genuine and impostor"),
        (lambda: det_curve([0.1, 0.2], [True]), "shape"),
        (lambda: det_curve([[0.1]], [[True]]), "1-D"),
        (lambda: det_curve([0.1, np.nan], [True, False]), "NaN"),
        (lambda: min_dcf([0.1, 0.2], [True, False], p_target=1.0), "p_target"),
        (lambda: min_dcf([0.1, 0.2], [True, False], c_fa=0), "c_fa"),
        (lambda: act_dcf([0.1, 1.2], [True, False], kind="probability"), r"\[0, 1\]"),
        (lambda: cllr([0.1, 0.2], [True, False], kind="logit"), "kind"),
        (lambda: log_auc([0.1, 0.2], [True, False], far_range=(0.1, 0.01)), "f_lo < f_hi"),
        (lambda: log_auc([0.1, 0.2], [True, False], far_range=(0.0, 0.1)), "far_range"),
        (lambda: werm([], [0.1]), "non-empty"),
        (lambda: werm([1.5], [0.1]), r"\[0, 1\]"),
        (lambda: werm([0.1], [0.1], epsilon=0), "epsilon"),
        (lambda: werm([0.1], [0.1], alpha=-1), "exponent"),
    ],
)
def test_bad_input_one_line_error(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        call()  # type: ignore[operator]
    assert "\n" not in str(e.value)
