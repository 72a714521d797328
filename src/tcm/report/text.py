"""Text of the report's tables: metric values, intervals, interval levels, run swatches, slugs.

Every interval in the report is written by :func:`interval_text` (``[lo, hi]``, each end formatted
like its value, ``n/a`` for an undefined end).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from tcm.metrics import Interval
from tcm.metrics.vocabulary import format_metric
from tcm.report import html as H
from tcm.report.plots import run_color

__all__ = ["format_metric", "interval_text", "levels_text", "slug", "swatch", "with_ci"]


def interval_text(iv: Interval, fmt: str | Callable[[float], str], index: int | None = None) -> str:
    """``[lo, hi]`` of an interval (of entry ``index`` of a vector interval); each end formatted
    with the format spec or function ``fmt`` (as its value), ``n/a`` when not finite.

    Example:
        >>> interval_text(Interval(lo=0.1, hi=float("nan"), ci=0.9, n_boot=10), ".2f")
        '[0.10, n/a]'
    """

    def end(v: Any) -> str:
        x = float(np.atleast_1d(v)[index] if index is not None else v)
        if not np.isfinite(x):
            return "n/a"
        return format(x, fmt) if isinstance(fmt, str) else fmt(x)

    return f"[{end(iv.lo)}, {end(iv.hi)}]"


def with_ci(text: str, ci_text: str | None) -> H.Cell:
    """A cell: escaped ``text`` with the escaped interval text on a second, smaller line."""
    if ci_text is None:
        return H.raw(H.esc(text))
    return H.raw(f"{H.esc(text)}<br><span class=ci>{H.esc(ci_text)}</span>")


def levels_text(levels: Iterable[tuple[float, int]]) -> str:
    """What ``[lo, hi]`` means, per ``(ci, n_boot)`` level in use."""
    return "; ".join(
        f"{ci * 100:g} % class-bootstrap interval ({n:,} resamples of the classes)"
        for ci, n in sorted(levels)
    )


def swatch(i: int, name: str) -> H.Cell:
    """The run's colour swatch and its escaped name."""
    return H.raw(f'<span class=swatch style="background:{run_color(i)}"></span>{H.esc(name)}')


def slug(name: str) -> str:
    """File-name slug of a run name: ``[a-z0-9-]``, at most 40 characters (``run`` if empty)."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40]
    return s or "run"
