"""`tcm report --scorer ...` and the DET section: every source as a cosine run and a normalised
run, the normalised numbers equal `tcm evaluate` / `tcm calibrate --on` with the same scorer,
DET data equal to the library's functions on all pairs, bad input refused with one line (issue
21)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tcm.cli.main import main
from tcm.metrics import det_curve, min_dcf
from tcm.report import ReportRun, write_report
from tcm.report import detection as D
from tcm.scoring import ASNorm
from test_cli_scoring import _npz

# The same engine on the same float32 embeddings in both commands: equal but for the float64
# rounding of a few operations on scores of order 10 (z-scores).
RTOL = 1e-9


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "emb": _npz(tmp_path / "emb.npz", 0, "test"),
        "target": _npz(tmp_path / "target.npz", 6, "other", classes=6),
        "cohort": _npz(tmp_path / "cohort.npz", 1, "train", classes=8),  # 40 samples
        "overlap": _npz(tmp_path / "overlap.npz", 3, "test", classes=3),
    }


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _asnorm(files: dict[str, Path]) -> list[str]:
    return ["--scorer", "asnorm", "--top-k", "20", "--cohort", str(files["cohort"])]


def test_report_shows_raw_and_normalised_runs_with_evaluates_numbers(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    assert main(["report", str(files["emb"]), "--out", str(out), *_asnorm(files)]) == 0
    ev_norm, ev_raw = tmp_path / "norm.json", tmp_path / "raw.json"
    assert main(["evaluate", str(files["emb"]), *_asnorm(files), "--json", str(ev_norm)]) == 0
    assert main(["evaluate", str(files["emb"]), "--json", str(ev_raw)]) == 0
    capsys.readouterr()
    runs = _json(out / "report.json")["runs"]
    assert [r["name"] for r in runs] == ["emb", "emb · asnorm"]
    for run, path in zip(runs, (ev_raw, ev_norm), strict=True):
        ev = _json(path)
        for key, value in run["metrics"].items():
            assert value == pytest.approx(ev["metrics"][key], rel=RTOL, abs=1e-12), key
        cal = ev["calibration"]
        assert run["threshold"] == pytest.approx(cal["threshold"], rel=RTOL)
        assert run["global_far"] == pytest.approx(cal["global_far"], rel=RTOL)
        assert run["global_tar"] == pytest.approx(cal["global_tar"], rel=RTOL)
    raw, norm = runs
    assert "score_scale" not in raw and "scorer" not in raw
    assert norm["score_scale"] == "z-score"
    assert norm["scorer"]["kind"] == "as-norm" and norm["scorer"]["fit_option"] == "--cohort"
    assert norm["scorer"] == {k: v for k, v in _json(ev_norm)["scorer"].items()}
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "DET curves and minDCF" in html and (out / "det.png").is_file()
    assert "<th>score scale</th>" in html and "<td>z-score</td>" in html
    assert (out / "utility_02_emb-asnorm.png").is_file()


def test_report_det_numbers_equal_the_library_on_every_pair(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    assert main(["report", str(files["emb"]), "--out", str(out), *_asnorm(files)]) == 0
    capsys.readouterr()
    raw, norm = _json(out / "report.json")["runs"]
    with np.load(files["emb"]) as z:
        x, y = z["embeddings"].astype(np.float64), z["labels"]
    with np.load(files["cohort"]) as z:
        sc = ASNorm(top_k=20).fit(z["embeddings"])
    iu = np.triu_indices(len(y), 1)
    same = (y[:, None] == y[None, :])[iu]
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for run, scores in ((raw, (xn @ xn.T)[iu]), (norm, sc.score(x, x)[iu])):
        d = run["detection"]
        assert d["p_target"] == 0.01 and d["c_miss"] == d["c_fa"] == 1.0
        assert d["num_genuine_pairs"] == int(same.sum())
        assert d["num_impostor_pairs"] == int((~same).sum())
        assert d["min_dcf"] == pytest.approx(min_dcf(scores, same, p_target=0.01), abs=1e-12)
        curve = det_curve(scores, same)
        # thinned (1,225 pairs > DET_POINTS): every point kept is a point of the curve
        points = set(zip(curve.fmr.tolist(), curve.fnmr.tolist(), strict=True))
        assert len(d["fmr"]) <= D.DET_POINTS < len(points)
        assert all(p in points for p in zip(d["fmr"], d["fnmr"], strict=True))


def test_report_transfer_row_of_the_normalised_runs_equals_calibrate_on(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    srcs = [str(files["emb"]), str(files["target"])]
    argv = ["report", *srcs, "--out", str(out), "--transfer", "emb:target", *_asnorm(files)]
    assert main(argv) == 0
    js = tmp_path / "c.json"
    cal = ["calibrate", srcs[0], "--far", "0.001", "--on", srcs[1], *_asnorm(files)]
    assert main([*cal, "--json", str(js)]) == 0
    capsys.readouterr()
    rows = _json(out / "report.json")["transfers"]
    assert [(r["source"], r["target"]) for r in rows] == [
        ("emb", "target"),
        ("emb · asnorm", "target · asnorm"),
    ]
    assert "score_scale" not in rows[0] and rows[1]["score_scale"] == "z-score"
    want = _json(js)
    for key in ("threshold", "target_far", "target_tar", "target_threshold"):
        assert rows[1][key] == pytest.approx(want[key], rel=RTOL), key
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "emb · asnorm → target · asnorm" in html


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cohort", "overlap", "--top-k", "5"], "shares 3 class(es) with the evaluated set"),
        (["--cohort", "cohort", "--top-k", "41"], "fewer than --top-k 41"),
        (["--cohort", "cohort", "--threshold", "0.5"], "--threshold is a cosine similarity"),
    ],
)
def test_report_scorer_errors_are_one_line_exit_2(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    argv = [files[v].as_posix() if v in files else v for v in extra]
    out = tmp_path / "rep"
    assert main(["report", str(files["emb"]), "--out", str(out), "--scorer", "asnorm", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tcm report: error: ") and message in err
    assert not (out / "index.html").exists()


def test_cosine_report_from_the_cli_adds_only_the_det_section(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    assert main(["report", str(files["emb"]), "--out", str(out)]) == 0
    capsys.readouterr()
    (run,) = _json(out / "report.json")["runs"]
    assert "score_scale" not in run and "scorer" not in run and "detection" in run
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "score scale</th>" in html  # the DET table's column only
    assert html.count("score scale</th>") == 1 and "z-score" not in html


def _xy(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(8), 6)
    return rng.normal(size=(8, 16))[y] + 0.8 * rng.normal(size=(48, 16)), y


def test_det_of_a_run_over_the_pair_limit_is_streamed_and_labelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _xy()
    monkeypatch.setattr(D, "DET_MAX_PAIRS", 48 * 47 // 2 - 1)
    monkeypatch.setattr(D, "DET_BINS", 500)
    index = write_report(tmp_path, [ReportRun("big", x, y)], target_far=1e-2, det=True)
    d = _json(tmp_path / "report.json")["runs"][0]["detection"]
    assert d["min_dcf_resolution"] == "bins" and d["num_bins"] == 500
    assert d["min_dcf_lower_bound"] <= d["min_dcf"] and len(d["thresholds"]) == len(d["fmr"])
    iu = np.triu_indices(len(y), 1)
    same = (y[:, None] == y[None, :])[iu]
    assert d["num_genuine_pairs"] == int(same.sum()) and d["fmr"][0] == 1.0
    html = index.read_text(encoding="utf-8")
    assert "not computed" not in html and (tmp_path / "det.png").exists()
    assert f"{d['min_dcf']:.4f} (≤ 500 bins; exact ≥ {d['min_dcf_lower_bound']:.4f})" in html
    assert "Runs with more than" in html


def _dyadic(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows of +-1/4 in 16 dimensions: every cosine is 1 - d/8 (d the Hamming distance),
    exact in any dtype and summation order, so brute force and the engine see the same scores;
    many ties, and with 32 bins over [-1, 1] every score lies on a histogram edge."""
    rng = np.random.default_rng(seed)
    proto = rng.choice([-1.0, 1.0], size=(12, 16))
    y = np.repeat(np.arange(12), 8)
    flip = rng.random((96, 16)) < 0.25
    return (np.where(flip, -proto[y], proto[y]) / 4).astype(np.float32), y


