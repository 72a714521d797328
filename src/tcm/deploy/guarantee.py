"""Calibrating a threshold contract, with an optional guaranteed-FAR threshold.

The point estimate ``t_point = quantile(impostor scores, 1 - f)`` has calibration FAR ``f``; the
FAR it gives on new data from the same distribution is above ``f`` about half the time. The
**guaranteed** threshold is the smallest ``t`` at which the upper end of a ``1 - alpha``
interval on FAR is ``<= f`` (and stays so at every higher candidate), so the deployed FAR is
``<= f`` with probability about ``1 - alpha / 2`` (the upper end of a two-sided interval):

* **class bootstrap** (the one used): classes are resampled with replacement, because impostor
  pairs that share a class (or a sample) are dependent; the FAR of a resample is the pooled
  ratio of accepted to all impostor pairs (:func:`tcm.metrics.bootstrap_ratio`);
* **Clopper-Pearson** on the ``M`` impostor pairs as if they were independent (the naive
  bound, reported beside it: it is too narrow when pairs share classes).

Candidates are the exact impostor quantiles at ``f * 2^(-j/8)``, ``j = 0, 1, ...`` down to
``max(f / 1000, 1 / M)``: one tail pass and one count sweep over the pairs
(:func:`tcm.metrics.pair_statistics`), the intervals from the count tables.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(20), 5)
    >>> x = rng.normal(size=(100, 8)) + 1.5 * rng.normal(size=(20, 8))[y]
    >>> c = calibrate_threshold(x, y, far=0.05, guarantee=True, n_boot=200)
    >>> c.method, c.threshold >= c.guarantee["point"]["threshold"]
    ('upper_bound', True)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcm._validation import ArrayLike, encode_labels
from tcm.deploy.contract import Threshold, cosine_score, read_scorer_file
from tcm.metrics import PairIndex, bootstrap_ratio, pair_statistics

__all__ = ["GRID_STEPS_PER_OCTAVE", "calibrate_threshold", "clopper_pearson_upper"]

GRID_STEPS_PER_OCTAVE = 8
"""Candidate FARs per halving of the FAR (resolution ``2^(1/8)``, about 9 %)."""
GRID_DEPTH = 1000.0
"""The smallest candidate FAR is ``target / GRID_DEPTH`` (or ``1 / M``, whichever is larger)."""


def clopper_pearson_upper(k: np.ndarray, n: int, ci: float) -> np.ndarray:
    """Upper end of the two-sided Clopper-Pearson ``ci`` interval of ``k`` successes in ``n``.

    Example:
        >>> round(float(clopper_pearson_upper(np.array([0]), 100, 0.95)[0]), 4)
        0.0362
    """
    from scipy.stats import beta

    kk = np.asarray(k, dtype=np.float64)
    a = (1.0 - ci) / 2.0
    hi = beta.ppf(1.0 - a, kk + 1.0, np.maximum(n - kk, 1e-300))
    return np.asarray(np.where(kk >= n, 1.0, hi), dtype=np.float64)


def _candidates(far: float, num_impostor: int) -> list[float]:
    lo = max(far / GRID_DEPTH, 1.0 / max(num_impostor, 1))
    out = [far]
    j = 1
    while True:
        f = far * 2.0 ** (-j / GRID_STEPS_PER_OCTAVE)
        if f < lo:
            break
        out.append(f)
        j += 1
    return out


def _first_safe(upper: np.ndarray, far: float) -> int | None:
    """Index (into FAR-descending candidates) of the largest FAR whose bound, and the bound of
    every smaller candidate FAR (higher threshold), is ``<= far``."""
    ok = upper <= far
    if not bool(ok[-1]):
        return None
    bad = np.flatnonzero(~ok)
    return 0 if bad.size == 0 else int(bad[-1]) + 1


@dataclass(frozen=True)
class _Sweep:
    """The candidate thresholds (FAR-descending) with their rates and FAR / TAR intervals."""

    fars: list[float]
    ths: np.ndarray
    gfar: np.ndarray
    gtar: np.ndarray
    boot_lo: np.ndarray
    boot_hi: np.ndarray
    tar_lo: np.ndarray
    tar_hi: np.ndarray
    cp_hi: np.ndarray


def _sweep(index: PairIndex, far: float, *, ci: float, n_boot: int, seed: int) -> _Sweep:
    """Rates, class-bootstrap intervals and Clopper-Pearson bounds at every candidate FAR."""
    m_imp = index.num_negative_pairs
    fars = _candidates(float(far), m_imp)
    stats = pair_statistics(index, fars=fars, far_range=None)
    ths = np.asarray([stats.threshold_at_far(f) for f in fars])
    cols = stats.columns_of(ths)
    r = stats.rates(cols)
    pos_acc, neg_acc = stats.accepted()
    nc = stats.class_sizes.astype(np.float64)
    pos_den = nc * (nc - 1) / 2
    neg_den = nc * (stats.num_samples - nc)
    k_cols = len(fars)
    neg_iv = bootstrap_ratio(
        neg_acc[:, cols], np.repeat(neg_den[:, None], k_cols, 1), ci=ci, n_boot=n_boot, seed=seed
    )
    pos_iv = bootstrap_ratio(
        pos_acc[:, cols], np.repeat(pos_den[:, None], k_cols, 1), ci=ci, n_boot=n_boot, seed=seed
    )
    k_acc = neg_acc[:, cols].sum(axis=0) // 2
    return _Sweep(
        fars=fars,
        ths=ths,
        gfar=r["global_far"],
        gtar=r["global_tar"],
        boot_lo=np.atleast_1d(np.asarray(neg_iv.lo, dtype=np.float64)),
        boot_hi=np.atleast_1d(np.asarray(neg_iv.hi, dtype=np.float64)),
        tar_lo=np.atleast_1d(np.asarray(pos_iv.lo, dtype=np.float64)),
        tar_hi=np.atleast_1d(np.asarray(pos_iv.hi, dtype=np.float64)),
        cp_hi=clopper_pearson_upper(k_acc, m_imp, ci),
    )


def _guarantee_report(
    sw: _Sweep, far: float, *, ci: float, n_boot: int, seed: int
) -> tuple[dict[str, Any], int | None]:
    """The contract's ``guarantee`` report and the class-bootstrap safe candidate (or None)."""

    def _entry(i: int | None, upper: np.ndarray) -> dict[str, Any]:
        if i is None:
            return {"threshold": None, "far": None, "far_upper": None, "tar": None}
        return {
            "threshold": float(sw.ths[i]),
            "candidate_far": float(sw.fars[i]),
            "far": float(sw.gfar[i]),
            "far_upper": float(upper[i]),
            "tar": float(sw.gtar[i]),
        }

    i_boot = _first_safe(sw.boot_hi, far)
    i_cp = _first_safe(sw.cp_hi, far)
    rep: dict[str, Any] = {
        "ci": ci,
        "alpha": 1.0 - ci,
        "n_boot": n_boot,
        "seed": seed,
        "num_candidates": len(sw.fars),
        "resolution": 2.0 ** (1.0 / GRID_STEPS_PER_OCTAVE),
        "point": _entry(0, sw.boot_hi),
        "class_bootstrap": _entry(i_boot, sw.boot_hi),
        "clopper_pearson": _entry(i_cp, sw.cp_hi),
    }
    for key in ("class_bootstrap", "clopper_pearson"):
        e = rep[key]
        e["tar_cost"] = None if e["tar"] is None else float(sw.gtar[0]) - e["tar"]
    return rep, i_boot


