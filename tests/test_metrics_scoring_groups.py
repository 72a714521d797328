"""Group rates and calibration transfer with a scorer: per-group FAR / FRR of AS-norm scores
against a loop over the pairs with the AS-norm formula written out here, and the score scale the
results record (issue 21)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tcm.metrics import calibration_transfer, group_consistency, group_operating_point
from tcm.metrics.statistics import PairIndex, pair_statistics
from tcm.metrics.transfer import transfer_view
from tcm.scoring import ASNorm


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """30 samples, 6 classes, 3 groups (each class spread over the groups), 8 dimensions."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(6), 5)
    x = rng.normal(size=(30, 8)) + 1.2 * rng.normal(size=(6, 8))[y]
    g = np.array(["a", "b", "c"])[np.arange(30) % 3]
    return x, y, g


def _asnorm_reference(x: np.ndarray, cohort: np.ndarray, top_k: int) -> np.ndarray:
    """Symmetric AS-norm of every pair, sample by sample: ``mu_i`` / ``sd_i`` = mean and
    population std of the ``top_k`` largest cosines of ``i`` to the cohort; the score of
    ``(i, j)`` with cosine ``s`` is ``0.5 * ((s - mu_i) / sd_i + (s - mu_j) / sd_j)``."""
    xn = [v / np.sqrt(sum(c * c for c in v)) for v in x]
    cn = [v / np.sqrt(sum(c * c for c in v)) for v in cohort]
    mu, sd = [], []
    for v in xn:
        top = sorted((float(np.dot(v, c)) for c in cn), reverse=True)[:top_k]
        m = sum(top) / top_k
        mu.append(m)
        sd.append((sum((t - m) ** 2 for t in top) / top_k) ** 0.5)
    n = len(xn)
    s = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            if i != j:
                c = float(np.dot(xn[i], xn[j]))
                s[i, j] = 0.5 * ((c - mu[i]) / sd[i] + (c - mu[j]) / sd[j])
    return s


def _group_rates(
    s: np.ndarray, y: np.ndarray, g: np.ndarray, t: float
) -> tuple[dict[str, float], dict[str, float], dict[tuple[str, str], float]]:
    """FAR_g, FRR_g (both samples in g) and the cross-group FAR (one sample in g, one in h)
    at ``t``, pair by pair (``i < j``)."""
    gen: dict[str, list[bool]] = {}
    imp: dict[str, list[bool]] = {}
    cross: dict[tuple[str, str], list[bool]] = {}
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            acc = bool(s[i, j] >= t)
            if y[i] == y[j]:
                if g[i] == g[j]:
                    gen.setdefault(str(g[i]), []).append(acc)
                continue
            if g[i] == g[j]:
                imp.setdefault(str(g[i]), []).append(acc)
            for key in {(str(g[i]), str(g[j])), (str(g[j]), str(g[i]))}:
                cross.setdefault(key, []).append(acc)
    far = {k: sum(v) / len(v) for k, v in imp.items()}
    frr = {k: 1.0 - sum(v) / len(v) for k, v in gen.items()}
    return far, frr, {k: sum(v) / len(v) for k, v in cross.items()}


def _between_scores(s: np.ndarray, q: float) -> float:
    """A threshold between two neighbouring pair scores (gap far above float64 rounding), near
    the ``q`` quantile: no pair lies within rounding distance of it."""
    v = np.unique(s[np.isfinite(s)])
    k = int(q * (len(v) - 1))
    while v[k + 1] - v[k] < 1e-9 * max(1.0, abs(v[k])):
        k += 1
    return float(0.5 * (v[k] + v[k + 1]))


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_group_rates_with_asnorm_equal_a_loop_over_pairs(q: float) -> None:
    x, y, g = _data()
    cohort = np.random.default_rng(9).normal(size=(40, 8))
    s = _asnorm_reference(x, cohort, top_k=10)
    t = _between_scores(s, q)
    gop = group_operating_point(x, y, g, t, scorer=ASNorm(top_k=10).fit(cohort))
    far, frr, cross = _group_rates(s, y, g, t)
    names = [str(v) for v in gop.groups.tolist()]
    assert names == ["a", "b", "c"]
    # each rate is a ratio of two pair counts (exact integers): equal to the last bit
    assert gop.far.tolist() == [far[n] for n in names]
    assert gop.frr.tolist() == [frr[n] for n in names]
    assert gop.far_matrix.tolist() == [[cross[(a, b)] for b in names] for a in names]
    assert gop.score_scale == "z-score" and gop.to_dict()["score_scale"] == "z-score"


def test_cosine_group_and_transfer_results_keep_their_json() -> None:
    x, y, g = _data()
    gop = group_operating_point(x, y, g, 0.3)
    assert gop.score_scale == "cosine" and "score_scale" not in gop.to_dict()
    gc = group_consistency(x, y, g)
    assert gc.score_scale == "cosine" and "score_scale" not in gc.to_dict()
    x2, y2, _ = _data(seed=1)
    tr = calibration_transfer(x, y, x2, y2, far=0.05)
    assert tr.score_scale == "cosine" and "score_scale" not in tr.to_dict()


def test_transfer_and_group_opis_record_the_scorers_scale() -> None:
    x, y, g = _data()
    x2, y2, g2 = _data(seed=1)
    sc = ASNorm(top_k=10).fit(np.random.default_rng(9).normal(size=(40, 8)))
    tr = calibration_transfer(x, y, x2, y2, far=0.05, source_groups=g, target_groups=g2, scorer=sc)
    assert tr.score_scale == "z-score" and tr.to_dict()["score_scale"] == "z-score"
    assert tr.target_groups is not None and tr.target_groups.score_scale == "z-score"
    assert group_consistency(x, y, g, scorer=sc).score_scale == "z-score"


def test_transfer_view_refuses_statistics_on_two_scales() -> None:
    x, y, _ = _data()
    sc = ASNorm(top_k=10).fit(np.random.default_rng(9).normal(size=(40, 8)))
    src = pair_statistics(PairIndex(x, y, scorer=sc), fars=[0.05], far_range=None)
    tgt: Any = pair_statistics(PairIndex(x, y), fars=[0.05], far_range=None, thresholds=[0.3])
    with pytest.raises(ValueError, match="z-score scale, target scores on the cosine scale"):
        transfer_view(src, tgt, 0.05)
