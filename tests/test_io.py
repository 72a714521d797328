"""The bottom I/O floor (tcm._io): atomic writes, stale temporaries, strict JSON, embeddings."""

from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from tcm._io import (
    atomic_write,
    json_bytes,
    json_value,
    remove_stale_temporaries,
    write_embeddings,
    write_json,
)
from tcm.data.embedding_file import read_embedding_file

SRC = Path(__file__).resolve().parents[1] / "src" / "tcm"


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_floor_imports_no_tcm_module() -> None:
    assert not {m for m in _imports(SRC / "_io.py") if m.split(".")[0] == "tcm"}


@pytest.mark.parametrize("layer", ["data", "metrics", "losses", "models"])
def test_lower_layers_do_not_import_training(layer: str) -> None:
    bad = {
        f"{p.relative_to(SRC)}: {m}"
        for p in (SRC / layer).rglob("*.py")
        for m in _imports(p)
        if m == "tcm.train" or m.startswith("tcm.train.")
    }
    assert not bad


def test_atomic_write_failure_keeps_target(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    seen: list[str] = []

    def half(fh: IO[bytes]) -> None:
        seen.append(Path(fh.name).name)
        fh.write(b"new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert seen == [f"f.bin.tmp-{os.getpid()}"]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_stale_temporaries_dead_removed_live_and_own_kept(
    tmp_path: Path, live_pid: int, dead_pid: int
) -> None:
    dead = dead_pid
    names = [
        f"a.json.tmp-{dead}",
        f"a.json.tmp-{live_pid}",
        f"a.json.tmp-{os.getpid()}",
        "notes.tmp-draft",
        f".stage-{dead}-x",
    ]
    for n in names[:4]:
        (tmp_path / n).write_text("x")
    (tmp_path / names[4]).mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert removed == [tmp_path / f"a.json.tmp-{dead}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])
    # staging folders only with their prefix (the report's)
    removed = remove_stale_temporaries(tmp_path, staging_prefix=".stage-")
    assert removed == [tmp_path / f".stage-{dead}-x"]


def test_json_value_convention_and_strict_bytes(tmp_path: Path) -> None:
    obj = {
        1: np.float32(0.5),
        "v": np.array([np.nan, np.inf, -np.inf, 2.0]),
        "t": (np.int64(3), Path("a/b")),
        "n": math.nan,
    }
    want = {"1": 0.5, "v": [None, "inf", "-inf", 2.0], "t": [3, "a/b"], "n": None}
    assert json_value(obj) == want
    assert b"NaN" not in json_bytes(obj) and b"Infinity" not in json_bytes(obj)
    p = write_json(tmp_path / "x.json", obj, indent=1, sort_keys=True)
    assert p.read_bytes() == json.dumps(want, indent=1, sort_keys=True).encode()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_write_embeddings_all_arrays_in_one_file(tmp_path: Path, suffix: str) -> None:
    e = np.arange(8, dtype=np.float64).reshape(4, 2)
    path = write_embeddings(
        tmp_path / f"e{suffix}",
        e,
        np.array([0, 1, 1, 0]),
        ["x", "y"],
        ids=[f"s{k}" for k in range(4)],
        groups=np.array(["g", "h", "g", "h"]),
    )
    f = read_embedding_file(path)
    assert f.embeddings.dtype == np.float32 and f.labels is not None
    np.testing.assert_array_equal(f.embeddings, e)
    assert f.labels.dtype == np.int64 and f.labels.tolist() == [0, 1, 1, 0]
    assert f.class_names == ["x", "y"]
    assert f.ids == ["s0", "s1", "s2", "s3"]
    assert f.groups is not None and f.groups.tolist() == ["g", "h", "g", "h"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_write_embeddings_length_mismatch_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'groups' has length 3 but there are 2 embeddings"):
        write_embeddings(tmp_path / "e.npz", np.eye(2), np.arange(2), groups=["a", "b", "c"])
    assert list(tmp_path.iterdir()) == []


def test_write_embeddings_without_optional_arrays(tmp_path: Path) -> None:
    path = write_embeddings(tmp_path / "e.npz", np.eye(2), np.arange(2))
    with np.load(path) as z:
        assert z.files == ["embeddings", "labels", "class_names"]
    f = read_embedding_file(path)
    assert f.class_names is None and f.ids is None and f.groups is None
    assert isinstance(f.embeddings, np.ndarray)
