"""tcm.report: the groups section (cross-group FAR heatmap, per-group table, summaries), the
class-bootstrap intervals (table text, OPIS error bars), the calibration-transfer table and the
``tcm report --groups --ci --n-boot --transfer`` flags.

Every number is checked against the :class:`~tcm.metrics.Evaluation` /
:func:`~tcm.metrics.calibration_transfer` it must come from (those are checked against brute
force in the metrics tests); passes over the pairs are made to fail where the report must only
read. Comparisons of numbers read from an Evaluation are exact (the report copies them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tcm.metrics.statistics as statistics_mod
import tcm.report.run as report_run_mod
from tcm.cli.main import main
from tcm.metrics import Evaluation, calibration_transfer, evaluate, group_operating_point
from tcm.report import ReportRun, format_metric, plots, transfer_rows, write_report
from tcm.report import sections as sections_mod

_DIM = 12
_TARGET = 1e-2
_GROUP_NAMES = np.array(["DejaVu", "STIX", "cm"])
_TINY_PNG = b"\x89PNG\r\n\x1a\n" + b"tiny"


def make_data(
    seed: int = 0, noise: float = 0.7, n_classes: int = 20, per_class: int = 6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    x = rng.normal(size=(n_classes, _DIM))[y] + noise * rng.normal(size=(y.size, _DIM))
    g = _GROUP_NAMES[np.arange(y.size) % 3]
    return x.astype(np.float32), y, g


def report_eval(x: np.ndarray, y: np.ndarray, g: np.ndarray | None, **kw: Any) -> Evaluation:
    """An Evaluation with the sections the report reads (as ``report_evaluation`` makes it)."""
    return evaluate(
        x,
        y,
        ks=(1,),
        epsilons=(0.05, 0.10),
        calibration_far=kw.pop("calibration_far", _TARGET),
        bins=200,
        groups=g,
        include=kw.pop(
            "include", ["consistency", "histogram", "calibration", "retrieval", "groups"]
        ),
        **kw,
    )


@pytest.fixture
def fast_png(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sections_mod, "figure_to_png", lambda fig: _TINY_PNG)


class _Spy:
    """Wrap a function, recording each call's arguments and result."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.fn(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out


def read_json(index: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((index.parent / "report.json").read_text())
    return data


def section(html: str, start: str, end: str = "<h2>") -> str:
    i = html.index(start)
    j = html.find(end, i + len(start))
    return html[i : j if j >= 0 else len(html)]


def from_json(v: Any) -> float:
    """Inverse of the report's strict-JSON floats (None -> NaN, "inf" -> inf)."""
    if v is None:
        return math.nan
    return float(v)


# --------------------------------------------------------------------------------------------
# Groups: heatmap values, tables, summaries
# --------------------------------------------------------------------------------------------


def test_heatmap_values_are_log_far_over_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_passes: Any
) -> None:
    x, y, g = make_data()
    ev = _eval_before_patches(no_passes, x, y, g)
    spy = _Spy(plots.plot_group_far_heatmap)
    monkeypatch.setattr(sections_mod, "plot_group_far_heatmap", spy)
    index = write_report(tmp_path, [ReportRun("r", evaluation=ev)], target_far=_TARGET)
    assert ev.groups is not None and ev.calibration is not None
    expect = np.log10(ev.groups.far_matrix / _TARGET)
    ((args, kwargs, fig),) = spy.calls
    assert list(args[0]) == ev.groups.groups.tolist()
    np.testing.assert_array_equal(args[1], ev.groups.far_matrix)
    assert kwargs["target_far"] == _TARGET and kwargs["threshold"] == ev.calibration.threshold
    (image,) = fig.axes[0].images
    shown = np.ma.filled(image.get_array(), np.nan)
    finite = np.isfinite(expect)
    assert finite.all()  # FAR > 0 in every cell of this data
    np.testing.assert_array_equal(shown[finite], expect[finite])
    norm = image.norm
    assert norm.vmin == -norm.vmax  # diverging, centred at 0 = on target
    texts = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
        for t in fig.axes[0].texts
    }
    for (r, c), text in texts.items():
        assert text == f"{ev.groups.far_matrix[r, c]:.1e}"
    d = read_json(index)["runs"][0]["groups"]
    np.testing.assert_array_equal(np.array(d["far_log10_ratio"], dtype=np.float64), expect)
    np.testing.assert_array_equal(np.array(d["far_matrix"], dtype=np.float64), ev.groups.far_matrix)
    assert d["groups"] == ["DejaVu", "STIX", "cm"] and d["threshold"] == ev.calibration.threshold


