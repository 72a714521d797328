"""Self-contained HTML (+ PNG, JSON) report on the threshold consistency of embedding runs.

Convention: embeddings are L2-normalised, compared by cosine similarity; a pair is accepted when
``similarity >= threshold``.

Example:
    >>> import numpy as np, tempfile
    >>> from tcm.report import ReportRun, write_report
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(8), 6)
    >>> x = rng.normal(size=(8, 16))[y] + 0.6 * rng.normal(size=(48, 16))
    >>> write_report(tempfile.mkdtemp(), [ReportRun("demo", x, y)], target_far=1e-2).name
    'index.html'
"""

from tcm.report.compute import RunAnalysis, analyse_run
from tcm.report.run import METRIC_KEYS, ReportRun, canonical_metric_key
from tcm.report.writer import format_metric, write_report

__all__ = [
    "METRIC_KEYS",
    "ReportRun",
    "RunAnalysis",
    "analyse_run",
    "canonical_metric_key",
    "format_metric",
    "write_report",
]
