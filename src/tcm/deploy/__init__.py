"""Deployment: the threshold contract, a guaranteed-FAR threshold, exact 1:N matching and FAR
drift monitoring (docs/deploy.md walks through calibrate -> save -> match -> monitor).

* :class:`Threshold` (:mod:`tcm.deploy.contract`): the JSON contract, ``save`` / ``load``
  (verified), ``check_applicable`` (dimension, scorer), ``load_scorer`` (the fitted scorer a
  threshold is on, SHA-256 checked);
* :func:`calibrate_threshold` (:mod:`tcm.deploy.guarantee`): point or guaranteed-FAR threshold
  (class bootstrap; Clopper-Pearson reported beside it), on the cosine or a saved scorer's scores;
* :class:`Matcher` (:mod:`tcm.deploy.matcher`): exact blocked matching, range / top-k / best,
  by cosine or through a fitted scorer;
* :func:`monitor` (:mod:`tcm.deploy.monitor`): per-window FAR / TAR, acceptance rate and
  score-distribution drift against the calibration set.
"""

from tcm.deploy.contract import ContractError, Threshold
from tcm.deploy.guarantee import calibrate_threshold, clopper_pearson_upper
from tcm.deploy.matcher import Matcher, MatchResult
from tcm.deploy.monitor import MonitorResult, calibration_reference, monitor

__all__ = [
    "ContractError",
    "MatchResult",
    "Matcher",
    "MonitorResult",
    "Threshold",
    "calibrate_threshold",
    "calibration_reference",
    "clopper_pearson_upper",
    "monitor",
]
