"""Evaluation metrics on (embeddings, labels), returning typed values with NumPy fields.

Embeddings are L2-normalised internally and compared by cosine similarity; a pair is accepted
when ``similarity >= threshold``.

* :func:`evaluate` -> :class:`Evaluation`: everything at once (one kNN pass, two pair passes).
* :class:`PairIndex` + :func:`pair_statistics` -> :class:`PairStats`: the exact count tables
  every pair metric is a view of (mergeable across shards / ``torch.distributed`` ranks).
* Single metrics: :func:`threshold_consistency`, :func:`opis`, :func:`epsilon_opis`,
  :func:`operating_point`, :func:`threshold_at_far`, :func:`similarity_histogram`,
  :func:`retrieval_metrics`; :func:`calibrate` chooses a threshold from :class:`PairStats`.
* The metric table (:mod:`tcm.metrics.vocabulary`): :func:`metric_info` -> :class:`MetricInfo`
  (display name, format, direction, bounds of each key), :func:`metric_label`,
  :func:`headline_keys`.
"""

from tcm.metrics._checks import MAX_TABLE_BYTES, MAX_THRESHOLDS
from tcm.metrics.bootstrap import (
    Interval,
    bootstrap_epsilon_opis,
    bootstrap_opis,
    bootstrap_rates,
    bootstrap_ratio,
    bootstrap_statistic,
    class_bootstrap_indices,
    class_bootstrap_weights,
    percentile_interval,
)
from tcm.metrics.calibration import Calibration, calibrate, spread
from tcm.metrics.consistency import (
    epsilon_opis,
    operating_point,
    opis,
    similarity_histogram,
    threshold_at_far,
    threshold_consistency,
)
from tcm.metrics.detection import DETCurve, act_dcf, cllr, det_curve, log_auc, min_dcf, werm
from tcm.metrics.distributed import Communicator, TorchCommunicator, default_communicator
from tcm.metrics.evaluation import DEFAULT_TAR_FARS, SECTIONS, Evaluation, evaluate
from tcm.metrics.groups import (
    GroupConsistency,
    GroupOperatingPoint,
    gini,
    group_consistency,
    group_operating_point,
    group_summary,
)
from tcm.metrics.results import OperatingPoint, SimilarityHistogram, ThresholdConsistency
from tcm.metrics.retrieval import RetrievalMetrics, retrieval_metrics
from tcm.metrics.statistics import Grid, PairIndex, PairStats, pair_statistics
from tcm.metrics.transfer import CalibrationTransfer, calibration_transfer
from tcm.metrics.verification import ROC, FoldAccuracy, Verification, verification
from tcm.metrics.vocabulary import (
    MetricInfo,
    far_key,
    headline_keys,
    metric_info,
    metric_label,
)

__all__ = [
    "DEFAULT_TAR_FARS",
    "MAX_TABLE_BYTES",
    "MAX_THRESHOLDS",
    "ROC",
    "SECTIONS",
    "Calibration",
    "CalibrationTransfer",
    "Communicator",
    "DETCurve",
    "Evaluation",
    "FoldAccuracy",
    "Grid",
    "GroupConsistency",
    "GroupOperatingPoint",
    "Interval",
    "MetricInfo",
    "OperatingPoint",
    "PairIndex",
    "PairStats",
    "RetrievalMetrics",
    "SimilarityHistogram",
    "ThresholdConsistency",
    "TorchCommunicator",
    "Verification",
    "act_dcf",
    "bootstrap_epsilon_opis",
    "bootstrap_opis",
    "bootstrap_rates",
    "bootstrap_ratio",
    "bootstrap_statistic",
    "calibrate",
    "calibration_transfer",
    "class_bootstrap_indices",
    "class_bootstrap_weights",
    "cllr",
    "default_communicator",
    "det_curve",
    "epsilon_opis",
    "evaluate",
    "far_key",
    "gini",
    "group_consistency",
    "group_operating_point",
    "group_summary",
    "headline_keys",
    "log_auc",
    "metric_info",
    "metric_label",
    "min_dcf",
    "operating_point",
    "opis",
    "pair_statistics",
    "percentile_interval",
    "retrieval_metrics",
    "similarity_histogram",
    "spread",
    "threshold_at_far",
    "threshold_consistency",
    "verification",
    "werm",
]
