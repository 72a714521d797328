"""A stopped or stuck rank ends every process within the process-group timeout, not 30 minutes.

Timeout: ``--dist-timeout SECONDS`` (evaluate, calibrate), else ``$TCM_DIST_TIMEOUT``, else 300 s.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch.distributed as dist

from tcm._distributed import DEFAULT_DIST_TIMEOUT, DIST_TIMEOUT_ENV, dist_timeout
from tcm.cli.main import EXIT_BAD_INPUT, main

needs_dist = pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="torch.distributed + SIGSTOP"
)

# Rank 1: the real CLI, which stops itself (SIGSTOP) right after joining the group, i.e. before
# its first collective, as a rank hung in a kernel, a debugger or a swapped-out process would.
STOPPED_RANK = textwrap.dedent(
    """
    import os, signal, sys, time
    import tcm.metrics.distributed as d
    from tcm.cli.main import main

    real_init = d.TorchCommunicator.__init__
    marker = sys.argv.pop(1)

    def init_then_stop(self):
        real_init(self)
        if not os.path.exists(marker):  # once
            with open(marker, "w") as fh:
                fh.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGSTOP)

    d.TorchCommunicator.__init__ = init_then_stop
    sys.exit(main(sys.argv[1:]))
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_env(rank: int, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != DIST_TIMEOUT_ENV}
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",  # gloo on CPU
        **extra,
    )
    return env


def _wait(p: subprocess.Popen[str], seconds: float) -> tuple[int, str]:
    try:
        _, err = p.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"process did not exit within {seconds} s (hangs on the stopped rank)")
    return p.returncode, err


@needs_dist
def test_stopped_rank_ends_both_ranks_within_the_timeout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(12), 4)
    np.savez(tmp_path / "e.npz", embeddings=rng.normal(size=(48, 8)), labels=y)
    port = _free_port()
    cmd = ["evaluate", str(tmp_path / "e.npz")]
    marker = tmp_path / "stopped_at"
    rank1 = subprocess.Popen(  # the timeout from the environment variable
        [sys.executable, "-c", STOPPED_RANK, str(marker), *cmd],
        env=_rank_env(1, port, **{DIST_TIMEOUT_ENV: "3"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        rank0 = subprocess.Popen(  # the timeout from the option
            [sys.executable, "-m", "tcm.cli", *cmd, "--dist-timeout", "3"],
            env=_rank_env(0, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        code, err = _wait(rank0, 120)  # generous: start-up on a loaded 2-core machine
        took = time.time() - float(marker.read_text())
        lines = err.strip().splitlines()
        assert code == EXIT_BAD_INPUT, err[-2000:]
        assert len(lines) == 1, err[-2000:]  # one line, no traceback
        assert lines[0].startswith("tcm evaluate: error: rank 0: "), lines[0]
        assert "within 3 s" in lines[0] and "--dist-timeout" in lines[0], lines[0]
        assert DIST_TIMEOUT_ENV in lines[0], lines[0]
        assert 2.5 < took < 60, took  # the 3 s timeout (+ a loaded machine), not torch's 30 min
        # the stopped rank, once continued, finds its peer gone and exits with an error too
        rank1.send_signal(signal.SIGCONT)
        code1, err1 = _wait(rank1, 60)
        assert code1 == EXIT_BAD_INPUT, err1[-2000:]
        assert err1.strip().splitlines()[-1].startswith("tcm evaluate: error: "), err1[-2000:]
    finally:
        if rank1.poll() is None:
            rank1.kill()
            rank1.communicate()


@needs_dist
def test_missing_rank_fails_the_rendezvous_within_the_timeout(tmp_path: Path) -> None:
    """Rank 1 never starts: rank 0 gives up joining after the timeout, with the same message."""
    np.savez(tmp_path / "e.npz", embeddings=np.eye(8), labels=np.repeat(np.arange(4), 2))
    t0 = time.monotonic()
    rank0 = subprocess.Popen(
        [sys.executable, "-m", "tcm.cli", "calibrate", str(tmp_path / "e.npz"), "--far", "0.1"],
        env=_rank_env(0, _free_port(), **{DIST_TIMEOUT_ENV: "2"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    code, err = _wait(rank0, 120)
    lines = err.strip().splitlines()
    assert code == EXIT_BAD_INPUT and len(lines) == 1, err[-2000:]
    assert "joining the process group" in lines[0] and "within 2 s" in lines[0], lines[0]
    assert time.monotonic() - t0 < 90  # start-up under load included; torch's default: 30 min


def test_timeout_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DIST_TIMEOUT_ENV, raising=False)
    assert dist_timeout() == DEFAULT_DIST_TIMEOUT == 300.0
    monkeypatch.setenv(DIST_TIMEOUT_ENV, "45.5")
    assert dist_timeout() == 45.5
    assert dist_timeout(7) == 7.0  # the option wins over the environment
    for bad in ("0", "-3", "nan", "inf", "ten"):
        monkeypatch.setenv(DIST_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=f"{DIST_TIMEOUT_ENV} must be a number of seconds"):
            dist_timeout()
    with pytest.raises(ValueError, match="--dist-timeout must be a number of seconds > 0"):
        dist_timeout(0)


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--dist-timeout", "0"], None, "--dist-timeout must be a number of seconds > 0; got 0"),
        ([], "-1", f"{DIST_TIMEOUT_ENV} must be a number of seconds > 0; got -1"),
    ],
)
def test_cli_rejects_a_bad_timeout_before_any_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: str | None,
    needle: str,
) -> None:
    monkeypatch.delenv(DIST_TIMEOUT_ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(DIST_TIMEOUT_ENV, env)
    # a missing source: the timeout is checked first, before the data is read
    code = main(["evaluate", str(tmp_path / "missing.npz"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT
    assert err == [f"tcm evaluate: error: {needle}"]


def test_training_joins_with_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_data: None, tiny_cfg: Any
) -> None:
    """Training under torchrun passes $TCM_DIST_TIMEOUT to init_process_group."""
    seen: dict[str, Any] = {}

    class Joined(Exception):
        pass

    def fake_init(backend: str, **kw: Any) -> None:
        seen.update(backend=backend, **kw)
        raise Joined

    from tcm.train.loop import train

    monkeypatch.setattr(dist, "init_process_group", fake_init)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv(DIST_TIMEOUT_ENV, "7")
    with pytest.raises(Joined):
        train(tiny_cfg(tmp_path / "run", "train.device=cpu"), echo=None)
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(seconds=7)}
    monkeypatch.setenv(DIST_TIMEOUT_ENV, "0")
    with pytest.raises(ValueError, match=f"{DIST_TIMEOUT_ENV} must be a number"):
        train(tiny_cfg(tmp_path / "run2", "train.device=cpu"), echo=None)


def test_is_distributed_is_the_one_test_of_a_process_group() -> None:
    """Without a group: not distributed, one rank, rank 0; and no other module of tcm asks
    torch.distributed itself whether a group is on (one place: tcm._distributed)."""
    from tcm import _distributed as td

    assert (td.is_distributed(), td.world_size(), td.rank()) == (False, 1, 0)
    src = Path(td.__file__).parent
    spelled = [
        str(p.relative_to(src))
        for p in sorted(src.rglob("*.py"))
        if p.name != "_distributed.py" and "is_initialized()" in p.read_text(encoding="utf-8")
    ]
    assert spelled == []
