"""`tcm` option handling: every option applied or refused, bad values and output paths refused
before any work, strict JSON, a closed stdout, escaped control characters, the FAR-resolution
warning of `tcm calibrate`."""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tcm
import tcm.cli.verify as cli_verify
from tcm.cli.main import main
from tcm.metrics import evaluate

cli = importlib.import_module("tcm.cli.main")  # the package re-exports main(), the function


def _npz(
    path: Path,
    seed: int = 0,
    *,
    names: list[str] | None = None,
    groups: list[str] | None = None,
    classes: int = 12,
    per_class: int = 6,
) -> Path:
    """``classes * per_class`` noisy prototypes (12-d); optional class names and groups (cycled
    over the samples)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    x = (rng.normal(size=(classes, 12))[y] + 0.8 * rng.normal(size=(y.size, 12))).astype("f4")
    arrays: dict[str, Any] = {"embeddings": x, "labels": y}
    if names is not None:
        arrays["class_names"] = np.array(names)
    if groups is not None:
        arrays["groups"] = np.array(groups)[np.arange(y.size) % len(groups)]
    np.savez(path, **arrays)
    return path


def _strict(text: str) -> Any:
    """``json.loads`` that refuses ``NaN`` / ``Infinity`` (RFC 8259 JSON only)."""

    def bad(token: str) -> Any:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=bad)


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any loading / embedding / verification: a refused command must not get there."""
    calls: list[str] = []

    def record(name: str) -> Any:
        def fn(*a: Any, **k: Any) -> Any:
            calls.append(name)
            raise RuntimeError(f"{name} called")

        return fn

    monkeypatch.setattr(cli, "_load_source", record("load"))
    monkeypatch.setattr(cli, "_embed_checkpoint", record("embed"))
    monkeypatch.setattr(cli_verify, "run_verify", record("verify"))
    return calls


# ----------------------------------------------------------------------------- item 1 + 6


REFUSED = [
    # options that only matter with another option or input
    (["calibrate", "{a}", "--far", "0.1", "--target-group", "g0"], "--target-group needs --on"),
    (["calibrate", "{a}", "--far", "0.1", "--n-boot", "50"], "--n-boot N only applies with --ci"),
    (["evaluate", "{a}", "--n-boot", "50"], "--n-boot N only applies with --ci"),
    (["report", "{a}", "--out", "{tmp}/r", "--n-boot", "50"], "--n-boot N only applies with --ci"),
    (["calibrate", "{a}", "--far", "0.1", "--num-thresholds", "11"], "only applies with --max-u"),
    (["calibrate", "{a}", "--far", "0.1", "--search-range", "0.01", "0.2"], "only applies with"),
    (["calibrate", "{a}", "--far", "0.1", "--on", "{a}", "--top", "3"], "--top lists the worst"),
    (["calibrate", "{a}", "--max-utility", "--on", "{a}"], "--on TARGET needs --far"),
    (["evaluate", "{a}", "--data", "glyphs"], "--data only applies to checkpoint sources"),
    (["evaluate", "{a}", "--split", "train"], "--split only applies to checkpoint sources"),
    (["calibrate", "{a}", "--far", "0.1", "--root", "/x"], "--root only applies to checkpoint"),
    (["calibrate", "{a}", "--far", "0.1", "--on", "{a}", "--device", "cpu"], "--device only"),
    (["report", "{a}", "{a}", "--out", "{tmp}/r", "--batch-size", "8"], "--batch-size only"),
    (["train", "--force"], "--force only applies with --resume"),
    # bad numbers
    (["calibrate", "{a}", "--far", "0.1", "--ci", "5"], "--ci must lie in (0, 1); got 5.0"),
    (["calibrate", "{a}", "--far", "0.1", "--ci", "nan"], "--ci must lie in (0, 1)"),
    (["evaluate", "{a}", "--ci", "0"], "--ci must lie in (0, 1)"),
    (["report", "{a}", "--out", "{tmp}/r", "--ci", "1"], "--ci must lie in (0, 1)"),
    (["evaluate", "{a}", "--ci", "0.9", "--n-boot", "0"], "--n-boot must be >= 1; got 0"),
    (["calibrate", "{a}", "--far", "0.1", "--top", "-3"], "--top must be >= 0; got -3"),
    (["calibrate", "{a}", "--far", "nan"], "--far must lie in (0, 1)"),
    (["calibrate", "{a}", "--far", "1"], "--far must lie in (0, 1)"),
    (["calibrate", "{a}", "--max-utility", "--num-thresholds", "1"], "--num-thresholds must be"),
    (["calibrate", "{a}", "--max-utility", "--search-range", "0.2", "0.1"], "0 < LO < HI < 1"),
    (["evaluate", "{a}", "--far-range", "0.1", "0.01"], "--far-range LO HI must satisfy"),
    (["evaluate", "{a}", "--far-range", "0", "0.1"], "--far-range LO HI must satisfy"),
    (["evaluate", "x.pt", "--batch-size", "0"], "--batch-size must be >= 1; got 0"),
    (["embed", "x.pt", "--out", "{tmp}/e.npz", "--batch-size", "-1"], "--batch-size must be"),
    (["report", "{a}", "--out", "{tmp}/r", "--threshold", "2"], "--threshold must be a cosine"),
    (["report", "{a}", "--out", "{tmp}/r", "--transfer", "a:b"], "expected SOURCE_NAME:TARGET"),
    (["verify", "{a}", "--pairs", "p.csv", "--far", "0"], "--far must lie in (0, 1); got 0.0"),
    (["verify", "{a}", "--pairs", "p.csv", "--far", "0.1", "1.5"], "--far must lie in (0, 1)"),
]


