"""Class-level bootstrap confidence intervals computed from count tables (never from pairs).

The unit of resampling is the *class*: the ``T`` included classes are drawn ``T`` times with
replacement, ``n_boot`` times, from ``np.random.default_rng(seed)``; each resample is described by
the weight vector ``w_b = bincount(indices_b, minlength=T)`` (how often each class was drawn).
A figure is recomputed on every resample from per-class tables already accumulated by the
evaluation, and the interval is the percentile interval of the ``n_boot`` values:
``lo, hi = quantile(samples, (1 - ci) / 2), quantile(samples, (1 + ci) / 2)`` (linear
interpolation; resamples where the figure is undefined, NaN, are left out).

* Pooled rates (global TAR / FAR at a threshold, group rates from per-(class, group) counts):
  ``rate_b = sum_c w_bc numer_c / sum_c w_bc denom_c``, i.e. ``(W @ numer) / (W @ denom)`` - one
  matrix product for all resamples (:func:`bootstrap_ratio`); figures of several such rates
  (group summaries such as Gini, max/min, GARBE; a FAR ratio) on the same resamples:
  :func:`bootstrap_rates`.
* OPIS / ε-OPIS: the rows of the per-class utility table ``U`` ``(T, K)`` are resampled
  (:func:`bootstrap_opis`, :func:`bootstrap_epsilon_opis`, vectorised with the weights; any
  other figure: :func:`bootstrap_statistic` with a function of the resampled table).

All functions of one ``(T, n_boot, seed)`` use the same resamples, so intervals of different
figures are computed on the same bootstrap replicates.

Example:
    >>> import numpy as np
    >>> accepted = np.array([90, 80, 95, 70, 85])    # per-class accepted genuine pairs
    >>> pairs = np.array([100, 100, 100, 100, 100])  # per-class genuine pairs
    >>> iv = bootstrap_ratio(accepted, pairs, ci=0.9, n_boot=500, seed=0)
    >>> round(iv.point, 3), bool(iv.lo <= iv.point <= iv.hi), iv.n_boot
    (0.84, True, 500)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcm._io import json_value
from tcm.metrics import _checks

__all__ = [
    "MAX_N_BOOT",
    "Interval",
    "bootstrap_epsilon_opis",
    "bootstrap_memory_bytes",
    "bootstrap_opis",
    "bootstrap_rates",
    "bootstrap_ratio",
    "bootstrap_statistic",
    "check_bootstrap_args",
    "check_bootstrap_memory",
    "class_bootstrap_indices",
    "class_bootstrap_weights",
    "interval_from_samples",
    "min_n_boot",
    "percentile_interval",
    "ratio_or_nan",
]

FloatOrArray = float | np.ndarray


MAX_N_BOOT = 100_000
"""Most resamples accepted. At ``B = 100,000`` the Monte-Carlo error of a 95 % percentile
endpoint is below 1 % of the bootstrap standard deviation (``sqrt(a (1 - a) / B) / phi(z_a)``
for a normal figure), far below the sampling uncertainty the interval describes; memory and
time grow linearly in ``B``."""

WEIGHT_COPIES = 6
"""Resample-by-class arrays ``(n_boot, T)`` (8 bytes each) alive at once at the peak: the
indices, their offsets, the bincount and its int64 and float64 copies, and the sorted / summed
weights of eps-OPIS."""


def min_n_boot(ci: float) -> int:
    """Fewest resamples for a meaningful ``ci`` percentile interval: ``ceil(2 / (1 - ci))``.

    Each tail outside the interval, a fraction ``(1 - ci) / 2`` of the resamples, must be
    expected to hold at least one resample; with fewer, the endpoints are the smallest and
    largest resampled values and the interval cannot have the stated level.

    Example:
        >>> min_n_boot(0.95), min_n_boot(0.9), min_n_boot(0.99)
        (40, 20, 200)
    """
    c = _check_ci(ci)
    return math.ceil(round(2.0 / (1.0 - c), 9))  # round: 2 / (1 - 0.9) is 20.000000000000004


def _check_n_boot(n_boot: int, ci: float | None = None) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1; got {n_boot!r}")
    if n_boot > MAX_N_BOOT:
        raise ValueError(
            f"n_boot = {n_boot:,} is above the limit of {MAX_N_BOOT:,} resamples (beyond it the "
            "Monte-Carlo error of the interval is < 1 % of its spread; memory and time grow "
            "linearly)"
        )
    if ci is not None and n_boot < min_n_boot(ci):
        raise ValueError(
            f"n_boot = {n_boot} is too few for a {ci!r} interval: need n_boot >= "
            f"ceil(2 / (1 - ci)) = {min_n_boot(ci)} so that each tail outside the interval "
            "holds a resample"
        )
    return int(n_boot)


def _check_ci(ci: float) -> float:
    return _checks.check_fraction(ci, "ci")


def bootstrap_memory_bytes(num_classes: int, n_boot: int, per_resample: int = 0) -> int:
    """Estimated peak bytes of a class bootstrap: ``8 n_boot (WEIGHT_COPIES T + per_resample)``
    (``per_resample``: float64 cells of the figure arrays each resample needs at once, e.g.
    ``4 K`` for OPIS on ``K`` thresholds)."""
    return 8 * int(n_boot) * (WEIGHT_COPIES * int(num_classes) + int(per_resample))


def check_bootstrap_memory(num_classes: int, n_boot: int, per_resample: int = 0) -> None:
    """Raise if :func:`bootstrap_memory_bytes` exceeds :data:`~tcm.metrics.MAX_TABLE_BYTES`
    (before any resample is drawn)."""
    need = bootstrap_memory_bytes(num_classes, n_boot, per_resample)
    if need > _checks.MAX_TABLE_BYTES:
        raise ValueError(
            f"the bootstrap would need about {need / 2**30:.1f} GiB ({n_boot:,} resamples x "
            f"({WEIGHT_COPIES} x {num_classes:,} classes + {per_resample:,} figure cells) x 8 "
            f"bytes; limit {_checks.MAX_TABLE_BYTES / 2**30:.0f} GiB): use fewer resamples "
            "(--n-boot)"
        )


def _check_num_classes(num_classes: int) -> int:
    bad = isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
    if bad or num_classes < 1:
        raise ValueError(f"the bootstrap needs >= 1 class; got num_classes={num_classes!r}")
    return int(num_classes)


def _value(x: np.ndarray) -> FloatOrArray:
    return float(x) if x.ndim == 0 else x


@dataclass(frozen=True)
class Interval:
    """A bootstrap percentile interval.

    Attributes:
        lo: lower end, ``quantile(samples, (1 - ci) / 2)``; a float, or an array for a
            vector-valued figure (e.g. one rate per group).
        hi: upper end, ``quantile(samples, (1 + ci) / 2)``.
        ci: confidence level in ``(0, 1)``.
        n_boot: number of bootstrap resamples.
        point: the figure on the original (not resampled) data, when known.
        n_valid: resamples on which the figure was finite (NaN: undefined, e.g. a resampled
            denominator of 0; inf: e.g. a ratio with a zero rate); the minimum over the entries
            of a vector-valued figure. NaN samples are left out of the percentiles, inf ones
            are kept.
    """

    lo: FloatOrArray
    hi: FloatOrArray
    ci: float
    n_boot: int
    point: FloatOrArray | None = None
    n_valid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"lo", "hi", "ci", "n_boot", "point", "n_valid"}`` (arrays -> lists; NaN -> ``None``,
        ``±inf`` -> ``"inf"`` / ``"-inf"``: :func:`tcm._io.json_value`)."""
        return {
            "lo": json_value(self.lo),
            "hi": json_value(self.hi),
            "ci": self.ci,
            "n_boot": self.n_boot,
            "point": json_value(self.point),
            "n_valid": self.n_valid,
        }


