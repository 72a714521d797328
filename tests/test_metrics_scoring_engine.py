"""The pair engine and retrieval scored through a :mod:`tcm.scoring` scorer equal a brute force
over the dense score matrix ``scorer.score(x, x)`` (tiny data, float64)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tcm.metrics import evaluate, operating_point, retrieval_metrics, threshold_consistency
from tcm.metrics.statistics import PairIndex, pair_statistics
from tcm.scoring import FSN, ASNorm, Cosine, FairCal, Platt
from tcm.scoring.base import Scorer

RTOL = 64 * np.finfo(np.float64).eps  # float64 matmuls of different shapes: a few ulps apart


def _data(n_cls: int = 12, per: int = 7, seed: int = 0, dim: int = 16) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_cls), per)
    x = rng.normal(size=(n_cls * per, dim)) + 1.5 * rng.normal(size=(n_cls, dim))[y]
    return x, y


def _scorer(kind: str) -> Scorer:
    xc, yc = _data(20, 8, seed=5)
    if kind == "asnorm":
        return ASNorm(top_k=None).fit(np.random.default_rng(7).normal(size=(200, 16)))
    if kind == "asnorm_topk":
        return ASNorm(top_k=20).fit(np.random.default_rng(7).normal(size=(200, 16)))
    if kind == "fsn":
        return FSN(n_clusters=3, far=0.05).fit(xc, yc)
    if kind == "faircal":
        return FairCal(n_clusters=3).fit(xc, yc)
    return Platt().fit(xc, yc)


KINDS = ["asnorm", "asnorm_topk", "fsn", "faircal", "platt"]


def _brute(scorer: Scorer, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = scorer.score(x, x)
    iu = np.triu_indices(len(y), 1)
    return s, s[iu], (y[:, None] == y[None, :])[iu]


def _rates(s: np.ndarray, y: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-class TAR / FAR at ``t`` from the dense matrix (pairs i != j)."""
    acc = s >= t
    np.fill_diagonal(acc, False)
    same = y[:, None] == y[None, :]
    tar, far = [], []
    for c in np.unique(y):
        m = y == c
        n_c = int(m.sum())
        tar.append(acc[np.ix_(m, m)].sum() / 2 / (n_c * (n_c - 1) / 2))
        far.append((acc[m] & ~same[m]).sum() / (n_c * (len(y) - n_c)))
    return np.asarray(tar), np.asarray(far)


@pytest.mark.parametrize("kind", KINDS)
def test_pair_figures_equal_brute_force(kind: str) -> None:
    x, y = _data()
    sc = _scorer(kind)
    s, v, same = _brute(sc, x, y)
    # small blocks: many off-diagonal / diagonal blocks; exact_cutoff=0: the sampled bracket
    index = PairIndex(x, y, block_size=16, scorer=sc)
    st = pair_statistics(index, fars=[0.01, 0.05], num_thresholds=11, bins=10, exact_cutoff=0)
    assert st.score_scale == sc.score_scale == index.score_scale
    for f in (0.01, 0.05):
        want = np.quantile(v[~same], 1 - f)
        np.testing.assert_allclose(st.threshold_at_far(f), want, rtol=RTOL, atol=RTOL)
    t = st.threshold_at_far(0.01)
    op = st.operating_point(t)
    tar, far = _rates(s, y, t)
    np.testing.assert_array_equal(op.tar, tar)
    np.testing.assert_array_equal(op.far, far)
    assert op.global_far == np.mean(v[~same] >= t) and op.score_scale == sc.score_scale
    tc = st.consistency()
    lo, hi = np.quantile(v[~same], [0.9, 0.99])
    np.testing.assert_allclose(tc.thresholds, np.linspace(lo, hi, 11), rtol=RTOL, atol=RTOL)
    u = []
    for th in tc.thresholds:
        a, b = _rates(s, y, th)
        u.append(np.where(a + 1 - b > 0, 2 * a * (1 - b) / np.maximum(a + 1 - b, 1e-300), 0))
    np.testing.assert_allclose(tc.utility, np.asarray(u).T, rtol=1e-12)
    np.testing.assert_allclose(tc.opis, np.mean(np.var(np.asarray(u).T, axis=0)), rtol=1e-9)
    h = st.histogram()
    e = h.edges
    if sc.score_scale == "probability":
        np.testing.assert_array_equal(e, np.linspace(0, 1, 11))
    else:  # the exact range of all pair scores
        np.testing.assert_allclose([e[0], e[-1]], [v.min(), v.max()], rtol=RTOL, atol=RTOL)
    clip = np.clip(v, e[0], e[-1])
    np.testing.assert_array_equal(h.neg, np.histogram(clip[~same], e)[0])
    np.testing.assert_array_equal(h.pos, np.histogram(clip[same], e)[0])
    assert h.to_dict()["score_scale"] == sc.score_scale


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_retrieval_equals_brute_force(kind: str, ties: bool) -> None:
    x, y = _data(seed=3)
    if ties:  # rows repeated across classes: equal scores, ranked by gallery index
        x[40:60] = x[0:20]
    sc = _scorer(kind)
    s = sc.score(x, x)
    np.fill_diagonal(s, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(y)), s.shape), -s), axis=1)
    rel = y[order] == y[:, None]
    r = np.bincount(y)[y] - 1
    ap = [np.sum(rel[i, : r[i]] * np.cumsum(rel[i, : r[i]]) / np.arange(1, r[i] + 1)) / r[i]
          for i in range(len(y))]  # fmt: skip
    m = retrieval_metrics(x, y, ks=(1, 2), scorer=sc)
    assert m.recall_at_k[1] == np.mean(rel[:, 0])
    np.testing.assert_allclose(m.map_at_r, np.mean(ap), rtol=1e-12)
    ev = evaluate(x, y, scorer=sc, calibration_far=None, block_size=16)
    assert ev.retrieval is not None and ev.retrieval.recall_at_k[1] == m.recall_at_k[1]
    assert ev.options["score_scale"] == sc.score_scale


