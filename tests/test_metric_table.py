"""The one metric table (tcm.metrics.vocabulary): everything users see is derived from it.

The toy-metric test adds a metric in ONE place (a table entry + the line that computes it, here a
wrapper around ``Evaluation.metrics``) and finds it in ``log.csv``, ``metrics.json``, the
``tcm train`` table, ``tcm evaluate``'s table and JSON, and ``tcm report``'s metrics table.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import TINY_OVERRIDES
from tcm.cli.main import main
from tcm.metrics import Evaluation, evaluate, metric_info, metric_label
from tcm.metrics import vocabulary as V
from tcm.metrics.groups import SUMMARY_KEYS
from tcm.report import ReportRun, format_metric
from tcm.train.rundir import CsvLog

TOY = V.MetricInfo(
    "toy_score",
    "Toy score",
    "a toy metric of the tests",
    "retrieval",
    "fraction",
    fmt=".4f",
    higher_is_better=True,
    bounds=(0.0, 1.0),
    headline=("toy_score",),
)
TOY_VALUE = 0.25  # exact in binary: "0.2500" in every table


@pytest.fixture
def toy_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one place: the table entry and the line that computes the value."""
    monkeypatch.setattr(V, "METRICS", (*V.METRICS, TOY))
    computed = Evaluation.metrics

    def metrics(self: Evaluation) -> dict[str, float]:
        return {**computed(self), "toy_score": TOY_VALUE}

    monkeypatch.setattr(Evaluation, "metrics", metrics)


def test_toy_metric_reaches_csv_json_report_and_cli(
    toy_metric: None,
    tiny_data: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    overrides = [*TINY_OVERRIDES, "train.epochs=1", "train.tensorboard=false"]
    assert main(["train", *overrides, f"output_dir={run}"]) == 0
    train_out = capsys.readouterr().out
    # log.csv: a column after the other headline metrics, filled on every evaluation row
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    header = (run / "log.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["toy_score", "elapsed_s"]
    evals = [r for r in rows if r["kind"] in ("eval", "test")]
    assert evals and all(float(r["toy_score"]) == TOY_VALUE for r in evals)
    assert all(r["toy_score"] == "" for r in rows if r["kind"] == "train")
    # metrics.json and the `tcm train` table
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["best"]["metrics"]["toy_score"] == TOY_VALUE
    assert summary["test"]["metrics"]["toy_score"] == TOY_VALUE
    assert any(line.split()[:2] == ["Toy", "score"] for line in train_out.splitlines())
    # tcm evaluate: the table row and the JSON
    js = tmp_path / "ev.json"
    assert main(["evaluate", str(run), "--json", str(js)]) == 0
    ev_out = capsys.readouterr().out
    row = [line for line in ev_out.splitlines() if line.startswith("Toy score")]
    assert len(row) == 1 and row[0].split()[-1] == "0.2500"
    assert json.loads(js.read_text())["metrics"]["toy_score"] == TOY_VALUE
    # tcm report: a column of the metrics table with its label and format
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "<th>Toy score</th>" in html
    assert "<td>0.2500</td>" in html


def test_toy_metric_best_value_follows_its_direction(toy_metric: None, tmp_path: Path) -> None:
    from tcm.report import write_report

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 5)
    x = rng.normal(size=(6, 8))[y] + 0.5 * rng.normal(size=(30, 8))
    runs = [
        ReportRun("low", x, y, metrics={"toy_score": 0.125}),
        ReportRun("high", x, y, metrics={"toy_score": 0.5}),
    ]
    html = write_report(tmp_path / "rep", runs).read_text()
    assert "<span class=best>0.5000<sup>†</sup></span>" in html
    assert "<span class=best>0.1250" not in html
    # the table's bounds check the caller's value
    with pytest.raises(ValueError, match=r"'toy_score' must be a fraction in \[0, 1\]"):
        ReportRun("bad", x, y, metrics={"toy_score": 25.0}).caller_metrics()


def test_unknown_key_is_an_error_never_dropped(tmp_path: Path) -> None:
    with pytest.raises(V.UnknownMetricError, match=r"unknown metric key 'recal_at_1'; the metric"):
        metric_info("recal_at_1")
    with pytest.raises(ValueError, match="unknown metric key"):
        metric_info("tar_at_far_0.001")  # the FAR is written %.0e: tar_at_far_1e-03
    log = CsvLog(tmp_path / "log.csv")
    log.row(kind="eval", step=1, recall_at_1=0.5, recall_at_2=0.75)  # a metric outside the log
    with pytest.raises(V.UnknownMetricError, match="'recal_at_1'"):
        log.row(kind="eval", step=2, recal_at_1=0.5)
    log.close()
    rows = list(csv.DictReader((tmp_path / "log.csv").open(newline="")))
    assert [(r["step"], r["recall_at_1"]) for r in rows] == [("1", "0.5")]


@pytest.mark.parametrize(
    "key", ["recall_at_01", "recall_at_0", "epsilon_opis_0.10", "tar_at_far_1e-3", "group_x"]
)
def test_non_canonical_spellings_are_not_keys(key: str) -> None:
    assert V.find_metric(key) is None
    assert metric_label(key) == key  # a caller's own metric in a report is shown as given


# -- the table reproduces the rules it replaced (labels, report formats, evaluate's rows) -----


def _old_label(key: str) -> str:
    old = {
        "map_at_r": "MAP@R",
        "r_precision": "R-precision",
        "opis": "OPIS",
        "threshold": "threshold",
        "global_far": "global FAR",
        "global_tar": "global TAR",
        "calibration_threshold": "calibrated threshold",
        "calibration_global_far": "calibrated global FAR",
        "calibration_global_tar": "calibrated global TAR",
        "calibration_mean_utility": "calibrated mean utility",
        "calibration_far_max": "calibrated max class FAR",
        "calibration_classes_far_above_2x": "classes FAR > 2x",
    }
    if key in old:
        return old[key]
    for prefix, label in (
        ("recall_at_", "Recall@"),
        ("tar_at_far_", "TAR@FAR="),
        ("threshold_at_far_", "threshold@FAR="),
    ):
        if key.startswith(prefix):
            return label + key[len(prefix) :]
    if key.startswith("epsilon_opis_"):
        return f"eps-OPIS {float(key[len('epsilon_opis_') :]) * 100:g}%"
    return key


def _old_format(key: str, value: float) -> str:
    if key.startswith("recall_at_") or key in ("map_at_r", "r_precision"):
        return f"{value:.4f}"
    if key == "opis" or key.startswith("epsilon_opis_"):
        return f"{value:.3e}"
    return f"{value:.4g}"


def _old_shown(key: str) -> bool:
    return not key.startswith(("threshold_at_far", "group_")) or key == "group_opis"


@pytest.fixture(scope="module")
def every_key() -> dict[str, float]:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(8), 6)
    x = rng.normal(size=(8, 12))[y] + 0.7 * rng.normal(size=(48, 12))
    ev = evaluate(
        x,
        y,
        ks=(1, 2, 16),
        epsilons=(0.05, 0.1, 0.25),
        threshold=0.3,
        groups=np.arange(48) % 3,
        tar_fars=(1e-3, 0.1),
    )
    return ev.metrics()