def test_group_table_and_summaries(tmp_path: Path, no_passes: Any, fast_png: None) -> None:
    x, y, g = make_data()
    ev = _eval_before_patches(no_passes, x, y, g, ci=0.9, n_boot=40)
    index = write_report(
        tmp_path, [ReportRun("r", evaluation=ev)], target_far=_TARGET, ci=0.9, n_boot=40
    )
    html = index.read_text()
    body = section(html, "Groups (data distributions)")
    gop = ev.groups
    assert gop is not None
    rows = re.findall(r"<tr><td>(DejaVu|STIX|cm)</td>(.*?)</tr>", body)
    assert [r[0] for r in rows] == gop.groups.tolist()
    for k, (_, cells) in enumerate(rows):
        td = re.findall(r"<td>(.*?)</td>", cells)
        assert td[0] == f"{int(gop.num_genuine[k]):,}" and td[1] == f"{int(gop.num_impostor[k]):,}"
        far_lo, far_hi = gop.intervals["far"].lo[k], gop.intervals["far"].hi[k]
        assert td[2] == f"{gop.far[k]:.2e}<br><span class=ci>[{far_lo:.2e}, {far_hi:.2e}]</span>"
        frr_lo, frr_hi = gop.intervals["frr"].lo[k], gop.intervals["frr"].hi[k]
        assert td[4] == f"{gop.frr[k]:.4f}<br><span class=ci>[{frr_lo:.4f}, {frr_hi:.4f}]</span>"
        assert td[3] == f"{gop.far[k] / _TARGET:.3g}×"
    s = gop.summary
    for label, key in (("Gini", "far_gini"), ("FDR", "fdr"), ("GARBE", "garbe")):
        m = re.search(rf"<tr><td>{label}[^<]*</td><td>([^<]*)<br><span class=ci>\[([^\]]*)\]", body)
        assert m is not None, label
        if math.isfinite(s[key]):
            assert m.group(1) == f"{s[key]:.4g}"
        iv = gop.intervals[key]
        assert m.group(2) == f"{float(iv.lo):.4g}, {float(iv.hi):.4g}"
    d = read_json(index)["runs"][0]["groups"]
    for key in s:
        assert from_json(d["summary"][key]) == s[key] or (
            math.isnan(s[key]) and d["summary"][key] is None
        )
    np.testing.assert_array_equal(d["intervals"]["far"]["lo"], gop.intervals["far"].lo)
    np.testing.assert_array_equal(d["num_genuine"], gop.num_genuine)


def _eval_before_patches(
    guard: Any, x: np.ndarray, y: np.ndarray, g: np.ndarray, **kw: Any
) -> Evaluation:
    """The no_passes guard is active: lift it for this one evaluation."""
    with guard.lifted():
        return report_eval(x, y, g, **kw)


