"""Choosing one deployment threshold from :class:`~tcm.metrics.statistics.PairStats` (no pass).

Two rules (cosine similarity; a pair is accepted when ``s >= t``):

* **target FAR**: ``t = quantile(neg_sims, 1 - f)`` (exact, linear interpolation), the threshold
  whose global false acceptance rate over all negative pairs is ``f``;
* **max mean utility**: the threshold of a grid over a global-FAR search range that maximises
  ``mean_c U_c(t)`` (``U_c`` = F1 of ``TAR_c`` and ``TRR_c``; the first maximum on ties).

At the chosen threshold the per-class rates are summarised: the spread of ``FAR_c`` / ``FRR_c``
over the included classes and the number of classes whose FAR exceeds twice the reference FAR
(the target, or for max-utility the global FAR reached).

Example:
    >>> import numpy as np
    >>> from tcm.metrics.statistics import PairIndex, pair_statistics
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(10), 6)
    >>> x = rng.normal(size=(60, 16)) + 2.0 * rng.normal(size=(10, 16))[y]
    >>> stats = pair_statistics(PairIndex(x, y), fars=[1e-2], far_range=None)
    >>> cal = calibrate(stats, far=1e-2)
    >>> cal.mode, cal.threshold == stats.threshold_at_far(1e-2), cal.operating_point.far.shape
    ('target_far', True, (10,))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcm.metrics._checks import check_fraction
from tcm.metrics.results import OperatingPoint, jsonable
from tcm.metrics.statistics import PairStats, utility

__all__ = ["SEARCH_GRID", "Calibration", "calibrate", "spread"]

SEARCH_GRID = "search"
"""Name of the grid that :func:`calibrate` searches for ``max_utility=True``."""

_SPREAD_KEYS = ("min", "p50", "p90", "p95", "p99", "max", "mean", "std")


def spread(x: np.ndarray) -> dict[str, float]:
    """``min, p50, p90, p95, p99, max, mean, std`` of a 1-D array (linear quantiles;
    population std); all NaN for an empty array.

    Example:
        >>> spread(np.arange(5.0))["p50"], spread(np.arange(5.0))["max"]
        (2.0, 4.0)
    """
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return dict.fromkeys(_SPREAD_KEYS, math.nan)
    q = np.quantile(a, [0.5, 0.9, 0.95, 0.99])
    return {
        "min": float(a.min()),
        "p50": float(q[0]),
        "p90": float(q[1]),
        "p95": float(q[2]),
        "p99": float(q[3]),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "std": float(a.std()),
    }


@dataclass(frozen=True)
class Calibration:
    """A chosen threshold and the per-class rates it gives.

    Attributes:
        threshold: cosine-similarity threshold ``t`` (accept when ``s >= t``).
        mode: ``"target_far"`` or ``"max_mean_utility"``.
        target_far: the target global FAR (``None`` for max-utility).
        mean_utility: ``mean_c U_c(t)`` (always reported).
        search_far_range: the searched global-FAR range (max-utility only).
        reference_far: FAR used for :attr:`classes_far_above_2x` (target, or the global FAR
            reached by the max-utility threshold).
        operating_point: per-class TAR/FAR/FRR/TRR and global rates at ``t``.
        far_spread, frr_spread: :func:`spread` of the per-class FAR / FRR.
        classes_far_above_2x: number of classes with ``FAR_c > 2 * reference_far``.
    """

    threshold: float
    mode: str
    target_far: float | None
    mean_utility: float
    search_far_range: tuple[float, float] | None
    reference_far: float
    operating_point: OperatingPoint
    far_spread: dict[str, float]
    frr_spread: dict[str, float]
    classes_far_above_2x: int

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-serialisable dict; ``class_names[c]`` (if given, indexed by label value when the
        labels are integer codes) names the classes in ``per_class``."""
        op = self.operating_point
        classes = [str(c) for c in np.asarray(op.classes).tolist()]
        names = classes
        if class_names is not None:
            names = [
                str(class_names[int(c)])
                if c.lstrip("-").isdigit() and 0 <= int(c) < len(class_names)
                else c
                for c in classes
            ]
        return {
            "threshold": self.threshold,
            "mode": self.mode,
            "target_far": self.target_far,
            "mean_utility": self.mean_utility,
            "search_far_range": list(self.search_far_range) if self.search_far_range else None,
            "reference_far": self.reference_far,
            "global_far": op.global_far,
            "global_tar": op.global_tar,
            "num_classes": len(classes),
            "far_spread": dict(self.far_spread),
            "frr_spread": dict(self.frr_spread),
            "classes_far_above_2x": self.classes_far_above_2x,
            "per_class": {
                "classes": classes,
                "names": names,
                "size": jsonable(op.class_sizes),
                "far": jsonable(op.far),
                "frr": jsonable(op.frr),
            },
        }


def calibrate(
    stats: PairStats, *, far: float | None = None, max_utility: bool = False
) -> Calibration:
    """Choose a threshold by target FAR or max mean utility (module docstring); no pair pass.

    Args:
        stats: statistics counted with ``fars=[far]`` (target FAR) or with a grid named
            :data:`SEARCH_GRID` (max-utility; e.g. ``grids={"search": (1e-4, 0.5, 201)}``).
        far: target global FAR in ``(0, 1)``.
        max_utility: maximise the mean per-class utility instead.

    Raises:
        ValueError: neither or both rules chosen, ``far`` outside (0, 1), the statistics lack
            the FAR threshold / search grid, or fewer than 2 classes with 2 samples.
    """
    if (far is None) == (not max_utility):
        raise ValueError("choose one rule: far=F (target global FAR) or max_utility=True")
    if max_utility:
        tc = stats.consistency(epsilons=(), grid=SEARCH_GRID)
        mean_u = tc.utility.mean(axis=0)
        k = int(np.argmax(mean_u))
        t = float(tc.thresholds[k])
        op = stats.operating_point(t)
        target: float | None = None
        reference = float(op.global_far)
        search: tuple[float, float] | None = tc.far_range
    else:
        f = check_fraction(far, "far")
        t = stats.threshold_at_far(f)
        op = stats.operating_point(t)
        target = reference = f
        search = None

    mean_utility = float(np.mean(utility(op.tar, op.trr)))
    return Calibration(
        threshold=t,
        mode="max_mean_utility" if max_utility else "target_far",
        target_far=target,
        mean_utility=mean_utility,
        search_far_range=search,
        reference_far=reference,
        operating_point=op,
        far_spread=spread(op.far),
        frr_spread=spread(op.frr),
        classes_far_above_2x=int(np.count_nonzero(op.far > 2.0 * reference)),
    )
