"""The report's files on disk: stale temporaries of killed processes are removed (never those of a
live writer), and a rewritten report leaves exactly its own files (plus the user's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tcm.report
from tcm.report import ReportRun, write_report

_TINY_PNG = b"\x89PNG\r\n\x1a\n" + b"tiny"
_SRC = str(Path(tcm.report.__file__).resolve().parents[2])


@pytest.fixture
def fast_png(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip PNG encoding in every report module that renders figures."""
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("tcm.report") and hasattr(mod, "figure_to_png"):
            monkeypatch.setattr(mod, "figure_to_png", lambda fig: _TINY_PNG)


def run(name: str, seed: int = 0) -> ReportRun:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(6), 5)
    x = rng.normal(size=(6, 8))[y] + 0.6 * rng.normal(size=(y.size, 8))
    return ReportRun(name, x, y)


_KILLED_WRITER = """
import os, signal, sys
import numpy as np
from tcm.report import ReportRun, write_report
for mod in list(sys.modules.values()):  # skip PNG encoding
    if getattr(mod, "__name__", "").startswith("tcm.report") and hasattr(mod, "figure_to_png"):
        mod.figure_to_png = lambda fig: b"png"
os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # kill -9 mid-write
rng = np.random.default_rng(0)
y = np.repeat(np.arange(6), 5)
x = rng.normal(size=(6, 8))[y] + 0.6 * rng.normal(size=(y.size, 8))
write_report(sys.argv[1], [ReportRun("a", x, y)], target_far=1e-2)
"""


def test_kill_9_during_report_leaves_nothing_after_the_next_run(
    tmp_path: Path, fast_png: None
) -> None:
    out = tmp_path / "rep"
    env = {**os.environ, "PYTHONPATH": _SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(out)], env=env, capture_output=True
    )
    assert proc.returncode == -9, proc.stderr.decode()
    left = [p.name for p in out.iterdir() if p.name.startswith(".tcm-report-")]
    assert left, "the killed writer should have left its staging folder"
    write_report(out, [run("a")], target_far=1e-2)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(
    tmp_path: Path, fast_png: None, live_pid: int, dead_pid: int
) -> None:
    dead = dead_pid
    out = tmp_path / "rep"
    out.mkdir()
    (out / f".tcm-report-{dead}-abc123").mkdir()
    (out / f".tcm-report-{dead}-abc123" / "index.html").write_text("partial")
    legacy = out / ".tcm-report-q1w2e3r4"  # older tcm: no pid in the name
    legacy.mkdir()
    old = time.time() - 3600
    os.utime(legacy, (old, old))
    (out / f"verify.json.tmp-{dead}").write_text("{")
    (out / f".tcm-report-{live_pid}-zzz").mkdir()
    (out / f"verify.json.tmp-{live_pid}").write_text("{")
    (out / "notes.tmp-draft").write_text("user file")
    write_report(out, [run("a")], target_far=1e-2)
    names = {p.name for p in out.iterdir()}
    assert f".tcm-report-{dead}-abc123" not in names
    assert legacy.name not in names
    assert f"verify.json.tmp-{dead}" not in names
    assert {f".tcm-report-{live_pid}-zzz", f"verify.json.tmp-{live_pid}", "notes.tmp-draft"} <= (
        names
    )


def _report_files(out: Path) -> set[str]:
    d = json.loads((out / "report.json").read_text())
    return {"index.html", "report.json", *d["figures"]}


def test_rewrite_leaves_exactly_the_new_reports_files(tmp_path: Path, fast_png: None) -> None:
    out = tmp_path / "rep"
    write_report(out, [run("a"), run("b", seed=1)], target_far=1e-2)
    assert (out / "utility_02_b.png").exists()
    user = {"notes.txt", "photo.png", "utility_07_mine.png"}  # not written by the report
    for name in user:
        (out / name).write_bytes(b"mine")
    write_report(out, [run("a")], target_far=1e-2)
    assert {p.name for p in out.iterdir()} == _report_files(out) | user
    assert not (out / "utility_02_b.png").exists()
    assert all((out / n).read_bytes() == b"mine" for n in user)


def test_only_figure_names_of_the_report_are_owned(tmp_path: Path, fast_png: None) -> None:
    """A report.json listing other files (hand-edited, or paths) never makes them deleted."""
    out = tmp_path / "rep"
    out.mkdir()
    (tmp_path / "outside.png").write_bytes(b"x")
    for name in ("photo.png", "utility_01_a.png.bak", "notes.txt"):
        (out / name).write_bytes(b"x")
    figures = ["../outside.png", "photo.png", "utility_01_a.png.bak", "notes.txt", 3]
    (out / "report.json").write_text(json.dumps({"figures": figures}))
    write_report(out, [run("a")], target_far=1e-2)
    assert (tmp_path / "outside.png").exists()
    assert all((out / n).exists() for n in ("photo.png", "utility_01_a.png.bak", "notes.txt"))


def test_unreadable_previous_report_json_removes_nothing(tmp_path: Path, fast_png: None) -> None:
    out = tmp_path / "rep"
    out.mkdir()
    (out / "utility_02_b.png").write_bytes(b"x")
    (out / "report.json").write_text("{not json")
    write_report(out, [run("a")], target_far=1e-2)
    assert (out / "utility_02_b.png").exists()
