"""Atomic checkpoint files.

A checkpoint is written to ``<name>.tmp-<pid>`` in the same directory, flushed and fsync'ed, then
moved over the target with :func:`os.replace` (atomic on POSIX and Windows). A crash, kill or full
disk while writing leaves the previous checkpoint intact; the temporary file is removed on error.

Example:
    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> p = save_checkpoint({"step": 3, "w": torch.zeros(2)}, d + "/last.pt")
    >>> load_checkpoint(p)["step"]
    3
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_write", "load_checkpoint", "save_checkpoint"]


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then ``os.replace`` it.

    Raises whatever ``write`` raises (after deleting the temporary file); ``path`` is then
    untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return target


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Atomically ``torch.save`` a state dict (tensors, numbers, strings, lists, dicts)."""
    return atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``, no pickle code).

    Raises:
        ValueError: file missing, truncated/corrupt, or not a tcm checkpoint mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {p} is unreadable or corrupt: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {p} is not a mapping (got {type(obj).__name__})")
    return obj
