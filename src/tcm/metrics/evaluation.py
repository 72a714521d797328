"""One evaluation of an embedding set, computed once: retrieval, threshold consistency, TAR@FAR,
calibration, an operating point and a similarity histogram from one kNN pass and two pair passes.

Conventions: rows are L2-normalised, neighbours and pairs are compared by cosine **similarity**,
a pair is accepted when ``s >= t``; retrieval is leave-one-out on the given set.

The flat metric vocabulary of :meth:`Evaluation.metrics` is the one used everywhere in tcm
(training logs and ``train.select_metric``, ``tcm evaluate --json``, ``tcm calibrate``,
``tcm report``). Every key (``recall_at_{k}``, ``map_at_r``, ``opis``, ``epsilon_opis_{eps}``,
``tar_at_far_{far}``, ``calibration_*``, ``group_*``, ...) is an entry of the one metric table
:data:`tcm.metrics.vocabulary.METRICS`, with its display name (:func:`metric_label`), format,
direction and bounds.

With ``ci=`` each pair figure that has an interval appears in
:attr:`Evaluation.intervals` under the same key.

Sections (``include=`` / ``exclude=``): ``"retrieval"``, ``"consistency"``, ``"tar_at_far"``,
``"calibration"``, ``"operating_point"`` (needs ``threshold=``), ``"histogram"`` (needs
``bins > 0``), ``"groups"`` (needs ``groups=``). A section that is not selected costs
nothing; without ``"retrieval"`` there is no kNN pass, without any pair section no pair pass.

Under ``torch.distributed`` (``distributed=None`` detects it) each rank evaluates its share of
the retrieval queries and of the pair blocks; the exact states are exchanged and every rank
returns the same :class:`Evaluation` as one process would.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(10), 6)
    >>> x = rng.normal(size=(60, 16)) + 2.0 * rng.normal(size=(10, 16))[y]
    >>> ev = evaluate(x, y, ks=(1, 2), tar_fars=(1e-2,), calibration_far=1e-2)
    >>> m = ev.metrics()
    >>> sorted(k for k in m if k.startswith(("recall", "tar", "opis")))
    ['opis', 'recall_at_1', 'recall_at_2', 'tar_at_far_1e-02']
    >>> m["calibration_threshold"] == m["threshold_at_far_1e-02"]
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tcm._validation import ArrayLike
from tcm.metrics._checks import (
    check_epsilon,
    check_far_range,
    check_finite,
    check_fraction,
    check_int,
    check_num_thresholds,
)
from tcm.metrics._progress import Progress, reporting
from tcm.metrics.bootstrap import (
    Interval,
    check_bootstrap_args,
    check_bootstrap_memory,
)
from tcm.metrics.calibration import SEARCH_GRID, Calibration, calibrate
from tcm.metrics.distributed import Communicator, default_communicator
from tcm.metrics.groups import SUMMARY_KEYS as GROUP_SUMMARY_KEYS
from tcm.metrics.groups import (
    GroupConsistency,
    GroupOperatingPoint,
    check_group_consistency_input,
    group_bootstrap_cells,
    group_consistency_view,
    group_operating_point_view,
)
from tcm.metrics.results import (
    OperatingPoint,
    SimilarityHistogram,
    ThresholdConsistency,
    scale_entry,
)
from tcm.metrics.retrieval import (
    Backend,
    RetrievalMetrics,
    leave_one_out_input,
    retrieval_metrics_of,
)
from tcm.metrics.statistics import DEFAULT_SAMPLE_SIZE, PairIndex, PairStats, pair_statistics
from tcm.metrics.vocabulary import eps_key, far_key, metric_label

if TYPE_CHECKING:
    from tcm.scoring.base import Scorer

__all__ = [
    "DEFAULT_TAR_FARS",
    "SECTIONS",
    "Evaluation",
    "evaluate",
    "far_key",
    "metric_label",
]

DEFAULT_TAR_FARS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
SECTIONS: tuple[str, ...] = (
    "retrieval",
    "consistency",
    "tar_at_far",
    "calibration",
    "operating_point",
    "histogram",
    "groups",
)


@dataclass(frozen=True)
class Evaluation:
    """Everything one evaluation computed (absent sections are ``None`` / empty).

    Attributes:
        num_samples, num_classes: ``N`` and the number of distinct labels.
        retrieval: Recall@k, MAP@R, R-precision (leave-one-out).
        consistency: OPIS, eps-OPIS and the per-class utility table on the calibration grid.
        tar_at_far: ``{far: global TAR}``; ``threshold_at_far``: ``{far: threshold}``.
        calibration: the calibrated threshold and per-class rates at it.
        operating_point: per-class rates at the given ``threshold``.
        histogram: positive / negative similarity histogram.
        stats: the count tables all pair figures were read from (for further views).
        groups: per-group rates, cross-group matrices and summaries (with ``groups=``).
        group_consistency: group OPIS / eps-OPIS (with ``groups=``).
        intervals: ``{metric key: Interval}`` class-bootstrap intervals (with ``ci=``).
        options: the arguments that produced it (JSON-serialisable).
    """

    num_samples: int
    num_classes: int
    retrieval: RetrievalMetrics | None = None
    consistency: ThresholdConsistency | None = None
    tar_at_far: dict[float, float] = field(default_factory=dict)
    threshold_at_far: dict[float, float] = field(default_factory=dict)
    calibration: Calibration | None = None
    operating_point: OperatingPoint | None = None
    histogram: SimilarityHistogram | None = None
    stats: PairStats | None = None
    groups: GroupOperatingPoint | None = None
    group_consistency: GroupConsistency | None = None
    intervals: dict[str, Interval] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat ``{key: float}`` in the module's vocabulary, in a stable order."""
        out: dict[str, float] = {}
        if self.retrieval is not None:
            for k, v in self.retrieval.recall_at_k.items():
                out[f"recall_at_{k}"] = float(v)
            out["map_at_r"] = float(self.retrieval.map_at_r)
            out["r_precision"] = float(self.retrieval.r_precision)
        if self.consistency is not None:
            out["opis"] = float(self.consistency.opis)
            for eps, val in self.consistency.epsilon_opis.items():
                out[f"epsilon_opis_{eps_key(eps)}"] = float(val)
        for far, tar in self.tar_at_far.items():
            out[f"tar_at_far_{far_key(far)}"] = float(tar)
        for far, t in self.threshold_at_far.items():
            out[f"threshold_at_far_{far_key(far)}"] = float(t)
        if self.calibration is not None:
            c = self.calibration
            out["calibration_threshold"] = c.threshold
            out["calibration_global_far"] = float(c.operating_point.global_far)
            out["calibration_global_tar"] = float(c.operating_point.global_tar)
            out["calibration_mean_utility"] = c.mean_utility
            out["calibration_far_max"] = c.far_spread["max"]
            out["calibration_classes_far_above_2x"] = float(c.classes_far_above_2x)
        if self.operating_point is not None:
            op = self.operating_point
            out["threshold"] = float(op.threshold)
            out["global_far"] = float(op.global_far)
            out["global_tar"] = float(op.global_tar)
        if self.group_consistency is not None:
            out["group_opis"] = float(self.group_consistency.opis)
        if self.groups is not None:
            for key in GROUP_SUMMARY_KEYS:
                out[f"group_{key}"] = float(self.groups.summary[key])
        return out

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-serialisable: ``metrics`` (the flat vocabulary) plus the details of each section
        (``calibration`` with per-class rates, ``operating_point``, ``per_class_retrieval``)."""
        out: dict[str, Any] = {
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "metrics": self.metrics(),
            "options": dict(self.options),
        }
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict(class_names)
        if self.operating_point is not None:
            out["operating_point"] = self.operating_point.to_dict()
        if self.retrieval is not None:
            out["per_class_retrieval"] = self.retrieval.per_class.to_dict()
        if self.groups is not None:
            out["groups"] = self.groups.to_dict()
        if self.group_consistency is not None:
            out["group_consistency"] = self.group_consistency.to_dict()
        if self.intervals:
            out["intervals"] = {k: v.to_dict() for k, v in self.intervals.items()}
        return out


def _sections(include: Sequence[str] | None, exclude: Sequence[str]) -> set[str]:
    for name in [*(include or ()), *exclude]:
        if name not in SECTIONS:
            raise ValueError(f"unknown evaluation section {name!r}; choose from {SECTIONS}")
    chosen = set(SECTIONS if include is None else include)
    return chosen - set(exclude)


def _intervals(
    stats: PairStats,
    consistency: ThresholdConsistency | None,
    th_at_far: dict[float, float],
    calibration: Calibration | None,
    ci: float,
    n_boot: int,
    seed: int,
) -> dict[str, Interval]:
    """Class-bootstrap intervals of the pair figures under the metric keys (views of
    ``stats``: no pass over the pairs)."""
    out: dict[str, Interval] = dict(consistency.intervals) if consistency is not None else {}
    for far, t in th_at_far.items():
        op = stats.operating_point(t, ci=ci, n_boot=n_boot, seed=seed)
        out[f"tar_at_far_{far_key(far)}"] = op.intervals["global_tar"]
    if calibration is not None:
        op = stats.operating_point(calibration.threshold, ci=ci, n_boot=n_boot, seed=seed)
        out["calibration_global_far"] = op.intervals["global_far"]
        out["calibration_global_tar"] = op.intervals["global_tar"]
    return out


def evaluate(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    far_range: tuple[float, float] = (1e-2, 1e-1),
    num_thresholds: int = 101,
    epsilons: Sequence[float] = (0.05, 0.10),
    tar_fars: Sequence[float] = DEFAULT_TAR_FARS,
    calibration_far: float | None = 1e-3,
    max_utility: bool = False,
    search_range: tuple[float, float] = (1e-4, 0.5),
    search_thresholds: int = 201,
    threshold: float | None = None,
    bins: int = 0,
    groups: ArrayLike | None = None,
    ci: float | None = None,
    n_boot: int = 1000,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    distributed: bool | None = None,
    backend: Backend = "auto",
    block_size: int | None = None,
    scorer: Scorer | None = None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    progress: Progress = False,
) -> Evaluation:
    """Evaluate ``(N, D)`` embeddings with ``(N,)`` labels (module docstring for the keys).

    Args:
        ks: the ``k`` of Recall@k.
        far_range, num_thresholds, epsilons: OPIS / eps-OPIS calibration range, grid size and
            the eps values (see :func:`tcm.metrics.threshold_consistency`).
        tar_fars: global FARs for ``tar_at_far_*`` / ``threshold_at_far_*``.
        calibration_far: calibrate the threshold of this global FAR (``None``: no calibration
            unless ``max_utility``).
        max_utility: calibrate by maximising the mean per-class utility over a grid of
            ``search_thresholds`` thresholds spanning the global FARs ``search_range``.
        threshold: also report per-class rates at this cosine-similarity threshold.
        bins: ``B > 0`` adds the exact similarity histogram of all pairs.
        groups: ``(N,)`` group id per sample (a data distribution or sub-population): adds
            the per-group rates, cross-group matrices and summaries at the calibrated (else
            the given) threshold and group OPIS (sections ``"groups"``; see
            :mod:`tcm.metrics.groups`). Counted in the same sweep.
        ci, n_boot: with ``ci`` in ``(0, 1)``, class-bootstrap intervals (``n_boot``
            resamples, seeded by ``seed``) of OPIS, eps-OPIS, TAR@FAR, the calibrated global FAR
            and the group figures, from the count tables (no further pass).
        include, exclude: sections to compute (default all that the options allow).
        distributed: ``None`` = use ``torch.distributed`` when a group with more than one rank
            is initialised; ``False`` = never; ``True`` = require it.
        backend: retrieval kNN backend (``"auto"``, ``"torch"``, ``"faiss"``).
        block_size: rows per similarity block of the pair passes.
        scorer: a fitted :class:`~tcm.scoring.Scorer`: every pair figure (and the retrieval
            ranking) is computed exactly on its scores, in the same passes; thresholds and
            histogram edges are then on its ``score_scale``, recorded in ``options``
            (docs/scoring.md, "Scores in the engine"). ``None`` / ``Cosine``: cosines.
        sample_size: negatives sampled to bracket the exact quantiles (larger = fewer values
            collected and exchanged at very large ``N``, see docs/scaling.md; results do not
            depend on it).
        seed: seed of the sampled quantile bracket (results do not depend on it).
        progress: ``True``: progress bars (tqdm, stderr) of the kNN pass and the pair passes,
            updated per block; or a factory ``(description, total) -> bar`` with ``update(n)``
            and ``close()``; ``False`` (default): no output. Results do not depend on it.

    Raises:
        ValueError: bad embeddings / labels / options (naming the value), unknown section,
            ``distributed=True`` without a process group.

    Results equal the separate functions (``retrieval_metrics``, ``threshold_consistency``,
    ``threshold_at_far`` + ``operating_point``, ``similarity_histogram``) exactly.
    """
    plan = _Plan.checked(
        include, exclude, far_range, num_thresholds, epsilons, tar_fars, calibration_far,
        max_utility, search_range, search_thresholds, threshold, bins, groups is not None,
    )  # fmt: skip
    check_bootstrap_args(ci, n_boot)
    comm = _communicator(distributed)
    with_groups = groups if "groups" in plan.sections else None
    index = PairIndex(embeddings, labels, with_groups, block_size=block_size, scorer=scorer)
    if "groups" in plan.sections:
        check_group_consistency_input(index)  # before any pass over the pairs
    if ci is not None:
        k = plan.num_thresholds
        ng = 0 if index.group_names is None else int(index.group_names.shape[0])
        check_bootstrap_memory(index.classes.shape[0], n_boot, 4 * k + group_bootstrap_cells(ng, k))
    retrieval = None
    if "retrieval" in plan.sections:
        inp = leave_one_out_input(index.prepared)  # the rows validated and normalised once
        with reporting(progress):
            retrieval = retrieval_metrics_of(inp, tuple(ks), backend, comm=comm)
        del inp
    stats = None
    if plan.sections & _PAIR_SECTIONS:
        stats = pair_statistics(
            index,
            **plan.pair_request(),
            shard=(0, 1) if comm is None else (comm.rank, comm.world),
            comm=comm,
            sample_size=sample_size,
            seed=seed,
            progress=progress,
        )
    figures = {} if stats is None else _pair_figures(stats, plan, ci, n_boot, seed)
    return Evaluation(
        num_samples=index.num_samples,
        num_classes=int(index.classes.shape[0]),
        retrieval=retrieval,
        stats=stats,
        options={
            **plan.options(ks, groups is not None, ci, n_boot, comm),
            **scale_entry(index.score_scale),
        },
        **figures,
    )


_PAIR_SECTIONS = frozenset(SECTIONS) - {"retrieval"}


def _communicator(distributed: bool | None) -> Communicator | None:
    """The process group's communicator (``None``: detect, ``True``: required) or None."""
    if distributed is False:
        return None
    comm = default_communicator()
    if distributed and comm is None:
        raise ValueError("distributed=True but no torch.distributed group with >1 rank")
    return comm


