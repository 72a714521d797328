"""Numbers behind the report: one :class:`RunAnalysis` per :class:`~tcm.report.run.ReportRun`.

Everything is computed with the scalable public functions of :mod:`tcm.metrics` (blocked, never
an ``N x N`` similarity matrix held here):

* ``threshold_consistency`` -> per-class utility ``U_c(t)`` on the calibration grid, OPIS,
  ε-OPIS (5 %, 10 %);
* ``threshold_at_far`` -> the deployment threshold ``t`` for a target global FAR (unless given);
* ``operating_point`` -> per-class ``FAR_c(t)``, ``FRR_c(t)`` at that threshold;
* ``similarity_histogram`` -> positive / negative cosine-similarity counts;
* ``retrieval_metrics`` -> R@1 and MAP@R, only when the caller did not supply them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcm.report.run import METRIC_KEYS, ReportRun

__all__ = ["RunAnalysis", "analyse_run"]

_EPSILONS = {"eps-OPIS@5%": 0.05, "eps-OPIS@10%": 0.10}


@dataclass
class RunAnalysis:
    """Everything the report shows about one run (NumPy arrays, cosine-similarity units).

    Attributes:
        name: the run's display name (not escaped).
        metrics: table metrics under canonical keys (:data:`~tcm.report.run.METRIC_KEYS` first,
            then any extra caller keys).
        sources: for every key of ``metrics``: ``"caller"`` or ``"computed"``.
        threshold: deployment threshold ``t`` (cosine similarity; accepted when ``s >= t``).
        threshold_source: ``"given"`` or ``"calibrated"`` (global FAR = ``target_far``).
        num_samples, num_classes: ``N`` and the number of distinct labels.
        thresholds: ``(K,)`` calibration grid (increasing similarities).
        utility: ``(T, K)`` per-class utility ``U_c(t_k)`` of the ``T`` included classes.
        grid_global_far: ``(K,)`` global FAR at each grid threshold.
        far_range: the calibration range ``(f_lo, f_hi)`` of global FAR.
        classes: ``(T,)`` included class labels; ``class_sizes``: ``(T,)`` their sizes.
        num_excluded: classes with fewer than 2 samples (not in ``utility``/``far``/``frr``).
        far, frr: ``(T,)`` per-class ``FAR_c(t)`` and ``FRR_c(t)`` at ``threshold``.
        global_far, global_tar: global FAR and TAR at ``threshold``.
        hist_edges: ``(B+1,)`` similarity bin edges; ``hist_pos``, ``hist_neg``: ``(B,)`` counts
            of positive / negative pairs.
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
    num_excluded: int
    far: np.ndarray
    frr: np.ndarray
    global_far: float
    global_tar: float
    hist_edges: np.ndarray
    hist_pos: np.ndarray
    hist_neg: np.ndarray

    def far_exceeding(self, factor: float, target_far: float) -> int:
        """Number of classes whose ``FAR_c(t)`` exceeds ``factor * target_far``."""
        return int(np.count_nonzero(self.far > factor * target_far))

    def summary(self, target_far: float) -> dict[str, Any]:
        """JSON-serialisable summary (metrics, operating point, spread statistics)."""

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
            "calibration_thresholds": [float(self.thresholds[0]), float(self.thresholds[-1])],
            "far_range": list(self.far_range),
        }


def _import_metrics() -> Any:
    try:
        import tcm.metrics as metrics
    except ImportError as exc:  # pragma: no cover - only while the package is incomplete
        raise RuntimeError(f"tcm.report needs tcm.metrics, which failed to import: {exc}") from exc
    return metrics


