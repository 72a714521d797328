"""Experiment ``evidence``: does TCM make one threshold hold across classes and distributions?

The protocol (docs/results.md, section 0), one training run per (benchmark, loss, TCM, seed):

* benchmarks ``glyphs`` (embedded), ``emoji`` and ``cjk_glyphs`` (``make data``);
* open world: the model is trained on the train classes, ``best.pt`` is selected on the
  validation classes carved from them (``data.val_classes``, MAP@R), and only that checkpoint
  is evaluated on the test classes, which are split again into the dataset's own
  ``calibration`` / ``evaluation`` halves;
* every figure is computed from the test embeddings of the selected checkpoint by
  :func:`analyse`: retrieval and consistency on all test classes with class-bootstrap
  intervals; the deployment threshold for a global FAR of 1e-3 calibrated on the calibration
  half and applied to the evaluation half (per-class FAR spread, classes over 2x, group
  Max/GeoMean and GARBE over the domains); and the distribution shift: the same FAR-1e-3
  threshold calibrated on the *source* domains of the calibration half, applied to the *target*
  domains of the evaluation half (``transfer_far_ratio`` = FAR there / 1e-3, ``transfer_tar_change``
  = TAR there - TAR on the source). The control (the same source threshold on the source domains
  of the evaluation half: other classes, same distribution) separates the class shift from the
  distribution shift.

Shifts: glyphs DejaVu -> STIX (font families); emoji google + twitter -> openmoji (vendors; every
emoji has one image per vendor, so the target pairs are openmoji images against the enrolled
vendors' images: the cross-group block); CJK print designs -> brush / handwriting designs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EMOJI_ROOT = "data/emoji/node_modules"  # relative to the checkout (run.py runs from there)
TARGET_FAR = 1e-3
N_BOOT = 1000
CI = 0.95

CJK_PRINT = (
    "AR PL UMing CN",
    "IPAGothic",
    "IPAMincho",
    "IPAPGothic",
    "IPAPMincho",
    "Noto Sans CJK JP",
    "Noto Serif CJK JP",
    "WenQuanYi Zen Hei",
)
CJK_BRUSH = (
    "AR PL UKai CN",
    "KouzanBrushFont",
    "KouzanBrushFontGyousyo",
    "KouzanBrushFontSousyo",
    "SetoFont",
)


@dataclass(frozen=True)
class Benchmark:
    """A dataset of the protocol and its distribution shift (source -> target domains)."""

    name: str
    overrides: tuple[str, ...]
    source: tuple[str, ...]
    target: tuple[str, ...]
    mode: Literal["within", "cross"]

    @property
    def load_kwargs(self) -> dict[str, Any]:
        return {"root": str(ROOT / EMOJI_ROOT)} if self.name == "emoji" else {}

    @property
    def shift(self) -> str:
        return f"{' + '.join(self.source)} -> {' + '.join(self.target)}"


BENCHMARKS: dict[str, Benchmark] = {
    "glyphs": Benchmark("glyphs", ("data.name=glyphs",), ("DejaVu",), ("STIX",), "within"),
    "emoji": Benchmark(
        "emoji",
        ("data.name=emoji", f"data.root={EMOJI_ROOT}"),
        ("google", "twitter"),
        ("openmoji",),
        "cross",
    ),
    "cjk_glyphs": Benchmark(
        "cjk_glyphs", ("data.name=cjk_glyphs",), CJK_PRINT, CJK_BRUSH, "within"
    ),
}


def _interval(iv: Any) -> list[float]:
    return [float(iv.lo), float(iv.hi)]


def _retrieval_intervals(per_class: Any, n_boot: int | None = None) -> dict[str, list[float]]:
    """Class-bootstrap intervals of the query-averaged R@1 and MAP@R from per-class means
    (``n_boot`` resamples, default :data:`N_BOOT`)."""
    from tcm.metrics.bootstrap import bootstrap_ratio

    n_boot = N_BOOT if n_boot is None else n_boot

    n = np.asarray(per_class.num_queries, dtype=np.float64)
    out = {}
    for key in ("recall_at_1", "map_at_r"):
        numer = n * np.asarray(getattr(per_class, key), dtype=np.float64)
        out[key] = _interval(bootstrap_ratio(numer, n, ci=CI, n_boot=n_boot))
    return out


def _halves(bench: Benchmark, labels: np.ndarray, names: np.ndarray) -> np.ndarray:
    """``True`` for samples of the dataset's calibration half of the test classes."""
    from tcm import data as tdata

    cal = set(tdata.load(bench.name, split="calibration", **bench.load_kwargs).class_names)
    is_cal_class = np.array([str(n) in cal for n in names])
    return np.asarray(is_cal_class[labels], dtype=bool)