@dataclass(frozen=True)
class _Plan:
    """The checked options of :func:`evaluate`: the sections to compute and their settings."""

    sections: frozenset[str]
    far_range: tuple[float, float]
    num_thresholds: int
    epsilons: list[float]
    tar_fars: list[float]
    calibration_far: float | None
    max_utility: bool
    search: tuple[float, float, int] | None  # (f_lo, f_hi, K) of the max-utility search
    threshold: float | None
    bins: int

    @staticmethod
    def checked(
        include: Sequence[str] | None,
        exclude: Sequence[str],
        far_range: tuple[float, float],
        num_thresholds: int,
        epsilons: Sequence[float],
        tar_fars: Sequence[float],
        calibration_far: float | None,
        max_utility: bool,
        search_range: tuple[float, float],
        search_thresholds: int,
        threshold: float | None,
        bins: int,
        has_groups: bool,
    ) -> _Plan:
        """Validate in the order of :func:`evaluate`'s signature and drop the sections that the
        options leave empty (ValueError naming the first bad value)."""
        sections = _sections(include, exclude)
        lo, hi = check_far_range(far_range)
        k = check_num_thresholds(num_thresholds)
        eps_l = [check_epsilon(e) for e in epsilons]
        fars_l = [check_fraction(f, "tar_fars entry") for f in tar_fars]
        cal_far = (
            None if calibration_far is None else check_fraction(calibration_far, "calibration_far")
        )
        search = None
        if max_utility:
            check_far_range(search_range)
            check_num_thresholds(search_thresholds, "search_thresholds")
            search = (float(search_range[0]), float(search_range[1]), search_thresholds)
        t_given = None if threshold is None else check_finite(threshold, "threshold")
        nbins = check_int(bins, "bins", 0)
        if t_given is None:
            sections.discard("operating_point")
        if nbins == 0:
            sections.discard("histogram")
        if cal_far is None and not max_utility:
            sections.discard("calibration")
        if not has_groups:
            sections.discard("groups")
        if "groups" in sections:
            sections.add("consistency")  # group OPIS needs the calibration grid
        return _Plan(
            frozenset(sections), (lo, hi), k, eps_l, fars_l, cal_far, bool(max_utility),
            search, t_given, nbins,
        )  # fmt: skip

    def pair_request(self) -> dict[str, Any]:
        """What :func:`pair_statistics` counts for the pair sections."""
        sec = self.sections
        need_fars = list(self.tar_fars) if "tar_at_far" in sec else []
        if "calibration" in sec and self.calibration_far is not None and not self.max_utility:
            need_fars.append(self.calibration_far)
        grids = {}
        if "calibration" in sec and self.search is not None:
            grids[SEARCH_GRID] = self.search
        op = "operating_point" in sec and self.threshold is not None
        return {
            "fars": sorted(set(need_fars)),
            "far_range": self.far_range if "consistency" in sec else None,
            "num_thresholds": self.num_thresholds,
            "thresholds": [self.threshold] if op else [],
            "grids": grids,
            "bins": self.bins if "histogram" in sec else 0,
        }

    def options(
        self,
        ks: Sequence[int],
        has_groups: bool,
        ci: float | None,
        n_boot: int,
        comm: Communicator | None,
    ) -> dict[str, Any]:
        """:attr:`Evaluation.options` (JSON-serialisable)."""
        out: dict[str, Any] = {
            "sections": sorted(self.sections),
            "ks": [int(v) for v in ks],
            "far_range": list(self.far_range),
            "num_thresholds": self.num_thresholds,
            "epsilons": self.epsilons,
            "tar_fars": self.tar_fars,
            "calibration_far": self.calibration_far,
            "max_utility": self.max_utility,
            "threshold": self.threshold,
            "bins": self.bins,
            "groups": has_groups,
            "ci": ci,
            "n_boot": n_boot if ci is not None else None,
            "world_size": 1 if comm is None else comm.world,
        }
        if self.search is not None:
            out["search_range"] = [self.search[0], self.search[1]]
            out["search_thresholds"] = int(self.search[2])
        return out


