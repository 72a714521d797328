"""The report's sections, in page order: one function per section, listed in :data:`SECTIONS`.

A section function takes the :class:`ReportContext` and returns its HTML parts (joined with
newlines), or ``[]`` when the section does not apply (e.g. no run has groups); figures go into
``ctx.files`` through :meth:`ReportContext.figure_png`. Headings are numbered from the list, over
the sections present: adding a section is one function and one entry of :data:`SECTIONS`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure

import tcm
from tcm.metrics import headline_keys, metric_info, metric_label
from tcm.metrics.results import scale_label
from tcm.report import html as H
from tcm.report.compute import RunAnalysis
from tcm.report.detection import DET_MAX_PAIRS, DET_P_TARGET
from tcm.report.plots import (
    figure_to_png,
    plot_accuracy_consistency,
    plot_det_curves,
    plot_far_frr_spread,
    plot_group_far_heatmap,
    plot_similarity_distributions,
    plot_utility_curves,
    run_color,
)
from tcm.report.text import format_metric, interval_text, levels_text, slug, swatch, with_ci
from tcm.report.transfer import TransferRow

__all__ = ["SECTIONS", "ReportContext", "Section", "render_body"]


@dataclass
class ReportContext:
    """What every section reads: the analysed runs and the report's options; ``files``
    collects the PNG figures (file name -> bytes) as the sections render them."""

    analyses: list[RunAnalysis]
    title: str
    threshold: float | None
    target_far: float
    far_range: tuple[float, float]
    transfers: Sequence[TransferRow] = ()
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The run names, in report order."""
        return [a.name for a in self.analyses]

    @property
    def colors(self) -> list[str]:
        """The run colours, in report order."""
        return [run_color(i) for i in range(len(self.analyses))]

    @property
    def scored(self) -> bool:
        """Whether a run's scores are off the cosine scale (a scorer's): tables then get a
        score-scale column (a report of cosine runs only stays as it was)."""
        return any(a.score_scale != "cosine" for a in self.analyses) or any(
            r.result.score_scale != "cosine" for r in self.transfers
        )

    def threshold_mode(self) -> str:
        """How the deployment threshold was chosen, in words."""
        if self.threshold is not None:
            return f"given threshold t = {self.threshold:.4f} for every run"
        return f"threshold calibrated per run for global FAR = {self.target_far:g}"

    def figure_png(self, name: str, fig: Figure) -> bytes:
        """Render ``fig``, keep it as file ``name``; return the PNG bytes."""
        self.files[name] = figure_to_png(fig)
        return self.files[name]


@dataclass(frozen=True)
class Section:
    """One numbered section: its heading and the function that renders its body."""

    heading: str
    render: Callable[[ReportContext], list[str]]


# --------------------------------------------------------------------------------------------
# 1. Metrics (and the operating-point table)
# --------------------------------------------------------------------------------------------


def _metric_cell(
    a: RunAnalysis, k: str, best: dict[str, float], levels: set[tuple[float, int]]
) -> str:
    if k not in a.metrics:
        return "–"
    text = H.esc(format_metric(k, a.metrics[k]))
    if a.sources[k] == "caller":
        text += "<sup>†</sup>"
    if k in best and a.metrics[k] == best[k]:
        text = f"<span class=best>{text}</span>"
    if k in a.intervals:
        iv = a.intervals[k]
        text += (
            f"<br><span class=ci>{H.esc(interval_text(iv, lambda v: format_metric(k, v)))}</span>"
        )
        levels.add((iv.ci, iv.n_boot))
    return H.raw(text)


