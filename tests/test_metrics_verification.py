"""tcm.metrics.verification against explicit-loop brute force, properties and error paths."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tcm.metrics import Verification, verification
from tcm.metrics.verification import (
    DEFAULT_VERIFICATION_FARS,
    best_accuracy_threshold,
    pair_similarities,
    roc_curve,
)

# ----------------------------------------------------------------------------- brute force


def brute_quantile(values: list[float], q: float) -> float:
    """NumPy's default ('linear') quantile, by hand: h = (n - 1) q, interpolate."""
    v = sorted(values)
    h = (len(v) - 1) * q
    lo = math.floor(h)
    if lo + 1 >= len(v):
        return v[-1]
    return v[lo] + (h - lo) * (v[lo + 1] - v[lo])


def brute_tar_at_far(s: list[float], same: list[bool], far: float) -> tuple[float, float]:
    neg = [x for x, y in zip(s, same, strict=True) if not y]
    pos = [x for x, y in zip(s, same, strict=True) if y]
    t = brute_quantile(neg, 1.0 - far)
    accepted = 0
    for x in pos:
        if x >= t:
            accepted += 1
    return accepted / len(pos), t


def brute_roc(s: list[float], same: list[bool]) -> tuple[list[float], list[float], list[float]]:
    p = sum(same)
    m = len(same) - p
    thresholds, far, tar = [], [], []
    for u in sorted(set(s), reverse=True):
        ta = fa = 0
        for x, y in zip(s, same, strict=True):
            if x >= u:
                if y:
                    ta += 1
                else:
                    fa += 1
        thresholds.append(u)
        far.append(fa / m)
        tar.append(ta / p)
    return thresholds, far, tar


def brute_eer(s: list[float], same: list[bool]) -> float:
    """Walk the (FAR, FRR) polyline from (0, 1) and intersect it with FAR = FRR."""
    _, far, tar = brute_roc(s, same)
    pts = [(0.0, 1.0)] + [(f, 1.0 - t) for f, t in zip(far, tar, strict=True)]
    for (f0, r0), (f1, r1) in itertools.pairwise(pts):
        if f0 < r0 and f1 >= r1:
            # f0 + lam (f1 - f0) == r0 + lam (r1 - r0)
            lam = (r0 - f0) / ((f1 - f0) - (r1 - r0))
            return f0 + lam * (f1 - f0)
    raise AssertionError("no crossing")


def brute_accuracy(s: list[float], same: list[bool], folds: list[int]) -> list[float]:
    out = []
    for f in sorted(set(folds)):
        train = [(x, y) for x, y, k in zip(s, same, folds, strict=True) if k != f]
        test = [(x, y) for x, y, k in zip(s, same, folds, strict=True) if k == f]
        best_t, best_correct = None, -1
        for t in sorted({x for x, _ in train}):  # ascending: '>=' keeps the largest maximiser
            correct = sum(1 for x, y in train if (x >= t) == y)
            if correct >= best_correct:
                best_t, best_correct = t, correct
        assert best_t is not None
        out.append(sum(1 for x, y in test if (x >= best_t) == y) / len(test))
    return out


def random_pairs(seed: int, n: int = 120, d: int = 8, sep: float = 1.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d))
    same = rng.random(n) < 0.5
    same[:2] = [True, False]
    b[same] = a[same] + sep * b[same]
    return a, b, same