def _pair_figures(
    stats: PairStats, plan: _Plan, ci: float | None, n_boot: int, seed: int
) -> dict[str, Any]:
    """The :class:`Evaluation` fields read from the count tables (no pass)."""
    sec = plan.sections
    boot: dict[str, Any] = {"ci": ci, "n_boot": n_boot, "seed": seed}
    consistency = None
    if "consistency" in sec:
        consistency = stats.consistency(plan.epsilons, **boot)
    tar_at_far: dict[float, float] = {}
    th_at_far: dict[float, float] = {}
    if "tar_at_far" in sec:
        ths = [stats.threshold_at_far(f) for f in plan.tar_fars]
        gtar = stats.rates(stats.columns_of(ths))["global_tar"] if ths else np.empty(0)
        for f, t, g in zip(plan.tar_fars, ths, gtar, strict=True):
            th_at_far[f] = t
            tar_at_far[f] = float(g)
    calibration = None
    if "calibration" in sec:
        far = None if plan.max_utility else plan.calibration_far
        calibration = calibrate(stats, far=far, max_utility=plan.max_utility)
    op = None
    if "operating_point" in sec and plan.threshold is not None:
        op = stats.operating_point(plan.threshold)
    group_op = group_cons = None
    if "groups" in sec:
        t_groups = calibration.threshold if calibration is not None else plan.threshold
        if t_groups is not None:
            group_op = group_operating_point_view(stats, t_groups, **boot)
        group_cons = group_consistency_view(stats, epsilons=plan.epsilons, **boot)
    intervals: dict[str, Interval] = {}
    if ci is not None:
        intervals = _intervals(stats, consistency, th_at_far, calibration, ci, n_boot, seed)
    return {
        "consistency": consistency,
        "tar_at_far": tar_at_far,
        "threshold_at_far": th_at_far,
        "calibration": calibration,
        "operating_point": op,
        "histogram": stats.histogram() if "histogram" in sec else None,
        "groups": group_op,
        "group_consistency": group_cons,
        "intervals": intervals,
    }
