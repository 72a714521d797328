"""Report figures (matplotlib, Agg canvas, no pyplot global state).

Every function takes plain NumPy arrays (cosine-similarity units, or a scorer's scores on the
``score_scale`` given; a pair is accepted when ``s >= t``) and returns a
:class:`matplotlib.figure.Figure`; :func:`figure_to_png` renders it.

Example:
    >>> import numpy as np
    >>> t = np.linspace(0.3, 0.6, 11)
    >>> u = np.clip(np.random.default_rng(0).normal(0.7, 0.1, size=(5, 11)), 0, 1)
    >>> png = figure_to_png(plot_utility_curves(t, u, title="demo"))
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

__all__ = [
    "far_log_ratio",
    "figure_to_png",
    "plot_accuracy_consistency",
    "plot_det_curves",
    "plot_far_frr_spread",
    "plot_group_far_heatmap",
    "plot_similarity_distributions",
    "plot_utility_curves",
    "run_color",
]

_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)
_DPI = 110
# boxplot(orientation=...) replaced vert=... in matplotlib 3.10.
_HORIZONTAL: dict[str, Any] = (
    {"orientation": "horizontal"}
    if tuple(int(p) for p in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    else {"vert": False}
)


def run_color(index: int) -> str:
    """Colour of the ``index``-th run (the same in every figure)."""
    return _PALETTE[index % len(_PALETTE)]


def _txt(s: str, max_len: int = 48) -> str:
    """Make user text safe for matplotlib: literal ``$`` (no mathtext) and bounded length."""
    if len(s) > max_len:
        s = s[: max_len - 1] + "…"
    return s.replace("$", r"\$")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_png(fig: Figure, dpi: int = _DPI) -> bytes:
    """Render ``fig`` with the Agg backend and return the PNG file bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def plot_utility_curves(
    thresholds: np.ndarray,
    utility: np.ndarray,
    *,
    title: str,
    threshold: float | None = None,
    grid_global_far: np.ndarray | None = None,
    color: str = _PALETTE[0],
    max_lines: int = 400,
    seed: int = 0,
    score_scale: str = "cosine",
) -> Figure:
    """Per-class utility curves ``U_c(t)`` over the calibration range.

    One thin line per class (at most ``max_lines`` randomly chosen classes are drawn; the mean and
    band always use all classes), the mean ``Ū(t)`` as a thick line and the 5 %-95 % band across
    classes. Utility ``U_c = 2·TAR_c·TRR_c / (TAR_c + TRR_c)`` is in ``[0, 1]``; a vertical dashed
    line marks the deployment ``threshold`` if it lies in the range.

    Args:
        thresholds: ``(K,)`` increasing cosine-similarity thresholds (or scores on
            ``score_scale``, named on the x axis).
        utility: ``(T, K)`` per-class utilities.
        grid_global_far: optional ``(K,)`` global FAR per threshold, shown on the top axis.
    """
    t = np.asarray(thresholds, dtype=np.float64)
    u = np.asarray(utility, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != t.shape[0]:
        raise ValueError(
            f"utility must have shape (T, {t.shape[0]}) to match thresholds; got {u.shape}"
        )
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    n_cls = u.shape[0]
    if n_cls > 0:
        idx = np.arange(n_cls)
        if n_cls > max_lines:
            idx = np.sort(np.random.default_rng(seed).choice(n_cls, size=max_lines, replace=False))
        segs = np.stack([np.broadcast_to(t, (idx.size, t.size)), u[idx]], axis=-1)
        alpha = float(np.clip(6.0 / np.sqrt(idx.size), 0.06, 0.6))
        ax.add_collection(
            LineCollection(list(segs), colors=color, linewidths=0.6, alpha=alpha, zorder=1)
        )
        lo, hi = np.percentile(u, [5, 95], axis=0)
        ax.fill_between(t, lo, hi, color=color, alpha=0.18, lw=0, zorder=2, label="5%–95% band")
        ax.plot(t, lo, color=color, lw=0.8, ls="--", zorder=3)
        ax.plot(t, hi, color=color, lw=0.8, ls="--", zorder=3)
        ax.plot(t, u.mean(axis=0), color="black", lw=2.2, zorder=4, label="mean over classes")
        ax.plot([], [], color=color, lw=0.8, label=f"one line per class ({idx.size} of {n_cls})")
    y_lo = 0.0
    if u.size:
        y_lo = max(0.0, np.floor((float(u.min()) - 0.02) * 10.0) / 10.0)
    if threshold is not None and t.size and t[0] <= threshold <= t[-1]:
        ax.axvline(threshold, color="#444444", ls=":", lw=1.5, zorder=5)
        right_half = t[-1] > t[0] and (threshold - t[0]) / (t[-1] - t[0]) > 0.5
        ax.annotate(
            f"deployment t = {threshold:.3f}",
            (threshold, y_lo),
            xytext=(-4 if right_half else 4, 4),
            textcoords="offset points",
            ha="right" if right_half else "left",
            fontsize=8,
            color="#444444",
        )
    if t.size:
        pad = 1e-6 if t[-1] == t[0] else 0.0
        ax.set_xlim(t[0] - pad, t[-1] + pad)
    ax.set_ylim(y_lo, 1.01)
    what = "cosine-similarity" if score_scale == "cosine" else _txt(score_scale)
    ax.set_xlabel(f"{what} threshold t  (pair accepted if s ≥ t)")
    ax.set_ylabel("per-class utility  U_c(t) = F1(TAR_c, TRR_c)")
    ax.set_title(_txt(title), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)
    if grid_global_far is not None and t.size >= 2 and t[-1] > t[0]:
        gf = np.asarray(grid_global_far, dtype=np.float64)
        top = ax.secondary_xaxis("top")
        pos = np.linspace(0, t.size - 1, 5).round().astype(int)
        top.set_xticks(t[pos], [f"{gf[i]:.2g}" for i in pos])
        top.set_xlabel("global FAR at t", fontsize=8)
        top.tick_params(labelsize=8)
    return fig


def _spread_row(
    ax: Any,
    v: np.ndarray,
    y: float,
    color: str,
    global_value: float,
    rng: np.random.Generator,
    max_points: int,
    first: bool,
) -> None:
    """One run's row of a spread panel: box, jittered class dots, the global-value diamond."""
    ax.boxplot(
        [v],
        positions=[y],
        **_HORIZONTAL,
        whis=(5, 95),
        widths=0.5,
        showfliers=False,
        patch_artist=True,
        boxprops={"facecolor": color, "alpha": 0.25, "edgecolor": color},
        medianprops={"color": color, "lw": 2},
        whiskerprops={"color": color},
        capprops={"color": color},
    )
    shown = v if v.size <= max_points else rng.choice(v, size=max_points, replace=False)
    jitter = rng.uniform(-0.18, 0.18, size=shown.size)
    ax.scatter(
        shown,
        y + jitter,
        s=6,
        color=color,
        alpha=float(np.clip(20 / np.sqrt(shown.size), 0.08, 0.7)),
        lw=0,
        zorder=3,
    )
    ax.scatter(
        [global_value],
        [y],
        marker="D",
        s=40,
        color="white",
        edgecolor="black",
        zorder=4,
        label="global value" if first else None,
    )


def plot_far_frr_spread(
    names: Sequence[str],
    fars: Sequence[np.ndarray],
    frrs: Sequence[np.ndarray],
    *,
    target_far: float,
    global_fars: Sequence[float],
    global_frrs: Sequence[float],
    colors: Sequence[str] | None = None,
    max_points: int = 2000,
    seed: int = 0,
) -> Figure:
    """Spread of per-class ``FAR_c(t)`` and ``FRR_c(t)`` at each run's deployment threshold.

    One row per run: a box (quartiles, whiskers at the 5th/95th percentile) with the classes as
    jittered dots (at most ``max_points`` drawn) and a diamond at the run's global value. The FAR
    panel uses a symmetric-log axis (linear below ``target_far / 10``, so ``FAR_c = 0`` is shown)
    and marks ``target_far`` and ``2 × target_far``. Both quantities are fractions in ``[0, 1]``.
    """
    n = len(names)
    if not (len(fars) == len(frrs) == len(global_fars) == len(global_frrs) == n) or n == 0:
        raise ValueError(
            f"need one FAR/FRR array and global value per run; got {n} names, {len(fars)} FAR, "
            f"{len(frrs)} FRR arrays"
        )
    cols = list(colors) if colors is not None else [run_color(i) for i in range(n)]
    fig = _new_figure(11.0, 1.5 + 0.55 * n)
    ax_far, ax_frr = fig.subplots(1, 2, sharey=True)
    rng = np.random.default_rng(seed)
    ypos = np.arange(n)[::-1].astype(np.float64)
    panels = [
        (ax_far, fars, global_fars, "per-class FAR_c(t)  (impostor pairs accepted)"),
        (ax_frr, frrs, global_frrs, "per-class FRR_c(t)  (genuine pairs rejected)"),
    ]
    for ax, values, globals_, xlabel in panels:
        for i in range(n):
            v = np.asarray(values[i], dtype=np.float64)
            if v.size:
                _spread_row(ax, v, ypos[i], cols[i], globals_[i], rng, max_points, i == 0)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    ax_far.set_xscale("symlog", linthresh=target_far / 10.0, linscale=0.5)
    ax_far.set_xlim(0.0, 1.0)
    ax_far.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax_far.axvline(target_far, color="#d62728", ls="--", lw=1.3, label=f"target FAR {target_far:g}")
    ax_far.axvline(2 * target_far, color="#d62728", ls=":", lw=1.0, label="2 × target")
    ax_frr.set_xlim(-0.02, 1.02)
    ax_far.set_yticks(ypos, [_txt(s, 28) for s in names])
    ax_far.set_ylim(-0.6, n - 0.4)
    ax_far.legend(loc="upper right", fontsize=8, framealpha=0.85)
    ax_frr.legend(loc="upper right", fontsize=8, framealpha=0.85)
    fig.suptitle("Per-class FAR / FRR spread at the deployment threshold", fontsize=11)
    return fig


def plot_similarity_distributions(
    edges: np.ndarray,
    pos_counts: np.ndarray,
    neg_counts: np.ndarray,
    *,
    title: str,
    threshold: float | None = None,
    color: str = _PALETTE[0],
    score_scale: str = "cosine",
) -> Figure:
    """Distributions of positive (same class) and negative pair cosine similarities (or scores
    on ``score_scale``).

    Each histogram is normalised to a density (area 1) because negative pairs vastly outnumber
    positive ones. ``edges`` is ``(B+1,)`` (in ``[-1, 1]`` for cosines); counts are ``(B,)``. A
    vertical line marks the deployment ``threshold`` (pairs to its right are accepted).
    """
    e = np.asarray(edges, dtype=np.float64)
    pos = np.asarray(pos_counts, dtype=np.float64)
    neg = np.asarray(neg_counts, dtype=np.float64)
    if e.ndim != 1 or pos.shape != (e.size - 1,) or neg.shape != (e.size - 1,):
        raise ValueError(
            f"histogram shapes disagree: edges {e.shape}, pos {pos.shape}, neg {neg.shape}"
        )
    width = np.diff(e)
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    for counts, label, col in ((neg, "negative pairs", "#7f7f7f"), (pos, "positive pairs", color)):
        total = counts.sum()
        if total <= 0:
            continue
        dens = counts / (total * width)
        ax.stairs(dens, e, fill=True, alpha=0.3, color=col)
        ax.stairs(dens, e, color=col, lw=1.4, label=f"{label} (n = {int(total):,})")
    nz = np.nonzero((pos + neg) > 0)[0]
    if nz.size:
        lo, hi = e[nz[0]], e[nz[-1] + 1]
        pad = 0.05 * max(hi - lo, 1e-3)
        x_lo, x_hi = (-1.0, 1.0) if score_scale == "cosine" else (e[0], e[-1])
        ax.set_xlim(max(x_lo, lo - pad), min(x_hi, hi + pad))
    if threshold is not None:
        ax.axvline(
            threshold, color="black", ls="--", lw=1.2, label=f"threshold t = {threshold:.3f}"
        )
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel(
        "cosine similarity s(i, j)" if score_scale == "cosine" else f"{_txt(score_scale)} s(i, j)"
    )
    ax.set_ylabel("density")
    ax.set_title(_txt(title), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.85)
    return fig


def plot_accuracy_consistency(
    names: Sequence[str],
    recall_at_1: Sequence[float],
    opis: Sequence[float],
    *,
    colors: Sequence[str] | None = None,
    opis_intervals: Sequence[tuple[float, float] | None] | None = None,
) -> Figure:
    """The accuracy-consistency plot: R@1 (y, higher = better) against OPIS (x, lower = better).

    One annotated point per run; the best corner is the upper left. R@1 is a fraction in
    ``[0, 1]``; OPIS is dimensionless (mean squared utility deviation). ``opis_intervals``
    (one ``(lo, hi)`` or ``None`` per run) are drawn as horizontal error bars (e.g. the
    class-bootstrap interval of OPIS).
    """
    n = len(names)
    if not (len(recall_at_1) == len(opis) == n) or n == 0:
        raise ValueError(
            f"need one R@1 and one OPIS value per run; got {n} names, {len(recall_at_1)} R@1, "
            f"{len(opis)} OPIS values"
        )
    if opis_intervals is not None and len(opis_intervals) != n:
        raise ValueError(f"need one OPIS interval (or None) per run; got {len(opis_intervals)}")
    cols = list(colors) if colors is not None else [run_color(i) for i in range(n)]
    x = np.asarray(opis, dtype=np.float64)
    y = np.asarray(recall_at_1, dtype=np.float64)
    fig = _new_figure(6.4, 4.6)
    ax = fig.add_subplot()
    x_min, x_max = float(x.min()), float(x.max())
    for i, iv in enumerate(opis_intervals or ()):
        if iv is None or not (np.isfinite(iv[0]) and np.isfinite(iv[1])):
            continue
        lo, hi = float(iv[0]), float(iv[1])
        err = np.array([[max(x[i] - lo, 0.0)], [max(hi - x[i], 0.0)]])
        ax.errorbar(
            [x[i]],
            [y[i]],
            xerr=err,
            fmt="none",
            ecolor=cols[i],
            elinewidth=1.6,
            capsize=4,
            zorder=2,
        )
        x_min, x_max = min(x_min, lo), max(x_max, hi)
    ax.scatter(x, y, s=70, c=cols, edgecolor="black", zorder=3)
    for i in range(n):
        ax.annotate(
            _txt(names[i], 32),
            (x[i], y[i]),
            xytext=(7, 5),
            textcoords="offset points",
            fontsize=9,
        )
    xr = (x_max - x_min) or max(x_max, 1e-4)
    yr = float(y.max() - y.min()) or 0.05
    x_hi = x_max + 0.6 * xr
    x_lo = x_min - 0.25 * xr
    if x_lo < 0.0:  # OPIS >= 0: keep a small margin left of 0 so markers are not clipped
        x_lo = -0.04 * x_hi
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(max(0.0, float(y.min()) - 0.3 * yr), min(1.02, float(y.max()) + 0.3 * yr))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    ax.set_xlabel("OPIS  (threshold inconsistency, lower = better)")
    ax.set_ylabel("Recall@1  (higher = better)")
    ax.set_title("Accuracy vs. threshold consistency (best: upper left)", fontsize=11)
    ax.grid(alpha=0.3)
    return fig


def far_log_ratio(far: np.ndarray, target_far: float) -> np.ndarray:
    """``log10(FAR / target_far)`` elementwise: 0 at the target, +1 at ten times it; ``-inf``
    where FAR is 0 and NaN where FAR is undefined (no impostor pairs).

    Example:
        >>> far_log_ratio(np.array([1e-2, 1e-3, 0.0, np.nan]), 1e-3).tolist()
        [1.0, 0.0, -inf, nan]
    """
    f = np.asarray(far, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.log10(f / float(target_far)))


#: Colour range of the group FAR heatmap: ``|log10(FAR / target)|`` up to this many decades
#: (or the largest finite value, if larger, capped at :data:`_HEATMAP_MAX_DECADES`).
_HEATMAP_MIN_DECADES = 1.0
_HEATMAP_MAX_DECADES = 4.0


def plot_group_far_heatmap(
    groups: Sequence[str],
    far_matrix: np.ndarray,
    *,
    target_far: float,
    title: str,
    threshold: float | None = None,
) -> Figure:
    """NIST FRVT report-card style heatmap of the ``(G, G)`` cross-group FAR matrix.

    Cell ``(g, h)`` is ``FAR_{g,h}(t)``: the share of impostor pairs (different labels) with one
    sample in group ``g`` and one in ``h`` accepted at the deployment threshold ``t`` (cosine
    similarity, ``s >= t``); the diagonal holds the within-group ``FAR_g``. Colour is
    ``log10(FAR / target_far)`` (:func:`far_log_ratio`) on a diverging colormap centred at 0
    (white = on target, red = more false accepts, blue = fewer), symmetric, at least
    ±1 decade; each cell is annotated with its FAR. ``FAR = 0`` cells take the bluest colour
    and read ``0``; NaN cells (no impostor pairs) are grey and read ``n/a``. The image data is
    the log ratio itself (NaN masked, ``-inf`` shown at the lower end of the range).
    """
    names = [str(g) for g in groups]
    f = np.asarray(far_matrix, dtype=np.float64)
    g = len(names)
    if f.shape != (g, g) or g == 0:
        raise ValueError(f"far_matrix must have shape ({g}, {g}) for {g} groups; got {f.shape}")
    ratio = far_log_ratio(f, target_far)
    finite = ratio[np.isfinite(ratio)]
    lim = _HEATMAP_MIN_DECADES
    if finite.size:
        lim = min(max(lim, float(np.ceil(np.abs(finite).max() * 2.0) / 2.0)), _HEATMAP_MAX_DECADES)
    shown = np.where(np.isneginf(ratio), -lim, ratio)
    data = np.ma.masked_invalid(shown)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#c8c8c8")
    norm = Normalize(vmin=-lim, vmax=lim)
    side = float(np.clip(1.6 + 0.75 * g, 4.4, 14.0))
    fig = _new_figure(side + 1.6, side)
    ax = fig.add_subplot()
    im = ax.imshow(data, cmap=cmap, norm=norm, interpolation="nearest", aspect="equal")
    font = float(np.clip(11.0 - 0.35 * g, 5.0, 9.0))
    for r in range(g):
        for c in range(g):
            v = f[r, c]
            if np.isnan(v):
                text, dark = "n/a", False
            else:
                text = "0" if v == 0 else f"{v:.1e}"
                dark = abs(float(np.clip(shown[r, c], -lim, lim))) > 0.6 * lim
            ax.text(
                c,
                r,
                text,
                ha="center",
                va="center",
                fontsize=font,
                color="white" if dark else "black",
                fontweight="bold" if r == c else "normal",
            )
    labels = [_txt(n, 22) for n in names]
    ax.set_xticks(
        np.arange(g), labels, rotation=45 if g > 3 else 0, ha="right" if g > 3 else "center"
    )
    ax.set_yticks(np.arange(g), labels)
    ax.set_xlabel("group h (other sample of the impostor pair)")
    ax.set_ylabel("group g")
    t_txt = "" if threshold is None else f" at t = {threshold:.3f}"
    ax.set_title(_txt(f"{title}: cross-group FAR{t_txt}", 64), fontsize=10)
    cbar = fig.colorbar(im, ax=ax, shrink=0.85, extend="both")
    ticks = np.arange(-np.floor(lim), np.floor(lim) + 1.0)
    cbar.set_ticks(list(ticks), labels=[f"{10.0**k:g}×" for k in ticks])
    cbar.set_label(f"FAR / target FAR {target_far:g}  (log10 scale)", fontsize=8)
    return fig


#: Tick values of the DET plot's probit axes (error rates as fractions).
_DET_TICKS = (1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8)


def plot_det_curves(
    names: Sequence[str],
    fmrs: Sequence[np.ndarray],
    fnmrs: Sequence[np.ndarray],
    *,
    points: Sequence[tuple[float, float]] | None = None,
    colors: Sequence[str] | None = None,
) -> Figure:
    """DET curves on probit (normal-deviate) axes: false match rate (FAR, x) against false
    non-match rate (FRR, y), one line per run (rates in ``[0, 1]``, any score scale: only the
    order of the scores matters). ``points``: one ``(FAR, FRR)`` per run, e.g. the deployment
    operating point, drawn as a dot. Rates are clipped to ``[lo, 1 - lo]`` with ``lo`` half the
    smallest non-zero rate shown (at least ``1e-6``), so 0 stays on the plot's edge.
    """
    from scipy.special import ndtri

    n = len(names)
    if not (len(fmrs) == len(fnmrs) == n) or n == 0:
        raise ValueError(
            f"need one FMR and one FNMR array per run; got {n} names, {len(fmrs)} FMR, "
            f"{len(fnmrs)} FNMR arrays"
        )
    cols = list(colors) if colors is not None else [run_color(i) for i in range(n)]
    rates = [np.asarray(a, dtype=np.float64) for a in (*fmrs, *fnmrs)]
    nonzero = [float(r[r > 0].min()) for r in rates if np.any(r > 0)]
    lo = max(1e-6, 0.5 * min(nonzero, default=1e-3))

    def probit(v: Any) -> np.ndarray:
        return np.asarray(ndtri(np.clip(np.asarray(v, dtype=np.float64), lo, 1.0 - lo)))

    fig = _new_figure(6.4, 5.0)
    ax = fig.add_subplot()
    for i in range(n):
        ax.plot(probit(fmrs[i]), probit(fnmrs[i]), color=cols[i], lw=1.6, label=_txt(names[i]))
        if points is not None:
            px, py = probit(points[i])
            ax.scatter([px], [py], s=36, color=cols[i], edgecolor="black", zorder=3)
    ticks = [t for t in _DET_TICKS if lo <= t <= 1.0 - lo]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(list(probit(ticks)), labels=[f"{100 * t:g}%" for t in ticks])
    ax.set_xlim(float(probit(lo)), float(probit(0.6)))
    ax.set_ylim(float(probit(lo)), float(probit(0.6)))
    ax.set_xlabel("false accept rate FAR (impostor pairs accepted, probit scale)")
    ax.set_ylabel("false reject rate FRR (genuine pairs rejected, probit scale)")
    ax.set_title("DET curves (lower left is better)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.85)
    return fig
