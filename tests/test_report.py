"""Tests of tcm.report: numbers against a brute-force reference, HTML/PNG structure, errors.

Most plumbing tests feed the report an :class:`~tcm.metrics.Evaluation` built from an independent
brute-force reference (exact float64), with every pair pass and kNN pass of ``tcm.metrics``
disabled: the report must only read the Evaluation. End-to-end tests use the real metrics.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import tcm.metrics.evaluation as evaluation_mod
import tcm.metrics.statistics as statistics_mod
import tcm.report.run as report_run_mod
from tcm.metrics import (
    Calibration,
    Evaluation,
    OperatingPoint,
    RetrievalMetrics,
    SimilarityHistogram,
    ThresholdConsistency,
    evaluate,
    metric_label,
    spread,
)
from tcm.metrics.retrieval import PerClassRetrieval
from tcm.report import (
    METRIC_KEYS,
    ReportRun,
    analyse_run,
    format_metric,
    plots,
    report_evaluation,
    write_report,
)
from tcm.report import html as H

# Similarities are computed in float32 by tcm.metrics: a dot product of two unit vectors of
# dimension D carries an absolute error of at most about D float32 ulps of 1.
_DIM = 16
_SIM_TOL = _DIM * float(np.finfo(np.float32).eps)
# --------------------------------------------------------------------------------------------
# Independent brute-force reference (O(N^2), tiny inputs only), written from docs/definitions.md
# --------------------------------------------------------------------------------------------


def _pairs(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(emb, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), k=1)
    return (x[i] * x[j]).sum(axis=1), i, j


def ref_per_class(
    emb: np.ndarray, labels: np.ndarray, t: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes with n_c >= 2, TAR_c(t), TRR_c(t)) by enumerating every pair."""
    labels = np.asarray(labels)
    s, i, j = _pairs(emb, labels)
    classes, counts = np.unique(labels, return_counts=True)
    keep = classes[counts >= 2]
    tar, trr = [], []
    for c in keep:
        in_i, in_j = labels[i] == c, labels[j] == c
        pos = s[in_i & in_j]
        cross = s[in_i ^ in_j]
        tar.append(np.mean(pos >= t))
        trr.append(np.mean(cross < t) if cross.size else 1.0)
    return keep, np.array(tar), np.array(trr)


def ref_consistency(
    emb: np.ndarray,
    labels: np.ndarray,
    far_range: tuple[float, float],
    k: int = 101,
    epsilons: tuple[float, ...] = (0.05, 0.10),
) -> dict[str, Any]:
    labels = np.asarray(labels)
    s, i, j = _pairs(emb, labels)
    neg = s[labels[i] != labels[j]]
    t_max = np.quantile(neg, 1 - far_range[0])
    t_min = np.quantile(neg, 1 - far_range[1])
    grid = np.linspace(t_min, t_max, k)
    util = []
    tars, trrs = [], []
    for t in grid:
        classes, tar, trr = ref_per_class(emb, labels, t)
        denom = tar + trr
        util.append(np.where(denom > 0, 2 * tar * trr / np.where(denom > 0, denom, 1), 0.0))
        tars.append(tar)
        trrs.append(trr)
    u = np.array(util).T  # (T, K)
    opis = float(np.mean(np.mean((u - u.mean(axis=0)) ** 2, axis=0)))
    eps_opis = {}
    for eps in epsilons:
        m = max(1, int(np.floor(eps * u.shape[0])))
        srt = np.sort(u, axis=0)
        eps_opis[eps] = float(np.mean((srt[-m:].mean(axis=0) - srt[:m].mean(axis=0)) ** 2))
    pos = s[labels[i] == labels[j]]
    global_far = np.array([np.mean(neg >= t) for t in grid])
    global_tar = np.array([np.mean(pos >= t) for t in grid])
    return {
        "opis": opis,
        "epsilon_opis": eps_opis,
        "thresholds": grid,
        "utility": u,
        "tar": np.array(tars).T,
        "trr": np.array(trrs).T,
        "classes": classes,
        "global_far": global_far,
        "global_tar": global_tar,
        "neg": neg,
        "pos": pos,
    }


