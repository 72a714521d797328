#!/usr/bin/env python
"""Section 0b of docs/results.md: the normalisers experiment (experiments/normalisers.py), from
the raw JSON of ``python experiments/run.py normalisers`` via ``experiments/summary.py``; plots
under docs/results/.

    python experiments/report_normalisers.py   # summary.json + the section between its markers

``experiments/report.py`` writes the same section when it regenerates the whole file; this
script rewrites only the text between :data:`START` and :data:`END` (and summary.json). The
reading of the results is kept in ``experiments/notes_normalisers.md`` and included verbatim.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from report_common import LOSS_LABEL, pyplot
from report_common import table as _table
from report_evidence import BENCH_LABEL, BENCH_ORDER, cell, verdict

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PLOTS = DOCS / "results"
NOTES = ROOT / "experiments" / "notes_normalisers.md"
START = "<!-- normalisers:start (written by experiments/report_normalisers.py) -->"
END = "<!-- normalisers:end -->"

SCORER_ORDER = ("cosine", "snorm", "asnorm", "fsn", "faircal", "gst_oracle")
SCORER_LABEL = {
    "cosine": "cosine",
    "snorm": "S-norm",
    "asnorm": "AS-norm",
    "fsn": "FSN",
    "faircal": "FairCal",
    "gst_oracle": "group thresholds (oracle)",
}
LOSS_ORDER = ("smooth_ap", "recall_surrogate", "multi_similarity")

# figure key, header, significant digits, lower is better?
COLUMNS = [
    ("recall_at_1", "R@1", 3, False),
    ("opis", "OPIS", 2, True),
    ("epsilon_opis_5", "ε-OPIS 5%", 2, True),
    ("classes_far_over_2x", "classes FAR > 2×", 2, True),
    ("transfer_far_ratio", "shift FAR / target", 2, True),
    ("transfer_tar_change", "shift ΔTAR", 2, False),
    ("group_garbe", "GARBE", 2, True),
    ("group_werm", "WERM", 2, True),
    ("min_dcf", "minDCF", 3, True),
]


def _model(row: dict[str, Any]) -> str:
    return f"{LOSS_LABEL.get(row['loss'], row['loss'])}{' + TCM' if row['tcm'] else ''}"


def _sort_key(row: dict[str, Any]) -> tuple[Any, ...]:
    loss = LOSS_ORDER.index(row["loss"]) if row["loss"] in LOSS_ORDER else 99
    scorer = SCORER_ORDER.index(row["scorer"]) if row["scorer"] in SCORER_ORDER else 99
    return (loss, row["tcm"], scorer)


def _diff_table(rows: list[dict[str, Any]], field: str, title: str) -> list[str]:
    cols = [c for c in COLUMNS if c[0] != "epsilon_opis_5"]
    body = []
    for r in rows:
        d = r.get(field)
        if not d:
            continue
        seeds = max((len(v["seeds"]) for v in d.values()), default=0)
        body.append(
            [_model(r), SCORER_LABEL.get(r["scorer"], r["scorer"]), str(seeds)]
            + [
                f"{cell(d.get(k), dg)} {verdict(d.get(k), low)}" if d.get(k) else "–"
                for k, _, dg, low in cols
            ]
        )
    if not body:
        return []
    return [title, "", _table(["model", "scorer", "seed pairs", *(c[1] for c in cols)], body), ""]


def benchmark_tables(rows: list[dict[str, Any]], bench: str) -> str:
    """The tables of one benchmark: figures, differences against cosine on the base model,
    and TCM + scorer against base + scorer."""
    mine = sorted((r for r in rows if r["dataset"] == bench), key=_sort_key)
    if not mine:
        return "_no analysed runs yet_\n"
    header = ["model", "scorer", "seeds", *(c[1] for c in COLUMNS), "threshold (scale)"]
    body = []
    for r in mine:
        thr = r.get("deployment_threshold")
        scale = r.get("score_scale") or ""
        body.append(
            [_model(r), SCORER_LABEL.get(r["scorer"], r["scorer"]), str(len(r["seeds"]))]
            + [cell(r.get(k), d) for k, _, d, _ in COLUMNS]
            + [f"{thr['mean']:.4g}{f' ({scale})' if scale else ''}" if thr else "–"]
        )
    out = [
        f"Distribution shift: {mine[0].get('shift') or '?'}. Evaluation half only; mean over "
        "seeds [95 % t-interval over seeds].",
        "",
        _table(header, body),
        "",
    ]
    out += _diff_table(
        mine,
        "vs_cosine_base",
        "Seed-paired differences against **cosine on the base model** [95 % t-interval]; "
        "*better* / *worse*: the interval excludes 0, *n.s.*: it does not.",
    )
    out += _diff_table(
        [r for r in mine if r["tcm"]],
        "vs_base",
        "Does TCM still add something after normalisation? **base + TCM + scorer − base + "
        "scorer**, paired by seed [95 % t-interval].",
    )
    return "\n".join(out)


def needs_table(rows: list[dict[str, Any]], recs: list[dict[str, Any]]) -> str:
    """What each scorer needs at deployment, and the analysis time per run and benchmark."""
    benches = [b for b in BENCH_ORDER if any(r["dataset"] == b for r in rows)]
    body = []
    for s in SCORER_ORDER:
        mine = [r for r in rows if r["scorer"] == s]
        if not mine:
            continue
        n = mine[0]["needs"]
        samples = {b: [r["needs"]["samples"] for r in mine if r["dataset"] == b] for b in benches}
        times = {b: [r["analysis_s"] for r in mine if r["dataset"] == b] for b in benches}
        body.append(
            [
                SCORER_LABEL[s],
                "yes" if n.get("labels") else "no",
                "yes" if n.get("groups") else "no",
                ", ".join(f"{BENCH_LABEL[b]} {np.mean(v):.0f}" for b, v in samples.items() if v),
                str(n.get("kept", "")),
                ", ".join(f"{BENCH_LABEL[b]} {np.mean(v):.1f}" for b, v in times.items() if v),
            ]
        )
    total = {b: [r["analysis_s"] for r in recs if r["tags"]["dataset"] == b] for b in benches}
    return "\n".join(
        [
            _table(
                [
                    "scorer",
                    "labels",
                    "groups at deployment",
                    "samples fitted on (mean)",
                    "kept at deployment",
                    "seconds per run (fit + figures)",
                ],
                body,
            ),
            "",
            "Whole analysis per run (six scorers, "
            + (f"{recs[0]['n_boot']:,}" if recs else "?")
            + " class-bootstrap resamples): "
            + ", ".join(
                f"{BENCH_LABEL[b]} {np.mean(v):.0f} s (max {np.max(v):.0f} s)"
                for b, v in total.items()
                if v
            )
            + "; compressed embeddings per run: "
            + ", ".join(
                f"{BENCH_LABEL[b]} {np.mean(v) / 2**20:.2f} MiB"
                for b in benches
                if (v := [r["embeddings_bytes"] for r in recs if r["tags"]["dataset"] == b])
            )
            + ".",
            "",
        ]
    )


def plots(flat: list[dict[str, Any]], rows: list[dict[str, Any]], folder: Path) -> list[str]:
    """Shift FAR / target vs shift ΔTAR, OPIS per scorer, R@1 vs OPIS; returns md lines."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    benches = [b for b in BENCH_ORDER if any(r["dataset"] == b for r in rows)]
    if not benches:
        return []
    colors = {s: f"C{i}" for i, s in enumerate(SCORER_ORDER)}
    n = len(benches)
    handles = [
        plt.Line2D([], [], color=colors[s], marker="s", ls="", label=SCORER_LABEL[s])
        for s in SCORER_ORDER
    ] + [
        plt.Line2D([], [], color="k", marker="x", ls="", label="base"),
        plt.Line2D([], [], color="k", marker="o", ls="", mfc="none", label="+ TCM"),
    ]

    def mean(r: dict[str, Any], key: str) -> float:
        f = r.get(key)
        return float(f["mean"]) if f else float("nan")

    fig, axes = plt.subplots(1, n, figsize=(4.4 * n, 3.8), squeeze=False)
    for ax, b in zip(axes[0], benches, strict=True):
        for r in rows:
            if r["dataset"] != b:
                continue
            x, y = mean(r, "transfer_tar_change"), mean(r, "transfer_far_ratio")
            mk = dict(marker="o", mfc="none") if r["tcm"] else dict(marker="x")
            ax.plot(x, y, ls="", color=colors.get(r["scorer"], "k"), ms=6, **mk)
        ax.axhline(1.0, color="k", lw=0.7)
        ax.set_yscale("log")
        ax.set_title(BENCH_LABEL[b])
        ax.set_xlabel("shift ΔTAR (target − source)")
    axes[0][0].set_ylabel("shift FAR / target FAR")
    axes[0][-1].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "normalisers_shift.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(4.4 * n, 3.6), squeeze=False)
    for ax, b in zip(axes[0], benches, strict=True):
        for j, s in enumerate(SCORER_ORDER):
            for k, (loss, tcm) in enumerate((lo, t) for lo in LOSS_ORDER for t in (False, True)):
                r = next(
                    (
                        r
                        for r in rows
                        if r["dataset"] == b
                        and r["scorer"] == s
                        and r["loss"] == loss
                        and r["tcm"] == tcm
                    ),
                    None,
                )
                if r is None or not r.get("opis"):
                    continue
                f = r["opis"]
                err = (
                    [[f["mean"] - f["ci95"][0]], [f["ci95"][1] - f["mean"]]]
                    if f.get("ci95")
                    else None
                )
                ax.errorbar(
                    j + (k - 2.5) * 0.12,
                    f["mean"],
                    yerr=err,
                    color=f"C{LOSS_ORDER.index(loss) + 6}",
                    marker="o" if tcm else "x",
                    mfc="none",
                    ms=5,
                    lw=0.8,
                )
        ax.set_xticks(range(len(SCORER_ORDER)), [SCORER_LABEL[s] for s in SCORER_ORDER])
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.set_title(BENCH_LABEL[b])
    axes[0][0].set_ylabel("OPIS (evaluation half)")
    axes[0][-1].legend(
        handles=[
            plt.Line2D([], [], color=f"C{i + 6}", marker="s", ls="", label=LOSS_LABEL[lo])
            for i, lo in enumerate(LOSS_ORDER)
        ]
        + handles[-2:],
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(folder / "normalisers_opis.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(4.4 * n, 3.8), squeeze=False)
    for ax, b in zip(axes[0], benches, strict=True):
        for r in flat:
            t = r["tags"]
            if t["dataset"] != b:
                continue
            mk = dict(marker="o", mfc="none") if t["tcm"] else dict(marker="x")
            ax.plot(
                r["metrics"]["recall_at_1"],
                r["metrics"]["opis"],
                ls="",
                color=colors.get(t["scorer"], "k"),
                ms=5,
                alpha=0.8,
                **mk,
            )
        ax.set_yscale("log")
        ax.set_title(BENCH_LABEL[b])
        ax.set_xlabel("R@1 (evaluation half)")
    axes[0][0].set_ylabel("OPIS (lower is more consistent)")
    axes[0][-1].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "normalisers_pareto.png", dpi=110)
    plt.close(fig)
    return [
        "![Shift FAR over the target FAR vs the shift's TAR change, per scorer]"
        "(results/normalisers_shift.png)",
        "",
        "Each point: one (loss, base / + TCM, scorer), mean over seeds.",
        "",
        "![OPIS per scorer](results/normalisers_opis.png)",
        "",
        "![R@1 vs OPIS with every scorer, one point per run and scorer]"
        "(results/normalisers_pareto.png)",
        "",
    ]


def section(
    plot_folder: Path,
    recs: list[dict[str, Any]],
    flat: list[dict[str, Any]],
    rows: list[dict[str, Any]],
) -> str:
    """Markdown of section 0b (between :data:`START` and :data:`END`) from the raw records,
    their per-scorer records and the normalisers rows of summary.json."""
    notes = NOTES.read_text().strip() + "\n" if NOTES.exists() else ""
    head = [
        START,
        "## 0b. Retrain with TCM, normalise after training, or both?",
        "",
        "Command: `python experiments/run.py normalisers` (no training: it analyses the saved test "
        "embeddings of the evidence runs), then `python experiments/report_normalisers.py`. "
        "Choices: `python experiments/run.py normaliser_choices` (written to "
        "`experiments/choices.json`). Protocol (`experiments/normalisers.py`): the test classes' "
        "calibration half is split by a hash of the class name into a *fit* part and a *select* "
        "part; every scorer is fitted on the fit part's **source** domains (the oracle: every "
        "domain, and the group of every sample at deployment); its hyper-parameter (AS-norm "
        "top-k, FSN / FairCal K) is the one with the lowest minDCF on the select part's source "
        "domains (seed-0 base runs, losses pooled); the deployment threshold (FAR 1e-3) is "
        "calibrated on the scored select part, the shift's on its source domains; every figure "
        "is read on the **evaluation half** (cosine too). Cohort and calibration data never "
        "contain an evaluation class; the cohort never contains a pair the threshold is "
        "calibrated on.",
        "",
    ]
    if not recs:
        return "\n".join([*head, "_no analysed runs yet_", "", END]) + "\n"
    parts = [
        *head,
        f"{len(recs)} runs analysed.",
        "",
        notes,
        *plots(flat, rows, plot_folder),
        "### What each scorer needs at deployment, and its cost",
        "",
        needs_table(rows, recs),
    ]
    for b in BENCH_ORDER:
        parts += [
            f"### 0b.{BENCH_ORDER.index(b) + 1} {BENCH_LABEL[b]}",
            "",
            benchmark_tables(rows, b),
        ]
    parts.append(END)
    return "\n".join(parts) + "\n"


def load_all() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(raw records, per-scorer records, normalisers rows) from experiments/results."""
    import json

    from summary import RESULTS, scorer_records, summarise_normalisers

    recs = [json.loads(p.read_text()) for p in sorted((RESULTS / "normalisers").glob("*/*.json"))]
    flat = scorer_records(recs)
    return recs, flat, summarise_normalisers(flat)


def replace_section(text: str, new: str) -> str:
    """``text`` with the part between the markers replaced by ``new`` (which holds them); without
    markers, ``new`` goes before the heading of the earlier experiments (else at the end).

    Raises:
        ValueError: only one of the two markers is present.
    """
    has = (START in text, END in text)
    if has == (True, True):
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        return head + new.rstrip("\n") + tail
    if any(has):
        raise ValueError(f"docs/results.md has only one of the markers {START!r} / {END!r}")
    anchor = "# Earlier experiments"
    if anchor in text:
        head, tail = text.split(anchor, 1)
        return f"{head}{new}\n{anchor}{tail}"
    return f"{text.rstrip()}\n\n{new}"


def main() -> int:
    from summary import write_summary

    recs, flat, rows = load_all()
    write_summary(normaliser_rows=rows)
    doc = DOCS / "results.md"
    doc.write_text(replace_section(doc.read_text(), section(PLOTS, recs, flat, rows)))
    print(f"wrote {doc} (section 0b: {len(recs)} runs) and experiments/results/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