def class_bootstrap_indices(num_classes: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, T)`` int64 class indices drawn uniformly with replacement.

    Row ``b`` is ``np.random.default_rng(seed).integers(0, T, size=(n_boot, T))[b]``.

    Example:
        >>> class_bootstrap_indices(4, 2, seed=0).shape
        (2, 4)
    """
    t = _check_num_classes(num_classes)
    b = _check_n_boot(n_boot)
    check_bootstrap_memory(t, b)
    rng = np.random.default_rng(seed)
    return rng.integers(0, t, size=(b, t), dtype=np.int64)


def class_bootstrap_weights(num_classes: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, T)`` int64: how often each class is drawn in each resample.

    ``weights[b] == np.bincount(class_bootstrap_indices(T, n_boot, seed)[b], minlength=T)``;
    every row sums to ``T``.

    Example:
        >>> w = class_bootstrap_weights(5, 3, seed=1)
        >>> w.shape, w.sum(axis=1).tolist()
        ((3, 5), [5, 5, 5])
    """
    idx = class_bootstrap_indices(num_classes, n_boot, seed)
    b, t = idx.shape
    flat = idx + (np.arange(b, dtype=np.int64) * t)[:, None]
    return np.bincount(flat.ravel(), minlength=b * t).reshape(b, t).astype(np.int64)


