"""Tests of tcm.metrics.consistency against an independent brute-force all-pairs reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tcm.metrics._passes as passes_mod
from _reference import count_pass, hist_pass, merge_counts, merge_hists, merge_tails
from tcm.metrics import (
    epsilon_opis,
    operating_point,
    opis,
    similarity_histogram,
    threshold_at_far,
    threshold_consistency,
)
from tcm.metrics._pairs import prepare
from tcm.metrics._passes import bucketize, tail_pass

# ----------------------------------------------------------------------------- reference


def brute_force(x, y, far_range=(1e-2, 1e-1), k=11, epsilons=(0.05, 0.1)):
    """All-pairs reference written straight from docs/definitions.md (float64, loops)."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = np.asarray(y)
    n = len(y)
    s = x @ x.T
    neg = [s[i, j] for i in range(n) for j in range(i + 1, n) if y[i] != y[j]]
    neg = np.array(neg)
    t_min = np.quantile(neg, 1 - far_range[1])
    t_max = np.quantile(neg, 1 - far_range[0])
    th = np.linspace(t_min, t_max, k)
    labels = sorted(set(y.tolist()))
    included = [c for c in labels if (y == c).sum() >= 2]
    tar_cnt = np.zeros((len(included), k), dtype=np.int64)
    far_cnt = np.zeros((len(included), k), dtype=np.int64)
    u = np.zeros((len(included), k))
    for a, c in enumerate(included):
        inside = np.flatnonzero(y == c)
        outside = np.flatnonzero(y != c)
        pos_s = [s[i, j] for ii, i in enumerate(inside) for j in inside[ii + 1 :]]
        neg_s = s[np.ix_(inside, outside)].ravel()
        for kk, t in enumerate(th):
            tar_cnt[a, kk] = sum(v >= t for v in pos_s)
            far_cnt[a, kk] = int((neg_s >= t).sum())
            tar = tar_cnt[a, kk] / len(pos_s)
            trr = (neg_s < t).sum() / len(neg_s)
            u[a, kk] = 0.0 if tar + trr == 0 else 2 * tar * trr / (tar + trr)
    t_cnt = len(included)
    opis_v = 0.0
    for kk in range(k):
        mean = sum(u[:, kk]) / t_cnt
        opis_v += sum((u[a, kk] - mean) ** 2 for a in range(t_cnt)) / t_cnt
    opis_v /= k
    eps_v = {}
    for e in epsilons:
        m = max(1, math.floor(e * t_cnt + 1e-9))
        tot = 0.0
        for kk in range(k):
            col = sorted(u[:, kk])
            tot += (np.mean(col[-m:]) - np.mean(col[:m])) ** 2
        eps_v[e] = tot / k
    return {
        "thresholds": th,
        "classes": included,
        "tar_cnt": tar_cnt,
        "far_cnt": far_cnt,
        "utility": u,
        "opis": opis_v,
        "eps": eps_v,
        "neg": neg,
        "sims": s,
    }


