"""tcm.metrics.bootstrap: explicit-loop brute force, determinism, coverage of the point, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcm.metrics import (
    Interval,
    bootstrap_epsilon_opis,
    bootstrap_opis,
    bootstrap_rates,
    bootstrap_ratio,
    bootstrap_statistic,
    class_bootstrap_indices,
    class_bootstrap_weights,
    percentile_interval,
)


def loop_quantile(x: list[float], q: float) -> float:
    v = sorted(x)
    h = (len(v) - 1) * q
    lo = math.floor(h)
    return v[lo] if lo + 1 >= len(v) else v[lo] + (h - lo) * (v[lo + 1] - v[lo])


def loop_opis(u: np.ndarray) -> float:
    t, k = u.shape
    total = 0.0
    for j in range(k):
        col = [float(u[c, j]) for c in range(t)]
        mean = sum(col) / t
        total += sum((x - mean) ** 2 for x in col) / t
    return total / k


def loop_eps_opis(u: np.ndarray, eps: float) -> float:
    t, k = u.shape
    m = max(1, math.floor(eps * t))
    total = 0.0
    for j in range(k):
        col = sorted(float(u[c, j]) for c in range(t))
        total += (sum(col[-m:]) / m - sum(col[:m]) / m) ** 2
    return total / k


def table(seed: int = 0, t: int = 30, k: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.3, 1.0, size=(t, k))


def test_indices_and_weights_are_seeded_and_consistent() -> None:
    idx = class_bootstrap_indices(9, 50, seed=3)
    assert idx.shape == (50, 9) and idx.dtype == np.int64 and idx.min() >= 0 and idx.max() < 9
    np.testing.assert_array_equal(idx, class_bootstrap_indices(9, 50, seed=3))
    assert not np.array_equal(idx, class_bootstrap_indices(9, 50, seed=4))
    w = class_bootstrap_weights(9, 50, seed=3)
    for b in range(50):
        np.testing.assert_array_equal(w[b], np.bincount(idx[b], minlength=9))


def test_percentile_interval_matches_loop_quantiles() -> None:
    x = np.random.default_rng(1).normal(size=201)
    lo, hi = percentile_interval(x, ci=0.9)
    assert lo == pytest.approx(loop_quantile(x.tolist(), 0.05), abs=1e-12)
    assert hi == pytest.approx(loop_quantile(x.tolist(), 0.95), abs=1e-12)
    x2 = np.stack([x, 2 * x], axis=1)
    lo2, hi2 = percentile_interval(x2, ci=0.9)
    assert isinstance(hi2, np.ndarray)
    assert isinstance(lo2, np.ndarray)
    np.testing.assert_allclose(lo2, [lo, 2 * lo], rtol=1e-12)


def test_percentile_interval_ignores_nan() -> None:
    x = np.array([1.0, np.nan, 3.0, 2.0])
    assert percentile_interval(x, 0.5) == percentile_interval(np.array([1.0, 3.0, 2.0]), 0.5)
    lo, hi = percentile_interval(np.array([np.nan, np.nan]), 0.5)
    assert math.isnan(lo) and math.isnan(hi)


def test_ratio_against_explicit_loop() -> None:
    rng = np.random.default_rng(2)
    denom = rng.integers(1, 50, size=20)
    numer = rng.binomial(denom, 0.7)
    iv = bootstrap_ratio(numer, denom, ci=0.8, n_boot=300, seed=5)
    idx = class_bootstrap_indices(20, 300, seed=5)
    samples = []
    for b in range(300):
        num = sum(int(numer[c]) for c in idx[b])
        den = sum(int(denom[c]) for c in idx[b])
        samples.append(num / den)
    assert iv.lo == pytest.approx(loop_quantile(samples, 0.1), abs=1e-12)
    assert iv.hi == pytest.approx(loop_quantile(samples, 0.9), abs=1e-12)
    assert iv.point == pytest.approx(numer.sum() / denom.sum(), abs=1e-15)
    assert iv.n_boot == 300 and iv.ci == 0.8 and iv.n_valid == 300


def test_ratio_vector_valued_per_group() -> None:
    rng = np.random.default_rng(3)
    denom = rng.integers(0, 30, size=(25, 3))
    denom[:, 0] += 1
    numer = rng.binomial(denom, [0.1, 0.5, 0.9])
    iv = bootstrap_ratio(numer, denom, n_boot=200, seed=0)
    assert isinstance(iv.lo, np.ndarray) and iv.lo.shape == (3,)
    for g in range(3):
        one = bootstrap_ratio(numer[:, g], denom[:, g], n_boot=200, seed=0)
        assert iv.lo[g] == pytest.approx(one.lo, abs=1e-12)
        assert iv.hi[g] == pytest.approx(one.hi, abs=1e-12)


def test_ratio_zero_denominator_resamples_are_left_out() -> None:
    numer = np.array([1, 0, 0, 0, 0, 0])
    denom = np.array([2, 0, 0, 0, 0, 0])  # most resamples miss class 0 -> undefined rate
    iv = bootstrap_ratio(numer, denom, n_boot=100, seed=0)
    assert iv.n_valid is not None and 0 < iv.n_valid < 100
    assert iv.lo == iv.hi == 0.5 and iv.point == 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_opis_vectorised_equals_loop(seed: int) -> None:
    u = table(seed)
    fast = bootstrap_opis(u, ci=0.9, n_boot=150, seed=seed)
    slow = bootstrap_statistic(u, loop_opis, ci=0.9, n_boot=150, seed=seed)
    assert fast.point == pytest.approx(loop_opis(u), rel=1e-12)
    # the two differ only in float64 summation order; OPIS ~ 1e-2 here
    assert fast.lo == pytest.approx(slow.lo, rel=1e-9)
    assert fast.hi == pytest.approx(slow.hi, rel=1e-9)


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5])
def test_eps_opis_vectorised_equals_loop(eps: float) -> None:
    u = table(4, t=41)
    u[3] = u[5]  # tied rows
    fast = bootstrap_epsilon_opis(u, epsilon=eps, ci=0.9, n_boot=120, seed=2)
    slow = bootstrap_statistic(u, lambda x: loop_eps_opis(x, eps), ci=0.9, n_boot=120, seed=2)
    assert fast.point == pytest.approx(loop_eps_opis(u, eps), rel=1e-12)
    assert fast.lo == pytest.approx(slow.lo, rel=1e-9)
    assert fast.hi == pytest.approx(slow.hi, rel=1e-9)


def test_interval_contains_point_on_reasonable_data() -> None:
    u = table(7, t=200, k=11)
    for iv in (
        bootstrap_opis(u),
        bootstrap_epsilon_opis(u, 0.05),
        bootstrap_statistic(u, lambda x: float(x.mean())),
        bootstrap_ratio(np.full(200, 7) + np.arange(200) % 3, np.full(200, 10)),
    ):
        assert iv.lo <= iv.point <= iv.hi
        assert iv.lo < iv.hi


def test_seeded_determinism_and_json() -> None:
    u = table(8)
    a = bootstrap_epsilon_opis(u, n_boot=50, seed=11)
    b = bootstrap_epsilon_opis(u, n_boot=50, seed=11)
    assert a == b
    assert bootstrap_epsilon_opis(u, n_boot=50, seed=12) != a
    d = json.loads(json.dumps(bootstrap_ratio(np.ones((4, 2)), np.full((4, 2), 2.0)).to_dict()))
    assert d["lo"] == [0.5, 0.5] and d["point"] == [0.5, 0.5] and d["n_boot"] == 1000
    assert set(Interval(0.1, 0.2, 0.95, 10).to_dict()) == {
        "lo",
        "hi",
        "ci",
        "n_boot",
        "point",
        "n_valid",
    }


def test_interval_narrows_with_more_classes() -> None:
    small = bootstrap_opis(table(9, t=20), n_boot=300)
    big = bootstrap_opis(table(9, t=2000), n_boot=300)
    assert (big.hi - big.lo) < (small.hi - small.lo)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("n_boot", [0, -3, 2.5, True])
def test_bad_n_boot(n_boot: object) -> None:
    with pytest.raises(ValueError, match="n_boot must be an int >= 1"):
        bootstrap_ratio(np.ones(3), np.ones(3), n_boot=n_boot)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_boot must be an int >= 1"):
        bootstrap_opis(table(), n_boot=n_boot)  # type: ignore[arg-type]


@pytest.mark.parametrize("ci", [0.0, 1.0, -0.5, 1.5, math.nan, "x"])
def test_bad_ci(ci: object) -> None:
    with pytest.raises(ValueError, match="ci must"):
        bootstrap_ratio(np.ones(3), np.ones(3), ci=ci)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ci must"):
        percentile_interval(np.ones(3), ci=ci)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ci must"):
        bootstrap_statistic(table(), np.mean, ci=ci)  # type: ignore[arg-type]


def test_bad_tables() -> None:
    with pytest.raises(ValueError, match="same shape"):
        bootstrap_ratio(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="denom must be >= 0"):
        bootstrap_ratio(np.ones(3), -np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ratio(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(ValueError, match=r"\(T, K\)"):
        bootstrap_opis(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_epsilon_opis(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="epsilon"):
        bootstrap_epsilon_opis(table(), epsilon=0.0)
    with pytest.raises(ValueError, match=">= 1 class"):
        class_bootstrap_indices(0, 5)
    with pytest.raises(ValueError, match="T >= 1"):
        bootstrap_statistic(np.ones((0, 3)), np.mean)


def loop_gini(r: list[float]) -> float:
    g = len(r)
    mean = sum(r) / g
    total = sum(abs(a - b) for a in r for b in r)
    return g / (g - 1) * total / (2 * g * g * mean)


def test_rates_group_summary_against_explicit_loop() -> None:
    rng = np.random.default_rng(6)
    t, g = 30, 3
    imp = rng.integers(5, 40, size=(t, g))  # per (class, group) impostor pairs
    acc = rng.binomial(imp, [0.01, 0.05, 0.2])  # accepted impostor pairs
    gen = rng.integers(1, 10, size=(t, g))
    rej = rng.binomial(gen, [0.3, 0.1, 0.05])

    def garbe(r: dict[str, np.ndarray]) -> np.ndarray:
        def gini(x: np.ndarray) -> np.ndarray:
            diff = np.abs(x[:, :, None] - x[:, None, :]).sum(axis=(1, 2))
            k = x.shape[1]
            return k / (k - 1) * diff / (2 * k * k * x.mean(axis=1))

        return 0.5 * gini(r["far"]) + 0.5 * gini(r["frr"])

    iv = bootstrap_rates({"far": (acc, imp), "frr": (rej, gen)}, garbe, ci=0.9, n_boot=150, seed=1)
    idx = class_bootstrap_indices(t, 150, seed=1)
    samples = []
    for b in range(150):
        far = [
            sum(int(acc[c, h]) for c in idx[b]) / sum(int(imp[c, h]) for c in idx[b])
            for h in range(g)
        ]
        frr = [
            sum(int(rej[c, h]) for c in idx[b]) / sum(int(gen[c, h]) for c in idx[b])
            for h in range(g)
        ]
        samples.append(0.5 * loop_gini(far) + 0.5 * loop_gini(frr))
    assert iv.lo == pytest.approx(loop_quantile(samples, 0.05), rel=1e-10)
    assert iv.hi == pytest.approx(loop_quantile(samples, 0.95), rel=1e-10)
    far0 = (acc.sum(0) / imp.sum(0)).tolist()
    frr0 = (rej.sum(0) / gen.sum(0)).tolist()
    assert iv.point == pytest.approx(0.5 * loop_gini(far0) + 0.5 * loop_gini(frr0), rel=1e-12)
    assert iv.lo <= iv.point <= iv.hi


def test_rates_errors() -> None:
    ones = (np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_rates({}, lambda r: r)
    with pytest.raises(ValueError, match="same number of classes"):
        bootstrap_rates({"a": ones, "b": (np.ones(4), np.ones(4))}, lambda r: r["a"][:, 0])
    with pytest.raises(ValueError, match="keep axis 0"):
        bootstrap_rates({"a": ones}, lambda r: float(r["a"].mean()), n_boot=40)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_rates({"a": ones}, lambda r: r["a"][:, 0], n_boot=0)
    with pytest.raises(ValueError, match="ci must"):
        bootstrap_rates({"a": ones}, lambda r: r["a"][:, 0], ci=1.0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(1, 30)), min_size=1, max_size=25),
    st.integers(0, 2**31 - 1),
    st.integers(-3, 3),
)
def test_ratio_properties(rows: list[tuple[int, int]], seed: int, k: int) -> None:
    denom = np.array([d for _, d in rows], dtype=np.int64)
    numer = np.array([min(n, d) for n, d in rows], dtype=np.int64)
    iv = bootstrap_ratio(numer, denom, ci=0.9, n_boot=50, seed=seed)
    rates = numer / denom
    # a pooled rate is a weighted mean of the per-class rates: inside their range
    assert rates.min() - 1e-12 <= iv.lo <= iv.hi <= rates.max() + 1e-12
    # multiplying every count by 2**k changes no rate (exact in floating point)
    scaled = bootstrap_ratio(numer * 2.0**k, denom * 2.0**k, ci=0.9, n_boot=50, seed=seed)
    assert (scaled.lo, scaled.hi, scaled.point) == (iv.lo, iv.hi, iv.point)


def test_min_n_boot_rule() -> None:
    from tcm.metrics.bootstrap import min_n_boot

    # ceil(2 / (1 - ci)): 2 / (1 - 0.9) is 20.000000000000004 in floats, still 20
    assert [min_n_boot(c) for c in (0.5, 0.8, 0.9, 0.95, 0.99)] == [4, 10, 20, 40, 200]


@pytest.mark.parametrize("n_boot", [1, 2, 39])
def test_too_few_resamples_for_the_level_are_refused(n_boot: int) -> None:
    from tcm.metrics.bootstrap import check_bootstrap_args

    numer, denom = np.array([1, 2, 3]), np.array([4, 4, 4])
    for call in (
        lambda: bootstrap_ratio(numer, denom, ci=0.95, n_boot=n_boot),
        lambda: bootstrap_opis(np.ones((3, 2)), ci=0.95, n_boot=n_boot),
        lambda: check_bootstrap_args(0.95, n_boot),
    ):
        with pytest.raises(
            ValueError, match=r"too few for a 0\.95 interval: need n_boot >= .* = 40"
        ):
            call()
    assert bootstrap_ratio(numer, denom, ci=0.95, n_boot=40).n_boot == 40
    check_bootstrap_args(None, 1)  # no interval: n_boot is not used


def test_too_many_resamples_are_refused_before_drawing() -> None:
    from tcm.metrics.bootstrap import MAX_N_BOOT, check_bootstrap_args

    with pytest.raises(ValueError, match=r"n_boot = 3,000,000 is above the limit of 100,000"):
        bootstrap_ratio(np.array([1, 2, 3]), np.array([4, 4, 4]), n_boot=3_000_000)
    with pytest.raises(ValueError, match="above the limit"):
        check_bootstrap_args(0.95, MAX_N_BOOT + 1)
    with pytest.raises(ValueError, match="above the limit"):
        class_bootstrap_weights(3, MAX_N_BOOT + 1)


def test_bootstrap_memory_guard_names_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    import tcm.metrics._checks as checks
    from tcm.metrics.bootstrap import bootstrap_memory_bytes

    # 6 arrays (n_boot, T) of 8 bytes, plus the figure cells
    assert bootstrap_memory_bytes(300, 1000, 404) == 8 * 1000 * (6 * 300 + 404)
    monkeypatch.setattr(checks, "MAX_TABLE_BYTES", 1 << 20)
    with pytest.raises(ValueError, match=r"bootstrap would need about 0\.0 GiB \(1,000 resamples"):
        class_bootstrap_weights(300, 1000)


@pytest.mark.parametrize("ci", [0.0, 1.0, -0.5, 1.5, float("nan"), True, "x", None])
def test_ci_must_be_a_level_in_the_open_unit_interval(ci: object) -> None:
    with pytest.raises(ValueError, match="ci must"):
        bootstrap_ratio(np.array([1, 2]), np.array([4, 4]), ci=ci, n_boot=100)  # type: ignore[arg-type]
