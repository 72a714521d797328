"""Experiment ``normalisers`` (issue 22): retrain with TCM, normalise after training, or both?

On the test embeddings of the evidence runs (``experiments/evidence.py``: glyphs, emoji, CJK x
Smooth-AP, RS@k, Multi-Similarity x {base, + TCM} x 5 seeds), every scorer of
:mod:`tcm.scoring` is fitted on deployment-side data and every figure is computed on its scores:

* ``cosine`` (nothing fitted), ``snorm`` (``ASNorm(top_k=None)``), ``asnorm`` (top-k chosen),
  ``fsn`` (K chosen), ``faircal`` (K chosen), ``gst_oracle`` (``GroupThresholds`` per domain).
* **Fitting data.** Each scorer is fitted on the test classes' *calibration* half restricted to
  the *source* domains: what a deployer who calibrated on the source distribution has. Never on
  the evaluation half, never on the target domains. The oracle ``gst_oracle`` is the exception
  by design: it is allowed the group label of every sample and the calibration half of *every*
  domain (target included); it bounds what known groups could buy.
* **Figures** (:func:`analyse`), on the *evaluation* half only, for every scorer (cosine too,
  so rows compare like with like): R@1 / MAP@R, OPIS, eps-OPIS 5 %, TAR at the evaluation
  half's own FAR 1e-3 threshold, minDCF (p_target 0.01, C_miss = C_fa = 1, from a
  :data:`HIST_BINS`-bin histogram of the scored pairs), the deployment view (threshold for FAR
  1e-3 on the scored calibration half, per-class FAR spread, classes over 2x, group GARBE and
  WERM on the evaluation half) and the shift (threshold on the scored source part of the
  calibration half, applied to the target part of the evaluation half, with its control), by
  ``evidence.deployment_view`` / ``evidence.transfer_block`` with the scorer.
* **Choices** (:func:`choose`): AS-norm top-k, FSN K and FairCal K are chosen per benchmark on
  the calibration half only: its classes are split in two by a fixed hash of the class name
  (:func:`select_classes`): the scorer is fitted on one part and its minDCF measured on the
  other (source domains only), averaged over the seed-0 base runs of the three losses; the
  lowest wins (ties: the smaller value). ``python experiments/run.py normaliser_choices``
  writes them into ``experiments/choices.json``, which the run list reads.
* **Saved embeddings.** Each run's test embeddings are kept compressed
  (:func:`save_compressed`: float16, ``np.savez_compressed``, with the calibration-half mask)
  under ``experiments/results/normalisers/embeddings/<bench>/<run>.npz``; the analysis always
  reads that file (re-normalised), so it reruns from a fresh checkout without training or data.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from evidence import (
    CI,
    TARGET_FAR,
    Benchmark,
    _interval,
    _retrieval_intervals,
    deployment_view,
    transfer_block,
)

from tcm.scoring import Scorer

SCORERS = ("cosine", "snorm", "asnorm", "fsn", "faircal", "gst_oracle")
LOSSES = ("smooth_ap", "recall_surrogate", "multi_similarity")
# choice key of choices.json -> (scorer, its parameter, candidates)
CHOICE_GRIDS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "normaliser_asnorm_top_k": ("asnorm", "top_k", (5, 10, 25, 50, 100, 200)),
    "normaliser_fsn_k": ("fsn", "n_clusters", (2, 3, 5, 10, 20, 50)),
    "normaliser_faircal_k": ("faircal", "n_clusters", (2, 3, 5, 10, 20, 50)),
}
P_TARGET = 0.01
C_MISS = 1.0
C_FA = 1.0
HIST_BINS = 20_000
# class-bootstrap resamples per interval (the evidence runs use 1,000): 200 keeps the analysis
# of the six scorers within about a minute per glyph / emoji run
N_BOOT = 200
OPIS_RANGE = (1e-2, 1e-1)  # the OPIS calibration range of evaluate() and the evidence runs
EPSILON = 0.05
SELECT_SALT = "tcm-normalisers-select"
LOOKUP_TOL = 1e-5  # projection window of RowLookup (float32 renormalisation moves ~1e-7)

NEEDS: dict[str, dict[str, Any]] = {
    "cosine": {"labels": False, "groups": False, "kept": "nothing"},
    "snorm": {
        "labels": False,
        "groups": False,
        "kept": "the unlabelled cohort; each probe is compared with all of it",
    },
    "asnorm": {
        "labels": False,
        "groups": False,
        "kept": "the unlabelled cohort; each probe is compared with all of it (top-k kept)",
    },
    "fsn": {
        "labels": True,
        "groups": False,
        "kept": "K k-means centers and K thresholds (labelled calibration set at fit time)",
    },
    "faircal": {
        "labels": True,
        "groups": False,
        "kept": "K k-means centers and K beta calibrations (labelled calibration set at fit time)",
    },
    "gst_oracle": {
        "labels": True,
        "groups": True,
        "kept": "one threshold per domain; every probe's domain known at deployment (oracle), "
        "labelled calibration data of every domain, the target included",
    },
}


# ----------------------------------------------------------------------------- saved embeddings


@dataclass(frozen=True)
class RunData:
    """One run's test embeddings as the analysis reads them (:func:`load_compressed`).

    Attributes:
        embeddings: ``(N, D)`` float32, L2-normalised again after the float16 round trip.
        labels: ``(N,)`` int64 class codes into ``class_names``.
        class_names: ``(C,)`` str.
        groups: ``(N,)`` str, the domain of each sample.
        calibration: ``(N,)`` bool, the samples of the calibration half of the test classes.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    class_names: np.ndarray
    groups: np.ndarray
    calibration: np.ndarray


