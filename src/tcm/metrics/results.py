"""Result values of the pair metrics (NumPy fields, ``to_dict()`` for JSON).

All thresholds are cosine **similarities**; a pair is accepted when ``similarity >= threshold``.
With a scorer (``scorer=`` of the metric functions, :mod:`tcm.scoring`) they are scores on the
scorer's ``score_scale`` instead; every result records that scale (``"cosine"`` by default, and
``to_dict()`` lists ``score_scale`` only when it is not ``"cosine"``, so cosine outputs are
unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "OperatingPoint",
    "SimilarityHistogram",
    "ThresholdConsistency",
    "jsonable",
    "scale_entry",
    "scale_label",
]


def jsonable(a: np.ndarray) -> list[Any]:
    """``a.tolist()`` (NumPy scalars -> Python ints / floats / strs; NaN / inf kept: files get
    tcm's JSON convention from :func:`tcm._io.json_value` when written)."""
    return list(np.asarray(a).tolist())


def scale_entry(score_scale: str) -> dict[str, str]:
    """``{"score_scale": ...}`` for a scorer's scale, nothing for ``"cosine"``."""
    return {} if score_scale == "cosine" else {"score_scale": score_scale}


def scale_label(scale: str) -> str:
    """How a threshold's scale is named in text: ``"cosine similarity"`` for cosines, else the
    scorer's ``score_scale`` (``"z-score"``, ``"shifted-cosine"``, ``"probability"``)."""
    return "cosine similarity" if scale == "cosine" else scale


@dataclass(frozen=True)
class ThresholdConsistency:
    """Result of :func:`threshold_consistency` (``T`` included classes, ``K`` thresholds).

    Attributes:
        opis: OPIS, mean over thresholds of the across-class variance of utility (unitless).
        epsilon_opis: ``{eps: eps-OPIS}`` for each requested epsilon.
        thresholds: ``(K,)`` float64 cosine-similarity thresholds ``t_min .. t_max``.
        far_range: ``(f_lo, f_hi)`` global FAR range that defined ``t_max`` / ``t_min``.
        classes: ``(T,)`` labels of the included classes (``n_c >= 2``), sorted.
        class_sizes: ``(T,)`` int64 ``n_c``.
        tar: ``(T, K)`` float64 per-class true acceptance rate ``TAR_c(t_k)``.
        trr: ``(T, K)`` float64 per-class true rejection rate ``TRR_c(t_k)``.
        utility: ``(T, K)`` float64 ``U_c(t_k)``, harmonic mean of TAR and TRR.
        excluded_classes: ``(E,)`` labels of classes with fewer than 2 samples.
        global_tar: ``(K,)`` fraction of all positive pairs accepted at ``t_k``.
        global_far: ``(K,)`` fraction of all negative pairs accepted at ``t_k``.
        num_positive_pairs: ``P = sum_c n_c (n_c - 1) / 2``.
        num_negative_pairs: ``M = N (N - 1) / 2 - P``.
        intervals: ``{"opis" | "epsilon_opis_{eps}": Interval}`` class-bootstrap intervals
            (with ``ci=``; :mod:`tcm.metrics.bootstrap`), else empty.
        score_scale: the scale of ``thresholds`` (``"cosine"``, or the scorer's).
    """

    opis: float
    epsilon_opis: dict[float, float]
    thresholds: np.ndarray
    far_range: tuple[float, float]
    classes: np.ndarray
    class_sizes: np.ndarray
    tar: np.ndarray
    trr: np.ndarray
    utility: np.ndarray
    excluded_classes: np.ndarray
    global_tar: np.ndarray
    global_far: np.ndarray
    num_positive_pairs: int
    num_negative_pairs: int
    intervals: dict[str, Any] = field(default_factory=dict)
    score_scale: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (arrays -> lists, epsilon keys -> strings)."""
        return {
            "opis": float(self.opis),
            "epsilon_opis": {str(k): float(v) for k, v in self.epsilon_opis.items()},
            "thresholds": jsonable(self.thresholds),
            "far_range": [float(self.far_range[0]), float(self.far_range[1])],
            "classes": jsonable(self.classes),
            "class_sizes": jsonable(self.class_sizes),
            "tar": jsonable(self.tar),
            "trr": jsonable(self.trr),
            "utility": jsonable(self.utility),
            "excluded_classes": jsonable(self.excluded_classes),
            "global_tar": jsonable(self.global_tar),
            "global_far": jsonable(self.global_far),
            "num_positive_pairs": int(self.num_positive_pairs),
            "num_negative_pairs": int(self.num_negative_pairs),
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
            **scale_entry(self.score_scale),
        }


@dataclass(frozen=True)
class OperatingPoint:
    """Result of :func:`operating_point` at one similarity threshold (``T`` included classes).

    Attributes:
        threshold: the cosine-similarity threshold ``t`` (pairs with ``s >= t`` are accepted).
        classes: ``(T,)`` labels of the included classes (``n_c >= 2``).
        class_sizes: ``(T,)`` int64 ``n_c``.
        tar, far, frr, trr: ``(T,)`` float64 per-class rates at ``t`` (``frr = 1 - tar``,
            ``trr = 1 - far``).
        global_tar: fraction of all positive pairs accepted.
        global_far: fraction of all negative pairs accepted.
        excluded_classes: ``(E,)`` labels of classes with fewer than 2 samples.
        intervals: ``{"global_far" | "global_tar": Interval}`` class-bootstrap intervals of the
            pooled rates (with ``ci=``), else empty.
        score_scale: the scale of ``threshold`` (``"cosine"``, or the scorer's).
    """

    threshold: float
    classes: np.ndarray
    class_sizes: np.ndarray
    tar: np.ndarray
    far: np.ndarray
    frr: np.ndarray
    trr: np.ndarray
    global_tar: float
    global_far: float
    excluded_classes: np.ndarray
    intervals: dict[str, Any] = field(default_factory=dict)
    score_scale: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (arrays -> lists)."""
        return {
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
            "threshold": float(self.threshold),
            "classes": jsonable(self.classes),
            "class_sizes": jsonable(self.class_sizes),
            "tar": jsonable(self.tar),
            "far": jsonable(self.far),
            "frr": jsonable(self.frr),
            "trr": jsonable(self.trr),
            "global_tar": float(self.global_tar),
            "global_far": float(self.global_far),
            "excluded_classes": jsonable(self.excluded_classes),
            **scale_entry(self.score_scale),
        }


@dataclass(frozen=True)
class SimilarityHistogram:
    """Result of :func:`similarity_histogram`: exact pair counts per cosine-similarity bin.

    Attributes:
        edges: ``(B + 1,)`` float64 bin edges, ``linspace(-1, 1, B + 1)``. Bin ``b`` is
            ``[edges[b], edges[b+1])``, the last bin is closed; similarities are clipped to
            ``[-1, 1]`` first (rounding can push them slightly outside).
        pos: ``(B,)`` int64 number of positive pairs (same label, ``i < j``) per bin.
        neg: ``(B,)`` int64 number of negative pairs per bin.
        score_scale: ``"cosine"``, or the scorer's scale; then the edges span ``[0, 1]``
            (probabilities) or the exact range of all pair scores (z-scores, shifted cosines).
    """

    edges: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    score_scale: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (arrays -> lists)."""
        return {
            "edges": jsonable(self.edges),
            "pos": jsonable(self.pos),
            "neg": jsonable(self.neg),
            **scale_entry(self.score_scale),
        }
