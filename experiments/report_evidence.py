"""Section 0 of docs/results.md: the evidence protocol (experiments/evidence.py), from the raw
JSON of ``python experiments/run.py evidence`` via ``experiments/summary.py``; plots under
docs/results/."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from report_common import LOSS_LABEL, pyplot
from report_common import table as _table

LOSS_ORDER = ("smooth_ap", "recall_surrogate", "multi_similarity", "proxy_anchor")
BENCH_LABEL = {"glyphs": "glyphs", "emoji": "emoji", "cjk_glyphs": "CJK glyphs"}
BENCH_ORDER = ("glyphs", "emoji", "cjk_glyphs")

SHIFT_LABEL = {
    "cjk_glyphs": "print designs (Noto Sans/Serif, IPA ×4, UMing, WenQuanYi) -> brush and "
    "handwriting designs (UKai, Kouzan ×3, Seto)",
}

# figure key, column header, significant digits, lower is better?
COLUMNS = [
    ("recall_at_1", "R@1", 3, False),
    ("map_at_r", "MAP@R", 3, False),
    ("opis", "OPIS", 3, True),
    ("epsilon_opis_5", "ε-OPIS 5%", 2, True),
    ("classes_far_over_2x", "classes FAR > 2×", 3, True),
    ("transfer_far_ratio", "shift FAR / target", 2, True),
    ("transfer_tar_change", "shift ΔTAR", 2, False),
    ("group_garbe", "GARBE", 2, True),
]


def _num(x: float, digits: int) -> str:
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}" if abs(x) < 0.1 else f"{x:.{digits + 1}g}"


def cell(fig: dict[str, Any] | None, digits: int) -> str:
    """``mean [lo, hi]`` (seed t-interval) of a summary figure."""
    if fig is None:
        return "–"
    s = _num(fig["mean"], digits)
    if fig.get("ci95"):
        lo, hi = fig["ci95"]
        s += f" [{_num(lo, digits)}, {_num(hi, digits)}]"
    return s


def verdict(d: dict[str, Any] | None, lower_better: bool) -> str:
    """Sign of a paired difference whose 95 % interval excludes 0 (else "n.s.")."""
    if d is None or not d.get("ci95"):
        return "?"
    lo, hi = d["ci95"]
    if lo > 0 or hi < 0:
        better = (hi < 0) if lower_better else (lo > 0)
        return "better" if better else "worse"
    return "n.s."


DEFAULT_BACKBONE = "small_cnn"
BACKBONE_LABEL = {"efficientnet_lite0": "EfficientNet-Lite0 (ImageNet, 64 px)"}

# (backbone, base loss) in the order of the headline and the README table
RECIPES = [(DEFAULT_BACKBONE, k) for k in LOSS_ORDER]
RECIPES += [(b, k) for b in BACKBONE_LABEL for k in LOSS_ORDER]


def is_default(model: dict[str, Any]) -> bool:
    """True for the main grid's models (summary row or run tags): small CNN, no cross-batch
    memory, default m+ 0.9, default schedule; the memory, margin, backbone and schedule rows
    are variations of them."""
    return (
        not model.get("memory")
        and model.get("margin_pos") in (None, 0.9)
        and model.get("backbone", DEFAULT_BACKBONE) == DEFAULT_BACKBONE
        and not model.get("steps")
    )


def _label(row: dict[str, Any]) -> str:
    s = str(LOSS_LABEL.get(row["loss"], row["loss"]))
    backbone = row.get("backbone", DEFAULT_BACKBONE)
    if backbone != DEFAULT_BACKBONE:
        s = f"{BACKBONE_LABEL.get(backbone, backbone)}: {s}"
    if row.get("steps"):
        s += f" ({row['steps']:,} steps)"
    if row["tcm"]:
        s += " + TCM"
        if row.get("margin_pos") not in (None, 0.9):
            s += f" (m+ {row['margin_pos']})"
    if row.get("memory"):
        s += f" + memory {row['memory']}"
        if row.get("memory_warmup"):
            s += f" (from step {row['memory_warmup']})"
    return s


def _sort_key(row: dict[str, Any]) -> tuple[Any, ...]:
    loss = LOSS_ORDER.index(row["loss"]) if row["loss"] in LOSS_ORDER else 99
    backbone = row.get("backbone", DEFAULT_BACKBONE) != DEFAULT_BACKBONE
    memory = (row.get("memory") or 0, row.get("memory_warmup") or 0)
    return (backbone, memory, loss, row.get("steps") or 0, row.get("margin_pos") or 0, row["tcm"])


def benchmark_tables(rows: list[dict[str, Any]], bench: str) -> str:
    mine = sorted((r for r in rows if r["dataset"] == bench), key=_sort_key)
    if not mine:
        return "_no finished runs_\n"
    shift = SHIFT_LABEL.get(bench) or next((r["shift"] for r in mine if r.get("shift")), "?")
    main = [r for r in mine if r.get("margin_pos") in (None, 0.9)]
    margins = [r for r in mine if r.get("margin_pos") not in (None, 0.9)]
    header = ["model", "seeds"] + [c[1] for c in COLUMNS]
    body = [
        [_label(r), str(len(r["seeds"]))] + [cell(r.get(k), d) for k, _, d, _ in COLUMNS]
        for r in main
    ]
    out = [
        f"Distribution shift: {shift}. Mean over seeds [95 % t-interval over seeds].",
        "",
        _table(header, body),
        "",
    ]
    diff_cols = [c for c in COLUMNS if c[0] != "map_at_r"]
    dheader = ["TCM − base (paired by seed)", "seeds"] + [c[1] for c in diff_cols]
    drows = []
    for r in [*main, *margins]:
        if not r["tcm"] or "vs_base" not in r:
            continue
        vb = r["vs_base"]
        seeds = max((len(v["seeds"]) for v in vb.values()), default=0)
        drows.append(
            [_label(r), str(seeds)]
            + [
                (cell(vb.get(k), d) + f" {verdict(vb.get(k), low)}") if vb.get(k) else "–"
                for k, _, d, low in diff_cols
            ]
        )
    if drows:
        out += [
            "Paired differences TCM − base [95 % t-interval]; *better* / *worse*: the interval "
            "excludes 0, *n.s.*: it does not.",
            "",
            _table(dheader, drows),
            "",
        ]
    bcols = [
        ("recall_at_1", "R@1", 3),
        ("opis", "OPIS", 2),
        ("transfer_far_ratio", "shift FAR / target", 2),
        ("group_garbe", "GARBE", 2),
    ]
    brows = []
    for r in main:
        cells = []
        for k, _, d in bcols:
            b = (r.get(k) or {}).get("bootstrap_ci95")
            cells.append(f"[{_num(b[0], d)}, {_num(b[1], d)}]" if b else "–")
        brows.append([_label(r), *cells])
    out += [
        "Class-bootstrap 95 % intervals (1,000 resamples of the test classes, per run; mean of "
        "the bounds over seeds): the uncertainty from *which* classes were drawn, at a fixed "
        "model.",
        "",
        _table(["model", *(c[1] for c in bcols)], brows),
        "",
    ]
    return "\n".join(out)


def main_row(
    rows: list[dict[str, Any]],
    bench: str,
    loss: str,
    tcm: bool,
    backbone: str = DEFAULT_BACKBONE,
) -> dict[str, Any] | None:
    """The summary row of (bench, loss, TCM) of the main grid (see :func:`is_default`), or of
    the same recipe on another ``backbone``."""
    return next(
        (
            r
            for r in rows
            if r["dataset"] == bench
            and r["loss"] == loss
            and r["tcm"] == tcm
            and is_default({**r, "backbone": DEFAULT_BACKBONE})
            and r.get("backbone", DEFAULT_BACKBONE) == backbone
        ),
        None,
    )


def headline(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (benchmark, loss): what TCM did, significant changes only."""
    out = []
    for bench in BENCH_ORDER:
        for backbone, loss in RECIPES:
            r = main_row(rows, bench, loss, True, backbone)
            if r is None or "vs_base" not in r:
                continue
            vb = r["vs_base"]
            parts = []
            for key, name, digits, low in COLUMNS:
                if key in ("map_at_r", "transfer_tar_change", "classes_far_over_2x"):
                    continue
                d = vb.get(key)
                if d is None:
                    continue
                parts.append(f"{name} {d['mean']:+.{digits}g} ({verdict(d, low)})")
            n = max(len(v["seeds"]) for v in vb.values())
            out.append(
                f"- **{BENCH_LABEL[bench]}, {_label({**r, 'tcm': False})}** ({n} seed pairs): "
                + ", ".join(parts)
            )
    return out