def _calibration_record(
    index: PairIndex, embeddings: ArrayLike, labels: ArrayLike, source: str | None
) -> dict[str, Any]:
    """The contract's ``calibration`` block: set sizes, groups, content hash and source."""
    from tcm.scoring.base import sha256_arrays

    prep = index.prepared
    return {
        "num_samples": int(prep.n),
        "num_classes": int(prep.num_classes),
        "num_genuine_pairs": int(index.num_positive_pairs),
        "num_impostor_pairs": int(index.num_negative_pairs),
        "num_groups": 0 if index.group_names is None else int(index.group_names.shape[0]),
        "groups": [] if index.group_names is None else [str(g) for g in index.group_names],
        "sha256": _content_hash(embeddings, labels, sha256_arrays),
        "source": source,
    }


def calibrate_threshold(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    far: float,
    groups: ArrayLike | None = None,
    guarantee: bool = False,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    source: str | None = None,
    reference: bool = True,
    scorer: str | os.PathLike[str] | None = None,
) -> Threshold:
    """A :class:`~tcm.deploy.contract.Threshold` for target FAR ``far`` on a labelled
    calibration set (the point threshold, or with ``guarantee=True`` the class-bootstrap upper
    bound threshold; the guarantee report is filled in either way).

    Args:
        embeddings, labels: the calibration set ``(N, D)`` / ``(N,)``.
        far: target global FAR in (0, 1).
        groups: optional ``(N,)`` groups (recorded in the contract).
        guarantee: choose the guaranteed-FAR threshold instead of the point estimate.
        ci: interval level ``1 - alpha``.
        n_boot, seed: the class bootstrap.
        source: where the calibration set came from (recorded).
        reference: also record the monitor's reference score samples.
        scorer: the file of a fitted scorer (:meth:`tcm.scoring.Scorer.save`; save a fitted
            scorer first): every pair is scored by it, so the threshold, rates, intervals,
            guarantee and reference samples are on its scale; the contract's ``score`` names
            the file, its SHA-256, kind, scale and dimension (:func:`~tcm.deploy.contract.
            scorer_score`). ``None``: the cosine.

    Raises:
        ValueError: bad input, too few classes, a calibration set too small to guarantee
            ``far`` (even the smallest candidate's upper bound is above it), a scorer that is
            not a readable scorer file, of another dimension or needing per-sample groups.
    """
    if isinstance(far, bool) or not isinstance(far, (int, float)) or not 0.0 < far < 1.0:
        raise ValueError(f"far must lie in (0, 1); got {far!r}")
    sc, score = None, cosine_score()
    if scorer is not None:
        if not isinstance(scorer, (str, os.PathLike)):
            raise ValueError(
                "scorer must be the path of a saved scorer file (Scorer.save(path) first): the "
                f"contract names the file that the matcher loads; got {type(scorer).__name__}"
            )
        sc, score = read_scorer_file(scorer)
    index = PairIndex(embeddings, labels, groups, scorer=sc)
    if index.num_negative_pairs == 0 or index.num_positive_pairs == 0:
        raise ValueError(
            "the calibration set needs impostor and genuine pairs (>= 2 classes, one with >= 2 "
            "samples)"
        )
    sw = _sweep(index, far, ci=ci, n_boot=n_boot, seed=seed)
    rep, i_boot = _guarantee_report(sw, far, ci=ci, n_boot=n_boot, seed=seed)
    if guarantee and i_boot is None:
        raise ValueError(
            f"the calibration set is too small to guarantee FAR {far:g} at {ci:.0%}: even at "
            f"threshold {sw.ths[-1]:.6f} (FAR {sw.gfar[-1]:.2e}) the class-bootstrap upper bound "
            f"is {sw.boot_hi[-1]:.2e}; use more classes / samples or a larger target FAR"
        )
    i = i_boot if guarantee and i_boot is not None else 0
    t = float(sw.ths[i])
    cal = _calibration_record(index, embeddings, labels, source)
    ref: dict[str, Any] = {}
    if reference:
        from tcm.deploy.monitor import calibration_reference

        ref = calibration_reference(embeddings, labels, threshold=t, seed=seed, scorer=sc)
    iv = {"ci": ci, "n_boot": n_boot, "method": "class_bootstrap"}
    return Threshold(
        threshold=t,
        target_far=float(far),
        far=float(sw.gfar[i]),
        tar=float(sw.gtar[i]),
        dimension=int(index.prepared.x.shape[1]),
        method="upper_bound" if guarantee else "point",
        far_interval={"lo": float(sw.boot_lo[i]), "hi": float(sw.boot_hi[i]), **iv},
        tar_interval={"lo": float(sw.tar_lo[i]), "hi": float(sw.tar_hi[i]), **iv},
        guarantee=rep,
        calibration=cal,
        score=score,
        reference=ref,
    )