def _check_streamed(d: D.RunDetection, scores: np.ndarray, same: np.ndarray) -> None:
    """Every point exact at its threshold (brute force, ``s >= t`` accepted); minDCF between
    its stated lower bound and itself, the exact value inside."""
    assert d.streamed and d.thresholds is not None and d.min_dcf_lower is not None
    gen, imp = scores[same], scores[~same]
    for t, fmr, fnmr in zip(d.thresholds, d.fmr, d.fnmr, strict=True):
        assert fmr == np.count_nonzero(imp >= t) / imp.shape[0], t
        assert fnmr == np.count_nonzero(gen < t) / gen.shape[0], t
    assert (d.fmr[0], d.fnmr[0], d.fmr[-1], d.fnmr[-1]) == (1.0, 0.0, 0.0, 1.0)
    exact = min_dcf(scores, same, p_target=D.DET_P_TARGET)
    # the same count ratios, combined in a different order: a few ulps of a value <= 1
    tol = 8 * np.finfo(np.float64).eps
    assert d.min_dcf_lower - tol <= exact <= d.min_dcf + tol


def test_streamed_det_points_are_exact_with_scores_on_the_bin_edges() -> None:
    x, y = _dyadic(0)
    d = D.run_detection(x, y, max_pairs=0, bins=32)
    iu = np.triu_indices(len(y), 1)
    scores = (x.astype(np.float64) @ x.T.astype(np.float64))[iu]
    same = (y[:, None] == y[None, :])[iu]
    on_edges = np.isin(d.thresholds, np.linspace(-1.0, 1.0, 33)[1:-1])
    assert np.isin(scores, d.thresholds).any() and on_edges.sum() > 10  # ties at thresholds
    _check_streamed(d, scores, same)
    assert d.num_bins == 32 and d.to_dict()["num_bins"] == 32


