"""Threshold consistency across groups (data distributions, sub-populations), from count tables.

Every sample may carry a group ``g(i)`` (a font family, a camera, a site, a demographic
attribute); groups are not classes. At one global threshold ``t`` (cosine similarity, accept
when ``s >= t``):

* genuine pairs of group ``g``: same label, both samples in ``g``; impostor pairs of ``g``:
  different labels, both in ``g``. ``FAR_g`` / ``TAR_g`` are the accepted fractions of those
  pairs, ``FRR_g = 1 - TAR_g``, ``TRR_g = 1 - FAR_g``, ``U_g`` = F1 of ``TAR_g`` and ``TRR_g``;
* cross-group (``g != h``): genuine = same label with one sample in ``g`` and one in ``h``,
  impostor likewise; the ``G x G`` matrices ``FAR_{g,h}``, ``TAR_{g,h}`` have the within-group
  rates on the diagonal;
* summaries of a rate vector ``r_1..r_G``: ``max/min`` (inf when a rate is 0),
  ``Max/GeoMean = max r / (prod r)^(1/G)`` (inf when a rate is 0),
  ``Gini(r) = G / (G - 1) * sum_i sum_j |r_i - r_j| / (2 G^2 mean(r))`` (0 when all are 0),
  ``GARBE = alpha Gini(FAR) + (1 - alpha) Gini(FRR)`` and
  ``FDR = 1 - (alpha max|FAR_g - FAR_h| + (1 - alpha) max|FRR_g - FRR_h|)``;
* group OPIS / eps-OPIS: OPIS with classes replaced by groups, on the same global grid.

Groups without genuine or impostor pairs get NaN rates; they are listed and left out of the
summaries (``groups_left_out``). Intervals (``ci=``): class bootstrap over all classes of the set,
group rates recomputed from per-(class, group) counts (``tcm.metrics.bootstrap``); never another
pass over the pairs.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(12), 6)
    >>> g = np.tile(["print", "scan"], 36)
    >>> x = rng.normal(size=(12, 16))[y] + 0.7 * rng.normal(size=(72, 16))
    >>> gop = group_operating_point(x, y, g, threshold=0.5)
    >>> gop.groups.tolist(), gop.far_matrix.shape, sorted(gop.summary)[:3]
    (['print', 'scan'], (2, 2), ['far_gini', 'far_max_geomean', 'far_max_min'])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tcm._validation import ArrayLike
from tcm.metrics._checks import (
    check_epsilon,
    check_finite,
    check_fraction,
    check_num_thresholds,
)
from tcm.metrics._passes import CountState
from tcm.metrics.bootstrap import (
    Interval,
    check_bootstrap_args,
    check_bootstrap_memory,
    class_bootstrap_weights,
    interval_from_samples,
    ratio_or_nan,
)
from tcm.metrics.results import jsonable, scale_entry
from tcm.metrics.statistics import (
    PairIndex,
    PairStats,
    epsilon_opis_from_utility,
    opis_from_utility,
    pair_statistics,
    utility,
)

if TYPE_CHECKING:
    from tcm.scoring.base import Scorer

__all__ = [
    "GroupConsistency",
    "GroupOperatingPoint",
    "check_group_consistency_input",
    "gini",
    "group_bootstrap_cells",
    "group_consistency",
    "group_consistency_view",
    "group_operating_point",
    "group_operating_point_view",
    "group_summary",
]

SUMMARY_KEYS = (
    "far_max_min",
    "frr_max_min",
    "far_max_geomean",
    "frr_max_geomean",
    "far_gini",
    "frr_gini",
    "garbe",
    "fdr",
)


def gini(r: np.ndarray) -> float:
    """``G/(G-1) * sum_ij |r_i - r_j| / (2 G^2 mean(r))``; 0 when all rates are 0, NaN for
    fewer than 2 rates.

    Example:
        >>> gini(np.array([0.1, 0.1, 0.1])), round(gini(np.array([0.0, 1.0])), 6)
        (0.0, 1.0)
    """
    a = np.asarray(r, dtype=np.float64)
    g = a.shape[0]
    if g < 2:
        return math.nan
    mean = float(a.mean())
    if mean == 0.0:
        return 0.0
    return float(g / (g - 1) * np.abs(a[:, None] - a[None, :]).sum() / (2 * g * g * mean))


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return math.inf if num > 0 else math.nan
    return num / den


def group_summary(far: np.ndarray, frr: np.ndarray, alpha: float = 0.5) -> dict[str, float]:
    """The differential summaries of per-group FAR and FRR at one threshold (module docstring).

    NaN entries (groups without impostor / genuine pairs) are left out; ``groups_left_out``,
    ``far_zero_groups`` and ``frr_zero_groups`` count them and the zero rates (which make the
    ratio summaries infinite).

    Example:
        >>> s = group_summary(np.array([0.01, 0.02]), np.array([0.1, 0.1]))
        >>> s["far_max_min"], s["frr_gini"], round(s["fdr"], 6)
        (2.0, 0.0, 0.995)
    """
    a = check_fraction(alpha, "alpha") if alpha not in (0, 1) else float(alpha)
    far = np.asarray(far, dtype=np.float64)
    frr = np.asarray(frr, dtype=np.float64)
    ok = np.isfinite(far) & np.isfinite(frr)
    f, r = far[ok], frr[ok]
    out: dict[str, float] = {}
    for name, v in (("far", f), ("frr", r)):
        if v.shape[0] == 0:
            out[f"{name}_max_min"] = out[f"{name}_max_geomean"] = out[f"{name}_gini"] = math.nan
            continue
        mx, mn = float(v.max()), float(v.min())
        out[f"{name}_max_min"] = _ratio(mx, mn)
        if mn == 0.0:
            out[f"{name}_max_geomean"] = math.inf if mx > 0 else math.nan
        else:
            out[f"{name}_max_geomean"] = mx / float(np.exp(np.mean(np.log(v))))
        out[f"{name}_gini"] = gini(v)
    out["garbe"] = a * out["far_gini"] + (1 - a) * out["frr_gini"]
    if f.shape[0]:
        big_a = float(f.max() - f.min())
        big_b = float(r.max() - r.min())
        out["fdr"] = 1.0 - (a * big_a + (1 - a) * big_b)
    else:
        out["fdr"] = math.nan
    out["groups_left_out"] = float(np.count_nonzero(~ok))
    out["far_zero_groups"] = float(np.count_nonzero(f == 0))
    out["frr_zero_groups"] = float(np.count_nonzero(r == 0))
    return out


def _require_groups(stats: PairStats) -> tuple[np.ndarray, np.ndarray, Any]:
    if stats.groups is None or stats.class_group_sizes is None or stats.group_names is None:
        raise ValueError("these statistics have no groups: build the PairIndex with groups=")
    return stats.group_names, stats.class_group_sizes, stats.groups


@dataclass(frozen=True)
class GroupOperatingPoint:
    """Per-group rates at one threshold (``G`` groups, sorted).

    Attributes:
        threshold: cosine-similarity threshold (accept when ``s >= t``).
        groups: ``(G,)`` group ids.
        far, frr, tar, trr: ``(G,)`` within-group rates (NaN: no impostor / genuine pairs).
        num_genuine, num_impostor: ``(G,)`` int64 within-group pair counts.
        far_matrix, tar_matrix: ``(G, G)`` cross-group rates (diagonal = within-group).
        summary: :func:`group_summary` of ``far`` / ``frr``.
        intervals: ``{name: Interval}`` class-bootstrap intervals (``far``, ``frr`` per group,
            each summary key) when ``ci`` was given, else empty.
        score_scale: the scale of ``threshold`` (``"cosine"``, or the scorer's; ``to_dict``
            lists it only when it is not ``"cosine"``).
    """

    threshold: float
    groups: np.ndarray
    far: np.ndarray
    frr: np.ndarray
    tar: np.ndarray
    trr: np.ndarray
    num_genuine: np.ndarray
    num_impostor: np.ndarray
    far_matrix: np.ndarray
    tar_matrix: np.ndarray
    summary: dict[str, float]
    intervals: dict[str, Interval]
    score_scale: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN / inf stay floats: use a JSON writer that allows them)."""
        return {
            "threshold": self.threshold,
            "groups": [str(g) for g in self.groups.tolist()],
            "far": jsonable(self.far),
            "frr": jsonable(self.frr),
            "num_genuine": jsonable(self.num_genuine),
            "num_impostor": jsonable(self.num_impostor),
            "far_matrix": jsonable(self.far_matrix),
            "tar_matrix": jsonable(self.tar_matrix),
            "summary": dict(self.summary),
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
            **scale_entry(self.score_scale),
        }


