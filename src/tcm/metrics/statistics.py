"""Pair statistics computed once: exact quantiles and count tables from which every pair metric
(OPIS, eps-OPIS, operating points, TAR@FAR, calibration, histograms) is a view.

Conventions: rows are L2-normalised, ``s(i, j)`` is the cosine **similarity**, a pair is accepted
when ``s >= t``, pairs are unordered. For a class ``c`` with ``n_c`` samples among ``N``:

* positives of ``c``: its ``n_c (n_c - 1) / 2`` within-class pairs;
* negatives of ``c``: the ``n_c (N - n_c)`` pairs with exactly one member in ``c`` (a negative pair
  is a negative of both its classes).

Work: :class:`PairIndex` validates, normalises and class-sorts the input once.
:func:`pair_statistics` then makes at most **two passes** over the pairs, block by block (never an
``N x N`` matrix):

1. a tail pass that finds every requested negative-pair quantile ``t(f) = quantile(neg, 1 - f)``
   exactly (NumPy's linear interpolation) - the FAR targets ``fars`` and the ends of every
   threshold grid;
2. a count sweep that buckets each pair at or above the smallest threshold against the union of
   all grids and given thresholds, filling per-class tables of accepted positives / negatives
   (and, if asked, the similarity histogram of all pairs).

The result, :class:`PairStats`, holds integer tables only (plus the quantiles), so shards merge
exactly: ``PairStats + PairStats`` adds the counts of two disjoint sets of pair blocks. Under
``torch.distributed`` every rank passes ``shard=(rank, world)`` and a communicator; the quantile
brackets and the tables are exchanged and every rank ends with the same statistics as one process.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(8), 5)
    >>> x = rng.normal(size=(40, 16)) + 2.0 * rng.normal(size=(8, 16))[labels]
    >>> index = PairIndex(x, labels)
    >>> stats = pair_statistics(index, fars=[1e-2], far_range=(1e-2, 1e-1), num_thresholds=11)
    >>> tc = stats.consistency()              # OPIS on the 11-point grid
    >>> op = stats.operating_point(stats.threshold_at_far(1e-2))
    >>> tc.utility.shape, op.tar.shape, 0.0 <= op.global_far <= 0.05
    ((8, 11), (8,), True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tcm._validation import ArrayLike, encode_labels
from tcm.metrics._checks import (
    check_epsilon,
    check_far_range,
    check_finite,
    check_fraction,
    check_group_labels,
    check_int,
    check_negatives,
    check_num_thresholds,
    check_pairs,
    check_size,
    check_table_memory,
)
from tcm.metrics._pairs import Prepared, check_block_size, check_shard, num_workers, prepare
from tcm.metrics._passes import (
    CountState,
    GroupSpec,
    GroupState,
    HistState,
    PassBackend,
    Sweep,
    TailState,
    negative_quantiles,
    numpy_path,
    score_range,
    sweep,
)
from tcm.metrics._progress import Progress, reporting
from tcm.metrics.bootstrap import (
    Interval,
    bootstrap_epsilon_opis,
    bootstrap_opis,
    bootstrap_ratio,
    check_bootstrap_args,
)
from tcm.metrics.distributed import Communicator
from tcm.metrics.results import OperatingPoint, SimilarityHistogram, ThresholdConsistency

if TYPE_CHECKING:
    from tcm.scoring.base import Scorer

__all__ = [
    "DEFAULT_EXACT_CUTOFF",
    "DEFAULT_SAMPLE_SIZE",
    "Grid",
    "PairIndex",
    "PairStats",
    "epsilon_opis_from_utility",
    "opis_from_utility",
    "pair_statistics",
    "utility",
]

DEFAULT_EXACT_CUTOFF = 20_000_000
"""Collect all negatives (no sampled bracket) when there are at most this many."""
DEFAULT_SAMPLE_SIZE = 2_000_000
"""Largest sample of negative pairs used to bracket the quantiles (results stay exact)."""


# ----------------------------------------------------------------------------- math on tables


def utility(tar: np.ndarray, trr: np.ndarray) -> np.ndarray:
    """``U = 2 TAR TRR / (TAR + TRR)`` element-wise, 0 where ``TAR + TRR == 0``.

    Example:
        >>> utility(np.array([1.0, 0.5, 0.0]), np.array([1.0, 1.0, 0.0])).round(4).tolist()
        [1.0, 0.6667, 0.0]
    """
    den = tar + trr
    safe = np.where(den > 0, den, 1.0)
    return np.asarray(np.where(den > 0, 2.0 * tar * trr / safe, 0.0))


def opis_from_utility(u: np.ndarray) -> float:
    """OPIS of a ``(T, K)`` utility table: ``mean_k var_c U[c, k]`` (population variance).

    Computed on ``u - u[0]`` (shift-invariant), which is exactly 0 for identical curves.

    Example:
        >>> opis_from_utility(np.array([[0.2, 0.4], [0.6, 0.8]]))
        0.04
    """
    d = u - u[:1]
    return float(np.mean(np.mean((d - d.mean(axis=0, keepdims=True)) ** 2, axis=0)))


def epsilon_opis_from_utility(u: np.ndarray, eps: float) -> float:
    """eps-OPIS of a ``(T, K)`` utility table: ``mean_k (U_hi - U_lo)^2`` with ``U_hi`` /
    ``U_lo`` the means of the ``m = max(1, floor(eps T))`` largest / smallest ``U[:, k]``.

    Example:
        >>> round(epsilon_opis_from_utility(np.array([[0.2], [0.5], [0.6]]), 0.34), 6)
        0.16
    """
    t = u.shape[0]
    m = max(1, math.floor(eps * t + 1e-9))
    s = np.sort(u, axis=0)
    return float(np.mean((s[t - m :].mean(axis=0) - s[:m].mean(axis=0)) ** 2))


# ----------------------------------------------------------------------------- index


class PairIndex:
    """Embeddings prepared once for the pair passes: validated, L2-normalised, class-sorted.

    Normalisation is safe at any scale (rows are first scaled by a power of two,
    :func:`tcm._validation.l2_normalize`); the sort is stable, so ties keep input order.

    Args:
        embeddings: ``(N, D)`` NumPy array or torch tensor (CPU/CUDA, any float dtype;
            float16/bfloat16 are promoted to float32).
        labels: ``(N,)`` class ids (integers of any width or strings).
        groups: optional ``(N,)`` group ids (a data distribution or sub-population per sample,
            any sortable type); kept in the same order as the rows.
        block_size: rows per similarity block (default: 512 on CPU, 4096 / 2048 on GPUs).
        scorer: a fitted :class:`~tcm.scoring.Scorer`: every pair is then scored by it (its
            per-sample state prepared here, once, on the normalised class-sorted rows; each
            block of cosines is mapped by ``score_block`` before any comparison), so all the
            statistics are exact on the scores, on the scale :attr:`score_scale`. ``None``
            (default) or :class:`~tcm.scoring.Cosine`: the cosines themselves.

    Raises:
        ValueError: NaN/inf or all-zero rows, shape / length mismatch, bad ``block_size``, a
            scorer that is unfitted, fitted on another dimension, or needs per-sample groups.

    Example:
        >>> idx = PairIndex([[1.0, 0.0], [2.0, 0.1], [0.0, 3.0]], ["b", "b", "a"])
        >>> idx.classes.tolist(), idx.class_sizes.tolist(), idx.num_negative_pairs
        (['a', 'b'], [1, 2], 2)
    """

    def __init__(
        self,
        embeddings: ArrayLike,
        labels: ArrayLike,
        groups: ArrayLike | None = None,
        *,
        block_size: int | None = None,
        scorer: Scorer | None = None,
    ) -> None:
        self._prep: Prepared = prepare(embeddings, labels)
        self.block_size: int = check_block_size(block_size, self._prep)
        if scorer is not None and scorer.kind == "cosine":
            scorer.check_compatible(int(self._prep.x.shape[1]))
            scorer = None  # the identity: the cosine fast path, bit for bit
        self._prep = self._prep.with_scorer(scorer)
        self.group_names: np.ndarray | None = None
        self.group_codes: np.ndarray | None = None
        if groups is not None:
            codes, names = encode_labels(check_group_labels(groups), n=self._prep.n, name="groups")
            self.group_names = names
            self.group_codes = codes[self._prep.order]

    @property
    def prepared(self) -> Prepared:
        """The normalised, class-sorted rows and their class layout (read-only use)."""
        return self._prep

    @property
    def num_samples(self) -> int:
        """``N``."""
        return self._prep.n

    @property
    def score_scale(self) -> str:
        """The scale of the pair values: ``"cosine"``, or the scorer's ``score_scale``."""
        return "cosine" if self._prep.scorer is None else self._prep.scorer.score_scale

    @property
    def classes(self) -> np.ndarray:
        """``(C,)`` sorted distinct labels."""
        return self._prep.classes

    @property
    def class_sizes(self) -> np.ndarray:
        """``(C,)`` int64 ``n_c``."""
        return self._prep.counts

    @property
    def num_positive_pairs(self) -> int:
        """``P = sum_c n_c (n_c - 1) / 2``."""
        return self._prep.num_positive_pairs

    @property
    def num_negative_pairs(self) -> int:
        """``M = N (N - 1) / 2 - P``."""
        return self._prep.num_negative_pairs