def _metrics_table(ctx: ReportContext) -> list[str]:
    analyses = ctx.analyses
    headline = headline_keys()
    extra_keys: list[str] = []
    for a in analyses:
        extra_keys += [k for k in a.metrics if k not in headline and k not in extra_keys]
    keys = list(headline) + extra_keys
    best: dict[str, float] = {}
    if len(analyses) > 1:
        for k in headline:
            higher = metric_info(k).higher_is_better
            if higher is not None:
                vals = [a.metrics[k] for a in analyses]
                best[k] = max(vals) if higher else min(vals)
    levels: set[tuple[float, int]] = set()
    rows = [
        [swatch(i, a.name), f"{a.num_samples:,}", f"{a.num_classes:,}"]
        + [_metric_cell(a, k, best, levels) for k in keys]
        for i, a in enumerate(analyses)
    ]
    note = (
        "Recall@1 and MAP@R: leave-one-out retrieval on the run's own embeddings (higher = "
        "better). OPIS: mean over the calibration thresholds of the variance of per-class "
        "utility; eps-OPIS: mean squared gap between the best and worst ε share of classes "
        "(lower = more threshold-consistent). Best value per column in bold."
    )
    if any(a.sources[k] == "caller" for a in analyses for k in keys if k in a.metrics):
        note += " † value supplied by the caller, not recomputed."
    if levels:
        note += " [lo, hi]: " + levels_text(levels) + "."
    return [
        '<div class="scroll">'
        + H.table(["run", "N", "classes"] + [metric_label(k) for k in keys], rows)
        + "</div>",
        f'<p class="note">{H.esc(note)}</p>',
    ]


def _spread_stat(x: np.ndarray, fn: str, fmt: str) -> str:
    if x.size == 0:
        return "–"
    v = {"median": np.median(x), "p95": np.percentile(x, 95), "max": np.max(x)}[fn]
    return format(float(v), fmt)


def _operating_point_row(
    i: int, a: RunAnalysis, target_far: float, levels: set[tuple[float, int]], scored: bool
) -> list[str]:
    def global_ci(key: str, fmt: str) -> str | None:
        iv = a.intervals.get(key) if a.threshold_source == "calibrated" else None
        if iv is None:
            return None
        levels.add((iv.ci, iv.n_boot))
        return interval_text(iv, fmt)

    return [
        swatch(i, a.name),
        *([scale_label(a.score_scale)] if scored else []),
        f"{a.threshold:.4f}",
        with_ci(f"{a.global_far:.2e}", global_ci("calibration_global_far", ".2e")),
        with_ci(f"{a.global_tar:.4f}", global_ci("calibration_global_tar", ".4f")),
        _spread_stat(a.far, "median", ".2e"),
        _spread_stat(a.far, "p95", ".2e"),
        _spread_stat(a.far, "max", ".2e"),
        f"{a.far_exceeding(2.0, target_far):,} / {a.far.size:,}",
        _spread_stat(a.frr, "median", ".4f"),
        _spread_stat(a.frr, "p95", ".4f"),
        _spread_stat(a.frr, "max", ".4f"),
    ]


def _operating_point_table(ctx: ReportContext) -> list[str]:
    target_far = ctx.target_far
    levels: set[tuple[float, int]] = set()
    scored = ctx.scored
    rows = [
        _operating_point_row(i, a, target_far, levels, scored) for i, a in enumerate(ctx.analyses)
    ]
    headers = ["run", *(["score scale"] if scored else []), "threshold t", "global FAR"]
    headers += ["global TAR"]
    headers += ["FAR_c median", "FAR_c p95", "FAR_c max", f"FAR_c > {2 * target_far:g}"]
    headers += ["FRR_c median", "FRR_c p95", "FRR_c max"]
    note = (
        f"Threshold t: {ctx.threshold_mode()}"
        + (" (on each run's score scale)" if scored else "")
        + ". FAR_c = share of pairs with exactly one member in "
        f"class c accepted (s ≥ t); FRR_c = share of the class's own pairs rejected. "
        f"“FAR_c > {2 * target_far:g}” counts classes above twice the target FAR."
        + (f" [lo, hi]: {levels_text(levels)}." if levels else "")
    )
    return [
        "<h3>Operating point (per-class FAR_c / FRR_c at the deployment threshold)</h3>",
        '<div class="scroll">' + H.table(headers, rows) + "</div>",
        '<p class="note">' + H.esc(note) + "</p>",
    ]


def metrics_section(ctx: ReportContext) -> list[str]:
    """Metrics table (computed and caller values, intervals) and the operating-point table."""
    return _metrics_table(ctx) + _operating_point_table(ctx)


# --------------------------------------------------------------------------------------------
# 2. Accuracy vs. consistency, 3. FAR / FRR spread
# --------------------------------------------------------------------------------------------