@pytest.mark.parametrize(("argv", "message"), REFUSED)
def test_option_refused_before_any_work(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_work: list[str],
    argv: list[str],
    message: str,
) -> None:
    a = _npz(tmp_path / "a.npz")
    args = [s.format(a=a, tmp=tmp_path) for s in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert no_work == []
    assert not (tmp_path / "r").exists()


def test_calibrate_source_group_without_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _npz(tmp_path / "a.npz", 1, groups=["g0", "g1", "g2"])
    js = tmp_path / "c.json"
    assert (
        main(["calibrate", str(src), "--far", "0.05", "--source-group", "g1", "--json", str(js)])
        == 0
    )
    assert "calibrated on group(s) g1" in capsys.readouterr().out
    d = _strict(js.read_text())
    with np.load(src) as z:
        m = z["groups"] == "g1"
        ref = evaluate(
            z["embeddings"][m], z["labels"][m], include=["calibration"], calibration_far=0.05
        )
    assert ref.calibration is not None
    assert d["threshold"] == ref.calibration.threshold and d["source_groups"] == ["g1"]
    assert main(["calibrate", str(src), "--far", "0.05", "--source-group", "nope"]) == 2
    assert "has no group 'nope'" in capsys.readouterr().err


def test_calibrate_ci_without_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _npz(tmp_path / "a.npz", 2)
    js = tmp_path / "c.json"
    argv = ["calibrate", str(src), "--far", "0.05", "--ci", "0.9", "--n-boot", "40"]
    assert main([*argv, "--json", str(js)]) == 0
    assert "90% class-bootstrap intervals: global FAR [" in capsys.readouterr().out
    d = _strict(js.read_text())
    with np.load(src) as z:
        ref = evaluate(
            z["embeddings"],
            z["labels"],
            include=["calibration"],
            calibration_far=0.05,
            ci=0.9,
            n_boot=40,
        )
    for key in ("global_far", "global_tar"):
        iv = ref.intervals[f"calibration_{key}"]
        assert d["intervals"][key]["lo"] == iv.lo and d["intervals"][key]["hi"] == iv.hi
        assert d["intervals"][key]["n_boot"] == 40
        assert iv.lo <= d[key] <= iv.hi


# ----------------------------------------------------------------------------- item 2


def test_evaluate_and_calibrate_json_strict_with_nan(tmp_path: Path) -> None:
    # group g2 holds two singleton classes: no genuine pair in it, so its FRR is NaN
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 5])
    g = np.array(list("aaaabbbbcc"))
    src = tmp_path / "g.npz"
    np.savez(src, embeddings=rng.normal(size=(10, 4)).astype("f4"), labels=y, groups=g)
    ev, cal = tmp_path / "e.json", tmp_path / "c.json"
    assert main(["evaluate", str(src), "--groups", "--json", str(ev)]) == 0
    d = _strict(ev.read_text())
    assert d["groups"]["groups"] == ["a", "b", "c"] and d["groups"]["frr"][2] is None
    assert main(["calibrate", str(src), "--far", "0.1", "--on", str(src), "--json", str(cal)]) == 0
    t = _strict(cal.read_text())
    assert t["target_groups"]["frr"][2] is None


