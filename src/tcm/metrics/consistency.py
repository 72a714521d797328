"""Threshold-consistency metrics: OPIS, epsilon-OPIS and per-class operating characteristics.

Definitions (``docs/definitions.md`` §1-3, Zhang et al., ICLR 2024). Embeddings are
L2-normalised internally; ``s(i, j) = <x_i, x_j>`` is the cosine **similarity** in ``[-1, 1]``
and a pair is accepted when ``s >= t``. Pairs are unordered. For a class ``c`` with
``n_c >= 2`` samples (classes with fewer are excluded, but their samples still count as
negatives of every other class) among ``N`` samples:

* ``TAR_c(t) = #{i<j in c : s >= t} / (n_c (n_c - 1) / 2)``
* ``TRR_c(t) = #{(i in c, j not in c) : s < t} / (n_c (N - n_c))``
* ``U_c(t) = 2 TAR_c TRR_c / (TAR_c + TRR_c)`` (0 where both are 0)

Thresholds ``t_0 .. t_{K-1}`` are ``K`` equally spaced values from ``t_min = t(f_hi)`` to
``t_max = t(f_lo)`` with ``t(f) = np.quantile(neg_sims, 1 - f)`` (linear interpolation, exact),
and

* ``OPIS = (1/K) sum_k (1/T) sum_c (U_c(t_k) - mean_c U_c(t_k))^2``
* ``eps-OPIS = (1/K) sum_k (U_hi(t_k) - U_lo(t_k))^2`` with ``U_hi`` / ``U_lo`` the means of the
  ``m = max(1, floor(eps T))`` largest / smallest ``U_c(t_k)``.

The similarity matrix is never materialised: it is computed block by block over its upper
triangle, each unordered pair once (``block_size`` rows, matmul in the input's float dtype,
float16/bfloat16 promoted to float32, on the input's device; on CPU one worker thread per torch
thread), and all counts are exact integers; every comparison with a threshold is exact, i.e.
equal to comparing the similarity converted to float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcm._validation import ArrayLike
from tcm.metrics._pairs import Prepared, check_block_size, prepare
from tcm.metrics._passes import CountState, count_pass, hist_pass, negative_quantiles

__all__ = [
    "OperatingPoint",
    "SimilarityHistogram",
    "ThresholdConsistency",
    "epsilon_opis",
    "operating_point",
    "opis",
    "similarity_histogram",
    "threshold_at_far",
    "threshold_consistency",
]

DEFAULT_EXACT_CUTOFF = 20_000_000
DEFAULT_SAMPLE_SIZE = 2_000_000


def _jsonable(a: np.ndarray) -> list[Any]:
    """``a.tolist()`` (NumPy scalars -> Python ints / floats / strs)."""
    return list(np.asarray(a).tolist())


@dataclass(frozen=True)
class ThresholdConsistency:
    """Result of :func:`threshold_consistency` (``T`` included classes, ``K`` thresholds).

    Attributes:
        opis: OPIS, mean over thresholds of the across-class variance of utility (unitless).
        epsilon_opis: ``{eps: eps-OPIS}`` for each requested epsilon.
        thresholds: ``(K,)`` float64 cosine-similarity thresholds ``t_min .. t_max``.
        far_range: ``(f_lo, f_hi)`` global FAR range that defined ``t_max`` / ``t_min``.
        classes: ``(T,)`` labels of the included classes (``n_c >= 2``), sorted.
        class_sizes: ``(T,)`` int64 ``n_c``.
        tar: ``(T, K)`` float64 per-class true acceptance rate ``TAR_c(t_k)``.
        trr: ``(T, K)`` float64 per-class true rejection rate ``TRR_c(t_k)``.
        utility: ``(T, K)`` float64 ``U_c(t_k)``, harmonic mean of TAR and TRR.
        excluded_classes: ``(E,)`` labels of classes with fewer than 2 samples.
        global_tar: ``(K,)`` fraction of all positive pairs accepted at ``t_k``.
        global_far: ``(K,)`` fraction of all negative pairs accepted at ``t_k``.
        num_positive_pairs: ``P = sum_c n_c (n_c - 1) / 2``.
        num_negative_pairs: ``M = N (N - 1) / 2 - P``.
    """

    opis: float
    epsilon_opis: dict[float, float]
    thresholds: np.ndarray
    far_range: tuple[float, float]
    classes: np.ndarray
    class_sizes: np.ndarray
    tar: np.ndarray
    trr: np.ndarray
    utility: np.ndarray
    excluded_classes: np.ndarray
    global_tar: np.ndarray
    global_far: np.ndarray
    num_positive_pairs: int
    num_negative_pairs: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (arrays -> lists, epsilon keys -> strings)."""
        return {
            "opis": float(self.opis),
            "epsilon_opis": {str(k): float(v) for k, v in self.epsilon_opis.items()},
            "thresholds": _jsonable(self.thresholds),
            "far_range": [float(self.far_range[0]), float(self.far_range[1])],
            "classes": _jsonable(self.classes),
            "class_sizes": _jsonable(self.class_sizes),
            "tar": _jsonable(self.tar),
            "trr": _jsonable(self.trr),
            "utility": _jsonable(self.utility),
            "excluded_classes": _jsonable(self.excluded_classes),
            "global_tar": _jsonable(self.global_tar),
            "global_far": _jsonable(self.global_far),
            "num_positive_pairs": int(self.num_positive_pairs),
            "num_negative_pairs": int(self.num_negative_pairs),
        }


