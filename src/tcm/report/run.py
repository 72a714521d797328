"""The input of a report: one named run, carrying (or evaluated into) one
:class:`~tcm.metrics.Evaluation`.

A *run* is the result of embedding one test set with one model. It reaches the report in one of
two forms:

* ``ReportRun(name, evaluation=ev)``: an :class:`~tcm.metrics.Evaluation` computed beforehand
  (e.g. by :func:`tcm.metrics.evaluate` with ``bins=200``); the report only reads it;
* ``ReportRun(name, embeddings, labels)``: ``(N, D)`` embeddings (any scale: L2-normalised and
  compared by cosine *similarity*) and ``(N,)`` labels; :func:`~tcm.report.write_report`
  evaluates it once with :func:`report_evaluation` (or call :meth:`ReportRun.from_embeddings`
  to evaluate it right away and drop the embeddings).

The caller may attach metrics it already has (e.g. Recall@1 from a separate query / gallery
evaluation) under the keys of :meth:`tcm.metrics.Evaluation.metrics`; they are shown as given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tcm._validation import ArrayLike
from tcm.metrics import Evaluation, evaluate
from tcm.metrics.bootstrap import check_bootstrap_args
from tcm.metrics.vocabulary import find_metric, headline_keys, metric_info
from tcm.report.detection import RunDetection, run_detection

if TYPE_CHECKING:
    from tcm.scoring import Scorer

__all__ = [
    "HISTOGRAM_BINS",
    "METRIC_KEYS",
    "NUM_THRESHOLDS",
    "ReportRun",
    "check_report_options",
    "report_evaluation",
]

#: Metric keys of the report's metrics table, in column order: the headline metrics of the metric
#: table (:func:`tcm.metrics.headline_keys`, when tcm was imported; display names, formats,
#: direction and bounds: :func:`tcm.metrics.metric_info`). ``recall_at_1`` and ``map_at_r`` are
#: fractions in ``[0, 1]`` (not percent); ``opis`` and the eps-OPIS values are mean squared
#: utility deviations (dimensionless, ``>= 0``; lower = more threshold-consistent).
METRIC_KEYS: tuple[str, ...] = headline_keys()
#: The report's eps values of eps-OPIS (the suffixes of the two ``epsilon_opis_*`` keys).
EPSILONS: tuple[float, ...] = (0.05, 0.10)
#: Number of thresholds of the utility curves / OPIS grid.
NUM_THRESHOLDS = 101
#: Bins of the similarity histogram over ``[-1, 1]``.
HISTOGRAM_BINS = 200


def check_report_options(
    threshold: float | None, target_far: float, far_range: Sequence[float]
) -> tuple[float | None, float, tuple[float, float]]:
    """Validate the report options; return them as floats.

    Args:
        threshold: deployment threshold, a cosine similarity in ``[-1, 1]``, or ``None``.
        target_far: target global FAR in ``(0, 1)``.
        far_range: ``(f_lo, f_hi)`` global-FAR calibration range, ``0 < f_lo < f_hi < 1``.

    Raises:
        ValueError: naming the option and the value.

    Example:
        >>> check_report_options(None, 1e-3, [0.01, 0.1])
        (None, 0.001, (0.01, 0.1))
    """
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError(f"threshold must be a float or None; got {threshold!r}")
        if not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
            raise ValueError(
                f"threshold is a cosine similarity and must lie in [-1, 1]; got {threshold}"
            )
    if isinstance(target_far, bool) or not isinstance(target_far, int | float):
        raise ValueError(f"target_far must be a float in (0, 1); got {target_far!r}")
    if not (math.isfinite(target_far) and 0.0 < target_far < 1.0):
        raise ValueError(f"target_far must lie in (0, 1); got {target_far}")
    try:
        lo, hi = (float(v) for v in far_range)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"far_range must be a pair (f_lo, f_hi); got {far_range!r}") from exc
    if not (0.0 < lo < hi < 1.0):
        raise ValueError(f"far_range must satisfy 0 < f_lo < f_hi < 1; got {far_range!r}")
    return (None if threshold is None else float(threshold)), float(target_far), (lo, hi)


def report_evaluation(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    threshold: float | None = None,
    target_far: float = 1e-3,
    far_range: tuple[float, float] = (1e-2, 1e-1),
    retrieval: bool = True,
    groups: ArrayLike | None = None,
    ci: float | None = None,
    n_boot: int = 1000,
    scorer: Scorer | None = None,
) -> Evaluation:
    """The one :func:`tcm.metrics.evaluate` call a report needs for one run.

    Sections: ``consistency`` (OPIS, eps-OPIS 5 % / 10 %, utility curves on
    :data:`NUM_THRESHOLDS` thresholds spanning ``far_range``), ``histogram``
    (:data:`HISTOGRAM_BINS` bins), the deployment threshold (``operating_point`` at
    ``threshold`` when given, else ``calibration`` at global FAR ``target_far``), ``groups``
    when ``groups`` is given (per-group and cross-group rates and summaries at the deployment
    threshold, group OPIS; counted in the same sweep) and, when ``retrieval``, Recall@1 / MAP@R
    (leave-one-out). With ``ci``, class-bootstrap intervals from the count tables (no further
    pass). One kNN pass (if retrieval) and at most two pair passes.

    Args:
        embeddings: ``(N, D)`` NumPy array or torch tensor, any float dtype.
        labels: ``(N,)`` integer or string class ids.
        threshold: cosine-similarity deployment threshold (accept when ``s >= t``) or ``None``.
        target_far: global FAR the threshold is calibrated for when ``threshold`` is ``None``.
        far_range: ``(f_lo, f_hi)`` global-FAR range of the utility curves / OPIS.
        retrieval: also compute Recall@1 and MAP@R.
        groups: optional ``(N,)`` group id per sample (data distribution / sub-population).
        ci, n_boot: confidence level in ``(0, 1)`` and number of class-bootstrap resamples of
            the intervals (``None``: no intervals).
        scorer: a fitted :class:`~tcm.scoring.Scorer`: every figure on its scores (thresholds
            and histogram on its ``score_scale``; ``threshold`` must then be ``None``).

    Raises:
        ValueError: bad options or inputs (from :func:`tcm.metrics.evaluate`), a threshold
            with a scorer off the cosine scale.
    """
    t, far, (lo, hi) = check_report_options(threshold, target_far, far_range)
    check_bootstrap_args(ci, n_boot)
    check_threshold_scale(t, scorer)
    include = ["consistency", "histogram"]
    include.append("calibration" if t is None else "operating_point")
    if retrieval:
        include.append("retrieval")
    if groups is not None:
        include.append("groups")
    return evaluate(
        embeddings,
        labels,
        ks=(1,),
        far_range=(lo, hi),
        num_thresholds=NUM_THRESHOLDS,
        epsilons=EPSILONS,
        calibration_far=far if t is None else None,
        threshold=t,
        bins=HISTOGRAM_BINS,
        groups=groups,
        ci=ci,
        n_boot=n_boot,
        include=include,
        scorer=scorer,
    )


def check_threshold_scale(threshold: float | None, scorer: Scorer | None) -> None:
    """ValueError for a given (cosine-similarity) threshold with a scorer whose scores are on
    another scale: the threshold would mean nothing there (calibrate per run instead)."""
    if threshold is not None and scorer is not None and scorer.score_scale != "cosine":
        raise ValueError(
            f"threshold {threshold!r} is a cosine similarity; a {scorer.kind} scorer's scores "
            f"are {scorer.score_scale}s: leave threshold=None (calibrated per run)"
        )


@dataclass
class ReportRun:
    """One run to put into a report: an :class:`~tcm.metrics.Evaluation`, or embeddings and
    labels to evaluate.

    Attributes:
        name: display name (any text; it is HTML-escaped in the report). Must be non-empty and
            unique within one report.
        embeddings: ``(N, D)``, NumPy array or torch tensor (CPU or CUDA), any float dtype;
            L2-normalised internally, compared by cosine similarity. ``None`` with
            ``evaluation``.
        labels: ``(N,)``, integer or string class ids (``None`` with ``evaluation``).
        metrics: optional already-computed metrics under the keys of
            :meth:`tcm.metrics.Evaluation.metrics`, e.g. ``{"recall_at_1": 0.81,
            "map_at_r": 0.42}``; they replace the computed values (marked † in the report).
            Other keys are shown as extra table columns, untranslated. Recall / MAP@R /
            R-precision values are fractions in ``[0, 1]``.
        evaluation: the run's precomputed :class:`~tcm.metrics.Evaluation`; it must hold the
            sections the report reads (``consistency``, ``histogram``, the deployment
            threshold, and ``retrieval`` unless ``metrics`` has ``recall_at_1`` and
            ``map_at_r``). Give either ``evaluation`` or ``embeddings`` + ``labels``.
        class_names: optional display names of the classes, ``class_names[c]`` for the integer
            label ``c`` (as in the embeddings files of ``tcm embed``); used in per-class tables.
        groups: optional ``(N,)`` group id per sample (a data distribution or sub-population:
            font family, camera, site; the ``groups`` array of ``tcm embed`` files), with
            embeddings only: the evaluation then adds per-group rates (the report's groups
            section). An Evaluation computed with ``groups=`` already carries them.
        scorer: optional fitted :class:`~tcm.scoring.Scorer` (with embeddings only): the run is
            evaluated on its scores (docs/scoring.md); thresholds, histograms and the DET
            section are then on its ``score_scale``.
        scorer_record: optional JSON record of the scorer shown in ``report.json`` (e.g. the
            CLI's, with the fit file and its SHA-256); default: kind, params, scale, convention.
        detection: the run's DET data (:func:`~tcm.report.detection.run_detection`), set by
            :meth:`from_embeddings` with ``det=True``; shown in the report's DET section.

    Raises:
        ValueError: empty or non-string name, neither or both of embeddings/labels and
            evaluation, embeddings not 2-D, labels not 1-D, a length mismatch, a non-finite or
            out-of-range metric value, ``class_names`` not a sequence of strings.

    Example:
        >>> import numpy as np
        >>> run = ReportRun("baseline", np.eye(4, 3), [0, 0, 1, 1], metrics={"recall_at_1": 0.5})
        >>> run.caller_metrics()
        {'recall_at_1': 0.5}
    """

    name: str
    embeddings: ArrayLike | None = None
    labels: ArrayLike | None = None
    metrics: dict[str, float] | None = None
    evaluation: Evaluation | None = None
    class_names: Sequence[str] | None = None
    groups: ArrayLike | None = None
    scorer: Scorer | None = None
    scorer_record: Mapping[str, Any] | None = None
    detection: RunDetection | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"ReportRun name must be a non-empty string; got {self.name!r}")
        has_data = self.embeddings is not None or self.labels is not None
        if self.evaluation is not None:
            if not isinstance(self.evaluation, Evaluation):
                raise ValueError(
                    f"run {self.name!r}: evaluation must be a tcm.metrics.Evaluation; got "
                    f"{type(self.evaluation).__name__}"
                )
            if has_data:
                raise ValueError(
                    f"run {self.name!r}: give either evaluation= or embeddings and labels, not both"
                )
            if self.groups is not None:
                raise ValueError(
                    f"run {self.name!r}: groups= goes with embeddings; an Evaluation carries its "
                    "own groups (evaluate(..., groups=...))"
                )
            if self.scorer is not None:
                raise ValueError(
                    f"run {self.name!r}: scorer= goes with embeddings; an Evaluation is already "
                    "scored (evaluate(..., scorer=...))"
                )
        elif self.embeddings is None or self.labels is None:
            raise ValueError(
                f"run {self.name!r}: needs embeddings and labels, or evaluation= (a "
                "tcm.metrics.Evaluation)"
            )
        else:
            self._check_shapes()
        if self.class_names is not None and (
            isinstance(self.class_names, str | bytes)
            or not isinstance(self.class_names, Sequence)
            or not all(isinstance(s, str) for s in self.class_names)
        ):
            raise ValueError(f"run {self.name!r}: class_names must be a sequence of strings")
        self._check_scorer()
        self.caller_metrics()  # validates the metric values

    def _check_scorer(self) -> None:
        from tcm.scoring import Scorer

        if self.scorer is not None and not (isinstance(self.scorer, Scorer) and self.scorer.fitted):
            raise ValueError(f"run {self.name!r}: scorer must be a fitted tcm.scoring.Scorer")
        if self.scorer_record is not None and not isinstance(self.scorer_record, Mapping):
            raise ValueError(f"run {self.name!r}: scorer_record must be a mapping (JSON record)")

    def scorer_json(self) -> dict[str, Any] | None:
        """The scorer's record for ``report.json`` (``scorer_record``, else kind, params,
        score scale and convention of ``scorer``), or ``None`` without either."""
        if self.scorer_record is not None:
            return dict(self.scorer_record)
        s = self.scorer
        if s is None:
            return None
        keys = ("kind", "params", "score_scale", "convention")
        return {k: v for k, v in s.metadata().items() if k in keys}

    def _check_shapes(self) -> None:
        emb_shape = _shape_of(self.embeddings)
        lab_shape = _shape_of(self.labels)
        if emb_shape is not None and len(emb_shape) != 2:
            raise ValueError(
                f"run {self.name!r}: embeddings must be 2-D of shape (N, D); got shape {emb_shape}"
            )
        self._check_per_sample("labels", lab_shape, emb_shape)
        if self.groups is not None:
            self._check_per_sample("groups", _shape_of(self.groups), emb_shape)

    def _check_per_sample(
        self, what: str, shape: tuple[int, ...] | None, emb_shape: tuple[int, ...] | None
    ) -> None:
        """ValueError unless ``shape`` (of ``what``, one value per sample) is ``(N,)`` with ``N``
        the number of embeddings (``None``: shape unknown, not checked)."""
        if shape is not None and len(shape) != 1:
            raise ValueError(
                f"run {self.name!r}: {what} must be 1-D of shape (N,); got shape {shape}"
            )
        if emb_shape is not None and shape is not None and emb_shape[0] != shape[0]:
            raise ValueError(
                f"run {self.name!r}: {emb_shape[0]} embeddings but {shape[0]} {what} "
                "(lengths must match)"
            )

    @classmethod
    def from_embeddings(
        cls,
        name: str,
        embeddings: ArrayLike,
        labels: ArrayLike,
        *,
        metrics: dict[str, float] | None = None,
        class_names: Sequence[str] | None = None,
        threshold: float | None = None,
        target_far: float = 1e-3,
        far_range: tuple[float, float] = (1e-2, 1e-1),
        groups: ArrayLike | None = None,
        ci: float | None = None,
        n_boot: int = 1000,
        scorer: Scorer | None = None,
        scorer_record: Mapping[str, Any] | None = None,
        det: bool = False,
    ) -> ReportRun:
        """Evaluate embeddings now (one :func:`report_evaluation`) and return the run holding
        the :class:`~tcm.metrics.Evaluation` (the embeddings are not kept).

        ``threshold``, ``target_far``, ``far_range``, ``ci`` and ``n_boot`` must be the ones
        later passed to :func:`~tcm.report.write_report`. Retrieval is skipped when ``metrics``
        already has ``recall_at_1`` and ``map_at_r``. ``groups`` (``(N,)``, one group id per
        sample) adds the per-group rates to the Evaluation. ``scorer``: evaluate on its scores
        (``scorer_record``: its JSON record for ``report.json``). ``det``: also score every
        pair once for the DET section (:func:`~tcm.report.detection.run_detection`).

        Raises:
            ValueError: as :class:`ReportRun` and :func:`report_evaluation`, prefixed with
                ``run '<name>': `` for errors of the evaluation.

        Example:
            >>> import numpy as np
            >>> rng = np.random.default_rng(0)
            >>> y = np.repeat(np.arange(6), 5)
            >>> x = rng.normal(size=(6, 8))[y] + 0.5 * rng.normal(size=(30, 8))
            >>> run = ReportRun.from_embeddings("demo", x, y, target_far=1e-2)
            >>> run.embeddings is None, run.evaluation.calibration.target_far
            (True, 0.01)
        """
        check = cls(
            name,
            embeddings,
            labels,
            metrics=metrics,
            class_names=class_names,
            groups=groups,
            scorer=scorer,
            scorer_record=scorer_record,
        )
        given = check.caller_metrics()
        try:
            ev = report_evaluation(
                embeddings,
                labels,
                threshold=threshold,
                target_far=target_far,
                far_range=far_range,
                retrieval=not all(
                    k in given for k in headline_keys() if metric_info(k).section == "retrieval"
                ),
                groups=groups,
                ci=ci,
                n_boot=n_boot,
                scorer=scorer,
            )
            detection = run_detection(embeddings, labels, scorer) if det else None
        except ValueError as exc:
            raise ValueError(f"run {name!r}: {exc}") from exc
        return cls(
            name,
            metrics=metrics,
            evaluation=ev,
            class_names=class_names,
            scorer_record=check.scorer_json(),
            detection=detection,
        )

    def caller_metrics(self) -> dict[str, float]:
        """The caller's metrics, validated, as Python floats (keys unchanged).

        Raises:
            ValueError: a non-string key, a non-numeric or non-finite value, or a value of a
                key of the metric table outside its bounds (:attr:`tcm.metrics.MetricInfo.bounds`:
                a recall / MAP@R / TAR value outside ``[0, 1]``, a negative OPIS value, ...).
        """
        if self.metrics is None:
            return {}
        if not isinstance(self.metrics, Mapping):
            raise ValueError(
                f"run {self.name!r}: metrics must be a dict of name -> float; got "
                f"{type(self.metrics).__name__}"
            )
        out: dict[str, float] = {}
        for key, value in self.metrics.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"run {self.name!r}: metric names must be strings; got {key!r}")
            if isinstance(value, bool):
                raise ValueError(
                    f"run {self.name!r}: metric {key!r} must be a number; got {value!r}"
                )
            try:
                val = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"run {self.name!r}: metric {key!r} must be a number; got {value!r}"
                ) from exc
            if not math.isfinite(val):
                raise ValueError(f"run {self.name!r}: metric {key!r} is not finite: {val}")
            info = find_metric(key)
            why = None if info is None else info.bounds_error(val)
            if why is not None:
                raise ValueError(f"run {self.name!r}: metric {key!r} {why}")
            out[key] = val
        return out


def _shape_of(x: Any) -> tuple[int, ...] | None:
    """Shape of an array/tensor, or of a nested sequence; ``None`` if it cannot be told cheaply."""
    shape = getattr(x, "shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    if isinstance(x, list | tuple):
        if len(x) == 0:
            return (0,)
        first = x[0]
        if isinstance(first, list | tuple):
            return (len(x), len(first))
        return (len(x),)
    return None