def accuracy_consistency_section(ctx: ReportContext) -> list[str]:
    """Recall@1 against OPIS, one point per run (OPIS intervals as error bars)."""
    analyses = ctx.analyses
    fig = plot_accuracy_consistency(
        ctx.names,
        [a.metrics["recall_at_1"] for a in analyses],
        [a.metrics["opis"] for a in analyses],
        colors=ctx.colors,
        opis_intervals=[
            (float(a.intervals["opis"].lo), float(a.intervals["opis"].hi))
            if "opis" in a.intervals
            else None
            for a in analyses
        ],
    )
    name = "accuracy_consistency.png"
    caption = (
        "Recall@1 against OPIS, one point per run (upper left is best: accurate and "
        "threshold-consistent)."
    )
    if any("opis" in a.intervals for a in analyses):
        caption += " Horizontal bars: class-bootstrap interval of OPIS."
    png = ctx.figure_png(name, fig)
    figure = H.figure(png, alt="R@1 vs OPIS scatter over all runs", filename=name, caption=caption)
    return ['<div class="grid">' + figure + "</div>"]


def far_frr_spread_section(ctx: ReportContext) -> list[str]:
    """Per-class FAR_c / FRR_c spread of every run at its deployment threshold."""
    analyses = ctx.analyses
    fig = plot_far_frr_spread(
        ctx.names,
        [a.far for a in analyses],
        [a.frr for a in analyses],
        target_far=ctx.target_far,
        global_fars=[a.global_far for a in analyses],
        global_frrs=[1.0 - a.global_tar for a in analyses],
        colors=ctx.colors,
    )
    name = "far_frr_spread.png"
    caption = (
        "Each dot is one class; boxes span the quartiles, whiskers the 5th–95th "
        "percentile, the diamond is the global value. A threshold-consistent model keeps "
        "every class close to the target FAR (dashed red line)."
    )
    png = ctx.figure_png(name, fig)
    return [H.figure(png, alt="per-class FAR and FRR spread", filename=name, caption=caption)]


# --------------------------------------------------------------------------------------------
# DET curves and minDCF (runs with DET data)
# --------------------------------------------------------------------------------------------


def _det_row(i: int, a: RunAnalysis) -> list[str]:
    d = a.detection
    if d is None:
        value = "– (run given as an Evaluation)"
    elif d.streamed:
        value = f"{d.min_dcf:.4f} (≤ {d.num_bins:,} bins; exact ≥ {d.min_dcf_lower:.4f})"
    else:
        value = f"{d.min_dcf:.4f}"
    counts = ["–", "–"] if d is None else [f"{d.num_genuine:,}", f"{d.num_impostor:,}"]
    return [swatch(i, a.name), scale_label(a.score_scale), *counts, value]


def det_section(ctx: ReportContext) -> list[str]:
    """DET curves of the runs with DET data (probit axes) and their minDCF."""
    if not any(a.detection is not None for a in ctx.analyses):
        return []
    shown = [(i, a, d) for i, a in enumerate(ctx.analyses) if (d := a.detection) is not None]
    parts = []
    if shown:
        fig = plot_det_curves(
            [a.name for _, a, _ in shown],
            [d.fmr for _, _, d in shown],
            [d.fnmr for _, _, d in shown],
            points=[(a.global_far, 1.0 - a.global_tar) for _, a, _ in shown],
            colors=[ctx.colors[i] for i, _, _ in shown],
        )
        name = "det.png"
        caption = (
            "False reject rate against false accept rate over every threshold, on normal-deviate "
            "(probit) axes; the dot is the run's deployment threshold. Curves compare the order "
            "of the scores, so raw and normalised runs share the axes."
        )
        png = ctx.figure_png(name, fig)
        parts.append(H.figure(png, alt="DET curves of the runs", filename=name, caption=caption))
    headers = ["run", "score scale", "genuine pairs", "impostor pairs"]
    headers += [f"minDCF (P_target {DET_P_TARGET:g})"]
    note = (
        f"minDCF: min over thresholds t of (C_miss·P_target·FRR(t) + C_fa·(1 − P_target)·FAR(t)),"
        f" divided by min(C_miss·P_target, C_fa·(1 − P_target)); P_target = {DET_P_TARGET:g}, "
        "C_miss = C_fa = 1 (1 = no better than accepting or rejecting every pair; lower is "
        "better). Exact, over every pair of the run."
    )
    if any(a.detection is not None and a.detection.streamed for a in ctx.analyses):
        note += (
            f" Runs with more than {DET_MAX_PAIRS:,} pairs are streamed (no pair held): their "
            "curve points are exact rates at the inner edges of an exact score histogram of the "
            "stated number of bins, at the impostor-score quantiles of FARs 1e-7 to 1e-2 and "
            "at thresholds refining minDCF; their minDCF is the minimum over those thresholds "
            "(≥ the exact value, marked ≤ N bins), shown with a lower bound of the exact value."
        )
    rows = [_det_row(i, a) for i, a in enumerate(ctx.analyses)]
    parts += [H.table(headers, rows), f'<p class="note">{H.esc(note)}</p>']
    return parts