def test_streamed_det_with_a_scorer_and_the_low_far_end(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _xy(3)
    sc = ASNorm(top_k=10).fit(np.random.default_rng(5).normal(size=(30, 16)))
    iu = np.triu_indices(len(y), 1)
    same = (y[:, None] == y[None, :])[iu]
    m = int((~same).sum())
    _check_streamed(D.run_detection(x, y, sc, max_pairs=0, bins=50), sc.score(x, x)[iu], same)
    # no refining pass and 4 bins over the z-score range: only the FAR quantiles reach the
    # low-FAR end (a point at each of DET_FARS >= 1/M, FAR at most 1.5 times it)
    monkeypatch.setattr(D, "DET_REFINE_MAX", 0)
    d = D.run_detection(x, y, sc, max_pairs=0, bins=4)
    _check_streamed(d, sc.score(x, x)[iu], same)
    assert d.score_scale == "z-score"
    fars = [f for f in D.DET_FARS if f * m >= 1]
    assert len(fars) >= 5 and all(np.any((d.fmr >= f / 1.5) & (d.fmr <= 1.5 * f)) for f in fars)


def test_det_curve_thinning_keeps_both_ends_and_the_limit() -> None:
    x, y = _xy(1)
    x = np.concatenate([x] * 3)  # 144 samples: more distinct scores than DET_POINTS
    y = np.concatenate([y, y + 8, y + 16])
    x = x + 1e-3 * np.random.default_rng(2).normal(size=x.shape)
    scores, same = D.all_pair_scores(x, y)
    curve = det_curve(scores, same)
    d = D.run_detection(x, y)
    assert len(curve.fmr) > D.DET_POINTS >= len(d.fmr) > D.DET_POINTS // 2
    assert (d.fmr[0], d.fnmr[0], d.fmr[-1], d.fnmr[-1]) == (1.0, 0.0, 0.0, 1.0)
    assert np.all(np.diff(d.fmr) <= 0) and np.all(np.diff(d.fnmr) >= 0)
    assert d.min_dcf == min_dcf(scores, same, p_target=D.DET_P_TARGET)
    assert not d.streamed and "num_bins" not in d.to_dict()  # the exact path, as before


def test_report_api_refuses_mismatched_scoring(tmp_path: Path) -> None:
    x, y = _xy()
    sc = ASNorm(top_k=10).fit(np.random.default_rng(5).normal(size=(30, 16)))
    with pytest.raises(ValueError, match="cosine similarity; a as-norm scorer's scores"):
        write_report(tmp_path, [ReportRun("n", x, y, scorer=sc)], threshold=0.3)
    runs = [ReportRun("a", x, y), ReportRun("b", x, y, scorer=sc)]
    with pytest.raises(ValueError, match="'a' -> 'b': the two runs are scored differently"):
        write_report(tmp_path, runs, transfer=[("a", "b")])
    with pytest.raises(ValueError, match="scorer must be a fitted"):
        ReportRun("u", x, y, scorer=ASNorm(top_k=10))
    assert not (tmp_path / "index.html").exists()


def test_group_rates_of_a_normalised_run_are_labelled_with_its_scale(tmp_path: Path) -> None:
    from tcm.metrics import group_operating_point
    from test_report_groups import make_data

    x, y, g = make_data(seed=0)
    sc = ASNorm(top_k=10).fit(np.random.default_rng(5).normal(size=(30, x.shape[1])))
    runs = [ReportRun("raw", x, y, groups=g), ReportRun("raw · asnorm", x, y, groups=g, scorer=sc)]
    index = write_report(tmp_path, runs, target_far=1e-2)
    raw, norm = _json(tmp_path / "report.json")["runs"]
    assert "score_scale" not in raw["groups"] and norm["groups"]["score_scale"] == "z-score"
    want = group_operating_point(x, y, g, norm["threshold"], scorer=sc)
    assert norm["groups"]["far"] == want.far.tolist()
    assert norm["groups"]["frr"] == want.frr.tolist()
    html = index.read_text(encoding="utf-8")
    assert f"threshold t = {norm['threshold']:.4f} (z-score, accept when s ≥ t)" in html
    assert f"threshold t = {raw['threshold']:.4f} (cosine similarity, accept when s ≥ t)" in html