# ----------------------------------------------------------------------------- brute-force checks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force_on_embeddings(seed: int) -> None:
    a, b, same = random_pairs(seed)
    folds = np.arange(len(same)) % 10
    v = verification((a, b), same, folds=folds)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = [float(np.dot(an[i], bn[i])) for i in range(len(same))]
    y = [bool(x) for x in same]
    # similarities agree to float64 rounding (|s| <= 1)
    np.testing.assert_allclose(pair_similarities(a, b), s, rtol=0, atol=1e-12)
    for far in DEFAULT_VERIFICATION_FARS:
        tar, t = brute_tar_at_far(s, y, far)
        assert v.thresholds_at_far[far] == pytest.approx(t, abs=1e-12)
        assert v.tar_at_far[far] == tar
    th, far_b, tar_b = brute_roc(s, y)
    np.testing.assert_allclose(v.roc.thresholds, th, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(v.roc.far, far_b)
    np.testing.assert_array_equal(v.roc.tar, tar_b)
    assert v.eer == pytest.approx(brute_eer(s, y), abs=1e-12)
    assert v.accuracy is not None
    assert v.accuracy.folds == pytest.approx(brute_accuracy(s, y, folds.tolist()), abs=0)
    acc = np.asarray(v.accuracy.folds)
    assert v.accuracy.mean == pytest.approx(acc.mean(), rel=1e-12)
    assert v.accuracy.std == pytest.approx(acc.std(ddof=1), rel=1e-12)
    assert v.accuracy.stderr == pytest.approx(acc.std(ddof=1) / math.sqrt(10), rel=1e-12)
    assert v.num_genuine == sum(y) and v.num_impostor == len(y) - sum(y)


# similarities on a coarse grid, so that ties (shared values) are common
_sims = st.lists(st.integers(-10, 10), min_size=4, max_size=40).map(lambda v: [x / 10 for x in v])


@settings(max_examples=60, deadline=None)
@given(_sims, st.data())
def test_hypothesis_brute_force_with_ties(s: list[float], data: st.DataObject) -> None:
    n = len(s)
    same = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    same[0], same[1] = True, False
    folds = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    folds[0], folds[1] = 0, 1
    v = verification(np.asarray(s), np.asarray(same), folds=np.asarray(folds), fars=(0.01, 0.3))
    for far in (0.01, 0.3):
        tar, t = brute_tar_at_far(s, same, far)
        assert v.thresholds_at_far[far] == pytest.approx(t, abs=1e-12)
        # the brute threshold may differ from NumPy's in the last ulp; TAR only if a genuine
        # similarity sits exactly at it
        if not any(abs(x - t) < 1e-9 for x in s):
            assert v.tar_at_far[far] == tar
    th, far_b, tar_b = brute_roc(s, same)
    assert v.roc.thresholds.tolist() == th
    assert v.roc.far.tolist() == pytest.approx(far_b, abs=0)
    assert v.roc.tar.tolist() == pytest.approx(tar_b, abs=0)
    assert v.eer == pytest.approx(brute_eer(s, same), abs=1e-12)
    assert v.accuracy is not None
    assert v.accuracy.folds == pytest.approx(brute_accuracy(s, same, folds), abs=0)


def test_module_example_by_hand() -> None:
    s = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1])
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    v = verification(s, same)
    # sorted: .9G .8G .7G .6I .4G ...; at t = .6: FAR = FRR = 1/4
    assert v.eer == 0.25 and v.eer_threshold == 0.6
    assert v.accuracy is None and v.to_dict()["accuracy"] is None


def test_separable_and_inverted_extremes() -> None:
    s = np.array([0.9, 0.8, 0.2, 0.1])
    assert verification(s, [1, 1, 0, 0]).eer == 0.0
    assert verification(s, [0, 0, 1, 1]).eer == 1.0
    v = verification(s, [1, 1, 0, 0], folds=[0, 1, 0, 1])
    # candidates are the other fold's similarities: fold 1 gets t = 0.9 (from .9 G / .2 I), so
    # its genuine pair at 0.8 is rejected even though the whole list is separable
    assert v.accuracy is not None and v.accuracy.folds == [1.0, 0.5]
    assert v.accuracy.thresholds == [0.8, 0.9]
    assert v.tar_at_far[0.1] == 1.0


def test_best_threshold_tie_break_takes_largest() -> None:
    # the largest of the maximisers wins
    s = np.array([0.9, 0.7, 0.6, 0.5])
    y = np.array([True, False, True, False])
    # correct: t=0.5 -> 2, t=0.6 -> 3, t=0.7 -> 2, t=0.9 -> 3
    assert best_accuracy_threshold(s, y) == 0.9


@pytest.mark.parametrize("m", [11, 50, 777, 3000])
def test_far_reached_is_within_one_over_m(m: int) -> None:
    rng = np.random.default_rng(m)
    s = np.r_[rng.normal(size=m), rng.normal(size=40) + 2.0]
    y = np.r_[np.zeros(m, bool), np.ones(40, bool)]
    fars = (1e-4, 1e-3, 0.01, 0.1, 0.37)
    v = verification(s, y, fars=fars)
    for f in fars:
        expected = (math.floor((m - 1) * f + 1e-9) + 1) / m  # continuous data: no ties
        assert v.far_at_far[f] == pytest.approx(expected, abs=1e-15)
        assert abs(v.far_at_far[f] - f) <= 1.0 / m


def test_roc_is_monotone_and_ends_at_one() -> None:
    a, b, same = random_pairs(5, n=300)
    r = verification((a, b), same).roc
    assert np.all(np.diff(r.thresholds) < 0)
    assert np.all(np.diff(r.far) >= 0) and np.all(np.diff(r.tar) >= 0)
    assert r.far[-1] == 1.0 and r.tar[-1] == 1.0


def test_roc_curve_handles_all_ties() -> None:
    r = roc_curve(np.array([0.5, 0.5, 0.5]), np.array([True, False, True]))
    assert r.thresholds.tolist() == [0.5] and r.far.tolist() == [1.0] and r.tar.tolist() == [1.0]


# ----------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(_sims, st.data())
def test_permuting_pairs_changes_nothing(s: list[float], data: st.DataObject) -> None:
    n = len(s)
    same = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    same[0], same[1] = True, False
    folds = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    folds[0], folds[1] = 0, 1
    perm = np.asarray(data.draw(st.permutations(range(n))))
    x, y, f = np.asarray(s), np.asarray(same), np.asarray(folds)
    v1 = verification(x, y, folds=f)
    v2 = verification(x[perm], y[perm], folds=f[perm])
    assert json.dumps(v1.to_dict()) == json.dumps(v2.to_dict())


