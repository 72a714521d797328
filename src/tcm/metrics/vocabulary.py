"""The metric table: every key of :meth:`tcm.metrics.Evaluation.metrics` with its display name,
format, direction, bounds and unit, in ONE place.

Everything users see is derived from :data:`METRICS` and from what was actually computed: the
columns of a training run's ``log.csv`` (:func:`headline_keys`), the TensorBoard tags (every
computed key), the report's metrics table (its columns, display names, formats and the
best-value highlighting from :attr:`MetricInfo.higher_is_better`), the bounds a report checks a
caller's own values against, the rows of ``tcm evaluate``'s table (:attr:`MetricInfo.in_console`)
and the ``tcm train`` / ``tcm demo`` tables (:func:`headline_keys`). A key that is not in the
table is an error (:func:`metric_info`), never silently dropped.

Keys are fixed names (``map_at_r``) or patterns with one parameter (``recall_at_{k}``). The
parameters and their canonical spelling (a key must be written exactly so):

=========  =====================================  ==============================================
name       spelling                               example
=========  =====================================  ==============================================
``k``      a positive integer                     ``recall_at_1``
``eps``    ``%g`` of the float (:func:`eps_key`)  ``epsilon_opis_0.05``, ``epsilon_opis_0.1``
``far``    ``%.0e`` of the float (:func:`far_key`)``tar_at_far_1e-03``
=========  =====================================  ==============================================

A label pattern may use ``{name}`` (the parameter as written in the key) and ``{name_pct}`` (the
parameter times 100, ``%g``): ``"eps-OPIS {eps_pct}%"`` gives ``eps-OPIS 5%``.

Adding a metric: one :class:`MetricInfo` entry here and the line of
:meth:`~tcm.metrics.Evaluation.metrics` that computes it (docs/architecture.md, "Adding a
metric").

Example:
    >>> info = metric_info("epsilon_opis_0.05")
    >>> info.key, info.label_of("epsilon_opis_0.05"), info.higher_is_better
    ('epsilon_opis_{eps}', 'eps-OPIS 5%', False)
    >>> metric_info("tar_at_far_1e-03").format(0.91234)
    '0.9123'
    >>> headline_keys()
    ('recall_at_1', 'map_at_r', 'opis', 'epsilon_opis_0.05', 'epsilon_opis_0.1')
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

__all__ = [
    "METRICS",
    "MetricInfo",
    "UnknownMetricError",
    "eps_key",
    "far_key",
    "find_metric",
    "format_metric",
    "headline_keys",
    "metric_info",
    "metric_label",
]

_INF = math.inf


def far_key(far: float) -> str:
    """Suffix of the ``*_at_far_*`` keys: ``1e-3 -> "1e-03"``.

    Example:
        >>> far_key(1e-3), far_key(0.1)
        ('1e-03', '1e-01')
    """
    return f"{far:.0e}"


def eps_key(eps: float) -> str:
    """Suffix of the ``epsilon_opis_*`` keys: ``0.05 -> "0.05"``, ``0.10 -> "0.1"``."""
    return f"{float(eps):g}"


def _int_key(s: str) -> str:
    return str(int(s))


#: Parameter name -> (regular expression of its spelling, canonical spelling of a parsed value).
_PARAMS: dict[str, tuple[str, Callable[[str], str]]] = {
    "k": (r"[1-9][0-9]*", _int_key),
    "eps": (r"[0-9][0-9.e+-]*", lambda s: eps_key(float(s))),
    "far": (r"[0-9]e[+-][0-9]+", lambda s: far_key(float(s))),
}


@cache
def _pattern(key: str) -> tuple[re.Pattern[str], str | None]:
    """``(full-match regex, parameter name or None)`` of a key pattern."""
    names = re.findall(r"\{(\w+)\}", key)
    if len(names) > 1:
        raise ValueError(f"metric key pattern {key!r} has more than one parameter")
    if not names:
        return re.compile(re.escape(key)), None
    name = names[0]
    if name not in _PARAMS:
        raise ValueError(f"metric key pattern {key!r}: unknown parameter {{{name}}}")
    head, tail = key.split("{" + name + "}")
    regex = re.escape(head) + f"(?P<p>{_PARAMS[name][0]})" + re.escape(tail)
    return re.compile(regex), name


@dataclass(frozen=True)
class MetricInfo:
    """What tcm knows about one metric key (or key pattern).

    Attributes:
        key: the key, or a pattern with one parameter (``recall_at_{k}``; module docstring).
        label: display name, or its pattern (``Recall@{k}``, ``eps-OPIS {eps_pct}%``).
        description: one line: what the value is.
        section: the :func:`~tcm.metrics.evaluate` section that computes it.
        unit: ``"fraction"`` (in ``[0, 1]``, not percent), ``"OPIS"`` (mean squared utility
            deviation), ``"similarity"`` (a cosine-similarity threshold), ``"count"`` or
            ``"ratio"``.
        fmt: format spec of the value in the report's tables (``".4f"``, ``".3e"``, ``".4g"``).
        higher_is_better: ``True`` / ``False``; ``None`` when the value has no direction (a
            threshold, a count): no best value is highlighted.
        bounds: ``(lo, hi)`` every valid value lies in (``-inf`` / ``inf`` when open); a
            report checks a caller's own value of the key against them.
        headline: the keys of this entry in the headline set (:func:`headline_keys`): the
            columns of ``log.csv``, the report's metrics table and the ``tcm train`` /
            ``tcm demo`` tables. ``(key,)`` for a fixed key, instances for a pattern.
        in_console: shown in ``tcm evaluate``'s table (else only in its JSON).
    """

    key: str
    label: str
    description: str
    section: str
    unit: str
    fmt: str = ".4g"
    higher_is_better: bool | None = None
    bounds: tuple[float, float] = (-_INF, _INF)
    headline: tuple[str, ...] = ()
    in_console: bool = True

    def param(self, key: str) -> str | None:
        """The parameter of ``key`` as written (``"1"`` of ``recall_at_1``), ``""`` for a fixed
        key, ``None`` when ``key`` is not an instance of this entry."""
        regex, name = _pattern(self.key)
        m = regex.fullmatch(key)
        if m is None:
            return None
        if name is None:
            return ""
        raw = m.group("p")
        try:
            canonical = _PARAMS[name][1](raw)
        except ValueError:
            return None
        return raw if canonical == raw else None

    def matches(self, key: str) -> bool:
        """Whether ``key`` is this entry's key or an instance of its pattern, spelled
        canonically (``recall_at_01`` and ``tar_at_far_0.001`` are not keys)."""
        return self.param(key) is not None

    def label_of(self, key: str) -> str:
        """Display name of ``key`` (an instance of this entry)."""
        p = self.param(key)
        if p is None:
            raise ValueError(f"metric key {key!r} is not an instance of {self.key!r}")
        _, name = _pattern(self.key)
        if name is None:
            return self.label
        return self.label.format(**{name: p, f"{name}_pct": f"{float(p) * 100:g}"})

    def format(self, value: float) -> str:
        """The value as the report's tables write it."""
        return format(value, self.fmt)

    def bounds_error(self, value: float) -> str | None:
        """Why ``value`` cannot be a value of this metric (outside :attr:`bounds`), or
        ``None``."""
        lo, hi = self.bounds
        if lo <= value <= hi:
            return None
        if self.unit == "fraction" and (lo, hi) == (0.0, 1.0):
            return f"must be a fraction in [0, 1] (not percent); got {value}"
        if hi == _INF:
            return f"must be >= {lo:g}; got {value}"
        if lo == -_INF:
            return f"must be <= {hi:g}; got {value}"
        return f"must be in [{lo:g}, {hi:g}]; got {value}"