@dataclass(frozen=True)
class OperatingPoint:
    """Result of :func:`operating_point` at one similarity threshold (``T`` included classes).

    Attributes:
        threshold: the cosine-similarity threshold ``t`` (pairs with ``s >= t`` are accepted).
        classes: ``(T,)`` labels of the included classes (``n_c >= 2``).
        class_sizes: ``(T,)`` int64 ``n_c``.
        tar, far, frr, trr: ``(T,)`` float64 per-class rates at ``t`` (``frr = 1 - tar``,
            ``trr = 1 - far``).
        global_tar: fraction of all positive pairs accepted.
        global_far: fraction of all negative pairs accepted.
        excluded_classes: ``(E,)`` labels of classes with fewer than 2 samples.
    """

    threshold: float
    classes: np.ndarray
    class_sizes: np.ndarray
    tar: np.ndarray
    far: np.ndarray
    frr: np.ndarray
    trr: np.ndarray
    global_tar: float
    global_far: float
    excluded_classes: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (arrays -> lists)."""
        return {
            "threshold": float(self.threshold),
            "classes": _jsonable(self.classes),
            "class_sizes": _jsonable(self.class_sizes),
            "tar": _jsonable(self.tar),
            "far": _jsonable(self.far),
            "frr": _jsonable(self.frr),
            "trr": _jsonable(self.trr),
            "global_tar": float(self.global_tar),
            "global_far": float(self.global_far),
            "excluded_classes": _jsonable(self.excluded_classes),
        }


@dataclass(frozen=True)
class SimilarityHistogram:
    """Result of :func:`similarity_histogram`: exact pair counts per cosine-similarity bin.

    Attributes:
        edges: ``(B + 1,)`` float64 bin edges, ``linspace(-1, 1, B + 1)``. Bin ``b`` is
            ``[edges[b], edges[b+1])``, the last bin is closed; similarities are clipped to
            ``[-1, 1]`` first (rounding can push them slightly outside).
        pos: ``(B,)`` int64 number of positive pairs (same label, ``i < j``) per bin.
        neg: ``(B,)`` int64 number of negative pairs per bin.
    """

    edges: np.ndarray
    pos: np.ndarray
    neg: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (arrays -> lists)."""
        return {
            "edges": _jsonable(self.edges),
            "pos": _jsonable(self.pos),
            "neg": _jsonable(self.neg),
        }


# ----------------------------------------------------------------------------- validation


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in (0, 1); got {value!r}")
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1); got {value!r}")
    return v


def _check_far_range(far_range: Any) -> tuple[float, float]:
    try:
        lo_raw, hi_raw = far_range
    except (TypeError, ValueError) as exc:
        raise ValueError(f"far_range must be a pair (f_lo, f_hi); got {far_range!r}") from exc
    lo = _check_fraction(lo_raw, "far_range[0] (f_lo)")
    hi = _check_fraction(hi_raw, "far_range[1] (f_hi)")
    if not lo < hi:
        raise ValueError(f"far_range must satisfy f_lo < f_hi (increasing); got {far_range!r}")
    return lo, hi


