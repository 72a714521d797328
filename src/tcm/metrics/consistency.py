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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tcm._validation import ArrayLike
from tcm.metrics._checks import (
    check_epsilon,
    check_finite,
    check_fraction,
    check_int,
    check_num_thresholds,
)
from tcm.metrics.bootstrap import check_bootstrap_args, check_bootstrap_memory
from tcm.metrics.results import OperatingPoint, SimilarityHistogram, ThresholdConsistency
from tcm.metrics.statistics import (
    DEFAULT_EXACT_CUTOFF,
    DEFAULT_SAMPLE_SIZE,
    PairIndex,
    pair_statistics,
)

if TYPE_CHECKING:
    from tcm.scoring.base import Scorer

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


def threshold_consistency(
    embeddings: ArrayLike,
    labels: ArrayLike,
    far_range: tuple[float, float] = (1e-2, 1e-1),
    num_thresholds: int = 101,
    epsilons: Sequence[float] = (0.05, 0.10),
    *,
    block_size: int | None = None,
    scorer: Scorer | None = None,
    exact_cutoff: int = DEFAULT_EXACT_CUTOFF,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    ci: float | None = None,
    n_boot: int = 1000,
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
        scorer: a fitted :class:`~tcm.scoring.Scorer` (default: cosine): the pairs are scored
            by it block by block and every figure is exact on the scores (``score_scale``).
        exact_cutoff: collect all negatives when their number is at most this (no sampling).
        sample_size: at most this many negative pairs are sampled to bracket the quantiles
            (``max(100_000, M // 5000)`` when that is smaller; results stay exact).
        seed: seed of that sample (results do not depend on it) and of the bootstrap.
        ci, n_boot: with ``ci`` in ``(0, 1)``, ``result.intervals`` holds the class-bootstrap
            intervals of OPIS and each eps-OPIS (``n_boot`` resamples of the classes, from the
            utility table: no further pass).

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
    check_bootstrap_args(ci, n_boot)  # before the passes
    index = PairIndex(embeddings, labels, block_size=block_size, scorer=scorer)
    if ci is not None:
        check_bootstrap_memory(
            index.classes.shape[0], n_boot, 4 * check_num_thresholds(num_thresholds)
        )
    stats = pair_statistics(
        index,
        far_range=far_range,
        num_thresholds=num_thresholds,
        exact_cutoff=exact_cutoff,
        sample_size=sample_size,
        seed=seed,
    )
    return stats.consistency(epsilons, ci=ci, n_boot=n_boot, seed=seed)


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
    eps = check_epsilon(epsilon)
    return threshold_consistency(embeddings, labels, epsilons=(eps,), **kw).epsilon_opis[eps]


def operating_point(
    embeddings: ArrayLike,
    labels: ArrayLike,
    threshold: float,
    *,
    block_size: int | None = None,
    scorer: Scorer | None = None,
    ci: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
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
    t = check_finite(threshold, "threshold")
    check_bootstrap_args(ci, n_boot)  # before the pass
    index = PairIndex(embeddings, labels, block_size=block_size, scorer=scorer)
    if ci is not None:
        check_bootstrap_memory(index.classes.shape[0], n_boot)
    stats = pair_statistics(index, far_range=None, thresholds=[t])
    return stats.operating_point(t, ci=ci, n_boot=n_boot, seed=seed)


def threshold_at_far(
    embeddings: ArrayLike,
    labels: ArrayLike,
    far: float = 1e-3,
    *,
    block_size: int | None = None,
    scorer: Scorer | None = None,
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
    f = check_fraction(far, "far")
    index = PairIndex(embeddings, labels, block_size=block_size, scorer=scorer)
    stats = pair_statistics(
        index,
        fars=[f],
        far_range=None,
        exact_cutoff=exact_cutoff,
        sample_size=sample_size,
        seed=seed,
    )
    return stats.threshold_at_far(f)


def similarity_histogram(
    embeddings: ArrayLike,
    labels: ArrayLike,
    bins: int = 200,
    *,
    block_size: int | None = None,
    scorer: Scorer | None = None,
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
    nb = check_int(bins, "bins", 1)
    index = PairIndex(embeddings, labels, block_size=block_size, scorer=scorer)
    return pair_statistics(index, far_range=None, bins=nb).histogram()