# ----------------------------------------------------------------------------- statistics


def _same_optional(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))


@dataclass(frozen=True)
class Grid:
    """A threshold grid of :class:`PairStats`: ``K`` equally spaced similarities from
    ``t(f_hi)`` to ``t(f_lo)`` inclusive, ``t(f)`` the negative-pair quantile at ``1 - f``.

    Attributes:
        far_range: ``(f_lo, f_hi)`` global-FAR range.
        thresholds: ``(K,)`` float64 increasing similarities.
        columns: ``(K,)`` int64 positions of the thresholds in :attr:`PairStats.thresholds`.
    """

    far_range: tuple[float, float]
    thresholds: np.ndarray
    columns: np.ndarray


@dataclass(frozen=True)
class PairStats:
    """Exact count tables of one set of pairs (``C`` classes, ``K`` counted thresholds).

    ``bucket(s) = #{k : thresholds[k] <= s}``; ``pos[c, b]`` / ``neg[c, b]`` count the positive /
    negative pairs of class ``c`` with bucket ``b`` (a negative pair once for each of its two
    classes). A pair is accepted at ``thresholds[k]`` iff its bucket is ``> k``. Pairs below the
    smallest threshold are not bucketed (bucket 0 stays empty), totals come from the class sizes.

    Attributes:
        classes: ``(C,)`` sorted labels; ``class_sizes``: ``(C,)`` int64 ``n_c``.
        num_samples: ``N``.
        thresholds: ``(K,)`` float64 sorted union of all grids, FAR thresholds and given
            thresholds (values may repeat).
        pos, neg: ``(C, K + 1)`` int64 bucket tables.
        grids: named :class:`Grid` s (``"opis"`` for the OPIS calibration range).
        far_thresholds: ``{far: t}`` exact global-FAR thresholds ``quantile(neg, 1 - far)``.
        hist_edges, hist_pos, hist_neg: similarity histogram of all pairs (``(B + 1,)`` edges,
            ``(B,)`` int64 counts; ``np.histogram`` bins after clipping to the edges) or None.
        group_names: ``(G,)`` sorted group ids when the index had groups, else None.
        class_group_sizes: ``(C, G)`` int64 ``n_{c,g}`` samples of class ``c`` in group ``g``.
        groups: the per-(class, group) tables (:class:`~tcm.metrics._passes.GroupState`):
            within-group tables on all thresholds, cross-group tables on ``cross_thresholds``.
        cross_thresholds: ``(P,)`` sorted thresholds of the cross-group tables (the FAR
            thresholds and the given thresholds).
        score_scale: the scale of the pair values, thresholds and histogram edges
            (``"cosine"``, or the scorer's, see :class:`PairIndex`).
    """

    classes: np.ndarray
    class_sizes: np.ndarray
    num_samples: int
    thresholds: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    grids: dict[str, Grid] = field(default_factory=dict)
    far_thresholds: dict[float, float] = field(default_factory=dict)
    hist_edges: np.ndarray | None = None
    hist_pos: np.ndarray | None = None
    hist_neg: np.ndarray | None = None
    group_names: np.ndarray | None = None
    class_group_sizes: np.ndarray | None = None
    groups: GroupState | None = None
    cross_thresholds: np.ndarray | None = None
    score_scale: str = "cosine"

    # ------------------------------------------------------------------ merging

    def __add__(self, other: PairStats) -> PairStats:
        """Counts of two disjoint sets of pair blocks of the same index and thresholds."""
        if not isinstance(other, PairStats):
            return NotImplemented
        same = (
            self.num_samples == other.num_samples
            and np.array_equal(self.classes, other.classes)
            and np.array_equal(self.class_sizes, other.class_sizes)
            and np.array_equal(self.thresholds, other.thresholds)
            and _same_optional(self.hist_edges, other.hist_edges)
            and _same_optional(self.group_names, other.group_names)
            and _same_optional(self.cross_thresholds, other.cross_thresholds)
            and self.score_scale == other.score_scale
        )
        if not same:
            raise ValueError(
                "cannot add PairStats of different indexes, thresholds, histogram edges or "
                "score scales"
            )
        return PairStats(
            classes=self.classes,
            class_sizes=self.class_sizes,
            num_samples=self.num_samples,
            thresholds=self.thresholds,
            pos=self.pos + other.pos,
            neg=self.neg + other.neg,
            grids=dict(self.grids),
            far_thresholds=dict(self.far_thresholds),
            hist_edges=self.hist_edges,
            hist_pos=None if self.hist_pos is None else self.hist_pos + other.hist_pos,
            hist_neg=None if self.hist_neg is None else self.hist_neg + other.hist_neg,
            group_names=self.group_names,
            class_group_sizes=self.class_group_sizes,
            groups=(
                None
                if self.groups is None or other.groups is None
                else self.groups.merge(other.groups)
            ),
            cross_thresholds=self.cross_thresholds,
            score_scale=self.score_scale,
        )

    # ------------------------------------------------------------------ totals

    @property
    def num_positive_pairs(self) -> int:
        """``P = sum_c n_c (n_c - 1) / 2``."""
        c = self.class_sizes
        return int((c * (c - 1) // 2).sum())

    @property
    def num_negative_pairs(self) -> int:
        """``M = N (N - 1) / 2 - P``."""
        return self.num_samples * (self.num_samples - 1) // 2 - self.num_positive_pairs

    @property
    def included(self) -> np.ndarray:
        """``(C,)`` bool: classes with ``n_c >= 2`` (they have positive pairs)."""
        return np.asarray(self.class_sizes >= 2)

    def accepted(self) -> tuple[np.ndarray, np.ndarray]:
        """``(C, K)`` int64 accepted positives and negatives per class at each threshold."""
        return CountState.accepted(self.pos), CountState.accepted(self.neg)

    def columns_of(self, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
        """Positions of the given thresholds in :attr:`thresholds` (ValueError if one was not
        counted: pass it to :func:`pair_statistics` as ``thresholds=``)."""
        t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        cols = np.searchsorted(self.thresholds, t, side="left")
        inside = cols < self.thresholds.shape[0]
        ok = np.zeros(t.shape, dtype=bool)
        ok[inside] = self.thresholds[cols[inside]] == t[inside]
        if not bool(np.all(ok)):
            bad = float(t[np.flatnonzero(~ok)[0]])
            raise ValueError(
                f"threshold {bad!r} was not counted; pass it to pair_statistics(thresholds=...)"
            )
        return cols.astype(np.int64)

    def rates(self, columns: np.ndarray) -> dict[str, np.ndarray]:
        """All-class rates at the given threshold columns.

        Returns a dict of ``tar``, ``far``: ``(C, len(columns))`` per-class rates (NaN-free:
        classes without positives get TAR 0 and are excluded by the callers), and
        ``global_tar`` / ``global_far``: ``(len(columns),)`` pooled rates.
        """
        pos_acc, neg_acc = self.accepted()
        pa = pos_acc[:, columns]
        na = neg_acc[:, columns]
        nc = self.class_sizes.astype(np.float64)
        npos = nc * (nc - 1) / 2
        nneg = nc * (self.num_samples - nc)
        tar = pa / np.where(npos > 0, npos, 1.0)[:, None]
        far = na / np.where(nneg > 0, nneg, 1.0)[:, None]
        p, m = self.num_positive_pairs, self.num_negative_pairs
        gtar = pa.sum(axis=0) / p if p > 0 else np.zeros(pa.shape[1])
        gfar = (na.sum(axis=0) // 2) / m if m > 0 else np.zeros(na.shape[1])
        return {
            "tar": tar,
            "far": far,
            "global_tar": np.asarray(gtar, dtype=np.float64),
            "global_far": np.asarray(gfar, dtype=np.float64),
        }

    # ------------------------------------------------------------------ views

    def threshold_at_far(self, far: float) -> float:
        """The exact threshold for global FAR ``far`` (must have been requested in ``fars``)."""
        f = check_fraction(far, "far")
        for key, t in self.far_thresholds.items():
            if key == f:
                return float(t)
        have = sorted(self.far_thresholds)
        raise ValueError(f"FAR {far!r} was not requested; pair_statistics(fars=...) had {have}")

    def operating_point(
        self, threshold: float, *, ci: float | None = None, n_boot: int = 1000, seed: int = 0
    ) -> OperatingPoint:
        """Per-class TAR / FAR / FRR / TRR and global TAR / FAR at a counted threshold; with
        ``ci`` also the class-bootstrap intervals of the global rates (resampled per-class
        accepted-pair counts over resampled pair counts, :func:`~tcm.metrics.bootstrap.
        bootstrap_ratio`; no pass over the pairs)."""
        t = check_finite(threshold, "threshold")
        check_bootstrap_args(ci, n_boot)
        included = check_pairs(self.classes, self.class_sizes, self.num_samples)
        col = self.columns_of([t])
        r = self.rates(col)
        tar = r["tar"][included, 0]
        far = r["far"][included, 0]
        intervals: dict[str, Interval] = {}
        if ci is not None:
            # all classes: a class with one sample has no positives but its negatives count, so
            # the ratio on the original data is exactly the global rate
            pos_acc, neg_acc = self.accepted()
            n_c = self.class_sizes.astype(np.float64)
            pos_den, neg_den = n_c * (n_c - 1) / 2, n_c * (self.num_samples - n_c)
            for key, acc, den in (
                ("global_tar", pos_acc, pos_den),
                ("global_far", neg_acc, neg_den),
            ):
                intervals[key] = bootstrap_ratio(
                    acc[:, col[0]], den, ci=ci, n_boot=n_boot, seed=seed
                )
        return OperatingPoint(
            threshold=t,
            classes=self.classes[included],
            class_sizes=self.class_sizes[included],
            tar=tar,
            far=far,
            frr=1.0 - tar,
            trr=1.0 - far,
            global_tar=float(r["global_tar"][0]),
            global_far=float(r["global_far"][0]),
            excluded_classes=self.classes[~included],
            intervals=intervals,
            score_scale=self.score_scale,
        )

    def consistency(
        self,
        epsilons: Sequence[float] = (0.05, 0.10),
        grid: str = "opis",
        *,
        ci: float | None = None,
        n_boot: int = 1000,
        seed: int = 0,
    ) -> ThresholdConsistency:
        """Per-class utility curves, OPIS and eps-OPIS on the named grid; with ``ci`` also their
        class-bootstrap intervals (resampled rows of the utility table; no pass)."""
        eps_list = [check_epsilon(e) for e in epsilons]
        check_bootstrap_args(ci, n_boot)
        if grid not in self.grids:
            raise ValueError(f"no threshold grid {grid!r} was counted (have {sorted(self.grids)})")
        g = self.grids[grid]
        included = check_pairs(self.classes, self.class_sizes, self.num_samples)
        r = self.rates(g.columns)
        tar = r["tar"][included]
        trr = 1.0 - r["far"][included]
        u = utility(tar, trr)
        intervals: dict[str, Interval] = {}
        if ci is not None:
            intervals["opis"] = bootstrap_opis(u, ci=ci, n_boot=n_boot, seed=seed)
            for e in eps_list:
                intervals[f"epsilon_opis_{e:g}"] = bootstrap_epsilon_opis(
                    u, e, ci=ci, n_boot=n_boot, seed=seed
                )
        return ThresholdConsistency(
            opis=opis_from_utility(u),
            epsilon_opis={e: epsilon_opis_from_utility(u, e) for e in eps_list},
            thresholds=g.thresholds,
            far_range=g.far_range,
            classes=self.classes[included],
            class_sizes=self.class_sizes[included],
            tar=tar,
            trr=trr,
            utility=u,
            excluded_classes=self.classes[~included],
            global_tar=r["global_tar"],
            global_far=r["global_far"],
            num_positive_pairs=self.num_positive_pairs,
            num_negative_pairs=self.num_negative_pairs,
            intervals=intervals,
            score_scale=self.score_scale,
        )

    def histogram(self) -> SimilarityHistogram:
        """The similarity histogram (requested with ``bins=`` in :func:`pair_statistics`)."""
        if self.hist_edges is None or self.hist_pos is None or self.hist_neg is None:
            raise ValueError("no histogram was counted; pass bins=B to pair_statistics")
        return SimilarityHistogram(
            edges=self.hist_edges,
            pos=self.hist_pos,
            neg=self.hist_neg,
            score_scale=self.score_scale,
        )


# ----------------------------------------------------------------------------- the passes


def _check_shard_comm(shard: tuple[int, int], comm: Communicator | None) -> tuple[int, int]:
    s = check_shard(shard)
    if comm is not None and (comm.rank, comm.world) != s:
        raise ValueError(
            f"shard {s} does not match the communicator's (rank, world) = {(comm.rank, comm.world)}"
        )
    return s


def _tail_merger(comm: Communicator | None) -> Any:
    if comm is None:
        return None

    def merge(st: TailState) -> TailState:
        above = comm.sum(np.asarray(st.num_above, dtype=np.int64))
        values = [comm.concat(v) for v in st.values]
        return TailState(lo=st.lo, hi=st.hi, num_above=above, values=values)

    return merge


def pair_statistics(
    index: PairIndex,
    *,
    fars: Sequence[float] = (),
    far_range: tuple[float, float] | None = (1e-2, 1e-1),
    num_thresholds: int = 101,
    thresholds: Sequence[float] | np.ndarray = (),
    grids: Mapping[str, tuple[float, float, int]] | None = None,
    bins: int = 0,
    shard: tuple[int, int] = (0, 1),
    comm: Communicator | None = None,
    exact_cutoff: int = DEFAULT_EXACT_CUTOFF,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    progress: Progress = False,
    backend: PassBackend = "auto",
) -> PairStats:
    """Count tables of all pairs of ``index`` in at most two passes (module docstring).

    Args:
        index: the prepared embeddings.
        fars: global FAR targets whose exact thresholds are found and counted.
        far_range: ``(f_lo, f_hi)`` of the ``"opis"`` grid (``None``: no OPIS grid).
        num_thresholds: ``K`` of the ``"opis"`` grid, in ``[2, 100_000]``.
        thresholds: fixed similarity thresholds to count as well (e.g. a deployment threshold).
        grids: more named grids ``{name: (f_lo, f_hi, K)}`` (e.g. a calibration search range).
        bins: ``B > 0`` also histograms all pairs over ``linspace(-1, 1, B + 1)`` (touches every
            pair of each block, so it costs more than the tail-only counting). With a scorer the
            edges span ``[0, 1]`` on the probability scale, else (z-scores, shifted cosines)
            the exact range of all pair scores, found by one more pass (sharded: merged
            through ``comm``, which is then required).
        shard: ``(rank, world)``: count only the pair blocks of this shard.
        comm: how shards exchange states (required when ``world > 1`` and quantiles are
            needed, i.e. ``fars`` or a grid; see :mod:`tcm.metrics.distributed`). With it the
            returned statistics are the merged, global ones on every shard. Without it (and no
            quantiles) the result holds this shard's counts: add the shards' results with ``+``.
        exact_cutoff, sample_size, seed: the quantile search (results never depend on them).
        progress: ``True``: a progress bar (tqdm, stderr) per pass; or a factory
            ``(description, total) -> bar`` (see :mod:`tcm.metrics._progress`); ``False``:
            none (unless an enclosing call asked for it).
        backend: the passes' per-block code: ``"auto"`` (NumPy on CPU, torch elsewhere),
            ``"numpy"`` (CPU only) or ``"torch"`` (any device); results are identical.

    Raises:
        ValueError: a bad argument (naming it), no negative pairs when quantiles are needed,
            a grid or histogram over the size limits, count tables too large for memory, or a
            sharded quantile request without a communicator, an unknown ``backend``.
    """
    req = _Request.checked(
        fars, far_range, num_thresholds, thresholds, grids, bins, shard, comm, exact_cutoff,
        sample_size,
    )  # fmt: skip
    numpy_path(index.prepared, backend)  # an unknown backend fails before any pass
    with reporting(progress):
        qval = _quantile_pass(index, req, comm, seed, backend)
        return _count_sweep(index, req, qval, comm, backend)


@dataclass(frozen=True)
class _Request:
    """The checked arguments of :func:`pair_statistics`."""

    fars: list[float]
    grids: dict[str, tuple[float, float, int]]  # {name: (f_lo, f_hi, K)}, "opis" first
    fixed: np.ndarray  # the given thresholds, float64
    bins: int
    shard: tuple[int, int]
    exact_cutoff: int
    sample_size: int

    @staticmethod
    def checked(
        fars: Sequence[float],
        far_range: tuple[float, float] | None,
        num_thresholds: int,
        thresholds: Sequence[float] | np.ndarray,
        grids: Mapping[str, tuple[float, float, int]] | None,
        bins: int,
        shard: tuple[int, int],
        comm: Communicator | None,
        exact_cutoff: int,
        sample_size: int,
    ) -> _Request:
        """Validate in the order of the signature; ValueError naming the first bad one."""
        fars_l = [check_fraction(f, "fars entry") for f in fars]
        all_grids: dict[str, tuple[float, float, int]] = {}
        if far_range is not None:
            lo, hi = check_far_range(far_range)
            all_grids["opis"] = (lo, hi, check_num_thresholds(num_thresholds))
        for name, spec in dict(grids or {}).items():
            try:
                g_lo, g_hi, g_k = spec
            except (TypeError, ValueError) as exc:
                raise ValueError(f"grid {name!r} must be (f_lo, f_hi, K); got {spec!r}") from exc
            lo2, hi2 = check_far_range((g_lo, g_hi))
            all_grids[str(name)] = (lo2, hi2, check_num_thresholds(g_k, f"grid {name!r} size"))
        fixed = np.asarray([check_finite(t, "thresholds entry") for t in thresholds], np.float64)
        check_size(len(fixed), "number of thresholds", 0)
        nbins = check_size(check_int(bins, "bins", 0), "bins", 0)
        shard_t = _check_shard_comm(shard, comm)
        return _Request(
            fars=fars_l,
            grids=all_grids,
            fixed=fixed,
            bins=nbins,
            shard=shard_t,
            exact_cutoff=check_int(exact_cutoff, "exact_cutoff", 0),
            sample_size=check_int(sample_size, "sample_size", 1),
        )


def _quantile_pass(
    index: PairIndex,
    req: _Request,
    comm: Communicator | None,
    seed: int,
    backend: PassBackend,
) -> dict[float, float]:
    """Pass 1: ``{q: quantile(neg, q)}`` for every quantile the FARs and grids need (exact;
    no pass when none is needed)."""
    qs: list[float] = sorted(
        {1.0 - f for f in req.fars}
        | {1.0 - f for lo_, hi_, _ in req.grids.values() for f in (lo_, hi_)}
    )
    if not qs:
        return {}
    prep = index.prepared
    check_negatives(prep.classes, prep.n)
    if req.shard[1] > 1 and comm is None:
        raise ValueError(
            "a sharded pair_statistics needs comm= to find the exact quantiles of all "
            "shards (or pass only fixed thresholds= and add the shards' results)"
        )
    vals = negative_quantiles(
        prep,
        qs,
        index.block_size,
        exact_cutoff=req.exact_cutoff,
        sample_size=req.sample_size,
        seed=seed,
        shard=req.shard,
        merge=_tail_merger(comm),
        backend=backend,
    )
    return {q: float(v) for q, v in zip(qs, vals, strict=True)}


def _count_sweep(
    index: PairIndex,
    req: _Request,
    qval: dict[float, float],
    comm: Communicator | None,
    backend: PassBackend,
) -> PairStats:
    """Pass 2: bucket every pair against the union of the grids (placed at the quantiles
    ``qval``), the FAR thresholds and the given thresholds, and assemble the statistics."""
    prep = index.prepared
    far_thresholds = {f: qval[1.0 - f] for f in req.fars}
    grid_th = {
        name: np.linspace(qval[1.0 - hi_], qval[1.0 - lo_], k)
        for name, (lo_, hi_, k) in req.grids.items()
    }
    extras = np.sort(np.concatenate([np.asarray(list(far_thresholds.values())), req.fixed]))
    components = [*grid_th.values(), extras]
    k_total = sum(int(c.shape[0]) for c in components)
    check_size(k_total, "total number of counted thresholds", 0)
    ng = 0 if index.group_names is None else int(index.group_names.shape[0])
    check_table_memory(prep.num_classes, k_total, num_workers(prep), ng, int(extras.shape[0]))
    edges = _hist_edges(index, req, comm) if req.bins else None
    gspec = None if index.group_codes is None else GroupSpec(index.group_codes, ng, extras)
    counted = sweep(
        prep, components, index.block_size, req.shard, edges=edges, groups=gspec, backend=backend
    )
    if comm is not None and req.shard[1] > 1:
        counted = _sum_over_shards(counted, comm)
    union = np.sort(np.concatenate(components)) if components else np.empty(0)
    grid_objs = {}
    for name, th in grid_th.items():
        cols = np.searchsorted(union, th, side="left").astype(np.int64)
        f_lo, f_hi, _ = req.grids[name]
        grid_objs[name] = Grid(far_range=(f_lo, f_hi), thresholds=th, columns=cols)
    hist = counted.hist
    return PairStats(
        classes=prep.classes,
        class_sizes=prep.counts,
        num_samples=prep.n,
        thresholds=union,
        pos=counted.counts.pos,
        neg=counted.counts.neg,
        grids=grid_objs,
        far_thresholds=far_thresholds,
        hist_edges=edges,
        hist_pos=None if hist is None else hist.pos,
        hist_neg=None if hist is None else hist.neg,
        group_names=index.group_names,
        class_group_sizes=_class_group_sizes(index, ng),
        groups=counted.groups,
        cross_thresholds=extras if counted.groups is not None else None,
        score_scale=index.score_scale,
    )


def _hist_edges(index: PairIndex, req: _Request, comm: Communicator | None) -> np.ndarray:
    """``B + 1`` histogram edges on the index's score scale: ``[-1, 1]`` for cosines, ``[0, 1]``
    for probabilities, else the exact range of all pair scores (one pass; merged via ``comm``)."""
    scale = index.score_scale
    if scale == "cosine":
        return np.linspace(-1.0, 1.0, req.bins + 1)
    if scale == "probability":
        return np.linspace(0.0, 1.0, req.bins + 1)
    if req.shard[1] > 1 and comm is None:
        raise ValueError(
            f"a sharded histogram of {scale} scores needs comm= (its edges span the range of "
            "all shards' scores)"
        )
    lo, hi = score_range(index.prepared, index.block_size, req.shard)
    if comm is not None and req.shard[1] > 1:
        ends = comm.concat(np.asarray([lo, -hi], dtype=np.float64)).reshape(-1, 2).min(axis=0)
        lo, hi = float(ends[0]), -float(ends[1])
    if not lo < hi:  # one value (or no pair): a unit-wide range around it
        mid = 0.0 if not math.isfinite(lo) else lo
        lo, hi = mid - 0.5, mid + 0.5
    return np.linspace(lo, hi, req.bins + 1)


def _sum_over_shards(counted: Sweep, comm: Communicator) -> Sweep:
    """The shards' tables summed (every shard gets the totals)."""
    counts = CountState(pos=comm.sum(counted.counts.pos), neg=comm.sum(counted.counts.neg))
    hist = counted.hist
    if hist is not None:
        hist = HistState(edges=hist.edges, pos=comm.sum(hist.pos), neg=comm.sum(hist.neg))
    groups = counted.groups
    if groups is not None:
        groups = GroupState(
            gpos=comm.sum(groups.gpos),
            gneg=comm.sum(groups.gneg),
            xpos=comm.sum(groups.xpos),
            xneg=comm.sum(groups.xneg),
        )
    return Sweep(counts, hist, groups)


def _class_group_sizes(index: PairIndex, num_groups: int) -> np.ndarray | None:
    """``(C, G)`` int64 samples per (class, group), or None without groups."""
    if index.group_codes is None:
        return None
    prep = index.prepared
    cgs = np.zeros((prep.num_classes, num_groups), dtype=np.int64)
    np.add.at(cgs, (prep.codes, index.group_codes), 1)
    return cgs