# --------------------------------------------------------------------------------------------
# Groups (runs with groups)
# --------------------------------------------------------------------------------------------


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


def _num(v: float, fmt: str) -> str:
    return format(v, fmt) if np.isfinite(v) else "n/a"


def _group_rate_rows(a: RunAnalysis, target_far: float) -> list[list[str]]:
    gop = a.groups
    assert gop is not None
    iv = gop.intervals
    ratio = a.group_far_log_ratio(target_far)
    left_out = set(a.groups_left_out())

    def rate(key: str, k: int, fmt: str) -> H.Cell:
        ci_text = interval_text(iv[key], fmt, k) if key in iv else None
        return with_ci(_num(float(getattr(gop, key)[k]), fmt), ci_text)

    rows: list[list[str]] = []
    for k, name in enumerate(str(g) for g in gop.groups.tolist()):
        r = float(ratio[k, k])
        rows.append(
            [
                name,
                f"{int(gop.num_genuine[k]):,}",
                f"{int(gop.num_impostor[k]):,}",
                rate("far", k, ".2e"),
                "n/a" if np.isnan(r) else f"{10.0**r:.3g}×",
                rate("frr", k, ".4f"),
                "left out (no genuine or impostor pairs)" if name in left_out else "",
            ]
        )
    return rows


