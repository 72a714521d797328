"""``write_report``: a self-contained HTML report (plus PNGs and JSON) on threshold consistency.

Conventions: embeddings are L2-normalised, pairs are compared by cosine *similarity* ``s``, a pair
is accepted when ``s >= t``. Per class ``c`` (classes with ``n_c >= 2``)::

    TAR_c(t) = share of within-class pairs with s >= t          FRR_c = 1 - TAR_c
    TRR_c(t) = share of pairs with one member in c with s < t    FAR_c = 1 - TRR_c
    U_c(t)   = 2·TAR_c·TRR_c / (TAR_c + TRR_c)
    OPIS     = mean_k  var_c U_c(t_k)   over the calibration grid (global FAR in far_range)

See ``docs/definitions.md`` for the exact definitions and ``docs/report.md`` for the report.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

import tcm
from tcm.metrics import CalibrationTransfer, Interval, calibration_transfer, metric_label
from tcm.metrics.bootstrap import check_bootstrap_args
from tcm.metrics.statistics import PairStats
from tcm.metrics.transfer import transfer_view
from tcm.report import html as H
from tcm.report.compute import RunAnalysis, analyse_run, interval_json, json_value
from tcm.report.files import write_files
from tcm.report.plots import (
    figure_to_png,
    plot_accuracy_consistency,
    plot_far_frr_spread,
    plot_group_far_heatmap,
    plot_similarity_distributions,
    plot_utility_curves,
    run_color,
)
from tcm.report.run import METRIC_KEYS, ReportRun, check_report_options

__all__ = ["TransferRow", "TransferSpec", "format_metric", "transfer_rows", "write_report"]

#: One entry of ``write_report(transfer=...)``: ``(source_run_name, target_run_name)``, or
#: ``(source_label, target_label, CalibrationTransfer)`` for a transfer computed beforehand.
TransferSpec: TypeAlias = tuple[str, str] | tuple[str, str, CalibrationTransfer]

_HIGHER_IS_BETTER = {"recall_at_1", "map_at_r"}


def format_metric(key: str, value: float) -> str:
    """Table text of a metric (key of :meth:`tcm.metrics.Evaluation.metrics`): recall, MAP@R and
    R-precision (fractions) with 4 decimals, OPIS / eps-OPIS as ``x.xxxe-yy``, others ``%.4g``.

    Example:
        >>> format_metric("recall_at_1", 0.81234), format_metric("epsilon_opis_0.05", 0.0012346)
        ('0.8123', '1.235e-03')
    """
    if key.startswith("recall_at_") or key in ("map_at_r", "r_precision"):
        return f"{value:.4f}"
    if key == "opis" or key.startswith("epsilon_opis_"):
        return f"{value:.3e}"
    return f"{value:.4g}"


def _interval_text(key: str, iv: Interval, index: int | None = None) -> str:
    """``[lo, hi]`` of an interval (entry ``index`` of a vector interval), formatted like the
    value (:func:`format_metric`); ``n/a`` for an undefined end."""

    def end(v: Any) -> str:
        x = float(np.atleast_1d(v)[index] if index is not None else v)
        return format_metric(key, x) if np.isfinite(x) else "n/a"

    return f"[{end(iv.lo)}, {end(iv.hi)}]"


def _with_ci(text: str, ci_text: str | None) -> H.Cell:
    """A cell: escaped ``text`` with the escaped interval text on a second, smaller line."""
    if ci_text is None:
        return H.raw(H.esc(text))
    return H.raw(f"{H.esc(text)}<br><span class=ci>{H.esc(ci_text)}</span>")


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
    for src, tgt, given in _parse_transfer(transfer, list(by_name)):
        if given is not None:
            rows.append(TransferRow(src, tgt, given, "given"))
        else:
            rows.append(_one_transfer(by_name, ev_by_name, src, tgt, far, ci, n_boot))
    return rows


def _parse_transfer(
    transfer: Sequence[TransferSpec], names: list[str]
) -> list[tuple[str, str, CalibrationTransfer | None]]:
    """Validated ``(source, target, given transfer or None)`` entries."""
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
        )
    except ValueError as exc:
        raise ValueError(f"transfer {src!r} -> {tgt!r}: {exc}") from exc
    return TransferRow(src, tgt, res, "calibration_transfer")


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40]
    return s or "run"


def _evaluated(
    run: ReportRun,
    threshold: float | None,
    target_far: float,
    far_range: tuple[float, float],
    ci: float | None = None,
    n_boot: int = 1000,
) -> ReportRun:
    """``run`` itself if it carries an Evaluation, else it evaluated once (embeddings dropped)."""
    if run.evaluation is not None:
        return run
    assert run.embeddings is not None and run.labels is not None  # checked by ReportRun
    return ReportRun.from_embeddings(
        run.name,
        run.embeddings,
        run.labels,
        metrics=run.metrics,
        class_names=run.class_names,
        threshold=threshold,
        target_far=target_far,
        far_range=far_range,
        groups=run.groups,
        ci=ci,
        n_boot=n_boot,
    )


def _check_runs(runs: Sequence[ReportRun]) -> list[ReportRun]:
    if isinstance(runs, ReportRun):
        runs = [runs]
    if isinstance(runs, str | bytes) or not isinstance(runs, Sequence):
        raise ValueError(f"runs must be a sequence of ReportRun; got {type(runs).__name__}")
    if len(runs) == 0:
        raise ValueError("runs is empty: a report needs at least one ReportRun")
    seen: set[str] = set()
    for i, run in enumerate(runs):
        if not isinstance(run, ReportRun):
            raise ValueError(f"runs[{i}] must be a ReportRun; got {type(run).__name__}")
        run.__post_init__()  # re-validate: fields may have been changed after construction
        if run.name in seen:
            raise ValueError(f"run names must be unique; {run.name!r} appears more than once")
        seen.add(run.name)
    return list(runs)


def write_report(
    out_dir: str | os.PathLike[str],
    runs: Sequence[ReportRun],
    *,
    threshold: float | None = None,
    target_far: float = 1e-3,
    far_range: tuple[float, float] = (1e-2, 1e-1),
    title: str = "tcm report",
    ci: float | None = None,
    n_boot: int = 1000,
    transfer: Sequence[TransferSpec] | None = None,
) -> Path:
    """Write a self-contained ``index.html``, the figures as PNGs and ``report.json`` to out_dir.

    Contents: (1) metrics table (Recall@1, MAP@R, OPIS, eps-OPIS 5 %/10 %; caller-supplied
    values are used as given and marked †, the others come from the run's
    :class:`~tcm.metrics.Evaluation`); (2) per-class
    utility curves ``U_c(t)`` over the calibration range (thresholds whose global FAR lies in
    ``far_range``) per run; (3) spread of per-class ``FAR_c``/``FRR_c`` at the deployment threshold
    (``threshold`` if given, else calibrated per run so that global FAR = ``target_far``);
    (4) positive/negative cosine-similarity distributions; (5) R@1 vs OPIS over all runs;
    (6) for runs with groups (``ReportRun(groups=...)`` or an Evaluation with ``groups``): the
    cross-group FAR heatmap (colour ``log10(FAR / target_far)``) and the per-group FAR / FRR
    table with the differential summaries; (7) with ``transfer``, the calibration-transfer
    table (:func:`transfer_rows`). With ``ci``, class-bootstrap intervals are shown under the
    values and as OPIS error bars.

    A run given as embeddings + labels is evaluated once with
    :func:`~tcm.report.run.report_evaluation` (one :func:`tcm.metrics.evaluate` call: blocked,
    memory ``O(N·D + T·K)``, never ``N x N``); a run carrying an Evaluation is only read, which
    needs its ``consistency`` section on ``far_range``, its ``histogram``, the deployment
    threshold (``operating_point`` at ``threshold``, or ``calibration`` at ``target_far``) and
    ``retrieval`` unless the caller gave ``recall_at_1`` and ``map_at_r``. Every
    number is computed before anything is written; files are written to a temporary directory
    inside ``out_dir`` and moved into place with :func:`os.replace`, ``index.html`` last, so a
    crash never leaves a half-written file.

    Args:
        out_dir: output directory (created if missing; existing report files are replaced).
        runs: one or more :class:`ReportRun` with unique names (embeddings or an Evaluation).
        threshold: cosine-similarity threshold in ``[-1, 1]`` or ``None`` (calibrate per run).
        target_far: target global FAR in ``(0, 1)`` (calibration, and the line in the FAR plot).
        far_range: ``(f_lo, f_hi)`` with ``0 < f_lo < f_hi < 1``: the calibration range.
        title: page title (escaped).
        ci, n_boot: with ``ci`` in ``(0, 1)``, every run carries class-bootstrap intervals at
            that level from ``n_boot`` resamples (computed in the one evaluate call of a run
            given as embeddings; a run given as an Evaluation must carry them). Intervals an
            Evaluation carries are shown even without ``ci``.
        transfer: calibration-transfer rows, ``[(source_run, target_run), ...]`` by run name
            (threshold of global FAR ``target_far`` calibrated on the source, evaluated on the
            target), or ``(source, target, CalibrationTransfer)`` computed beforehand.

    Returns:
        Path of the written ``index.html``.

    Raises:
        ValueError: no runs, a non-:class:`ReportRun` entry, duplicate names, mismatched lengths
            or bad embeddings/labels, an Evaluation lacking a section or computed with other
            options (message names the run and the section), bad option values.

    Example:
        >>> import numpy as np, tempfile
        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat(np.arange(8), 6)
        >>> x = rng.normal(size=(8, 16))[y] + 0.6 * rng.normal(size=(48, 16))
        >>> path = write_report(tempfile.mkdtemp(), [ReportRun("demo", x, y)], target_far=1e-2)
        >>> path.name
        'index.html'
    """
    started = time.time()
    threshold, target_far, (far_lo, far_hi) = check_report_options(threshold, target_far, far_range)
    if not isinstance(title, str):
        raise ValueError(f"title must be a string; got {type(title).__name__}")
    check_bootstrap_args(ci, n_boot)
    run_list = _check_runs(runs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir exists and is not a directory: {str(out)!r}")
    if transfer is not None:  # validate the entries before any evaluation
        _parse_transfer(transfer, [r.name for r in run_list])

    analyses = []
    ev_runs = []
    for run in run_list:
        ev_run = _evaluated(run, threshold, target_far, (far_lo, far_hi), ci, n_boot)
        ev_runs.append(ev_run)
        analyses.append(
            analyse_run(
                ev_run,
                threshold=threshold,
                target_far=target_far,
                far_range=(far_lo, far_hi),
                ci=ci,
                n_boot=n_boot if ci is not None else None,
            )
        )
    rows = (
        []
        if transfer is None
        else transfer_rows(
            transfer, run_list, far=target_far, evaluated=ev_runs, ci=ci, n_boot=n_boot
        )
    )
    files: dict[str, bytes] = {}
    body = _render_body(analyses, files, title, threshold, target_far, (far_lo, far_hi), rows)
    files["index.html"] = H.page(title, body).encode("utf-8")
    summary = {
        "title": title,
        "tcm_version": tcm.__version__,
        "threshold": threshold,
        "target_far": target_far,
        "far_range": [far_lo, far_hi],
        "ci": ci,
        "n_boot": n_boot if ci is not None else None,
        "runs": [a.summary(target_far) for a in analyses],
        "transfers": [r.to_dict() for r in rows],
        "figures": sorted(k for k in files if k.endswith(".png")),
    }
    files["report.json"] = (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode()
    write_files(out, files, started)
    return out / "index.html"


def _swatch(i: int, name: str) -> H.Cell:
    return H.raw(f'<span class=swatch style="background:{run_color(i)}"></span>{H.esc(name)}')


def _render_body(
    analyses: list[RunAnalysis],
    files: dict[str, bytes],
    title: str,
    threshold: float | None,
    target_far: float,
    far_range: tuple[float, float],
    transfers: Sequence[TransferRow] = (),
) -> str:
    names = [a.name for a in analyses]
    colors = [run_color(i) for i in range(len(analyses))]
    parts: list[str] = []
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t_mode = (
        f"given threshold t = {threshold:.4f} for every run"
        if threshold is not None
        else f"threshold calibrated per run for global FAR = {target_far:g}"
    )
    parts.append(f"<h1>{H.esc(title)}</h1>")
    parts.append(
        f'<p class="meta">{len(analyses)} run(s) · calibration range: global FAR '
        f"{far_range[0]:g} – {far_range[1]:g} · {H.esc(t_mode)} · cosine similarity, a pair is "
        f"accepted when s ≥ t · tcm {H.esc(tcm.__version__)} · {now}</p>"
    )

    # (1) metrics table
    extra_keys: list[str] = []
    for a in analyses:
        extra_keys += [k for k in a.metrics if k not in METRIC_KEYS and k not in extra_keys]
    keys = list(METRIC_KEYS) + extra_keys
    best: dict[str, float] = {}
    if len(analyses) > 1:
        for k in METRIC_KEYS:
            vals = [a.metrics[k] for a in analyses]
            best[k] = max(vals) if k in _HIGHER_IS_BETTER else min(vals)
    rows: list[list[str]] = []
    any_caller = False
    levels: set[tuple[float, int]] = set()
    for i, a in enumerate(analyses):
        row: list[str] = [_swatch(i, a.name), f"{a.num_samples:,}", f"{a.num_classes:,}"]
        for k in keys:
            if k not in a.metrics:
                row.append("–")
                continue
            text = H.esc(format_metric(k, a.metrics[k]))
            if a.sources[k] == "caller":
                text += "<sup>†</sup>"
                any_caller = True
            if k in best and a.metrics[k] == best[k]:
                text = f"<span class=best>{text}</span>"
            if k in a.intervals:
                text += f"<br><span class=ci>{H.esc(_interval_text(k, a.intervals[k]))}</span>"
                levels.add((a.intervals[k].ci, a.intervals[k].n_boot))
            row.append(H.raw(text))
        rows.append(row)
    parts.append("<h2>1. Metrics</h2>")
    parts.append(
        '<div class="scroll">'
        + H.table(["run", "N", "classes"] + [metric_label(k) for k in keys], rows)
        + "</div>"
    )
    note = (
        "Recall@1 and MAP@R: leave-one-out retrieval on the run's own embeddings (higher = "
        "better). OPIS: mean over the calibration thresholds of the variance of per-class "
        "utility; eps-OPIS: mean squared gap between the best and worst ε share of classes "
        "(lower = more threshold-consistent). Best value per column in bold."
    )
    if any_caller:
        note += " † value supplied by the caller, not recomputed."
    if levels:
        note += " [lo, hi]: " + _levels_text(levels) + "."
    parts.append(f'<p class="note">{H.esc(note)}</p>')

    # operating point table
    def stat(x: np.ndarray, fn: str, fmt: str) -> str:
        if x.size == 0:
            return "–"
        v = {"median": np.median(x), "p95": np.percentile(x, 95), "max": np.max(x)}[fn]
        return format(float(v), fmt)

    def global_ci(a: RunAnalysis, key: str, fmt: str) -> str | None:
        iv = a.intervals.get(key) if a.threshold_source == "calibrated" else None
        if iv is None:
            return None
        op_levels.add((iv.ci, iv.n_boot))
        return f"[{format(float(iv.lo), fmt)}, {format(float(iv.hi), fmt)}]"

    op_levels: set[tuple[float, int]] = set()
    op_rows: list[list[str]] = []
    for i, a in enumerate(analyses):
        n_cls = a.far.size
        op_rows.append(
            [
                _swatch(i, a.name),
                f"{a.threshold:.4f}",
                _with_ci(f"{a.global_far:.2e}", global_ci(a, "calibration_global_far", ".2e")),
                _with_ci(f"{a.global_tar:.4f}", global_ci(a, "calibration_global_tar", ".4f")),
                stat(a.far, "median", ".2e"),
                stat(a.far, "p95", ".2e"),
                stat(a.far, "max", ".2e"),
                f"{a.far_exceeding(2.0, target_far):,} / {n_cls:,}",
                stat(a.frr, "median", ".4f"),
                stat(a.frr, "p95", ".4f"),
                stat(a.frr, "max", ".4f"),
            ]
        )
    parts.append("<h3>Operating point (per-class FAR_c / FRR_c at the deployment threshold)</h3>")
    parts.append(
        '<div class="scroll">'
        + H.table(
            [
                "run",
                "threshold t",
                "global FAR",
                "global TAR",
                "FAR_c median",
                "FAR_c p95",
                "FAR_c max",
                f"FAR_c > {2 * target_far:g}",
                "FRR_c median",
                "FRR_c p95",
                "FRR_c max",
            ],
            op_rows,
        )
        + "</div>"
    )
    parts.append(
        '<p class="note">'
        + H.esc(
            f"Threshold t: {t_mode}. FAR_c = share of pairs with exactly one member in class c "
            f"accepted (s ≥ t); FRR_c = share of the class's own pairs rejected. "
            f"“FAR_c > {2 * target_far:g}” counts classes above twice the target FAR."
            + (f" [lo, hi]: {_levels_text(op_levels)}." if op_levels else "")
        )
        + "</p>"
    )

    # (5) accuracy-consistency scatter
    files["accuracy_consistency.png"] = figure_to_png(
        plot_accuracy_consistency(
            names,
            [a.metrics["recall_at_1"] for a in analyses],
            [a.metrics["opis"] for a in analyses],
            colors=colors,
            opis_intervals=[
                (float(a.intervals["opis"].lo), float(a.intervals["opis"].hi))
                if "opis" in a.intervals
                else None
                for a in analyses
            ],
        )
    )
    # (3) FAR / FRR spread
    files["far_frr_spread.png"] = figure_to_png(
        plot_far_frr_spread(
            names,
            [a.far for a in analyses],
            [a.frr for a in analyses],
            target_far=target_far,
            global_fars=[a.global_far for a in analyses],
            global_frrs=[1.0 - a.global_tar for a in analyses],
            colors=colors,
        )
    )
    parts.append("<h2>2. Accuracy vs. threshold consistency</h2>")
    parts.append(
        '<div class="grid">'
        + H.figure(
            files["accuracy_consistency.png"],
            alt="R@1 vs OPIS scatter over all runs",
            filename="accuracy_consistency.png",
            caption="Recall@1 against OPIS, one point per run (upper left is best: accurate and "
            "threshold-consistent)."
            + (
                " Horizontal bars: class-bootstrap interval of OPIS."
                if any("opis" in a.intervals for a in analyses)
                else ""
            ),
        )
        + "</div>"
    )
    parts.append("<h2>3. Per-class FAR / FRR at the deployment threshold</h2>")
    parts.append(
        H.figure(
            files["far_frr_spread.png"],
            alt="per-class FAR and FRR spread",
            filename="far_frr_spread.png",
            caption="Each dot is one class; boxes span the quartiles, whiskers the 5th–95th "
            "percentile, the diamond is the global value. A threshold-consistent model keeps "
            "every class close to the target FAR (dashed red line).",
        )
    )

    section = 4
    if any(a.groups is not None for a in analyses):
        parts.append(f"<h2>{section}. Groups (data distributions) at the deployment threshold</h2>")
        parts.append(_groups_intro(target_far))
        for i, a in enumerate(analyses):
            if a.groups is not None:
                parts.append(_group_section(i, a, files, target_far))
        section += 1
    if transfers:
        parts.append(f"<h2>{section}. Calibration transfer</h2>")
        parts.append(_transfer_section(transfers))
        section += 1

    # (2) + (4) per-run figures
    parts.append(f"<h2>{section}. Per-run utility curves and similarity distributions</h2>")
    for i, a in enumerate(analyses):
        slug = f"{i + 1:02d}_{_slug(a.name)}"
        u_name, s_name = f"utility_{slug}.png", f"similarity_{slug}.png"
        files[u_name] = figure_to_png(
            plot_utility_curves(
                a.thresholds,
                a.utility,
                title=f"{a.name}: per-class utility",
                threshold=a.threshold,
                grid_global_far=a.grid_global_far,
                color=colors[i],
            )
        )
        files[s_name] = figure_to_png(
            plot_similarity_distributions(
                a.hist_edges,
                a.hist_pos,
                a.hist_neg,
                title=f"{a.name}: pair similarities",
                threshold=a.threshold,
                color=colors[i],
            )
        )
        parts.append(f'<section class="run"><h3>{_swatch(i, a.name)}</h3>')
        parts.append(
            f'<p class="meta">{a.num_samples:,} samples, {a.num_classes:,} classes '
            f"({a.num_excluded:,} with a single sample excluded from per-class statistics); "
            f"calibration thresholds t ∈ [{a.thresholds[0]:.4f}, {a.thresholds[-1]:.4f}] "
            f"(global FAR {far_range[1]:g} → {far_range[0]:g}).</p>"
        )
        parts.append(
            '<div class="grid">'
            + H.figure(
                files[u_name],
                alt=f"per-class utility curves of {a.name}",
                filename=u_name,
                caption="Per-class utility U_c(t) over the calibration range: thin lines are "
                "classes, the black line their mean, the shaded band the 5%–95% range. Flat, "
                "tightly bunched curves mean one threshold suits every class.",
            )
            + H.figure(
                files[s_name],
                alt=f"positive and negative similarity distributions of {a.name}",
                filename=s_name,
                caption="Density of cosine similarities of positive (same-class) and negative "
                "pairs; pairs right of the dashed threshold are accepted.",
            )
            + "</div>"
        )
        if a.far.size:
            worst = a.worst_classes()
            parts.append(
                H.table(
                    ["worst classes by FAR_c", "size", "FAR_c", "FRR_c"],
                    [
                        [
                            str(a.class_names[j]),
                            f"{int(a.class_sizes[j]):,}",
                            f"{a.far[j]:.2e}",
                            f"{a.frr[j]:.4f}",
                        ]
                        for j in worst
                    ],
                )
            )
        parts.append("</section>")
    parts.append(
        "<footer>Generated by tcm.report. Threshold-Consistent Margin loss and OPIS: Zhang et "
        "al., ICLR 2024, “Threshold-Consistent Margin Loss for Open-World Deep Metric "
        "Learning”.</footer>"
    )
    return "\n".join(parts)


def _levels_text(levels: set[tuple[float, int]]) -> str:
    return "; ".join(
        f"{ci * 100:g} % class-bootstrap interval ({n:,} resamples of the classes)"
        for ci, n in sorted(levels)
    )


def _groups_intro(target_far: float) -> str:
    return (
        '<p class="note">'
        + H.esc(
            "One global threshold t (the deployment threshold of each run), rates per group "
            "(NIST FRVT / ISO/IEC 19795-10 conventions): FAR_g = share of impostor pairs "
            "(different labels, both samples in g) accepted (s ≥ t), FRR_g = share of genuine "
            "pairs (same label, both in g) rejected. Heatmap cell (g, h): FAR over impostor "
            "pairs with one sample in g and one in h (diagonal = FAR_g); colour = log10(FAR / "
            f"target FAR {target_far:g}), white on target, red above, blue below, grey n/a = no "
            "impostor pairs. Summaries over the groups with both pair kinds: max/min, "
            "Max/GeoMean (∞ when a rate is 0), Gini (0 = parity), GARBE = α·Gini(FAR) + "
            "(1 − α)·Gini(FRR), FDR = 1 − (α·max|ΔFAR| + (1 − α)·max|ΔFRR|) (1 = parity), "
            "α = 0.5."
        )
        + "</p>"
    )


def _group_section(i: int, a: RunAnalysis, files: dict[str, bytes], target_far: float) -> str:
    gop = a.groups
    assert gop is not None
    names = [str(g) for g in gop.groups.tolist()]
    fname = f"group_far_{i + 1:02d}_{_slug(a.name)}.png"
    files[fname] = figure_to_png(
        plot_group_far_heatmap(
            names, gop.far_matrix, target_far=target_far, title=a.name, threshold=gop.threshold
        )
    )
    iv = gop.intervals
    ratio = a.group_far_log_ratio(target_far)
    left_out = set(a.groups_left_out())

    def rate_ci(key: str, k: int, fmt: str) -> str | None:
        if key not in iv:
            return None
        lo, hi = (float(np.atleast_1d(v)[k]) for v in (iv[key].lo, iv[key].hi))
        return "[" + ", ".join(format(v, fmt) if np.isfinite(v) else "n/a" for v in (lo, hi)) + "]"

    def num(v: float, fmt: str) -> str:
        return format(v, fmt) if np.isfinite(v) else "n/a"

    rows: list[list[str]] = []
    for k, name in enumerate(names):
        r = float(ratio[k, k])
        rows.append(
            [
                name,
                f"{int(gop.num_genuine[k]):,}",
                f"{int(gop.num_impostor[k]):,}",
                _with_ci(num(float(gop.far[k]), ".2e"), rate_ci("far", k, ".2e")),
                "n/a" if np.isnan(r) else f"{10.0**r:.3g}×",
                _with_ci(num(float(gop.frr[k]), ".4f"), rate_ci("frr", k, ".4f")),
                "left out (no genuine or impostor pairs)" if name in left_out else "",
            ]
        )
    s = gop.summary

    def summ(key: str, zero_key: str | None = None) -> H.Cell:
        v = float(s[key])
        if np.isinf(v):
            zeros = int(s.get(zero_key, 0)) if zero_key else 0
            text = f"∞ ({zeros} zero group{'s' if zeros != 1 else ''})" if zero_key else "∞"
        else:
            text = num(v, ".4g")
        ci_text = None
        if key in iv:
            lo, hi = float(iv[key].lo), float(iv[key].hi)
            ci_text = f"[{num(lo, '.4g')}, {num(hi, '.4g')}]"
        return _with_ci(text, ci_text)

    sum_rows: list[list[str]] = [
        [
            "max / min",
            summ("far_max_min", "far_zero_groups"),
            summ("frr_max_min", "frr_zero_groups"),
        ],
        [
            "Max / GeoMean",
            summ("far_max_geomean", "far_zero_groups"),
            summ("frr_max_geomean", "frr_zero_groups"),
        ],
        ["Gini", summ("far_gini"), summ("frr_gini")],
        ["GARBE (α = 0.5, FAR and FRR)", summ("garbe"), ""],
        ["FDR (α = 0.5, FAR and FRR)", summ("fdr"), ""],
    ]
    if a.group_opis is not None:
        gi = a.group_opis_interval
        sum_rows.append(
            [
                "group OPIS",
                _with_ci(
                    format_metric("opis", a.group_opis),
                    None if gi is None else _interval_text("opis", gi),
                ),
                "",
            ]
        )
    parts = [f'<section class="run"><h3>{_swatch(i, a.name)}</h3>']
    parts.append(
        f'<p class="meta">{len(names)} groups · threshold t = {gop.threshold:.4f} '
        f"(cosine similarity, accept when s ≥ t) · target FAR {target_far:g}</p>"
    )
    parts.append(
        H.figure(
            files[fname],
            alt=f"cross-group FAR heatmap of {a.name}",
            filename=fname,
            caption="Cross-group FAR at the deployment threshold; colour = log10(FAR / target "
            "FAR), centred at the target; each cell shows the FAR.",
        )
    )
    parts.append(
        '<div class="scroll">'
        + H.table(
            [
                "group",
                "genuine pairs",
                "impostor pairs",
                "FAR_g",
                "FAR_g / target",
                "FRR_g",
                "",
            ],
            rows,
        )
        + "</div>"
    )
    parts.append(H.table(["summary", "FAR", "FRR"], sum_rows))
    notes = []
    if left_out:
        notes.append(
            f"Left out of the summaries ({len(left_out)}, no genuine or no impostor pairs): "
            + ", ".join(n for n in names if n in left_out)
            + "."
        )
    if iv:
        any_iv = next(iter(iv.values()))
        notes.append(f"[lo, hi]: {_levels_text({(any_iv.ci, any_iv.n_boot)})}.")
    if notes:
        parts.append(f'<p class="note">{H.esc(" ".join(notes))}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _transfer_section(transfers: Sequence[TransferRow]) -> str:
    def iv_text(tr: CalibrationTransfer, key: str, fmt: str) -> str | None:
        iv = tr.intervals.get(key)
        if iv is None:
            return None
        return f"[{format(float(iv.lo), fmt)}, {format(float(iv.hi), fmt)}]"

    rows: list[list[str]] = []
    levels: set[tuple[float, int]] = set()
    for row in transfers:
        tr = row.result
        levels.update((v.ci, v.n_boot) for v in tr.intervals.values())
        rows.append(
            [
                f"{row.source} → {row.target}",
                f"{tr.far:g}",
                f"{tr.threshold:.4f}",
                _with_ci(f"{tr.target_far:.2e}", iv_text(tr, "target_far", ".2e")),
                _with_ci(f"{tr.far_ratio:.3f}", iv_text(tr, "far_ratio", ".3f")),
                _with_ci(
                    f"{tr.source_tar:.4f} → {tr.target_tar:.4f} ({tr.tar_change:+.4f})",
                    iv_text(tr, "target_tar", ".4f"),
                ),
                f"{tr.target_threshold:.4f}",
                f"{tr.threshold_offset:+.4f}",
                f"{tr.classes_over_2x:,} / {tr.num_target_classes:,}",
            ]
        )
    methods = sorted({r.method for r in transfers})
    note = (
        "The threshold t of global FAR f is calibrated on the source and applied to the target "
        "(cosine similarity, accept when s ≥ t). FAR ratio = target FAR / f (1 = the calibration "
        "holds); TAR source → target at t (change); t_T = the threshold of FAR f on the target, "
        "offset = t − t_T (negative: t is too low for the target, more false accepts); classes "
        "over 2× = target classes with FAR_c > 2f. Computed with "
        + ", ".join(
            {
                "transfer_view": "tcm.metrics.transfer.transfer_view on the runs' count tables",
                "calibration_transfer": "tcm.metrics.calibration_transfer on the runs' embeddings",
                "given": "CalibrationTransfer results given by the caller",
            }[m]
            for m in methods
        )
        + "."
    )
    if levels:
        note += f" [lo, hi]: {_levels_text(levels)} of the target."
    return (
        '<div class="scroll">'
        + H.table(
            [
                "source → target",
                "FAR target f",
                "threshold t (source)",
                "target FAR at t",
                "FAR ratio",
                "TAR source → target",
                "target threshold t_T",
                "offset t − t_T",
                "target classes over 2×",
            ],
            rows,
        )
        + "</div>"
        + f'<p class="note">{H.esc(note)}</p>'
    )
