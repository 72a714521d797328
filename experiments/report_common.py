"""Pieces shared by experiments/report.py and experiments/report_evidence.py."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

LOSS_LABEL = {
    "smooth_ap": "Smooth-AP",
    "multi_similarity": "Multi-Similarity",
    "proxy_anchor": "ProxyAnchor",
    "recall_surrogate": "RS@k",
}


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
