"""Argument checks shared by the metric functions (each raises ValueError naming the value)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tcm._validation import check_fraction as check_fraction
from tcm._validation import check_int as check_int

MAX_THRESHOLDS = 100_000
"""Largest threshold grid accepted (``num_thresholds``, given ``thresholds``, ``bins``): the
per-class tables cost ``2 C (K + 1)`` int64 per worker thread, so 10^6 thresholds over 200
classes already need several GiB."""

MAX_TABLE_BYTES = 4 << 30
"""Largest estimated memory of the per-class count tables of one sweep (all worker threads)."""


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


def table_memory_bytes(
    num_classes: int, num_columns: int, workers: int, num_groups: int = 0, num_cross: int = 0
) -> int:
    """Estimated peak bytes of the count tables of one sweep and of the views read from them.

    With ``C`` classes, ``K`` counted thresholds, ``G`` groups, ``P`` cross thresholds and ``W``
    worker threads, the int64 tables are ``A = 8 C (K + 1)`` (one per-class table), ``Tg = 8 C
    G (K + 1)`` (one per-(class, group) table), ``Tx = 8 C G^2 (P + 1)`` (one cross-group table)
    and ``S = 2 Tg + 2 Tx`` (one worker's group tables; 0 without groups). The peak is the
    largest of three phases:

    * counting: each worker holds ``2 A + S`` plus one ``bincount`` result of the size of its
      largest group table: ``W (2 A + S + max(Tg, Tx))``;
    * merging: the ``W`` workers' tables stay alive while the per-class totals are summed (the
      summands are stacked, ``W A``, next to the ``2 A`` results) and the group tables are added
      pairwise (up to two sums ``S`` alive at once):
      ``W (2 A + S) + 2 A + max(W A, min(W - 1, 2) S)``;
    * views (without bootstrap intervals, which :func:`~tcm.metrics.bootstrap.
      check_bootstrap_memory` bounds): the merged ``2 A + S`` plus up to ``9 A`` of per-class
      accepted-count, rate and utility arrays (consistency, then calibration while the
      consistency result is kept) plus, with groups, the larger of group OPIS's accepted
      counts (``3 Tg``: a cumulative sum, its columns as int64 and as float64) and the group
      rates' four float64 ``(C, G, G)`` tables (``4 X``, ``X = 8 C G^2``):
      ``11 A + S + max(3 Tg, 4 X)``.

    Checked against the measured peak (tracemalloc for NumPy, the RSS high-water mark for
    torch's tables, minus the same run with a 2-threshold grid) on 300 classes x 8 samples
    with 1 - 3 workers: the estimate is 1.0 - 1.5 times the measured peak
    (``tests/test_metrics_groups.py::test_table_memory_estimate_covers_the_peak``).
    """
    c, k, w = int(num_classes), int(num_columns), max(1, int(workers))
    a = 8 * c * (k + 1)
    tg = 8 * c * num_groups * (k + 1)
    tx = 8 * c * num_groups * num_groups * (num_cross + 1)
    s = 2 * tg + 2 * tx
    big = max(tg, tx) if num_groups else 0
    counting = w * (2 * a + s + big)
    merging = w * (2 * a + s) + 2 * a + max(w * a, min(w - 1, 2) * s)
    views = 11 * a + s + max(3 * tg, 4 * 8 * c * num_groups * num_groups)
    return max(counting, merging, views)


def check_table_memory(
    num_classes: int, num_columns: int, workers: int, num_groups: int = 0, num_cross: int = 0
) -> None:
    """Raise if the count tables of a sweep would exceed :data:`MAX_TABLE_BYTES` (estimate:
    :func:`table_memory_bytes`; per-class tables, plus per-(class, group) and per-(class,
    group, group) tables with groups)."""
    need = table_memory_bytes(num_classes, num_columns, workers, num_groups, num_cross)
    if need > MAX_TABLE_BYTES:
        raise ValueError(
            f"the per-class count tables would need about {need / 2**30:.1f} GiB "
            f"({num_classes:,} classes x {num_columns:,} thresholds x {num_groups} groups, "
            f"{max(1, workers)} worker thread(s), int64; limit "
            f"{MAX_TABLE_BYTES / 2**30:.0f} GiB): "
            "use fewer thresholds or evaluate a subsample of the classes"
        )


def _label_kind(value: Any) -> str | None:
    if isinstance(value, (str, np.str_)):
        return "string"
    if isinstance(value, (int, float, np.integer, np.floating, np.bool_)):
        return "number"
    return None


def check_group_labels(groups: Any, name: str = "groups") -> Any:
    """Group ids as an array :func:`~tcm._validation.encode_labels` can sort, or ValueError.

    Arrays of strings, of numbers and torch tensors pass unchanged. A Python sequence or an
    object array is checked element by element: all strings (returned as a string array) or
    all numbers (returned as a numeric array). A mix of strings and numbers is refused rather
    than converted (``1`` and ``"1"`` would become one group), as is any other value (None,
    a tuple, ...); the message names the first offending sample.

    Example:
        >>> check_group_labels(np.array(["a", "b"], dtype=object)).tolist()
        ['a', 'b']
    """
    if not isinstance(groups, (list, tuple, np.ndarray)):
        return groups  # a tensor or another array-like: encode_labels checks it
    if isinstance(groups, np.ndarray) and groups.dtype != object:
        return groups
    try:
        obj = np.empty(len(groups), dtype=object)
        obj[:] = list(groups)
    except (TypeError, ValueError):
        return groups  # not 1-D: encode_labels names the shape
    first: dict[str, int] = {}
    for i, v in enumerate(obj.tolist()):
        kind = _label_kind(v)
        if kind is None:
            raise ValueError(
                f"{name} must be strings or numbers; sample {i} is {v!r} ({type(v).__name__})"
            )
        first.setdefault(kind, i)
        if len(first) > 1:
            j, k = sorted(first.values())
            raise ValueError(
                f"{name} mix strings and numbers (sample {j} is {obj[j]!r}, sample {k} is "
                f"{obj[k]!r}); use one type for all group ids, e.g. all strings"
            )
    if "string" in first:
        return np.asarray([str(v) for v in obj.tolist()])
    return np.asarray(obj.tolist())