def ref_retrieval(emb: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Leave-one-out (R@1, MAP@R, R-precision) over queries whose class has >= 2 samples."""
    labels = np.asarray(labels)
    x = np.asarray(emb, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    r1, maps, rps = [], [], []
    for q in range(len(x)):
        r = int(np.sum(labels == labels[q])) - 1
        if r == 0:
            continue
        order = [k for k in np.argsort(-sims[q], kind="stable") if k != q]
        rel = labels[order] == labels[q]
        r1.append(float(rel[0]))
        prec = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        maps.append(float(np.sum(prec * rel[:r]) / r))
        rps.append(float(np.mean(rel[:r])))
    return float(np.mean(r1)), float(np.mean(maps)), float(np.mean(rps))


def ref_operating_point(emb: np.ndarray, labels: np.ndarray, t: float) -> OperatingPoint:
    lab = np.asarray(labels)
    classes, tar, trr = ref_per_class(emb, lab, t)
    all_cls, counts = np.unique(lab, return_counts=True)
    s, i, j = _pairs(emb, lab)
    same = lab[i] == lab[j]
    return OperatingPoint(
        threshold=float(t),
        classes=classes,
        class_sizes=counts[counts >= 2],
        tar=tar,
        far=1.0 - trr,
        frr=1.0 - tar,
        trr=trr,
        global_tar=float(np.mean(s[same] >= t)),
        global_far=float(np.mean(s[~same] >= t)),
        excluded_classes=all_cls[counts < 2],
    )


def ref_evaluation(
    emb: Any,
    labels: Any,
    far_range: tuple[float, float] = (1e-2, 1e-1),
    *,
    threshold: float | None = None,
    target_far: float | None = 1e-3,
    bins: int = 200,
    retrieval: bool = True,
) -> Evaluation:
    """An Evaluation with the report's sections, every number from the brute-force reference."""
    x, lab = np.asarray(emb, dtype=np.float64), np.asarray(labels)
    r = ref_consistency(x, lab, far_range)
    all_cls, counts = np.unique(lab, return_counts=True)
    inc = counts >= 2
    tc = ThresholdConsistency(
        opis=r["opis"],
        epsilon_opis=r["epsilon_opis"],
        thresholds=r["thresholds"],
        far_range=far_range,
        classes=all_cls[inc],
        class_sizes=counts[inc],
        tar=r["tar"],
        trr=r["trr"],
        utility=r["utility"],
        excluded_classes=all_cls[~inc],
        global_tar=r["global_tar"],
        global_far=r["global_far"],
        num_positive_pairs=int(r["pos"].size),
        num_negative_pairs=int(r["neg"].size),
    )
    cal = op = None
    if threshold is not None:
        op = ref_operating_point(x, lab, threshold)
    if target_far is not None:
        t_cal = float(np.quantile(r["neg"], 1.0 - target_far))
        cop = ref_operating_point(x, lab, t_cal)
        den = cop.tar + cop.trr
        u = np.where(den > 0, 2 * cop.tar * cop.trr / np.where(den > 0, den, 1.0), 0.0)
        cal = Calibration(
            threshold=t_cal,
            mode="target_far",
            target_far=target_far,
            mean_utility=float(np.mean(u)),
            search_far_range=None,
            reference_far=target_far,
            operating_point=cop,
            far_spread=spread(cop.far),
            frr_spread=spread(cop.frr),
            classes_far_above_2x=int(np.sum(cop.far > 2 * target_far)),
        )
    edges = np.linspace(-1.0, 1.0, bins + 1)
    hist = SimilarityHistogram(
        edges=edges,
        pos=np.histogram(np.clip(r["pos"], -1, 1), edges)[0],
        neg=np.histogram(np.clip(r["neg"], -1, 1), edges)[0],
    )
    ret = None
    if retrieval:
        r1, mapr, rp = ref_retrieval(x, lab)
        empty = np.empty(0)
        ret = RetrievalMetrics(
            recall_at_k={1: r1},
            map_at_r=mapr,
            r_precision=rp,
            per_class=PerClassRetrieval(empty, empty, empty, empty, empty),
            num_queries=int(np.sum(inc[np.searchsorted(all_cls, lab)])),
            num_excluded_queries=int(np.sum(~inc)),
            num_gallery=int(lab.size),
            leave_one_out=True,
            backend="reference",
        )
    return Evaluation(
        num_samples=int(lab.size),
        num_classes=int(all_cls.size),
        retrieval=ret,
        consistency=tc,
        calibration=cal,
        operating_point=op,
        histogram=hist,
    )


_TINY_PNG = b"\x89PNG\r\n\x1a\n" + b"tiny"


@pytest.fixture
def fast_png(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip PNG encoding (the slow part) in tests that only check numbers, not images."""
    from tcm.report import sections

    monkeypatch.setattr(sections, "figure_to_png", lambda fig: _TINY_PNG)


def make_data(
    n_classes: int = 8, per_class: int = 6, noise: float = 0.7, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centers = rng.normal(size=(n_classes, _DIM))
    emb = centers[labels] + noise * rng.normal(size=(labels.size, _DIM))
    return emb, labels


def make_run(
    name: str, n_classes: int = 8, per_class: int = 6, noise: float = 0.7, seed: int = 0
) -> ReportRun:
    """A run of embeddings + labels (the report evaluates it)."""
    return ReportRun(name, *make_data(n_classes, per_class, noise, seed))


def ref_run(
    name: str,
    n_classes: int = 8,
    per_class: int = 6,
    noise: float = 0.7,
    seed: int = 0,
    **kw: Any,
) -> tuple[ReportRun, np.ndarray, np.ndarray]:
    """A run carrying a brute-force reference Evaluation, plus its data."""
    emb, labels = make_data(n_classes, per_class, noise, seed)
    return ReportRun(name, evaluation=ref_evaluation(emb, labels, **kw)), emb, labels


def read_json(index: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((index.parent / "report.json").read_text())
    return data


def img_srcs(html: str) -> list[str]:
    return re.findall(r'<img\s[^>]*src="([^"]*)"', html)


# --------------------------------------------------------------------------------------------
# Plumbing: reference Evaluations in, no pair pass, no kNN pass
# --------------------------------------------------------------------------------------------


def test_html_is_self_contained_with_one_img_per_png(tmp_path: Path, no_passes: None) -> None:
    runs = [ref_run("base", seed=0, target_far=1e-2)[0]]
    runs.append(ref_run("base+TCM", seed=1, noise=0.5, target_far=1e-2)[0])
    index = write_report(tmp_path / "rep", runs, target_far=1e-2)
    assert index == tmp_path / "rep" / "index.html"
    html = index.read_text(encoding="utf-8")
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', html, re.I)
    assert "<script" not in html.lower()
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    # scatter + FAR/FRR spread + per run (utility, similarity)
    assert len(pngs) == 2 + 2 * len(runs)
    srcs = img_srcs(html)
    assert len(srcs) == len(pngs)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    on_disk = {(index.parent / p).read_bytes() for p in pngs}
    assert embedded == on_disk
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
    for p in pngs:
        with Image.open(index.parent / p) as im:
            im.verify()
        with Image.open(index.parent / p) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    assert not [p for p in index.parent.iterdir() if p.name.startswith(".tcm-report-")]


def test_table_values_match_brute_force(tmp_path: Path, no_passes: None, fast_png: None) -> None:
    far_range = (0.02, 0.2)
    run, emb, labels = ref_run("r", n_classes=6, per_class=5, seed=3, far_range=far_range)
    index = write_report(tmp_path, [run], far_range=far_range)
    html = index.read_text(encoding="utf-8")
    ref = ref_consistency(emb, labels, far_range)
    r1, mapr, _ = ref_retrieval(emb, labels)
    expected = {
        "recall_at_1": r1,
        "map_at_r": mapr,
        "opis": ref["opis"],
        "epsilon_opis_0.05": ref["epsilon_opis"][0.05],
        "epsilon_opis_0.1": ref["epsilon_opis"][0.10],
    }
    summary = read_json(index)["runs"][0]
    got = summary["metrics"]
    assert list(got) == list(METRIC_KEYS)
    for key, val in expected.items():
        assert got[key] == val  # read, not recomputed
        assert f"<td>{format_metric(key, val)}</td>" in html
        assert f"<th>{H.esc(metric_label(key))}</th>" in html
    assert f"{r1:.4f}" in html and f"{ref['opis']:.3e}" in html
    assert summary["far_range"] == list(far_range)
    assert summary["calibration_thresholds"] == [ref["thresholds"][0], ref["thresholds"][-1]]


def test_given_threshold_per_class_far_frr(tmp_path: Path, no_passes: None, fast_png: None) -> None:
    t = 0.35
    run, emb, labels = ref_run("r", n_classes=5, per_class=4, seed=4, threshold=t, target_far=None)
    index = write_report(tmp_path, [run], threshold=t)
    summary = read_json(index)["runs"][0]
    _, tar, trr = ref_per_class(emb, labels, t)
    assert summary["threshold"] == t and summary["threshold_source"] == "given"
    assert summary["per_class_far"]["max"] == pytest.approx(np.max(1 - trr))
    assert summary["per_class_far"]["median"] == pytest.approx(np.median(1 - trr))
    assert summary["per_class_frr"]["mean"] == pytest.approx(np.mean(1 - tar))
    assert summary["classes_far_above_2x_target"] == int(np.sum(1 - trr > 2e-3))


def test_calibrated_threshold_comes_from_the_calibration(
    tmp_path: Path, no_passes: None, fast_png: None
) -> None:
    run, emb, labels = ref_run("r", seed=5, target_far=0.05)
    index = write_report(tmp_path, [run], target_far=0.05)
    summary = read_json(index)["runs"][0]
    s, i, j = _pairs(emb, labels)
    expected = np.quantile(s[labels[i] != labels[j]], 0.95)
    assert summary["threshold_source"] == "calibrated"
    assert summary["threshold"] == expected
    assert run.evaluation is not None and run.evaluation.calibration is not None
    cop = run.evaluation.calibration.operating_point
    assert summary["global_far"] == cop.global_far and summary["global_tar"] == cop.global_tar
    assert summary["per_class_far"]["max"] == float(np.max(cop.far))


def test_caller_metrics_are_used_and_marked(
    tmp_path: Path, no_passes: None, fast_png: None
) -> None:
    emb, labels = make_data()
    ev = ref_evaluation(emb, labels, retrieval=False)
    metrics = {"recall_at_1": 0.123456, "map_at_r": 0.0421, "recall_at_2": 0.5}
    index = write_report(tmp_path, [ReportRun("r", metrics=metrics, evaluation=ev)])
    html = index.read_text(encoding="utf-8")
    got = read_json(index)["runs"][0]
    assert got["metrics"]["recall_at_1"] == 0.123456
    assert got["metrics"]["recall_at_2"] == 0.5
    assert got["metric_sources"]["recall_at_1"] == "caller"
    assert got["metric_sources"]["opis"] == "computed"
    assert "0.1235<sup>†</sup>" in html
    assert "<th>Recall@2</th>" in html


def test_unknown_metric_key_is_an_extra_column_not_translated(
    tmp_path: Path, no_passes: None, fast_png: None
) -> None:
    emb, labels = make_data()
    ev = ref_evaluation(emb, labels)
    run = ReportRun("r", metrics={"R@1": 0.9, "my score": 3.5}, evaluation=ev)
    index = write_report(tmp_path, [run])
    got = read_json(index)["runs"][0]
    assert got["metrics"]["recall_at_1"] == ev.metrics()["recall_at_1"]
    assert got["metric_sources"]["recall_at_1"] == "computed"
    assert got["metrics"]["R@1"] == 0.9 and got["metric_sources"]["R@1"] == "caller"
    assert list(got["metrics"]) == [*METRIC_KEYS, "R@1", "my score"]
    html = index.read_text(encoding="utf-8")
    assert "<th>R@1</th>" in html and "<th>my score</th>" in html


def test_run_names_are_escaped(tmp_path: Path, no_passes: None) -> None:
    evil = '<script>alert("x")</script> & $\\alpha$'
    runs = [ref_run(evil, target_far=1e-2)[0], ref_run("ok", seed=1, target_far=1e-2)[0]]
    index = write_report(tmp_path, runs, title="<b>title</b>", target_far=1e-2)
    html = index.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; $\\alpha$" in html
    assert "<b>title</b>" not in html and "&lt;b&gt;title&lt;/b&gt;" in html
    # file names derived from the run name contain only safe characters
    for p in index.parent.iterdir():
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+", p.name), p.name


def test_string_labels_and_singleton_classes(
    tmp_path: Path, no_passes: None, fast_png: None
) -> None:
    emb, codes = make_data(n_classes=6, per_class=4)
    labels = np.array([f"cls<{v}>" for v in codes.tolist()] + ["lonely"], dtype=object)
    emb = np.vstack([emb, np.ones((1, _DIM))])
    ev = ref_evaluation(emb, labels, target_far=1e-2)
    index = write_report(tmp_path, [ReportRun("strings", evaluation=ev)], target_far=1e-2)
    summary = read_json(index)["runs"][0]
    assert summary["num_excluded_classes"] == 1
    assert summary["num_classes"] == 7
    assert "cls&lt;" in index.read_text(encoding="utf-8")
    assert all(w["name"] == w["class"] for w in summary["worst_classes_by_far"])


def test_class_names_in_worst_class_table(tmp_path: Path, no_passes: None, fast_png: None) -> None:
    emb, labels = make_data(n_classes=6, per_class=5, seed=7)
    names = [f"glyph <{chr(0x41 + c)}>" for c in range(6)]
    ev = ref_evaluation(emb, labels, target_far=0.05)
    run = ReportRun("named", evaluation=ev, class_names=names)
    index = write_report(tmp_path, [run], target_far=0.05)
    html = index.read_text(encoding="utf-8")
    worst = read_json(index)["runs"][0]["worst_classes_by_far"]
    assert ev.calibration is not None
    far = ev.calibration.operating_point.far
    order = np.argsort(-far, kind="stable")[:5]
    assert [w["class"] for w in worst] == order.tolist()
    assert [w["name"] for w in worst] == [names[c] for c in order]
    assert [w["far"] for w in worst] == far[order].tolist()
    for c in order:
        assert f"<td>{H.esc(names[c])}</td>" in html


@pytest.mark.parametrize(
    ("labels", "names", "match"),
    [
        (np.repeat(np.arange(4), 3), ["a", "b", "c"], "label 3 has no entry in class_names"),
        (
            np.repeat(np.array(["x", "y", "z", "w"]), 3),
            ["a"] * 4,
            "class_names need integer labels",
        ),
    ],
)
def test_class_names_must_fit_the_labels(
    tmp_path: Path, no_passes: None, labels: np.ndarray, names: list[str], match: str
) -> None:
    emb = np.random.default_rng(0).normal(size=(labels.size, 4))
    run = ReportRun("n", evaluation=ref_evaluation(emb, labels), class_names=names)
    with pytest.raises(ValueError, match=rf"run 'n': {match}"):
        write_report(tmp_path / "o", [run])
    assert not (tmp_path / "o").exists()


def test_rewrite_replaces_files_atomically(tmp_path: Path, no_passes: None, fast_png: None) -> None:
    run = ref_run("a")[0]
    write_report(tmp_path, [run], title="first")
    index = write_report(tmp_path, [run], title="second")
    assert "second" in index.read_text(encoding="utf-8")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tcm-report-")]


def test_failure_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        raise ValueError("no negative pairs")

    monkeypatch.setattr(report_run_mod, "evaluate", boom)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"run 'bad': no negative pairs"):
        write_report(out, [ref_run("good")[0], make_run("bad")])
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# One evaluation per run, and none in analyse_run
# --------------------------------------------------------------------------------------------


def test_analyse_run_performs_no_pair_pass(tmp_path: Path, pass_guard: Any, fast_png: None) -> None:
    emb, labels = make_data(seed=9)
    ev = evaluate(emb, labels, ks=(1,), calibration_far=1e-2, bins=200)  # before the guard
    pass_guard.forbid()
    run = ReportRun("pre", evaluation=ev)
    a = analyse_run(run, target_far=1e-2, far_range=(1e-2, 1e-1))
    m = ev.metrics()
    assert {k: a.metrics[k] for k in METRIC_KEYS} == {k: m[k] for k in METRIC_KEYS}
    assert ev.calibration is not None and ev.consistency is not None and ev.histogram is not None
    assert a.threshold == ev.calibration.threshold
    np.testing.assert_array_equal(a.far, ev.calibration.operating_point.far)
    np.testing.assert_array_equal(a.utility, ev.consistency.utility)
    np.testing.assert_array_equal(a.grid_global_far, ev.consistency.global_far)
    np.testing.assert_array_equal(a.hist_neg, ev.histogram.neg)
    index = write_report(tmp_path, [run], target_far=1e-2)
    assert read_json(index)["runs"][0]["metrics"]["opis"] == m["opis"]


class _Spy:
    """Wrap a function, recording each call's keyword arguments."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.fn(*args, **kwargs)


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> dict[str, _Spy]:
    out = {
        "evaluate": _Spy(vars(report_run_mod)["evaluate"]),
        "pair_statistics": _Spy(vars(evaluation_mod)["pair_statistics"]),
        "sweep": _Spy(vars(statistics_mod)["sweep"]),
        "retrieval": _Spy(vars(evaluation_mod)["retrieval_metrics_of"]),
    }
    monkeypatch.setattr(report_run_mod, "evaluate", out["evaluate"])
    monkeypatch.setattr(evaluation_mod, "pair_statistics", out["pair_statistics"])
    monkeypatch.setattr(statistics_mod, "sweep", out["sweep"])
    monkeypatch.setattr(evaluation_mod, "retrieval_metrics_of", out["retrieval"])
    return out


def test_write_report_from_embeddings_evaluates_once_per_run(
    tmp_path: Path, spies: dict[str, _Spy], fast_png: None
) -> None:
    runs = [make_run("a", seed=0), make_run("b", seed=1)]
    runs[1].metrics = {"recall_at_1": 0.5, "map_at_r": 0.25}  # no retrieval needed
    write_report(tmp_path, runs, target_far=1e-2, far_range=(0.02, 0.2))
    assert len(spies["evaluate"].calls) == 2
    assert len(spies["pair_statistics"].calls) == 2
    assert len(spies["sweep"].calls) == 2  # one count sweep per run
    assert len(spies["retrieval"].calls) == 1  # run "a" only
    for call, ret in zip(spies["evaluate"].calls, (True, False), strict=True):
        assert call["bins"] == 200 and tuple(call["ks"]) == (1,)
        assert call["calibration_far"] == 1e-2 and call["threshold"] is None
        assert call["far_range"] == (0.02, 0.2)
        expect = {"consistency", "histogram", "calibration"} | ({"retrieval"} if ret else set())
        assert set(call["include"]) == expect


def test_write_report_given_threshold_evaluates_operating_point_only(
    tmp_path: Path, spies: dict[str, _Spy], fast_png: None
) -> None:
    index = write_report(tmp_path, [make_run("a")], threshold=0.3)
    (call,) = spies["evaluate"].calls
    assert call["threshold"] == 0.3 and call["calibration_far"] is None
    assert set(call["include"]) == {"consistency", "histogram", "operating_point", "retrieval"}
    assert len(spies["pair_statistics"].calls) == 1
    assert read_json(index)["runs"][0]["threshold_source"] == "given"


def test_from_embeddings_equals_lazy_run(tmp_path: Path, spies: dict[str, _Spy]) -> None:
    emb, labels = make_data(seed=2)
    pre = ReportRun.from_embeddings("r", emb, labels, target_far=1e-2, class_names=list("abcdefgh"))
    assert pre.embeddings is None and pre.labels is None and pre.evaluation is not None
    assert len(spies["evaluate"].calls) == 1
    lazy = ReportRun("r", emb, labels, class_names=list("abcdefgh"))
    a = analyse_run(pre, target_far=1e-2)
    b = read_json(write_report(tmp_path, [lazy], target_far=1e-2))["runs"][0]
    assert len(spies["evaluate"].calls) == 2
    assert b["metrics"] == a.metrics and b["threshold"] == a.threshold
    assert b["worst_classes_by_far"] == a.summary(1e-2)["worst_classes_by_far"]
    assert {w["name"] for w in b["worst_classes_by_far"]} <= set("abcdefgh")


def test_report_evaluation_sections() -> None:
    emb, labels = make_data()
    ev = report_evaluation(emb, labels, target_far=1e-2, retrieval=False)
    assert ev.retrieval is None and ev.operating_point is None and ev.tar_at_far == {}
    assert ev.consistency is not None and ev.histogram is not None and ev.calibration is not None
    assert ev.consistency.thresholds.shape == (101,) and ev.histogram.pos.shape == (200,)
    assert sorted(ev.consistency.epsilon_opis) == [0.05, 0.10]
    with pytest.raises(ValueError, match="target_far must lie in"):
        report_evaluation(emb, labels, target_far=2.0)


# --------------------------------------------------------------------------------------------
# An Evaluation that lacks what the report reads
# --------------------------------------------------------------------------------------------


def _without(ev: Evaluation, **fields: Any) -> ReportRun:
    return ReportRun("x", evaluation=dataclasses.replace(ev, **fields))


@pytest.mark.parametrize(
    ("fields", "kw", "match"),
    [
        ({"consistency": None}, {}, r"no 'consistency' section"),
        ({"histogram": None}, {}, r"no 'histogram' section.*bins=200"),
        ({"calibration": None}, {}, r"no 'calibration' section"),
        ({}, {"threshold": 0.3}, r"no 'operating_point' section.*threshold=0\.3"),
        ({"retrieval": None}, {}, r"no 'retrieval' section.*'recall_at_1'"),
        ({}, {"target_far": 1e-2}, r"calibrated by target_far \(target FAR 0\.001\).*0\.01"),
        ({}, {"far_range": (0.02, 0.2)}, r"far_range=\(0\.01, 0\.1\).*\(0\.02, 0\.2\)"),
    ],
)
def test_missing_or_mismatched_sections_are_named(
    tmp_path: Path, no_passes: None, fields: dict[str, Any], kw: dict[str, Any], match: str
) -> None:
    emb, labels = make_data()
    run = _without(ref_evaluation(emb, labels), **fields)
    with pytest.raises(ValueError, match=r"run 'x': (its Evaluation )?.*" + match):
        analyse_run(run, **kw)
    with pytest.raises(ValueError, match=r"run 'x': .*" + match):
        write_report(tmp_path / "o", [run], **kw)
    assert not (tmp_path / "o").exists()


def test_operating_point_at_another_threshold(no_passes: None) -> None:
    emb, labels = make_data()
    run = ReportRun("x", evaluation=ref_evaluation(emb, labels, threshold=0.2))
    with pytest.raises(ValueError, match=r"operating point is at threshold 0\.2.*is 0\.3"):
        analyse_run(run, threshold=0.3)


def test_threshold_read_from_evaluation_options(tmp_path: Path) -> None:
    """Without calibration and without a report threshold, analyse_run reads the operating point
    at the threshold the Evaluation's options record (what report_evaluation(threshold=t) made)."""
    emb, labels = make_data()
    ev = report_evaluation(emb, labels, threshold=0.3)
    assert ev.calibration is None and ev.options["threshold"] == 0.3
    a = analyse_run(ReportRun("x", evaluation=ev))
    assert (a.threshold, a.threshold_source) == (0.3, "given")


def test_caller_retrieval_replaces_missing_section(no_passes: None) -> None:
    emb, labels = make_data()
    ev = ref_evaluation(emb, labels, retrieval=False)
    run = ReportRun("x", metrics={"recall_at_1": 0.7, "map_at_r": 0.4}, evaluation=ev)
    assert analyse_run(run).metrics["recall_at_1"] == 0.7


def test_analyse_run_needs_an_evaluation() -> None:
    with pytest.raises(ValueError, match=r"run 'm': it has no Evaluation.*from_embeddings"):
        analyse_run(make_run("m"))


# --------------------------------------------------------------------------------------------
# Error paths (each one)
# --------------------------------------------------------------------------------------------


def test_error_no_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one ReportRun"):
        write_report(tmp_path, [])


def test_error_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"runs\[0\] must be a ReportRun"):
        write_report(tmp_path, [("a", np.eye(3), [0, 0, 1])])  # type: ignore[list-item]


def test_error_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="5 embeddings but 4 labels"):
        ReportRun("m", np.ones((5, 3)), np.zeros(4))


