"""Embeddings files: malformed ``class_names`` are refused in one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tcm.cli.main import main
from tcm.data.embedding_file import read_embedding_file

EMB = np.eye(4, dtype=np.float32)
LABELS = np.array([0, 0, 1, 1], dtype=np.int64)


def _safetensors(path: Path, class_names: str) -> Path:
    from safetensors.numpy import save_file

    save_file(
        {"embeddings": EMB, "labels": LABELS}, str(path), metadata={"class_names": class_names}
    )
    return path


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ('"ab"', "metadata 'class_names' is not a JSON list"),  # was read as ["a", "b"]
        ('{"a": 1, "b": 2}', "metadata 'class_names' is not a JSON list"),  # was its keys
        ("[1, 2]", "metadata 'class_names' is not a JSON list of strings"),
        ("[0, 1", "metadata 'class_names' is not a JSON list"),
        ('["a"]', "'class_names' has 1 names but the labels use class codes up to 1"),
    ],
)
def test_bad_safetensors_class_names_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], meta: str, needle: str
) -> None:
    p = _safetensors(tmp_path / "e.safetensors", meta)
    with pytest.raises(ValueError, match=needle) as info:
        read_embedding_file(p)
    assert str(p) in str(info.value) and "\n" not in str(info.value)
    assert main(["evaluate", str(p)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and needle in err[0] and str(p) in err[0], err


def test_short_class_names_in_npz_refused(tmp_path: Path) -> None:
    p = tmp_path / "e.npz"
    np.savez(p, embeddings=EMB, labels=LABELS, class_names=np.array(["a"]))
    with pytest.raises(ValueError, match="'class_names' has 1 names"):
        read_embedding_file(p)


def test_good_class_names_still_read(tmp_path: Path) -> None:
    p = _safetensors(tmp_path / "e.safetensors", json.dumps(["a", "b", "unused"]))
    assert read_embedding_file(p).class_names == ["a", "b", "unused"]
    q = _safetensors(tmp_path / "f.safetensors", "[]")  # no names: allowed, as before
    assert read_embedding_file(q).class_names is None
