"""Argument checks shared by the metric functions (each raises ValueError naming the value)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAX_THRESHOLDS = 100_000
"""Largest threshold grid accepted (``num_thresholds``, given ``thresholds``, ``bins``): the
per-class tables cost ``2 C (K + 1)`` int64 per worker thread, so 10^6 thresholds over 200
classes already need several GiB."""

MAX_TABLE_BYTES = 4 << 30
"""Largest estimated memory of the per-class count tables of one sweep (all worker threads)."""


def check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in (0, 1); got {value!r}")
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1); got {value!r}")
    return v


def check_far_range(far_range: Any) -> tuple[float, float]:
    try:
        lo_raw, hi_raw = far_range
    except (TypeError, ValueError) as exc:
        raise ValueError(f"far_range must be a pair (f_lo, f_hi); got {far_range!r}") from exc
    lo = check_fraction(lo_raw, "far_range[0] (f_lo)")
    hi = check_fraction(hi_raw, "far_range[1] (f_hi)")
    if not lo < hi:
        raise ValueError(f"far_range must satisfy f_lo < f_hi (increasing); got {far_range!r}")
    return lo, hi


def check_num_thresholds(k: Any, name: str = "num_thresholds") -> int:
    """An integer grid size in ``[2, MAX_THRESHOLDS]``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= 2; got {k!r}")
    if k < 2:
        raise ValueError(f"{name} must be >= 2; got {k}")
    return check_size(k, name, 2)


def check_epsilon(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise ValueError(f"epsilon must be a number in (0, 0.5]; got {eps!r}")
    v = float(eps)
    if not 0.0 < v <= 0.5:
        raise ValueError(f"epsilon must be in (0, 0.5]; got {eps!r}")
    return v


def check_negatives(classes: np.ndarray, n: int) -> None:
    """Raise if there is no negative pair (fewer than 2 distinct labels)."""
    if classes.shape[0] < 2:
        raise ValueError(
            f"no negative pairs: all {n} samples share one label "
            f"({classes[0]!r}); at least 2 distinct labels are needed"
        )


def check_pairs(classes: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """Raise if there is no negative pair or fewer than 2 classes with >= 2 samples; return the
    boolean mask of included classes."""
    check_negatives(classes, n)
    included = counts >= 2
    if int(included.sum()) < 2:
        raise ValueError(
            f"fewer than 2 classes with >= 2 samples: got {int(included.sum())} of "
            f"{classes.shape[0]} classes (need at least 2)"
        )
    return np.asarray(included)


def check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_finite(value: Any, name: str) -> float:
    """A finite real number (not bool)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(float(value))
    ):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return float(value)


def check_size(value: Any, name: str, minimum: int, maximum: int = MAX_THRESHOLDS) -> int:
    """An integer in ``[minimum, maximum]``; the message says why there is a maximum."""
    v = check_int(value, name, minimum)
    if v > maximum:
        raise ValueError(
            f"{name} = {v} is too large (limit {maximum:,}): every threshold adds a column to "
            "the per-class count tables"
        )
    return v


def check_table_memory(
    num_classes: int, num_columns: int, workers: int, num_groups: int = 0, num_cross: int = 0
) -> None:
    """Raise if the count tables of a sweep would exceed :data:`MAX_TABLE_BYTES` (per-class
    tables, plus per-(class, group) and per-(class, group, group) tables with groups)."""
    cells = num_classes * (num_columns + 1) * (1 + num_groups)
    cells += num_classes * num_groups * num_groups * (num_cross + 1)
    need = 2 * 8 * cells * (workers + 1)
    if need > MAX_TABLE_BYTES:
        raise ValueError(
            f"the per-class count tables would need about {need / 2**30:.1f} GiB "
            f"({num_classes:,} classes x {num_columns:,} thresholds x {num_groups} groups x "
            f"2 tables x {workers + 1} copies of int64; limit "
            f"{MAX_TABLE_BYTES / 2**30:.0f} GiB): "
            "use fewer thresholds or evaluate a subsample of the classes"
        )
