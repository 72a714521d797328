"""The report's output pinned byte for byte: ``index.html`` and ``report.json`` of fixed small
inputs against golden files in ``tests/data/report_golden/`` (and the set of file names).

The goldens were produced by the report code before it was split by idea (issue 20); any change
to the page or the JSON shows up here. Figures are replaced by one fixed PNG (their bytes depend
on matplotlib); the timestamp and the tcm version are masked. Regenerate deliberately with
``TCM_UPDATE_GOLDEN=1 pytest tests/test_report_golden.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import tcm
from tcm.metrics import calibration_transfer
from tcm.report import ReportRun, write_report
from test_report import make_data, ref_evaluation
from test_report_groups import make_data as make_group_data

_GOLDEN = Path(__file__).parent / "data" / "report_golden"
_TINY_PNG = b"\x89PNG\r\n\x1a\n" + b"tiny"
_UPDATE = os.environ.get("TCM_UPDATE_GOLDEN") == "1"


@pytest.fixture
def fixed_png(monkeypatch: pytest.MonkeyPatch) -> None:
    """One fixed PNG for every figure, in every report module that renders figures."""
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("tcm.report") and hasattr(mod, "figure_to_png"):
            monkeypatch.setattr(mod, "figure_to_png", lambda fig: _TINY_PNG)


def _mask(text: str) -> str:
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "<TIME>", text)
    return text.replace(f"tcm {tcm.__version__}", "tcm <VERSION>").replace(
        f'"tcm_version": "{tcm.__version__}"', '"tcm_version": "<VERSION>"'
    )


def _reference_runs() -> list[ReportRun]:
    """Brute-force float64 Evaluations (exact; no tcm.metrics pass): caller metrics, an extra
    column, class names, a single-sample class, names that need escaping."""
    x, y = make_data(n_classes=7, per_class=6, seed=3)
    x2, y2 = make_data(n_classes=6, per_class=5, noise=0.9, seed=4)
    y2 = y2.copy()
    y2[-1] = 9  # a class with one sample
    kw: dict[str, object] = {"target_far": 1e-2, "threshold": 0.25}
    return [
        ReportRun(
            "base <b>&",
            evaluation=ref_evaluation(x, y, **kw),  # type: ignore[arg-type]
            metrics={"recall_at_1": 0.5, "recall_at_2": 0.75},
            class_names=[f"class {c}" for c in range(7)],
        ),
        ReportRun("tcm", evaluation=ref_evaluation(x2, y2, **kw)),  # type: ignore[arg-type]
    ]


def _calibrated(out: Path) -> Path:
    return write_report(out, _reference_runs(), target_far=1e-2, title="Golden <calibrated>")


def _given_threshold(out: Path) -> Path:
    return write_report(out, _reference_runs(), threshold=0.25, target_far=1e-2)


def _groups_ci_transfer(out: Path) -> Path:
    """Real tcm.metrics: groups, class-bootstrap intervals, computed and given transfers."""
    xa, ya, ga = make_group_data(seed=0, noise=0.7)
    xb, yb, gb = make_group_data(seed=1, noise=1.0)
    xc, yc, _ = make_group_data(seed=2, noise=0.8)
    given = calibration_transfer(xa, ya, xc, yc, far=1e-2)
    runs = [
        ReportRun("fonts", xa, ya, groups=ga),
        ReportRun("scans", xb, yb, groups=gb),
        ReportRun("plain", xc, yc),
    ]
    transfer = [("fonts", "scans"), ("fonts*", "plain*", given)]
    return write_report(
        out, runs, target_far=1e-2, ci=0.9, n_boot=20, transfer=transfer, title="groups"
    )


_CASES: dict[str, Callable[[Path], Path]] = {
    "calibrated": _calibrated,
    "given_threshold": _given_threshold,
    "groups_ci_transfer": _groups_ci_transfer,
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_report_output_is_unchanged(case: str, tmp_path: Path, fixed_png: None) -> None:
    index = _CASES[case](tmp_path / "out")
    out = index.parent
    got = {
        "index.html": _mask(index.read_text(encoding="utf-8")),
        "report.json": _mask((out / "report.json").read_text(encoding="utf-8")),
        "files.txt": "\n".join(sorted(p.name for p in out.iterdir())) + "\n",
    }
    golden = _GOLDEN / case
    if _UPDATE:
        golden.mkdir(parents=True, exist_ok=True)
        for name, text in got.items():
            (golden / name).write_text(text, encoding="utf-8", newline="")
    for name, text in got.items():
        want = (golden / name).read_text(encoding="utf-8")
        assert text == want, f"{case}/{name} differs from the golden file"
    assert all((out / n).read_bytes() == _TINY_PNG for n in got["files.txt"].split() if ".png" in n)
