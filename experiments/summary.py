"""``experiments/results/summary.json`` from the raw JSON of ``python experiments/run.py evidence``.

One row per model (dataset, loss, TCM, memory and its warm-up, backbone, m+), over the seeds
that finished:

* each figure ``{"mean": m, "ci95": [lo, hi], "n": k, "bootstrap_ci95": [blo, bhi]}``: ``m`` the
  mean over the ``k`` seeds, ``[lo, hi]`` the two-sided 95 % Student-t interval of that mean
  (``m -/+ t_{0.975, k-1} s / sqrt(k)``, ``s`` the sample standard deviation; ``None`` for
  ``k < 2``), ``[blo, bhi]`` the mean over seeds of each run's class-bootstrap 95 % interval
  (the uncertainty from *which classes* were drawn, at a fixed model), where the run has one;
* a TCM row also has ``vs_base``: per figure, the mean and the t-interval of the seed-paired
  difference ``TCM - base`` (same dataset, loss, memory, backbone and seed), with the seeds
  used; the difference is significant at 95 % when its interval excludes 0.

Non-finite values (a Max/GeoMean of a group with FAR 0 is infinite) are left out of a figure and
counted in ``"nonfinite"``.

Rows of the ``normalisers`` experiment (``python experiments/run.py normalisers``, after the
evidence rows; the evidence rows have no ``scorer`` field: cosine on all test classes) carry
``"experiment": "normalisers"`` and a ``scorer`` (``cosine``, ``snorm``, ``asnorm``, ``fsn``,
``faircal``, ``gst_oracle``), one row per (dataset, loss, TCM, scorer), figures computed on the
evaluation half (:data:`NORMALISER_FIGURES`, the evidence figures plus minDCF, deployment TAR and
threshold, WERM, shift target TAR), each as above, plus ``needs`` (what the scorer keeps at
deployment), ``score_scale`` (of the thresholds) and ``analysis_s`` (mean seconds per run, fit +
figures), and

* ``vs_cosine_base``: the seed-paired difference against cosine on the base model (same
  dataset and loss), for every row but that one;
* ``vs_base`` (TCM rows): against the base model with the same scorer: does TCM still add
  something after normalisation?
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sstats

RESULTS = Path(__file__).resolve().parent / "results"

Getter = Callable[[dict[str, Any]], Any]


def _get(*path: str) -> Getter:
    def get(rec: dict[str, Any]) -> Any:
        cur: Any = rec
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return None
            cur = cur[p]
        return cur

    return get


# figure key -> (value getter, class-bootstrap interval getter or None)
FIGURES: dict[str, tuple[Getter, Getter | None]] = {
    "recall_at_1": (_get("metrics", "recall_at_1"), _get("intervals", "recall_at_1")),
    "map_at_r": (_get("metrics", "map_at_r"), _get("intervals", "map_at_r")),
    "opis": (_get("metrics", "opis"), _get("intervals", "opis")),
    "epsilon_opis_5": (
        _get("metrics", "epsilon_opis_0.05"),
        _get("intervals", "epsilon_opis_0.05"),
    ),
    "tar_at_far_1e-03": (
        _get("metrics", "tar_at_far_1e-03"),
        _get("intervals", "tar_at_far_1e-03"),
    ),
    "deployment_far": (_get("deployment", "global_far"), _get("deployment", "far_ci95")),
    "deployment_far_std": (_get("deployment", "far_std"), None),
    "deployment_far_max": (_get("deployment", "far_max"), None),
    "classes_far_over_2x": (_get("deployment", "classes_far_over_2x"), None),
    "group_far_max_geomean": (
        _get("deployment", "far_max_geomean"),
        _get("deployment", "far_max_geomean_ci95"),
    ),
    "group_garbe": (_get("deployment", "garbe"), _get("deployment", "garbe_ci95")),
    "transfer_far_ratio": (_get("transfer", "far_ratio"), _get("transfer", "far_ratio_ci95")),
    "transfer_tar_change": (_get("transfer", "tar_change"), None),
    "control_far_ratio": (
        _get("transfer", "control_far_ratio"),
        _get("transfer", "control_far_ratio_ci95"),
    ),
}

# the figures of the normalisers rows (the same record layout, per scorer)
NORMALISER_FIGURES: dict[str, tuple[Getter, Getter | None]] = {
    **FIGURES,
    "min_dcf": (_get("metrics", "min_dcf"), None),
    "deployment_tar": (_get("deployment", "global_tar"), _get("deployment", "tar_ci95")),
    "deployment_threshold": (_get("deployment", "threshold"), None),
    "group_werm": (_get("deployment", "werm"), None),
    "transfer_target_tar": (_get("transfer", "target_tar"), None),
}
NORMALISER_KEYS = ("dataset", "loss", "tcm", "scorer")

MODEL_KEYS = (
    "dataset",
    "loss",
    "tcm",
    "memory",
    "memory_warmup",
    "backbone",
    "margin_pos",
    "steps",
)


def t_interval(values: Sequence[float], ci: float = 0.95) -> tuple[float, list[float] | None]:
    """Mean of ``values`` and the two-sided Student-t interval of the mean (None for n < 2).

    >>> m, iv = t_interval([1.0, 2.0, 3.0])
    >>> m, [round(v, 4) for v in iv]  # 2 -/+ 4.3027 * 1 / sqrt(3)
    (2.0, [-0.4841, 4.4841])
    """
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("t_interval needs at least one value")
    m = float(a.mean())
    if a.size < 2:
        return m, None
    half = float(sstats.t.ppf(0.5 + ci / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    return m, [m - half, m + half]


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


def figure(
    recs: Sequence[dict[str, Any]],
    key: str,
    figures: dict[str, tuple[Getter, Getter | None]] = FIGURES,
) -> dict[str, Any] | None:
    """``{"mean", "ci95", "n", "bootstrap_ci95", "nonfinite"}`` of one figure over runs."""
    get, get_iv = figures[key]
    vals = [get(r) for r in recs]
    finite = [float(v) for v in vals if _finite(v)]
    if not finite:
        return None
    m, iv = t_interval(finite)
    out: dict[str, Any] = {"mean": m, "ci95": iv, "n": len(finite)}
    if get_iv is not None:
        ivs = [get_iv(r) for r in recs]
        ivs = [v for v in ivs if v is not None and all(_finite(x) for x in v)]
        out["bootstrap_ci95"] = (
            [float(np.mean([v[0] for v in ivs])), float(np.mean([v[1] for v in ivs]))]
            if ivs
            else None
        )
    nonfinite = sum(1 for v in vals if v is not None and not _finite(v))
    if nonfinite:
        out["nonfinite"] = nonfinite
    return out


def paired(
    tcm: Sequence[dict[str, Any]],
    base: Sequence[dict[str, Any]],
    key: str,
    figures: dict[str, tuple[Getter, Getter | None]] = FIGURES,
) -> dict[str, Any] | None:
    """Mean and t-interval of the seed-paired difference ``tcm - base`` of one figure."""
    get = figures[key][0]
    by_seed = {r["tags"]["seed"]: get(r) for r in base}
    diffs, seeds = [], []
    for r in tcm:
        s = r["tags"]["seed"]
        a, b = get(r), by_seed.get(s)
        if _finite(a) and _finite(b):
            diffs.append(float(a) - float(b))
            seeds.append(s)
    if not diffs:
        return None
    m, iv = t_interval(diffs)
    return {"mean": m, "ci95": iv, "seeds": sorted(seeds)}


def model_of(rec: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(rec["tags"].get(k) for k in MODEL_KEYS)


def load_records(folder: Path = RESULTS / "evidence") -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*/*.json"))]


def summarise(recs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of summary.json (module docstring), sorted by dataset, loss, TCM, ..."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault(model_of(r), []).append(r)
    rows = []
    for model in sorted(groups, key=lambda m: tuple(str(v) for v in m)):
        runs = sorted(groups[model], key=lambda r: r["tags"]["seed"])
        row: dict[str, Any] = dict(zip(MODEL_KEYS, model, strict=True))
        row["seeds"] = [r["tags"]["seed"] for r in runs]
        row["selected_on"] = sorted({str(r.get("selected_on", "?")) for r in runs})[0]
        row["shift"] = runs[0].get("transfer", {}).get("shift")
        for key in FIGURES:
            fig = figure(runs, key)
            if fig is not None:
                row[key] = fig
        if row["tcm"]:
            base_model = dict(row)
            base_model.update(tcm=False, margin_pos=None)
            base = groups.get(tuple(base_model[k] for k in MODEL_KEYS), [])
            if base:
                row["vs_base"] = {k: d for k in FIGURES if (d := paired(runs, base, k))}
        rows.append(row)
    return rows


def scorer_records(recs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (run, scorer) of the normalisers records, in the evidence record layout
    (``tags`` with ``scorer`` added, ``metrics``, ``intervals``, ``deployment``, ``transfer``)."""
    out = []
    for r in recs:
        for name, s in r["scorers"].items():
            out.append(
                {
                    "tags": {**r["tags"], "scorer": name},
                    **{k: s[k] for k in ("metrics", "intervals", "deployment", "transfer")},
                    "needs": s.get("needs"),
                    "score_scale": s.get("score_scale"),
                    "wall_s": s.get("wall_s"),
                }
            )
    return out


