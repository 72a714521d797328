"""experiments/run.py: the evidence run list is fixed by experiments/choices.json (not by the
results on disk), ``--shard`` is validated and partitions the list, a killed run resumes from
its ``last.pt``, and a result file is never half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from _experiments import load_experiment

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
COMMITTED = EXPERIMENTS / "results" / "evidence"

sys.path.insert(0, str(EXPERIMENTS))  # run.py imports its sibling evidence.py as a script does
run = load_experiment("run")


def _key(runs: list[Any]) -> list[tuple[str, list[str], dict[str, Any]]]:
    return [(r.name, r.overrides, r.tags) for r in runs]


# ----------------------------------------------------------------------------- the run list


def test_run_list_does_not_depend_on_the_results_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_results = run.runs_evidence()
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")  # a fresh checkout: no results
    fresh = run.runs_evidence()
    assert _key(fresh) == _key(with_results)
    mem = [r.name for r in fresh if r.tags["memory"]]
    assert len(mem) == 20
    assert all(n.startswith("glyphs/multi_similarity_") for n in mem)


def test_run_list_is_the_one_behind_the_committed_results() -> None:
    runs = {r.name: r for r in run.runs_evidence()}
    files = sorted(COMMITTED.glob("*/*.json"))
    assert {str(p.relative_to(COMMITTED))[: -len(".json")] for p in files} == set(runs)
    for p in files:
        rec = json.loads(p.read_text())
        r = runs[str(p.relative_to(COMMITTED))[: -len(".json")]]
        assert r.overrides == rec["overrides"], p.name
        # tags added to the grid after a row ran are None for it
        assert {k: r.tags.get(k) for k in rec["tags"]} == rec["tags"], p.name
        assert all(v is None for k, v in r.tags.items() if k not in rec["tags"]), p.name


def test_committed_choices_agree_with_the_committed_results(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run.check_choices() == []
    assert run.main(["choices"]) == 0
    assert "memory_loss: multi_similarity" in capsys.readouterr().out


def _write_choices(tmp_path: Path, edit: Any) -> Path:
    doc = json.loads(run.CHOICES.read_text())
    edit(doc["choices"])
    path = tmp_path / "choices.json"
    path.write_text(json.dumps(doc))
    return path


def test_check_choices_reports_a_choice_the_results_contradict(tmp_path: Path) -> None:
    path = _write_choices(tmp_path, lambda c: c["memory_loss"].update(value="smooth_ap"))
    diffs = run.check_choices(path)
    assert len(diffs) == 1
    assert "memory_loss" in diffs[0] and "multi_similarity" in diffs[0]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.pop("effnet_lr"), r"effnet_lr: missing"),
        (lambda c: c["memory_loss"].update(value="arcface"), r"memory_loss\.value: 'arcface'"),
        (lambda c: c["memory_loss"].pop("chosen_on"), r"memory_loss\.chosen_on"),
        (lambda c: c["effnet_lr"].update(value=-1), r"effnet_lr\.value"),
        (lambda c: c["proxy_anchor_long_steps"].update(value=True), r"long_steps\.value"),
        (lambda c: c["proxy_anchor_recipe"].update(value=["x"]), r"recipe\.value"),
        (lambda c: c["memory_loss"].update(results="a.json"), r"memory_loss\.results"),
    ],
)
def test_bad_choices_file_is_one_clear_error(tmp_path: Path, edit: Any, match: str) -> None:
    path = _write_choices(tmp_path, edit)
    with pytest.raises(run.ChoicesError, match=match) as info:
        run.load_choices(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_unreadable_choices_file_exits_2_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "choices.json"
    bad.write_text("{not json")
    monkeypatch.setattr(run, "CHOICES", bad)
    monkeypatch.setattr(run, "run_one", _no_training)
    assert run.main(["evidence"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "not valid JSON" in err


# ----------------------------------------------------------------------------- --shard


def _no_training(*args: Any, **kw: Any) -> None:
    raise AssertionError("no run may start")


@pytest.mark.parametrize("shard", [("3", "2"), ("2", "2"), ("-1", "2"), ("0", "-1"), ("0", "0")])
def test_bad_shard_is_a_usage_error(
    shard: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(run, "run_one", _no_training)
    with pytest.raises(SystemExit) as info:
        run.main(["evidence", "--shard", *shard])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--shard" in err[-1] and "0 <= I < N" in err[-1]
    with pytest.raises(ValueError, match="shard"):
        run.run_many("evidence", [], None, False, (int(shard[0]), int(shard[1])))


def test_shards_partition_the_run_list(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def record(exp: str, r: Any, force: bool = False) -> None:
        seen.append(r.name)

    monkeypatch.setattr(run, "run_one", record)
    runs = run.runs_evidence()
    names = [r.name for r in runs]
    for n in (1, 2, 3, 7, len(runs) + 1):
        parts = []
        for i in range(n):
            seen.clear()
            run.run_many("evidence", runs, None, False, (i, n))
            parts.append(list(seen))
        assert sorted(x for p in parts for x in p) == sorted(names)  # union, no repeats
        assert sum(len(p) for p in parts) == len(names)


# ----------------------------------------------------------------------------- resume


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """run.py writing under tmp_path, with a fake train() that records its calls."""
    import tcm.train.loop

    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(run, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(run, "_analysis", lambda r, npz: {"deployment": {"far": 0.001}})
    calls: list[dict[str, Any]] = []

    def fake_train(cfg: Any, *, resume: bool = False, force: bool = False, **kw: Any) -> Any:
        out = Path(cfg.output_dir)
        calls.append(
            {
                "resume": resume,
                "force": force,
                "files": sorted(p.name for p in out.iterdir()) if out.exists() else [],
            }
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "last.pt").write_bytes(b"final")
        return SimpleNamespace(
            interrupted=False,
            test_metrics={"recall_at_1": 0.5},
            selection={"split": "validation"},
            best_metrics={"map_at_r": 0.4},
            steps=300,
        )

    monkeypatch.setattr(tcm.train.loop, "train", fake_train)
    r = run.Run("glyphs/x_s0", ["seed=0"], {"seed": 0})
    out_dir = tmp_path / "runs" / "exp" / r.name
    result = tmp_path / "results" / "exp" / f"{r.name}.json"
    return {"calls": calls, "run": r, "out_dir": out_dir, "result": result}


def test_killed_run_resumes_from_its_last_checkpoint(sandbox: dict[str, Any]) -> None:
    out = sandbox["out_dir"]
    out.mkdir(parents=True)
    (out / "last.pt").write_bytes(b"step 120")
    (out / "log.csv").write_text("step\n")
    rec = run.run_one("exp", sandbox["run"])
    assert rec is not None and rec["resumed"] is True
    assert sandbox["calls"] == [{"resume": True, "force": False, "files": ["last.pt", "log.csv"]}]
    assert json.loads(sandbox["result"].read_text())["run"] == "glyphs/x_s0"
    assert run.run_one("exp", sandbox["run"]) is None  # done: skipped
    assert len(sandbox["calls"]) == 1


def test_half_made_run_dir_without_checkpoint_restarts_cleanly(sandbox: dict[str, Any]) -> None:
    out = sandbox["out_dir"]
    out.mkdir(parents=True)
    for stale in ("best.pt", "log.csv", "embeddings.npz", "config.yaml"):
        (out / stale).write_bytes(b"stale")
    rec = run.run_one("exp", sandbox["run"])
    assert rec is not None and "resumed" not in rec
    assert sandbox["calls"] == [{"resume": False, "force": False, "files": []}]


def test_force_starts_over_despite_a_checkpoint(sandbox: dict[str, Any]) -> None:
    out = sandbox["out_dir"]
    out.mkdir(parents=True)
    (out / "last.pt").write_bytes(b"old")
    sandbox["result"].parent.mkdir(parents=True)
    sandbox["result"].write_text("{}")
    assert run.run_one("exp", sandbox["run"], force=True) is not None
    assert sandbox["calls"] == [{"resume": False, "force": False, "files": []}]


def test_result_killed_mid_write_does_not_count_as_done(sandbox: dict[str, Any]) -> None:
    target = sandbox["result"]
    child = f"""
