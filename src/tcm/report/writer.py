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
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import tcm
from tcm.metrics import metric_label
from tcm.report import html as H
from tcm.report.compute import RunAnalysis, analyse_run
from tcm.report.plots import (
    figure_to_png,
    plot_accuracy_consistency,
    plot_far_frr_spread,
    plot_similarity_distributions,
    plot_utility_curves,
    run_color,
)
from tcm.report.run import METRIC_KEYS, ReportRun, check_report_options

__all__ = ["format_metric", "write_report"]

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


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40]
    return s or "run"


def _evaluated(
    run: ReportRun,
    threshold: float | None,
    target_far: float,
    far_range: tuple[float, float],
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
) -> Path:
    """Write a self-contained ``index.html``, the figures as PNGs and ``report.json`` to out_dir.

    Contents: (1) metrics table (Recall@1, MAP@R, OPIS, eps-OPIS 5 %/10 %; caller-supplied
    values are used as given and marked †, the others come from the run's
    :class:`~tcm.metrics.Evaluation`); (2) per-class
    utility curves ``U_c(t)`` over the calibration range (thresholds whose global FAR lies in
    ``far_range``) per run; (3) spread of per-class ``FAR_c``/``FRR_c`` at the deployment threshold
    (``threshold`` if given, else calibrated per run so that global FAR = ``target_far``);
    (4) positive/negative cosine-similarity distributions; (5) R@1 vs OPIS over all runs.

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
    threshold, target_far, (far_lo, far_hi) = check_report_options(threshold, target_far, far_range)
    if not isinstance(title, str):
        raise ValueError(f"title must be a string; got {type(title).__name__}")
    run_list = _check_runs(runs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir exists and is not a directory: {str(out)!r}")

    analyses = []
    for run in run_list:
        ev_run = _evaluated(run, threshold, target_far, (far_lo, far_hi))
        analyses.append(
            analyse_run(
                ev_run, threshold=threshold, target_far=target_far, far_range=(far_lo, far_hi)
            )
        )
    files: dict[str, bytes] = {}
    body = _render_body(analyses, files, title, threshold, target_far, (far_lo, far_hi))
    files["index.html"] = H.page(title, body).encode("utf-8")
    summary = {
        "title": title,
        "tcm_version": tcm.__version__,
        "threshold": threshold,
        "target_far": target_far,
        "far_range": [far_lo, far_hi],
        "runs": [a.summary(target_far) for a in analyses],
        "figures": sorted(k for k in files if k.endswith(".png")),
    }
    files["report.json"] = (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode()
    _write_atomically(out, files)
    return out / "index.html"


def _write_atomically(out: Path, files: dict[str, bytes]) -> None:
    """Write all files to a temp dir inside ``out``, then ``os.replace`` them in, index last."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tcm-report-", dir=out))
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        order = sorted(files, key=lambda n: n == "index.html")
        for name in order:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swatch(i: int, name: str) -> H.Cell:
    return H.raw(f'<span class=swatch style="background:{run_color(i)}"></span>{H.esc(name)}')


def _render_body(
    analyses: list[RunAnalysis],
    files: dict[str, bytes],
    title: str,
    threshold: float | None,
    target_far: float,
    far_range: tuple[float, float],
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
    parts.append(f'<p class="note">{H.esc(note)}</p>')

    # operating point table
    def stat(x: np.ndarray, fn: str, fmt: str) -> str:
        if x.size == 0:
            return "–"
        v = {"median": np.median(x), "p95": np.percentile(x, 95), "max": np.max(x)}[fn]
        return format(float(v), fmt)

    op_rows: list[list[str]] = []
    for i, a in enumerate(analyses):
        n_cls = a.far.size
        op_rows.append(
            [
                _swatch(i, a.name),
                f"{a.threshold:.4f}",
                f"{a.global_far:.2e}",
                f"{a.global_tar:.4f}",
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
            "threshold-consistent).",
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

    # (2) + (4) per-run figures
    parts.append("<h2>4. Per-run utility curves and similarity distributions</h2>")
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