def _content_hash(embeddings: ArrayLike, labels: ArrayLike, sha: Any) -> str:
    """SHA-256 of the L2-normalised float32 rows and the dense label codes, in input order."""
    from tcm.deploy.matcher import normalized_rows

    x = normalized_rows(embeddings, "calibration embeddings").numpy()
    codes, _ = encode_labels(labels, x.shape[0], "calibration labels")
    return str(sha({"embeddings": x, "labels": codes.astype(np.int64)}))


def content_hash(embeddings: ArrayLike, labels: ArrayLike) -> str:
    """The ``calibration.sha256`` of a contract for this calibration set."""
    from tcm.scoring.base import sha256_arrays

    return _content_hash(embeddings, labels, sha256_arrays)


def tar_cost_lines(rep: dict[str, Any], far: float) -> Sequence[str]:
    """Human-readable lines of the guarantee report."""
    lines = [
        f"guaranteed FAR <= {far:g} at {rep['ci']:.0%} (upper end of the interval on FAR):",
        f"{'rule':<34} {'threshold':>10} {'FAR':>10} {'FAR upper':>10} {'TAR':>8} {'TAR cost':>9}",
    ]
    for key, name in (
        ("point", "point estimate"),
        ("class_bootstrap", "class bootstrap (used)"),
        ("clopper_pearson", "Clopper-Pearson (naive, pairs iid)"),
    ):
        e = rep[key]
        if e["threshold"] is None:
            lines.append(f"{name:<34} {'not reached':>10}")
            continue
        upper = "" if key == "point" else f"{e['far_upper']:.3e}"
        cost = "" if key == "point" else f"{e['tar_cost']:+.4f}"
        lines.append(
            f"{name:<34} {e['threshold']:>10.6f} {e['far']:>10.3e} {upper:>10} {e['tar']:>8.4f} "
            f"{cost:>9}"
        )
    return lines