def load_normaliser_records(folder: Path = RESULTS / "normalisers") -> list[dict[str, Any]]:
    """The per-(run, scorer) records (:func:`scorer_records`) of ``folder/<bench>/<run>.json``."""
    return scorer_records(json.loads(p.read_text()) for p in sorted(folder.glob("*/*.json")))


def summarise_normalisers(recs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The normalisers rows of summary.json (module docstring) from :func:`scorer_records`."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault(tuple(r["tags"][k] for k in NORMALISER_KEYS), []).append(r)
    rows = []
    for model in sorted(groups, key=lambda m: tuple(str(v) for v in m)):
        runs = sorted(groups[model], key=lambda r: r["tags"]["seed"])
        row: dict[str, Any] = {"experiment": "normalisers"}
        row.update(zip(NORMALISER_KEYS, model, strict=True))
        row["seeds"] = [r["tags"]["seed"] for r in runs]
        row["shift"] = runs[0].get("transfer", {}).get("shift")
        for key in NORMALISER_FIGURES:
            fig = figure(runs, key, NORMALISER_FIGURES)
            if fig is not None:
                row[key] = fig
        needs = runs[0].get("needs") or {}
        row["needs"] = {**needs, "samples": float(np.mean([r["needs"]["samples"] for r in runs]))}
        row["score_scale"] = runs[0].get("score_scale")
        row["analysis_s"] = float(np.mean([float(r.get("wall_s") or 0.0) for r in runs]))
        dataset, loss, tcm, scorer = model
        refs = {"vs_cosine_base": (dataset, loss, False, "cosine")}
        if tcm:
            refs["vs_base"] = (dataset, loss, False, scorer)
        for name, ref in refs.items():
            base = groups.get(ref, [])
            if ref != model and base:
                figs = NORMALISER_FIGURES
                row[name] = {k: d for k in figs if (d := paired(runs, base, k, figs))}
        rows.append(row)
    return rows


def write_summary(
    rows: list[dict[str, Any]] | None = None,
    path: Path = RESULTS / "summary.json",
    normaliser_rows: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Write ``rows`` (default: :func:`summarise` of the raw records) and then
    ``normaliser_rows`` (default: :func:`summarise_normalisers` of the normalisers records)
    atomically as one JSON list; returns it."""
    from tcm._io import write_json

    rows = summarise(load_records()) if rows is None else rows
    if normaliser_rows is None:
        normaliser_rows = summarise_normalisers(load_normaliser_records())
    out = [*rows, *normaliser_rows]
    write_json(path, out, indent=1)
    return out


if __name__ == "__main__":
    out = write_summary()
    print(f"wrote {RESULTS / 'summary.json'}: {len(out)} rows")
