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

import os
import time
from collections.abc import Sequence
from pathlib import Path

import tcm
from tcm._io import json_bytes
from tcm.metrics.bootstrap import check_bootstrap_args
from tcm.report import html as H
from tcm.report.compute import RunAnalysis, analyse_run
from tcm.report.files import write_files
from tcm.report.run import ReportRun, check_report_options, check_threshold_scale
from tcm.report.sections import ReportContext, render_body
from tcm.report.text import format_metric
from tcm.report.transfer import (
    TransferRow,
    TransferSpec,
    check_same_scorer,
    check_transfer,
    transfer_rows,
)

__all__ = ["TransferRow", "TransferSpec", "format_metric", "transfer_rows", "write_report"]


def _evaluated(
    run: ReportRun,
    threshold: float | None,
    target_far: float,
    far_range: tuple[float, float],
    ci: float | None = None,
    n_boot: int = 1000,
    det: bool = False,
) -> ReportRun:
    """``run`` itself if it carries an Evaluation, else it evaluated once (embeddings dropped;
    with ``det``, its DET data computed too)."""
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
        scorer=run.scorer,
        scorer_record=run.scorer_record,
        det=det,
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
    det: bool = False,
) -> Path:
    """Write a self-contained ``index.html``, the figures as PNGs and ``report.json`` to out_dir.

    Sections (:data:`tcm.report.sections.SECTIONS`, ``docs/report.md``): metrics and operating
    point, R@1 vs OPIS, per-class FAR_c / FRR_c spread, DET curves and minDCF (with ``det``),
    groups (runs with groups), calibration transfer (with ``transfer``), per-run utility curves
    and similarity distributions. A run with a ``scorer`` is evaluated on its scores (its
    thresholds, histogram and DET on the scorer's ``score_scale``). A run
    given as embeddings + labels is evaluated once (:func:`~tcm.report.run.report_evaluation`);
    a run carrying an Evaluation is only read, and must have been computed with these options.
    Everything is computed before anything is written; the files are then put in place by
    :func:`tcm.report.files.write_files` (``index.html`` last; the previous report's figures
    and stale temporaries of dead processes are removed).

    Args:
        out_dir: output directory (created if missing; existing report files are replaced).
        runs: one or more :class:`ReportRun` with unique names (embeddings or an Evaluation).
        threshold: cosine-similarity threshold in ``[-1, 1]`` or ``None`` (calibrate per run).
        target_far: target global FAR in ``(0, 1)`` (calibration, and the line in the FAR plot).
        far_range: ``(f_lo, f_hi)`` with ``0 < f_lo < f_hi < 1``: the calibration range.
        title: page title (escaped).
        ci, n_boot: class-bootstrap intervals at level ``ci`` from ``n_boot`` resamples (a run
            given as an Evaluation must carry them); intervals an Evaluation carries are shown
            even without ``ci``.
        transfer: ``[(source_run, target_run), ...]`` by run name (threshold of global FAR
            ``target_far`` calibrated on the source, evaluated on the target), or ``(source,
            target, CalibrationTransfer)`` computed beforehand (:func:`transfer_rows`).
        det: add the DET section: every pair of each run given as embeddings is scored once
            (:mod:`tcm.report.detection`; runs given as an Evaluation have no DET data).

    Returns:
        Path of the written ``index.html``.

    Raises:
        ValueError: no runs, a non-:class:`ReportRun` entry, duplicate names, mismatched lengths
            or bad embeddings/labels, an Evaluation lacking a section or computed with other
            options (message names the run and the section), bad option values, a
            ``threshold`` with a run whose scorer is off the cosine scale.

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
    threshold, target_far, far_range = check_report_options(threshold, target_far, far_range)
    if not isinstance(title, str):
        raise ValueError(f"title must be a string; got {type(title).__name__}")
    check_bootstrap_args(ci, n_boot)
    run_list = _check_runs(runs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir exists and is not a directory: {str(out)!r}")
    _check_scoring(run_list, threshold, transfer)  # before any evaluation
    ctx = ReportContext([], title, threshold, target_far, far_range)
    ev_runs = []
    for run in run_list:
        ev_run = _evaluated(run, threshold, target_far, far_range, ci, n_boot, det)
        ev_runs.append(ev_run)
        ctx.analyses.append(_analysed(run, ev_run, ctx, ci, n_boot))
    if transfer is not None:
        ctx.transfers = transfer_rows(
            transfer, run_list, far=target_far, evaluated=ev_runs, ci=ci, n_boot=n_boot
        )
    write_files(out, _report_files(ctx, ci, n_boot), started)
    return out / "index.html"


def _check_scoring(
    runs: list[ReportRun], threshold: float | None, transfer: Sequence[TransferSpec] | None
) -> None:
    """Validate the transfer entries, and refuse a cosine-similarity ``threshold`` for a run
    scored on another scale and a transfer between runs scored differently."""
    for run in runs:
        try:
            check_threshold_scale(threshold, run.scorer)
        except ValueError as exc:
            raise ValueError(f"run {run.name!r}: {exc}") from exc
    if transfer is None:
        return
    by_name = {r.name: r for r in runs}
    for src, tgt, given in check_transfer(transfer, list(by_name)):
        if given is None:
            try:
                check_same_scorer(by_name[src], by_name[tgt])
            except ValueError as exc:
                raise ValueError(f"transfer {src!r} -> {tgt!r}: {exc}") from exc


def _analysed(
    run: ReportRun, ev_run: ReportRun, ctx: ReportContext, ci: float | None, n_boot: int
) -> RunAnalysis:
    """The analysis of ``ev_run`` (``run`` evaluated). An Evaluation this report computed is
    read as it is (its ``options`` are the report's); one the caller gave is checked against
    the report's options."""
    if ev_run is not run:
        return analyse_run(ev_run)
    return analyse_run(
        run,
        threshold=ctx.threshold,
        target_far=ctx.target_far,
        far_range=ctx.far_range,
        ci=ci,
        n_boot=n_boot if ci is not None else None,
    )


def _report_files(ctx: ReportContext, ci: float | None, n_boot: int) -> dict[str, bytes]:
    """Every file of the report (name -> bytes): the figures, ``index.html``, ``report.json``."""
    body = render_body(ctx)
    files = ctx.files
    files["index.html"] = H.page(ctx.title, body).encode("utf-8")
    summary = {
        "title": ctx.title,
        "tcm_version": tcm.__version__,
        "threshold": ctx.threshold,
        "target_far": ctx.target_far,
        "far_range": list(ctx.far_range),
        "ci": ci,
        "n_boot": n_boot if ci is not None else None,
        "runs": [a.summary(ctx.target_far) for a in ctx.analyses],
        "transfers": [r.to_dict() for r in ctx.transfers],
        "figures": sorted(k for k in files if k.endswith(".png")),
    }
    files["report.json"] = json_bytes(summary) + b"\n"
    return files
