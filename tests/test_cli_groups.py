"""`tcm evaluate --groups --ci` and `tcm calibrate --far F --on TARGET` on embeddings files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tcm.cli.main import main
from tcm.metrics import calibration_transfer, group_operating_point


def _write(path: Path, seed: int, noise: float, with_groups: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(20), 6)
    x = (rng.normal(size=(20, 12))[y] + noise * rng.normal(size=(120, 12))).astype(np.float32)
    arrays = {"embeddings": x, "labels": y}
    if with_groups:
        arrays["groups"] = np.array(["DejaVu", "STIX", "cm"])[np.arange(120) % 3]
    np.savez(path, **arrays)
    return path


def test_evaluate_groups_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write(tmp_path / "a.npz", 0, 0.7)
    js = tmp_path / "ev.json"
    args = ["evaluate", str(src), "--groups", "--ci", "0.9", "--n-boot", "50", "--json", str(js)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "per-group rates" in out and "GARBE" in out and "class-bootstrap intervals" in out
    d = json.loads(js.read_text())
    with np.load(src) as z:
        ref = group_operating_point(
            z["embeddings"], z["labels"], z["groups"], threshold=d["calibration"]["threshold"]
        )
    assert d["groups"]["groups"] == ["DejaVu", "STIX", "cm"]
    np.testing.assert_array_equal(d["groups"]["far"], ref.far)
    assert d["metrics"]["group_garbe"] == ref.summary["garbe"]
    assert set(d["intervals"]) >= {"opis", "tar_at_far_1e-03"}


def test_calibrate_on_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write(tmp_path / "a.npz", 0, 0.7)
    tgt = _write(tmp_path / "b.npz", 1, 1.0)
    js = tmp_path / "tr.json"
    assert main(["calibrate", str(src), "--far", "0.01", "--on", str(tgt), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "FAR ratio" in out and "per-group rates" in out
    d = json.loads(js.read_text())
    with np.load(src) as a, np.load(tgt) as b:
        ref = calibration_transfer(a["embeddings"], a["labels"], b["embeddings"], b["labels"], 0.01)
    assert d["far_ratio"] == ref.far_ratio and d["threshold"] == ref.threshold
    assert d["target_groups"]["groups"] == ["DejaVu", "STIX", "cm"]


def test_group_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = _write(tmp_path / "p.npz", 0, 0.7, with_groups=False)
    assert main(["evaluate", str(plain), "--groups"]) == 2
    assert "has no per-sample groups" in capsys.readouterr().err
    assert main(["calibrate", str(plain), "--max-utility", "--on", str(plain)]) == 2
    assert "--on TARGET needs --far" in capsys.readouterr().err
    assert main(["evaluate", str(plain), "--ci", "1.5"]) == 2
    assert "ci must" in capsys.readouterr().err


def test_calibrate_across_groups_of_one_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write(tmp_path / "a.npz", 2, 0.8)
    js = tmp_path / "tr.json"
    args = ["calibrate", str(src), "--far", "0.02", "--on", str(src), "--json", str(js)]
    assert main([*args, "--source-group", "DejaVu", "--target-group", "STIX"]) == 0
    d = json.loads(js.read_text())
    with np.load(src) as z:
        x, y, g = z["embeddings"], z["labels"], z["groups"]
    a, b = g == "DejaVu", g == "STIX"
    ref = calibration_transfer(x[a], y[a], x[b], y[b], 0.02)
    assert d["far_ratio"] == ref.far_ratio and d["target_groups"]["groups"] == ["STIX"]
    assert main([*args, "--source-group", "Nope"]) == 2
    assert "has no group 'Nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--ci", "0.95", "--n-boot", "1"], "too few for a 0.95 interval"),
        (["--ci", "0.95", "--n-boot", "3000000"], "above the limit of 100,000"),
        (["--ci", "1.5"], "open interval"),
    ],
)
def test_bootstrap_bounds_exit_2_before_any_pass(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    match: str,
) -> None:
    import tcm.metrics.statistics as stmod

    src = _write(tmp_path / "a.npz", 0, 0.7)

    def no_pass(*a: object, **k: object) -> None:
        raise AssertionError("a pass over the pairs ran before the check")

    monkeypatch.setattr(stmod, "negative_quantiles", no_pass)
    monkeypatch.setattr(stmod, "sweep", no_pass)
    assert main(["evaluate", str(src), "--groups", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_bootstrap_memory_guard_exit_2_before_any_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tcm.metrics._checks as checks
    import tcm.metrics.statistics as stmod

    src = _write(tmp_path / "a.npz", 0, 0.7)
    monkeypatch.setattr(stmod, "negative_quantiles", None)  # a pass would raise TypeError
    monkeypatch.setattr(checks, "MAX_TABLE_BYTES", 1 << 20)
    assert main(["evaluate", str(src), "--groups", "--ci", "0.9", "--n-boot", "1000"]) == 2
    err = capsys.readouterr().err
    assert "the bootstrap would need about" in err and "1,000 resamples" in err