def test_inf_zero_groups_nan_cells_and_left_out_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_passes: Any
) -> None:
    """Hand-set group figures: a group without impostor pairs (NaN, grey "n/a", listed as left
    out), a FAR of 0 (cell "0", ratio summaries inf with the count of zero groups)."""
    x, y, g = make_data()
    ev = _eval_before_patches(no_passes, x, y, g)
    gop = ev.groups
    assert gop is not None
    far = np.array([0.0, 0.02, np.nan])
    frr = np.array([0.1, 0.2, 0.3])
    fm = np.array([[0.0, 0.01, np.nan], [0.01, 0.02, 0.005], [np.nan, 0.005, np.nan]])
    summary = dict(gop.summary, far_max_min=math.inf, far_max_geomean=math.inf)
    summary.update(far_zero_groups=1.0, groups_left_out=1.0)
    ev2 = dataclasses.replace(
        ev,
        groups=dataclasses.replace(
            gop, far=far, frr=frr, far_matrix=fm, summary=summary, intervals={}
        ),
    )
    spy = _Spy(plots.plot_group_far_heatmap)
    monkeypatch.setattr(sections_mod, "plot_group_far_heatmap", spy)
    monkeypatch.setattr(sections_mod, "figure_to_png", lambda fig: _TINY_PNG)
    index = write_report(tmp_path, [ReportRun("r", evaluation=ev2)], target_far=_TARGET)
    ((_, _, fig),) = spy.calls
    ax = fig.axes[0]
    texts = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    assert texts[(0, 0)] == "0" and texts[(0, 2)] == "n/a" and texts[(2, 2)] == "n/a"
    assert texts[(1, 2)] == "5.0e-03"
    data = ax.images[0].get_array()
    assert bool(data.mask[0, 2]) and bool(data.mask[2, 2]) and not bool(data.mask[0, 0])
    assert float(data[0, 0]) == ax.images[0].norm.vmin  # FAR 0: the bluest end of the range
    body = section(index.read_text(), "Groups (data distributions)")
    assert "∞ (1 zero group)" in body
    assert "Left out of the summaries (1, no genuine or no impostor pairs): cm." in body
    d = read_json(index)["runs"][0]["groups"]
    assert d["summary"]["far_max_min"] == "inf" and d["groups_left_out"] == ["cm"]
    assert d["far_log10_ratio"][0][0] == "-inf" and d["far_log10_ratio"][0][2] is None


def test_groups_not_at_deployment_threshold_is_an_error(no_passes: Any, tmp_path: Path) -> None:
    x, y, g = make_data()
    ev = _eval_before_patches(no_passes, x, y, g)
    assert ev.groups is not None
    bad = dataclasses.replace(ev, groups=dataclasses.replace(ev.groups, threshold=0.123))
    with pytest.raises(ValueError, match=r"group rates are at threshold 0\.123"):
        write_report(tmp_path, [ReportRun("r", evaluation=bad)], target_far=_TARGET)


def test_embedding_run_with_groups_is_evaluated_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_png: None
) -> None:
    spy = _Spy(vars(report_run_mod)["evaluate"])
    sweeps = _Spy(vars(statistics_mod)["sweep"])
    monkeypatch.setattr(report_run_mod, "evaluate", spy)
    monkeypatch.setattr(statistics_mod, "sweep", sweeps)
    x, y, g = make_data()
    index = write_report(
        tmp_path, [ReportRun("r", x, y, groups=g)], target_far=_TARGET, ci=0.9, n_boot=30
    )
    ((_, kw, ev),) = spy.calls
    assert kw["groups"] is g and kw["ci"] == 0.9 and kw["n_boot"] == 30
    assert "groups" in kw["include"]
    assert len(sweeps.calls) == 1  # groups and intervals come from the one count sweep
    ref = group_operating_point(x, y, g, threshold=ev.calibration.threshold)
    d = read_json(index)["runs"][0]["groups"]
    np.testing.assert_array_equal(np.array(d["far"], dtype=np.float64), ref.far)
    np.testing.assert_array_equal(np.array(d["far_matrix"], dtype=np.float64), ref.far_matrix)


def test_given_threshold_groups_at_that_threshold(tmp_path: Path, fast_png: None) -> None:
    x, y, g = make_data()
    index = write_report(tmp_path, [ReportRun("r", x, y, groups=g)], threshold=0.5)
    d = read_json(index)["runs"][0]["groups"]
    ref = group_operating_point(x, y, g, threshold=0.5)
    assert d["threshold"] == 0.5
    np.testing.assert_array_equal(np.array(d["far"], dtype=np.float64), ref.far)


def test_groups_errors() -> None:
    x, y, g = make_data()
    with pytest.raises(ValueError, match="120 embeddings but 119 groups"):
        ReportRun("r", x, y, groups=g[:-1])
    with pytest.raises(ValueError, match="groups must be 1-D"):
        ReportRun("r", x, y, groups=g.reshape(2, -1))
    ev = report_eval(x, y, None, include=["consistency", "histogram", "calibration"])
    with pytest.raises(ValueError, match="an Evaluation carries its own groups"):
        ReportRun("r", evaluation=ev, groups=g)