def test_error_mismatched_lengths_after_construction(tmp_path: Path) -> None:
    run = make_run("m")
    run.labels = np.asarray(run.labels)[:-1]
    with pytest.raises(ValueError, match="48 embeddings but 47 labels"):
        write_report(tmp_path, [run])


def test_error_embeddings_not_2d() -> None:
    with pytest.raises(ValueError, match=r"embeddings must be 2-D.*\(6,\)"):
        ReportRun("m", np.ones(6), np.zeros(6))


def test_error_labels_not_1d() -> None:
    with pytest.raises(ValueError, match=r"labels must be 1-D.*\(3, 2\)"):
        ReportRun("m", np.ones((3, 2)), np.zeros((3, 2)))


@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_error_bad_name(name: Any) -> None:
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        ReportRun(name, np.ones((2, 2)), [0, 1])


def test_error_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'a' appears more than once"):
        write_report(tmp_path, [make_run("a"), make_run("a")])


@pytest.mark.parametrize("key", ["recall_at_1", "map_at_r", "recall_at_4", "r_precision"])
def test_error_metric_percent(key: str) -> None:
    with pytest.raises(ValueError, match=rf"'{key}' must be a fraction in \[0, 1\].*81.2"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={key: 81.2})


def test_error_metric_not_finite() -> None:
    with pytest.raises(ValueError, match="'opis' is not finite: nan"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={"opis": float("nan")})