import os, signal, sys
sys.path.insert(0, {str(EXPERIMENTS)!r})
import run, tcm._io as ck
real = ck.atomic_write
def dying(path, write):
    def half(fh):
        fh.write(b'{{"run": "glyphs/x_s0", "metr')
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, half)
ck.atomic_write = dying
run._atomic_json(__import__("pathlib").Path({str(target)!r}), {{"run": "glyphs/x_s0"}})
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not target.exists()
    leftovers = list(target.parent.iterdir())
    assert [p.name.startswith(f"{target.name}.tmp-") for p in leftovers] == [True]
    assert run.run_one("exp", sandbox["run"]) is not None  # not done: it runs
    assert json.loads(target.read_text())["run"] == "glyphs/x_s0"


def test_deployment_view_counts_two_sweeps_with_the_numbers_of_the_public_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    import tcm.metrics.statistics as statistics_mod
    from tcm.data.glyphs import glyph_split
    from tcm.metrics import operating_point, threshold_at_far

    rng = np.random.default_rng(0)
    names = np.array([f"c{i}" for i in range(40)])
    y = np.repeat(np.arange(40), 4)
    x = (rng.normal(size=(40, 8))[y] + 0.9 * rng.normal(size=(y.size, 8))).astype(np.float32)
    np.savez(tmp_path / "e.npz", embeddings=x, labels=y, class_names=names)
    half = np.array([glyph_split(str(names[v])) for v in y])
    cal, ev = half == "calibration", half == "evaluation"
    assert len(set(y[cal])) >= 3 and len(set(y[ev])) >= 3
    far = 0.05
    t = threshold_at_far(x[cal], y[cal], far=far)  # the figures as the public functions give them
    op_cal, op = operating_point(x[cal], y[cal], t), operating_point(x[ev], y[ev], t)
    sweeps: list[int] = []
    real = statistics_mod.sweep
    monkeypatch.setattr(statistics_mod, "sweep", lambda *a, **k: sweeps.append(1) or real(*a, **k))
    dep = run.deployment_view(tmp_path / "e.npz", target_far=far)
    assert len(sweeps) == 2
    assert dep["threshold"] == t
    assert dep["calibration_global_far"] == op_cal.global_far
    assert dep["calibration_classes"] == len(op_cal.classes)
    assert (dep["global_far"], dep["global_tar"]) == (op.global_far, op.global_tar)
    assert dep["far_per_class"] == op.far.tolist() and dep["frr_per_class"] == op.frr.tolist()