def test_verify_json_strict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    res = {
        "num_pairs": 4,
        "num_genuine": 2,
        "num_impostor": 2,
        "num_folds": 2,
        "tar_at_far": {"0.1": math.nan},
        "thresholds_at_far": {"0.1": math.inf},
        "eer": np.float64(0.25),
        "eer_threshold": -np.inf,
        "accuracy": None,
    }
    monkeypatch.setattr(cli_verify, "run_verify", lambda *a: res)
    js = tmp_path / "v.json"
    assert main(["verify", str(tmp_path / "e.npz"), "--pairs", "p.csv", "--json", str(js)]) == 0
    d = _strict(js.read_text())
    assert d["tar_at_far"] == {"0.1": None} and d["thresholds_at_far"] == {"0.1": "inf"}
    assert d["eer"] == 0.25 and d["eer_threshold"] == "-inf"


# ----------------------------------------------------------------------------- item 3

OUTPUTS = [
    ("evaluate", ["evaluate", "{a}", "--json"]),
    ("calibrate", ["calibrate", "{a}", "--far", "0.1", "--json"]),
    ("verify", ["verify", "{a}", "--pairs", "p.csv", "--json"]),
]


@pytest.mark.parametrize(("_cmd", "argv"), OUTPUTS)
@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("{tmp}/c.txt", "expected a .json file name"),
        ("{tmp}/d.json", "is a directory, not a file"),
        ("{tmp}/missing/c.json", "does not exist"),
        ("{tmp}/a.npz/c.json", "is a file, not a folder"),
    ],
)
def test_json_output_checked_first(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_work: list[str],
    _cmd: str,
    argv: list[str],
    out: str,
    message: str,
) -> None:
    a = _npz(tmp_path / "a.npz")
    (tmp_path / "d.json").mkdir()
    args = [s.format(a=a) for s in argv] + [out.format(tmp=tmp_path)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert no_work == []


def test_unwritable_folder_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_work: list[str],
) -> None:
    a = _npz(tmp_path / "a.npz")
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != ro and real(p, mode))
    assert main(["calibrate", str(a), "--far", "0.1", "--json", str(ro / "c.json")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert main(["report", str(a), "--out", str(ro / "rep")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert no_work == []


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("e.txt", "expected a .npz or .safetensors file name"),
        ("e", "expected a .npz or .safetensors file name"),
        ("d.npz", "is a directory"),
        ("missing/e.npz", "does not exist"),
    ],
)
def test_embed_out_checked_first(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_work: list[str],
    out: str,
    message: str,
) -> None:
    ck = tmp_path / "best.pt"
    ck.write_bytes(b"x")
    (tmp_path / "d.npz").mkdir()
    assert main(["embed", str(ck), "--out", str(tmp_path / out)]) == 2
    assert message in capsys.readouterr().err
    assert no_work == []
    assert not (tmp_path / "e.txt").exists()


def test_report_out_checked_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: list[str]
) -> None:
    a = _npz(tmp_path / "a.npz")
    (tmp_path / "file").write_text("x")
    assert main(["report", str(a), "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["report", str(a), "--out", str(tmp_path / "file" / "rep")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert no_work == []


# ----------------------------------------------------------------------------- item 4


def _subprocess_env() -> dict[str, str]:
    src = str(Path(tcm.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}


def test_calibrate_closed_stdout_writes_json_and_exits_quietly(tmp_path: Path) -> None:
    a = _npz(tmp_path / "a.npz")
    js = tmp_path / "c.json"
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first line (`| head -0`)
    try:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "tcm.cli",
                "calibrate",
                str(a),
                "--far",
                "0.1",
                "--json",
                str(js),
            ],
            stdout=w,
            stderr=subprocess.PIPE,
            env=_subprocess_env(),
            timeout=300,
        )
    finally:
        os.close(w)
    assert p.returncode == 141 and p.stderr == b""
    d = _strict(js.read_text())
    assert d["target_far"] == 0.1 and len(d["per_class"]["far"]) == 12
    assert [x.name for x in tmp_path.iterdir() if ".tmp-" in x.name] == []


class _ClosedStdout(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "{a}"],
        ["calibrate", "{a}", "--far", "0.1", "--on", "{a}"],
        ["calibrate", "{a}", "--max-utility", "--num-thresholds", "11"],
    ],
)
def test_closed_stdout_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    a = _npz(tmp_path / "a.npz")
    js = tmp_path / "o.json"
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", _ClosedStdout())
    monkeypatch.setattr(sys, "stderr", err)
    assert main([*(s.format(a=a) for s in argv), "--json", str(js)]) == 141
    assert err.getvalue() == ""
    assert _strict(js.read_text())