def test_error_metric_negative_opis() -> None:
    with pytest.raises(ValueError, match=r"must be >= 0; got -0\.1"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={"opis": -0.1})


@pytest.mark.parametrize("value", ["high", None, True])
def test_error_metric_not_number(value: Any) -> None:
    with pytest.raises(ValueError, match=f"must be a number; got {value!r}"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={"recall_at_1": value})


def test_error_metric_name_not_string() -> None:
    with pytest.raises(ValueError, match="metric names must be strings; got 1"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={1: 0.5})  # type: ignore[dict-item]


def test_error_neither_data_nor_evaluation() -> None:
    with pytest.raises(ValueError, match=r"run 'm': needs embeddings and labels, or evaluation="):
        ReportRun("m")
    with pytest.raises(ValueError, match="needs embeddings and labels"):
        ReportRun("m", np.ones((2, 2)))


def test_error_data_and_evaluation() -> None:
    ev = Evaluation(num_samples=2, num_classes=2)
    with pytest.raises(ValueError, match="either evaluation= or embeddings and labels, not both"):
        ReportRun("m", np.ones((2, 2)), [0, 1], evaluation=ev)


def test_error_evaluation_type() -> None:
    with pytest.raises(ValueError, match=r"must be a tcm\.metrics\.Evaluation; got dict"):
        ReportRun("m", evaluation={"opis": 0.1})  # type: ignore[arg-type]