def _group_tables(stats: PairStats, column: int, xcol: int) -> dict[str, np.ndarray]:
    """Per-class numerators / denominators of every group rate at one threshold."""
    _, n_cg, gs = _require_groups(stats)
    n_cg = n_cg.astype(np.float64)
    n_g = n_cg.sum(axis=0)
    # accepted at one column = the buckets above it (CountState.accepted without its full-size
    # copies of the tables)
    gen_acc = gs.gpos[:, :, column + 1 :].sum(axis=-1)  # (C, G)
    imp_acc = gs.gneg[:, :, column + 1 :].sum(axis=-1)  # each impostor pair twice (both classes)
    xgen = gs.xpos[:, :, :, xcol + 1 :].sum(axis=-1)  # (C, G, G)
    ximp = gs.xneg[:, :, :, xcol + 1 :].sum(axis=-1)
    eye = np.eye(n_cg.shape[1])
    return {
        "gen_acc": gen_acc.astype(np.float64),
        "gen_den": n_cg * (n_cg - 1) / 2,
        "imp_acc": imp_acc.astype(np.float64),
        "imp_den": n_cg * (n_g[None, :] - n_cg),
        "xgen_acc": xgen.astype(np.float64),
        "xgen_den": n_cg[:, :, None] * n_cg[:, None, :] - eye[None] * n_cg[:, :, None],
        "ximp_acc": ximp.astype(np.float64),
        "ximp_den": n_cg[:, :, None] * (n_g[None, None, :] - n_cg[:, None, :]),
    }


