"""Process-global RNG state: capture / restore (for exact resume) and seeding.

Example:
    >>> import torch
    >>> s = get_rng_state()
    >>> a = torch.rand(1)
    >>> set_rng_state(s)
    >>> bool(torch.equal(a, torch.rand(1)))
    True
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "seed_everything", "set_rng_state"]


def get_rng_state(*, cuda: bool = True) -> dict[str, Any]:
    """Torch (CPU, and CUDA when available and ``cuda``), NumPy legacy and Python RNG states as a
    mapping of tensors / numbers / lists (storable with ``torch.save(weights_only=True)``).

    ``cuda=False``: never touch CUDA (for data-loader worker processes, where initialising CUDA
    in a forked process fails)."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]  # noqa: NPY002 - global state is saved
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state captured by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's global and torch's RNGs with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds user code too
    torch.manual_seed(seed)