@pytest.mark.parametrize("names", ["abc", [1, 2], 3])
def test_error_class_names_type(names: Any) -> None:
    with pytest.raises(ValueError, match="class_names must be a sequence of strings"):
        ReportRun("m", np.ones((2, 2)), [0, 1], class_names=names)


def test_error_metrics_not_dict() -> None:
    with pytest.raises(ValueError, match="metrics must be a dict"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics=[0.5])  # type: ignore[arg-type]


@pytest.mark.parametrize("t", [1.5, -1.01, float("nan")])
def test_error_threshold_range(tmp_path: Path, t: float) -> None:
    with pytest.raises(ValueError, match="threshold is a cosine similarity"):
        write_report(tmp_path, [make_run("a")], threshold=t)


def test_error_threshold_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"threshold must be a float or None; got '0\.5'"):
        write_report(tmp_path, [make_run("a")], threshold="0.5")  # type: ignore[arg-type]


@pytest.mark.parametrize("far", [0.0, 1.0, -0.1, float("inf")])
def test_error_target_far(tmp_path: Path, far: float) -> None:
    with pytest.raises(ValueError, match="target_far must lie in"):
        write_report(tmp_path, [make_run("a")], target_far=far)


@pytest.mark.parametrize("rng", [(0.1, 0.01), (0.0, 0.1), (0.01, 1.0), (0.1, 0.1)])
def test_error_far_range_order(tmp_path: Path, rng: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="far_range must satisfy 0 < f_lo < f_hi < 1"):
        write_report(tmp_path, [make_run("a")], far_range=rng)


