"""Fault handling of `tcm train`: signals, config/environment errors, exit codes, resume checks.

The signal tests run the real CLI in a subprocess (the tiny dataset is registered through
``tcm.train.datasets.register_dataset``, slowed down a little so that signals land in the middle
of steps), resume it in this process and compare the final weights bit for bit with an
uninterrupted run (1 torch thread everywhere, so the float reductions are the same).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import TINY_OVERRIDES
from tcm.cli.main import main
from tcm.train.checkpoint import TrainingState, load_checkpoint
from tcm.train.config import load_config
from tcm.train.loop import train

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from conftest import tiny_dataset
    from tcm.train.datasets import register_dataset
    delay = float(os.environ.get("TINY_DELAY", "0"))

    def provider(data, split):
        ds = tiny_dataset(split, data.image_size)
        if split == "train" and delay > 0:
            inner = ds.transform
            def slow(im):
                time.sleep(delay)
                return inner(im)
            ds.transform = slow
        return ds

    register_dataset("tiny", provider)
    from tcm.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)

RUN = (*TINY_OVERRIDES, "train.epochs=4", "train.steps_per_epoch=3", "train.tensorboard=false")


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("script") / "run_tcm.py"
    p.write_text(SCRIPT.format(tests=str(TESTS)))
    return p


def _env(delay: float) -> dict[str, str]:
    pp = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "TINY_DELAY": str(delay), "PYTHONPATH": pp}


def _argv(out: Path, *extra: str) -> list[str]:
    return ["train", *RUN, f"output_dir={out}", *extra]


def _run(out: Path, *extra: str) -> int:
    """The CLI in this process with 1 torch thread (like the subprocess)."""
    from conftest import tiny_provider
    from tcm.train.datasets import register_dataset, unregister_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    register_dataset("tiny", tiny_provider)
    try:
        return main([*_argv(out), *extra])
    finally:
        unregister_dataset("tiny")
        torch.set_num_threads(threads)


def _start(script: Path, out: Path, delay: float) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(script), *_argv(out)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(delay)
    )


def _wait_for_eval_row(proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and "\neval," in log.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"no evaluation row appeared (rc {proc.poll()})")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return dict(TrainingState.load(path).model)


def _train_steps(log: Path) -> list[int]:
    return [int(r["step"]) for r in csv.DictReader(open(log)) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("ref")
    assert _run(out) == 0
    return _weights(out / "last.pt")


def _signal(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:  # already finished
        pass


@pytest.mark.parametrize("trial", [0, 1])
def test_double_sigint_then_resume_equals_uninterrupted(
    script: Path, reference: dict[str, torch.Tensor], tmp_path: Path, trial: int
) -> None:
    rng = random.Random(1234 + trial)
    out = tmp_path / "run"
    proc = _start(script, out, delay=0.004)
    _wait_for_eval_row(proc, out / "log.csv")
    time.sleep(rng.uniform(0.0, 0.3))
    _signal(proc, signal.SIGINT)
    time.sleep(rng.uniform(0.0, 0.03))
    _signal(proc, signal.SIGINT)
    _, err = proc.communicate(timeout=200)
    assert proc.returncode in (0, 130), err[-2000:]
    assert "Traceback" not in err
    assert not list(out.glob("*.tmp-*"))
    state = TrainingState.load(out / "last.pt")  # never torn: the hash verifies
    assert state.step == state.epoch * 3 + state.in_epoch
    assert _run(out, "--resume") == 0
    got = _weights(out / "last.pt")
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in got)
    assert _train_steps(out / "log.csv") == list(range(1, 13))  # truncated, no duplicates


def test_sigterm_saves_at_boundary_exits_143_and_resumes(
    script: Path, reference: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _start(script, out, delay=0.004)
    _wait_for_eval_row(proc, out / "log.csv")
    _signal(proc, signal.SIGTERM)
    stdout, err = proc.communicate(timeout=200)
    assert proc.returncode == 143, err[-2000:]
    state = TrainingState.load(out / "last.pt")
    assert 3 <= state.step < 12
    assert max(_train_steps(out / "log.csv")) == state.step  # saved at the step boundary
    assert "--resume" in stdout
    assert _run(out, "--resume") == 0
    got = _weights(out / "last.pt")
    assert all(torch.equal(got[k], reference[k]) for k in got)


def _start_with(script: Path, out: Path, delay: float, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(script), *_argv(out), *extra]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(delay)
    )


def test_kill_9_then_resume_continues_from_time_based_checkpoint(
    script: Path, reference: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """``train.checkpoint_interval_s``: ``last.pt`` is rewritten between evaluations, so a
    ``kill -9`` mid-epoch loses at most that much work, and ``--resume`` (which removes a torn
    temporary file) ends with exactly the weights of an uninterrupted run."""
    out = tmp_path / "run"
    proc = _start_with(script, out, 0.004, "train.checkpoint_interval_s=0.000001")
    deadline = time.monotonic() + 200
    step = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            st = TrainingState.load(out / "last.pt")
        except ValueError:  # not written yet
            time.sleep(0.01)
            continue
        step = st.step
        if step >= 4 and st.in_epoch != 0:  # past the first evaluation (step 3), mid-epoch
            break
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no handler runs, nothing is saved at the stop
    proc.communicate(timeout=200)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    state = TrainingState.load(out / "last.pt")
    assert state.step >= step >= 4
    assert _run(out, "--resume") == 0
    got = _weights(out / "last.pt")
    assert all(torch.equal(got[k], reference[k]) for k in reference)
    assert _train_steps(out / "log.csv") == list(range(1, 13))
    assert not list(out.glob("*.tmp-*"))


# ----------------------------------------------------------------------------- in-process


@pytest.fixture(autouse=True)
def _tiny(tiny_data: None) -> None:
    """Register the tiny dataset (``data.name=tiny``)."""


def _cfg(out: Path, *extra: str) -> Any:
    return load_config(
        None, [f"output_dir={out}", *TINY_OVERRIDES, "train.tensorboard=false", *extra]
    )


def _err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("eval.epsilons=[0.7]", "eval.epsilons"),
        ("eval.epsilons=[]", "eval.epsilons"),
        ("eval.num_thresholds=1", "eval.num_thresholds"),
        ("eval.num_thresholds=200000", "eval.num_thresholds"),
        ("eval.num_thresholds=2.5", "eval.num_thresholds"),
        ("eval.far_range=[0.1, 0.01]", "far_range"),
        ("data.val_classes=0", "data.val_classes"),
        ("loss.params={alpha: oops}", "loss.params"),
        ("loss.tcm.margin_neg=0.95", "margin_neg"),
    ],
)
def test_bad_config_rejected_at_load_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, needle: str
) -> None:
    with pytest.raises(ValueError, match="invalid config"):
        _cfg(tmp_path / "x", override)
    out = tmp_path / "run"
    assert main(["train", *TINY_OVERRIDES, f"output_dir={out}", override]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.startswith("tcm train: error:")
    assert not out.exists()  # nothing was created: rejected before data/model/output dir


def test_output_dir_is_a_file_exits_2_before_loading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []
    from tcm.train.datasets import register_dataset

    register_dataset("tiny", lambda d, s: calls.append(s) or None)  # type: ignore[func-returns-value]
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["train", *TINY_OVERRIDES, f"output_dir={f / 'sub'}"]) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "is a file" in lines[0]
    assert calls == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_output_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["train", *TINY_OVERRIDES, f"output_dir={ro / 'run'}"]) == 2
    finally:
        ro.chmod(0o700)
    assert "not writable" in capsys.readouterr().err


def test_unexpected_error_exits_2_one_line_and_debug_shows_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tcm.train.datasets import register_dataset

    def broken(d: Any, s: str) -> Any:
        raise RuntimeError("layout is wrong: no images.txt")

    register_dataset("tiny", broken)
    args = ["train", *TINY_OVERRIDES, f"output_dir={tmp_path / 'r'}"]
    assert main(args) == 2
    lines = _err_lines(capsys)
    assert lines == ["tcm train: error: RuntimeError: layout is wrong: no images.txt"]
    assert main(["--debug", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "layout is wrong" in err
    assert main([*args, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_divergence_is_the_only_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tcm.train.step as step_mod

    real = step_mod.global_batch_loss

    def nan_loss(*a: Any, **k: Any) -> torch.Tensor:
        return real(*a, **k) * float("nan")

    monkeypatch.setattr(step_mod, "global_batch_loss", nan_loss)
    assert main(["train", *TINY_OVERRIDES, f"output_dir={tmp_path}"]) == 1
    assert "lower learning rate" in capsys.readouterr().err


def test_stale_temporaries_removed_on_start(tmp_path: Path, dead_pid: int) -> None:
    tmp_path.mkdir(exist_ok=True)
    dead = dead_pid
    stale = [tmp_path / f"last.pt.tmp-{dead}", tmp_path / f"embeddings.npz.tmp-{dead}"]
    for p in stale:
        p.write_bytes(b"\0" * 100)
    keep = tmp_path / "notes.tmp-draft"
    keep.write_text("not ours")
    train(_cfg(tmp_path, "train.epochs=1"), echo=None)
    assert not any(p.exists() for p in stale)
    assert keep.exists()


def test_temporaries_of_a_live_writer_are_kept_on_start(tmp_path: Path) -> None:
    """A concurrent process still writing into the run directory keeps its temporary file."""
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f"log.csv.tmp-{writer.pid}"
        live.write_bytes(b"half written")
        train(_cfg(tmp_path, "train.epochs=1"), echo=None)
        assert live.read_bytes() == b"half written"
    finally:
        writer.kill()
        writer.wait()


def test_metrics_json_is_strict_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN / inf metrics are written as null / "inf" (no NaN / Infinity tokens)."""
    import tcm.train.runner as runner

    real = runner.compute_metrics

    def with_undefined(*a: Any, **k: Any) -> Any:
        # known metric keys (the metric table refuses others) with values JSON has no token for
        return {**real(*a, **k), "r_precision": float("nan"), "threshold": float("inf")}

    monkeypatch.setattr(runner, "compute_metrics", with_undefined)
    train(_cfg(tmp_path), echo=None)

    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    doc = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    for metrics in (doc["last"], doc["test"]["metrics"]):
        assert metrics["r_precision"] is None and metrics["threshold"] == "inf"


