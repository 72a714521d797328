"""Numbers behind the report: one :class:`RunAnalysis` per evaluated
:class:`~tcm.report.run.ReportRun`, read from its :class:`~tcm.metrics.Evaluation` (no pair
pass, no kNN pass, nothing recomputed here).

Sections read (cosine similarity, or the scores of the run's scorer on its ``score_scale``,
recorded in the Evaluation's ``options``; a pair is accepted when ``s >= t``):

* ``consistency`` -> per-class utility ``U_c(t)`` on the calibration grid, the grid's global FAR,
  OPIS and eps-OPIS (5 %, 10 %);
* ``calibration`` (``threshold=None``: the threshold of global FAR ``target_far``) or
  ``operating_point`` (a given threshold) -> per-class ``FAR_c(t)``, ``FRR_c(t)``;
* ``histogram`` -> positive / negative cosine-similarity counts;
* ``retrieval`` -> Recall@1 and MAP@R, unless the caller supplied both;
* ``groups`` (when present) -> per-group FAR_g / FRR_g, the cross-group FAR matrix and the
  differential summaries at the deployment threshold; ``group_consistency`` -> group OPIS;
* ``intervals`` (when present) -> class-bootstrap intervals of the computed metrics.

A missing section is a :class:`ValueError` that names it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcm._io import json_value
from tcm.metrics import Evaluation, GroupOperatingPoint, Interval, OperatingPoint
from tcm.metrics.results import scale_entry
from tcm.metrics.vocabulary import headline_keys, metric_info
from tcm.report.detection import RunDetection
from tcm.report.plots import far_log_ratio
from tcm.report.run import ReportRun

__all__ = ["RunAnalysis", "analyse_run", "class_display_names"]


def interval_json(iv: Interval) -> dict[str, Any]:
    """``{"lo", "hi", "ci", "n_boot"}`` of an interval, strict JSON (:func:`json_value`)."""
    return {
        "lo": json_value(iv.lo),
        "hi": json_value(iv.hi),
        "ci": float(iv.ci),
        "n_boot": int(iv.n_boot),
    }


#: Number of classes listed in the worst-classes tables / ``report.json``.
WORST_CLASSES = 5


@dataclass
class RunAnalysis:
    """Everything the report shows about one run (NumPy arrays, cosine-similarity units).

    Attributes:
        name: the run's display name (not escaped).
        metrics: table metrics under the keys of :meth:`tcm.metrics.Evaluation.metrics`
            (the headline metrics :func:`tcm.metrics.headline_keys` first, then any extra
            caller keys).
        sources: for every key of ``metrics``: ``"caller"`` or ``"computed"``.
        threshold: deployment threshold ``t`` (cosine similarity; accepted when ``s >= t``).
        threshold_source: ``"given"`` or ``"calibrated"`` (global FAR = ``target_far``).
        num_samples, num_classes: ``N`` and the number of distinct labels.
        thresholds: ``(K,)`` calibration grid (increasing similarities).
        utility: ``(T, K)`` per-class utility ``U_c(t_k)`` of the ``T`` included classes.
        grid_global_far: ``(K,)`` global FAR at each grid threshold.
        far_range: the calibration range ``(f_lo, f_hi)`` of global FAR.
        classes: ``(T,)`` included class labels; ``class_sizes``: ``(T,)`` their sizes.
        class_names: ``(T,)`` display names of ``classes`` (the run's ``class_names`` if it has
            them, else the labels as text).
        num_excluded: classes with fewer than 2 samples (not in ``utility``/``far``/``frr``).
        far, frr: ``(T,)`` per-class ``FAR_c(t)`` and ``FRR_c(t)`` at ``threshold``.
        global_far, global_tar: global FAR and TAR at ``threshold``.
        hist_edges: ``(B+1,)`` similarity bin edges; ``hist_pos``, ``hist_neg``: ``(B,)`` counts
            of positive / negative pairs.
        intervals: ``{metric key: Interval}`` class-bootstrap intervals of the Evaluation's
            figures (``opis``, ``epsilon_opis_*``, ``calibration_global_far`` / ``_tar``, ...;
            empty without ``ci``). Keys whose table value came from the caller are dropped.
        groups: per-group rates at ``threshold`` (the Evaluation's ``groups``), or ``None``.
        group_opis: group OPIS (``group_consistency``) and ``group_opis_interval`` its
            interval, when present.
        score_scale: the scale of ``threshold``, ``thresholds`` and ``hist_edges``
            (``"cosine"``, or the run's scorer's, e.g. ``"z-score"``).
        scorer: the scorer's JSON record (:meth:`ReportRun.scorer_json`), or ``None``.
        detection: the run's DET data (:class:`~tcm.report.detection.RunDetection`), or
            ``None``.
    """

    name: str
    metrics: dict[str, float]
    sources: dict[str, str]
    threshold: float
    threshold_source: str
    num_samples: int
    num_classes: int
    thresholds: np.ndarray
    utility: np.ndarray
    grid_global_far: np.ndarray
    far_range: tuple[float, float]
    classes: np.ndarray
    class_sizes: np.ndarray
    class_names: np.ndarray
    num_excluded: int
    far: np.ndarray
    frr: np.ndarray
    global_far: float
    global_tar: float
    hist_edges: np.ndarray
    hist_pos: np.ndarray
    hist_neg: np.ndarray
    intervals: dict[str, Interval] = dataclasses.field(default_factory=dict)
    groups: GroupOperatingPoint | None = None
    group_opis: float | None = None
    group_opis_interval: Interval | None = None
    score_scale: str = "cosine"
    scorer: dict[str, Any] | None = None
    detection: RunDetection | None = None

    def group_far_log_ratio(self, target_far: float) -> np.ndarray:
        """``(G, G)`` ``log10(FAR_{g,h} / target_far)``: the colour values of the group FAR
        heatmap (``-inf`` for FAR 0, NaN without impostor pairs).

        Raises:
            ValueError: the run has no groups.
        """
        if self.groups is None:
            raise ValueError(f"run {self.name!r} has no groups")
        return far_log_ratio(self.groups.far_matrix, target_far)

    def groups_left_out(self) -> list[str]:
        """Groups whose FAR_g or FRR_g is NaN (no impostor or no genuine pairs): left out of
        the summaries."""
        if self.groups is None:
            return []
        bad = ~(np.isfinite(self.groups.far) & np.isfinite(self.groups.frr))
        return [str(g) for g in self.groups.groups[bad].tolist()]

    def groups_summary(self, target_far: float) -> dict[str, Any] | None:
        """JSON-serialisable group section (strict JSON via :func:`json_value`), or ``None``."""
        gop = self.groups
        if gop is None:
            return None
        return {
            "threshold": float(gop.threshold),
            "groups": [str(g) for g in gop.groups.tolist()],
            "num_genuine": json_value(gop.num_genuine),
            "num_impostor": json_value(gop.num_impostor),
            "far": json_value(gop.far),
            "frr": json_value(gop.frr),
            "far_matrix": json_value(gop.far_matrix),
            "far_log10_ratio": json_value(self.group_far_log_ratio(target_far)),
            "summary": json_value(dict(gop.summary)),
            "groups_left_out": self.groups_left_out(),
            "group_opis": json_value(self.group_opis),
            "intervals": {k: interval_json(v) for k, v in gop.intervals.items()},
            **scale_entry(gop.score_scale),
        }

    def far_exceeding(self, factor: float, target_far: float) -> int:
        """Number of classes whose ``FAR_c(t)`` exceeds ``factor * target_far``."""
        return int(np.count_nonzero(self.far > factor * target_far))

    def worst_classes(self, count: int = WORST_CLASSES) -> np.ndarray:
        """Positions (into ``classes``) of the ``count`` classes with the highest ``FAR_c``
        (ties in class order)."""
        return np.argsort(-self.far, kind="stable")[:count]

    def summary(self, target_far: float) -> dict[str, Any]:
        """JSON-serialisable summary (metrics, operating point, spread statistics, the worst
        classes by ``FAR_c`` with their names)."""

        def q(x: np.ndarray) -> dict[str, float]:
            return {
                "min": float(np.min(x)),
                "p5": float(np.percentile(x, 5)),
                "median": float(np.median(x)),
                "mean": float(np.mean(x)),
                "p95": float(np.percentile(x, 95)),
                "max": float(np.max(x)),
            }

        return {
            "name": self.name,
            "metrics": dict(self.metrics),
            "metric_sources": dict(self.sources),
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "num_excluded_classes": self.num_excluded,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "global_far": self.global_far,
            "global_tar": self.global_tar,
            "per_class_far": q(self.far),
            "per_class_frr": q(self.frr),
            "classes_far_above_2x_target": self.far_exceeding(2.0, target_far),
            "worst_classes_by_far": [
                {
                    "class": self.classes[j : j + 1].tolist()[0],
                    "name": str(self.class_names[j]),
                    "size": int(self.class_sizes[j]),
                    "far": float(self.far[j]),
                    "frr": float(self.frr[j]),
                }
                for j in self.worst_classes()
            ],
            "calibration_thresholds": [float(self.thresholds[0]), float(self.thresholds[-1])],
            "far_range": list(self.far_range),
            "intervals": {k: interval_json(v) for k, v in self.intervals.items()},
            "groups": self.groups_summary(target_far),
            **self._scoring_summary(),
        }

    def _scoring_summary(self) -> dict[str, Any]:
        """The keys a cosine run without DET data does not have (its JSON stays as it was):
        ``score_scale`` off the cosine scale, ``scorer``, ``detection``."""
        out: dict[str, Any] = dict(scale_entry(self.score_scale))
        if self.scorer is not None:
            out["scorer"] = json_value(self.scorer)
        if self.detection is not None:
            out["detection"] = json_value(self.detection.to_dict())
        return out


def class_display_names(classes: np.ndarray, class_names: Sequence[str] | None) -> np.ndarray:
    """Display names of class labels: ``class_names[c]`` for integer labels ``c`` when names are
    given, else the labels as text.

    Raises:
        ValueError: names given but a label is not an integer in ``[0, len(class_names))``.

    Example:
        >>> class_display_names(np.array([0, 2]), ["cat", "dog", "emu"]).tolist()
        ['cat', 'emu']
        >>> class_display_names(np.array(["a", "b"]), None).tolist()
        ['a', 'b']
    """
    labels = np.asarray(classes)
    if class_names is None:
        return np.asarray([str(c) for c in labels.tolist()], dtype=object)
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(
            f"class_names need integer labels (codes into class_names); got {labels.dtype} labels"
        )
    bad = labels[(labels < 0) | (labels >= len(class_names))]
    if bad.size:
        raise ValueError(
            f"label {int(bad[0])} has no entry in class_names ({len(class_names)} names)"
        )
    return np.asarray([class_names[int(c)] for c in labels.tolist()], dtype=object)


def _missing(section: str, how: str) -> ValueError:
    return ValueError(f"its Evaluation has no {section!r} section ({how})")


def _deployment(
    ev: Evaluation, threshold: float | None, target_far: float | None
) -> tuple[OperatingPoint, str]:
    if threshold is None and ev.calibration is None:
        threshold = ev.options.get("threshold")  # evaluated at a given threshold
    if threshold is not None:
        op = ev.operating_point
        if op is None:
            raise _missing(
                "operating_point", f"evaluate(..., threshold={threshold!r}) for a given threshold"
            )
        if op.threshold != threshold:
            raise ValueError(
                f"its Evaluation's operating point is at threshold {op.threshold!r}, the report's "
                f"threshold is {threshold!r}"
            )
        return op, "given"
    cal = ev.calibration
    if cal is None:
        raise _missing(
            "calibration", "evaluate(..., calibration_far=target_far), or give a threshold"
        )
    if cal.mode != "target_far" or (target_far is not None and cal.target_far != target_far):
        raise ValueError(
            f"its Evaluation was calibrated by {cal.mode} (target FAR {cal.target_far!r}), the "
            f"report calibrates for target FAR {target_far!r}"
        )
    return cal.operating_point, "calibrated"


def analyse_run(
    run: ReportRun,
    *,
    threshold: float | None = None,
    target_far: float | None = None,
    far_range: tuple[float, float] | None = None,
    ci: float | None = None,
    n_boot: int | None = None,
) -> RunAnalysis:
    """The report's numbers for one run, read from ``run.evaluation`` (no computation on pairs).

    Args:
        run: a run carrying an :class:`~tcm.metrics.Evaluation` (``ReportRun(name,
            evaluation=ev)`` or :meth:`~tcm.report.run.ReportRun.from_embeddings`).
        threshold: the report's deployment threshold (cosine similarity): per-class FAR/FRR come
            from ``evaluation.operating_point``, which must be at this threshold. ``None``: from
            ``evaluation.calibration`` (the threshold of a target global FAR), or, for an
            Evaluation without one, from the operating point at the threshold its ``options``
            record (``evaluate(..., threshold=t)``).
        target_far: if given (with ``threshold=None``), the calibration's target FAR must be it.
        far_range: if given, the consistency section's calibration range must be it.
        ci, n_boot: if ``ci`` is given, the Evaluation must carry intervals at this level (and
            with ``n_boot`` resamples, if given). Intervals present are read either way.

    The options only check an Evaluation computed elsewhere against the report's; one computed
    by :func:`~tcm.report.run.report_evaluation` for the report is read without them (its
    ``Evaluation.options`` are the report's).

    Per-group figures are read from ``evaluation.groups`` when present; they must be at the
    deployment threshold.

    Raises:
        ValueError: the run has no evaluation, the evaluation lacks a needed section (named) or
            was computed with other options, class names that do not fit the labels; the
            message starts with ``run '<name>': ``.

    Example:
        >>> import numpy as np
        >>> from tcm.metrics import evaluate
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat(np.arange(10), 8)
        >>> emb = rng.normal(size=(10, 16))[labels] + 0.5 * rng.normal(size=(80, 16))
        >>> ev = evaluate(emb, labels, ks=(1,), calibration_far=1e-2, bins=200)
        >>> a = analyse_run(ReportRun("demo", evaluation=ev), target_far=1e-2)
        >>> a.utility.shape, a.threshold_source, a.metrics["opis"] == ev.metrics()["opis"]
        ((10, 101), 'calibrated', True)
    """
    try:
        return _analyse(run, threshold, target_far, far_range, ci, n_boot)
    except ValueError as exc:
        raise ValueError(f"run {run.name!r}: {exc}") from exc


def _analyse(
    run: ReportRun,
    threshold: float | None,
    target_far: float | None,
    far_range: tuple[float, float] | None,
    ci: float | None = None,
    n_boot: int | None = None,
) -> RunAnalysis:
    ev = run.evaluation
    if ev is None:
        raise ValueError(
            "it has no Evaluation; use ReportRun.from_embeddings(...), ReportRun(name, "
            "evaluation=tcm.metrics.evaluate(...)) or write_report, which evaluates embeddings"
        )
    tc = ev.consistency
    if tc is None:
        raise _missing("consistency", "OPIS and the utility curves")
    if far_range is not None and tuple(tc.far_range) != tuple(far_range):
        raise ValueError(
            f"its Evaluation's calibration range is far_range={tc.far_range!r}, the report's is "
            f"{tuple(far_range)!r}"
        )
    hist = ev.histogram
    if hist is None:
        raise _missing("histogram", "evaluate(..., bins=200)")
    op, t_source = _deployment(ev, threshold, target_far)
    if not np.array_equal(op.classes, tc.classes):
        raise ValueError("its operating point and consistency sections cover different classes")

    table, sources = _metric_table(run.caller_metrics(), ev.metrics())
    _check_intervals(ev, ci, n_boot)
    intervals = {k: v for k, v in ev.intervals.items() if sources.get(k) != "caller"}
    gop = ev.groups
    if gop is not None and gop.threshold != op.threshold:
        raise ValueError(
            f"its Evaluation's group rates are at threshold {gop.threshold!r}, the deployment "
            f"threshold is {op.threshold!r}"
        )
    gc = ev.group_consistency

    return RunAnalysis(
        name=run.name,
        metrics=table,
        sources=sources,
        threshold=float(op.threshold),
        threshold_source=t_source,
        num_samples=ev.num_samples,
        num_classes=ev.num_classes,
        thresholds=np.asarray(tc.thresholds, dtype=np.float64),
        utility=np.asarray(tc.utility, dtype=np.float64),
        grid_global_far=np.asarray(tc.global_far, dtype=np.float64),
        far_range=(float(tc.far_range[0]), float(tc.far_range[1])),
        classes=np.asarray(tc.classes),
        class_sizes=np.asarray(tc.class_sizes),
        class_names=class_display_names(np.asarray(tc.classes), run.class_names),
        num_excluded=int(np.asarray(tc.excluded_classes).size),
        far=np.asarray(op.far, dtype=np.float64),
        frr=np.asarray(op.frr, dtype=np.float64),
        global_far=float(op.global_far),
        global_tar=float(op.global_tar),
        hist_edges=np.asarray(hist.edges, dtype=np.float64),
        hist_pos=np.asarray(hist.pos, dtype=np.float64),
        hist_neg=np.asarray(hist.neg, dtype=np.float64),
        intervals=intervals,
        groups=gop,
        group_opis=None if gc is None else float(gc.opis),
        group_opis_interval=None if gc is None else gc.intervals.get("opis"),
        score_scale=str(ev.options.get("score_scale", "cosine")),
        scorer=run.scorer_json(),
        detection=run.detection,
    )


def _metric_table(
    given: dict[str, float], computed: dict[str, float]
) -> tuple[dict[str, float], dict[str, str]]:
    """The table metrics (caller values first) and their sources (``caller`` / ``computed``)."""
    table: dict[str, float] = {}
    sources: dict[str, str] = {}
    for key in headline_keys():
        if key in given:
            table[key], sources[key] = given[key], "caller"
        elif key in computed:
            table[key], sources[key] = computed[key], "computed"
        elif metric_info(key).key == "epsilon_opis_{eps}":
            raise ValueError(f"its Evaluation has no {key!r} (evaluate(..., epsilons=(0.05, 0.1)))")
        else:
            section = metric_info(key).section
            raise _missing(section, f"{key!r}; or pass it in ReportRun(metrics=...)")
    for key, val in given.items():
        if key not in table:
            table[key], sources[key] = val, "caller"
    return table, sources


def _check_intervals(ev: Evaluation, ci: float | None, n_boot: int | None) -> None:
    if ci is None:
        return
    if not ev.intervals:
        raise _missing("intervals", f"evaluate(..., ci={ci!r}, n_boot={n_boot or 1000!r})")
    iv = next(iter(ev.intervals.values()))
    if iv.ci != ci or (n_boot is not None and iv.n_boot != n_boot):
        raise ValueError(
            f"its Evaluation's intervals are at ci={iv.ci!r} with n_boot={iv.n_boot!r}, the "
            f"report asks for ci={ci!r} with n_boot={n_boot!r}"
        )
