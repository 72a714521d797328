"""The README's Python examples run as written (the front door must not rot)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2, "README lost its Python quick start"
    namespace: dict[str, object] = {}
    for code in blocks:
        exec(compile(code, str(README), "exec"), namespace)
    assert "r" in namespace and "loss" in namespace


def test_readme_names_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
