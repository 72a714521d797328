"""experiments/normalisers.py (issue 22): what each scorer is fitted on, the choices, the
compressed embeddings, minDCF from a histogram, the group oracle in the pair engine, the
summary rows' scorer field and the docs section markers. Tiny synthetic embeddings."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _experiments import load_experiment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))  # the scripts import their siblings

norm = load_experiment("normalisers")
evidence = load_experiment("evidence")
summary = load_experiment("summary")
report = load_experiment("report_normalisers")
run = load_experiment("run")

BENCH = evidence.Benchmark("t", (), ("a",), ("b",), "within")


def _data(n_classes: int = 40, per: int = 6, seed: int = 0) -> Any:
    """``per`` samples per class, half of each class in domain ``a`` (source), half in ``b``;
    the first half of the classes is the calibration half."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per)
    g = np.tile(np.repeat(["a", "b"], per // 2), n_classes)
    shift = np.where(g == "b", 1.2, 0.8)[:, None]
    x = rng.normal(size=(n_classes, 12))[y] + shift * rng.normal(size=(y.size, 12))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    names = np.array([f"k{i}" for i in range(n_classes)])
    return norm.RunData(x, y, names, g, y < n_classes // 2)


def _npz(tmp_path: Path, data: Any) -> Path:
    src = tmp_path / "run.npz"
    np.savez(
        src,
        embeddings=data.embeddings,
        labels=data.labels,
        class_names=data.class_names,
        groups=data.groups,
        ids=np.array([f"id{i}" for i in range(data.labels.size)]),
    )
    dst = tmp_path / "normalisers" / "t" / "run.npz"
    norm.save_compressed(src, dst, data.calibration)
    return dst


# ----------------------------------------------------------------------------- fitting data


def test_fit_mask_never_touches_the_evaluation_half_the_select_part_or_the_target() -> None:
    rng = np.random.default_rng(1)
    cal, src, sel = (rng.random(500) < 0.5 for _ in range(3))
    for s in norm.SCORERS:
        m = norm.fit_mask(s, cal, src, sel)
        assert not (m & ~cal).any() and not (m & sel).any()
        if s == "gst_oracle":  # the oracle: every domain of the fit part
            assert np.array_equal(m, cal & ~sel)
        else:
            assert not (m & ~src).any() and np.array_equal(m, cal & ~sel & src)
    thr = norm.threshold_mask(cal, sel)
    assert not (thr & ~cal).any() and not (thr & m).any()
    with pytest.raises(ValueError, match="unknown scorer 'znorm'"):
        norm.fit_mask("znorm", cal, src, sel)


def test_analyse_fits_and_calibrates_only_on_the_calibration_half(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data()
    path = _npz(tmp_path, data)
    fitted: dict[str, np.ndarray] = {}
    thresholds: list[np.ndarray] = []
    fit_scorer, deployment_view = norm.fit_scorer, norm.deployment_view

    def spy_fit(name: str, scorer: Any, d: Any, mask: np.ndarray) -> Any:
        fitted[name] = mask.copy()
        return fit_scorer(name, scorer, d, mask)

    def spy_dep(emb: Any, lab: Any, groups: Any, cal: np.ndarray, *a: Any, **kw: Any) -> Any:
        thresholds.append(cal.copy())
        assert not (kw["evaluation"] & cal).any()
        return deployment_view(emb, lab, groups, cal, *a, **kw)

    monkeypatch.setattr(norm, "fit_scorer", spy_fit)
    monkeypatch.setattr(norm, "deployment_view", spy_dep)
    rec = norm.analyse(path, BENCH, {"asnorm": 5, "fsn": 2, "faircal": 2}, far=0.05, n_boot=40)
    assert set(rec["scorers"]) == set(norm.SCORERS) == set(fitted)
    target = data.groups == "b"
    for name, m in fitted.items():
        assert m.any() and not (m & ~data.calibration).any(), name
        assert name == "gst_oracle" or not (m & target).any(), name
        assert rec["scorers"][name]["needs"]["samples"] == (int(m.sum()) if name != "cosine" else 0)
    assert all(not (t & ~data.calibration).any() for t in thresholds)
    assert all(not (t & fitted["asnorm"]).any() for t in thresholds)  # cohort: no scored pair
    cos = rec["scorers"]["cosine"]
    assert cos["fitted_on"] is None and cos["score_scale"] == "cosine"
    assert rec["scorers"]["asnorm"]["score_scale"] == "z-score"
    assert rec["scorers"]["gst_oracle"]["ambiguous_rows"] == 0
    n_ev = int((~data.calibration).sum())
    assert rec["samples"]["evaluation"] == n_ev
    assert cos["deployment"]["classes"] == 20  # the evaluation half's classes only
    for s in rec["scorers"].values():
        assert 0 <= s["metrics"]["min_dcf"] <= 1 and np.isfinite(s["transfer"]["far_ratio"])


# ----------------------------------------------------------------------------- the oracle


def test_group_lookup_scores_equal_group_thresholds_with_the_groups_given() -> None:
    from tcm.scoring import GroupThresholds

    data = _data()
    fit = data.calibration
    gst = GroupThresholds(far=0.05).fit(data.embeddings[fit], data.labels[fit], data.groups[fit])
    look = norm.GroupLookup(gst, data.embeddings, data.groups)
    idx = np.random.default_rng(2).permutation(data.labels.size)[:50]  # any subset, any order
    x, g = data.embeddings[idx], data.groups[idx]
    want = gst.score(x, x, groups_a=g, groups_b=g)
    got = look.score(x, x)
    # float64 scores of the same cosines: differences only from the shift's float64 rounding
    assert np.allclose(got, want, rtol=0, atol=8 * np.finfo(np.float64).eps)
    with pytest.raises(ValueError, match="none of the table's samples"):
        look.prepare(np.eye(12, dtype=np.float32)[:2])


# ----------------------------------------------------------------------------- minDCF


def test_min_dcf_from_histogram_equals_the_exact_value_when_scores_sit_in_their_own_bins() -> None:
    from tcm.metrics.detection import min_dcf

    rng = np.random.default_rng(3)
    bins = 1000
    centres = -1 + (np.arange(bins) + 0.5) * 2 / bins
    s = rng.choice(centres, size=400, replace=False)
    same = rng.random(400) < (s + 1) / 2
    pos = np.histogram(s[same], bins=bins, range=(-1, 1))[0]
    neg = np.histogram(s[~same], bins=bins, range=(-1, 1))[0]
    for p in (0.01, 0.5):
        exact = min_dcf(s, same, p_target=p)
        assert norm.min_dcf_from_histogram(pos, neg, p) == pytest.approx(exact, rel=1e-12)
    coarse = (
        np.add.reduceat(pos, np.arange(0, bins, 50)),
        np.add.reduceat(neg, np.arange(0, bins, 50)),
    )
    assert norm.min_dcf_from_histogram(*coarse) >= min_dcf(s, same) - 1e-12
    with pytest.raises(ValueError, match="genuine and impostor"):
        norm.min_dcf_from_histogram(np.zeros(3), np.ones(3))


# ----------------------------------------------------------------------------- choices


def test_pick_takes_the_lowest_and_breaks_ties_towards_the_smaller_value() -> None:
    assert norm.pick({10: 0.5, 25: 0.4, 50: 0.45}) == 25
    assert norm.pick({50: 0.4, 10: 0.4, 25: 0.7}) == 10
    with pytest.raises(ValueError):
        norm.pick({})


def test_select_classes_is_a_fixed_hash_of_the_name() -> None:
    names = [f"c{i}" for i in range(400)]
    a = norm.select_classes(names)
    b = norm.select_classes(names[::-1])[::-1]
    assert np.array_equal(a, b) and 150 < a.sum() < 250


def test_choose_fits_on_the_fit_part_and_scores_the_select_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _data()
    sel = norm.select_classes(data.class_names)[data.labels]
    seen: list[np.ndarray] = []
    fit_scorer = norm.fit_scorer

    def spy(name: str, scorer: Any, d: Any, mask: np.ndarray) -> Any:
        seen.append(mask.copy())
        return fit_scorer(name, scorer, d, mask)

    monkeypatch.setattr(norm, "fit_scorer", spy)
    monkeypatch.setattr(
        norm,
        "CHOICE_GRIDS",
        {"normaliser_asnorm_top_k": ("asnorm", "top_k", (5, 10, 10_000))},
    )
    out = norm.choose({"r0": data, "r1": _data(seed=1)}, BENCH)
    res = out["normaliser_asnorm_top_k"]
    assert set(res["validation"]) == {5, 10}  # 10,000 exceeds the fit part: left out
    assert res["value"] == norm.pick(res["validation"])
    assert all(not (m & (sel | ~data.calibration | (data.groups == "b"))).any() for m in seen)


def test_run_list_reads_the_normaliser_choices_from_choices_json(tmp_path: Path) -> None:
    assert tuple(run.NORMALISER_CHOICE_KEYS) == tuple(norm.CHOICE_GRIDS)
    doc = json.loads(run.CHOICES.read_text())
    doc["choices"]["normaliser_fsn_k"]["value"] = {"glyphs": 10, "emoji": 20}
    path = tmp_path / "choices.json"
    path.write_text(json.dumps(doc))
    ch = run.load_choices(path)
    assert ch.normalisers["fsn"]["emoji"] == 20
    assert ch.normaliser_params("cjk_glyphs") is None  # not chosen yet
    runs = run.runs_normalisers(ch)
    assert len(runs) == 3 * 3 * 2 * 5
    assert {r.tags["loss"] for r in runs} == set(norm.LOSSES)
    doc["choices"]["normaliser_fsn_k"]["value"] = {"mnist": 10}
    path.write_text(json.dumps(doc))
    with pytest.raises(run.ChoicesError, match=r"normaliser_fsn_k\.value") as info:
        run.load_choices(path)
    assert "\n" not in str(info.value)


def test_check_choices_flags_a_normaliser_value_its_scores_do_not_give(tmp_path: Path) -> None:
    doc = json.loads(run.CHOICES.read_text())
    entry = doc["choices"]["normaliser_faircal_k"]
    entry["value"] = {"glyphs": 20}
    entry["validation"] = {"glyphs": {"5": 0.5, "10": 0.4, "20": 0.45}}
    path = tmp_path / "choices.json"
    path.write_text(json.dumps(doc))
    diffs = [d for d in run.check_choices(path) if d.startswith("normaliser_")]
    assert len(diffs) == 1 and "give 10" in diffs[0]


def test_a_run_without_embeddings_is_skipped_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(run, "RUNS", tmp_path / "runs")
    r = run.runs_normalisers()[0]
    msg = run.normaliser_one("normalisers", r, False)
    assert isinstance(msg, str) and "no embeddings yet" in msg and "\n" not in msg
    assert not (tmp_path / "results").exists()


def test_train_missing_trains_the_evidence_folder_then_analyses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(run, "RUNS", tmp_path / "runs")
    r = run.runs_normalisers()[0]
    trained: list[Path] = []

    def fake_train(run_: Any, out_dir: Path, force: bool = False) -> None:
        trained.append(out_dir)  # no embeddings written: the run is still skipped after it

    monkeypatch.setattr(run, "train_folder", fake_train)
    assert "no embeddings yet" in str(run.normaliser_one("normalisers", r, False))
    assert trained == []  # without --train-missing nothing is trained
    assert "no embeddings yet" in str(run.normaliser_one("normalisers", r, False, True))
    assert trained == [tmp_path / "runs" / "evidence" / r.name]


# ----------------------------------------------------------------------------- saved embeddings


def test_compressed_embeddings_round_trip(tmp_path: Path) -> None:
    data = _data()
    path = _npz(tmp_path, data)
    assert [p.name for p in path.parent.iterdir()] == ["run.npz"]  # no temporary left
    with np.load(path) as f:
        assert "ids" not in f.files and f["embeddings"].dtype == np.float16
    back = norm.load_compressed(path)
    assert np.array_equal(back.labels, data.labels) and np.array_equal(back.groups, data.groups)
    assert np.array_equal(back.calibration, data.calibration)
    assert np.allclose(np.linalg.norm(back.embeddings, axis=1), 1, atol=1e-6)
    # float16 keeps 11 significant bits of each unit-vector coordinate
    assert np.abs(back.embeddings - data.embeddings).max() < 2 * 2.0**-11
    bad = tmp_path / "bad.npz"
    np.savez(bad, embeddings=data.embeddings)
    with pytest.raises(ValueError, match=r"bad\.npz: not a normalisers embeddings file"):
        norm.load_compressed(bad)


# ----------------------------------------------------------------------------- summary rows


def _rec(loss: str, tcm: bool, seed: int, opis: dict[str, float]) -> dict[str, Any]:
    return {
        "tags": {"dataset": "glyphs", "loss": loss, "tcm": tcm, "seed": seed},
        "analysis_s": 1.0,
        "scorers": {
            s: {
                "metrics": {"opis": v, "min_dcf": 0.5},
                "intervals": {"opis": [v - 0.1, v + 0.1]},
                "deployment": {"werm": 2.0},
                "transfer": {"far_ratio": 1.5, "shift": "a -> b"},
                "needs": {"labels": s != "asnorm", "samples": 10},
                "score_scale": "cosine",
                "wall_s": 0.5,
            }
            for s, v in opis.items()
        },
    }


def test_summary_rows_carry_the_scorer_and_pair_by_seed() -> None:
    recs = [
        _rec("smooth_ap", tcm, seed, {"cosine": 1.0 + seed + tcm, "asnorm": 0.5 + seed + 2 * tcm})
        for seed in range(3)
        for tcm in (False, True)
    ]
    rows = summary.summarise_normalisers(summary.scorer_records(recs))
    assert {(r["scorer"], r["tcm"]) for r in rows} == {
        ("cosine", False),
        ("cosine", True),
        ("asnorm", False),
        ("asnorm", True),
    }
    by = {(r["scorer"], r["tcm"]): r for r in rows}
    for r in rows:
        assert r["experiment"] == "normalisers" and r["seeds"] == [0, 1, 2]
        assert set(r["opis"]) >= {"mean", "ci95", "n", "bootstrap_ci95"}
        assert r["opis"]["n"] == 3 and r["min_dcf"]["mean"] == 0.5
    assert "vs_cosine_base" not in by["cosine", False]
    assert by["asnorm", False]["vs_cosine_base"]["opis"]["mean"] == pytest.approx(-0.5)
    assert by["asnorm", True]["vs_cosine_base"]["opis"]["mean"] == pytest.approx(1.5)
    d = by["asnorm", True]["vs_base"]["opis"]  # TCM + AS-norm - base + AS-norm
    assert d["mean"] == pytest.approx(2.0) and d["seeds"] == [0, 1, 2]
    assert by["cosine", True]["vs_base"]["opis"]["mean"] == pytest.approx(1.0)
    assert "vs_base" not in by["asnorm", False]


def test_write_summary_keeps_the_evidence_rows_and_appends_the_scorer_rows(tmp_path: Path) -> None:
    evidence_rows = [{"dataset": "glyphs", "loss": "smooth_ap", "tcm": False}]
    new = summary.summarise_normalisers(
        summary.scorer_records([_rec("smooth_ap", False, 0, {"cosine": 1.0})])
    )
    out = summary.write_summary(evidence_rows, tmp_path / "s.json", normaliser_rows=new)
    assert json.loads((tmp_path / "s.json").read_text()) == out
    assert out[0] == evidence_rows[0] and "scorer" not in out[0] and out[1]["scorer"] == "cosine"


# ----------------------------------------------------------------------------- docs


def test_the_docs_section_is_replaced_between_its_markers_only() -> None:
    new = f"{report.START}\nnew\n{report.END}\n"
    text = f"a\n{report.START}\nold\n{report.END}\nb\n"
    assert report.replace_section(text, new) == f"a\n{report.START}\nnew\n{report.END}\nb\n"
    plain = "x\n# Earlier experiments\ny\n"
    once = report.replace_section(plain, new)
    assert once.index(report.START) < once.index("# Earlier experiments")
    assert report.replace_section(once, new) == once  # regenerating changes nothing
    with pytest.raises(ValueError, match="only one of the markers"):
        report.replace_section(f"a {report.START} b", new)
