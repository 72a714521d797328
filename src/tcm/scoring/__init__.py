"""Post-hoc scoring: score normalisation and calibration fitted once, applied block by block.

A :class:`Scorer` is fitted on deployment-side data (a cohort, or a labelled calibration set
disjoint from what is evaluated), then maps cosine similarities to scores from per-sample state
(:meth:`Scorer.prepare`, :meth:`Scorer.score_block`, :meth:`Scorer.score`); ``save`` / ``load``
use safetensors with JSON metadata. ``score_scale`` says which scale thresholds are on.

* :class:`Cosine` (identity, the default), :class:`ASNorm` (S-norm / AS-norm; z-score scale);
* :class:`FSN` (fair score normalisation), :class:`GroupThresholds` (group oracle): shifted
  cosine, the global threshold applies;
* :class:`Platt`, :class:`Beta`, :class:`Isotonic`, :class:`FairCal`: probability at prior 0.5.

docs/scoring.md gives each formula.
"""

from tcm.scoring.base import SCORE_SCALES, Scorer, SideState, load_scorer
from tcm.scoring.calibrators import Beta, Isotonic, Platt
from tcm.scoring.cohort import ASNorm, Cosine
from tcm.scoring.fairness import FSN, FairCal, GroupThresholds

__all__ = [
    "FSN",
    "SCORE_SCALES",
    "ASNorm",
    "Beta",
    "Cosine",
    "FairCal",
    "GroupThresholds",
    "Isotonic",
    "Platt",
    "Scorer",
    "SideState",
    "load_scorer",
]
