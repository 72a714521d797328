"""The DET data of one run: every pair scored once, :func:`tcm.metrics.det_curve` and
:func:`tcm.metrics.min_dcf` on the scores (the report's DET section).

A pair ``(i, j)``, ``i < j``, is genuine when both samples have one label; it is accepted when
``score >= t`` (cosine similarity, or the run's scorer's ``score_scale``). The DET curve is
exact (every distinct score is a threshold) and thinned to at most :data:`DET_POINTS` points
for the figure and ``report.json``; minDCF is the normalised minimum detection cost at
``P_target =`` :data:`DET_P_TARGET`, ``C_miss = C_fa = 1`` (NIST SRE convention). The scores
are held in memory (8 bytes a pair, a few times that while sorting), so runs with more than
:data:`DET_MAX_PAIRS` pairs are left out of the section (say so, no approximation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tcm._validation import ArrayLike
from tcm.metrics import det_curve, min_dcf

if TYPE_CHECKING:
    from tcm.scoring import Scorer

__all__ = ["DET_MAX_PAIRS", "DET_POINTS", "DET_P_TARGET", "RunDetection", "run_detection"]

#: ``P_target`` of the report's minDCF (``C_miss = C_fa = 1``).
DET_P_TARGET = 0.01
#: Runs with more pairs than this are left out of the DET section (memory: the pair scores).
DET_MAX_PAIRS = 20_000_000
#: Points kept of each DET curve (evenly spaced along the curve on probit axes).
DET_POINTS = 400
_ROWS = 512  # rows of the score matrix computed at once


@dataclass(frozen=True)
class RunDetection:
    """DET curve and minDCF of one run (see the module docstring).

    Attributes:
        score_scale: the scale of the scores (``"cosine"`` or the scorer's).
        num_genuine, num_impostor: the run's genuine / impostor pairs.
        min_dcf: normalised minDCF at :data:`DET_P_TARGET`, or ``None`` when the run has more
            than :data:`DET_MAX_PAIRS` pairs (not computed).
        fmr, fnmr: the thinned DET curve (false match / false non-match rates, FMR
            non-increasing), empty when not computed.
    """

    score_scale: str
    num_genuine: int
    num_impostor: int
    min_dcf: float | None
    fmr: np.ndarray
    fnmr: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict: minDCF and its cost parameters, pair counts, the curve."""
        return {
            "score_scale": self.score_scale,
            "p_target": DET_P_TARGET,
            "c_miss": 1.0,
            "c_fa": 1.0,
            "min_dcf": self.min_dcf,
            "num_genuine_pairs": self.num_genuine,
            "num_impostor_pairs": self.num_impostor,
            "fmr": self.fmr.tolist(),
            "fnmr": self.fnmr.tolist(),
        }


def all_pair_scores(
    embeddings: ArrayLike, labels: ArrayLike, scorer: Scorer | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, same)`` of every pair ``i < j`` (row-major), float64: the cosine of the
    L2-normalised embeddings, or the scorer's score of it (its state prepared once)."""
    from tcm.scoring.base import normalized

    x = normalized(embeddings).to(torch.float64)
    lab = np.asarray(labels)
    state = None if scorer is None or scorer.kind == "cosine" else scorer.prepare(x)
    n = int(x.shape[0])
    scores, same = [], []
    for i0 in range(0, n, _ROWS):
        i1 = min(n, i0 + _ROWS)
        block = x[i0:i1] @ x[i0:].T
        if state is not None:
            assert scorer is not None
            block = scorer.score_block(block, state[i0:i1], state[i0:])
        r, c = np.triu_indices(i1 - i0, 1, n - i0)
        scores.append(block.numpy()[r, c])
        same.append(lab[i0 + r] == lab[i0 + c])
    if not scores:
        return np.empty(0), np.empty(0, dtype=bool)
    return np.concatenate(scores), np.concatenate(same)


def _thin(fmr: np.ndarray, fnmr: np.ndarray, points: int) -> np.ndarray:
    """Indices of at most about ``points`` curve points, evenly spaced along the curve's length
    on probit axes (rates clipped to ``[1e-9, 1 - 1e-9]``), the two ends always kept."""
    from scipy.special import ndtri

    if fmr.shape[0] <= points:
        return np.arange(fmr.shape[0])
    px = ndtri(np.clip(fmr, 1e-9, 1 - 1e-9))
    py = ndtri(np.clip(fnmr, 1e-9, 1 - 1e-9))
    length = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(px), np.diff(py)))))
    step = max(float(length[-1]) / (points - 1), np.finfo(np.float64).tiny)
    keep = np.flatnonzero(np.diff(np.floor(length / step), prepend=-1.0) > 0)
    return np.unique(np.concatenate((keep, [fmr.shape[0] - 1])))


def run_detection(
    embeddings: ArrayLike, labels: ArrayLike, scorer: Scorer | None = None
) -> RunDetection:
    """:class:`RunDetection` of a run's embeddings and labels (scored by ``scorer``, default
    cosine). Needs both genuine and impostor pairs (as the run's evaluation does).

    Example:
        >>> import numpy as np
        >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> d = run_detection(x, [0, 0, 1, 1])
        >>> d.min_dcf, d.num_genuine, d.num_impostor
        (0.0, 2, 4)
    """
    lab = np.asarray(labels)
    n = int(lab.shape[0])
    _, sizes = np.unique(lab, return_counts=True)
    num_gen = int((sizes * (sizes - 1) // 2).sum())
    num_imp = n * (n - 1) // 2 - num_gen
    scale = "cosine" if scorer is None else scorer.score_scale
    if n * (n - 1) // 2 > DET_MAX_PAIRS:
        empty = np.empty(0)
        return RunDetection(scale, num_gen, num_imp, None, empty, empty)
    scores, same = all_pair_scores(embeddings, lab, scorer)
    curve = det_curve(scores, same)
    keep = _thin(curve.fmr, curve.fnmr, DET_POINTS)
    value = min_dcf(scores, same, p_target=DET_P_TARGET)
    return RunDetection(scale, num_gen, num_imp, value, curve.fmr[keep], curve.fnmr[keep])