@pytest.mark.parametrize("kind", ["asnorm", "platt"])
def test_sharded_equals_one_process(kind: str) -> None:
    from test_metrics_evaluation import _assert_same_stats, _run_sharded

    x, y = _data(seed=4)
    sc = _scorer(kind)
    index = PairIndex(x, y, block_size=8, scorer=sc)
    kw: dict[str, Any] = dict(index=index, fars=[1e-2], num_thresholds=11, bins=12, sample_size=50)
    one = pair_statistics(**kw, exact_cutoff=0)
    for got in _run_sharded(2, **kw, exact_cutoff=0):
        _assert_same_stats(got, one)
    # without a communicator: fixed thresholds, the shards' counts added with +
    fixed = list(one.far_thresholds.values())
    kw2: dict[str, Any] = dict(far_range=None, thresholds=fixed)
    if sc.score_scale == "probability":
        kw2["bins"] = 12  # fixed edges [0, 1]
    whole = pair_statistics(index, **kw2)
    parts = [pair_statistics(index, shard=(r, 2), **kw2) for r in range(2)]
    _assert_same_stats(parts[0] + parts[1], whole)


def test_unbounded_histogram_sharded_without_comm_is_refused() -> None:
    x, y = _data()
    index = PairIndex(x, y, scorer=_scorer("asnorm"))
    with pytest.raises(ValueError, match="needs comm="):
        pair_statistics(index, far_range=None, bins=4, shard=(0, 2))


def test_cosine_scorer_equals_no_scorer_exactly() -> None:
    x, y = _data(seed=1)
    kw: dict[str, Any] = dict(bins=8, threshold=0.3, block_size=16)
    a = evaluate(x, y, **kw).to_dict()
    b = evaluate(x, y, scorer=Cosine(), **kw).to_dict()
    assert a == b and "score_scale" not in a["options"]
    assert threshold_consistency(x, y, scorer=Cosine()).opis == threshold_consistency(x, y).opis


def test_scorer_of_another_dimension_is_refused_before_any_pass() -> None:
    x, y = _data()
    sc = ASNorm(top_k=None).fit(np.random.default_rng(0).normal(size=(50, 8)))
    with pytest.raises(ValueError, match=r"fitted on 8-dimensional embeddings; got 16"):
        PairIndex(x, y, scorer=sc)
    with pytest.raises(ValueError, match=r"fitted on 8-dimensional"):
        operating_point(x, y, 0.5, scorer=sc)
    with pytest.raises(ValueError, match=r"fitted on 8-dimensional"):
        retrieval_metrics(x, y, scorer=sc)
    with pytest.raises(ValueError, match="not fitted"):
        PairIndex(x, y, scorer=ASNorm())
