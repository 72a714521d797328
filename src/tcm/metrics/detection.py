"""Detection metrics on 1-D arrays of pair scores: DET curve, minDCF / actDCF, Cllr, LogAUC, WERM.

Input convention (every function here): ``scores`` is a 1-D array of pair scores, ``same`` a
1-D boolean array of the same length (``True``: the pair is genuine, same class), and a pair is
*accepted* when ``score >= threshold`` (the project's convention). The false match rate at a
threshold ``t`` is ``FMR(t) = #{impostor scores >= t} / #impostors`` and the false non-match rate
``FNMR(t) = #{genuine scores < t} / #genuines``. Both classes must be present.

Which scale each function expects:

* :func:`det_curve`, :func:`min_dcf`, :func:`log_auc`: any score on which larger means "more
  likely genuine" (cosine, normalised score, probability, LLR); only the order of the scores
  matters.
* :func:`act_dcf`, :func:`cllr`: calibrated scores, either natural-log likelihood ratios
  (``kind="llr"``, the default) or posterior probabilities of "genuine" at a stated ``prior``
  (``kind="probability"``; converted with ``llr = logit(p) - logit(prior)``). The calibrators of
  :mod:`tcm.scoring` give probabilities at prior 0.5, i.e. ``logit(p)`` is their LLR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tcm.metrics._checks import check_far_range, check_fraction

__all__ = ["DETCurve", "act_dcf", "cllr", "det_curve", "log_auc", "min_dcf", "werm"]

ScoreKind = Literal["llr", "probability"]


def _scores_same(scores: Any, same: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``(scores, same)``; returns float64 scores and a bool mask."""
    s = np.asarray(scores)
    m = np.asarray(same)
    if s.ndim != 1:
        raise ValueError(f"scores must be a 1-D array; got shape {s.shape}")
    if m.shape != s.shape:
        raise ValueError(f"same must have the shape of scores {s.shape}; got {m.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"scores must be numeric; got dtype {s.dtype}")
    if m.dtype != np.bool_:
        if not np.issubdtype(m.dtype, np.integer) or not np.isin(m, (0, 1)).all():
            raise ValueError("same must be boolean (or 0/1 integers)")
        m = m.astype(bool)
    s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN value(s)")
    n_gen = int(m.sum())
    if n_gen == 0 or n_gen == m.shape[0]:
        raise ValueError(
            f"need both genuine and impostor pairs; got {n_gen} genuine and "
            f"{m.shape[0] - n_gen} impostor pair(s)"
        )
    return s, m


def _costs(p_target: Any, c_miss: Any, c_fa: Any) -> tuple[float, float, float]:
    p = check_fraction(p_target, "p_target")
    for name, v in (("c_miss", c_miss), ("c_fa", c_fa)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a positive number; got {v!r}")
        if not (math.isfinite(float(v)) and float(v) > 0):
            raise ValueError(f"{name} must be a positive finite number; got {v!r}")
    return p, float(c_miss), float(c_fa)


@dataclass(frozen=True)
class DETCurve:
    """Error rates at every distinct threshold (see :func:`det_curve`).

    Attributes:
        thresholds: ``(K,)`` increasing: the distinct scores, then ``+inf`` (accept nothing).
        fmr: ``(K,)`` false match rate at each threshold (non-increasing, from 1 to 0).
        fnmr: ``(K,)`` false non-match rate at each threshold (non-decreasing, from 0 to 1).
    """

    thresholds: np.ndarray
    fmr: np.ndarray
    fnmr: np.ndarray


def det_curve(scores: Any, same: Any) -> DETCurve:
    r"""FMR and FNMR at every distinct score used as threshold, and at ``+inf``.

    .. math:: \mathrm{FMR}(t) = \frac{|\{s_k \ge t: \text{impostor}\}|}{N_\text{imp}},\quad
              \mathrm{FNMR}(t) = \frac{|\{s_k < t: \text{genuine}\}|}{N_\text{gen}}

    The lowest threshold accepts every pair (FNMR 0, FMR 1), ``+inf`` rejects every pair. Plot
    it on probit axes for the usual DET picture.

    Raises:
        ValueError: bad shapes, NaN scores, or a class (genuine / impostor) missing.

    Example:
        >>> c = det_curve([0.9, 0.4, 0.6, 0.1], [True, True, False, False])
        >>> c.thresholds.tolist(), c.fmr.tolist(), c.fnmr.tolist()
        ([0.1, 0.4, 0.6, 0.9, inf], [1.0, 0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5, 1.0])
    """
    s, m = _scores_same(scores, same)
    gen = np.sort(s[m])
    imp = np.sort(s[~m])
    t = np.append(np.unique(s), np.inf)
    fnmr = np.searchsorted(gen, t, side="left") / gen.shape[0]
    fmr = (imp.shape[0] - np.searchsorted(imp, t, side="left")) / imp.shape[0]
    return DETCurve(thresholds=t, fmr=fmr.astype(np.float64), fnmr=fnmr.astype(np.float64))


def min_dcf(
    scores: Any,
    same: Any,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> float:
    r"""Normalised minimum detection cost over all thresholds (NIST SRE convention).

    .. math:: \min_t \frac{C_\text{miss} P_\text{tar} \mathrm{FNMR}(t)
              + C_\text{fa} (1 - P_\text{tar}) \mathrm{FMR}(t)}
              {\min(C_\text{miss} P_\text{tar},\ C_\text{fa} (1 - P_\text{tar}))}

    over the thresholds of :func:`det_curve` (every distinct score and ``+inf``), so the value is
    at most 1 (the better of "accept all" and "reject all"). Any monotone score works.

    Raises:
        ValueError: bad inputs (see :func:`det_curve`), ``p_target`` outside (0, 1), a cost that
            is not a positive finite number.

    Example:
        >>> min_dcf([0.9, 0.8, 0.3, 0.1], [True, True, False, False], p_target=0.5)
        0.0
        >>> min_dcf([0.9, 0.2, 0.3, 0.1], [True, True, False, False], p_target=0.5)
        0.5
    """
    p, cm, cf = _costs(p_target, c_miss, c_fa)
    c = det_curve(scores, same)
    dcf = cm * p * c.fnmr + cf * (1.0 - p) * c.fmr
    return float(dcf.min() / min(cm * p, cf * (1.0 - p)))


def _as_llr(scores: np.ndarray, kind: Any, prior: Any) -> np.ndarray:
    if kind == "llr":
        return scores
    if kind != "probability":
        raise ValueError(f"kind must be 'llr' or 'probability'; got {kind!r}")
    pr = check_fraction(prior, "prior")
    if ((scores < 0) | (scores > 1)).any():
        raise ValueError("kind='probability' needs scores in [0, 1]")
    with np.errstate(divide="ignore"):
        logit = np.log(scores) - np.log1p(-scores)
    return np.asarray(logit - math.log(pr / (1.0 - pr)), dtype=np.float64)


def act_dcf(
    scores: Any,
    same: Any,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    *,
    kind: ScoreKind = "llr",
    prior: float = 0.5,
) -> float:
    r"""Normalised actual detection cost at the Bayes threshold of calibrated scores.

    With natural-log likelihood ratios (``kind="llr"``) the Bayes decision accepts a pair when

    .. math:: \mathrm{llr} \ge \theta = \ln\frac{C_\text{fa} (1 - P_\text{tar})}
              {C_\text{miss} P_\text{tar}}

    and the cost is normalised as in :func:`min_dcf`, so ``act_dcf >= min_dcf`` and the gap is
    the calibration loss at this operating point. ``kind="probability"``: ``scores`` are
    posteriors of "genuine" at prior ``prior`` (0.5 for the calibrators of :mod:`tcm.scoring`),
    turned into ``llr = logit(p) - logit(prior)`` first (``p = 0`` / ``1`` give ``-inf`` /
    ``+inf``).

    Raises:
        ValueError: as :func:`min_dcf`; ``kind`` unknown; probabilities outside [0, 1].

    Example:
        >>> act_dcf([2.0, -1.0, -3.0, 0.5], [True, True, False, False], p_target=0.5)
        1.0
        >>> act_dcf([0.9, 0.2, 0.1, 0.3], [True, True, False, False], p_target=0.5,
        ...         kind="probability")
        0.5
    """
    p, cm, cf = _costs(p_target, c_miss, c_fa)
    s, m = _scores_same(scores, same)
    llr = _as_llr(s, kind, prior)
    theta = math.log(cf * (1.0 - p) / (cm * p))
    accept = llr >= theta
    p_miss = float((~accept[m]).mean())
    p_fa = float(accept[~m].mean())
    return (cm * p * p_miss + cf * (1.0 - p) * p_fa) / min(cm * p, cf * (1.0 - p))


def cllr(scores: Any, same: Any, *, kind: ScoreKind = "llr", prior: float = 0.5) -> float:
    r"""Log-likelihood-ratio cost (Brümmer & du Preez 2006), in bits.

    .. math:: C_\text{llr} = \frac{1}{2}\Big(\frac{1}{N_\text{gen}}\sum_\text{gen}
              \log_2(1 + e^{-\mathrm{llr}}) + \frac{1}{N_\text{imp}}\sum_\text{imp}
              \log_2(1 + e^{\mathrm{llr}})\Big)

    0 for perfect, 1 for an uninformative ``llr = 0``; ``+inf`` when an infinite LLR has the wrong
    sign. ``kind`` / ``prior`` as in :func:`act_dcf`.

    Raises:
        ValueError: as :func:`act_dcf`.

    Example:
        >>> cllr([0.0, 0.0], [True, False])
        1.0
        >>> round(cllr([0.9, 0.1], [True, False], kind="probability"), 6)
        0.152003
    """
    s, m = _scores_same(scores, same)
    llr = _as_llr(s, kind, prior)
    gen = np.logaddexp(0.0, -llr[m]).mean()
    imp = np.logaddexp(0.0, llr[~m]).mean()
    return float(0.5 * (gen + imp) / math.log(2.0))


def log_auc(scores: Any, same: Any, far_range: tuple[float, float] = (1e-3, 1e-1)) -> float:
    r"""Area under the ROC curve over ``log10(FAR)`` in ``far_range = (a, b)``, divided by
    ``log10(b / a)`` (so a perfect system scores 1).

    The ROC curve is the polyline through the points ``(FMR(t), 1 - FNMR(t))`` of every
    distinct threshold plus ``(0, 0)`` (tied scores give diagonal segments). Its value at ``a``
    and ``b`` is interpolated linearly in FAR; between the vertices inside ``[a, b]`` the area
    is the trapezoid rule in ``log10(FAR)``:

    .. math:: \mathrm{LogAUC}_{[a,b]} = \frac{1}{\log_{10}(b/a)} \sum_k
              \frac{\mathrm{TAR}_k + \mathrm{TAR}_{k+1}}{2}\,
              \big(\log_{10}\mathrm{FAR}_{k+1} - \log_{10}\mathrm{FAR}_k\big)

    This is the definition of torchmetrics' ``BinaryLogAUC(fpr_range=(a, b))`` (non-binned); the
    test suite checks equality (torchmetrics computes the rates in float32, and applies a
    sigmoid to predictions outside [0, 1], which can merge nearby scores; this function does
    neither). Where the ROC has vertical runs (several vertices at one FAR), torchmetrics 1.9.0
    can differ: it orders the vertices with an unstable argsort before interpolating at ``a`` /
    ``b``, so it may start from any vertex of the run (seen: 0.2833 instead of the exact 1/3 on
    16 pairs whose TAR is 1/3 over the whole range); here the run's top vertex is used.

    Raises:
        ValueError: bad inputs (see :func:`det_curve`); ``far_range`` not ``0 < a < b < 1``.

    Example:
        >>> log_auc([0.9, 0.8, 0.3, 0.1], [True, True, False, False], far_range=(0.01, 0.5))
        1.0
    """
    a, b = check_far_range(far_range)
    c = det_curve(scores, same)
    # ROC vertices in increasing FAR: thresholds from +inf down, then the (0, 0) start.
    far = np.concatenate(([0.0], c.fmr[::-1]))
    tar = np.concatenate(([0.0], 1.0 - c.fnmr[::-1]))
    area = 0.0
    for k in range(far.shape[0] - 1):
        x0, x1 = far[k], far[k + 1]
        if x1 <= x0 or x1 <= a or x0 >= b:
            continue  # vertical segment (no width) or outside [a, b]
        y0, y1 = tar[k], tar[k + 1]
        lo, hi = max(x0, a), min(x1, b)
        slope = (y1 - y0) / (x1 - x0)
        ylo, yhi = y0 + slope * (lo - x0), y0 + slope * (hi - x0)
        area += 0.5 * (ylo + yhi) * (math.log10(hi) - math.log10(lo))
    return float(area / (math.log10(b) - math.log10(a)))


WERM_EPSILON = 1e-5
"""Added to every group's rate inside the geometric mean of :func:`werm`."""


def werm(
    fmr_per_group: Any,
    fnmr_per_group: Any,
    alpha: float = 0.5,
    beta: float = 0.5,
    *,
    epsilon: float = WERM_EPSILON,
) -> float:
    r"""Weighted error-rate ratio metric (WERM) of Linghu et al., IJCB 2024; 1 is fair, larger
    is less fair.

    .. math:: \mathrm{WERM} = \Big(\frac{\max_g \mathrm{FMR}_g}{\big(\prod_g (\mathrm{FMR}_g +
              \varepsilon)\big)^{1/G}}\Big)^{\alpha}\,\Big(\frac{\max_g \mathrm{FNMR}_g}
              {\big(\prod_g (\mathrm{FNMR}_g + \varepsilon)\big)^{1/G}}\Big)^{\beta}

    with the per-group rates at one shared threshold. Our reading of the paper's epsilon
    convention, taken from the authors' published evaluation code: ``epsilon = 1e-5`` is added
    to each group's rate inside the geometric mean only (so a group with rate 0 does not make the
    ratio infinite), the maximum in the numerator is the raw rate, and ``alpha = beta = 0.5``.
    Consequences: rates far above ``epsilon`` give ``max / geomean``; all rates 0 gives a factor
    0 (not 1). The geometric mean is computed as ``exp(mean(log(rate + epsilon)))``.

    Raises:
        ValueError: a rate list that is empty, not 1-D, or has a value outside [0, 1] or NaN;
            ``alpha`` / ``beta`` negative or ``epsilon`` not positive.

    Example:
        >>> round(werm([0.001, 0.004], [0.1, 0.1]), 4)
        1.4097
    """
    parts = []
    for name, rates, w in (
        ("fmr_per_group", fmr_per_group, alpha),
        ("fnmr_per_group", fnmr_per_group, beta),
    ):
        r = np.asarray(rates, dtype=np.float64)
        if r.ndim != 1 or r.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty 1-D array; got shape {r.shape}")
        if not ((r >= 0) & (r <= 1)).all():
            raise ValueError(f"{name} must hold rates in [0, 1]; got {r.tolist()!r}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(f"the exponent for {name} must be a number >= 0; got {w!r}")
        parts.append((r, float(w)))
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise ValueError(f"epsilon must be a positive number; got {epsilon!r}")
    out = 1.0
    for r, w in parts:
        geo = math.exp(float(np.log(r + epsilon).mean()))
        out *= (float(r.max()) / geo) ** w
    return out