def test_error_far_range_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="far_range must be a pair"):
        write_report(tmp_path, [make_run("a")], far_range=(0.01,))  # type: ignore[arg-type]


def test_error_title_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="title must be a string; got int"):
        write_report(tmp_path, [make_run("a")], title=3)  # type: ignore[arg-type]


def test_error_out_dir_is_file(tmp_path: Path, no_passes: None) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="out_dir exists and is not a directory"):
        write_report(f, [make_run("a")])


# --------------------------------------------------------------------------------------------
# Small units: metric keys, formatting, HTML helpers, plots
# --------------------------------------------------------------------------------------------


def test_metric_keys_order() -> None:
    assert METRIC_KEYS == (
        "recall_at_1",
        "map_at_r",
        "opis",
        "epsilon_opis_0.05",
        "epsilon_opis_0.1",
    )
    # the report's keys are the evaluation vocabulary
    emb, labels = make_data()
    assert set(METRIC_KEYS) <= set(report_evaluation(emb, labels).metrics())
    labels_shown = [metric_label(k) for k in METRIC_KEYS]
    assert labels_shown == ["Recall@1", "MAP@R", "OPIS", "eps-OPIS 5%", "eps-OPIS 10%"]


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40))
def test_esc_roundtrip_has_no_markup(s: str) -> None:
    import html as std_html

    e = H.esc(s)
    assert not set("<>\"'") & set(e)
    assert std_html.unescape(e) == s


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(max_size=10), min_size=1, max_size=4))
def test_table_cells_escaped(cells: list[str]) -> None:
    out = H.table(["h"] * len(cells), [cells])
    assert out.count("<td>") == len(cells)
    for c in cells:
        assert f"<td>{H.esc(c)}</td>" in out
    assert "<td><i>x</i></td>" in H.table(["h"], [[H.raw("<i>x</i>")]])