def load_embeddings(npz: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(embeddings, labels, class_names, groups)`` of a run's embeddings file."""
    with np.load(npz, allow_pickle=False) as f:
        emb, lab, names = f["embeddings"], f["labels"], f["class_names"]
        groups = np.asarray(f["groups"], dtype=str)
    return emb, lab, names, groups


def _stats(
    emb: np.ndarray,
    lab: np.ndarray,
    groups: np.ndarray | None,
    scorer: Any = None,
    **kw: Any,
) -> Any:
    from tcm.metrics import PairIndex, pair_statistics

    return pair_statistics(PairIndex(emb, lab, groups, scorer=scorer), **{"far_range": None, **kw})


def _op_block(op: Any, far: float) -> dict[str, Any]:
    from tcm.metrics.calibration import spread

    f = np.asarray(op.far)
    sp = spread(f)
    return {
        "global_far": float(op.global_far),
        "global_tar": float(op.global_tar),
        "far_ci95": _interval(op.intervals["global_far"]),
        "tar_ci95": _interval(op.intervals["global_tar"]),
        "classes": int(f.shape[0]),
        "far_per_class": [float(v) for v in f],
        "far_p50": sp["p50"],
        "far_p90": sp["p90"],
        "far_max": sp["max"],
        "far_std": sp["std"],
        "classes_far_over_2x": int(np.count_nonzero(f > 2 * far)),
    }


def _group_block(gop: Any, bench: Benchmark) -> dict[str, Any]:
    """Per-domain rates and their Max/GeoMean and GARBE at the deployment threshold.

    ``within`` benchmarks: the within-domain rates of :mod:`tcm.metrics.groups`, with their
    class-bootstrap intervals. ``cross`` (emoji: one image per vendor per class, so no genuine
    pair lies inside one vendor): domain ``g``'s rates are the unweighted means of the
    cross-domain matrices' row ``g`` over the other domains (``g``'s images against every other
    vendor's), summarised by the same :func:`tcm.metrics.group_summary`; no interval.
    """
    from tcm.metrics.groups import group_summary

    if bench.mode == "within":
        return {
            "group_far": [float(v) for v in gop.far],
            "group_frr": [float(v) for v in gop.frr],
            "far_max_geomean": float(gop.summary["far_max_geomean"]),
            "garbe": float(gop.summary["garbe"]),
            "far_max_geomean_ci95": _interval(gop.intervals["far_max_geomean"]),
            "garbe_ci95": _interval(gop.intervals["garbe"]),
        }
    off = ~np.eye(len(gop.groups), dtype=bool)
    far = np.array([gop.far_matrix[i][off[i]].mean() for i in range(len(gop.groups))])
    frr = np.array([1.0 - gop.tar_matrix[i][off[i]].mean() for i in range(len(gop.groups))])
    summ = group_summary(far, frr)
    return {
        "group_far": [float(v) for v in far],
        "group_frr": [float(v) for v in frr],
        "group_rates": "cross-domain (row mean over the other domains)",
        "far_max_geomean": float(summ["far_max_geomean"]),
        "garbe": float(summ["garbe"]),
        "far_max_geomean_ci95": None,
        "garbe_ci95": None,
    }


def deployment_view(
    emb: np.ndarray,
    lab: np.ndarray,
    groups: np.ndarray,
    cal: np.ndarray,
    bench: Benchmark,
    far: float = TARGET_FAR,
    *,
    scorer: Any = None,
    n_boot: int | None = None,
    evaluation: np.ndarray | None = None,
    **eval_kw: Any,
) -> tuple[dict[str, Any], Any]:
    """One threshold for FAR ``far`` calibrated on the samples ``cal`` (the calibration half),
    read on the samples ``evaluation`` (default: all others): ``(deployment block, the
    evaluation samples' PairStats)``.

    ``scorer``: every pair of both halves scored by it (``None``: cosine); ``eval_kw``: more
    requests of the evaluation half's pass (an OPIS grid, a histogram), counted in the same
    pass as the deployment threshold; ``n_boot``: class-bootstrap resamples (default
    :data:`N_BOOT`)."""
    from tcm.metrics.groups import group_operating_point_view

    n_boot = N_BOOT if n_boot is None else n_boot
    ev = ~cal if evaluation is None else evaluation
    cal_stats = _stats(emb[cal], lab[cal], None, scorer, fars=[far])
    t = cal_stats.threshold_at_far(far)
    ev_stats = _stats(emb[ev], lab[ev], groups[ev], scorer, fars=[far], thresholds=[t], **eval_kw)
    op = ev_stats.operating_point(t, ci=CI, n_boot=n_boot)
    gop = group_operating_point_view(ev_stats, t, ci=CI, n_boot=n_boot)
    block = {
        "target_far": far,
        "threshold": float(t),
        **_op_block(op, far),
        "groups": [str(g) for g in gop.groups],
        **_group_block(gop, bench),
    }
    return block, ev_stats


def transfer_block(
    emb: np.ndarray,
    lab: np.ndarray,
    groups: np.ndarray,
    cal: np.ndarray,
    bench: Benchmark,
    far: float = TARGET_FAR,
    *,
    scorer: Any = None,
    n_boot: int | None = None,
    evaluation: np.ndarray | None = None,
) -> dict[str, Any]:
    """The distribution shift (module docstring): FAR ``far`` calibrated on the source domains
    of ``cal``, read on the target domains of the samples ``evaluation`` (default: the other
    half), with the control (their source domains); every pair scored by ``scorer`` (``None``:
    cosine); ``n_boot`` as in :func:`deployment_view`."""
    from tcm.metrics.groups import group_operating_point_view
    from tcm.metrics.transfer import transfer_view

    n_boot = N_BOOT if n_boot is None else n_boot
    ev = ~cal if evaluation is None else evaluation
    in_src, in_tgt = np.isin(groups, bench.source), np.isin(groups, bench.target)
    src = cal & in_src
    src_stats = _stats(emb[src], lab[src], None, scorer, fars=[far])
    t_src = src_stats.threshold_at_far(far)
    control = ev & in_src
    ctl_stats = _stats(emb[control], lab[control], None, scorer, fars=[far], thresholds=[t_src])
    ctl = transfer_view(src_stats, ctl_stats, far, ci=CI, n_boot=n_boot)
    transfer: dict[str, Any] = {
        "shift": bench.shift,
        "mode": bench.mode,
        "threshold": float(t_src),
        "source_far": ctl.source_far,
        "source_tar": ctl.source_tar,
        "control_far_ratio": ctl.far_ratio,
        "control_far_ratio_ci95": _interval(ctl.intervals["far_ratio"]),
        "control_tar_change": ctl.tar_change,
    }
    if bench.mode == "within":
        tgt = ev & in_tgt
        tgt_stats = _stats(emb[tgt], lab[tgt], None, scorer, fars=[far], thresholds=[t_src])
        tr = transfer_view(src_stats, tgt_stats, far, ci=CI, n_boot=n_boot)
        transfer.update(
            far_ratio=tr.far_ratio,
            far_ratio_ci95=_interval(tr.intervals["far_ratio"]),
            tar_change=tr.tar_change,
            target_tar=tr.target_tar,
            threshold_offset=tr.threshold_offset,
            target_classes=tr.num_target_classes,
            target_classes_over_2x=tr.classes_over_2x,
        )
    else:
        # target pairs: one target-domain image against one source-domain image (cross block)
        both = ev & (in_src | in_tgt)
        side = np.where(in_tgt[both], "target", "source")
        x_stats = _stats(emb[both], lab[both], side, scorer, fars=[far], thresholds=[t_src])
        xop = group_operating_point_view(x_stats, t_src, ci=CI, n_boot=n_boot)
        i_s, i_t = [int(np.flatnonzero(xop.groups == g)[0]) for g in ("source", "target")]
        x_far = float(xop.far_matrix[i_t, i_s])
        x_tar = float(xop.tar_matrix[i_t, i_s])
        transfer.update(
            far_ratio=x_far / far,
            far_ratio_ci95=None,
            tar_change=x_tar - ctl.source_tar,
            target_tar=x_tar,
            threshold_offset=None,
            target_classes=len(np.unique(lab[both])),
            target_classes_over_2x=None,
        )
    return transfer


def analyse(
    npz: Path,
    bench: Benchmark,
    far: float = TARGET_FAR,
    calibration: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every figure of the protocol from one run's test embeddings (module docstring).

    ``calibration``: ``(N,)`` bool, the samples of the calibration half (default: the classes of
    the dataset's ``calibration`` split, by name)."""
    from tcm.metrics import evaluate

    emb, lab, names, groups = load_embeddings(npz)
    ev = evaluate(emb, lab, ci=CI, n_boot=N_BOOT, calibration_far=None)
    metrics = {k: float(v) for k, v in ev.metrics().items()}
    intervals = {k: _interval(v) for k, v in ev.intervals.items()}
    assert ev.retrieval is not None
    intervals.update(_retrieval_intervals(ev.retrieval.per_class))

    cal = _halves(bench, lab, names) if calibration is None else np.asarray(calibration, bool)
    # deployment: one threshold for FAR `far` on the calibration half, used on the other half
    deployment, _ = deployment_view(emb, lab, groups, cal, bench, far)
    # distribution shift: calibrate on the source domains of the calibration half
    transfer = transfer_block(emb, lab, groups, cal, bench, far)
    return {
        "metrics": metrics,
        "intervals": intervals,
        "deployment": deployment,
        "transfer": transfer,
    }
