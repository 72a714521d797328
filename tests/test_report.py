"""Tests of tcm.report: numbers against a brute-force reference, HTML/PNG structure, errors."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tcm.report import (
    METRIC_KEYS,
    ReportRun,
    canonical_metric_key,
    format_metric,
    plots,
    write_report,
)
from tcm.report import compute as report_compute
from tcm.report import html as H

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
    global_far = np.array([np.mean(neg >= t) for t in grid])
    return {
        "opis": opis,
        "epsilon_opis": eps_opis,
        "thresholds": grid,
        "utility": u,
        "tar": np.array(tars).T,
        "trr": np.array(trrs).T,
        "classes": classes,
        "global_far": global_far,
        "neg": neg,
        "pos": s[labels[i] == labels[j]],
    }


def ref_retrieval(emb: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Leave-one-out (R@1, MAP@R) over queries whose class has >= 2 samples."""
    labels = np.asarray(labels)
    x = np.asarray(emb, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    r1, maps = [], []
    for q in range(len(x)):
        r = int(np.sum(labels == labels[q])) - 1
        if r == 0:
            continue
        order = [k for k in np.argsort(-sims[q], kind="stable") if k != q]
        rel = labels[order] == labels[q]
        r1.append(float(rel[0]))
        prec = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        maps.append(float(np.sum(prec * rel[:r]) / r))
    return float(np.mean(r1)), float(np.mean(maps))


class FakeMetrics:
    """Stand-in for tcm.metrics built on the brute-force reference (fast plumbing tests)."""

    calls: list[str]

    def __init__(self) -> None:
        self.calls = []

    def threshold_consistency(
        self, emb: Any, labels: Any, far_range: Any, num_thresholds: int, epsilons: Any
    ) -> Any:
        self.calls.append("threshold_consistency")
        r = ref_consistency(np.asarray(emb), np.asarray(labels), far_range, num_thresholds)
        lab = np.asarray(labels)
        cls, cnt = np.unique(lab, return_counts=True)
        return SimpleNamespace(
            opis=r["opis"],
            epsilon_opis=r["epsilon_opis"],
            thresholds=r["thresholds"],
            utility=r["utility"],
            classes=cls[cnt >= 2],
            class_sizes=cnt[cnt >= 2],
            excluded_classes=cls[cnt < 2],
            global_far=r["global_far"],
        )

    def threshold_at_far(self, emb: Any, labels: Any, far: float) -> float:
        self.calls.append("threshold_at_far")
        s, i, j = _pairs(np.asarray(emb), np.asarray(labels))
        lab = np.asarray(labels)
        return float(np.quantile(s[lab[i] != lab[j]], 1 - far))

    def operating_point(self, emb: Any, labels: Any, t: float) -> Any:
        self.calls.append("operating_point")
        lab = np.asarray(labels)
        classes, tar, trr = ref_per_class(np.asarray(emb), lab, t)
        s, i, j = _pairs(np.asarray(emb), lab)
        same = lab[i] == lab[j]
        return SimpleNamespace(
            classes=classes,
            far=1 - trr,
            frr=1 - tar,
            global_far=float(np.mean(s[~same] >= t)),
            global_tar=float(np.mean(s[same] >= t)),
        )

    def similarity_histogram(self, emb: Any, labels: Any, bins: int) -> Any:
        self.calls.append("similarity_histogram")
        lab = np.asarray(labels)
        s, i, j = _pairs(np.asarray(emb), lab)
        edges = np.linspace(-1, 1, bins + 1)
        same = lab[i] == lab[j]
        return SimpleNamespace(
            edges=edges,
            pos=np.histogram(s[same], edges)[0],
            neg=np.histogram(s[~same], edges)[0],
        )

    def retrieval_metrics(self, emb: Any, labels: Any, ks: Any) -> Any:
        self.calls.append("retrieval_metrics")
        r1, mapr = ref_retrieval(np.asarray(emb), np.asarray(labels))
        return SimpleNamespace(recall_at_k={1: r1}, map_at_r=mapr)


@pytest.fixture
def fake_metrics(monkeypatch: pytest.MonkeyPatch) -> FakeMetrics:
    fake = FakeMetrics()
    monkeypatch.setattr(report_compute, "_import_metrics", lambda: fake)
    return fake


_TINY_PNG = b"\x89PNG\r\n\x1a\n" + b"tiny"


@pytest.fixture
def fast_png(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip PNG encoding (the slow part) in tests that only check numbers, not images."""
    from tcm.report import writer

    monkeypatch.setattr(writer, "figure_to_png", lambda fig: _TINY_PNG)


def make_run(
    name: str, n_classes: int = 8, per_class: int = 6, noise: float = 0.7, seed: int = 0
) -> ReportRun:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centers = rng.normal(size=(n_classes, 16))
    emb = centers[labels] + noise * rng.normal(size=(labels.size, 16))
    return ReportRun(name, emb, labels)


def read_json(index: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((index.parent / "report.json").read_text())
    return data


def img_srcs(html: str) -> list[str]:
    return re.findall(r'<img\s[^>]*src="([^"]*)"', html)


# --------------------------------------------------------------------------------------------
# Plumbing tests with the fake metrics module
# --------------------------------------------------------------------------------------------


def test_html_is_self_contained_with_one_img_per_png(
    tmp_path: Path, fake_metrics: FakeMetrics
) -> None:
    runs = [make_run("base", seed=0), make_run("base+TCM", seed=1, noise=0.5)]
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


def test_table_values_match_brute_force(
    tmp_path: Path, fake_metrics: FakeMetrics, fast_png: None
) -> None:
    run = make_run("r", n_classes=6, per_class=5, seed=3)
    far_range = (0.02, 0.2)
    index = write_report(tmp_path, [run], far_range=far_range, target_far=0.05)
    html = index.read_text(encoding="utf-8")
    ref = ref_consistency(run.embeddings, run.labels, far_range)
    r1, mapr = ref_retrieval(run.embeddings, run.labels)
    expected = {
        "R@1": r1,
        "MAP@R": mapr,
        "OPIS": ref["opis"],
        "eps-OPIS@5%": ref["epsilon_opis"][0.05],
        "eps-OPIS@10%": ref["epsilon_opis"][0.10],
    }
    got = read_json(index)["runs"][0]["metrics"]
    for key, val in expected.items():
        assert got[key] == pytest.approx(val, rel=1e-9, abs=1e-12)
        assert f"<td>{format_metric(key, val)}</td>" in html
    assert f"{r1:.4f}" in html and f"{ref['opis']:.3e}" in html


def test_given_threshold_per_class_far_frr(
    tmp_path: Path, fake_metrics: FakeMetrics, fast_png: None
) -> None:
    run = make_run("r", n_classes=5, per_class=4, seed=4)
    t = 0.35
    index = write_report(tmp_path, [run], threshold=t)
    summary = read_json(index)["runs"][0]
    _, tar, trr = ref_per_class(run.embeddings, run.labels, t)
    assert summary["threshold"] == t and summary["threshold_source"] == "given"
    assert summary["per_class_far"]["max"] == pytest.approx(np.max(1 - trr))
    assert summary["per_class_far"]["median"] == pytest.approx(np.median(1 - trr))
    assert summary["per_class_frr"]["mean"] == pytest.approx(np.mean(1 - tar))
    assert summary["classes_far_above_2x_target"] == int(np.sum(1 - trr > 2e-3))
    assert "threshold_at_far" not in fake_metrics.calls


def test_calibrated_threshold_uses_threshold_at_far(
    tmp_path: Path, fake_metrics: FakeMetrics, fast_png: None
) -> None:
    run = make_run("r", seed=5)
    index = write_report(tmp_path, [run], target_far=0.05)
    summary = read_json(index)["runs"][0]
    s, i, j = _pairs(run.embeddings, run.labels)
    lab = np.asarray(run.labels)
    expected = np.quantile(s[lab[i] != lab[j]], 0.95)
    assert summary["threshold_source"] == "calibrated"
    assert summary["threshold"] == pytest.approx(expected)


def test_caller_metrics_are_used_and_marked(
    tmp_path: Path, fake_metrics: FakeMetrics, fast_png: None
) -> None:
    run = make_run("r")
    run.metrics = {"recall@1": 0.123456, "MAP@R": 0.0421, "R@2": 0.5}
    index = write_report(tmp_path, [run])
    html = index.read_text(encoding="utf-8")
    got = read_json(index)["runs"][0]
    assert got["metrics"]["R@1"] == 0.123456
    assert got["metric_sources"]["R@1"] == "caller"
    assert got["metric_sources"]["OPIS"] == "computed"
    assert "retrieval_metrics" not in fake_metrics.calls  # both retrieval metrics were given
    assert "0.1235<sup>†</sup>" in html
    assert "<th>R@2</th>" in html


def test_run_names_are_escaped(tmp_path: Path, fake_metrics: FakeMetrics) -> None:
    evil = '<script>alert("x")</script> & $\\alpha$'
    index = write_report(
        tmp_path, [make_run(evil), make_run("ok")], title="<b>title</b>", target_far=1e-2
    )
    html = index.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; $\\alpha$" in html
    assert "<b>title</b>" not in html and "&lt;b&gt;title&lt;/b&gt;" in html
    # file names derived from the run name contain only safe characters
    for p in index.parent.iterdir():
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+", p.name), p.name


def test_string_labels_and_singleton_classes(
    tmp_path: Path, fake_metrics: FakeMetrics, fast_png: None
) -> None:
    run = make_run("r", n_classes=6, per_class=4)
    labels = np.array([f"cls<{v}>" for v in np.asarray(run.labels)], dtype=object)
    emb = np.vstack([np.asarray(run.embeddings), np.ones((1, 16))])
    labels = np.append(labels, "lonely")
    index = write_report(tmp_path, [ReportRun("strings", emb, labels)], target_far=1e-2)
    summary = read_json(index)["runs"][0]
    assert summary["num_excluded_classes"] == 1
    assert summary["num_classes"] == 7
    assert "cls&lt;" in index.read_text(encoding="utf-8")


def test_rewrite_replaces_files_atomically(
    tmp_path: Path, fake_metrics: FakeMetrics, fast_png: None
) -> None:
    write_report(tmp_path, [make_run("a")], title="first")
    index = write_report(tmp_path, [make_run("a")], title="second")
    assert "second" in index.read_text(encoding="utf-8")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tcm-report-")]


def test_failure_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeMetrics()
    monkeypatch.setattr(report_compute, "_import_metrics", lambda: fake)

    def boom(*a: Any, **k: Any) -> Any:
        raise ValueError("no negative pairs")

    monkeypatch.setattr(fake, "similarity_histogram", boom)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"run 'bad': no negative pairs"):
        write_report(out, [make_run("bad")])
    assert not out.exists()


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


def test_error_metric_percent() -> None:
    with pytest.raises(ValueError, match=r"'R@1' must be a fraction in \[0, 1\].*81.2"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={"R@1": 81.2})


def test_error_metric_not_finite() -> None:
    with pytest.raises(ValueError, match="'OPIS' is not finite: nan"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={"OPIS": float("nan")})


def test_error_metric_negative_opis() -> None:
    with pytest.raises(ValueError, match=r"must be >= 0; got -0\.1"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={"opis": -0.1})


def test_error_metric_not_number() -> None:
    with pytest.raises(ValueError, match="must be a number; got 'high'"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={"R@1": "high"})  # type: ignore[dict-item]


def test_error_metric_twice() -> None:
    with pytest.raises(ValueError, match="'R@1' given twice"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={"R@1": 0.5, "recall@1": 0.5})


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


def test_error_out_dir_is_file(tmp_path: Path, fake_metrics: FakeMetrics) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="out_dir exists and is not a directory"):
        write_report(f, [make_run("a")])


# --------------------------------------------------------------------------------------------
# Small units: metric keys, formatting, HTML helpers, plots
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "canon"),
    [
        ("R@1", "R@1"),
        ("recall@1", "R@1"),
        ("Recall_at_1", "R@1"),
        ("map@r", "MAP@R"),
        ("opis", "OPIS"),
        ("ε-OPIS@5%", "eps-OPIS@5%"),
        ("epsilon_opis@0.1", "eps-OPIS@10%"),
        ("epsilon_opis_0.05", "eps-OPIS@5%"),
        ("epsilon_opis_0.1", "eps-OPIS@10%"),
        ("map_at_r", "MAP@R"),
        ("R@4", "R@4"),
    ],
)
def test_canonical_metric_key(key: str, canon: str) -> None:
    assert canonical_metric_key(key) == canon


def test_metric_keys_order() -> None:
    assert METRIC_KEYS == ("R@1", "MAP@R", "OPIS", "eps-OPIS@5%", "eps-OPIS@10%")


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
    assert float(format_metric("R@1", r1)) == pytest.approx(r1, abs=5e-5)
    assert float(format_metric("OPIS", o)) == pytest.approx(o, rel=5e-3, abs=1e-300)


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
    ref = ref_consistency(run.embeddings, run.labels, far_range)
    r1, mapr = ref_retrieval(run.embeddings, run.labels)
    assert got["metrics"]["OPIS"] == pytest.approx(ref["opis"], rel=1e-6, abs=1e-12)
    assert got["metrics"]["eps-OPIS@5%"] == pytest.approx(ref["epsilon_opis"][0.05], rel=1e-6)
    assert got["metrics"]["eps-OPIS@10%"] == pytest.approx(ref["epsilon_opis"][0.10], rel=1e-6)
    assert got["metrics"]["R@1"] == pytest.approx(r1)
    assert got["metrics"]["MAP@R"] == pytest.approx(mapr)
    lab = np.asarray(run.labels)
    s, i, j = _pairs(run.embeddings, lab)
    t_ref = np.quantile(s[lab[i] != lab[j]], 0.95)
    assert got["threshold"] == pytest.approx(t_ref, abs=1e-6)
    _, tar, trr = ref_per_class(run.embeddings, lab, got["threshold"])
    assert got["per_class_far"]["max"] == pytest.approx(np.max(1 - trr), abs=1e-9)
    assert got["per_class_frr"]["median"] == pytest.approx(np.median(1 - tar), abs=1e-9)
    html = index.read_text(encoding="utf-8")
    assert f"<td>{format_metric('OPIS', got['metrics']['OPIS'])}</td>" in html


def test_real_metrics_accept_torch_tensors(tmp_path: Path, fast_png: None) -> None:
    import torch

    run = make_run("np", seed=2)
    t_run = ReportRun(
        "torch",
        torch.as_tensor(np.asarray(run.embeddings), dtype=torch.float32),
        torch.as_tensor(np.asarray(run.labels)),
    )
    index = write_report(tmp_path, [run, t_run], threshold=0.3)
    runs = read_json(index)["runs"]
    assert runs[0]["metrics"]["OPIS"] == pytest.approx(runs[1]["metrics"]["OPIS"], rel=1e-4)
    assert runs[0]["per_class_far"] == pytest.approx(runs[1]["per_class_far"], abs=1e-6)


def test_real_metrics_error_names_the_run(tmp_path: Path) -> None:
    run = ReportRun("one-class", np.random.default_rng(0).normal(size=(6, 4)), np.zeros(6))
    with pytest.raises(ValueError, match="run 'one-class': "):
        write_report(tmp_path / "o", [run])
    assert not (tmp_path / "o").exists()


def test_error_metric_negative_eps_opis() -> None:
    with pytest.raises(ValueError, match=r"'eps_opis@5%' must be >= 0; got -1\.0"):
        ReportRun("m", np.ones((2, 2)), [0, 1], metrics={"eps_opis@5%": -1.0})