class UnknownMetricError(KeyError, ValueError):
    """A key that is not in the metric table (a ``KeyError`` and a ``ValueError``; its text is
    the plain message)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_FRACTION = (0.0, 1.0)
_NONNEG = (0.0, _INF)
_SIMILARITY = (-1.0, 1.0)


def _group_summary(name: str, description: str, unit: str, higher: bool) -> MetricInfo:
    bounds = {"fraction": _FRACTION, "ratio": (1.0, _INF)}[unit]
    return MetricInfo(
        f"group_{name}",
        f"group_{name}",
        description + " (groups at the calibrated, else the given, threshold)",
        "groups",
        unit,
        higher_is_better=higher,
        bounds=bounds,
        in_console=False,
    )


#: The metric table, in the order of :meth:`~tcm.metrics.Evaluation.metrics`.
METRICS: tuple[MetricInfo, ...] = (
    MetricInfo(
        "recall_at_{k}",
        "Recall@{k}",
        "Recall@k, leave-one-out retrieval on the evaluated set",
        "retrieval",
        "fraction",
        fmt=".4f",
        higher_is_better=True,
        bounds=_FRACTION,
        headline=("recall_at_1",),
    ),
    MetricInfo(
        "map_at_r",
        "MAP@R",
        "MAP@R, leave-one-out",
        "retrieval",
        "fraction",
        fmt=".4f",
        higher_is_better=True,
        bounds=_FRACTION,
        headline=("map_at_r",),
    ),
    MetricInfo(
        "r_precision",
        "R-precision",
        "R-precision, leave-one-out",
        "retrieval",
        "fraction",
        fmt=".4f",
        higher_is_better=True,
        bounds=_FRACTION,
    ),
    MetricInfo(
        "opis",
        "OPIS",
        "OPIS: mean over the calibration range of the across-class variance of utility",
        "consistency",
        "OPIS",
        fmt=".3e",
        higher_is_better=False,
        bounds=_NONNEG,
        headline=("opis",),
    ),
    MetricInfo(
        "epsilon_opis_{eps}",
        "eps-OPIS {eps_pct}%",
        "eps-OPIS: mean squared utility gap between the best and worst eps share of classes",
        "consistency",
        "OPIS",
        fmt=".3e",
        higher_is_better=False,
        bounds=_NONNEG,
        headline=("epsilon_opis_0.05", "epsilon_opis_0.1"),
    ),
    MetricInfo(
        "tar_at_far_{far}",
        "TAR@FAR={far}",
        "global TAR at the threshold of global FAR far",
        "tar_at_far",
        "fraction",
        higher_is_better=True,
        bounds=_FRACTION,
    ),
    MetricInfo(
        "threshold_at_far_{far}",
        "threshold@FAR={far}",
        "the cosine-similarity threshold of global FAR far",
        "tar_at_far",
        "similarity",
        bounds=_SIMILARITY,
        in_console=False,
    ),
    MetricInfo(
        "calibration_threshold",
        "calibrated threshold",
        "the calibrated threshold (target FAR or max mean utility)",
        "calibration",
        "similarity",
        bounds=_SIMILARITY,
    ),
    MetricInfo(
        "calibration_global_far",
        "calibrated global FAR",
        "global FAR at the calibrated threshold",
        "calibration",
        "fraction",
        bounds=_FRACTION,
    ),
    MetricInfo(
        "calibration_global_tar",
        "calibrated global TAR",
        "global TAR at the calibrated threshold",
        "calibration",
        "fraction",
        higher_is_better=True,
        bounds=_FRACTION,
    ),
    MetricInfo(
        "calibration_mean_utility",
        "calibrated mean utility",
        "mean per-class utility at the calibrated threshold",
        "calibration",
        "fraction",
        higher_is_better=True,
        bounds=_FRACTION,
    ),
    MetricInfo(
        "calibration_far_max",
        "calibrated max class FAR",
        "largest per-class FAR at the calibrated threshold",
        "calibration",
        "fraction",
        higher_is_better=False,
        bounds=_FRACTION,
    ),
    MetricInfo(
        "calibration_classes_far_above_2x",
        "classes FAR > 2x",
        "classes whose FAR at the calibrated threshold is above twice the reference FAR",
        "calibration",
        "count",
        higher_is_better=False,
        bounds=_NONNEG,
    ),
    MetricInfo(
        "threshold",
        "threshold",
        "the given operating threshold",
        "operating_point",
        "similarity",
        bounds=_SIMILARITY,
    ),
    MetricInfo(
        "global_far",
        "global FAR",
        "global FAR at the given threshold",
        "operating_point",
        "fraction",
        bounds=_FRACTION,
    ),
    MetricInfo(
        "global_tar",
        "global TAR",
        "global TAR at the given threshold",
        "operating_point",
        "fraction",
        higher_is_better=True,
        bounds=_FRACTION,
    ),
    MetricInfo(
        "group_opis",
        "group_opis",
        "OPIS across groups",
        "groups",
        "OPIS",
        higher_is_better=False,
        bounds=_NONNEG,
    ),
    _group_summary("far_max_min", "largest / smallest group FAR", "ratio", False),
    _group_summary("frr_max_min", "largest / smallest group FRR", "ratio", False),
    _group_summary("far_max_geomean", "largest / geometric-mean group FAR", "ratio", False),
    _group_summary("frr_max_geomean", "largest / geometric-mean group FRR", "ratio", False),
    _group_summary("far_gini", "Gini coefficient of the group FARs", "fraction", False),
    _group_summary("frr_gini", "Gini coefficient of the group FRRs", "fraction", False),
    _group_summary("garbe", "GARBE (weighted FAR and FRR Gini)", "fraction", False),
    _group_summary("fdr", "fairness discrepancy rate", "fraction", True),
)


def find_metric(key: str) -> MetricInfo | None:
    """The table entry of ``key``, or ``None`` when it is not a metric key."""
    for info in METRICS:
        if info.matches(key):
            return info
    return None


def metric_info(key: str) -> MetricInfo:
    """The table entry of ``key``.

    Raises:
        UnknownMetricError: ``key`` is not a metric key (the message names it and the table's
            keys).

    Example:
        >>> metric_info("map_at_r").label
        'MAP@R'
    """
    info = find_metric(key)
    if info is None:
        known = ", ".join(i.key for i in METRICS)
        raise UnknownMetricError(
            f"unknown metric key {key!r}; the metric table (tcm.metrics.vocabulary) has: {known}"
        )
    return info


def metric_label(key: str) -> str:
    """Display name of a metric key (tables, plots); a key outside the table (a caller's own
    metric in a report) is shown as given.

    Example:
        >>> metric_label("recall_at_1"), metric_label("epsilon_opis_0.05")
        ('Recall@1', 'eps-OPIS 5%')
        >>> metric_label("tar_at_far_1e-03")
        'TAR@FAR=1e-03'
    """
    info = find_metric(key)
    return key if info is None else info.label_of(key)


def format_metric(key: str, value: float) -> str:
    """Table text of a metric value in the report: the entry's :attr:`~MetricInfo.fmt`
    (recall, MAP@R and R-precision with 4 decimals, OPIS / eps-OPIS as ``x.xxxe-yy``, others
    ``%.4g``; a key outside the table ``%.4g``).

    Example:
        >>> format_metric("recall_at_1", 0.81234), format_metric("epsilon_opis_0.05", 0.0012346)
        ('0.8123', '1.235e-03')
    """
    info = find_metric(key)
    return format(value, ".4g") if info is None else info.format(value)


def headline_keys() -> tuple[str, ...]:
    """The headline metrics, in table order: the metric columns of ``log.csv``, the report's
    metrics table and the ``tcm train`` / ``tcm demo`` tables."""
    return tuple(k for info in METRICS for k in info.headline)


def _check_table() -> None:
    """Each headline key is an instance of its entry and of no earlier one; patterns parse."""
    for i, info in enumerate(METRICS):
        _pattern(info.key)
        for k in info.headline:
            if not info.matches(k) or any(o.matches(k) for o in METRICS[:i]):
                raise ValueError(f"headline key {k!r} is not an instance of {info.key!r}")


_check_table()
