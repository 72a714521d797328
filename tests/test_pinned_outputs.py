"""Pinned outputs: what users see must not change when the code behind it is reorganised.

The embeddings are sign vectors scaled by 1/4 in 16 dimensions: every row has norm exactly 1 and
every cosine similarity is an exact multiple of 1/16, so the pair counts, thresholds and rates do
not depend on the CPU's summation order. The golden files under ``tests/data/pinned/`` were written
by the code before the issue-20 rework; ``TCM_REGENERATE_PINNED=1`` rewrites them (only when an
output change is intended and named in the commit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tcm.cli.main import main
from tcm.train.evaluation import metric_table

PINNED = Path(__file__).parent / "data" / "pinned"
REGENERATE = os.environ.get("TCM_REGENERATE_PINNED") == "1"


def _sign_embeddings() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20)
    centres = rng.choice([-1.0, 1.0], size=(12, 16))
    labels = np.repeat(np.arange(12), 5)
    x = centres[labels].copy()
    flips = rng.random(x.shape) < 0.2  # each sample flips ~20 % of its class's signs
    x[flips] *= -1.0
    return x / 4.0, labels


@pytest.fixture
def emb_file(tmp_path: Path) -> Path:
    x, y = _sign_embeddings()
    assert np.array_equal(np.linalg.norm(x, axis=1), np.ones(len(x)))  # exact unit rows
    path = tmp_path / "emb.npz"
    np.savez(path, embeddings=x.astype(np.float32), labels=y)
    return path


def _check(name: str, text: str) -> None:
    golden = PINNED / name
    if REGENERATE:
        golden.write_text(text)
    assert golden.read_text() == text, f"{name} changed"


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 0
    return capsys.readouterr().out


def _json_text(path: Path, tmp: Path) -> str:
    """The JSON file with the machine-specific temporary path replaced."""
    return path.read_text().replace(str(tmp), "TMP")


def test_evaluate_output_pinned(
    emb_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    js = tmp_path / "e.json"
    out = _run(["evaluate", str(emb_file), "--json", str(js)], capsys)
    _check("evaluate.txt", out.replace(str(tmp_path), "TMP"))
    _check("evaluate.json", _json_text(js, tmp_path))


def test_calibrate_output_pinned(
    emb_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    js = tmp_path / "c.json"
    out = _run(["calibrate", str(emb_file), "--far", "0.1", "--json", str(js)], capsys)
    _check("calibrate.txt", out.replace(str(tmp_path), "TMP"))
    _check("calibrate.json", _json_text(js, tmp_path))


def test_demo_table_pinned() -> None:
    runs: dict[str, dict[str, Any]] = {
        "base": {
            "recall_at_1": 0.801,
            "map_at_r": 0.56121,
            "opis": 0.0013631,
            "epsilon_opis_0.05": 0.0221,
            "epsilon_opis_0.1": 0.009185,
        },
        "base+tcm": {
            "recall_at_1": 0.826,
            "map_at_r": 0.57834,
            "opis": 0.00118,
            "epsilon_opis_0.05": 0.01852,
            "epsilon_opis_0.1": 0.007327,
        },
    }
    keys = ("recall_at_1", "map_at_r", "opis", "epsilon_opis_0.05", "epsilon_opis_0.1")
    _check("demo_table.txt", metric_table(runs, keys) + "\n")


def _reject_constant(c: str) -> Any:
    raise ValueError(f"non-standard JSON constant {c}")


@pytest.mark.parametrize("name", ["evaluate.json", "calibrate.json"])
def test_pinned_files_are_strict_json(name: str) -> None:
    json.loads((PINNED / name).read_text(), parse_constant=_reject_constant)


def test_training_log_columns_pinned(tiny_data: None, tiny_cfg: Any, tmp_path: Path) -> None:
    from tcm.train import train

    train(tiny_cfg(tmp_path, "train.epochs=1", "train.tensorboard=false"), echo=None)
    header = (tmp_path / "log.csv").read_text().splitlines()[0]
    _check("log_header.txt", header + "\n")
