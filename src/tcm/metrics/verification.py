"""1:1 verification on a list of pairs (face-verification protocol): ROC, EER, TAR@FAR, accuracy.

Input is a list of ``N`` pairs, each with a cosine **similarity** ``s_i`` and a flag ``same_i``
(genuine pair: both sides show the same identity; impostor pair otherwise). A pair is
*accepted* (declared a match) at threshold ``t`` when ``s_i >= t``. With ``P`` genuine and ``M``
impostor pairs:

* ``TAR(t) = #{genuine: s >= t} / P``, ``FAR(t) = #{impostor: s >= t} / M``,
  ``FRR(t) = 1 - TAR(t)``.
* **TAR@FAR f**: the threshold is the exact quantile of the impostor similarities
  ``t_f = quantile(impostor_sims, 1 - f)`` with linear interpolation (NumPy's default
  ``np.quantile`` method), and ``TAR@FAR f = TAR(t_f)``. The FAR actually reached at ``t_f``
  (``far_at_far``) is ``(floor((M - 1) f) + 1) / M`` without ties: within ``1/M`` of ``f``, so
  FARs below ``1/M`` are not resolved by a list of ``M`` impostor pairs.
* **ROC**: ``(FAR(u), TAR(u))`` at every distinct similarity ``u`` of the list, thresholds in
  descending order (so FAR and TAR are non-decreasing). Computed exactly by one sort,
  ``O(N log N)``. The point ``(0, 0)`` (a threshold above every similarity) is implied and not
  stored.
* **EER** (equal error rate): the ROC points, with ``(FAR, FRR) = (0, 1)`` prepended, joined by
  straight lines in the (FAR, FRR) plane; the EER is the FAR (= FRR) where this polyline first
  crosses the diagonal ``FAR = FRR``. With ``d = FAR - FRR`` and ``k`` the first point with
  ``d_k >= 0``: ``EER = FAR_{k-1} + λ (FAR_k - FAR_{k-1})``, ``λ = -d_{k-1} / (d_k - d_{k-1})``.
  ``eer_threshold`` is the similarity of point ``k`` (the highest threshold with FAR >= FRR).
  Perfectly separated lists have EER 0, perfectly inverted ones EER 1.
* **Accuracy** (LFW "unrestricted" rule, only when at least 2 folds are given; otherwise
  ``accuracy`` is None and ``accuracy_note`` says why): for each fold ``f`` the
  threshold is chosen on the *other* folds: among the distinct similarities of those pairs, the
  ``t`` maximising ``(#genuine with s >= t + #impostor with s < t) / n`` (ties: the largest such
  ``t``); the accuracy of fold ``f`` is the same fraction over the pairs of ``f`` at that ``t``.
  Reported: the per-fold accuracies (sorted fold id order), their mean, the *sample* standard
  deviation (``ddof=1``; LFW's results page reports mean ± standard error, given as ``stderr =
  std / sqrt(F)``).

Example:
    >>> import numpy as np
    >>> s = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1])
    >>> same = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    >>> v = verification(s, same, folds=[0, 0, 1, 1, 0, 0, 1, 1])
    >>> v.eer, v.tar_at_far[0.1]
    (0.25, 0.75)
    >>> v.accuracy.folds, v.accuracy.thresholds     # each fold's threshold chosen on the other
    ([0.75, 0.5], [0.4, 0.8])
    >>> d = v.to_dict()
    >>> sorted(d["tar_at_far"]), d["accuracy"]["mean"]
    (['0.0001', '0.001', '0.01', '0.1'], 0.625)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tcm._validation import ArrayLike, as_embeddings, l2_normalize

__all__ = ["DEFAULT_VERIFICATION_FARS", "ROC", "FoldAccuracy", "Verification", "verification"]

DEFAULT_VERIFICATION_FARS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)


def _key(far: float) -> str:
    """JSON key of a FAR: the shortest round-trip decimal, ``1e-4 -> "0.0001"``."""
    return repr(float(far))


@dataclass(frozen=True)
class ROC:
    """Exact ROC of a pair list.

    Attributes:
        thresholds: ``(K,)`` float64 distinct similarities, descending.
        far: ``(K,)`` float64 ``FAR(thresholds[k])``, non-decreasing, ends at 1.
        tar: ``(K,)`` float64 ``TAR(thresholds[k])``, non-decreasing, ends at 1.
    """

    thresholds: np.ndarray
    far: np.ndarray
    tar: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        """``{"thresholds": [...], "far": [...], "tar": [...]}``."""
        return {
            "thresholds": [float(x) for x in self.thresholds.tolist()],
            "far": [float(x) for x in self.far.tolist()],
            "tar": [float(x) for x in self.tar.tolist()],
        }


@dataclass(frozen=True)
class FoldAccuracy:
    """Cross-validated verification accuracy (LFW rule, see the module doc).

    Attributes:
        mean: mean of the per-fold accuracies.
        std: sample standard deviation (``ddof=1``) of the per-fold accuracies.
        stderr: ``std / sqrt(F)``, the standard error LFW reports.
        folds: per-fold accuracy, in sorted fold-id order.
        thresholds: per-fold threshold chosen on the other folds.
        fold_ids: the fold ids, sorted.
        fold_sizes: number of pairs of each fold.
    """

    mean: float
    std: float
    stderr: float
    folds: list[float]
    thresholds: list[float]
    fold_ids: list[int]
    fold_sizes: list[int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict with keys ``mean, std, stderr, folds, thresholds, ...``."""
        return {
            "mean": self.mean,
            "std": self.std,
            "stderr": self.stderr,
            "folds": list(self.folds),
            "thresholds": list(self.thresholds),
            "fold_ids": list(self.fold_ids),
            "fold_sizes": list(self.fold_sizes),
        }