def _check_num_thresholds(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"num_thresholds must be an integer >= 2; got {k!r}")
    if k < 2:
        raise ValueError(f"num_thresholds must be >= 2; got {k}")
    return int(k)


def _check_epsilon(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise ValueError(f"epsilon must be a number in (0, 0.5]; got {eps!r}")
    v = float(eps)
    if not 0.0 < v <= 0.5:
        raise ValueError(f"epsilon must be in (0, 0.5]; got {eps!r}")
    return v


def _check_pairs(prep: Prepared) -> np.ndarray:
    """Raise if there is no negative pair or fewer than 2 classes with >= 2 samples; return the
    boolean mask of included classes."""
    if prep.num_classes < 2:
        raise ValueError(
            f"no negative pairs: all {prep.n} samples share one label "
            f"({prep.classes[0]!r}); at least 2 distinct labels are needed"
        )
    included = prep.counts >= 2
    if int(included.sum()) < 2:
        raise ValueError(
            f"fewer than 2 classes with >= 2 samples: got {int(included.sum())} of "
            f"{prep.num_classes} classes (need at least 2)"
        )
    return np.asarray(included)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- core math


def _utility(tar: np.ndarray, trr: np.ndarray) -> np.ndarray:
    """``2 TAR TRR / (TAR + TRR)``, 0 where ``TAR + TRR == 0``."""
    den = tar + trr
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, 2.0 * tar * trr / safe, 0.0)


def _opis_from_utility(u: np.ndarray) -> float:
    """OPIS from the ``(T, K)`` utility matrix.

    The variance is computed on ``u - u[0]`` (shift-invariant), which makes it exactly 0 when all
    classes have identical curves and reduces cancellation."""
    d = u - u[:1]
    return float(np.mean(np.mean((d - d.mean(axis=0, keepdims=True)) ** 2, axis=0)))


def _eps_opis_from_utility(u: np.ndarray, eps: float) -> float:
    """eps-OPIS from the ``(T, K)`` utility matrix."""
    t = u.shape[0]
    m = max(1, math.floor(eps * t + 1e-9))
    s = np.sort(u, axis=0)
    return float(np.mean((s[t - m :].mean(axis=0) - s[:m].mean(axis=0)) ** 2))


