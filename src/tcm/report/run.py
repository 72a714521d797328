"""The input of a report: one named embedding run, plus the names of the metrics it can carry.

A *run* is the result of embedding one test set with one model: an ``(N, D)`` matrix of
embeddings (any scale: they are L2-normalised internally and compared by cosine *similarity*) and
the ``(N,)`` class labels. The caller may attach metrics it has already computed (for example
Recall@1 from a separate query/gallery evaluation); the report computes only the missing ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tcm._validation import ArrayLike

__all__ = [
    "METRIC_KEYS",
    "ReportRun",
    "canonical_metric_key",
]

#: Canonical metric keys shown in the report's metrics table, in column order.
#: ``R@1`` and ``MAP@R`` are fractions in ``[0, 1]`` (not percent); ``OPIS`` and the ε-OPIS values
#: are mean squared utility deviations (dimensionless, ``>= 0``; lower = more threshold-consistent).
METRIC_KEYS: tuple[str, ...] = ("R@1", "MAP@R", "OPIS", "eps-OPIS@5%", "eps-OPIS@10%")

# Accepted spellings (compared after lower-casing and removing spaces, "_", "-" and "ε").
_ALIASES: dict[str, str] = {
    "r@1": "R@1",
    "recall@1": "R@1",
    "recallat1": "R@1",
    "recall1": "R@1",
    "map@r": "MAP@R",
    "mapatr": "MAP@R",
    "mapr": "MAP@R",
    "opis": "OPIS",
    "epsopis@5%": "eps-OPIS@5%",
    "epsopis@0.05": "eps-OPIS@5%",
    "epsopis5%": "eps-OPIS@5%",
    "epsilonopis@5%": "eps-OPIS@5%",
    "epsilonopis@0.05": "eps-OPIS@5%",
    "opis@5%": "eps-OPIS@5%",
    "epsopis0.05": "eps-OPIS@5%",
    "epsilonopis0.05": "eps-OPIS@5%",
    "epsopis@10%": "eps-OPIS@10%",
    "epsopis@0.1": "eps-OPIS@10%",
    "epsopis@0.10": "eps-OPIS@10%",
    "epsopis10%": "eps-OPIS@10%",
    "epsilonopis@10%": "eps-OPIS@10%",
    "epsilonopis@0.1": "eps-OPIS@10%",
    "epsilonopis@0.10": "eps-OPIS@10%",
    "opis@10%": "eps-OPIS@10%",
    "epsopis0.1": "eps-OPIS@10%",
    "epsopis0.10": "eps-OPIS@10%",
    "epsilonopis0.1": "eps-OPIS@10%",
    "epsilonopis0.10": "eps-OPIS@10%",
}

_FRACTION_KEYS = ("R@1", "MAP@R")


def canonical_metric_key(key: str) -> str:
    """Map a metric name to its canonical key in :data:`METRIC_KEYS`, or return it unchanged.

    Matching ignores case, spaces, ``_``, ``-`` and the letter ``ε``.

    Example:
        >>> canonical_metric_key("recall@1"), canonical_metric_key("epsilon_opis@0.05")
        ('R@1', 'eps-OPIS@5%')
        >>> canonical_metric_key("R@2")
        'R@2'
    """
    norm = re.sub(r"[\s_\-ε]", "", key.lower())
    return _ALIASES.get(norm, key)


@dataclass
class ReportRun:
    """One embedding run to put into a report.

    Attributes:
        name: display name (any text; it is HTML-escaped in the report). Must be non-empty and
            unique within one report.
        embeddings: shape ``(N, D)``, NumPy array or torch tensor (CPU or CUDA), any float dtype;
            L2-normalised internally, compared by cosine similarity.
        labels: shape ``(N,)``, integer or string class ids.
        metrics: optional already-computed metrics, e.g. ``{"R@1": 0.81, "MAP@R": 0.42}``.
            Keys are matched to :data:`METRIC_KEYS` with :func:`canonical_metric_key`; other keys
            are shown as extra table columns. ``R@1``/``MAP@R`` are fractions in ``[0, 1]``.
            Missing table metrics are computed by the report with :mod:`tcm.metrics`.

    Raises:
        ValueError: empty or non-string name, embeddings not 2-D, labels not 1-D, length mismatch
            between embeddings and labels, non-finite or out-of-range metric values, or two keys
            naming the same metric.

    Example:
        >>> import numpy as np
        >>> run = ReportRun("baseline", np.eye(4, 3), [0, 0, 1, 1], metrics={"recall@1": 0.5})
        >>> run.normalized_metrics()
        {'R@1': 0.5}
    """

    name: str
    embeddings: ArrayLike
    labels: ArrayLike
    metrics: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"ReportRun name must be a non-empty string; got {self.name!r}")
        emb_shape = _shape_of(self.embeddings)
        lab_shape = _shape_of(self.labels)
        if emb_shape is not None and len(emb_shape) != 2:
            raise ValueError(
                f"run {self.name!r}: embeddings must be 2-D of shape (N, D); got shape {emb_shape}"
            )
        if lab_shape is not None and len(lab_shape) != 1:
            raise ValueError(
                f"run {self.name!r}: labels must be 1-D of shape (N,); got shape {lab_shape}"
            )
        if emb_shape is not None and lab_shape is not None and emb_shape[0] != lab_shape[0]:
            raise ValueError(
                f"run {self.name!r}: {emb_shape[0]} embeddings but {lab_shape[0]} labels "
                "(lengths must match)"
            )
        self.normalized_metrics()  # validates the metric values

    def normalized_metrics(self) -> dict[str, float]:
        """Return the caller's metrics under canonical keys, validated, as Python floats.

        Raises:
            ValueError: a non-numeric or non-finite value, ``R@1``/``MAP@R`` outside ``[0, 1]``,
                a negative OPIS value, or two keys that name the same metric.
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
            canon = canonical_metric_key(key)
            if canon in out:
                raise ValueError(f"run {self.name!r}: metric {canon!r} given twice (as {key!r})")
            try:
                val = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"run {self.name!r}: metric {key!r} must be a number; got {value!r}"
                ) from exc
            if not math.isfinite(val):
                raise ValueError(f"run {self.name!r}: metric {key!r} is not finite: {val}")
            if canon in _FRACTION_KEYS and not 0.0 <= val <= 1.0:
                raise ValueError(
                    f"run {self.name!r}: metric {key!r} must be a fraction in [0, 1] (not "
                    f"percent); got {val}"
                )
            if canon in METRIC_KEYS and "OPIS" in canon and val < 0.0:
                raise ValueError(f"run {self.name!r}: metric {key!r} must be >= 0; got {val}")
            out[canon] = val
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