def test_every_computed_key_is_in_the_table(every_key: dict[str, float]) -> None:
    sections = {metric_info(k).section for k in every_key}
    assert sections == {
        "retrieval",
        "consistency",
        "tar_at_far",
        "calibration",
        "operating_point",
        "groups",
    }
    assert {f"group_{k}" for k in SUMMARY_KEYS} <= set(every_key)
    for key, value in every_key.items():
        info = metric_info(key)
        assert metric_label(key) == _old_label(key)
        assert format_metric(key, value) == _old_format(key, value)
        assert info.in_console == _old_shown(key)
        lo, hi = info.bounds
        assert not np.isfinite(value) or lo <= value <= hi, key


def test_caller_values_checked_against_the_bounds() -> None:
    x, y = np.eye(4), np.array([0, 0, 1, 1])
    for metrics, why in (
        ({"recall_at_1": 81.0}, r"must be a fraction in \[0, 1\] \(not percent\); got 81.0"),
        ({"opis": -1e-3}, r"must be >= 0; got -0.001"),
        ({"tar_at_far_1e-03": 1.5}, r"must be a fraction in \[0, 1\]"),
        ({"calibration_threshold": 2.0}, r"must be in \[-1, 1\]; got 2.0"),
    ):
        with pytest.raises(ValueError, match=why):
            ReportRun("r", x, y, metrics=metrics).caller_metrics()
    ok: dict[str, Any] = {"R@1": 81.0, "my score": -3.0, "group_far_max_min": 2.5}
    assert ReportRun("r", x, y, metrics=ok).caller_metrics() == ok
