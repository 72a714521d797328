"""Calibration transfer between the report's runs: the rows of its transfer table (computation,
no HTML).

For a ``(source, target)`` pair of run names, the threshold ``t`` of global FAR ``f`` is
calibrated on the source and evaluated on the target (``docs/definitions.md``, calibration
transfer). The figures are read from the two runs' count tables when they hold what is needed
(:func:`tcm.metrics.transfer.transfer_view`, no pass), else computed from the embeddings
(:func:`tcm.metrics.calibration_transfer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from tcm._io import json_value
from tcm.metrics import CalibrationTransfer, calibration_transfer
from tcm.metrics.statistics import PairStats
from tcm.metrics.transfer import transfer_view
from tcm.report.compute import interval_json
from tcm.report.run import ReportRun

__all__ = [
    "TransferRow",
    "TransferSpec",
    "check_same_scorer",
    "check_transfer",
    "transfer_rows",
]

#: One entry of ``write_report(transfer=...)``: ``(source_run_name, target_run_name)``, or
#: ``(source_label, target_label, CalibrationTransfer)`` for a transfer computed beforehand.
TransferSpec: TypeAlias = tuple[str, str] | tuple[str, str, CalibrationTransfer]


@dataclass(frozen=True)
class TransferRow:
    """One row of the report's calibration-transfer table.

    Attributes:
        source, target: display names (run names for ``(source, target)`` entries).
        result: the :class:`~tcm.metrics.CalibrationTransfer`.
        method: how it was obtained: ``"transfer_view"`` (read from the runs'
            ``Evaluation.stats``, no pass), ``"calibration_transfer"`` (one tail pass and one
            count sweep per side on the runs' embeddings) or ``"given"``.
    """

    source: str
    target: str
    result: CalibrationTransfer
    method: str

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON dict (NaN -> null, inf -> ``"inf"``): the transfer's figures and their
        intervals (per-group details are left out)."""
        d = self.result.to_dict()
        for k in ("source_groups", "target_groups", "intervals"):
            d.pop(k, None)
        out: dict[str, Any] = {"source": self.source, "target": self.target, "method": self.method}
        out.update(json_value(d))
        out["intervals"] = {k: interval_json(v) for k, v in self.result.intervals.items()}
        return out


def _stats_cover(src: PairStats | None, tgt: PairStats | None, far: float) -> bool:
    """Whether ``transfer_view`` can read the transfer at FAR ``far`` from these statistics:
    the source counted the FAR-``far`` threshold ``t``, the target counted FAR ``far`` and
    ``t`` itself (also in its cross-group tables when it has groups)."""
    if src is None or tgt is None:
        return False
    t = next((v for k, v in src.far_thresholds.items() if k == far), None)
    if t is None or not any(k == far for k in tgt.far_thresholds):
        return False
    if not bool(np.any(tgt.thresholds == t)):
        return False
    if tgt.groups is not None:
        return tgt.cross_thresholds is not None and bool(np.any(tgt.cross_thresholds == t))
    return True


def transfer_rows(
    transfer: Sequence[TransferSpec],
    runs: Sequence[ReportRun],
    *,
    far: float,
    evaluated: Sequence[ReportRun] | None = None,
    ci: float | None = None,
    n_boot: int = 1000,
) -> list[TransferRow]:
    """The calibration-transfer rows of a report (``docs/report.md``).

    For a ``(source, target)`` entry of run names, ``t`` is calibrated on the source for
    global FAR ``far`` and evaluated on the target (``docs/definitions.md``, calibration
    transfer). The figures are read with :func:`tcm.metrics.transfer.transfer_view` from the
    runs' ``Evaluation.stats`` when those count tables hold what it needs (the source's FAR-``far``
    threshold ``t``; on the target FAR ``far`` and ``t`` itself, e.g. a target evaluated with
    ``threshold=t`` and ``calibration_far=far``); otherwise
    :func:`tcm.metrics.calibration_transfer` computes them from the two runs' embeddings (and
    groups), one tail pass and one count sweep per side. Intervals with ``ci`` (class bootstrap
    over the target classes, ``seed=0``).

    Args:
        transfer: entries ``(source_name, target_name)`` or ``(source, target,
            CalibrationTransfer)`` (taken as given).
        runs: the report's runs as given (embeddings are read from here).
        far: the target global FAR ``f`` of the calibration, in ``(0, 1)``.
        evaluated: the same runs carrying their Evaluations (default: ``runs``).
        ci, n_boot: interval level and resamples (``None``: no intervals).

    Raises:
        ValueError: a malformed entry, an unknown run name, source = target, a pair of runs
            given as Evaluations whose statistics do not hold the thresholds (message says what
            to give instead), and the errors of ``calibration_transfer`` (prefixed with the
            pair).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat(np.arange(10), 6)
        >>> c = rng.normal(size=(10, 16))
        >>> a = ReportRun("a", c[y] + 0.6 * rng.normal(size=(60, 16)), y)
        >>> b = ReportRun("b", c[y] + 0.9 * rng.normal(size=(60, 16)), y)
        >>> (row,) = transfer_rows([("a", "b")], [a, b], far=1e-2)
        >>> row.method, row.result.far
        ('calibration_transfer', 0.01)
    """
    by_name = {r.name: r for r in runs}
    ev_by_name = {r.name: r for r in (evaluated if evaluated is not None else runs)}
    rows: list[TransferRow] = []
    for src, tgt, given in check_transfer(transfer, list(by_name)):
        if given is not None:
            rows.append(TransferRow(src, tgt, given, "given"))
        else:
            rows.append(_one_transfer(by_name, ev_by_name, src, tgt, far, ci, n_boot))
    return rows


def check_transfer(
    transfer: Sequence[TransferSpec], names: list[str]
) -> list[tuple[str, str, CalibrationTransfer | None]]:
    """Validated ``(source, target, given transfer or None)`` entries (``names``: the run names).

    Raises:
        ValueError: a malformed entry, an unknown run name, source = target.
    """
    if isinstance(transfer, str | bytes) or not isinstance(transfer, Sequence):
        raise ValueError(f"transfer must be a list of (source, target) pairs; got {transfer!r}")
    out: list[tuple[str, str, CalibrationTransfer | None]] = []
    for i, entry in enumerate(transfer):
        if (
            not isinstance(entry, tuple | list)
            or len(entry) not in (2, 3)
            or not all(isinstance(v, str) for v in entry[:2])
        ):
            raise ValueError(
                f"transfer[{i}] must be (source_name, target_name) or (source, target, "
                f"CalibrationTransfer); got {entry!r}"
            )
        src, tgt = str(entry[0]), str(entry[1])
        if len(entry) == 3:
            given = entry[2]
            if not isinstance(given, CalibrationTransfer):
                raise ValueError(
                    f"transfer[{i}][2] must be a tcm.metrics.CalibrationTransfer; got "
                    f"{type(given).__name__}"
                )
            out.append((src, tgt, given))
            continue
        for name in (src, tgt):
            if name not in names:
                raise ValueError(
                    f"transfer {src!r} -> {tgt!r}: no run named {name!r} (runs: {sorted(names)})"
                )
        if src == tgt:
            raise ValueError(f"transfer {src!r} -> {tgt!r}: source and target are the same run")
        out.append((src, tgt, None))
    return out


def check_same_scorer(source: ReportRun, target: ReportRun) -> None:
    """ValueError unless both runs are scored by the same scorer (or both by cosine): a
    threshold only transfers between scores on one scale."""
    if source.scorer is not target.scorer:
        raise ValueError(
            "the two runs are scored differently (a scorer on one run only, or two scorers); "
            "a threshold transfers between runs on one score scale"
        )


def _one_transfer(
    by_name: dict[str, ReportRun],
    ev_by_name: dict[str, ReportRun],
    src: str,
    tgt: str,
    far: float,
    ci: float | None,
    n_boot: int,
) -> TransferRow:
    s_ev, t_ev = ev_by_name[src].evaluation, ev_by_name[tgt].evaluation
    s_stats = None if s_ev is None else s_ev.stats
    t_stats = None if t_ev is None else t_ev.stats
    try:
        check_same_scorer(by_name[src], by_name[tgt])
        if _stats_cover(s_stats, t_stats, far):
            assert s_stats is not None and t_stats is not None
            res = transfer_view(s_stats, t_stats, far, ci=ci, n_boot=n_boot)
            return TransferRow(src, tgt, res, "transfer_view")
        s_run, t_run = by_name[src], by_name[tgt]
        for r in (s_run, t_run):
            if r.embeddings is None or r.labels is None:
                raise ValueError(
                    f"run {r.name!r} was given as an Evaluation whose count tables do not hold "
                    f"the thresholds of the transfer; give the run as embeddings + labels, "
                    f"evaluate the target with threshold=<the source's FAR-{far:g} threshold> "
                    f"and calibration_far={far:g}, or pass (source, target, "
                    "calibration_transfer(...))"
                )
        assert s_run.embeddings is not None and s_run.labels is not None
        assert t_run.embeddings is not None and t_run.labels is not None
        res = calibration_transfer(
            s_run.embeddings,
            s_run.labels,
            t_run.embeddings,
            t_run.labels,
            far=far,
            source_groups=s_run.groups,
            target_groups=t_run.groups,
            ci=ci,
            n_boot=n_boot,
            scorer=s_run.scorer,
        )
    except ValueError as exc:
        raise ValueError(f"transfer {src!r} -> {tgt!r}: {exc}") from exc
    return TransferRow(src, tgt, res, "calibration_transfer")