def _marker(tags: dict[str, Any]) -> str:
    """Scatter marker of one run: x / o (small CNN base / + TCM), v / ^ (other backbone)."""
    if tags.get("backbone", DEFAULT_BACKBONE) != DEFAULT_BACKBONE:
        return "^" if tags["tcm"] else "v"
    return "o" if tags["tcm"] else "x"


def plots(recs: list[dict[str, Any]], rows: list[dict[str, Any]], folder: Path) -> list[str]:
    """Pareto (R@1 vs OPIS), transfer FAR ratio bars, per-class FAR ECDFs; returns md lines."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    benches = [b for b in BENCH_ORDER if any(r["tags"]["dataset"] == b for r in recs)]
    if not benches:
        return []
    colors = dict(zip(LOSS_ORDER, ("C0", "C1", "C2", "C3"), strict=True))
    n = len(benches)

    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, b in zip(axes[0], benches, strict=True):
        for r in recs:
            t = r["tags"]
            if t["dataset"] != b:
                continue
            ax.scatter(
                r["metrics"]["recall_at_1"],
                r["metrics"]["opis"],
                c=colors.get(t["loss"], "k"),
                marker=_marker(t),
                s=18,
                alpha=0.8,
            )
        ax.set_title(BENCH_LABEL[b])
        ax.set_xlabel("R@1 (test classes)")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("OPIS (lower is more consistent)")
    handles = [
        plt.Line2D([], [], color=colors[k], marker="s", ls="", label=LOSS_LABEL[k])
        for k in LOSS_ORDER
    ]
    handles += [
        plt.Line2D([], [], color="k", marker="x", ls="", label="base"),
        plt.Line2D([], [], color="k", marker="o", ls="", label="+ TCM"),
    ]
    if any(
        t.get("backbone", DEFAULT_BACKBONE) != DEFAULT_BACKBONE for t in (r["tags"] for r in recs)
    ):
        handles += [
            plt.Line2D([], [], color="k", marker=m, ls="", label=f"EfficientNet-Lite0 {w}")
            for m, w in (("v", "base"), ("^", "+ TCM"))
        ]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(folder / "evidence_pareto.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, b in zip(axes[0], benches, strict=True):
        xs = np.arange(len(LOSS_ORDER))
        for j, tcm in enumerate((False, True)):
            means, errs = [], []
            for loss in LOSS_ORDER:
                row = main_row(rows, b, loss, tcm)
                f = (row or {}).get("transfer_far_ratio")
                means.append(f["mean"] if f else np.nan)
                lo_hi = f.get("ci95") if f else None
                errs.append(
                    (f["mean"] - lo_hi[0], lo_hi[1] - f["mean"]) if f and lo_hi else (0.0, 0.0)
                )
            e = np.array(errs).T
            ax.bar(xs + (j - 0.5) * 0.38, means, 0.38, yerr=e, label="+ TCM" if tcm else "base")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(xs, [LOSS_LABEL[k] for k in LOSS_ORDER], rotation=20, fontsize=8)
        ax.set_title(BENCH_LABEL[b])
    axes[0][0].set_ylabel("FAR on shifted data / target FAR")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "evidence_transfer.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, b in zip(axes[0], benches, strict=True):
        for tcm, ls in ((False, "--"), (True, "-")):
            for loss in LOSS_ORDER:
                far = [
                    v
                    for r in recs
                    if r["tags"]["dataset"] == b
                    and r["tags"]["loss"] == loss
                    and r["tags"]["tcm"] == tcm
                    and is_default(r["tags"])
                    for v in r["deployment"]["far_per_class"]
                ]
                if not far:
                    continue
                x = np.sort(np.maximum(np.asarray(far), 1e-6))
                ax.step(x, np.arange(1, x.size + 1) / x.size, ls=ls, color=colors[loss], lw=1)
        ax.axvline(2e-3, color="k", lw=0.7, ls=":")
        ax.set_xscale("log")
        ax.set_title(BENCH_LABEL[b])
        ax.set_xlabel("per-class FAR at the FAR-1e-3 threshold")
    axes[0][0].set_ylabel("fraction of evaluation classes")
    axes[0][-1].legend(
        handles=[
            *handles[:4],
            plt.Line2D([], [], color="k", ls="--", label="base"),
            plt.Line2D([], [], color="k", ls="-", label="+ TCM"),
        ],
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(folder / "evidence_far_ecdf.png", dpi=110)
    plt.close(fig)
    return [
        "![R@1 vs OPIS, every evidence run](results/evidence_pareto.png)",
        "",
        "![FAR on the shifted distribution over the target FAR](results/evidence_transfer.png)",
        "",
        "![Per-class FAR ECDF at the deployment threshold](results/evidence_far_ecdf.png)",
        "",
        "Per-class FAR of the evaluation classes at the threshold calibrated for a global FAR of "
        "1e-3 on the calibration classes, all seeds pooled (a class with FAR 0 is drawn at "
        "1e-6; the dotted line is 2× the target).",
        "",
    ]


def section(
    plot_folder: Path, recs: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> tuple[str, list[str]]:
    """(markdown of section 0, headline lines) from the raw records and their summary rows."""
    if not recs:
        return "_no evidence runs yet: `python experiments/run.py evidence`_\n", []
    machines = sorted({r.get("machine", "?") for r in recs})
    threads = sorted({r.get("threads", 0) for r in recs})
    cpu_h = sum(float(r.get("wall_s", 0.0)) * int(r.get("threads", 1)) for r in recs) / 3600
    parts = [
        f"{len(recs)} runs on {', '.join(machines)} ({'/'.join(map(str, threads))} torch "
        f"thread(s) per run, 2 runs at a time); {cpu_h:.1f} CPU-hours of training "
        "(thread-seconds; the analysis of each run adds 10-60 s more).",
        "",
        *plots(recs, rows, plot_folder),
    ]
    for b in BENCH_ORDER:
        parts += [
            f"### 0.{BENCH_ORDER.index(b) + 1} {BENCH_LABEL[b]}",
            "",
            benchmark_tables(rows, b),
        ]
    return "\n".join(parts), headline(rows)


README_START = "<!-- evidence-table:start (written by experiments/report.py) -->"
README_END = "<!-- evidence-table:end -->"


def readme_table(rows: list[dict[str, Any]]) -> str:
    """The README's headline: per benchmark and base loss, base figures and TCM - base."""
    header = [
        "benchmark",
        "base loss",
        "seed pairs",
        "R@1 base",
        "R@1 TCM − base",
        "OPIS base",
        "OPIS TCM − base",
        "shift FAR/target base → TCM",
    ]
    body = []
    for bench in BENCH_ORDER:
        for backbone, loss in RECIPES:
            base = main_row(rows, bench, loss, False, backbone)
            tcm = main_row(rows, bench, loss, True, backbone)
            if base is None or tcm is None or "vs_base" not in tcm:
                continue
            vb = tcm["vs_base"]
            r1, op = vb.get("recall_at_1"), vb.get("opis")
            fr_b, fr_t = base.get("transfer_far_ratio"), tcm.get("transfer_far_ratio")
            body.append(
                [
                    BENCH_LABEL[bench],
                    _label(base),
                    str(len(r1["seeds"]) if r1 else 0),
                    cell(base.get("recall_at_1"), 3),
                    f"{cell(r1, 2)} {verdict(r1, False)}",
                    cell(base.get("opis"), 2),
                    f"{cell(op, 2)} {verdict(op, True)}",
                    f"{_num(fr_b['mean'], 2) if fr_b else '–'} → "
                    f"{_num(fr_t['mean'], 2) if fr_t else '–'}",
                ]
            )
    return _table(header, body)


def update_readme(readme: Path, rows: list[dict[str, Any]]) -> bool:
    """Replace the text between the README's evidence markers; False when they are absent."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{readme_table(rows)}\n{README_END}{tail}")
    return True