# --------------------------------------------------------------------------------------------
# Intervals: table text and OPIS error bars
# --------------------------------------------------------------------------------------------


def test_intervals_in_tables_and_error_bars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_passes: Any, fast_png: None
) -> None:
    x, y, g = make_data()
    ev = _eval_before_patches(no_passes, x, y, g, ci=0.95, n_boot=40)
    x2, y2, g2 = make_data(seed=1, noise=0.9)
    ev2 = _eval_before_patches(no_passes, x2, y2, g2, ci=0.95, n_boot=40)
    spy = _Spy(plots.plot_accuracy_consistency)
    monkeypatch.setattr(sections_mod, "plot_accuracy_consistency", spy)
    runs = [
        ReportRun("a", evaluation=ev),
        ReportRun("b", evaluation=ev2, metrics={"opis": 0.5}),  # caller value: no interval
    ]
    index = write_report(tmp_path, runs, target_far=_TARGET, ci=0.95, n_boot=40)
    ((_, kw, _),) = spy.calls
    iv = ev.intervals["opis"]
    assert kw["opis_intervals"] == [(float(iv.lo), float(iv.hi)), None]
    html = index.read_text()
    metrics = section(html, "<h2>1. Metrics</h2>", "<h3>")
    for key in ("opis", "epsilon_opis_0.05", "epsilon_opis_0.1"):
        i = ev.intervals[key]
        cell = (
            re.escape(format_metric(key, ev.metrics()[key]))
            + "(</span>)?"  # the best value of a column is wrapped in <span class=best>
            + re.escape(
                f"<br><span class=ci>[{format_metric(key, float(i.lo))}, "
                f"{format_metric(key, float(i.hi))}]</span>"
            )
        )
        assert re.search(cell, metrics), key
    assert metrics.count("<span class=ci>") == 5  # a: OPIS + 2 eps-OPIS; b: 2 eps-OPIS
    assert "95 % class-bootstrap interval (40 resamples of the classes)" in metrics
    op = section(html, "<h3>Operating point", "<h2>")
    gf = ev.intervals["calibration_global_far"]
    assert f"<span class=ci>[{float(gf.lo):.2e}, {float(gf.hi):.2e}]</span>" in op
    d = read_json(index)
    assert d["ci"] == 0.95 and d["n_boot"] == 40
    assert d["runs"][0]["intervals"]["opis"] == {
        "lo": float(iv.lo),
        "hi": float(iv.hi),
        "ci": 0.95,
        "n_boot": 40,
    }
    assert "opis" not in d["runs"][1]["intervals"]


def test_error_bars_drawn() -> None:
    fig = plots.plot_accuracy_consistency(
        ["a", "b"], [0.8, 0.7], [0.01, 0.02], opis_intervals=[(0.005, 0.02), None]
    )
    from matplotlib.collections import LineCollection

    (bars,) = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    ((x0, y0), (x1, y1)) = bars.get_segments()[0]
    assert (x0, x1, y0, y1) == (0.005, 0.02, 0.8, 0.8)


def test_ci_asked_but_evaluation_without_intervals(tmp_path: Path, no_passes: Any) -> None:
    x, y, g = make_data()
    ev = _eval_before_patches(no_passes, x, y, g)
    with pytest.raises(ValueError, match="run 'r': its Evaluation has no 'intervals' section"):
        write_report(tmp_path, [ReportRun("r", evaluation=ev)], target_far=_TARGET, ci=0.95)
    ev90 = _eval_before_patches(no_passes, x, y, g, ci=0.9, n_boot=40)
    with pytest.raises(ValueError, match=r"intervals are at ci=0\.9 with n_boot=40"):
        write_report(
            tmp_path, [ReportRun("r", evaluation=ev90)], target_far=_TARGET, ci=0.95, n_boot=40
        )
    with pytest.raises(ValueError, match="ci"):
        write_report(tmp_path, [ReportRun("r", evaluation=ev90)], target_far=_TARGET, ci=1.5)


