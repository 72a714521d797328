"""Self-contained HTML (+ PNG, JSON) report on the threshold consistency of embedding runs.

Convention: embeddings are L2-normalised, compared by cosine similarity; a pair is accepted when
``similarity >= threshold``. Each run is one :class:`tcm.metrics.Evaluation` (given, or computed
once from embeddings); metric keys are those of :meth:`tcm.metrics.Evaluation.metrics`.

Example:
    >>> import numpy as np, tempfile
    >>> from tcm.report import ReportRun, write_report
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(8), 6)
    >>> x = rng.normal(size=(8, 16))[y] + 0.6 * rng.normal(size=(48, 16))
    >>> write_report(tempfile.mkdtemp(), [ReportRun("demo", x, y)], target_far=1e-2).name
    'index.html'
    >>> from tcm.metrics import evaluate
    >>> ev = evaluate(x, y, ks=(1,), calibration_far=1e-2, bins=200)
    >>> write_report(tempfile.mkdtemp(), [ReportRun("demo", evaluation=ev)], target_far=1e-2).name
    'index.html'
"""

from tcm.report.compute import RunAnalysis, analyse_run
from tcm.report.run import METRIC_KEYS, ReportRun, report_evaluation
from tcm.report.text import format_metric
from tcm.report.transfer import TransferRow, transfer_rows
from tcm.report.writer import write_report

__all__ = [
    "METRIC_KEYS",
    "ReportRun",
    "RunAnalysis",
    "TransferRow",
    "analyse_run",
    "format_metric",
    "report_evaluation",
    "transfer_rows",
    "write_report",
]