def _group_summary_rows(a: RunAnalysis) -> list[list[str]]:
    gop = a.groups
    assert gop is not None
    s, iv = gop.summary, gop.intervals

    def summ(key: str, zero_key: str | None = None) -> H.Cell:
        v = float(s[key])
        if np.isinf(v):
            zeros = int(s.get(zero_key, 0)) if zero_key else 0
            text = f"∞ ({zeros} zero group{'s' if zeros != 1 else ''})" if zero_key else "∞"
        else:
            text = _num(v, ".4g")
        return with_ci(text, interval_text(iv[key], ".4g") if key in iv else None)

    rows: list[list[str]] = [
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
        gi_text = None if gi is None else interval_text(gi, lambda v: format_metric("opis", v))
        rows.append(["group OPIS", with_ci(format_metric("opis", a.group_opis), gi_text), ""])
    return rows


def _group_run(ctx: ReportContext, i: int, a: RunAnalysis) -> str:
    gop = a.groups
    assert gop is not None
    target_far = ctx.target_far
    names = [str(g) for g in gop.groups.tolist()]
    fname = f"group_far_{i + 1:02d}_{slug(a.name)}.png"
    fig = plot_group_far_heatmap(
        names, gop.far_matrix, target_far=target_far, title=a.name, threshold=gop.threshold
    )
    png = ctx.figure_png(fname, fig)
    headers = ["group", "genuine pairs", "impostor pairs", "FAR_g", "FAR_g / target", "FRR_g", ""]
    caption = (
        "Cross-group FAR at the deployment threshold; colour = log10(FAR / target "
        "FAR), centred at the target; each cell shows the FAR."
    )
    parts = [
        f'<section class="run"><h3>{swatch(i, a.name)}</h3>',
        f'<p class="meta">{len(names)} groups · threshold t = {gop.threshold:.4f} '
        f"({scale_label(gop.score_scale)}, accept when s ≥ t) · target FAR {target_far:g}</p>",
        H.figure(png, alt=f"cross-group FAR heatmap of {a.name}", filename=fname, caption=caption),
        '<div class="scroll">' + H.table(headers, _group_rate_rows(a, target_far)) + "</div>",
        H.table(["summary", "FAR", "FRR"], _group_summary_rows(a)),
    ]
    notes = []
    left_out = set(a.groups_left_out())
    if left_out:
        notes.append(
            f"Left out of the summaries ({len(left_out)}, no genuine or no impostor pairs): "
            + ", ".join(n for n in names if n in left_out)
            + "."
        )
    if gop.intervals:
        any_iv = next(iter(gop.intervals.values()))
        notes.append(f"[lo, hi]: {levels_text({(any_iv.ci, any_iv.n_boot)})}.")
    if notes:
        parts.append(f'<p class="note">{H.esc(" ".join(notes))}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def groups_section(ctx: ReportContext) -> list[str]:
    """Per run with groups: cross-group FAR heatmap, per-group rates, summaries."""
    if not any(a.groups is not None for a in ctx.analyses):
        return []
    runs = [_group_run(ctx, i, a) for i, a in enumerate(ctx.analyses) if a.groups is not None]
    return [_groups_intro(ctx.target_far), *runs]


# --------------------------------------------------------------------------------------------
# Calibration transfer (with transfer=)
# --------------------------------------------------------------------------------------------

_TRANSFER_METHODS = {
    "transfer_view": "tcm.metrics.transfer.transfer_view on the runs' count tables",
    "calibration_transfer": "tcm.metrics.calibration_transfer on the runs' embeddings",
    "given": "CalibrationTransfer results given by the caller",
}


def _transfer_row(row: TransferRow, scored: bool) -> list[str]:
    tr = row.result

    def iv(key: str, fmt: str) -> str | None:
        return interval_text(tr.intervals[key], fmt) if key in tr.intervals else None

    return [
        f"{row.source} → {row.target}",
        *([scale_label(tr.score_scale)] if scored else []),
        f"{tr.far:g}",
        f"{tr.threshold:.4f}",
        with_ci(f"{tr.target_far:.2e}", iv("target_far", ".2e")),
        with_ci(f"{tr.far_ratio:.3f}", iv("far_ratio", ".3f")),
        with_ci(
            f"{tr.source_tar:.4f} → {tr.target_tar:.4f} ({tr.tar_change:+.4f})",
            iv("target_tar", ".4f"),
        ),
        f"{tr.target_threshold:.4f}",
        f"{tr.threshold_offset:+.4f}",
        f"{tr.classes_over_2x:,} / {tr.num_target_classes:,}",
    ]


def transfer_section(ctx: ReportContext) -> list[str]:
    """The calibration-transfer table, one row per ``(source, target)``."""
    transfers = ctx.transfers
    if not transfers:
        return []
    levels = {(v.ci, v.n_boot) for row in transfers for v in row.result.intervals.values()}
    methods = sorted({r.method for r in transfers})
    scored = ctx.scored
    scale = "on the row's score scale" if scored else "cosine similarity"
    note = (
        "The threshold t of global FAR f is calibrated on the source and applied to the target "
        f"({scale}, accept when s ≥ t). FAR ratio = target FAR / f (1 = the calibration "
        "holds); TAR source → target at t (change); t_T = the threshold of FAR f on the target, "
        "offset = t − t_T (negative: t is too low for the target, more false accepts); classes "
        "over 2× = target classes with FAR_c > 2f. Computed with "
        + ", ".join(_TRANSFER_METHODS[m] for m in methods)
        + "."
    )
    if levels:
        note += f" [lo, hi]: {levels_text(levels)} of the target."
    headers = ["source → target", *(["score scale"] if scored else [])]
    headers += ["FAR target f", "threshold t (source)", "target FAR at t"]
    headers += ["FAR ratio", "TAR source → target", "target threshold t_T", "offset t − t_T"]
    headers += ["target classes over 2×"]
    return [
        '<div class="scroll">'
        + H.table(headers, [_transfer_row(r, scored) for r in transfers])
        + "</div>"
        + f'<p class="note">{H.esc(note)}</p>'
    ]


# --------------------------------------------------------------------------------------------
# Per run: utility curves, similarity distributions, worst classes
# --------------------------------------------------------------------------------------------


def _per_run(ctx: ReportContext, i: int, a: RunAnalysis) -> list[str]:
    color, far_range = ctx.colors[i], ctx.far_range
    u_name, s_name = (
        f"{kind}_{i + 1:02d}_{slug(a.name)}.png" for kind in ("utility", "similarity")
    )
    u_png = ctx.figure_png(
        u_name,
        plot_utility_curves(
            a.thresholds,
            a.utility,
            title=f"{a.name}: per-class utility",
            threshold=a.threshold,
            grid_global_far=a.grid_global_far,
            color=color,
            score_scale=a.score_scale,
        ),
    )
    s_png = ctx.figure_png(
        s_name,
        plot_similarity_distributions(
            a.hist_edges,
            a.hist_pos,
            a.hist_neg,
            title=f"{a.name}: pair {'similarities' if a.score_scale == 'cosine' else 'scores'}",
            threshold=a.threshold,
            color=color,
            score_scale=a.score_scale,
        ),
    )
    u_caption = (
        "Per-class utility U_c(t) over the calibration range: thin lines are "
        "classes, the black line their mean, the shaded band the 5%–95% range. Flat, "
        "tightly bunched curves mean one threshold suits every class."
    )
    scores = "cosine similarities" if a.score_scale == "cosine" else f"{a.score_scale} scores"
    s_caption = (
        f"Density of {scores} of positive (same-class) and negative "
        "pairs; pairs right of the dashed threshold are accepted."
    )
    u_alt, s_alt = (
        f"per-class utility curves of {a.name}",
        (f"positive and negative similarity distributions of {a.name}"),
    )
    parts = [
        f'<section class="run"><h3>{swatch(i, a.name)}</h3>',
        f'<p class="meta">{a.num_samples:,} samples, {a.num_classes:,} classes '
        f"({a.num_excluded:,} with a single sample excluded from per-class statistics); "
        f"calibration thresholds t ∈ [{a.thresholds[0]:.4f}, {a.thresholds[-1]:.4f}] "
        + ("" if a.score_scale == "cosine" else f"({H.esc(a.score_scale)}) ")
        + f"(global FAR {far_range[1]:g} → {far_range[0]:g}).</p>",
        '<div class="grid">'
        + H.figure(u_png, alt=u_alt, filename=u_name, caption=u_caption)
        + H.figure(s_png, alt=s_alt, filename=s_name, caption=s_caption)
        + "</div>",
    ]
    if a.far.size:
        worst = [
            [
                str(a.class_names[j]),
                f"{int(a.class_sizes[j]):,}",
                f"{a.far[j]:.2e}",
                f"{a.frr[j]:.4f}",
            ]
            for j in a.worst_classes()
        ]
        parts.append(H.table(["worst classes by FAR_c", "size", "FAR_c", "FRR_c"], worst))
    parts.append("</section>")
    return parts


def per_run_section(ctx: ReportContext) -> list[str]:
    """Per run: utility curves, similarity distributions and the worst classes by FAR_c."""
    return [p for i, a in enumerate(ctx.analyses) for p in _per_run(ctx, i, a)]


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

#: The report's sections in page order; a section returning ``[]`` is left out and the headings
#: of the sections after it are numbered on.
SECTIONS: tuple[Section, ...] = (
    Section("Metrics", metrics_section),
    Section("Accuracy vs. threshold consistency", accuracy_consistency_section),
    Section("Per-class FAR / FRR at the deployment threshold", far_frr_spread_section),
    Section("DET curves and minDCF", det_section),
    Section("Groups (data distributions) at the deployment threshold", groups_section),
    Section("Calibration transfer", transfer_section),
    Section("Per-run utility curves and similarity distributions", per_run_section),
)

_FOOTER = (
    "<footer>Generated by tcm.report. Threshold-Consistent Margin loss and OPIS: Zhang et "
    "al., ICLR 2024, “Threshold-Consistent Margin Loss for Open-World Deep Metric "
    "Learning”.</footer>"
)


def _header(ctx: ReportContext) -> list[str]:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lo, hi = ctx.far_range
    scores = "cosine similarity or the run's score scale" if ctx.scored else "cosine similarity"
    return [
        f"<h1>{H.esc(ctx.title)}</h1>",
        f'<p class="meta">{len(ctx.analyses)} run(s) · calibration range: global FAR '
        f"{lo:g} – {hi:g} · {H.esc(ctx.threshold_mode())} · {scores}, a pair is "
        f"accepted when s ≥ t · tcm {H.esc(tcm.__version__)} · {now}</p>",
    ]


def render_body(ctx: ReportContext, sections: Sequence[Section] = SECTIONS) -> str:
    """The page body: title and meta line, the numbered sections, the footer."""
    parts = _header(ctx)
    number = 0
    for section in sections:
        body = section.render(ctx)
        if body:
            number += 1
            parts += [f"<h2>{number}. {section.heading}</h2>", *body]
    parts.append(_FOOTER)
    return "\n".join(parts)