def make_data(kind, n, d=8, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        y = np.repeat(np.arange(n // 5), 5)[:n]
    elif kind == "skewed":  # sizes 1..many incl. singletons
        sizes = rng.zipf(1.6, size=n)
        y = np.repeat(np.arange(n), np.clip(sizes, 1, 60))[:n]
    elif kind == "strings":
        y = np.array([f"cls{v}" for v in rng.integers(0, n // 4, size=n)])
    else:
        raise AssertionError(kind)
    codes = np.unique(y, return_inverse=True)[1].ravel()
    centers = rng.normal(size=(codes.max() + 1, d))
    x = rng.normal(size=(n, d)) + 1.5 * centers[codes]
    perm = rng.permutation(n)
    return x[perm], y[perm]


def check_against(r, ref, x):
    n = len(x)
    # block matmuls and the reference's full matmul may differ in the last bit of a similarity
    np.testing.assert_allclose(r.thresholds, ref["thresholds"], rtol=1e-12, atol=1e-15)
    assert list(r.classes) == ref["classes"]
    nc = r.class_sizes.astype(np.float64)
    tar_cnt = np.rint(r.tar * (nc * (nc - 1) / 2)[:, None]).astype(np.int64)
    far_cnt = np.rint((1 - r.trr) * (nc * (n - nc))[:, None]).astype(np.int64)
    np.testing.assert_array_equal(tar_cnt, ref["tar_cnt"])
    np.testing.assert_array_equal(far_cnt, ref["far_cnt"])
    assert r.opis == pytest.approx(ref["opis"], rel=1e-9, abs=1e-300)
    for e, v in ref["eps"].items():
        assert r.epsilon_opis[e] == pytest.approx(v, rel=1e-9, abs=1e-300)
    np.testing.assert_allclose(r.utility, ref["utility"], rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(
    ("kind", "n", "far_range", "k", "block_size", "cutoff"),
    [
        ("uniform", 200, (1e-2, 1e-1), 11, None, 10**9),
        ("uniform", 200, (1e-2, 1e-1), 11, 7, 0),
        ("skewed", 300, (0.05, 0.5), 7, 64, 10**9),
        ("skewed", 300, (1e-3, 2e-2), 2, 64, 0),
        ("strings", 250, (0.2, 0.9), 5, 13, 0),
        ("strings", 250, (1e-2, 1e-1), 101, None, 0),
    ],
)
def test_matches_brute_force(kind, n, far_range, k, block_size, cutoff):
    x, y = make_data(kind, n)
    ref = brute_force(x, y, far_range, k)
    r = threshold_consistency(
        x,
        y,
        far_range=far_range,
        num_thresholds=k,
        block_size=block_size,
        exact_cutoff=cutoff,
        sample_size=3000,
    )
    check_against(r, ref, x)
    assert r.num_negative_pairs == len(ref["neg"])
    # global curves
    p = r.num_positive_pairs
    ref_s = ref["sims"]
    iu = np.triu_indices(n, 1)
    same = (y[:, None] == y[None, :])[iu]
    for kk, t in enumerate(ref["thresholds"]):
        assert r.global_far[kk] == (ref_s[iu][~same] >= t).sum() / len(ref["neg"])
        assert r.global_tar[kk] == (ref_s[iu][same] >= t).sum() / p


@pytest.mark.slow
def test_matches_brute_force_n2000_singletons():
    rng = np.random.default_rng(5)
    n = 2000
    y = rng.integers(0, 700, size=n)  # many classes of size 1-2 and some larger
    centers = rng.normal(size=(700, 16))
    x = rng.normal(size=(n, 16)) + 1.2 * centers[y]
    xs = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xs @ xs.T
    iu = np.triu_indices(n, 1)
    same = (y[:, None] == y[None, :])[iu]
    neg = s[iu][~same]
    th = np.linspace(np.quantile(neg, 0.9), np.quantile(neg, 0.99), 21)
    r = threshold_consistency(x, y, num_thresholds=21, block_size=512, exact_cutoff=1000)
    np.testing.assert_allclose(r.thresholds, th, rtol=1e-12, atol=1e-15)
    counts = np.bincount(y)
    inc = np.flatnonzero(counts >= 2)
    assert list(r.classes) == inc.tolist()
    assert list(r.excluded_classes) == np.flatnonzero(counts == 1).tolist()
    u = np.zeros((len(inc), len(th)))
    for a, c in enumerate(inc):
        m = y == c
        ps = s[np.ix_(m, m)][np.triu_indices(int(m.sum()), 1)]
        ns = s[np.ix_(m, ~m)]
        for kk, t in enumerate(th):
            tar = (ps >= t).mean()
            trr = (ns < t).mean()
            assert r.tar[a, kk] * len(ps) == pytest.approx((ps >= t).sum(), abs=1e-6)
            assert r.trr[a, kk] * ns.size == pytest.approx((ns < t).sum(), abs=1e-6)
            u[a, kk] = 0 if tar + trr == 0 else 2 * tar * trr / (tar + trr)
    ref_opis = np.mean(np.var(u, axis=0))
    assert r.opis == pytest.approx(ref_opis, rel=1e-9)


def test_bracket_miss_is_widened_and_exact(monkeypatch):
    x, y = make_data("uniform", 150)
    ref = brute_force(x, y, (1e-2, 1e-1), 5)

    def bogus(prep, num, seed=0, chunk=0):  # a sample far from the true quantiles
        return torch.full((num,), 0.999, dtype=torch.float64)

    monkeypatch.setattr(passes_mod, "sample_negative_similarities", bogus)
    r = threshold_consistency(x, y, num_thresholds=5, exact_cutoff=0, sample_size=100)
    check_against(r, ref, x)

    def bogus_low(prep, num, seed=0, chunk=0):
        return torch.linspace(-1.0, -0.9, num, dtype=torch.float64)

    monkeypatch.setattr(passes_mod, "sample_negative_similarities", bogus_low)
    r = threshold_consistency(x, y, num_thresholds=5, exact_cutoff=0, sample_size=100)
    check_against(r, ref, x)


def test_singleton_negatives_count_in_trr():
    # class 2 is a singleton: excluded, but its sample is a negative of classes 0 and 1
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    y = np.array([0, 0, 1, 1, 2])
    op = operating_point(x, y, threshold=0.5)
    assert op.excluded_classes.tolist() == [2]
    assert op.classes.tolist() == [0, 1]
    # class 0 negatives: 2 x 3 = 6 pairs; accepted: both with the (0.7, 0.7) sample
    assert op.far.tolist() == [2 / 6, 2 / 6]
    # 8 negative pairs in all; the singleton is accepted with all 4 other samples
    assert op.global_far == 4 / 8
    assert op.tar.tolist() == [1.0, 1.0]


def test_operating_point_matches_brute_force():
    x, y = make_data("skewed", 200, seed=3)
    ref = brute_force(x, y, k=2)
    s = ref["sims"]
    t = float(np.quantile(ref["neg"], 0.8)) + 1e-3
    op = operating_point(x, y, threshold=t, block_size=33)
    n = len(y)
    for a, c in enumerate(op.classes):
        m = y == c
        nc = int(m.sum())
        ps = s[np.ix_(m, m)][np.triu_indices(nc, 1)]
        assert op.tar[a] == (ps >= t).sum() / len(ps)
        assert op.far[a] == (s[np.ix_(m, ~m)] >= t).sum() / (nc * (n - nc))
        assert op.frr[a] == 1 - op.tar[a]
        assert op.trr[a] == 1 - op.far[a]
    assert op.global_far == (ref["neg"] >= t).sum() / len(ref["neg"])
    json.dumps(op.to_dict())


@pytest.mark.parametrize("far", [1e-3, 0.05, 0.5, 0.999])
@pytest.mark.parametrize("cutoff", [0, 10**9])
def test_threshold_at_far_is_exact_quantile(far, cutoff):
    x, y = make_data("uniform", 180, seed=1)
    neg = brute_force(x, y, k=2)["neg"]
    got = threshold_at_far(x, y, far=far, block_size=40, exact_cutoff=cutoff, sample_size=500)
    assert got == pytest.approx(np.quantile(neg, 1 - far), rel=1e-12, abs=1e-15)


def test_similarity_histogram_matches_numpy():
    x, y = make_data("strings", 160, seed=2)
    x = np.vstack([x, x[:3]])  # exact duplicates -> similarity 1 (or 1 + rounding)
    y = np.concatenate([y, y[:3]])
    ref = brute_force(x, y, k=2)
    s = ref["sims"]
    n = len(y)
    iu = np.triu_indices(n, 1)
    same = (y[:, None] == y[None, :])[iu]
    edges = np.linspace(-1, 1, 51)
    h = similarity_histogram(x, y, bins=50, block_size=37)
    np.testing.assert_array_equal(h.edges, edges)
    np.testing.assert_array_equal(h.pos, np.histogram(np.clip(s[iu][same], -1, 1), edges)[0])
    np.testing.assert_array_equal(h.neg, np.histogram(np.clip(s[iu][~same], -1, 1), edges)[0])
    json.dumps(h.to_dict())


# ----------------------------------------------------------------------------- shards


def test_shard_merge_equals_single_run():
    x, y = make_data("skewed", 230, seed=4)
    prep = prepare(x, y)
    th = np.linspace(-0.2, 0.6, 9)
    single = count_pass(prep, th, 16)
    merged = count_pass(prep, th, 16, (0, 3))
    merged = merge_counts(merged, count_pass(prep, th, 16, (1, 3)))
    merged = merge_counts(merged, count_pass(prep, th, 16, (2, 3)))
    np.testing.assert_array_equal(single.neg, merged.neg)
    np.testing.assert_array_equal(single.pos, merged.pos)

    lo, hi = [-0.1, 0.3], [0.2, 0.5]
    t1 = tail_pass(prep, lo, hi, 16)
    t2 = merge_tails(tail_pass(prep, lo, hi, 16, (0, 2)), tail_pass(prep, lo, hi, 16, (1, 2)))
    np.testing.assert_array_equal(t1.num_above, t2.num_above)
    for a, b in zip(t1.values, t2.values, strict=True):
        np.testing.assert_array_equal(np.sort(a), np.sort(b))

    edges = np.linspace(-1, 1, 21)
    h1 = hist_pass(prep, edges, 16)
    h2 = merge_hists(hist_pass(prep, edges, 16, (0, 2)), hist_pass(prep, edges, 16, (1, 2)))
    np.testing.assert_array_equal(h1.pos, h2.pos)
    np.testing.assert_array_equal(h1.neg, h2.neg)
    # every pair counted exactly once over the shards
    assert h1.pos.sum() == prep.num_positive_pairs
    assert h1.neg.sum() == prep.num_negative_pairs


# ----------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(
    lo=st.floats(-1, 1),
    width=st.floats(0, 1),
    k=st.integers(1, 120),
    seed=st.integers(0, 10**6),
)
@example(lo=1.0, width=2.220446049250313e-16, k=7, seed=0)  # a grid of repeated values
@example(lo=0.5, width=1e-15, k=50, seed=1)
def test_bucketize_equals_searchsorted(lo, width, k, seed):
    th = torch.as_tensor(np.linspace(lo, lo + width, k))
    rng = np.random.default_rng(seed)
    v = np.concatenate([rng.uniform(lo - 0.1, lo + width + 0.1, 500), th.numpy()])
    v = np.concatenate([v, np.nextafter(th.numpy(), -2), np.nextafter(th.numpy(), 2)])
    vt = torch.as_tensor(v)
    expected = np.searchsorted(th.numpy(), v, side="right")
    np.testing.assert_array_equal(bucketize(th, vt).numpy(), expected)


def _random_set(seed, n, d, ncls):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(ncls), np.arange(ncls), rng.integers(0, ncls, n - 2 * ncls)])
    x = rng.normal(size=(n, d)) + rng.normal(size=(ncls, d))[y]
    return x, y


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(12, 60), ncls=st.integers(2, 6))
def test_permutation_invariance(seed, n, ncls):
    x, y = _random_set(seed, n, 5, ncls)
    rng = np.random.default_rng(seed + 1)
    perm = rng.permutation(n)
    relabel = rng.permutation(ncls) * 7 + 100  # new class ids, different order
    a = threshold_consistency(x, y, num_thresholds=6, far_range=(0.05, 0.4))
    b = threshold_consistency(x[perm], relabel[y[perm]], num_thresholds=6, far_range=(0.05, 0.4))
    assert b.opis == pytest.approx(a.opis, rel=1e-9, abs=1e-15)
    for e in a.epsilon_opis:
        assert b.epsilon_opis[e] == pytest.approx(a.epsilon_opis[e], rel=1e-9, abs=1e-15)
    # per-class curves follow their class through the relabelling
    order = np.argsort(relabel)
    np.testing.assert_allclose(b.utility, a.utility[order], rtol=1e-9, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(12, 60), ncls=st.integers(2, 6))
def test_rotation_invariance_and_nonnegative(seed, n, ncls):
    d = 5
    x, y = _random_set(seed, n, d, ncls)
    q, _ = np.linalg.qr(np.random.default_rng(seed + 2).normal(size=(d, d)))
    a = threshold_consistency(x, y, num_thresholds=6, far_range=(0.05, 0.4))
    b = threshold_consistency(x @ q, y, num_thresholds=6, far_range=(0.05, 0.4))
    assert b.opis == pytest.approx(a.opis, rel=1e-9, abs=1e-15)
    assert a.opis >= 0
    for e in a.epsilon_opis:
        assert a.epsilon_opis[e] >= 0
        assert b.epsilon_opis[e] == pytest.approx(a.epsilon_opis[e], rel=1e-9, abs=1e-15)


@settings(max_examples=25, deadline=None)
@given(
    ncls=st.integers(2, 6),
    width=st.integers(1, 3),
    pattern=st.lists(st.tuples(st.integers(0, 10**6), st.booleans()), min_size=2, max_size=5),
    seed=st.integers(0, 1000),
)
def test_identical_curves_give_zero_opis(ncls, width, pattern, seed):
    # Class c is the cyclic coordinate shift P^c of one base set, so every class has the same
    # multiset of positive sims and of negative sims (cyclic symmetry). Vectors have exactly 4
    # entries +-1 (norm 2), so every similarity is a multiple of 1/4 and computed exactly.
    dim = max(4, ncls * width)
    dim = ncls * ((dim + ncls - 1) // ncls)
    shift = dim // ncls
    base = np.zeros((len(pattern), dim))
    for r, (code, dup) in enumerate(pattern):
        rng = np.random.default_rng(code)
        if dup and r > 0:
            base[r] = base[r - 1]
            continue
        cols = rng.choice(dim, size=4, replace=False)
        base[r, cols] = rng.choice([-1.0, 1.0], size=4)
    x = np.vstack([np.roll(base, c * shift, axis=1) for c in range(ncls)])
    y = np.repeat(np.arange(ncls), len(pattern))
    perm = np.random.default_rng(seed).permutation(len(y))
    r = threshold_consistency(x[perm], y[perm], num_thresholds=5, epsilons=(0.05, 0.1, 0.5))
    assert r.opis == 0.0
    assert all(v == 0.0 for v in r.epsilon_opis.values())
    assert np.all(r.utility == r.utility[0])


# ----------------------------------------------------------------------------- inputs


def test_numpy_torch_float32_agree():
    x, y = make_data("uniform", 150, seed=6)
    a = threshold_consistency(x, y)
    b = threshold_consistency(torch.as_tensor(x), torch.as_tensor(y))
    assert a.opis == b.opis
    np.testing.assert_array_equal(a.utility, b.utility)
    c = threshold_consistency(x.astype(np.float32), y.astype(np.int16))
    assert c.opis == pytest.approx(a.opis, rel=1e-3)
    np.testing.assert_allclose(c.thresholds, a.thresholds, atol=1e-5)
    d = threshold_consistency(torch.as_tensor(x).to(torch.bfloat16), y)
    assert np.isfinite(d.opis)
    assert opis(x, y) == a.opis
    assert epsilon_opis(x, y, epsilon=0.1) == a.epsilon_opis[0.1]


def test_float32_path_is_exact_for_its_own_sims():
    x, y = make_data("skewed", 220, seed=7)
    x32 = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    r = threshold_consistency(x32, y, num_thresholds=9, block_size=50)
    # float32 sims as our blocks compute them, compared in float64
    prep = prepare(x32, y)
    s = (prep.x @ prep.x.T).double().numpy()
    yc = prep.codes
    iu = np.triu_indices(len(yc), 1)
    same = (yc[:, None] == yc[None, :])[iu]
    neg = s[iu][~same]
    for kk, t in enumerate(r.thresholds):
        assert r.global_far[kk] == (neg >= t).sum() / len(neg)


def test_labels_any_integer_type_and_scaling():
    x, y = make_data("uniform", 100, seed=8)
    a = threshold_consistency(x, y)
    b = threshold_consistency(3.5 * x, y.astype(np.uint16) + 250)  # scale: L2-normalised
    assert b.opis == pytest.approx(a.opis, rel=1e-12)
    assert b.classes.tolist() == (a.classes + 250).tolist()


def test_to_dict_json():
    x, y = make_data("strings", 120, seed=9)
    r = threshold_consistency(x, y, num_thresholds=4)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["opis"] == r.opis
    assert d["epsilon_opis"]["0.05"] == r.epsilon_opis[0.05]
    assert len(d["utility"]) == len(r.classes)
    assert len(d["thresholds"]) == 4
    assert d["classes"] == r.classes.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():  # pragma: no cover - no GPU on the CI machine
    x, y = make_data("skewed", 300, seed=10)
    a = threshold_consistency(x, y)
    b = threshold_consistency(torch.as_tensor(x).cuda(), torch.as_tensor(y).cuda())
    assert b.opis == pytest.approx(a.opis, rel=1e-9)


# ----------------------------------------------------------------------------- errors

X4 = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
Y4 = np.array([0, 0, 1, 1])


def test_error_nan():
    x = X4.copy()
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf.*first bad row index 2"):
        threshold_consistency(x, Y4)


def test_error_inf():
    x = X4.copy()
    x[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf.*row index 1"):
        operating_point(x, Y4, 0.5)


def test_error_length_mismatch():
    with pytest.raises(ValueError, match="length 3 but there are 4"):
        threshold_consistency(X4, Y4[:3])


def test_error_zero_row():
    x = X4.copy()
    x[3] = 0
    with pytest.raises(ValueError, match="all-zero"):
        threshold_consistency(x, Y4)


def test_error_no_negative_pairs():
    with pytest.raises(ValueError, match=r"no negative pairs.*4 samples"):
        threshold_consistency(X4, [5, 5, 5, 5])
    with pytest.raises(ValueError, match="no negative pairs"):
        threshold_at_far(X4, [5, 5, 5, 5])


def test_error_fewer_than_two_classes_with_two_samples():
    with pytest.raises(ValueError, match="fewer than 2 classes with >= 2 samples: got 1"):
        threshold_consistency(X4, [0, 0, 1, 2])
    with pytest.raises(ValueError, match="got 0"):
        operating_point(X4, [0, 1, 2, 3], 0.1)


@pytest.mark.parametrize(
    ("far_range", "match"),
    [
        ((0.0, 0.1), r"far_range\[0\].*open interval \(0, 1\); got 0.0"),
        ((0.01, 1.0), r"far_range\[1\].*got 1.0"),
        ((-0.1, 0.1), r"got -0.1"),
        ((0.2, 0.1), r"f_lo < f_hi.*\(0.2, 0.1\)"),
        ((0.1, 0.1), r"f_lo < f_hi"),
        ((0.1,), r"pair \(f_lo, f_hi\); got \(0.1,\)"),
        (("a", 0.1), r"must be a number.*'a'"),
    ],
)
def test_error_far_range(far_range, match):
    with pytest.raises(ValueError, match=match):
        threshold_consistency(X4, Y4, far_range=far_range)


@pytest.mark.parametrize("k", [1, 0, -3, 2.5, True])
def test_error_num_thresholds(k):
    with pytest.raises(ValueError, match=f"num_thresholds must be.*{k!r}"):
        threshold_consistency(X4, Y4, num_thresholds=k)


@pytest.mark.parametrize("eps", [0.0, 0.51, -0.1, 1.0, "x"])
def test_error_epsilon(eps):
    with pytest.raises(ValueError, match="epsilon must be"):
        epsilon_opis(X4, Y4, epsilon=eps)
    with pytest.raises(ValueError, match="epsilon must be"):
        threshold_consistency(X4, Y4, epsilons=(0.05, eps))


@pytest.mark.parametrize("far", [0.0, 1.0, 2.0, -1e-3])
def test_error_threshold_at_far(far):
    with pytest.raises(ValueError, match=f"far must be in the open interval.*{far!r}"):
        threshold_at_far(X4, Y4, far=far)


@pytest.mark.parametrize("t", [float("nan"), float("inf"), "0.5"])
def test_error_operating_point_threshold(t):
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        operating_point(X4, Y4, t)


@pytest.mark.parametrize("bs", [0, -5, 2.0])
def test_error_block_size(bs):
    with pytest.raises(ValueError, match=f"block_size must be a positive integer.*{bs!r}"):
        threshold_consistency(X4, Y4, block_size=bs)


def test_error_bins_cutoff_sample_shard():
    with pytest.raises(ValueError, match="bins must be an integer >= 1; got 0"):
        similarity_histogram(X4, Y4, bins=0)
    with pytest.raises(ValueError, match="exact_cutoff must be an integer >= 0; got -1"):
        threshold_consistency(X4, Y4, exact_cutoff=-1)
    with pytest.raises(ValueError, match="sample_size must be an integer >= 1; got 0"):
        threshold_at_far(X4, Y4, sample_size=0)
    with pytest.raises(ValueError, match=r"shard_index < num_shards; got \(2, 2\)"):
        count_pass(prepare(X4, Y4), np.array([0.0]), 2, (2, 2))


def test_error_embeddings_shape():
    with pytest.raises(ValueError, match=r"2-D array.*\(4,\)"):
        threshold_consistency(np.ones(4), Y4)