@settings(max_examples=30, deadline=None)
@given(st.floats(0, 1), st.floats(0, 10))
def test_format_metric(r1: float, o: float) -> None:
    # 4 decimals: half a unit in the 4th place; 4 significant digits: half a unit in the 4th
    assert float(format_metric("recall_at_1", r1)) == pytest.approx(r1, abs=5e-5)
    assert float(format_metric("map_at_r", r1)) == pytest.approx(r1, abs=5e-5)
    assert float(format_metric("opis", o)) == pytest.approx(o, rel=5e-4, abs=1e-300)
    assert float(format_metric("epsilon_opis_0.1", o)) == pytest.approx(o, rel=5e-4, abs=1e-300)


def test_plots_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"utility must have shape \(T, 3\)"):
        plots.plot_utility_curves(np.arange(3.0), np.zeros((2, 4)), title="x")
    with pytest.raises(ValueError, match="histogram shapes disagree"):
        plots.plot_similarity_distributions(np.arange(4.0), np.zeros(3), np.zeros(2), title="x")
    with pytest.raises(ValueError, match="one FAR/FRR array"):
        plots.plot_far_frr_spread(
            ["a"], [], [], target_far=1e-3, global_fars=[0.0], global_frrs=[0.0]
        )
    with pytest.raises(ValueError, match="one R@1 and one OPIS"):
        plots.plot_accuracy_consistency(["a", "b"], [0.5], [0.1])