def _lookup_eps(values: Any, eps: float) -> float:
    for key, val in dict(values).items():
        if math.isclose(float(key), eps, rel_tol=1e-9, abs_tol=1e-12):
            return float(val)
    raise KeyError(eps)


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def analyse_run(
    run: ReportRun,
    *,
    threshold: float | None,
    target_far: float,
    far_range: tuple[float, float],
    num_thresholds: int = 101,
    bins: int = 200,
) -> RunAnalysis:
    """Compute the report's numbers for one run (see the module docstring for the formulas).

    Args:
        run: the run (embeddings ``(N, D)``, labels ``(N,)``, optional known metrics).
        threshold: cosine-similarity threshold to evaluate per-class FAR/FRR at, or ``None`` to
            calibrate it per run as ``threshold_at_far(embeddings, labels, target_far)``.
        target_far: target global FAR used for calibration.
        far_range: global-FAR calibration range of the utility curves / OPIS.

    Raises:
        ValueError: bad embeddings/labels (from :mod:`tcm.metrics`), re-raised with the run name.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat(np.arange(10), 8)
        >>> emb = rng.normal(size=(10, 16))[labels] + 0.5 * rng.normal(size=(80, 16))
        >>> a = analyse_run(ReportRun("demo", emb, labels), threshold=None, target_far=1e-2,
        ...                 far_range=(1e-2, 1e-1))
        >>> a.utility.shape
        (10, 101)
    """
    metrics = _import_metrics()
    emb, labels = run.embeddings, run.labels
    given = run.normalized_metrics()
    try:
        tc = metrics.threshold_consistency(
            emb,
            labels,
            far_range=far_range,
            num_thresholds=num_thresholds,
            epsilons=tuple(_EPSILONS.values()),
        )
        if threshold is None:
            t = float(metrics.threshold_at_far(emb, labels, far=target_far))
            t_source = "calibrated"
        else:
            t = float(threshold)
            t_source = "given"
        op = metrics.operating_point(emb, labels, t)
        hist = metrics.similarity_histogram(emb, labels, bins=bins)
        need_retrieval = "R@1" not in given or "MAP@R" not in given
        ret = metrics.retrieval_metrics(emb, labels, ks=(1,)) if need_retrieval else None
    except ValueError as exc:
        raise ValueError(f"run {run.name!r}: {exc}") from exc

    computed: dict[str, float] = {"OPIS": float(tc.opis)}
    for key, eps in _EPSILONS.items():
        computed[key] = _lookup_eps(tc.epsilon_opis, eps)
    if ret is not None:
        computed["R@1"] = float(dict(ret.recall_at_k)[1])
        computed["MAP@R"] = float(ret.map_at_r)

    table: dict[str, float] = {}
    sources: dict[str, str] = {}
    for key in METRIC_KEYS:
        if key in given:
            table[key], sources[key] = given[key], "caller"
        else:
            table[key], sources[key] = computed[key], "computed"
    for key, val in given.items():
        if key not in table:
            table[key], sources[key] = val, "caller"

    labels_np = _np(labels)
    num_classes = int(np.unique(labels_np).size)
    op_classes = _np(op.classes)
    tc_classes = _np(tc.classes)
    if op_classes.shape != tc_classes.shape or not np.array_equal(op_classes, tc_classes):
        raise RuntimeError(  # pragma: no cover - a tcm.metrics contract violation
            f"run {run.name!r}: threshold_consistency and operating_point disagree on the "
            "included classes"
        )
    return RunAnalysis(
        name=run.name,
        metrics=table,
        sources=sources,
        threshold=t,
        threshold_source=t_source,
        num_samples=int(labels_np.shape[0]),
        num_classes=num_classes,
        thresholds=_np(tc.thresholds).astype(np.float64),
        utility=_np(tc.utility).astype(np.float64),
        grid_global_far=_np(tc.global_far).astype(np.float64),
        far_range=(float(far_range[0]), float(far_range[1])),
        classes=tc_classes,
        class_sizes=_np(tc.class_sizes),
        num_excluded=int(_np(tc.excluded_classes).size),
        far=_np(op.far).astype(np.float64),
        frr=_np(op.frr).astype(np.float64),
        global_far=float(op.global_far),
        global_tar=float(op.global_tar),
        hist_edges=_np(hist.edges).astype(np.float64),
        hist_pos=_np(_field(hist, "pos", "pos_counts", "positive")).astype(np.float64),
        hist_neg=_np(_field(hist, "neg", "neg_counts", "negative")).astype(np.float64),
    )


def _field(obj: Any, *names: str) -> Any:
    """First attribute of ``obj`` among ``names`` (histogram field names vary in wording)."""
    for name in names:
        if hasattr(obj, name):
            return getattr(obj, name)
    raise AttributeError(f"{type(obj).__name__} has none of the fields {names}")
