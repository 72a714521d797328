"""experiments/summary.py: seed t-intervals, seed-paired TCM - base differences, row grouping."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from _experiments import load_experiment

ROOT = Path(__file__).resolve().parent.parent


summary = load_experiment("summary")

T_975_DF4 = 2.7764451051977987  # Student-t 97.5 % quantile, 4 degrees of freedom (tables)


def _rec(loss: str, tcm: bool, seed: int, r1: float, ratio: float, **tags: Any) -> dict[str, Any]:
    return {
        "tags": {
            "dataset": "glyphs",
            "loss": loss,
            "tcm": tcm,
            "memory": None,
            "backbone": "small_cnn",
            "margin_pos": 0.9 if tcm else None,
            "seed": seed,
            **tags,
        },
        "selected_on": "validation",
        "metrics": {"recall_at_1": r1},
        "intervals": {"recall_at_1": [r1 - 0.02, r1 + 0.01]},
        "transfer": {"far_ratio": ratio, "shift": "DejaVu -> STIX"},
    }


def test_t_interval_matches_the_textbook_formula() -> None:
    vals = [0.80, 0.82, 0.79, 0.85, 0.81]
    m = sum(vals) / 5
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / 4)
    half = T_975_DF4 * s / math.sqrt(5)
    got_m, (lo, hi) = summary.t_interval(vals)
    # float64 sums of 5 values of size ~1: a few ulps of 1
    assert got_m == pytest.approx(m, rel=1e-15, abs=4e-16)
    assert lo == pytest.approx(m - half, rel=1e-12)
    assert hi == pytest.approx(m + half, rel=1e-12)


def test_t_interval_of_one_value_has_no_interval_and_empty_is_an_error() -> None:
    assert summary.t_interval([0.5]) == (0.5, None)
    with pytest.raises(ValueError, match="at least one"):
        summary.t_interval([])


def test_rows_pair_tcm_with_base_by_seed_and_skip_nonfinite() -> None:
    recs = [_rec("smooth_ap", False, s, 0.80 + 0.01 * s, 2.0) for s in range(3)]
    recs += [_rec("smooth_ap", True, s, 0.83 + 0.01 * s, 1.5) for s in (0, 1, 2, 3)]
    recs[0]["transfer"]["far_ratio"] = math.inf  # base seed 0: infinite -> left out
    rows = summary.summarise(recs)
    assert [(r["loss"], r["tcm"]) for r in rows] == [("smooth_ap", False), ("smooth_ap", True)]
    base, tcm = rows
    assert base["seeds"] == [0, 1, 2] and tcm["seeds"] == [0, 1, 2, 3]
    assert base["transfer_far_ratio"]["n"] == 2 and base["transfer_far_ratio"]["nonfinite"] == 1
    assert base["recall_at_1"]["bootstrap_ci95"] == pytest.approx([0.79, 0.82], abs=1e-12)
    d = tcm["vs_base"]["recall_at_1"]
    assert d["seeds"] == [0, 1, 2]  # seed 3 has no base partner
    assert d["mean"] == pytest.approx(0.03, abs=1e-12)
    # identical differences: zero spread, the interval collapses onto the mean
    assert d["ci95"] == pytest.approx([0.03, 0.03], abs=1e-12)
    assert tcm["vs_base"]["transfer_far_ratio"]["seeds"] == [1, 2]
    assert "vs_base" not in base


def test_a_margin_row_is_paired_with_the_plain_base_row() -> None:
    recs = [_rec("multi_similarity", False, s, 0.8, 2.0) for s in range(2)]
    recs += [_rec("multi_similarity", True, s, 0.7, 2.0, margin_pos=0.85) for s in range(2)]
    rows = summary.summarise(recs)
    row = next(r for r in rows if r["tcm"])
    assert row["margin_pos"] == 0.85
    assert row["vs_base"]["recall_at_1"]["mean"] == pytest.approx(-0.1, abs=1e-12)


def test_doctests() -> None:
    import doctest

    assert doctest.testmod(summary).failed == 0


def test_warmup_backbone_and_schedule_rows_are_their_own_models_paired_with_their_own_base() -> (
    None
):
    """A memory warm-up row pairs with the base row of the same memory and warm-up, an
    EfficientNet row with the EfficientNet base, a longer-schedule row with the base of that
    schedule; the report labels them and keeps them out of the main grid's headline rows."""
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))  # report_evidence imports report_common
    report = load_experiment("report_evidence")
    recs = []
    for tcm, r1 in ((False, 0.70), (True, 0.60)):
        recs += [
            _rec("multi_similarity", tcm, s, r1, 2.0, memory=1024, memory_warmup=150)
            for s in range(2)
        ]
        recs += [_rec("multi_similarity", tcm, s, r1 + 0.2, 2.0) for s in range(2)]
        recs += [
            _rec("multi_similarity", tcm, s, r1 + 0.1, 2.0, backbone="efficientnet_lite0")
            for s in range(2)
        ]
        recs += [_rec("multi_similarity", tcm, s, r1 + 0.15, 2.0, steps=1200) for s in range(2)]
    rows = summary.summarise(recs)
    assert len(rows) == 8
    for row in rows:
        if row["tcm"]:
            assert row["vs_base"]["recall_at_1"]["mean"] == pytest.approx(-0.1, abs=1e-12)
    labels = {report._label(r) for r in rows if r["tcm"]}
    assert labels == {
        "Multi-Similarity + TCM",
        "Multi-Similarity + TCM + memory 1024 (from step 150)",
        "EfficientNet-Lite0 (ImageNet, 64 px): Multi-Similarity + TCM",
        "Multi-Similarity (1,200 steps) + TCM",
    }
    main = report.main_row(rows, "glyphs", "multi_similarity", True)
    assert main is not None and main["recall_at_1"]["mean"] == pytest.approx(0.8, abs=1e-12)
    effnet = report.main_row(rows, "glyphs", "multi_similarity", True, "efficientnet_lite0")
    assert effnet is not None and effnet["recall_at_1"]["mean"] == pytest.approx(0.7, abs=1e-12)
    table = report.readme_table(rows)
    assert "| glyphs | EfficientNet-Lite0 (ImageNet, 64 px): Multi-Similarity |" in table
    assert "memory" not in table and "steps" not in table  # those stay in docs/results.md
