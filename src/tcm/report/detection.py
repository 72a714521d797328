"""The DET data of one run (the report's DET section): :func:`tcm.metrics.det_curve` and
:func:`tcm.metrics.min_dcf` on every pair, or their streamed counterpart on large runs.

A pair ``(i, j)``, ``i < j``, is genuine when both samples have one label; it is accepted when
``score >= t`` (cosine similarity, or the run's scorer's ``score_scale``). minDCF is the
normalised minimum detection cost at ``P_target =`` :data:`DET_P_TARGET`, ``C_miss = C_fa = 1``
(NIST SRE convention). The curve is thinned to at most :data:`DET_POINTS` points for the figure
and ``report.json``.

* Up to :data:`DET_MAX_PAIRS` pairs: every pair is scored once and held in memory (8 bytes a
  pair, a few times that while sorting); the curve is exact (every distinct score is a
  threshold) and so is minDCF.
* Above it (:func:`streamed_detection`): no pair is held. Exact blocked passes of the pair engine
  (:func:`tcm.metrics.pair_statistics`, scores in the embeddings' dtype) count genuine and
  impostor pairs ``>= t`` at a fixed set of thresholds: the :data:`DET_BINS` - 1 inner edges of
  an exact score histogram (over ``[-1, 1]`` for cosines, ``[0, 1]`` for probabilities, else the
  exact score range), plus the exact impostor-score quantiles at the log-spaced FARs
  :data:`DET_FARS` (so the low-FAR end has points however the tail falls in the bins). Every
  curve point is then exact at its threshold; minDCF is the minimum over these thresholds, hence
  ``>=`` the exact minDCF. The exact value is also bounded below: between two neighbouring
  thresholds ``a < b`` no threshold costs less than ``C_miss P FNMR(a) + C_fa (1 - P) FMR(b)``
  (normalised), so ``exact >= min(grid minimum, every such bound)``. One more exact count pass
  at :data:`DET_REFINE` thresholds inside each interval whose bound is below the grid minimum
  tightens both values (the report states the bin count and the lower bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tcm._validation import ArrayLike
from tcm.metrics import det_curve, min_dcf

if TYPE_CHECKING:
    from tcm.scoring import Scorer

__all__ = [
    "DET_BINS",
    "DET_FARS",
    "DET_MAX_PAIRS",
    "DET_POINTS",
    "DET_P_TARGET",
    "DET_REFINE",
    "DET_REFINE_MAX",
    "RunDetection",
    "run_detection",
    "streamed_detection",
]

#: ``P_target`` of the report's minDCF (``C_miss = C_fa = 1``).
DET_P_TARGET = 0.01
#: Runs with more pairs than this take the streamed path (memory: the pair scores).
DET_MAX_PAIRS = 20_000_000
#: Points kept of each DET curve (evenly spaced along the curve on probit axes).
DET_POINTS = 400
#: Score-histogram bins of the streamed path (its inner edges are thresholds; the engine's
#: limit, and on cosines a bin width of 2e-5).
DET_BINS = 100_000
#: FARs whose exact impostor-score quantiles are thresholds of the streamed path too (5 a
#: decade from 1e-7 to 1e-2; those below ``1 / #impostors`` are dropped).
DET_FARS: tuple[float, ...] = tuple(float(10.0**e) for e in np.linspace(-7.0, -2.0, 26))
#: Thresholds counted inside each interval the streamed minDCF may still improve on (one more
#: exact pass; at most :data:`DET_REFINE_MAX` in all, the lowest bounds first).
DET_REFINE = 32
DET_REFINE_MAX = 8192
_ROWS = 512  # rows of the score matrix computed at once


@dataclass(frozen=True)
class RunDetection:
    """DET curve and minDCF of one run (see the module docstring).

    Attributes:
        score_scale: the scale of the scores (``"cosine"`` or the scorer's).
        num_genuine, num_impostor: the run's genuine / impostor pairs.
        min_dcf: normalised minDCF at :data:`DET_P_TARGET` (streamed: the minimum over the
            counted thresholds, ``>=`` the exact value).
        fmr, fnmr: the thinned DET curve (false match / false non-match rates, FMR
            non-increasing).
        num_bins: ``None`` on the exact path; streamed: the score-histogram bins.
        min_dcf_lower: streamed only: a lower bound of the exact minDCF (module docstring).
        thresholds: streamed only: the threshold of each curve point (exact rates there).
    """

    score_scale: str
    num_genuine: int
    num_impostor: int
    min_dcf: float
    fmr: np.ndarray
    fnmr: np.ndarray
    num_bins: int | None = None
    min_dcf_lower: float | None = None
    thresholds: np.ndarray | None = None

    @property
    def streamed(self) -> bool:
        """Whether the data came from the streamed (binned) path."""
        return self.num_bins is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict: minDCF and its cost parameters, pair counts, the curve;
        streamed runs also ``min_dcf_resolution`` (``"bins"``), ``num_bins``,
        ``min_dcf_lower_bound`` and the curve's ``thresholds``."""
        out: dict[str, Any] = {
            "score_scale": self.score_scale,
            "p_target": DET_P_TARGET,
            "c_miss": 1.0,
            "c_fa": 1.0,
            "min_dcf": self.min_dcf,
            "num_genuine_pairs": self.num_genuine,
            "num_impostor_pairs": self.num_impostor,
            "fmr": self.fmr.tolist(),
            "fnmr": self.fnmr.tolist(),
        }
        if self.streamed:
            assert self.thresholds is not None
            out["min_dcf_resolution"] = "bins"
            out["num_bins"] = self.num_bins
            out["min_dcf_lower_bound"] = self.min_dcf_lower
            out["thresholds"] = self.thresholds.tolist()
        return out


def all_pair_scores(
    embeddings: ArrayLike, labels: ArrayLike, scorer: Scorer | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, same)`` of every pair ``i < j`` (row-major), float64: the cosine of the
    L2-normalised embeddings, or the scorer's score of it (its state prepared once)."""
    from tcm.scoring.base import normalized

    x = normalized(embeddings).to(torch.float64)
    lab = np.asarray(labels)
    state = None if scorer is None or scorer.kind == "cosine" else scorer.prepare(x)
    n = int(x.shape[0])
    scores, same = [], []
    for i0 in range(0, n, _ROWS):
        i1 = min(n, i0 + _ROWS)
        block = x[i0:i1] @ x[i0:].T
        if state is not None:
            assert scorer is not None
            block = scorer.score_block(block, state[i0:i1], state[i0:])
        r, c = np.triu_indices(i1 - i0, 1, n - i0)
        scores.append(block.numpy()[r, c])
        same.append(lab[i0 + r] == lab[i0 + c])
    if not scores:
        return np.empty(0), np.empty(0, dtype=bool)
    return np.concatenate(scores), np.concatenate(same)


def _thin(fmr: np.ndarray, fnmr: np.ndarray, points: int) -> np.ndarray:
    """Indices of at most about ``points`` curve points, evenly spaced along the curve's length
    on probit axes (rates clipped to ``[1e-9, 1 - 1e-9]``), the two ends always kept."""
    from scipy.special import ndtri

    if fmr.shape[0] <= points:
        return np.arange(fmr.shape[0])
    px = ndtri(np.clip(fmr, 1e-9, 1 - 1e-9))
    py = ndtri(np.clip(fnmr, 1e-9, 1 - 1e-9))
    length = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(px), np.diff(py)))))
    step = max(float(length[-1]) / (points - 1), np.finfo(np.float64).tiny)
    keep = np.flatnonzero(np.diff(np.floor(length / step), prepend=-1.0) > 0)
    return np.unique(np.concatenate((keep, [fmr.shape[0] - 1])))