def test_embeddings_file_written_once_with_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's embeddings.npz is written in one go (no write / re-read / rewrite for ids)."""
    import tcm._io as tio

    real, writes = tio.atomic_write, []

    def counting(path: Any, write: Any) -> Path:
        writes.append(Path(path).name)
        return real(path, write)

    monkeypatch.setattr(tio, "atomic_write", counting)
    train(_cfg(tmp_path), echo=None)
    assert writes.count("embeddings.npz") == 1
    with np.load(tmp_path / "embeddings.npz") as z:
        assert z.files == ["embeddings", "labels", "class_names", "ids"]
        assert len(z["ids"]) == len(z["labels"])


def test_checkpoint_written_before_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tcm.train.runner as runner

    def boom(*a: Any, **k: Any) -> Any:
        raise ValueError("metrics exploded")

    monkeypatch.setattr(runner, "compute_metrics", boom)
    with pytest.raises(ValueError, match="metrics exploded"):
        train(_cfg(tmp_path), echo=None)
    assert TrainingState.load(tmp_path / "last.pt").step == 2  # the training is kept
    monkeypatch.undo()
    res = train(_cfg(tmp_path), resume=True, echo=None)
    assert res.steps == 4 and [h["step"] for h in res.history] == [2, 4]


def test_resume_refuses_changed_settings_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(_cfg(tmp_path, "train.epochs=1"), echo=None)
    with pytest.raises(ValueError, match="cannot resume") as info:
        train(
            _cfg(tmp_path, "seed=3", "optim.name=sgd", "data.m_per_class=4"),
            resume=True,
            echo=None,
        )
    msg = str(info.value)
    for needle in ("seed: 0 -> 3", "optim.name: 'adamw' -> 'sgd'", "data.m_per_class: 2 -> 4"):
        assert needle in msg
    assert "--force" in msg
    args = ["train", *TINY_OVERRIDES, f"output_dir={tmp_path}", "train.tensorboard=false"]
    assert main([*args, "seed=3", "--resume"]) == 2
    assert "seed: 0 -> 3" in capsys.readouterr().err
    # more epochs is not a change of the recipe; a forced seed change resumes
    res = train(_cfg(tmp_path, "seed=3", "train.epochs=2"), resume=True, force=True, echo=None)
    assert res.steps == 4 and not res.interrupted


