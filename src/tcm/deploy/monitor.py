"""FAR drift monitoring of a deployed threshold on new data, window by window.

New samples are split into consecutive windows of ``window`` rows (file order = time order; a
trailing window with fewer than 2 samples joins the previous one). In each window the pairs of
its samples are scored like the calibration set's (all pairs, blocked by
:class:`~tcm.deploy.matcher.Matcher`, never ``n x n`` at once) and compared with the contract:

**With labels** (the truth is known for the window): global FAR and TAR at ``t`` with
class-bootstrap intervals (:func:`tcm.metrics.bootstrap_ratio`) and the naive Clopper-Pearson
interval on impostor pairs; the **FAR alarm** fires when the bootstrap interval's lower end
exceeds ``k x target_far``.

**Without labels** (always computed):

* the acceptance rate ``A`` of all pairs at ``t``. Since ``A = (1 - pi) FAR + pi TAR`` with
  ``pi`` the window's share of genuine pairs, ``FAR <= A / (1 - pi)``; the report states the
  bound with the calibration set's ``pi`` (it holds while genuine pairs are no more common than
  there). When genuine pairs are rare, ``A`` itself is about an upper bound of FAR;
* the shift of the **top-1** score distribution (each sample's best score among the other
  samples of random subsets of the contract's reference size, so it compares like with like)
  and of the **tail** scores (all pairs at or above ``t_tail``, the calibration threshold of
  impostor FAR ``tail_far``: mostly impostor pairs when genuine pairs are rare; at most ``n``
  of them per window of ``n`` samples, since pairs sharing a sample are dependent) against the
  calibration reference samples stored in the contract: two-sample Kolmogorov-Smirnov and
  Cramer-von Mises tests (scipy). The **drift alarm** fires when a p-value is below
  ``drift_alpha`` divided by the number of tests over all windows (Bonferroni). With labels
  the impostor-only tail is tested too, for information (no alarm: an impostor tail also moves
  with the set of classes, so windows of other classes would raise it);
* with a labelled gallery: the share of samples matching >= 2 distinct gallery identities at
  ``t`` (an ambiguity signal; no reference).

With groups, the FAR / TAR / acceptance rate are also given per group (pairs within a group).

With a contract on a fitted scorer's scale, every score above (pairs, tail, top-1, gallery
matches) is that scorer's (``scorer=``, :meth:`~tcm.deploy.contract.Threshold.load_scorer`),
like the contract's reference samples.

Example:
    >>> import numpy as np
    >>> from tcm.deploy.guarantee import calibrate_threshold
    >>> rng = np.random.default_rng(0)
    >>> centers = rng.normal(size=(30, 8))
    >>> y = np.repeat(np.arange(30), 6)
    >>> x = rng.normal(size=(180, 8)) + 2.0 * centers[y]
    >>> c = calibrate_threshold(x, y, far=0.01, n_boot=200)
    >>> r = monitor(c, x, y, n_boot=200)
    >>> r.alarm
    False
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tcm._validation import ArrayLike, ceil_to_dtype, encode_labels
from tcm.deploy.contract import Threshold
from tcm.deploy.matcher import (
    Matcher,
    MatchResult,
    float64_state,
    normalized_rows,
    scored_block,
)

if TYPE_CHECKING:
    from tcm.scoring import Scorer

__all__ = [
    "REFERENCE_SAMPLES",
    "REFERENCE_SUBSET",
    "TAIL_FAR",
    "MonitorResult",
    "calibration_reference",
    "monitor",
    "windows",
]

TAIL_FAR = 0.01
"""The tail threshold ``t_tail`` is the calibration threshold of this impostor FAR (or ``t``)."""
REFERENCE_SAMPLES = 2000
"""Most reference scores of each kind stored in a contract (a seeded random subset)."""
REFERENCE_SUBSET = 64
"""Subset size ``m`` of the top-1 reference (each score: best among ``m - 1`` others)."""


def _subsample(a: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if a.shape[0] <= size:
        return np.sort(a)
    return np.sort(rng.choice(a, size=size, replace=False))


def _stored(a: np.ndarray) -> list[float]:
    """Reference scores as stored in a contract (6 decimals: ample for the drift tests)."""
    return [round(float(v), 6) for v in a.tolist()]


def _self_pairs(x: Any, t: float, scorer: Scorer | None = None) -> MatchResult:
    """Pairs ``i < j`` of rows of ``x`` with score ``>= t`` (blocked)."""
    r = Matcher(x, t, scorer=scorer).match(x)
    keep = r.query_index < r.gallery_index
    return MatchResult(r.query_index[keep], r.gallery_index[keep], r.score[keep], r.accepted[keep])


def _top1(x: Any, m: int, rng: np.random.Generator, scorer: Scorer | None = None) -> np.ndarray:
    """Best score of each sample among the other ``m - 1`` of its random subset (subsets of
    exactly ``m`` rows; the remainder is left out)."""
    n = int(x.shape[0])
    perm = rng.permutation(n)
    out: list[np.ndarray] = []
    for a in range(0, n - m + 1, m):
        sub = x[perm[a : a + m]]
        if scorer is not None and scorer.kind != "cosine":
            out.append(_top1_scored(sub, scorer))
            continue
        r = Matcher(sub, -1.0).match(sub, top_k=2)
        other = r.query_index != r.gallery_index
        q, s = r.query_index[other], r.score[other]
        first = np.ones(q.shape[0], bool)
        first[1:] = q[1:] != q[:-1]
        out.append(s[first])
    return np.concatenate(out) if out else np.empty(0, np.float32)


def _top1_scored(sub: torch.Tensor, scorer: Scorer) -> np.ndarray:
    """Each row's best score among the other rows of ``sub`` (a small subset), by ``scorer``:
    the dense subset matrix without its diagonal (a row's score with itself need not be its
    largest on a scorer's scale, so it is left out by position, not by rank)."""
    state = float64_state(scorer.prepare(sub))
    s = scored_block(scorer, sub @ sub.T, state, state)
    s.fill_diagonal_(-math.inf)
    best: np.ndarray = s.max(dim=1).values.numpy()
    return best


def calibration_reference(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    threshold: float,
    seed: int = 0,
    scorer: Scorer | None = None,
) -> dict[str, Any]:
    """The ``reference`` field of a contract: tail and top-1 score samples of the calibration
    set, its acceptance rate at ``threshold`` and its share of genuine pairs (``scorer``: all
    on its scale; ``threshold`` too)."""
    from tcm.metrics import PairIndex, pair_statistics

    x = normalized_rows(embeddings, "calibration embeddings")
    codes, _ = encode_labels(labels, int(x.shape[0]), "calibration labels")
    index = PairIndex(x, codes, scorer=scorer)
    stats = pair_statistics(index, fars=[TAIL_FAR], far_range=None)
    t_tail = min(stats.threshold_at_far(TAIL_FAR), float(threshold))
    rng = np.random.default_rng(seed)
    pairs = _self_pairs(x, t_tail, scorer)
    imp = codes[pairs.query_index] != codes[pairs.gallery_index]
    n = int(x.shape[0])
    total = n * (n - 1) // 2
    m = min(n, REFERENCE_SUBSET)
    t32 = ceil_to_dtype(float(threshold), torch.float32)
    return {
        "tail_far": TAIL_FAR,
        "tail_threshold": t_tail,
        "tail_share": int(pairs.score.shape[0]) / total,
        "impostor_tail": _stored(_subsample(pairs.score[imp], REFERENCE_SAMPLES, rng)),
        "pair_tail": _stored(_subsample(pairs.score, REFERENCE_SAMPLES, rng)),
        "top1_subset": m,
        "top1": _stored(_subsample(_top1(x, m, rng, scorer), REFERENCE_SAMPLES, rng)),
        "acceptance_rate": int(np.count_nonzero(pairs.score >= t32)) / total,
        "genuine_share": index.num_positive_pairs / total,
    }


def windows(n: int, window: int | None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of consecutive windows of ``window`` rows (``None``: one); a
    trailing window with fewer than 2 rows joins the previous one.

    Raises:
        ValueError: ``n < 2`` (no pairs) or ``window < 2``.

    Example:
        >>> windows(7, 3)
        [(0, 3), (3, 7)]
    """
    if n < 2:
        raise ValueError(f"the new data has {n} sample(s): a window needs >= 2 (no pairs)")
    if window is None:
        return [(0, n)]
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an integer >= 2 (samples per window); got {window!r}")
    out = [(a, min(a + window, n)) for a in range(0, n, window)]
    if len(out) > 1 and out[-1][1] - out[-1][0] < 2:
        out[-2] = (out[-2][0], n)
        out.pop()
    return out


@dataclass
class MonitorResult:
    """Per-window signals (:meth:`to_dict` for JSON).

    Attributes:
        windows: one dict per window (keys in docs/deploy.md).
        alarm: any FAR or drift alarm.
        settings: threshold, target, k, levels, the bound statement.
    """

    windows: list[dict[str, Any]]
    alarm: bool
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return {"alarm": self.alarm, **self.settings, "windows": self.windows}


def _ks_cvm(new: np.ndarray, ref: np.ndarray, min_size: int = 5) -> dict[str, Any]:
    from scipy.stats import cramervonmises_2samp, ks_2samp

    if new.shape[0] < min_size or ref.shape[0] < min_size:
        return {
            "n": int(new.shape[0]),
            "n_reference": int(ref.shape[0]),
            "ks": None,
            "ks_p": None,
            "cvm": None,
            "cvm_p": None,
            "note": f"fewer than {min_size} scores",
        }
    with warnings.catch_warnings():  # "exact calculation unsuccessful": the asymptotic p
        warnings.simplefilter("ignore", RuntimeWarning)
        ks = ks_2samp(new, ref)
    cvm = cramervonmises_2samp(new, ref, method="asymptotic")
    return {
        "n": int(new.shape[0]),
        "n_reference": int(ref.shape[0]),
        "median_shift": float(np.median(new) - np.median(ref)),
        "ks": float(ks.statistic),
        "ks_p": float(ks.pvalue),
        "cvm": float(cvm.statistic),
        "cvm_p": float(cvm.pvalue),
    }


def _labelled_rates(
    x: Any,
    codes: np.ndarray,
    t: float,
    ci: float,
    n_boot: int,
    seed: int,
    scorer: Scorer | None = None,
) -> dict[str, Any]:
    from tcm.deploy.guarantee import clopper_pearson_upper
    from tcm.metrics import PairIndex, bootstrap_ratio, pair_statistics

    index = PairIndex(x, codes, scorer=scorer)
    stats = pair_statistics(index, thresholds=[t], far_range=None)
    col = stats.columns_of([t])
    pos_acc, neg_acc = stats.accepted()
    nc = stats.class_sizes.astype(np.float64)
    pos_den, neg_den = nc * (nc - 1) / 2, nc * (stats.num_samples - nc)
    out: dict[str, Any] = {
        "num_genuine_pairs": int(index.num_positive_pairs),
        "num_impostor_pairs": int(index.num_negative_pairs),
    }
    for key, acc, den in (("far", neg_acc, neg_den), ("tar", pos_acc, pos_den)):
        if den.sum() == 0:
            out[key] = None
            out[f"{key}_interval"] = None
            continue
        iv = bootstrap_ratio(acc[:, col[0]], den, ci=ci, n_boot=n_boot, seed=seed)
        out[key] = float(iv.point)  # type: ignore[arg-type]
        lo, hi = float(iv.lo), float(iv.hi)  # type: ignore[arg-type]
        out[f"{key}_interval"] = {"lo": lo, "hi": hi, "ci": ci, "method": "class_bootstrap"}
    m = index.num_negative_pairs
    if m:
        k = int(neg_acc[:, col[0]].sum() // 2)
        from scipy.stats import beta

        a = (1.0 - ci) / 2.0
        lo = 0.0 if k == 0 else float(beta.ppf(a, k, m - k + 1))
        hi = float(clopper_pearson_upper(np.array([k]), m, ci)[0])
        out["far_clopper_pearson"] = {"lo": lo, "hi": hi, "ci": ci}
    return out


def _window_signals(
    c: Threshold,
    x: Any,
    codes: np.ndarray | None,
    *,
    ci: float,
    n_boot: int,
    seed: int,
    scores: bool,
    scorer: Scorer | None = None,
) -> dict[str, Any]:
    ref = c.reference
    t = c.threshold
    t_tail = float(ref.get("tail_threshold", t))
    n = int(x.shape[0])
    total = n * (n - 1) // 2
    pairs = _self_pairs(x, min(t_tail, t), scorer)
    t32 = ceil_to_dtype(t, torch.float32)
    acc = int(np.count_nonzero(pairs.score >= t32))
    a = acc / total
    pi = ref.get("genuine_share")
    w: dict[str, Any] = {
        "num_samples": n,
        "num_pairs": total,
        "acceptance_rate": a,
        "far_upper_bound": None if pi is None or pi >= 1 else a / (1.0 - pi),
    }
    if codes is not None:
        w.update(_labelled_rates(x, codes, t, ci, n_boot, seed, scorer))
    if not scores or not ref:
        return w
    rng = np.random.default_rng(seed)
    in_tail = pairs.score >= ceil_to_dtype(t_tail, torch.float32)
    # at most one tail pair per sample on average: pairs sharing samples are dependent
    size = max(n, 5)
    tail = _subsample(pairs.score[in_tail].astype(np.float64), size, rng)
    ref_tail = np.asarray(ref.get("pair_tail", []), np.float64)
    share = int(np.count_nonzero(in_tail)) / total
    w["tail"] = {"pairs": "all", "share": share, **_ks_cvm(tail, ref_tail)}
    if codes is not None:  # informational only (no alarm): impostor tails also move with the
        # set of classes, which a labelled window of other classes changes
        imp = codes[pairs.query_index] != codes[pairs.gallery_index]
        imp_tail = _subsample(pairs.score[in_tail & imp].astype(np.float64), size, rng)
        ref_imp = np.asarray(ref.get("impostor_tail", []), np.float64)
        w["impostor_tail"] = _ks_cvm(imp_tail, ref_imp)
    m = int(ref.get("top1_subset", 0))
    if m >= 2 and n >= m:
        top1 = _top1(x, m, rng, scorer).astype(np.float64)
        w["top1"] = {"subset": m, **_ks_cvm(top1, np.asarray(ref.get("top1", []), np.float64))}
    else:
        w["top1"] = {"subset": m, "note": f"window smaller than the reference subset size {m}"}
    return w


def _multi_identity_share(matcher: Matcher, glab: np.ndarray, xw: torch.Tensor) -> float:
    """Share of the window's queries accepted against two or more gallery identities."""
    r = matcher.match(xw)
    nw = int(xw.shape[0])
    pairs = np.unique(np.stack([r.query_index, glab[r.gallery_index]]), axis=1)
    per_q = np.bincount(pairs[0], minlength=nw) if pairs.size else np.zeros(nw)
    return float(np.mean(per_q >= 2))


def _group_signals(
    contract: Threshold,
    xw: torch.Tensor,
    cw: np.ndarray | None,
    gw_codes: np.ndarray,
    gnames: np.ndarray,
    *,
    ci: float,
    n_boot: int,
    seed: int,
    scorer: Scorer | None = None,
) -> dict[str, Any]:
    """Per-group signals of one window (``gw_codes``: the window's group codes)."""
    per: dict[str, Any] = {}
    for gi, name in enumerate(gnames.tolist()):
        sel = np.flatnonzero(gw_codes == gi)
        if sel.shape[0] < 2:
            per[str(name)] = {"num_samples": int(sel.shape[0]), "note": "< 2 samples"}
            continue
        per[str(name)] = _window_signals(
            contract,
            xw[sel],
            None if cw is None else cw[sel],
            ci=ci,
            n_boot=n_boot,
            seed=seed,
            scores=False,
            scorer=scorer,
        )
    return per


def _set_alarms(
    out: list[dict[str, Any]], far_alarm_level: float, drift_alpha: float
) -> tuple[int, float, bool]:
    """Set each window's (and group's) ``far_alarm`` and ``drift_alarm`` in place; returns the
    number of drift tests, their Bonferroni level and whether any alarm fired."""
    num_tests = sum(
        1
        for w in out
        for key in ("tail", "top1")
        for p in ("ks_p", "cvm_p")
        if w.get(key, {}).get(p) is not None
    )
    level = drift_alpha / max(num_tests, 1)
    any_alarm = False
    for w in out:
        far_iv = w.get("far_interval")
        w["far_alarm"] = bool(far_iv is not None and far_iv["lo"] > far_alarm_level)
        ps = [
            w.get(key, {}).get(p)
            for key in ("tail", "top1")
            for p in ("ks_p", "cvm_p")
            if w.get(key, {}).get(p) is not None
        ]
        w["drift_alarm"] = bool(ps and min(ps) < level)
        for gw in (w.get("groups") or {}).values():
            giv = gw.get("far_interval")
            gw["far_alarm"] = bool(giv is not None and giv["lo"] > far_alarm_level)
            w["far_alarm"] = w["far_alarm"] or gw["far_alarm"]
        any_alarm = any_alarm or w["far_alarm"] or w["drift_alarm"]
    return num_tests, level, any_alarm


def monitor(
    contract: Threshold,
    embeddings: ArrayLike,
    labels: ArrayLike | None = None,
    groups: ArrayLike | None = None,
    *,
    window: int | None = None,
    k: float = 2.0,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    drift_alpha: float = 0.01,
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    scorer: Scorer | None = None,
) -> MonitorResult:
    """Monitor a deployed threshold on new samples (module docstring).

    Args:
        contract: the deployed :class:`~tcm.deploy.contract.Threshold`.
        embeddings: ``(N, D)`` new samples in time order.
        labels: ``(N,)`` true identities when known (FAR / TAR and the FAR alarm).
        groups: ``(N,)`` groups: per-group FAR / TAR / acceptance rate.
        window: samples per window (``None``: one window).
        k: FAR alarm when the FAR interval's lower end exceeds ``k x target_far``.
        ci, n_boot, seed: the intervals.
        drift_alpha: family-wise level of the drift tests.
        gallery, gallery_labels: a labelled gallery for the ambiguity signal.
        scorer: the contract's fitted scorer when its threshold is on a scorer's scale
            (``contract.load_scorer()``); ``None`` for a cosine contract.

    Raises:
        ValueError / ContractError: empty data or window, NaN rows, another dimension, bad
            options, labels / groups of the wrong length, a scorer the contract does not name
            (or none for a scorer contract).
    """
    if not (isinstance(k, (int, float)) and k > 0 and math.isfinite(k)):
        raise ValueError(f"k must be a number > 0; got {k!r}")
    if not 0.0 < drift_alpha < 1.0:
        raise ValueError(f"drift_alpha must lie in (0, 1); got {drift_alpha!r}")
    x = normalized_rows(embeddings, "new embeddings")
    contract.check_applicable(int(x.shape[1]), scorer=scorer, what="the new embeddings")
    n = int(x.shape[0])
    spans = windows(n, window)
    codes = None if labels is None else encode_labels(labels, n, "labels")[0]
    gcodes: np.ndarray | None = None
    gnames: np.ndarray | None = None
    if groups is not None:
        gcodes, gnames = encode_labels(groups, n, "groups")
    matcher = None
    glab: np.ndarray | None = None
    if gallery is not None:
        if gallery_labels is None:
            raise ValueError("the ambiguity signal needs the gallery's labels")
        matcher = Matcher(gallery, contract, scorer=scorer)
        glab = encode_labels(gallery_labels, matcher.size, "gallery labels")[0]
    out: list[dict[str, Any]] = []
    for i, (a, b) in enumerate(spans):
        xw = x[a:b]
        cw = None if codes is None else codes[a:b]
        w: dict[str, Any] = {"window": i, "start": a, "stop": b}
        w.update(
            _window_signals(
                contract, xw, cw, ci=ci, n_boot=n_boot, seed=seed, scores=True, scorer=scorer
            )
        )
        if matcher is not None and glab is not None:
            w["multi_identity_share"] = _multi_identity_share(matcher, glab, xw)
        if gcodes is not None and gnames is not None:
            w["groups"] = _group_signals(
                contract,
                xw,
                cw,
                gcodes[a:b],
                gnames,
                ci=ci,
                n_boot=n_boot,
                seed=seed,
                scorer=scorer,
            )
        out.append(w)
    num_tests, level, any_alarm = _set_alarms(out, k * contract.target_far, drift_alpha)
    settings = _monitor_settings(
        contract,
        k=k,
        ci=ci,
        n_boot=n_boot,
        drift_alpha=drift_alpha,
        level=level,
        num_tests=num_tests,
        labelled=labels is not None,
    )
    return MonitorResult(windows=out, alarm=any_alarm, settings=settings)


def _monitor_settings(
    contract: Threshold,
    *,
    k: float,
    ci: float,
    n_boot: int,
    drift_alpha: float,
    level: float,
    num_tests: int,
    labelled: bool,
) -> dict[str, Any]:
    """The ``settings`` block of a :class:`MonitorResult`."""
    pi = contract.reference.get("genuine_share")
    return {
        "threshold": contract.threshold,
        **(
            {"score": contract.score["kind"], "score_scale": contract.score.get("scale")}
            if contract.uses_scorer
            else {}
        ),
        "target_far": contract.target_far,
        "k": k,
        "far_alarm_level": k * contract.target_far,
        "ci": ci,
        "n_boot": n_boot,
        "drift_alpha": drift_alpha,
        "drift_test_level": level,
        "num_drift_tests": num_tests,
        "labelled": labelled,
        "calibration_acceptance_rate": contract.reference.get("acceptance_rate"),
        "bound": (
            "FAR <= acceptance_rate / (1 - pi), pi = the window's share of genuine pairs; "
            f"far_upper_bound uses the calibration set's pi = {pi:.3g} (valid while genuine "
            "pairs are no more common than there)"
            if pi is not None
            else "no calibration reference in the contract"
        ),
    }
