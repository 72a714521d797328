"""Evaluation metrics on (embeddings, labels) returning dataclasses with NumPy fields.

Embeddings are L2-normalised internally and compared by cosine similarity; a pair is accepted
when ``similarity >= threshold``. See :mod:`tcm.metrics.consistency` for OPIS / eps-OPIS.
"""

from tcm.metrics.consistency import (
    OperatingPoint,
    SimilarityHistogram,
    ThresholdConsistency,
    epsilon_opis,
    operating_point,
    opis,
    similarity_histogram,
    threshold_at_far,
    threshold_consistency,
)

__all__ = [
    "OperatingPoint",
    "SimilarityHistogram",
    "ThresholdConsistency",
    "epsilon_opis",
    "operating_point",
    "opis",
    "similarity_histogram",
    "threshold_at_far",
    "threshold_consistency",
]

try:  # retrieval metrics live in a sibling module written separately
    from tcm.metrics.retrieval import RetrievalMetrics, retrieval_metrics

    __all__ += ["RetrievalMetrics", "retrieval_metrics"]
except ImportError:  # pragma: no cover - until retrieval.py exists
    pass