@dataclass(frozen=True)
class Verification:
    """Result of :func:`verification` (definitions in the module doc).

    Attributes:
        tar_at_far: ``{far: TAR at the threshold quantile(impostor_sims, 1 - far)}``.
        thresholds_at_far: ``{far: that threshold}`` (cosine similarity; accept if ``s >= t``).
        far_at_far: ``{far: FAR actually reached at that threshold}``.
        eer: equal error rate in ``[0, 1]``.
        eer_threshold: similarity of the first ROC point with FAR >= FRR.
        roc: :class:`ROC` over all distinct similarities.
        accuracy: :class:`FoldAccuracy` when at least 2 folds were given, else None.
        num_genuine: ``P``, number of genuine (same) pairs.
        num_impostor: ``M``, number of impostor pairs.
        accuracy_note: why ``accuracy`` is None (no fold ids, or a single fold: each fold's
            threshold is chosen on the other folds), else None.
    """

    tar_at_far: dict[float, float]
    thresholds_at_far: dict[float, float]
    far_at_far: dict[float, float]
    eer: float
    eer_threshold: float
    roc: ROC
    accuracy: FoldAccuracy | None
    num_genuine: int
    num_impostor: int
    accuracy_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict: ``tar_at_far`` (``{"0.0001": ..., ...}``), ``eer``,
        ``accuracy`` (``{"mean", "std", "folds", ...}`` or None, then ``accuracy_note`` says
        why), ``roc`` and the rest."""
        return {
            "tar_at_far": {_key(f): v for f, v in self.tar_at_far.items()},
            "thresholds_at_far": {_key(f): v for f, v in self.thresholds_at_far.items()},
            "far_at_far": {_key(f): v for f, v in self.far_at_far.items()},
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
            "accuracy_note": self.accuracy_note,
            "num_genuine": self.num_genuine,
            "num_impostor": self.num_impostor,
            "roc": self.roc.to_dict(),
        }


# ----------------------------------------------------------------------------- input checks


def _ndim(x: object) -> int | None:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return int(x.ndim)
    try:
        return int(np.ndim(x))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(x)


def pair_similarities(a_emb: ArrayLike, b_emb: ArrayLike) -> np.ndarray:
    """Cosine similarity of row ``i`` of ``a_emb`` with row ``i`` of ``b_emb``.

    Both ``(N, D)``; each row is L2-normalised (in float64), so the result is ``(N,)`` float64
    in ``[-1, 1]`` (up to rounding).

    Example:
        >>> pair_similarities([[1.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [1.0, 1.0]]).round(4)
        array([1.    , 0.7071])
    """
    a = as_embeddings(a_emb, "a_emb").to(torch.float64)
    b = as_embeddings(b_emb, "b_emb").to(torch.float64)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"a_emb and b_emb must have the same shape (N, D); got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    a = l2_normalize(a, "a_emb")
    b = l2_normalize(b.to(a.device), "b_emb")
    return np.asarray((a * b).sum(dim=1).cpu().numpy(), dtype=np.float64)


def _similarities(sim_or_pairs: Any) -> np.ndarray:
    if (
        isinstance(sim_or_pairs, (tuple, list))
        and len(sim_or_pairs) == 2
        and all(_ndim(e) == 2 for e in sim_or_pairs)
    ):
        return pair_similarities(sim_or_pairs[0], sim_or_pairs[1])
    try:
        arr = _to_numpy(sim_or_pairs)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            "sim_or_pairs must be a 1-D array of similarities or a pair (a_emb, b_emb) of "
            f"(N, D) arrays; got {type(sim_or_pairs).__name__}"
        ) from exc
    if arr.ndim != 1:
        raise ValueError(
            "sim_or_pairs must be a 1-D array of N similarities or a pair (a_emb, b_emb) of "
            f"(N, D) arrays; got an array of shape {arr.shape}"
        )
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise ValueError(f"similarities must be real numbers; got dtype {arr.dtype}")
    s = arr.astype(np.float64)
    bad = ~np.isfinite(s)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"similarities contain {int(bad.sum())} NaN or inf value(s); first at pair {first}"
        )
    return s


def _per_pair(values: ArrayLike, n: int, name: str) -> np.ndarray:
    """``values`` as a NumPy array of shape ``(n,)``: one entry per pair (else ``ValueError``)."""
    arr = _to_numpy(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (N,); got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]} but there are {n} pairs")
    return arr


def _same_flags(same: ArrayLike, n: int) -> np.ndarray:
    arr = _per_pair(same, n, "same")
    if arr.dtype.kind == "b":
        return arr.astype(bool)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"same must be bool or 0/1; got dtype {arr.dtype}")
    ok = (arr == 0) | (arr == 1)
    if not bool(ok.all()):
        first = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"same must be bool or 0/1; pair {first} has {arr[first]!r}")
    return np.asarray(arr == 1, dtype=bool)


def _fold_ids(folds: ArrayLike, n: int) -> tuple[np.ndarray, np.ndarray]:
    arr = _per_pair(folds, n, "folds")
    if arr.dtype.kind == "f":
        if not bool(np.isfinite(arr).all()) or not bool((np.floor(arr) == arr).all()):
            raise ValueError("folds must be integer fold ids")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu" or arr.dtype.kind == "b":
        raise ValueError(f"folds must be integer fold ids; got dtype {arr.dtype}")
    ids, codes = np.unique(arr.astype(np.int64), return_inverse=True)
    return ids, codes.reshape(-1)


def _check_fars(fars: Sequence[float]) -> list[float]:
    out = []
    for f in fars:
        try:
            v = float(f)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"fars must be numbers in (0, 1); got {f!r}") from exc
        if not 0.0 < v < 1.0:
            raise ValueError(f"every far must lie in (0, 1) (open interval); got {f!r}")
        out.append(v)
    return out


# ----------------------------------------------------------------------------- computations


def roc_curve(sims: np.ndarray, same: np.ndarray) -> ROC:
    """Exact ROC over every distinct similarity (one sort; see the module doc).

    Example:
        >>> r = roc_curve(np.array([0.9, 0.5, 0.5, 0.1]), np.array([True, False, True, False]))
        >>> r.thresholds.tolist(), r.far.tolist(), r.tar.tolist()
        ([0.9, 0.5, 0.1], [0.0, 0.5, 1.0], [0.5, 1.0, 1.0])
    """
    s = np.asarray(sims, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    p = int(y.sum())
    m = int(y.size - p)
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    ends = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])  # last index of each run of ties
    tp = np.cumsum(y[order], dtype=np.int64)[ends]
    fp = (ends + 1) - tp
    return ROC(
        thresholds=ss[ends].copy(),
        far=fp / m if m else np.full(ends.shape, np.nan),
        tar=tp / p if p else np.full(ends.shape, np.nan),
    )


def equal_error_rate(roc: ROC) -> tuple[float, float]:
    """``(EER, eer_threshold)`` from an ROC (definition in the module doc).

    Example:
        >>> r = ROC(np.array([0.9, 0.5, 0.1]), np.array([0.0, 0.5, 1.0]), np.array([0.5, 1.0, 1.0]))
        >>> equal_error_rate(r)
        (0.25, 0.5)
    """
    far = np.r_[0.0, roc.far]
    frr = np.r_[1.0, 1.0 - roc.tar]
    d = far - frr
    k = int(np.flatnonzero(d >= 0)[0])  # d[0] = -1 and d[-1] = 1, so 1 <= k <= K
    lam = -d[k - 1] / (d[k] - d[k - 1])
    eer = far[k - 1] + lam * (far[k] - far[k - 1])
    return float(eer), float(roc.thresholds[k - 1])


def best_accuracy_threshold(sims: np.ndarray, same: np.ndarray) -> float:
    """The distinct similarity ``t`` maximising ``#{same, s >= t} + #{not same, s < t}``.

    Ties between thresholds go to the largest ``t``. ``O(n log n)``.

    Example:
        >>> best_accuracy_threshold(np.array([0.9, 0.6, 0.4, 0.1]), np.array([1, 1, 0, 0]) == 1)
        0.6
    """
    s = np.asarray(sims, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    order = np.argsort(s, kind="stable")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])  # first index of each run (ascending)
    pos_cum = np.r_[0, np.cumsum(y[order], dtype=np.int64)]
    pos_below = pos_cum[starts]  # genuine pairs with s < candidate (rejected)
    neg_below = starts - pos_below  # impostor pairs with s < candidate (correctly rejected)
    correct = (int(y.sum()) - pos_below) + neg_below
    k = int(np.flatnonzero(correct == correct.max())[-1])
    return float(ss[starts[k]])


def _fold_accuracy(
    s: np.ndarray, y: np.ndarray, ids: np.ndarray, codes: np.ndarray
) -> FoldAccuracy:
    accs: list[float] = []
    thresholds: list[float] = []
    sizes: list[int] = []
    for f in range(ids.size):
        test = codes == f
        t = best_accuracy_threshold(s[~test], y[~test])
        st, yt = s[test], y[test]
        correct = int(np.sum(yt & (st >= t)) + np.sum(~yt & (st < t)))
        accs.append(correct / int(test.sum()))
        thresholds.append(t)
        sizes.append(int(test.sum()))
    a = np.asarray(accs)
    std = float(a.std(ddof=1))
    return FoldAccuracy(
        mean=float(a.mean()),
        std=std,
        stderr=std / math.sqrt(a.size),
        folds=accs,
        thresholds=thresholds,
        fold_ids=[int(i) for i in ids.tolist()],
        fold_sizes=sizes,
    )


def _tar_at_fars(
    pos: np.ndarray, neg: np.ndarray, far_list: list[float]
) -> tuple[dict[float, float], dict[float, float], dict[float, float]]:
    """TAR, threshold and reached FAR at each target FAR (module doc, **TAR@FAR f**)."""
    p, m = int(pos.size), int(neg.size)
    tar: dict[float, float] = {}
    thr: dict[float, float] = {}
    reached: dict[float, float] = {}
    for f in far_list:
        t = float(np.quantile(neg, 1.0 - f))
        thr[f] = t
        tar[f] = float(np.count_nonzero(pos >= t)) / p
        reached[f] = float(np.count_nonzero(neg >= t)) / m
    return tar, thr, reached


def _cross_validated_accuracy(
    s: np.ndarray, y: np.ndarray, fold_info: tuple[np.ndarray, np.ndarray] | None
) -> tuple[FoldAccuracy | None, str | None]:
    """The fold accuracy, or None and the note saying why it needs at least 2 folds."""
    if fold_info is None:
        return None, "no fold ids: the cross-validated accuracy needs at least 2 folds"
    if fold_info[0].size < 2:
        return None, (
            f"one fold (id {int(fold_info[0][0])}): the cross-validated accuracy needs at least "
            "2 folds (each fold's threshold is chosen on the other folds)"
        )
    return _fold_accuracy(s, y, *fold_info), None


def verification(
    sim_or_pairs: Any,
    same: ArrayLike,
    folds: ArrayLike | None = None,
    fars: Sequence[float] = DEFAULT_VERIFICATION_FARS,
) -> Verification:
    """Verification metrics of a 1:1 pair list (definitions in the module doc).

    Args:
        sim_or_pairs: ``(N,)`` cosine similarities, or a pair ``(a_emb, b_emb)`` of ``(N, D)``
            embedding arrays (NumPy or torch; row ``i`` of each forms pair ``i``; rows are
            L2-normalised, so any scale works).
        same: ``(N,)`` bool or 0/1: 1 for a genuine (same identity) pair.
        folds: optional ``(N,)`` integer fold id per pair for the cross-validated accuracy,
            which needs at least 2 distinct folds; with None or a single fold ``accuracy`` is
            None and ``accuracy_note`` says why (TAR@FAR and EER never need folds).
        fars: target FARs for TAR@FAR, each in the open interval ``(0, 1)``.

    Returns:
        :class:`Verification`.

    Raises:
        ValueError: no genuine or no impostor pair, NaN/inf similarities, length mismatch,
            ``same`` not bool/0-1, non-integer fold ids, a far outside ``(0, 1)``, or embeddings
            of different shapes / with an all-zero row.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
        >>> b[:100] = a[:100] + 0.5 * b[:100]          # first 100 pairs genuine
        >>> same = np.arange(200) < 100
        >>> v = verification((a, b), same, folds=np.arange(200) % 10)
        >>> v.num_genuine, v.num_impostor, len(v.accuracy.folds), v.eer < 0.1
        (100, 100, 10, True)
    """
    s = _similarities(sim_or_pairs)
    n = int(s.shape[0])
    y = _same_flags(same, n)
    far_list = _check_fars(fars)
    fold_info = _fold_ids(folds, n) if folds is not None else None
    p = int(y.sum())
    m = n - p
    if p == 0:
        raise ValueError(f"the pair list has no genuine (same) pair among {n} pairs")
    if m == 0:
        raise ValueError(f"the pair list has no impostor (different) pair among {n} pairs")
    tar, thr, reached = _tar_at_fars(s[y], s[~y], far_list)
    roc = roc_curve(s, y)
    eer, eer_t = equal_error_rate(roc)
    acc, note = _cross_validated_accuracy(s, y, fold_info)
    return Verification(
        tar_at_far=tar,
        thresholds_at_far=thr,
        far_at_far=reached,
        eer=eer,
        eer_threshold=eer_t,
        roc=roc,
        accuracy=acc,
        num_genuine=p,
        num_impostor=m,
        accuracy_note=note,
    )