def _rates(
    prep: Prepared, state: CountState
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All-class ``(C, K)`` TAR and FAR plus global TAR / FAR vectors from a count state."""
    n = prep.n
    nc = prep.counts.astype(np.float64)
    pos_acc = CountState.accepted(state.pos)
    neg_acc = CountState.accepted(state.neg)
    npos = nc * (nc - 1) / 2
    nneg = nc * (n - nc)
    with np.errstate(divide="ignore", invalid="ignore"):
        tar = pos_acc / np.where(npos > 0, npos, 1.0)[:, None]
        far = neg_acc / np.where(nneg > 0, nneg, 1.0)[:, None]
    p, m = prep.num_positive_pairs, prep.num_negative_pairs
    gtar = pos_acc.sum(axis=0) / p if p > 0 else np.zeros(pos_acc.shape[1])
    gfar = (neg_acc.sum(axis=0) // 2) / m
    return tar, far, np.asarray(gtar, dtype=np.float64), np.asarray(gfar, dtype=np.float64)


# ----------------------------------------------------------------------------- public API


def threshold_consistency(
    embeddings: ArrayLike,
    labels: ArrayLike,
    far_range: tuple[float, float] = (1e-2, 1e-1),
    num_thresholds: int = 101,
    epsilons: Sequence[float] = (0.05, 0.10),
    *,
    block_size: int | None = None,
    exact_cutoff: int = DEFAULT_EXACT_CUTOFF,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
) -> ThresholdConsistency:
    """Per-class operating curves, OPIS and eps-OPIS over a global-FAR calibration range.

    See the module docstring for the formulas. Two passes of blocked matmuls over the upper
    triangle of ``S = X X^T``: one finds the exact negative quantiles ``t(f_hi)``, ``t(f_lo)``
    (bracketed by a random sample of negatives when there are more than ``exact_cutoff``),
    the second counts accepted pairs per class on the ``K``-point grid. Memory is
    ``O(block_size^2 + C K)`` per worker thread plus the negatives inside the quantile
    brackets (about 1% of the ``M`` negatives or fewer), never ``O(N^2)``.

    Args:
        embeddings: ``(N, D)`` NumPy array or torch tensor (CPU/CUDA, any float dtype); rows are
            L2-normalised internally.
        labels: ``(N,)`` class ids (any integer type or strings).
        far_range: ``(f_lo, f_hi)`` with ``0 < f_lo < f_hi < 1``; global FAR at ``t_max`` /
            ``t_min``.
        num_thresholds: ``K >= 2`` grid points, inclusive of both ends.
        epsilons: each in ``(0, 0.5]``; eps-OPIS is reported for each.
        block_size: rows per similarity block (default 512 on CPU; 4096 for float32, 2048
            for float64 on other devices).
        exact_cutoff: collect all negatives when their number is at most this (no sampling).
        sample_size: at most this many negative pairs are sampled to bracket the quantiles
            (``max(100_000, M // 5000)`` when that is smaller; results stay exact).
        seed: seed of that sample (results do not depend on it).

    Raises:
        ValueError: NaN/inf or all-zero embeddings, length mismatch, no negative pairs, fewer
            than 2 classes with >= 2 samples, bad far_range, num_thresholds < 2, epsilon outside
            (0, 0.5], bad block_size / exact_cutoff / sample_size.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat(np.arange(10), 5)
        >>> x = rng.normal(size=(50, 8)) + 2 * rng.normal(size=(10, 8))[labels]
        >>> r = threshold_consistency(x, labels, num_thresholds=11)
        >>> r.utility.shape, r.thresholds.shape, r.opis >= 0
        ((10, 11), (11,), True)
    """
    f_lo, f_hi = _check_far_range(far_range)
    k = _check_num_thresholds(num_thresholds)
    eps_list = [_check_epsilon(e) for e in epsilons]
    exact_cutoff = _check_int(exact_cutoff, "exact_cutoff", 0)
    sample_size = _check_int(sample_size, "sample_size", 1)
    prep = prepare(embeddings, labels)
    bs = check_block_size(block_size, prep)
    included = _check_pairs(prep)
    t_min, t_max = negative_quantiles(
        prep,
        [1.0 - f_hi, 1.0 - f_lo],
        bs,
        exact_cutoff=exact_cutoff,
        sample_size=sample_size,
        seed=seed,
    )
    thresholds = np.linspace(t_min, t_max, k)
    state = count_pass(prep, thresholds, bs)
    tar_all, far_all, gtar, gfar = _rates(prep, state)
    tar = tar_all[included]
    trr = 1.0 - far_all[included]
    u = _utility(tar, trr)
    return ThresholdConsistency(
        opis=_opis_from_utility(u),
        epsilon_opis={e: _eps_opis_from_utility(u, e) for e in eps_list},
        thresholds=thresholds,
        far_range=(f_lo, f_hi),
        classes=prep.classes[included],
        class_sizes=prep.counts[included],
        tar=tar,
        trr=trr,
        utility=u,
        excluded_classes=prep.classes[~included],
        global_tar=gtar,
        global_far=gfar,
        num_positive_pairs=prep.num_positive_pairs,
        num_negative_pairs=prep.num_negative_pairs,
    )


def opis(embeddings: ArrayLike, labels: ArrayLike, **kw: Any) -> float:
    """OPIS of :func:`threshold_consistency` (same keyword arguments).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(40, 4)); y = np.arange(40) % 4
        >>> opis(x, y) >= 0.0
        True
    """
    return threshold_consistency(embeddings, labels, **kw).opis


def epsilon_opis(
    embeddings: ArrayLike, labels: ArrayLike, epsilon: float = 0.05, **kw: Any
) -> float:
    """eps-OPIS (mean squared gap between the best and worst ``eps`` share of classes' utility).

    Keyword arguments are those of :func:`threshold_consistency` (except ``epsilons``).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(40, 4)); y = np.arange(40) % 4
        >>> epsilon_opis(x, y, epsilon=0.25) >= 0.0
        True
    """
    eps = _check_epsilon(epsilon)
    return threshold_consistency(embeddings, labels, epsilons=(eps,), **kw).epsilon_opis[eps]


def operating_point(
    embeddings: ArrayLike,
    labels: ArrayLike,
    threshold: float,
    *,
    block_size: int | None = None,
) -> OperatingPoint:
    """Per-class TAR / FAR / FRR / TRR and global TAR / FAR at one cosine-similarity threshold.

    ``TAR_c = #{i<j in c: s >= t} / (n_c(n_c-1)/2)``, ``FAR_c = #{i in c, j not in c: s >= t} /
    (n_c (N - n_c))``; global rates pool all positive / negative pairs.

    Raises:
        ValueError: bad embeddings / labels (see :func:`threshold_consistency`), non-finite
            threshold, no negative pairs or fewer than 2 classes with >= 2 samples.

    Example:
        >>> import numpy as np
        >>> x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
        >>> op = operating_point(x, [0, 0, 1, 1], threshold=0.5)
        >>> op.tar.tolist(), op.far.tolist(), float(op.global_far)
        ([1.0, 1.0], [0.0, 0.0], 0.0)
    """
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float, np.integer, np.floating))
        or not math.isfinite(float(threshold))
    ):
        raise ValueError(f"threshold must be a finite number; got {threshold!r}")
    t = float(threshold)
    prep = prepare(embeddings, labels)
    bs = check_block_size(block_size, prep)
    included = _check_pairs(prep)
    state = count_pass(prep, np.array([t]), bs)
    tar_all, far_all, gtar, gfar = _rates(prep, state)
    tar = tar_all[included, 0]
    far = far_all[included, 0]
    return OperatingPoint(
        threshold=t,
        classes=prep.classes[included],
        class_sizes=prep.counts[included],
        tar=tar,
        far=far,
        frr=1.0 - tar,
        trr=1.0 - far,
        global_tar=float(gtar[0]),
        global_far=float(gfar[0]),
        excluded_classes=prep.classes[~included],
    )


def threshold_at_far(
    embeddings: ArrayLike,
    labels: ArrayLike,
    far: float = 1e-3,
    *,
    block_size: int | None = None,
    exact_cutoff: int = DEFAULT_EXACT_CUTOFF,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
) -> float:
    """Global threshold for a target FAR: exact ``np.quantile(neg_sims, 1 - far)`` (linear).

    Accepting ``s >= t`` then gives a global FAR of about ``far`` (ties and interpolation make
    it approximate for small numbers of negatives).

    Raises:
        ValueError: ``far`` outside (0, 1), bad embeddings / labels, no negative pairs.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(60, 3)); y = np.arange(60) % 3
        >>> -1.0 <= threshold_at_far(x, y, far=0.1) <= 1.0
        True
    """
    f = _check_fraction(far, "far")
    exact_cutoff = _check_int(exact_cutoff, "exact_cutoff", 0)
    sample_size = _check_int(sample_size, "sample_size", 1)
    prep = prepare(embeddings, labels)
    bs = check_block_size(block_size, prep)
    if prep.num_classes < 2:
        _check_pairs(prep)
    (t,) = negative_quantiles(
        prep, [1.0 - f], bs, exact_cutoff=exact_cutoff, sample_size=sample_size, seed=seed
    )
    return float(t)


def similarity_histogram(
    embeddings: ArrayLike,
    labels: ArrayLike,
    bins: int = 200,
    *,
    block_size: int | None = None,
) -> SimilarityHistogram:
    """Exact counts of positive and negative pairs in ``bins`` equal cosine-similarity bins
    over ``[-1, 1]`` (``np.histogram`` convention, values clipped to ``[-1, 1]``).

    Raises:
        ValueError: ``bins < 1``, bad embeddings / labels.

    Example:
        >>> h = similarity_histogram([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0, 0, 1], bins=4)
        >>> h.pos.tolist(), h.neg.tolist()
        ([0, 0, 0, 1], [0, 0, 2, 0])
    """
    nb = _check_int(bins, "bins", 1)
    prep = prepare(embeddings, labels)
    bs = check_block_size(block_size, prep)
    st = hist_pass(prep, np.linspace(-1.0, 1.0, nb + 1), bs)
    return SimilarityHistogram(edges=st.edges, pos=st.pos, neg=st.neg)