def test_flipped_byte_checkpoint_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(_cfg(tmp_path, "train.epochs=1"), echo=None)
    p = tmp_path / "last.pt"
    blob = bytearray(p.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    p.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupt: content hash mismatch"):
        load_checkpoint(p)
    args = ["train", *TINY_OVERRIDES, f"output_dir={tmp_path}", "train.tensorboard=false"]
    assert main([*args, "train.epochs=2", "--resume"]) == 2
    assert "hash mismatch" in capsys.readouterr().err
    assert main(["evaluate", str(p), "--data", "glyphs"]) == 2


class _Evil:
    """Unpickling runs ``os.system(cmd)``: what a crafted checkpoint would do."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("header", [True, False])  # tcm's hashed format / plain torch.save
def test_checkpoint_with_objects_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], header: bool
) -> None:
    from tcm.train.checkpoint import save_checkpoint

    marker = tmp_path / "ran"
    p = tmp_path / "last.pt"
    state = {"format": "tcm-checkpoint-v1", "x": _Evil(f"touch {marker}")}
    if header:
        save_checkpoint(state, p)
    else:
        torch.save(state, p)
    with pytest.raises(ValueError) as info:
        load_checkpoint(p)
    msg = str(info.value)
    assert "\n" not in msg and "weights_only" not in msg and str(p) in msg
    assert "does not load for safety" in msg and "system" in msg  # names the global
    for argv in (["evaluate", str(p), "--data", "tiny"], ["embed", str(p), "--data", "tiny"]):
        assert main([*argv, "--out", str(tmp_path / "e.npz")] if argv[0] == "embed" else argv) == 2
        err = _err_lines(capsys)
        assert len(err) == 1 and "does not load for safety" in err[0], err
        assert "weights_only" not in err[0]
    args = ["train", *TINY_OVERRIDES, f"output_dir={tmp_path}", "train.tensorboard=false"]
    assert main([*args, "--resume"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "does not load for safety" in err[0] and str(p) in err[0], err
    assert not marker.exists()


def test_log_truncated_to_resumed_step(tmp_path: Path) -> None:
    train(_cfg(tmp_path, "train.epochs=1"), echo=None)
    with open(tmp_path / "log.csv", "a", newline="") as fh:  # rows of a killed later run
        fh.write("train,,3,1,0.5,,,0.001,,,,,,1.0\neval,validation,4,2,,,,,0.9,0.8,,,,2.0\n")
    train(_cfg(tmp_path, "train.epochs=2"), resume=True, echo=None)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in rows if r["kind"] == "eval"] == [2, 4]


def test_resume_hint_has_config_and_all_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tcm.train.loop as loop

    real = loop.train

    def stop_at_1(cfg: Any, **kw: Any) -> Any:
        def hook(info: Any) -> None:
            raise KeyboardInterrupt

        return real(cfg, hooks=[hook], **kw)

    monkeypatch.setattr(loop, "train", stop_at_1)
    cfg_file = tmp_path / "my config.yaml"
    cfg_file.write_text("seed: 0\n")
    out = tmp_path / "run"
    args = ["--config", str(cfg_file), *TINY_OVERRIDES, f"output_dir={out}", "optim.lr=0.01"]
    assert main(["train", *args]) == 130
    text = capsys.readouterr().out
    hint = text.split("resume with: ", 1)[1].strip()
    import shlex

    assert shlex.split(hint) == ["tcm", "train", *args, "--resume"]


def test_selection_split_disjoint_from_training_and_test(tmp_path: Path) -> None:
    from conftest import tiny_dataset
    from tcm.data.base import TensorImageDataset

    seen: list[int] = []

    class Recording(TensorImageDataset):
        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:  # training reads
            out = super().__getitem__(index)
            seen.append(out[1])
            return out

    def provider(d: Any, split: str) -> Any:
        ds = tiny_dataset(split, d.image_size)
        if split != "train":
            return ds
        return Recording(
            "tiny", split, ds.images, ds.labels, ds.class_names, transform=ds.transform
        )

    res = train(_cfg(tmp_path, "data.val_classes=0.25"), datasets=provider, echo=None)
    sel = res.selection["class_names"]
    train_names = tiny_dataset("train").class_names
    test_names = tiny_dataset("test").class_names
    assert len(sel) == 2 and set(sel) <= set(train_names)
    assert not set(sel) & set(test_names)
    trained_on = {train_names[c] for c in seen}
    assert trained_on and not trained_on & set(sel)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        summary["selection"]["class_names"] == sel and summary["selection"]["split"] == "validation"
    )
    assert res.test_metrics is not None and res.test_metrics == summary["test"]["metrics"]
    # the validation metrics are not the test metrics (different classes)
    assert res.best_metrics != res.test_metrics


def test_disk_full_while_saving_exits_2_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(obj: Any, fh: Any) -> None:
        fh.write(b"\0" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tcm.train.checkpoint.torch.save", full)
    assert main(["train", *TINY_OVERRIDES, f"output_dir={tmp_path}"]) == 2
    lines = _err_lines(capsys)
    assert lines == ["tcm train: error: [Errno 28] No space left on device"]
    assert not list(tmp_path.glob("*.tmp-*")) and not (tmp_path / "last.pt").exists()