def save_compressed(src: Path, dst: Path, calibration: np.ndarray) -> int:
    """Write ``src``'s test embeddings compressed to ``dst`` (atomically); returns its bytes.

    Kept: the L2-normalised embeddings as float16, labels (int32), class names, groups and the
    calibration-half mask ``calibration`` (so the analysis needs no dataset); not the ids."""
    from evidence import load_embeddings

    from tcm._io import atomic_write

    emb, lab, names, groups = load_embeddings(src)
    cal = np.asarray(calibration, dtype=bool)
    if cal.shape != lab.shape:
        raise ValueError(f"{src}: calibration mask has {cal.size} entries, {lab.size} samples")
    x = emb.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    arrays = {
        "embeddings": x.astype(np.float16),
        "labels": lab.astype(np.int32),
        "class_names": np.asarray(names, dtype=str),
        "groups": np.asarray(groups, dtype=str),
        "calibration": cal,
    }
    atomic_write(dst, lambda fh: np.savez_compressed(fh, **arrays))
    return dst.stat().st_size


def load_compressed(path: Path) -> RunData:
    """Read a file of :func:`save_compressed` (no pickle) and re-normalise its embeddings.

    Raises:
        ValueError: a missing array or inconsistent lengths (one line, naming the file).
    """
    keys = ("embeddings", "labels", "class_names", "groups", "calibration")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in keys if k not in f.files]
        if missing:
            raise ValueError(f"{path}: not a normalisers embeddings file (no {missing[0]!r})")
        a = {k: f[k] for k in keys}
    n = a["labels"].shape[0]
    if a["embeddings"].ndim != 2 or any(a[k].shape != (n,) for k in keys[1::2]):
        raise ValueError(f"{path}: embeddings, labels, groups and calibration differ in length")
    x = a["embeddings"].astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return RunData(
        embeddings=x,
        labels=a["labels"].astype(np.int64),
        class_names=np.asarray(a["class_names"], dtype=str),
        groups=np.asarray(a["groups"], dtype=str),
        calibration=a["calibration"].astype(bool),
    )


# ----------------------------------------------------------------------------- fitting