def _dcf(fnmr: np.ndarray, fmr: np.ndarray) -> np.ndarray:
    """Normalised detection cost at :data:`DET_P_TARGET`, ``C_miss = C_fa = 1`` (as
    :func:`tcm.metrics.min_dcf`)."""
    p = DET_P_TARGET
    return np.asarray((p * fnmr + (1.0 - p) * fmr) / min(p, 1.0 - p))


def _lower_bounds(fnmr: np.ndarray, fmr: np.ndarray) -> np.ndarray:
    """For the rates at increasing thresholds, the least cost of any threshold strictly
    between neighbours ``k`` and ``k + 1``: FNMR is at least ``fnmr[k]``, FMR at least
    ``fmr[k + 1]``."""
    return _dcf(fnmr[:-1], fmr[1:])


def _merge_points(
    t_parts: list[np.ndarray], g_parts: list[np.ndarray], i_parts: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds and their genuine / impostor counts ``>= t``, concatenated and sorted by
    threshold, one row per distinct threshold (equal thresholds have equal counts)."""
    t = np.concatenate(t_parts).astype(np.float64)
    g = np.concatenate(g_parts).astype(np.int64)
    i = np.concatenate(i_parts).astype(np.int64)
    order = np.argsort(t, kind="stable")
    t, g, i = t[order], g[order], i[order]
    first = np.concatenate(([True], t[1:] != t[:-1]))
    return t[first], g[first], i[first]


def _refine_thresholds(th: np.ndarray, bounds: np.ndarray, best: float) -> np.ndarray:
    """:data:`DET_REFINE` thresholds evenly inside each interval ``(th[k], th[k + 1])`` whose
    cost bound is below ``best`` (the lowest bounds first, :data:`DET_REFINE_MAX` in all). An
    infinite end is replaced by the farthest finite threshold mirrored past the nearest one."""
    cand = np.flatnonzero(bounds < best)
    cand = cand[np.argsort(bounds[cand], kind="stable")][: DET_REFINE_MAX // DET_REFINE]
    fin = th[np.isfinite(th)]
    if cand.shape[0] == 0 or fin.shape[0] == 0:
        return np.empty(0)
    span = float(fin[-1] - fin[0]) or 1.0
    lo = np.where(np.isfinite(th[cand]), th[cand], fin[0] - span)
    hi = np.where(np.isfinite(th[cand + 1]), th[cand + 1], fin[-1] + span)
    inner = np.linspace(lo, hi, DET_REFINE + 2, axis=1)[:, 1:-1]
    return np.unique(inner[np.isfinite(inner)])


def streamed_detection(
    embeddings: ArrayLike,
    labels: ArrayLike,
    scorer: Scorer | None = None,
    *,
    bins: int = DET_BINS,
    block_size: int | None = None,
) -> RunDetection:
    """:class:`RunDetection` from exact blocked passes, no pair held (module docstring).

    Passes over the pairs: the impostor quantiles at :data:`DET_FARS` (one tail pass), the
    score range (scorers off the cosine / probability scales), one sweep counting the histogram
    and the quantile thresholds, and one count pass refining minDCF (tail only). Every rate is
    an exact count over all pairs divided by the number of genuine / impostor pairs. One
    process (the report computes there).

    Raises:
        ValueError: bad input (as :class:`tcm.metrics.PairIndex`), ``bins`` outside
            ``[2, 100_000]``, no genuine or no impostor pair.
    """
    from tcm.metrics import PairIndex, pair_statistics
    from tcm.metrics._checks import check_int, check_size

    nb = check_size(check_int(bins, "bins", 2), "bins", 2)
    index = PairIndex(embeddings, labels, block_size=block_size, scorer=scorer)
    n_gen, n_imp = index.num_positive_pairs, index.num_negative_pairs
    if n_gen == 0 or n_imp == 0:
        raise ValueError(
            f"need both genuine and impostor pairs; got {n_gen} genuine and {n_imp} impostor "
            "pair(s)"
        )
    fars = [f for f in DET_FARS if f * n_imp >= 1.0]
    stats = pair_statistics(index, fars=fars, far_range=None, bins=nb)
    edges, hpos, hneg = stats.hist_edges, stats.hist_pos, stats.hist_neg
    assert edges is not None and hpos is not None and hneg is not None
    # (threshold, genuine >= t, impostor >= t): the two ends, the inner histogram edges
    # (#{s >= edges[b]} = the bins from b on, exact for 0 < b < B) and the FAR quantiles
    t_parts = [np.array([-np.inf, np.inf]), edges[1:-1]]
    g_parts = [np.array([n_gen, 0]), np.cumsum(hpos[::-1])[::-1][1:]]
    i_parts = [np.array([n_imp, 0]), np.cumsum(hneg[::-1])[::-1][1:]]
    if fars:
        pos_acc, neg_acc = stats.accepted()
        cols = stats.columns_of([stats.far_thresholds[f] for f in fars])
        t_parts.append(stats.thresholds[cols])
        g_parts.append(pos_acc.sum(axis=0)[cols])
        i_parts.append(neg_acc.sum(axis=0)[cols] // 2)  # a negative pair counts for 2 classes
    th, gen, imp = _merge_points(t_parts, g_parts, i_parts)
    fnmr, fmr = (n_gen - gen) / n_gen, imp / n_imp
    sub = _refine_thresholds(th, _lower_bounds(fnmr, fmr), float(_dcf(fnmr, fmr).min()))
    if sub.shape[0]:
        more = pair_statistics(index, thresholds=sub, far_range=None)
        mp, mn = more.accepted()
        cols = more.columns_of(sub)
        th, gen, imp = _merge_points(
            [th, sub], [gen, mp.sum(axis=0)[cols]], [imp, mn.sum(axis=0)[cols] // 2]
        )
        fnmr, fmr = (n_gen - gen) / n_gen, imp / n_imp
    value = float(_dcf(fnmr, fmr).min())
    lower = min(value, float(_lower_bounds(fnmr, fmr).min()))
    keep = _thin(fmr, fnmr, DET_POINTS)
    return RunDetection(
        index.score_scale, n_gen, n_imp, value, fmr[keep], fnmr[keep],
        num_bins=nb, min_dcf_lower=lower, thresholds=th[keep],
    )  # fmt: skip


def run_detection(
    embeddings: ArrayLike,
    labels: ArrayLike,
    scorer: Scorer | None = None,
    *,
    max_pairs: int | None = None,
    bins: int | None = None,
) -> RunDetection:
    """:class:`RunDetection` of a run's embeddings and labels (scored by ``scorer``, default
    cosine). Needs both genuine and impostor pairs (as the run's evaluation does). Runs with
    more than ``max_pairs`` pairs (default :data:`DET_MAX_PAIRS`) take
    :func:`streamed_detection` with ``bins`` histogram bins (default :data:`DET_BINS`); the
    others are exact.

    Example:
        >>> import numpy as np
        >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> d = run_detection(x, [0, 0, 1, 1])
        >>> d.min_dcf, d.num_genuine, d.num_impostor
        (0.0, 2, 4)
    """
    lab = np.asarray(labels)
    n = int(lab.shape[0])
    _, sizes = np.unique(lab, return_counts=True)
    num_gen = int((sizes * (sizes - 1) // 2).sum())
    num_imp = n * (n - 1) // 2 - num_gen
    scale = "cosine" if scorer is None else scorer.score_scale
    cap = DET_MAX_PAIRS if max_pairs is None else max_pairs
    if n * (n - 1) // 2 > cap:
        nb = DET_BINS if bins is None else bins
        return streamed_detection(embeddings, lab, scorer, bins=nb)
    scores, same = all_pair_scores(embeddings, lab, scorer)
    curve = det_curve(scores, same)
    keep = _thin(curve.fmr, curve.fnmr, DET_POINTS)
    value = min_dcf(scores, same, p_target=DET_P_TARGET)
    return RunDetection(scale, num_gen, num_imp, value, curve.fmr[keep], curve.fnmr[keep])