def test_plots_handle_many_classes_and_degenerate_input() -> None:
    rng = np.random.default_rng(0)
    t = np.linspace(0.2, 0.5, 21)
    fig = plots.plot_utility_curves(t, rng.uniform(size=(3000, 21)), title="$x$ many", max_lines=50)
    png = plots.figure_to_png(fig)
    assert Image.open(io.BytesIO(png)).size[0] > 100
    # a single run, identical values, zero FARs: axes limits must stay finite
    png = plots.figure_to_png(plots.plot_accuracy_consistency(["only"], [1.0], [0.0]))
    assert png.startswith(b"\x89PNG")
    fig = plots.plot_far_frr_spread(
        ["a"], [np.zeros(5)], [np.ones(5)], target_far=1e-3, global_fars=[0.0], global_frrs=[1.0]
    )
    assert plots.figure_to_png(fig).startswith(b"\x89PNG")


# --------------------------------------------------------------------------------------------
# End to end with the real tcm.metrics, checked against the brute-force reference
# --------------------------------------------------------------------------------------------


def test_real_metrics_match_brute_force(tmp_path: Path, fast_png: None) -> None:
    run = make_run("real", n_classes=7, per_class=5, noise=0.8, seed=11)
    far_range = (0.02, 0.2)
    index = write_report(tmp_path, [run], target_far=0.05, far_range=far_range)
    got = read_json(index)["runs"][0]
    assert run.embeddings is not None and run.labels is not None
    emb, lab = np.asarray(run.embeddings), np.asarray(run.labels)
    ref = ref_consistency(emb, lab, far_range)
    r1, mapr, _ = ref_retrieval(emb, lab)
    m = got["metrics"]
    # utility tables are ratios of exact pair counts; the float32 similarities shift the grid by
    # at most _SIM_TOL, which moves no pair across a grid threshold for this seed
    assert m["opis"] == pytest.approx(ref["opis"], rel=1e-6, abs=1e-12)
    assert m["epsilon_opis_0.05"] == pytest.approx(ref["epsilon_opis"][0.05], rel=1e-6)
    assert m["epsilon_opis_0.1"] == pytest.approx(ref["epsilon_opis"][0.10], rel=1e-6)
    assert m["recall_at_1"] == pytest.approx(r1)
    assert m["map_at_r"] == pytest.approx(mapr)
    s, i, j = _pairs(emb, lab)
    t_ref = np.quantile(s[lab[i] != lab[j]], 0.95)
    assert got["threshold"] == pytest.approx(t_ref, abs=_SIM_TOL)
    _, tar, trr = ref_per_class(emb, lab, got["threshold"])
    assert got["per_class_far"]["max"] == pytest.approx(np.max(1 - trr), abs=1e-9)
    assert got["per_class_frr"]["median"] == pytest.approx(np.median(1 - tar), abs=1e-9)
    html = index.read_text(encoding="utf-8")
    assert f"<td>{format_metric('opis', m['opis'])}</td>" in html


def test_real_metrics_accept_torch_tensors(tmp_path: Path, fast_png: None) -> None:
    import torch

    emb, labels = make_data(seed=2)
    run = ReportRun("np", emb, labels)
    t_run = ReportRun("torch", torch.as_tensor(emb, dtype=torch.float32), torch.as_tensor(labels))
    index = write_report(tmp_path, [run, t_run], threshold=0.3)
    runs = read_json(index)["runs"]
    assert runs[0]["metrics"]["opis"] == pytest.approx(runs[1]["metrics"]["opis"], rel=1e-4)
    assert runs[0]["per_class_far"] == pytest.approx(runs[1]["per_class_far"], abs=1e-6)


def test_real_metrics_error_names_the_run(tmp_path: Path) -> None:
    run = ReportRun("one-class", np.random.default_rng(0).normal(size=(6, 4)), np.zeros(6))
    with pytest.raises(ValueError, match="run 'one-class': "):
        write_report(tmp_path / "o", [run])
    assert not (tmp_path / "o").exists()


def test_error_metric_negative_eps_opis() -> None:
    with pytest.raises(ValueError, match=r"'epsilon_opis_0.05' must be >= 0; got -1\.0"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={"epsilon_opis_0.05": -1.0})


def test_real_metrics_error_names_the_run_from_embeddings() -> None:
    with pytest.raises(ValueError, match="run 'one-class': "):
        ReportRun.from_embeddings("one-class", np.eye(6, 4), np.zeros(6))