def select_classes(class_names: Sequence[str] | np.ndarray) -> np.ndarray:
    """``(C,)`` bool: the classes of the *select* part (the others are the *fit* part), by
    ``sha256(SELECT_SALT + ":" + name)``: its first 8 bytes over ``2**64`` at least 0.5. Fixed
    per class name, so every run and every checkout splits alike."""

    def u(name: str) -> float:
        h = hashlib.sha256(f"{SELECT_SALT}:{name}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2.0**64

    return np.array([u(str(n)) >= 0.5 for n in class_names], dtype=bool)


def fit_mask(
    scorer: str, calibration: np.ndarray, in_source: np.ndarray, select: np.ndarray
) -> np.ndarray:
    """The samples ``scorer`` is fitted on: the *fit* part of the calibration half (its samples
    not in ``select``, the classes of :func:`select_classes`), source domains only, or (only the
    oracle ``gst_oracle``) every domain. Never an evaluation-half sample, never a sample of the
    select part (where thresholds are calibrated), never a target-domain sample except for the
    oracle."""
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; known: {', '.join(SCORERS)}")
    fit = np.asarray(calibration, dtype=bool) & ~np.asarray(select, dtype=bool)
    return fit if scorer == "gst_oracle" else fit & np.asarray(in_source, dtype=bool)


def threshold_mask(calibration: np.ndarray, select: np.ndarray) -> np.ndarray:
    """The samples a threshold is calibrated on: the *select* part of the calibration half
    (every domain for the deployment threshold; the shift takes its source domains)."""
    return np.asarray(calibration, dtype=bool) & np.asarray(select, dtype=bool)


class RowLookup:
    """Finds rows in a table of samples exactly: the candidates within :data:`LOOKUP_TOL` on a
    fixed random projection, then the largest float64 dot product, which must exceed
    ``1 - 1e-6`` (the pair engine hands scorers re-normalised float32 rows, a few ulps from the
    table's). Identical embeddings are one row to it (the first in projection order)."""

    def __init__(self, embeddings: np.ndarray) -> None:
        x = np.asarray(embeddings, dtype=np.float64)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        w = np.random.default_rng(0).normal(size=x.shape[1])
        self._w = w / np.linalg.norm(w)
        p = x @ self._w
        self._order = np.argsort(p, kind="stable")
        self._p = p[self._order]
        self._x = x[self._order]

    def find(self, rows: np.ndarray) -> np.ndarray:
        """``(n,)`` index into the table of each row of ``rows``.

        Raises:
            ValueError: a row that is none of the table's samples.
        """
        q = np.asarray(rows, dtype=np.float64)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        pq = q @ self._w
        lo = np.searchsorted(self._p, pq - LOOKUP_TOL, "left")
        hi = np.searchsorted(self._p, pq + LOOKUP_TOL, "right")
        best = np.zeros(q.shape[0], dtype=np.int64)
        best_dot = np.full(q.shape[0], -np.inf)
        for k in range(int((hi - lo).max(initial=0))):
            cand = lo + k
            c = np.minimum(cand, self._p.size - 1)
            dot = np.where(cand < hi, np.einsum("ij,ij->i", q, self._x[c]), -np.inf)
            better = dot > best_dot
            best[better], best_dot[better] = c[better], dot[better]
        if (best_dot < 1.0 - 1e-6).any():
            raise ValueError("RowLookup: a row is none of the table's samples")
        return np.asarray(self._order[best], dtype=np.int64)


def _rows(x: torch.Tensor) -> np.ndarray:
    return np.asarray(x.detach().to(torch.float64).cpu().numpy())


class GroupLookup(Scorer):
    """:class:`~tcm.scoring.GroupThresholds` for the pair engine, which passes no groups: each
    row handed to :meth:`prepare` is found among every sample of the run (:class:`RowLookup`)
    and gets that sample's group. A row whose embedding equals a sample's of another group is
    ambiguous (counted in ``ambiguous_rows``)."""

    score_scale: ClassVar[str] = "shifted-cosine"
    convention: ClassVar[str] = "GroupThresholds with each row's group looked up by its embedding"

    def __init__(self, fitted: Any, embeddings: np.ndarray, groups: np.ndarray) -> None:
        super().__init__()
        assert fitted.groups is not None
        self.inner = fitted
        self.lookup = RowLookup(embeddings)
        index = {g: k for k, g in enumerate(fitted.groups)}
        g = np.asarray(groups, dtype=str)
        self._gid = np.array([index.get(str(v), -1) for v in g], dtype=np.int64)
        _, inv = np.unique(np.asarray(embeddings, dtype=np.float32), axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        n_groups = np.zeros(int(inv.max(initial=-1)) + 1, dtype=np.int64)
        for k in np.unique(np.stack([inv, self._gid]), axis=1)[0]:
            n_groups[k] += 1
        self.ambiguous_rows = int((n_groups[inv] > 1).sum())
        self._mark_fitted(fitted.dim, fitted.fitted_on_sha256)

    def params(self) -> dict[str, Any]:
        return dict(self.inner.params())

    def _prepare_rows(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        gid = self._gid[self.lookup.find(_rows(x))]
        if (gid < 0).any():
            raise ValueError("GroupLookup: a row's group was not seen in fit")
        return {"id": torch.as_tensor(gid)}

    def _score(
        self, cos: torch.Tensor, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        out: torch.Tensor = self.inner._score(cos, a, b)
        return out


GroupLookup.kind = "group-thresholds"  # set after the class: not a registered file kind


def build_scorer(name: str, params: Mapping[str, int]) -> Scorer:
    """The unfitted scorer ``name`` with its chosen parameter from ``params`` (``{"asnorm":
    top_k, "fsn": K, "faircal": K}``)."""
    from tcm.scoring import FSN, ASNorm, Cosine, FairCal, GroupThresholds

    if name == "cosine":
        return Cosine()
    if name == "snorm":
        return ASNorm(top_k=None)
    if name == "asnorm":
        return ASNorm(top_k=int(params["asnorm"]))
    if name == "fsn":
        return FSN(n_clusters=int(params["fsn"]), far=TARGET_FAR)
    if name == "faircal":
        return FairCal(n_clusters=int(params["faircal"]))
    if name == "gst_oracle":
        return GroupThresholds(far=TARGET_FAR)
    raise ValueError(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}")


def fit_scorer(name: str, scorer: Scorer, data: RunData, mask: np.ndarray) -> Scorer:
    """``scorer`` (from :func:`build_scorer`) fitted on the samples ``mask`` of ``data``; the
    oracle is wrapped in :class:`GroupLookup` (for the pair engine)."""
    x, y, g = data.embeddings[mask], data.labels[mask], data.groups[mask]
    if name == "cosine":
        return scorer
    if name in ("snorm", "asnorm"):
        return scorer.fit(x)  # type: ignore[attr-defined, no-any-return]
    if name in ("fsn", "faircal"):
        return scorer.fit(x, y)  # type: ignore[attr-defined, no-any-return]
    fitted = scorer.fit(x, y, g)  # type: ignore[attr-defined]
    return GroupLookup(fitted, data.embeddings, data.groups)


# ----------------------------------------------------------------------------- figures


def min_dcf_from_histogram(
    pos: np.ndarray,
    neg: np.ndarray,
    p_target: float = P_TARGET,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
) -> float:
    """Normalised minDCF (as :func:`tcm.metrics.detection.min_dcf`) over the thresholds at the
    bin edges of a pair histogram (accept the bins at and above the edge). Equal to the exact
    value when no bin holds both sides of the best threshold, never below it."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if pos.sum() <= 0 or neg.sum() <= 0:
        raise ValueError("min_dcf_from_histogram needs genuine and impostor pairs")
    fnmr = np.concatenate([[0.0], np.cumsum(pos)]) / pos.sum()
    fmr = 1.0 - np.concatenate([[0.0], np.cumsum(neg)]) / neg.sum()
    dcf = c_miss * p_target * fnmr + c_fa * (1.0 - p_target) * np.maximum(fmr, 0.0)
    return float(dcf.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def _werm(block: Mapping[str, Any]) -> float | None:
    from tcm.metrics.detection import werm

    far = np.asarray(block["group_far"], dtype=np.float64)
    frr = np.asarray(block["group_frr"], dtype=np.float64)
    ok = np.isfinite(far) & np.isfinite(frr)
    return float(werm(far[ok], frr[ok])) if ok.any() else None


def scorer_figures(
    data: RunData,
    bench: Benchmark,
    scorer: Scorer,
    far: float = TARGET_FAR,
    n_boot: int = N_BOOT,
) -> dict[str, Any]:
    """Every figure of one scorer on the evaluation half (module docstring)."""
    from tcm.metrics import retrieval_metrics

    emb, lab, groups = data.embeddings, data.labels, data.groups
    ev = ~data.calibration
    thr = threshold_mask(data.calibration, select_classes(data.class_names)[lab])
    ret = retrieval_metrics(emb[ev], lab[ev], ks=(1,), scorer=scorer)
    deployment, ev_stats = deployment_view(
        emb,
        lab,
        groups,
        thr,
        bench,
        far,
        scorer=scorer,
        n_boot=n_boot,
        evaluation=ev,
        far_range=OPIS_RANGE,
        bins=HIST_BINS,
    )
    deployment["werm"] = _werm(deployment)
    cons = ev_stats.consistency(epsilons=(EPSILON,), ci=CI, n_boot=n_boot)
    t_own = ev_stats.threshold_at_far(far)
    hist = ev_stats.histogram()
    eps_key = f"epsilon_opis_{EPSILON:g}"
    metrics = {
        "recall_at_1": float(ret.recall_at_k[1]),
        "map_at_r": float(ret.map_at_r),
        "opis": float(cons.opis),
        eps_key: float(cons.epsilon_opis[EPSILON]),
        f"tar_at_far_{far:.0e}": float(ev_stats.operating_point(t_own).global_tar),
        "min_dcf": min_dcf_from_histogram(hist.pos, hist.neg),
    }
    intervals = {k: _interval(v) for k, v in cons.intervals.items()}
    intervals.update(_retrieval_intervals(ret.per_class, n_boot))
    transfer = transfer_block(
        emb, lab, groups, thr, bench, far, scorer=scorer, n_boot=n_boot, evaluation=ev
    )
    return {
        "score_scale": scorer.score_scale,
        "metrics": metrics,
        "intervals": intervals,
        "deployment": deployment,
        "transfer": transfer,
    }


def analyse(
    path: Path,
    bench: Benchmark,
    params: Mapping[str, int],
    far: float = TARGET_FAR,
    n_boot: int = N_BOOT,
    scorers: Sequence[str] = SCORERS,
) -> dict[str, Any]:
    """Every scorer's figures from one compressed embeddings file (module docstring)."""
    t_all = time.perf_counter()
    data = load_compressed(path)
    in_src = np.isin(data.groups, bench.source)
    sel = select_classes(data.class_names)[data.labels]
    out: dict[str, Any] = {}
    for name in scorers:
        t0 = time.perf_counter()
        mask = fit_mask(name, data.calibration, in_src, sel)
        scorer = fit_scorer(name, build_scorer(name, params), data, mask)
        fit_s = time.perf_counter() - t0
        rec = scorer_figures(data, bench, scorer, far, n_boot)
        fitted = name != "cosine"
        rec["params"] = {} if not fitted else dict(scorer.params())
        rec["fitted_on"] = (
            None
            if not fitted
            else {
                "what": "fit part of the calibration half, every domain (oracle)"
                if name == "gst_oracle"
                else "fit part of the calibration half, source domains",
                "samples": int(mask.sum()),
                "classes": int(np.unique(data.labels[mask]).size),
                "domains": sorted({str(g) for g in data.groups[mask]}),
            }
        )
        rec["needs"] = {**NEEDS[name], "samples": int(mask.sum()) if fitted else 0}
        if isinstance(scorer, GroupLookup):
            rec["ambiguous_rows"] = scorer.ambiguous_rows
        rec["fit_s"] = round(fit_s, 2)
        rec["wall_s"] = round(time.perf_counter() - t0, 2)
        out[name] = rec
    return {
        "target_far": far,
        "n_boot": n_boot,
        "hist_bins": HIST_BINS,
        "p_target": P_TARGET,
        "samples": {
            "calibration": int(data.calibration.sum()),
            "fit_part_source": int(fit_mask("cosine", data.calibration, in_src, sel).sum()),
            "threshold_part": int(threshold_mask(data.calibration, sel).sum()),
            "threshold_part_source": int((threshold_mask(data.calibration, sel) & in_src).sum()),
            "evaluation": int((~data.calibration).sum()),
        },
        "scorers": out,
        "analysis_s": round(time.perf_counter() - t_all, 1),
    }


# ----------------------------------------------------------------------------- choices


def pick(scores: Mapping[int, float]) -> int:
    """The candidate with the lowest score; ties go to the smaller candidate."""
    if not scores:
        raise ValueError("no candidate to pick from")
    return min(scores, key=lambda c: (scores[c], c))


def candidate_scores(
    data: RunData, bench: Benchmark, scorer: str, candidates: Sequence[int]
) -> dict[int, float]:
    """minDCF on the select part (source domains of the calibration half, classes of
    :func:`select_classes`) of ``scorer`` fitted on the fit part, per candidate parameter;
    candidates above the fit part's size are left out."""
    from tcm.metrics import PairIndex, pair_statistics

    in_src = np.isin(data.groups, bench.source)
    sel = select_classes(data.class_names)[data.labels]
    fit = fit_mask(scorer, data.calibration, in_src, sel)
    val = threshold_mask(data.calibration, sel) & in_src
    out: dict[int, float] = {}
    for c in candidates:
        if c > int(fit.sum()):
            continue
        sc = fit_scorer(scorer, build_scorer(scorer, {scorer: c}), data, fit)
        idx = PairIndex(data.embeddings[val], data.labels[val], scorer=sc)
        h = pair_statistics(idx, far_range=None, bins=HIST_BINS).histogram()
        out[int(c)] = min_dcf_from_histogram(h.pos, h.neg)
    return out


def choose(runs: Mapping[str, RunData], bench: Benchmark) -> dict[str, dict[str, Any]]:
    """Per choice key of :data:`CHOICE_GRIDS`: ``{"value", "validation": {candidate: mean
    minDCF over runs}, "per_run": {run: {candidate: minDCF}}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, (scorer, _, grid) in CHOICE_GRIDS.items():
        per_run = {r: candidate_scores(d, bench, scorer, grid) for r, d in runs.items()}
        common = set.intersection(*(set(v) for v in per_run.values()))
        means = {c: float(np.mean([v[c] for v in per_run.values()])) for c in sorted(common)}
        out[key] = {"value": pick(means), "validation": means, "per_run": per_run}
    return out
