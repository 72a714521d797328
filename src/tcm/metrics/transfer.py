"""Calibration transfer: does a threshold calibrated on one data set hold on another?

A deployer calibrates ``t = threshold_at_far(S, f)`` on a source set ``S`` (cosine similarity,
accept when ``s >= t``; ``f`` = target global FAR). The system then meets a target set ``T``
(other classes, other distributions, or both). :func:`calibration_transfer` reports on ``T`` at
that ``t``: the global ``FAR_T(t)`` and the ratio ``FAR_T(t) / f``, ``TAR_T(t)`` and its change
from ``TAR_S(t)``, the spread of the per-class ``FAR_c`` / ``FRR_c`` on ``T`` (min, median, p90,
p99, max), the number of target classes with ``FAR_c > 2 f``, the threshold ``t_T`` that would
give FAR ``f`` on ``T`` and the offset ``t - t_T``, and per-group rates when groups are given.
Each side takes one tail pass and one count sweep; intervals (``ci=``) are class-bootstrap
intervals over the target classes from the per-class count tables.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(20), 5)
    >>> src = rng.normal(size=(20, 16))[y] + 0.7 * rng.normal(size=(100, 16))
    >>> tgt = rng.normal(size=(20, 16))[y] + 1.0 * rng.normal(size=(100, 16))  # noisier data
    >>> tr = calibration_transfer(src, y, tgt, y, far=1e-2)
    >>> (tr.far_ratio > 1.0) == (tr.threshold < tr.target_threshold)  # too low: more accepts
    True
    >>> sorted(tr.class_far)
    ['max', 'mean', 'min', 'p50', 'p90', 'p95', 'p99', 'std']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tcm._validation import ArrayLike
from tcm.metrics._checks import check_fraction
from tcm.metrics._progress import Progress
from tcm.metrics.bootstrap import (
    Interval,
    check_bootstrap_args,
)
from tcm.metrics.calibration import spread
from tcm.metrics.groups import GroupOperatingPoint, group_operating_point_view
from tcm.metrics.results import scale_entry
from tcm.metrics.statistics import PairIndex, PairStats, pair_statistics

if TYPE_CHECKING:
    from tcm.scoring.base import Scorer

__all__ = ["CalibrationTransfer", "calibration_transfer", "transfer_view"]


@dataclass(frozen=True)
class CalibrationTransfer:
    """The source-calibrated threshold evaluated on the target (module docstring).

    Attributes:
        far: the target global FAR ``f`` the threshold was calibrated for.
        threshold: ``t``, calibrated on the source.
        source_far, source_tar: global FAR / TAR of the source at ``t``.
        target_far, target_tar: global FAR / TAR of the target at ``t``.
        far_ratio: ``target_far / f``; tar_change: ``target_tar - source_tar``.
        target_threshold: ``t_T``, the threshold of FAR ``f`` on the target;
            threshold_offset: ``t - t_T``.
        class_far, class_frr: spread of the target's per-class rates at ``t``.
        classes_over_2x: target classes with ``FAR_c > 2 f``; num_target_classes: included
            target classes (``n_c >= 2``).
        source_groups, target_groups: per-group rates at ``t`` when groups were given.
        intervals: class-bootstrap intervals (target classes) of ``target_far``, ``far_ratio``,
            ``target_tar`` when ``ci`` was given.
        score_scale: the scale of ``threshold`` and ``target_threshold`` (``"cosine"``, or the
            scorer's; ``to_dict`` lists it only when it is not ``"cosine"``).
    """

    far: float
    threshold: float
    source_far: float
    source_tar: float
    target_far: float
    target_tar: float
    far_ratio: float
    tar_change: float
    target_threshold: float
    threshold_offset: float
    class_far: dict[str, float]
    class_frr: dict[str, float]
    classes_over_2x: int
    num_target_classes: int
    source_groups: GroupOperatingPoint | None = None
    target_groups: GroupOperatingPoint | None = None
    intervals: dict[str, Interval] = field(default_factory=dict)
    score_scale: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in (
                "far",
                "threshold",
                "source_far",
                "source_tar",
                "target_far",
                "target_tar",
                "far_ratio",
                "tar_change",
                "target_threshold",
                "threshold_offset",
                "classes_over_2x",
                "num_target_classes",
            )
        }
        out["class_far"] = dict(self.class_far)
        out["class_frr"] = dict(self.class_frr)
        out["source_groups"] = None if self.source_groups is None else self.source_groups.to_dict()
        out["target_groups"] = None if self.target_groups is None else self.target_groups.to_dict()
        out["intervals"] = {k: v.to_dict() for k, v in self.intervals.items()}
        out.update(scale_entry(self.score_scale))
        return out


def transfer_view(
    source: PairStats,
    target: PairStats,
    far: float,
    *,
    alpha: float = 0.5,
    ci: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> CalibrationTransfer:
    """:class:`CalibrationTransfer` from source statistics counted with ``fars=[far]`` and
    target statistics counted with ``fars=[far]`` and ``thresholds=[t]`` (no pass).

    Raises:
        ValueError: ``far`` outside (0, 1), bad ``ci`` / ``n_boot``, statistics on two score
            scales (a threshold on one scale means nothing on the other), and the errors of the
            statistics' views.
    """
    f = check_fraction(far, "far")
    if source.score_scale != target.score_scale:
        raise ValueError(
            f"source scores are on the {source.score_scale} scale, target scores on the "
            f"{target.score_scale} scale; score both with the same scorer"
        )
    check_bootstrap_args(ci, n_boot)
    t = source.threshold_at_far(f)
    rs = source.rates(source.columns_of([t]))
    op = target.operating_point(t, ci=ci, n_boot=n_boot, seed=seed)
    target_far, target_tar = float(op.global_far), float(op.global_tar)
    t_target = target.threshold_at_far(f)
    intervals: dict[str, Interval] = {}
    if ci is not None:
        far_iv = op.intervals["global_far"]
        intervals["target_far"] = far_iv
        # a percentile interval scales with its samples: the ratio's is the FAR's over f
        intervals["far_ratio"] = dataclasses.replace(
            far_iv, lo=far_iv.lo / f, hi=far_iv.hi / f, point=target_far / f
        )
        intervals["target_tar"] = op.intervals["global_tar"]

    def groups_of(stats: PairStats) -> GroupOperatingPoint | None:
        if stats.groups is None:
            return None
        return group_operating_point_view(stats, t, alpha=alpha, ci=ci, n_boot=n_boot, seed=seed)

    return CalibrationTransfer(
        far=f,
        threshold=t,
        source_far=float(rs["global_far"][0]),
        source_tar=float(rs["global_tar"][0]),
        target_far=target_far,
        target_tar=target_tar,
        far_ratio=target_far / f,
        tar_change=target_tar - float(rs["global_tar"][0]),
        target_threshold=t_target,
        threshold_offset=t - t_target,
        class_far=spread(op.far),
        class_frr=spread(op.frr),
        classes_over_2x=int(np.count_nonzero(op.far > 2.0 * f)),
        num_target_classes=int(op.classes.shape[0]),
        source_groups=groups_of(source),
        target_groups=groups_of(target),
        intervals=intervals,
        score_scale=source.score_scale,
    )


def calibration_transfer(
    source_embeddings: ArrayLike,
    source_labels: ArrayLike,
    target_embeddings: ArrayLike,
    target_labels: ArrayLike,
    far: float = 1e-3,
    source_groups: ArrayLike | None = None,
    target_groups: ArrayLike | None = None,
    *,
    alpha: float = 0.5,
    ci: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    block_size: int | None = None,
    scorer: Scorer | None = None,
    progress: Progress = False,
) -> CalibrationTransfer:
    """Calibrate the FAR-``far`` threshold on the source and evaluate it on the target.

    ``progress``: progress bars of the pair passes (see :func:`tcm.metrics.evaluate`).

    Raises:
        ValueError: ``far`` outside (0, 1), a source or target without negative pairs, a target
            with fewer than 2 classes of >= 2 samples, groups of the wrong length, bad
            ``ci`` / ``n_boot``, and the input errors of
            :class:`~tcm.metrics.statistics.PairIndex`.
    """
    f = check_fraction(far, "far")
    check_bootstrap_args(ci, n_boot)
    s_index = PairIndex(
        source_embeddings, source_labels, source_groups, block_size=block_size, scorer=scorer
    )
    t_index = PairIndex(
        target_embeddings, target_labels, target_groups, block_size=block_size, scorer=scorer
    )
    if s_index.prepared.x.shape[1] != t_index.prepared.x.shape[1]:
        raise ValueError(
            f"source embeddings have dimension {s_index.prepared.x.shape[1]} but target "
            f"embeddings have {t_index.prepared.x.shape[1]}"
        )
    try:
        source = pair_statistics(s_index, fars=[f], far_range=None, progress=progress)
    except ValueError as exc:
        raise ValueError(f"source: {exc}") from exc
    t = source.threshold_at_far(f)
    try:
        target = pair_statistics(
            t_index, fars=[f], far_range=None, thresholds=[t], progress=progress
        )
    except ValueError as exc:
        raise ValueError(f"target: {exc}") from exc
    return transfer_view(source, target, f, alpha=alpha, ci=ci, n_boot=n_boot, seed=seed)