@settings(max_examples=40, deadline=None)
@given(_sims, st.data())
def test_strictly_increasing_transform_keeps_rates(s: list[float], data: st.DataObject) -> None:
    n = len(s)
    same = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    same[0], same[1] = True, False
    folds = np.arange(n) % 3
    x = np.asarray(s)
    v1 = verification(x, same, folds=folds)
    v2 = verification(x**3 + x, same, folds=folds)  # grid step 0.1 keeps values distinct
    np.testing.assert_array_equal(v1.roc.far, v2.roc.far)
    np.testing.assert_array_equal(v1.roc.tar, v2.roc.tar)
    assert v1.eer == pytest.approx(v2.eer, abs=1e-12)
    assert v1.accuracy is not None and v2.accuracy is not None
    assert v1.accuracy.folds == v2.accuracy.folds


def test_row_scale_and_input_types_do_not_matter() -> None:
    a, b, same = random_pairs(3)
    v1 = verification((a, b), same)
    scale = np.random.default_rng(0).uniform(0.1, 10.0, size=(len(same), 1))
    v2 = verification([torch.from_numpy(a * scale), b.astype(np.float32)], same.astype(int))
    for far in DEFAULT_VERIFICATION_FARS:
        # float32 rounding of b: thresholds move by ~1e-7 (|s| <= 1)
        assert v2.thresholds_at_far[far] == pytest.approx(v1.thresholds_at_far[far], abs=1e-5)
    assert v2.eer == pytest.approx(v1.eer, abs=2.0 / len(same))


def test_to_dict_is_json_with_required_keys() -> None:
    a, b, same = random_pairs(4)
    d = verification((a, b), same, folds=np.arange(len(same)) % 10).to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert list(back["tar_at_far"]) == ["0.0001", "0.001", "0.01", "0.1"]
    assert (
        set(back["accuracy"]) >= {"mean", "std", "folds"} and len(back["accuracy"]["folds"]) == 10
    )
    assert set(back["roc"]) == {"thresholds", "far", "tar"}
    assert isinstance(back["eer"], float)
    assert isinstance(verification((a, b), same), Verification)


# ----------------------------------------------------------------------------- errors


def test_no_impostor_pairs() -> None:
    with pytest.raises(ValueError, match="no impostor"):
        verification(np.array([0.1, 0.2]), [1, 1])


def test_no_genuine_pairs() -> None:
    with pytest.raises(ValueError, match="no genuine"):
        verification(np.array([0.1, 0.2]), [False, False])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_similarity(bad: float) -> None:
    with pytest.raises(ValueError, match=r"NaN or inf.*pair 1"):
        verification(np.array([0.1, bad, 0.3]), [1, 0, 1])


def test_same_length_mismatch() -> None:
    with pytest.raises(ValueError, match="same has length 2 but there are 3 pairs"):
        verification(np.array([0.1, 0.2, 0.3]), [1, 0])


def test_same_not_binary() -> None:
    with pytest.raises(ValueError, match="pair 1 has"):
        verification(np.array([0.1, 0.2, 0.3]), [1, 2, 0])


def test_folds_length_mismatch() -> None:
    with pytest.raises(ValueError, match="folds has length 2"):
        verification(np.array([0.1, 0.2, 0.3]), [1, 0, 1], folds=[0, 1])


def test_single_fold_gives_tar_and_eer_and_says_why_no_accuracy() -> None:
    s, same = np.array([0.1, 0.2, 0.3, 0.7]), [1, 0, 1, 0]
    v = verification(s, same, folds=[4, 4, 4, 4])
    ref = verification(s, same)
    assert v.accuracy is None
    assert v.accuracy_note is not None and "one fold (id 4)" in v.accuracy_note
    assert v.eer == ref.eer and v.tar_at_far == ref.tar_at_far
    d = v.to_dict()
    assert d["accuracy"] is None and "at least 2 folds" in d["accuracy_note"]
    assert ref.accuracy_note is not None and "no fold ids" in ref.accuracy_note
    two = verification(s, same, folds=[0, 1, 0, 1])
    assert two.accuracy is not None and two.accuracy_note is None


def test_fractional_folds() -> None:
    with pytest.raises(ValueError, match="integer fold ids"):
        verification(np.array([0.1, 0.2, 0.3]), [1, 0, 1], folds=[0.5, 1, 0])


@pytest.mark.parametrize("far", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_far_outside_open_interval(far: float) -> None:
    with pytest.raises(ValueError, match=r"far must lie in \(0, 1\)"):
        verification(np.array([0.1, 0.2]), [1, 0], fars=(far,))


def test_embedding_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="same shape"):
        verification((np.ones((3, 4)), np.ones((3, 5))), [1, 0, 1])


def test_zero_embedding_row() -> None:
    a = np.ones((3, 4))
    a[2] = 0
    with pytest.raises(ValueError, match="all-zero"):
        verification((a, np.ones((3, 4))), [1, 0, 1])


def test_two_dimensional_similarities() -> None:
    with pytest.raises(ValueError, match="1-D array"):
        verification(np.ones((3, 3)), [1, 0, 1])
