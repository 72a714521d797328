"""Progress bars of the long passes: off by default, on with ``progress=`` / ``--progress``
(or on a terminal), one update per block, and the results never depend on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tcm.cli.main import main
from tcm.metrics import PairIndex, calibration_transfer, evaluate, pair_statistics
from tcm.metrics._knn import symmetric_candidates
from tcm.metrics._progress import reporting


class Recorder:
    """A progress factory that records every bar: ``[desc, total, [updates], closed]``."""

    def __init__(self) -> None:
        self.bars: list[list[Any]] = []

    def __call__(self, desc: str, total: int) -> Any:
        rec: list[Any] = [desc, total, [], False]
        self.bars.append(rec)

        class Bar:
            def update(self, n: int) -> None:
                rec[2].append(n)

            def close(self) -> None:
                rec[3] = True

        return Bar()


def _data(n_classes: int = 30, per: int = 4, dim: int = 8, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per)
    x = rng.normal(size=(n_classes, dim))[y] + 0.8 * rng.normal(size=(y.size, dim))
    return x.astype(np.float32), y


def _check_pair_bars(rec: Recorder, n: int, block: int) -> None:
    """Every pair bar closed at its total: all unordered pairs, one update per block."""
    for desc, total, updates, closed in rec.bars:
        assert closed, desc
        assert sum(updates) == total, desc  # the bar ends at its total
        if desc.startswith("pairs"):
            assert total == n * (n - 1) // 2  # every unordered pair once
            assert len(updates) == len(range(0, n, block)) * (len(range(0, n, block)) + 1) // 2


def test_evaluate_reports_every_pass_block_by_block_with_identical_results() -> None:
    x, y = _data()
    n = y.size
    rec = Recorder()
    with_bars = evaluate(x, y, block_size=32, progress=rec, groups=np.arange(n) % 3)
    plain = evaluate(x, y, block_size=32, groups=np.arange(n) % 3)
    assert with_bars.to_dict() == plain.to_dict()
    names = [b[0] for b in rec.bars]
    assert "kNN" in names and "pairs: FAR quantiles" in names and "pairs: counts" in names
    _check_pair_bars(rec, n, 32)


def test_torch_pair_passes_report_every_block_with_identical_results() -> None:
    x, y = _data()  # the per-block code run on CUDA, here on the CPU
    n = y.size
    kw: dict[str, Any] = dict(fars=[1e-2], thresholds=[0.3], bins=10, backend="torch")
    rec = Recorder()
    index = PairIndex(x, y, np.arange(n) % 3, block_size=32)
    a = pair_statistics(index, progress=rec, **kw)
    b = pair_statistics(index, **kw)
    assert [r[0] for r in rec.bars] == ["pairs: FAR quantiles", "pairs: counts"]
    _check_pair_bars(rec, n, 32)
    assert a.consistency().to_dict() == b.consistency().to_dict()
    assert a.histogram().to_dict() == b.histogram().to_dict()
    assert a.groups is not None and b.groups is not None
    assert np.array_equal(a.groups.xneg, b.groups.xneg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # faiss heaps / torch tiles
def test_knn_tiles_report_all_pairs(dtype: torch.dtype) -> None:
    x = torch.nn.functional.normalize(torch.randn(70, 6, dtype=dtype), dim=1)
    rec = Recorder()
    with reporting(rec):
        symmetric_candidates(x, 5, block=16)
    [(desc, total, updates, closed)] = rec.bars
    assert (desc, total, sum(updates), closed) == ("kNN", 70 * 69 // 2, 70 * 69 // 2, True)
    assert len(updates) == 5 * 6 // 2  # one update per tile of the upper triangle


def test_pair_statistics_and_transfer_take_progress() -> None:
    x, y = _data()
    rec = Recorder()
    a = pair_statistics(PairIndex(x, y, block_size=50), fars=[1e-2], progress=rec)
    b = pair_statistics(PairIndex(x, y, block_size=50), fars=[1e-2])
    assert a.threshold_at_far(1e-2) == b.threshold_at_far(1e-2)
    assert np.array_equal(a.neg, b.neg) and np.array_equal(a.pos, b.pos)
    assert [r[0] for r in rec.bars] == ["pairs: FAR quantiles", "pairs: counts"]
    rec2 = Recorder()
    calibration_transfer(x, y, x[::2], y[::2], far=1e-2, progress=rec2)
    assert [r[0] for r in rec2.bars].count("pairs: counts") == 2  # source and target


def test_library_default_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    x, y = _data()
    evaluate(x, y)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_progress_true_writes_tqdm_bars_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    x, y = _data()
    evaluate(x, y, progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert "kNN" in err and "pairs: counts" in err and "pair/s" in err


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    x, y = _data()
    np.savez(tmp_path / "e.npz", embeddings=x, labels=y)
    return tmp_path / "e.npz"


@pytest.mark.parametrize(
    "cmd",
    [
        ["evaluate"],
        ["calibrate", "--far", "1e-2"],
        ["calibrate", "--far", "1e-2", "--on", "SELF"],
    ],
)
def test_cli_progress_flag_bars_on_stderr_same_output(
    npz: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], cmd: list[str]
) -> None:
    argv = [cmd[0], str(npz), *[str(npz) if a == "SELF" else a for a in cmd[1:]]]
    assert main([*argv, "--json", str(tmp_path / "a.json")]) == 0
    out_plain, err_plain = capfd.readouterr()
    assert err_plain == ""  # stderr is not a terminal here: no bars by default
    assert main([*argv, "--progress", "--json", str(tmp_path / "b.json")]) == 0
    out_bars, err_bars = capfd.readouterr()
    assert "pairs: counts" in err_bars and "pair/s" in err_bars
    assert out_bars.replace("b.json", "a.json") == out_plain  # stdout unchanged
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_cli_bars_on_a_terminal_unless_quiet(
    npz: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["evaluate", str(npz)]) == 0
    assert "pairs: counts" in capfd.readouterr().err
    assert main(["evaluate", str(npz), "--quiet"]) == 0
    assert capfd.readouterr().err == ""


def test_cli_progress_and_quiet_exclude_each_other(
    npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(npz), "--progress", "--quiet"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