# ----------------------------------------------------------------------------- item 5


def test_control_characters_escaped_on_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["\x1b[31mred", "\x1b]0;title\x07", "bell\x07", "nl\nx", "\u202erev"] + [
        f"c{k}" for k in range(7)
    ]
    src = _npz(tmp_path / "a\x1b[2J.npz", 3, names=names, groups=["\x1b[1mG", "h"])
    js = tmp_path / "c.json"
    assert main(["calibrate", str(src), "--far", "0.2", "--top", "12", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b[31mred" in out and "\\x1b]0;title\\x07" in out and "nl\\nx" in out
    assert "\\u202erev" in out
    assert _strict(js.read_text())["per_class"]["names"][0] == names[0]  # JSON keeps the raw name
    assert main(["evaluate", str(src), "--groups"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[1mG" in out and "a\\x1b[2J.npz" in out
    assert main(["calibrate", str(src), "--far", "0.2", "--source-group", "\x1b[2Jx"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "x1b[2Jx" in err


def test_console_text() -> None:
    assert cli.console_text("plain ✓ 字") == "plain ✓ 字"
    assert cli.console_text("a\tb\x7f\x9b") == "a\\tb\\x7f\\x9b"
    assert cli.console_text("a\nb") == "a\\nb"
    assert cli.console_text("a\nb", keep_newlines=True) == "a\nb"


# ----------------------------------------------------------------------------- item 7


@pytest.mark.parametrize("on", [False, True])
def test_far_below_resolution_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], on: bool
) -> None:
    a = _npz(tmp_path / "a.npz", 4, classes=30, per_class=10)  # 43,500 impostor pairs
    js = tmp_path / "c.json"
    extra = ["--on", str(a)] if on else []
    assert main(["calibrate", str(a), "--far", "1e-9", *extra, "--json", str(js)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: --far 1e-09 is below the resolution of the ") == (2 if on else 1)
    assert "cannot be resolved with 43500 impostor pairs" in err
    warnings = _strict(js.read_text())["warnings"]
    assert len(warnings) == (2 if on else 1) and "43500 impostor pairs" in warnings[0]
    # 1 / 43500 = 2.3e-5: a target of 1e-4 is resolved, no warning, no "warnings" key
    assert main(["calibrate", str(a), "--far", "1e-4", *extra, "--json", str(js)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert "warnings" not in _strict(js.read_text())