def percentile_interval(samples: np.ndarray, ci: float = 0.95) -> tuple[FloatOrArray, FloatOrArray]:
    """Percentile interval of bootstrap ``samples`` ``(n_boot, ...)`` along axis 0.

    ``(quantile(samples, (1 - ci) / 2), quantile(samples, (1 + ci) / 2))`` with linear
    interpolation; NaN samples are ignored (all NaN -> NaN).

    Example:
        >>> percentile_interval(np.arange(101.0), ci=0.5)
        (25.0, 75.0)
    """
    c = _check_ci(ci)
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"samples must have shape (n_boot, ...) with n_boot >= 1; got {x.shape}")
    q = [(1.0 - c) / 2.0, (1.0 + c) / 2.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN
        lo, hi = np.nanquantile(x, q, axis=0)
    return _value(np.asarray(lo)), _value(np.asarray(hi))


def _interval(samples: np.ndarray, ci: float, n_boot: int, point: np.ndarray) -> Interval:
    lo, hi = percentile_interval(samples, ci)
    valid = np.isfinite(samples).sum(axis=0)
    return Interval(
        lo=lo,
        hi=hi,
        ci=float(ci),
        n_boot=n_boot,
        point=_value(np.asarray(point, dtype=np.float64)),
        n_valid=int(np.min(valid)) if np.ndim(valid) else int(valid),
    )


def ratio_or_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / b`` element-wise, NaN where ``b <= 0`` (a rate over no pairs is undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: np.ndarray = np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)
    return out


def bootstrap_ratio(
    numer: np.ndarray,
    denom: np.ndarray,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Interval:
    """Interval of a pooled rate ``sum_c numer_c / sum_c denom_c`` under the class bootstrap.

    Args:
        numer: ``(T, ...)`` per-class counts (e.g. accepted genuine pairs of class ``c``, or
            per-(class, group) accepted impostor pairs ``(T, G)``).
        denom: same shape, the per-class pair counts (``>= 0``).

    Returns:
        :class:`Interval` whose ``lo`` / ``hi`` / ``point`` have the trailing shape ``(...)``
        (floats for ``(T,)`` input). A resample whose denominator is 0 gives NaN and is left
        out of the percentiles; ``point`` is NaN when ``sum denom == 0``.

    Each resample is ``(w_b @ numer) / (w_b @ denom)`` with ``w_b`` from
    :func:`class_bootstrap_weights`, computed for all ``b`` as one matrix product.

    Example:
        >>> iv = bootstrap_ratio(np.array([1, 2, 3]), np.array([4, 4, 4]), n_boot=200, seed=0)
        >>> iv.point, 0.25 <= iv.lo <= iv.hi <= 0.75
        (0.5, True)
    """
    n, d = _check_counts(numer, denom, "bootstrap_ratio")
    c = _check_ci(ci)
    _check_n_boot(n_boot, c)
    w = class_bootstrap_weights(n.shape[0], n_boot, seed).astype(np.float64)
    t = n.shape[0]
    tail = n.shape[1:]
    num_b = w @ n.reshape(t, -1)
    den_b = w @ d.reshape(t, -1)
    samples = ratio_or_nan(num_b, den_b).reshape((w.shape[0], *tail))
    point = ratio_or_nan(n.sum(axis=0), d.sum(axis=0))
    return _interval(samples, c, w.shape[0], point)


def bootstrap_rates(
    tables: Mapping[str, tuple[np.ndarray, np.ndarray]],
    fn: Callable[[dict[str, np.ndarray]], Any],
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Interval:
    """Interval of a figure of several pooled rates, all on the same class resamples.

    Args:
        tables: ``{name: (numer, denom)}``, each pair ``(T, ...)`` per-class counts (the same
            ``T`` classes in every table; e.g. ``"far": (accepted impostors (T, G), impostors
            (T, G))`` and ``"frr": (rejected genuines (T, G), genuines (T, G))``).
        fn: maps ``{name: rates}`` to the figure; it is called once with rates of shape
            ``(n_boot, ...)`` (axis 0 = resample; NaN where a resampled denominator is 0) and
            must return shape ``(n_boot, ...)``, and once with ``(1, ...)`` for the point
            estimate. E.g. the Gini of per-group FARs, ``max/min``, ``FAR_T / f``.

    Every rate is ``(W @ numer) / (W @ denom)`` with ``W`` = :func:`class_bootstrap_weights`.

    Example:
        >>> acc = np.array([[1, 4], [2, 3], [0, 5]])      # per class, per group: accepted
        >>> tot = np.array([[10, 10], [10, 10], [10, 10]])
        >>> ratio = lambda r: r["far"][:, 1] / r["far"][:, 0]
        >>> iv = bootstrap_rates({"far": (acc, tot)}, ratio, n_boot=200, seed=0)
        >>> iv.point
        4.0
    """
    if not tables:
        raise ValueError("tables must hold at least one (numer, denom) pair")
    c = _check_ci(ci)
    _check_n_boot(n_boot, c)
    checked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    t = -1
    for name, (numer, denom) in tables.items():
        n, d = _check_counts(numer, denom, name)
        if t >= 0 and n.shape[0] != t:
            raise ValueError(
                f"every table must have the same number of classes T; {name!r} has "
                f"{n.shape[0]}, another has {t}"
            )
        t = n.shape[0]
        checked[name] = (n, d)
    w = class_bootstrap_weights(t, n_boot, seed).astype(np.float64)
    rates: dict[str, np.ndarray] = {}
    points: dict[str, np.ndarray] = {}
    for name, (n, d) in checked.items():
        tail = n.shape[1:]
        rates[name] = ratio_or_nan(w @ n.reshape(t, -1), w @ d.reshape(t, -1)).reshape(
            (w.shape[0], *tail)
        )
        points[name] = ratio_or_nan(n.sum(axis=0), d.sum(axis=0))[None]
    with np.errstate(divide="ignore", invalid="ignore"):
        samples = np.asarray(fn(rates), dtype=np.float64)
        point = np.asarray(fn(points), dtype=np.float64)
    if samples.ndim == 0 or samples.shape[0] != w.shape[0] or point.shape[:1] != (1,):
        raise ValueError(
            f"fn must keep axis 0 (the resamples): got {samples.shape} for {w.shape[0]} "
            f"resamples and {point.shape} for the point estimate"
        )
    return _interval(samples, c, w.shape[0], point[0])


def _check_counts(numer: np.ndarray, denom: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(numer, dtype=np.float64)
    d = np.asarray(denom, dtype=np.float64)
    if n.ndim == 0 or n.shape != d.shape or n.shape[0] == 0:
        raise ValueError(
            f"{name}: numer and denom must have the same shape (T, ...) with T >= 1; got "
            f"{n.shape} and {d.shape}"
        )
    if not (np.isfinite(n).all() and np.isfinite(d).all()):
        raise ValueError(f"{name}: numer and denom must be finite counts")
    if (d < 0).any():
        raise ValueError(f"{name}: denom must be >= 0 (pair counts)")
    return n, d


def bootstrap_statistic(
    table: np.ndarray,
    fn: Callable[[np.ndarray], Any],
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Interval:
    """Interval of any figure ``fn(table)`` of a per-class table ``(T, ...)`` (rows resampled).

    ``fn`` receives ``table[indices_b]`` (same shape as ``table``, rows drawn with replacement,
    :func:`class_bootstrap_indices`) and returns a float or an array of fixed shape. This calls
    ``fn`` ``n_boot`` times; OPIS and ε-OPIS have vectorised versions
    (:func:`bootstrap_opis`, :func:`bootstrap_epsilon_opis`) that give the same values.

    Example:
        >>> u = np.array([[0.9, 0.8], [0.7, 0.6], [0.5, 0.4]])
        >>> iv = bootstrap_statistic(u, lambda x: x.mean(), n_boot=100, seed=0)
        >>> round(iv.point, 2), bool(0.4 <= iv.lo <= iv.hi <= 0.9)
        (0.65, True)
    """
    x = np.asarray(table)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"table must have shape (T, ...) with T >= 1; got {x.shape}")
    c = _check_ci(ci)
    _check_n_boot(n_boot, c)
    idx = class_bootstrap_indices(x.shape[0], n_boot, seed)
    samples = np.stack([np.asarray(fn(x[i]), dtype=np.float64) for i in idx])
    return _interval(samples, c, idx.shape[0], np.asarray(fn(x), dtype=np.float64))


def _check_utility(utility: np.ndarray) -> np.ndarray:
    u = np.asarray(utility, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] == 0 or u.shape[1] == 0:
        raise ValueError(f"utility must be a (T, K) table with T, K >= 1; got shape {u.shape}")
    if not np.isfinite(u).all():
        raise ValueError("utility contains NaN or inf")
    return u


def _opis_of(u: np.ndarray) -> float:
    return float(np.mean(np.var(u, axis=0)))


def bootstrap_opis(
    utility: np.ndarray, ci: float = 0.95, n_boot: int = 1000, seed: int = 0
) -> Interval:
    """Interval of OPIS ``= mean_k var_c U[c, k]`` over resampled rows of ``utility`` ``(T, K)``.

    With weights ``w_b`` (:func:`class_bootstrap_weights`), the resampled across-class variance
    at ``t_k`` is ``(w_b @ U^2)_k / T - ((w_b @ U)_k / T)^2``: two matrix products for all
    resamples; equal (to rounding) to ``bootstrap_statistic(utility, opis_fn, ...)``.

    Example:
        >>> u = np.random.default_rng(0).uniform(0.5, 1.0, size=(40, 11))
        >>> iv = bootstrap_opis(u, n_boot=200)
        >>> bool(iv.lo <= iv.point <= iv.hi)
        True
    """
    u = _check_utility(utility)
    c = _check_ci(ci)
    _check_n_boot(n_boot, c)
    t = u.shape[0]
    w = class_bootstrap_weights(t, n_boot, seed).astype(np.float64)
    m1 = (w @ u) / t
    m2 = (w @ (u * u)) / t
    samples = np.maximum(m2 - m1 * m1, 0.0).mean(axis=1)
    return _interval(samples, c, w.shape[0], np.asarray(_opis_of(u)))


def _tail_mean(sorted_u: np.ndarray, w_sorted: np.ndarray, m: int) -> np.ndarray:
    """Mean of the ``m`` first values of the weighted multiset (values in ``sorted_u`` order)."""
    before = np.cumsum(w_sorted, axis=1) - w_sorted
    take = np.clip(m - before, 0.0, w_sorted)
    out: np.ndarray = (take @ sorted_u) / m
    return out


def bootstrap_epsilon_opis(
    utility: np.ndarray,
    epsilon: float = 0.05,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Interval:
    """Interval of ε-OPIS over resampled rows of ``utility`` ``(T, K)``.

    ε-OPIS ``= mean_k (U_hi(t_k) - U_lo(t_k))^2`` where ``U_hi`` / ``U_lo`` are the means of the
    ``m = max(1, floor(ε T))`` largest / smallest utilities at ``t_k``. A resample is the
    multiset of rows with weights ``w_b``; its ``m`` largest values at ``t_k`` are taken from the
    column sorted once: ``take_i = clip(m - (cumsum(w) - w)_i, 0, w_i)``. Vectorised over
    resamples (a loop over the ``K`` thresholds only); equal (to rounding) to
    ``bootstrap_statistic(utility, eps_opis_fn, ...)``.

    Example:
        >>> u = np.random.default_rng(0).uniform(0.5, 1.0, size=(40, 11))
        >>> iv = bootstrap_epsilon_opis(u, epsilon=0.1, n_boot=200)
        >>> bool(iv.lo <= iv.point <= iv.hi)
        True
    """
    u = _check_utility(utility)
    c = _check_ci(ci)
    _check_n_boot(n_boot, c)
    eps = float(epsilon)
    if not 0.0 < eps <= 1.0 or math.isnan(eps):
        raise ValueError(f"epsilon must lie in (0, 1]; got {epsilon!r}")
    t, k = u.shape
    m = max(1, math.floor(eps * t))
    w = class_bootstrap_weights(t, n_boot, seed).astype(np.float64)
    total = np.zeros(w.shape[0])
    for j in range(k):
        order = np.argsort(u[:, j], kind="stable")
        asc = u[order, j]
        w_asc = w[:, order]
        lo = _tail_mean(asc, w_asc, m)
        hi = _tail_mean(asc[::-1], w_asc[:, ::-1], m)
        total += (hi - lo) ** 2
    samples = total / k
    srt = np.sort(u, axis=0)
    point = float(np.mean((srt[-m:].mean(axis=0) - srt[:m].mean(axis=0)) ** 2))
    return _interval(samples, c, w.shape[0], np.asarray(point))


def check_bootstrap_args(ci: float | None, n_boot: int) -> None:
    """Validate ``ci`` (None = no interval, else in ``(0, 1)``) and ``n_boot``: an integer in
    ``[1, MAX_N_BOOT]``, and with ``ci`` at least :func:`min_n_boot` ``(ci)``."""
    if ci is not None:
        _check_ci(ci)
    _check_n_boot(n_boot, ci)


def interval_from_samples(samples: np.ndarray, ci: float, point: Any) -> Interval:
    """:class:`Interval` of bootstrap ``samples`` ``(n_boot, ...)`` around ``point``."""
    return _interval(np.asarray(samples, dtype=np.float64), ci, int(samples.shape[0]), point)
