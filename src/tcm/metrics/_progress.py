"""Optional progress reporting of the long passes (private to ``tcm.metrics``).

Public entry points (:func:`tcm.metrics.evaluate`, :func:`tcm.metrics.pair_statistics`,
:func:`tcm.metrics.calibration_transfer`) take ``progress``: ``False`` (the default: no output,
or whatever an enclosing call asked for), ``True`` (tqdm bars on stderr) or a factory
``(description, total) -> bar`` whose bar has ``update(n)`` and ``close()``. :func:`reporting`
makes it the current choice for the duration of the call; each pass then opens a :func:`stage`
(one bar; total = the pairs it visits) and calls the stage's tick once per block or tile, from
any worker thread, so the cost is one lock and one ``update`` per block, never per pair.

Example:
    >>> seen = []
    >>> class Bar:
    ...     def update(self, n): seen.append(n)
    ...     def close(self): seen.append("closed")
    >>> with reporting(lambda desc, total: Bar()):
    ...     with stage("pairs", 10) as tick:
    ...         tick(4); tick(6)
    >>> seen
    [4, 6, 'closed']
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

__all__ = ["Progress", "ProgressBar", "Tick", "no_tick", "reporting", "stage", "tile_pairs"]


class ProgressBar(Protocol):
    """What a progress factory returns (a ``tqdm`` bar is one)."""

    def update(self, n: int) -> object:
        """Advance by ``n`` units (pairs)."""
        ...

    def close(self) -> None:
        """The stage is finished."""
        ...


ProgressFactory = Callable[[str, int], ProgressBar]
Progress = bool | ProgressFactory
Tick = Callable[[int], None]

_FACTORY: ContextVar[ProgressFactory | None] = ContextVar("tcm_progress", default=None)


def _tqdm_bar(desc: str, total: int) -> ProgressBar:
    from tqdm.auto import tqdm

    bar: ProgressBar = tqdm(desc=desc, total=total, unit="pair", unit_scale=True, mininterval=0.5)
    return bar


@contextmanager
def reporting(progress: Progress | None) -> Iterator[None]:
    """Report the passes run inside with ``progress`` (see the module docstring); ``False`` /
    ``None`` keep the enclosing choice (none by default)."""
    if progress is None or progress is False:
        yield
        return
    token = _FACTORY.set(_tqdm_bar if progress is True else progress)
    try:
        yield
    finally:
        _FACTORY.reset(token)


def no_tick(n: int) -> None:
    """The tick of a stage nobody watches."""


@contextmanager
def stage(desc: str, total: int) -> Iterator[Tick]:
    """One bar of ``total`` units while the block is run; yields the (thread-safe) tick. Without
    a current :func:`reporting` choice the tick does nothing."""
    factory = _FACTORY.get()
    if factory is None or total <= 0:
        yield no_tick
        return
    bar = factory(desc, int(total))
    lock = threading.Lock()

    def tick(n: int) -> None:
        with lock:
            bar.update(n)

    try:
        yield tick
    finally:
        bar.close()


def tile_pairs(i0: int, i1: int, j0: int, j1: int) -> int:
    """Unordered pairs ``i < j`` in the similarity tile ``[i0, i1) x [j0, j1)`` of the upper
    triangle (a diagonal tile, ``i0 == j0``, holds each pair once)."""
    if i0 == j0:
        m = i1 - i0
        return m * (m - 1) // 2
    return (i1 - i0) * (j1 - j0)
