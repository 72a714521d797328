"""Worker threads for the blocked passes (private to ``tcm.metrics``).

The blocked passes run best on CPU as ``W`` Python threads that each do a *single-threaded*
matmul and then single-threaded follow-up work (NumPy, faiss heaps) that releases the GIL: a
multi-threaded matmul followed by single-threaded work would leave cores idle.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["run_single_threaded"]

R = TypeVar("R")


def run_single_threaded(
    workers: int, fn: Callable[[int], R], setup: Callable[[], None] | None = None
) -> list[R]:
    """``[fn(0), ..., fn(workers - 1)]``, each call in its own thread with torch (and, via
    ``setup``, e.g. faiss's OpenMP) limited to one thread inside it; torch's global thread
    count is restored afterwards. An exception in any call is re-raised here. ``workers <= 1``
    runs ``fn(0)`` in the calling thread, unchanged.

    Example:
        >>> run_single_threaded(2, lambda i: i * 10)
        [0, 10]
    """
    if workers <= 1:
        return [fn(0)]

    def run(i: int) -> R:
        torch.set_num_threads(1)  # the OpenMP / MKL part of this is thread-local
        if setup is not None:
            setup()
        return fn(i)

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            futures = [ex.submit(run, i) for i in range(workers)]
            return [f.result() for f in futures]
    finally:
        torch.set_num_threads(threads)