# --------------------------------------------------------------------------------------------
# Calibration transfer
# --------------------------------------------------------------------------------------------

_TRANSFER_KEYS = (
    "far",
    "threshold",
    "source_far",
    "source_tar",
    "target_far",
    "target_tar",
    "far_ratio",
    "tar_change",
    "target_threshold",
    "threshold_offset",
    "classes_over_2x",
    "num_target_classes",
)


def test_transfer_rows_equal_calibration_transfer(tmp_path: Path, fast_png: None) -> None:
    xa, ya, ga = make_data(seed=0, noise=0.7)
    xb, yb, _ = make_data(seed=1, noise=1.0)
    runs = [ReportRun("src", xa, ya, groups=ga), ReportRun("tgt", xb, yb)]
    index = write_report(
        tmp_path, runs, target_far=_TARGET, ci=0.9, n_boot=30, transfer=[("src", "tgt")]
    )
    ref = calibration_transfer(xa, ya, xb, yb, far=_TARGET, source_groups=ga, ci=0.9, n_boot=30)
    (row,) = read_json(index)["transfers"]
    assert row["source"] == "src" and row["target"] == "tgt"
    assert row["method"] == "calibration_transfer"
    for key in _TRANSFER_KEYS:
        assert row[key] == getattr(ref, key), key
    assert row["class_far"] == ref.class_far
    ri = ref.intervals["far_ratio"]
    assert row["intervals"]["far_ratio"]["lo"] == float(ri.lo)
    body = section(index.read_text(), "Calibration transfer")
    assert "src → tgt" in body
    assert f"{ref.far_ratio:.3f}<br><span class=ci>[{float(ri.lo):.3f}, {float(ri.hi):.3f}]" in body
    assert f"{ref.source_tar:.4f} → {ref.target_tar:.4f} ({ref.tar_change:+.4f})" in body
    assert f"{ref.threshold_offset:+.4f}" in body
    assert f"{ref.classes_over_2x:,} / {ref.num_target_classes:,}" in body
    assert "tcm.metrics.calibration_transfer on the runs&#x27; embeddings" in body


def test_transfer_view_from_evaluations_without_a_pass(
    tmp_path: Path, pass_guard: Any, fast_png: None
) -> None:
    """A target evaluated at the source's calibrated threshold: the row is read from the two
    Evaluations' count tables (every pass fails) and equals calibration_transfer."""
    xa, ya, _ = make_data(seed=0, noise=0.7)
    xb, yb, _ = make_data(seed=1, noise=1.0)
    inc = ["consistency", "histogram", "calibration", "retrieval", "operating_point"]
    ev_s = report_eval(xa, ya, None, include=inc[:4])
    assert ev_s.calibration is not None
    ev_t = report_eval(xb, yb, None, include=inc, threshold=ev_s.calibration.threshold)
    ref = calibration_transfer(xa, ya, xb, yb, far=_TARGET)
    pass_guard.forbid()
    runs = [ReportRun("s", evaluation=ev_s), ReportRun("t", evaluation=ev_t)]
    index = write_report(tmp_path, runs, target_far=_TARGET, transfer=[("s", "t")])
    (row,) = read_json(index)["transfers"]
    assert row["method"] == "transfer_view"
    for key in _TRANSFER_KEYS:
        assert row[key] == getattr(ref, key), key


