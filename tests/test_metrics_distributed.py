"""`tcm evaluate` / `tcm calibrate` under torchrun with 2 gloo CPU processes equal one process."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist


def _run(args: list[str], distributed: bool) -> subprocess.CompletedProcess[str]:
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
        if distributed
        else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *launcher, "-m", "tcm.cli", *args],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
    )


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_torchrun_evaluate_and_calibrate_equal_one_process(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(60), 5)
    x = (rng.normal(size=(60, 16))[y] + 0.9 * rng.normal(size=(300, 16))).astype(np.float32)
    npz = tmp_path / "emb.npz"
    np.savez(npz, embeddings=x, labels=y)
    out: dict[str, dict[str, object]] = {}
    for name, distributed in (("one", False), ("two", True)):
        ev, cal = tmp_path / f"{name}_ev.json", tmp_path / f"{name}_cal.json"
        r = _run(["evaluate", str(npz), "--json", str(ev)], distributed)
        assert r.returncode == 0, r.stderr[-3000:]
        r = _run(["calibrate", str(npz), "--far", "1e-3", "--json", str(cal)], distributed)
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = {"ev": json.loads(ev.read_text()), "cal": json.loads(cal.read_text())}
    one, two = out["one"], out["two"]
    assert two["ev"]["options"]["world_size"] == 2  # type: ignore[index]
    assert one["ev"]["options"]["world_size"] == 1  # type: ignore[index]
    # counts are exact integers and every float is derived from them in the same order, and the
    # retrieval parts are merged in query order: the results are identical, not just close
    assert one["ev"]["metrics"] == two["ev"]["metrics"]  # type: ignore[index]
    assert one["ev"]["calibration"] == two["ev"]["calibration"]  # type: ignore[index]
    assert one["cal"] == two["cal"]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_torchrun_scored_evaluate_and_calibrate_equal_one_process(tmp_path: Path) -> None:
    """With AS-norm (cohort statistics prepared on every rank, scores inside the sharded passes,
    the score-range pass for the histogram edges merged across ranks) 2 gloo processes give the
    numbers of one process, exactly."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(30), 5)
    x = (rng.normal(size=(30, 16))[y] + 0.9 * rng.normal(size=(150, 16))).astype(np.float32)
    yc = np.repeat(np.arange(20), 4)
    xc = (rng.normal(size=(20, 16))[yc] + 0.9 * rng.normal(size=(80, 16))).astype(np.float32)
    npz, cohort = tmp_path / "emb.npz", tmp_path / "cohort.npz"
    np.savez(npz, embeddings=x, labels=y, class_names=np.array([f"c{i}" for i in range(30)]))
    np.savez(cohort, embeddings=xc, labels=yc, class_names=np.array([f"k{i}" for i in range(20)]))
    scorer = ["--scorer", "asnorm", "--top-k", "20", "--cohort", str(cohort)]
    out: dict[str, dict[str, object]] = {}
    for name, distributed in (("one", False), ("two", True)):
        ev, cal = tmp_path / f"{name}_ev.json", tmp_path / f"{name}_cal.json"
        r = _run(["evaluate", str(npz), *scorer, "--json", str(ev)], distributed)
        assert r.returncode == 0, r.stderr[-3000:]
        r = _run(["calibrate", str(npz), "--far", "1e-2", *scorer, "--json", str(cal)], distributed)
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = {"ev": json.loads(ev.read_text()), "cal": json.loads(cal.read_text())}
    one, two = out["one"], out["two"]
    assert two["ev"]["options"]["world_size"] == 2  # type: ignore[index]
    assert one["ev"]["metrics"] == two["ev"]["metrics"]  # type: ignore[index]
    assert one["ev"]["metrics"] != {}  # type: ignore[index]
    assert one["cal"]["threshold"] == two["cal"]["threshold"]  # type: ignore[index]
    assert one["cal"]["far_spread"] == two["cal"]["far_spread"]  # type: ignore[index]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("fail", [False, True])
def test_cli_leaves_the_process_group_it_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    """A rank that exits with gloo's group alive can abort in interpreter finalisation (SIGABRT,
    seen on CI); the CLI must destroy the group it created, after success and after an error."""
    cli = importlib.import_module("tcm.cli.main")  # the package re-exports main(), the function

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(6), 4)
    np.savez(tmp_path / "e.npz", embeddings=rng.normal(size=(24, 8)), labels=y)

    def join(*_: object) -> bool:
        store = dist.HashStore()
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        return True

    monkeypatch.setattr(cli, "_init_distributed", join)
    source = str(tmp_path / ("missing.npz" if fail else "e.npz"))
    code = cli.main(["evaluate", source, "--json", str(tmp_path / "o.json")])
    assert code == (cli.EXIT_BAD_INPUT if fail else cli.EXIT_OK)
    assert not dist.is_initialized()