def _rates_from(tables: dict[str, np.ndarray], w: np.ndarray | None) -> dict[str, np.ndarray]:
    """Pooled rates from the per-class tables, weighted by class weights ``w`` ``(B, C)``
    (None: the original data, weight 1)."""

    def pool(name: str) -> np.ndarray:
        t = tables[name]
        if w is None:
            return np.asarray(t.sum(axis=0))
        return np.tensordot(w, t, axes=(1, 0))

    return {
        "tar": ratio_or_nan(pool("gen_acc"), pool("gen_den")),
        "far": ratio_or_nan(pool("imp_acc"), pool("imp_den")),
        "tar_matrix": ratio_or_nan(pool("xgen_acc"), pool("xgen_den")),
        "far_matrix": ratio_or_nan(pool("ximp_acc"), pool("ximp_den")),
    }


def group_operating_point_view(
    stats: PairStats,
    threshold: float,
    *,
    alpha: float = 0.5,
    ci: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> GroupOperatingPoint:
    """:class:`GroupOperatingPoint` read from statistics counted with groups and with
    ``threshold`` among the FAR thresholds or given thresholds (no pass over the pairs)."""
    names, _, _ = _require_groups(stats)
    t = check_finite(threshold, "threshold")
    check_bootstrap_args(ci, n_boot)
    if ci is not None:
        check_bootstrap_memory(stats.classes.shape[0], n_boot, group_bootstrap_cells(len(names)))
    cross = stats.cross_thresholds if stats.cross_thresholds is not None else np.empty(0)
    xcols = np.flatnonzero(cross == t)
    if xcols.shape[0] == 0:
        raise ValueError(
            f"threshold {t!r} has no cross-group counts; pass it to pair_statistics(thresholds=)"
            " or as a FAR target"
        )
    col = int(stats.columns_of([t])[0])
    tables = _group_tables(stats, col, int(xcols[0]))
    r = _rates_from(tables, None)
    far, tar = r["far"], r["tar"]
    intervals: dict[str, Interval] = {}
    summary = group_summary(far, 1.0 - tar, alpha)
    if ci is not None:
        w = class_bootstrap_weights(stats.classes.shape[0], n_boot, seed).astype(np.float64)
        rb = _rates_from(tables, w)
        intervals["far"] = interval_from_samples(rb["far"], ci, far)
        intervals["frr"] = interval_from_samples(1.0 - rb["tar"], ci, 1.0 - tar)
        sums = [group_summary(rb["far"][b], 1.0 - rb["tar"][b], alpha) for b in range(n_boot)]
        for key in SUMMARY_KEYS:
            vals = np.array([s[key] for s in sums], dtype=np.float64)
            intervals[key] = interval_from_samples(
                np.where(np.isinf(vals), np.nan, vals), ci, summary[key]
            )
    return GroupOperatingPoint(
        threshold=t,
        groups=names,
        far=far,
        frr=1.0 - tar,
        tar=tar,
        trr=1.0 - far,
        num_genuine=tables["gen_den"].sum(axis=0).astype(np.int64),
        num_impostor=(tables["imp_den"].sum(axis=0) / 2).astype(np.int64),
        far_matrix=r["far_matrix"],
        tar_matrix=r["tar_matrix"],
        summary=summary,
        intervals=intervals,
        score_scale=stats.score_scale,
    )


@dataclass(frozen=True)
class GroupConsistency:
    """Group OPIS / eps-OPIS on a global threshold grid (``G'`` groups with both pair kinds).

    Attributes:
        groups: ``(G',)`` the included groups; ``excluded_groups``: the others.
        thresholds: ``(K,)`` the grid (global-FAR range of all negative pairs of the set).
        tar, trr, utility: ``(G', K)`` within-group rates and utility.
        opis: mean over thresholds of the across-group variance of utility.
        epsilon_opis: ``{eps: value}`` (``m = max(1, floor(eps G'))`` groups at each end).
        intervals: class-bootstrap intervals of ``opis`` and each ``epsilon_opis_{eps}``.
        score_scale: the scale of ``thresholds`` (``"cosine"``, or the scorer's).
    """

    groups: np.ndarray
    excluded_groups: np.ndarray
    thresholds: np.ndarray
    tar: np.ndarray
    trr: np.ndarray
    utility: np.ndarray
    opis: float
    epsilon_opis: dict[float, float]
    intervals: dict[str, Interval]
    score_scale: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return {
            "groups": [str(g) for g in self.groups.tolist()],
            "excluded_groups": [str(g) for g in self.excluded_groups.tolist()],
            "thresholds": jsonable(self.thresholds),
            "utility": jsonable(self.utility),
            "opis": self.opis,
            "epsilon_opis": {f"{k:g}": v for k, v in self.epsilon_opis.items()},
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
            **scale_entry(self.score_scale),
        }


def group_bootstrap_cells(num_groups: int, num_thresholds: int = 0) -> int:
    """Float64 cells per resample that the group intervals hold at once (for
    :func:`~tcm.metrics.bootstrap.check_bootstrap_memory`): ``6 G^2`` for the rates and
    cross-group matrices, plus ``8 G K`` for group OPIS on ``K`` thresholds (resampled
    accepted counts, rates and utility; measured 6.5 - 7.2 ``G K``)."""
    g = int(num_groups)
    return 6 * g * g + 8 * g * int(num_thresholds)


def _groups_with_both_kinds(n_cg: np.ndarray, names: np.ndarray) -> np.ndarray:
    """``(G,)`` bool: groups with both genuine and impostor within-group pairs, from the
    ``(C, G)`` class-group sizes alone; ValueError if fewer than 2."""
    n = np.asarray(n_cg, dtype=np.float64)
    gen = (n * (n - 1) / 2).sum(axis=0)
    imp = (n * (n.sum(axis=0)[None, :] - n)).sum(axis=0)
    inc = np.asarray((gen > 0) & (imp > 0))
    if int(inc.sum()) < 2:
        raise ValueError(
            f"fewer than 2 groups with both genuine and impostor pairs ({int(inc.sum())} of "
            f"{names.shape[0]}): group OPIS compares at least 2 groups, each needing two samples "
            "of one class and two samples of different classes"
        )
    return inc


def check_group_consistency_input(index: PairIndex) -> None:
    """Raise before any pass over the pairs when group OPIS is undefined for ``index`` (fewer
    than 2 groups with both genuine and impostor pairs; decided by labels and groups alone)."""
    if index.group_codes is None or index.group_names is None:
        raise ValueError("group consistency needs groups: build the PairIndex with groups=")
    prep = index.prepared
    n_cg = np.zeros((prep.num_classes, index.group_names.shape[0]), dtype=np.int64)
    np.add.at(n_cg, (prep.codes, index.group_codes), 1)
    _groups_with_both_kinds(n_cg, index.group_names)


def group_consistency_view(
    stats: PairStats,
    *,
    grid: str = "opis",
    epsilons: Sequence[float] = (0.05, 0.10),
    ci: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> GroupConsistency:
    """:class:`GroupConsistency` from statistics counted with groups (no pass)."""
    names, n_cg, gs = _require_groups(stats)
    eps_l = [check_epsilon(e) for e in epsilons]
    check_bootstrap_args(ci, n_boot)
    if grid not in stats.grids:
        raise ValueError(f"no threshold grid {grid!r} was counted (have {sorted(stats.grids)})")
    g = stats.grids[grid]
    if ci is not None:
        cells = group_bootstrap_cells(len(names), g.thresholds.shape[0])
        check_bootstrap_memory(stats.classes.shape[0], n_boot, cells)
    n = n_cg.astype(np.float64)
    n_g = n.sum(axis=0)
    gen = CountState.accepted(gs.gpos)[:, :, g.columns].astype(np.float64)  # (C, G, K)
    imp = CountState.accepted(gs.gneg)[:, :, g.columns].astype(np.float64)
    gen_den = n * (n - 1) / 2  # (C, G)
    imp_den = n * (n_g[None, :] - n)
    inc = _groups_with_both_kinds(n_cg, names)

    def table(w: np.ndarray | None) -> np.ndarray:
        if w is None:
            tar = gen.sum(axis=0) / gen_den.sum(axis=0)[:, None]
            far = imp.sum(axis=0) / imp_den.sum(axis=0)[:, None]
        else:
            tar = ratio_or_nan(np.tensordot(w, gen, axes=(1, 0)), (w @ gen_den)[:, :, None])
            far = ratio_or_nan(np.tensordot(w, imp, axes=(1, 0)), (w @ imp_den)[:, :, None])
        return np.asarray(utility(tar, 1.0 - far))

    with np.errstate(divide="ignore", invalid="ignore"):
        tar0 = (gen.sum(axis=0) / gen_den.sum(axis=0)[:, None])[inc]
        trr0 = 1.0 - (imp.sum(axis=0) / imp_den.sum(axis=0)[:, None])[inc]
    u = np.asarray(utility(tar0, trr0))
    res_opis = opis_from_utility(u)
    res_eps = {e: epsilon_opis_from_utility(u, e) for e in eps_l}
    intervals: dict[str, Interval] = {}
    if ci is not None:
        w = class_bootstrap_weights(stats.classes.shape[0], n_boot, seed).astype(np.float64)
        ub = table(w)[:, inc, :]  # (B, G', K)
        ok = np.isfinite(ub).all(axis=(1, 2))
        ob = np.array([opis_from_utility(ub[b]) if ok[b] else np.nan for b in range(n_boot)])
        intervals["opis"] = interval_from_samples(ob, ci, res_opis)
        for e in eps_l:
            eb = np.array(
                [epsilon_opis_from_utility(ub[b], e) if ok[b] else np.nan for b in range(n_boot)]
            )
            intervals[f"epsilon_opis_{e:g}"] = interval_from_samples(eb, ci, res_eps[e])
    return GroupConsistency(
        groups=names[inc],
        excluded_groups=names[~inc],
        thresholds=g.thresholds,
        tar=tar0,
        trr=trr0,
        utility=u,
        opis=res_opis,
        epsilon_opis=res_eps,
        intervals=intervals,
        score_scale=stats.score_scale,
    )


def group_operating_point(
    embeddings: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    threshold: float,
    *,
    alpha: float = 0.5,
    ci: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    block_size: int | None = None,
    scorer: Scorer | None = None,
) -> GroupOperatingPoint:
    """Per-group FAR/FRR, cross-group matrices and differential summaries at ``threshold``
    (one count sweep; see the module docstring).

    Raises:
        ValueError: groups of the wrong length, bad threshold / alpha / ci / n_boot, and the
            errors of :class:`~tcm.metrics.statistics.PairIndex`.
    """
    t = check_finite(threshold, "threshold")
    check_bootstrap_args(ci, n_boot)
    index = PairIndex(embeddings, labels, groups, block_size=block_size, scorer=scorer)
    if ci is not None and index.group_names is not None:
        cells = group_bootstrap_cells(index.group_names.shape[0])
        check_bootstrap_memory(index.classes.shape[0], n_boot, cells)
    stats = pair_statistics(index, far_range=None, thresholds=[t])
    return group_operating_point_view(stats, t, alpha=alpha, ci=ci, n_boot=n_boot, seed=seed)


def group_consistency(
    embeddings: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    *,
    far_range: tuple[float, float] = (1e-2, 1e-1),
    num_thresholds: int = 101,
    epsilons: Sequence[float] = (0.05, 0.10),
    ci: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    block_size: int | None = None,
    scorer: Scorer | None = None,
) -> GroupConsistency:
    """Group OPIS / eps-OPIS (classes replaced by groups; the grid spans the global-FAR range
    of all negative pairs of the set). Two passes (quantiles, counts)."""
    check_bootstrap_args(ci, n_boot)
    k = check_num_thresholds(num_thresholds)
    index = PairIndex(embeddings, labels, groups, block_size=block_size, scorer=scorer)
    check_group_consistency_input(index)
    if ci is not None and index.group_names is not None:
        cells = group_bootstrap_cells(index.group_names.shape[0], k)
        check_bootstrap_memory(index.classes.shape[0], n_boot, cells)
    stats = pair_statistics(index, far_range=far_range, num_thresholds=num_thresholds)
    return group_consistency_view(stats, epsilons=epsilons, ci=ci, n_boot=n_boot, seed=seed)