def test_given_transfer_and_errors(tmp_path: Path, fast_png: None) -> None:
    xa, ya, _ = make_data(seed=0)
    xb, yb, _ = make_data(seed=1, noise=1.0)
    given = calibration_transfer(xa, ya, xb, yb, far=1e-3)
    runs = [ReportRun("a", xa, ya), ReportRun("b", xb, yb)]
    index = write_report(tmp_path, runs, target_far=_TARGET, transfer=[("fonts", "scans", given)])
    (row,) = read_json(index)["transfers"]
    assert row["method"] == "given" and row["far"] == 1e-3 and row["far_ratio"] == given.far_ratio
    for spec, match in [
        ([("a", "zz")], "no run named 'zz'"),
        ([("a", "a")], "source and target are the same run"),
        ([("a",)], r"transfer\[0\] must be"),
        ([("a", "b", 3)], "must be a tcm.metrics.CalibrationTransfer"),
        ("a:b", "must be a list"),
    ]:
        with pytest.raises(ValueError, match=match):
            write_report(tmp_path / "x", runs, target_far=_TARGET, transfer=spec)  # type: ignore[arg-type]
    ev = report_eval(xa, ya, None, include=["consistency", "histogram", "calibration"])
    ev_runs = [
        ReportRun("a", evaluation=ev, metrics={"recall_at_1": 1.0, "map_at_r": 1.0}),
        runs[1],
    ]
    with pytest.raises(ValueError, match="transfer 'a' -> 'b': run 'a' was given as an Evaluation"):
        transfer_rows([("a", "b")], ev_runs, far=_TARGET)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _write_npz(path: Path, seed: int, noise: float, with_groups: bool = True) -> Path:
    x, y, g = make_data(seed=seed, noise=noise)
    arrays: dict[str, np.ndarray] = {"embeddings": x, "labels": y}
    if with_groups:
        arrays["groups"] = g
    np.savez(path, **arrays)
    return path


def test_cli_report_groups_ci_transfer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sections_mod, "figure_to_png", lambda fig: _TINY_PNG)
    a = _write_npz(tmp_path / "fonts.npz", 0, 0.7)
    b = _write_npz(tmp_path / "scans.npz", 1, 1.0)
    c = _write_npz(tmp_path / "third.npz", 2, 0.8)
    out = tmp_path / "rep"
    argv = ["report", str(a), str(b), str(c), "--out", str(out), "--groups"]
    argv += [
        "--ci",
        "0.9",
        "--n-boot",
        "30",
        "--transfer",
        "fonts:scans",
        "--transfer",
        "scans:fonts",
    ]
    assert main(argv) == 0
    assert "report:" in capsys.readouterr().out
    d = read_json(out / "index.html")
    assert d["ci"] == 0.9 and d["n_boot"] == 30
    for run, path in zip(d["runs"], (a, b, c), strict=True):
        with np.load(path) as z:
            ref = group_operating_point(
                z["embeddings"],
                z["labels"],
                z["groups"],
                threshold=run["threshold"],
                ci=0.9,
                n_boot=30,
            )
        np.testing.assert_array_equal(np.array(run["groups"]["far"], dtype=np.float64), ref.far)
        np.testing.assert_array_equal(
            np.array(run["groups"]["intervals"]["far"]["lo"], dtype=np.float64),
            ref.intervals["far"].lo,
        )
        assert run["intervals"]["opis"]["ci"] == 0.9
    with np.load(a) as za, np.load(b) as zb:
        ref_t = calibration_transfer(
            za["embeddings"],
            za["labels"],
            zb["embeddings"],
            zb["labels"],
            far=1e-3,
            source_groups=za["groups"],
            target_groups=zb["groups"],
            ci=0.9,
            n_boot=30,
        )
    rows = d["transfers"]
    assert [(r["source"], r["target"]) for r in rows] == [("fonts", "scans"), ("scans", "fonts")]
    for key in _TRANSFER_KEYS:
        assert rows[0][key] == getattr(ref_t, key), key
    assert "Calibration transfer" in (out / "index.html").read_text()


def test_cli_report_bad_flags_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _write_npz(tmp_path / "a.npz", 0, 0.7)
    plain = _write_npz(tmp_path / "plain.npz", 1, 0.7, with_groups=False)
    out = str(tmp_path / "rep")
    assert main(["report", str(plain), "--out", out, "--groups"]) == 2
    assert "has no per-sample groups" in capsys.readouterr().err
    assert main(["report", str(a), str(plain), "--out", out, "--transfer", "a:nope"]) == 2
    assert "expected SOURCE_NAME:TARGET_NAME" in capsys.readouterr().err
    assert main(["report", str(a), "--out", out, "--ci", "2"]) == 2
    assert not (tmp_path / "rep").exists()
