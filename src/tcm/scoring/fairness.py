"""Fairness-oriented scorers: :class:`FSN`, :class:`FairCal` (unsupervised clusters) and the
:class:`GroupThresholds` oracle (known group labels).

Thresholds at a FAR follow the project's convention (:func:`tcm.metrics.threshold_at_far`):
``np.quantile(impostor_scores, 1 - far)`` (linear interpolation), accepting ``s >= t``.

The caller must fit on data disjoint from what is evaluated (training classes or the calibration
half of a split).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tcm._validation import ArrayLike, check_fraction, check_int, encode_labels
from tcm.scoring.base import (
    Scorer,
    fitted_on_hash,
    impostor_pairs,
    labelled,
    pair_cosines,
)
from tcm.scoring.calibrators import (
    BETA_CLIP,
    balanced_weights,
    beta_apply,
    calibration_pairs,
    fit_beta,
)

__all__ = ["FSN", "FairCal", "GroupThresholds"]


def fit_kmeans(
    x: torch.Tensor, n_clusters: int, seed: int, n_init: int
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn ``KMeans`` on L2-normalised rows; ``(centers (K, D), labels (N,))``."""
    from sklearn.cluster import KMeans

    n = x.shape[0]
    if n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} exceeds the {n} calibration samples")
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
    labels = km.fit_predict(x.to(torch.float64).cpu().numpy())
    return np.asarray(km.cluster_centers_, dtype=np.float64), labels.astype(np.int64)


def nearest_center(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of the nearest center (Euclidean) of each row, as ``KMeans.predict``."""
    c = centers.to(device=x.device, dtype=torch.float64)
    d = (c * c).sum(dim=1)[None, :] - 2.0 * (x.to(torch.float64) @ c.T)
    return d.argmin(dim=1)


def far_threshold(scores: np.ndarray, far: float) -> float:
    """``np.quantile(scores, 1 - far)`` (the project's threshold at a FAR)."""
    return float(np.quantile(scores, 1.0 - far))


def _check_centers(t: dict[str, np.ndarray]) -> torch.Tensor:
    c = t["centers"]
    if c.ndim != 2 or c.shape[0] == 0 or not np.isfinite(c).all():
        raise ValueError("'centers' must be a finite non-empty 2-D array")
    return torch.from_numpy(c.astype(np.float64))


class _Shift(Scorer):
    """``s' = s - 0.5 (t_a + t_b) + t_global`` with a per-sample threshold ``t``."""

    score_scale = "shifted-cosine"

    def __init__(self) -> None:
        super().__init__()
        self.thresholds = torch.zeros(0, dtype=torch.float64)
        self.global_threshold = float("nan")

    def _score(
        self, cos: torch.Tensor, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        t = self.thresholds.to(device=cos.device, dtype=cos.dtype)
        ta = t[a["id"]][:, None]
        tb = t[b["id"]][None, :]
        return cos - 0.5 * (ta + tb) + self.global_threshold

    def _score_inplace(
        self,
        cos: torch.Tensor,
        a: Mapping[str, torch.Tensor],
        b: Mapping[str, torch.Tensor],
        scratch: torch.Tensor | None,
    ) -> bool:
        # _score's operations in place, over row chunks of about 1 MiB: the two thresholds'
        # sum into a scratch chunk, halved, subtracted from the cosines, then the global
        # threshold added; each a correctly rounded elementwise operation, as in _score, so
        # bit for bit the same (and no full-size temporaries)
        t = self.thresholds.to(device=cos.device, dtype=cos.dtype)
        ta, tb = t[a["id"]][:, None], t[b["id"]][None, :]
        h, w = cos.shape
        rows = max(1, (1 << 20) // max(1, w * cos.element_size()))
        if scratch is None or scratch.numel() < min(h, rows) * w:
            scratch = torch.empty(min(h, rows) * w, dtype=cos.dtype, device=cos.device)
        for r0 in range(0, h, rows):
            c = cos[r0 : r0 + rows]
            s = scratch[: c.numel()].view(c.shape)
            torch.add(ta[r0 : r0 + rows], tb, out=s)
            c.sub_(s.mul_(0.5)).add_(self.global_threshold)
        return True

    def _shift_tensors(self) -> dict[str, np.ndarray]:
        return {
            "thresholds": self.thresholds.numpy(),
            "global_threshold": np.array([self.global_threshold]),
        }

    def _set_shift(self, t: dict[str, np.ndarray], k: int) -> None:
        thr, g = t["thresholds"], t["global_threshold"]
        if (
            thr.shape != (k,)
            or g.shape != (1,)
            or not np.isfinite(thr).all()
            or not np.isfinite(g).all()
        ):
            raise ValueError(f"'thresholds' must be {k} finite numbers, 'global_threshold' one")
        self.thresholds = torch.from_numpy(thr.astype(np.float64))
        self.global_threshold = float(g[0])


class _Clustered(Scorer):
    """Scorers that give each sample its nearest k-means center of the calibration set (FSN,
    FairCal): the parameters ``n_clusters``, ``max_pairs``, ``seed``, ``n_init`` (FSN also ``far``),
    the ``centers`` and the per-sample cluster ``id``."""

    far: float | None = None

    def _init_clusters(
        self, n_clusters: int, max_pairs: int, seed: int, n_init: int, far: float | None = None
    ) -> None:
        """Check and store the parameters (``far`` only when given); no centers yet."""
        self.n_clusters = check_int(n_clusters, "n_clusters", 1)
        if far is not None:
            self.far = check_fraction(far, "far")
        self.max_pairs = check_int(max_pairs, "max_pairs", 1)
        self.seed = check_int(seed, "seed", 0)
        self.n_init = check_int(n_init, "n_init", 1)
        self.centers = torch.zeros(0, 0, dtype=torch.float64)

    def params(self) -> dict[str, Any]:
        far = {} if self.far is None else {"far": self.far}
        return {
            "n_clusters": self.n_clusters,
            **far,
            "max_pairs": self.max_pairs,
            "seed": self.seed,
            "n_init": self.n_init,
        }

    def _set_fitted(self, centers: np.ndarray, x: torch.Tensor, codes: np.ndarray) -> None:
        """Store the fitted ``centers`` and mark fitted on ``x`` / label ``codes``."""
        self.centers = torch.from_numpy(centers)
        self._mark_fitted(x.shape[1], fitted_on_hash(x, codes))

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"centers": self.centers.numpy(), **self._cluster_tensors()}

    def _cluster_tensors(self) -> dict[str, np.ndarray]:
        """The tensors saved after ``centers``."""
        raise NotImplementedError

    def _prepare_rows(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"id": nearest_center(x, self.centers)}


class FSN(_Clustered, _Shift):
    """Fair Score Normalisation (Terhörst et al., IJCB 2020).

    Fit on a labelled calibration set: k-means (scikit-learn, ``random_state=seed``) on the
    L2-normalised embeddings; the global threshold ``thr_G`` at ``far`` on its impostor pairs, and
    for each cluster ``c`` a threshold ``thr_c`` at ``far`` on the impostor pairs with *both*
    samples in ``c`` (a cluster without any keeps ``thr_G``, i.e. no shift). A sample is assigned
    its nearest center; the pair score is the paper's shift

        ``s' = s + 0.5 * ((thr_G - thr_c(i)) + (thr_G - thr_c(j)))
        = s - 0.5 * (thr_c(i) + thr_c(j)) + thr_G``,

    so ``thr_G`` is the threshold of the normalised score and each cluster's own FAR is pulled
    towards ``far``. Impostor pairs: all when at most ``max_pairs`` (per cluster and overall),
    else ``max_pairs`` drawn uniformly with replacement (``default_rng(seed)``).
    """

    kind = "fsn"
    convention = (
        "s' = s - 0.5*(thr_c(i) + thr_c(j)) + thr_G; thr = quantile(impostors, 1 - far); "
        "thr_c on impostor pairs with both samples in cluster c"
    )
    far: float

    def __init__(
        self,
        n_clusters: int = 100,
        *,
        far: float = 1e-3,
        max_pairs: int = 1_000_000,
        seed: int = 0,
        n_init: int = 10,
    ) -> None:
        super().__init__()
        self._init_clusters(n_clusters, max_pairs, seed, n_init, far=far)
        self.cluster_impostors = np.zeros(0, dtype=np.int64)

    def fit(self, embeddings: ArrayLike, labels: ArrayLike) -> FSN:
        """Fit on a labelled calibration set (disjoint from evaluated data); returns self.

        Raises:
            ValueError: bad inputs, ``n_clusters`` above the number of samples, no impostor pair.
        """
        x, codes = labelled(embeddings, labels)
        rng = np.random.default_rng(self.seed)
        i, j = impostor_pairs(codes, self.max_pairs, rng)
        if i.shape[0] == 0:
            raise ValueError("calibration set has no negative pairs: all samples share one label")
        centers, cl = fit_kmeans(x, self.n_clusters, self.seed, self.n_init)
        thr_g = far_threshold(pair_cosines(x, i, j), self.far)
        thr = np.full(self.n_clusters, thr_g)
        count = np.zeros(self.n_clusters, dtype=np.int64)
        for c in range(self.n_clusters):
            members = np.flatnonzero(cl == c)
            ci, cj = impostor_pairs(codes[members], self.max_pairs, rng)
            count[c] = ci.shape[0]
            if ci.shape[0]:
                thr[c] = far_threshold(pair_cosines(x, members[ci], members[cj]), self.far)
        self.thresholds = torch.from_numpy(thr)
        self.global_threshold = thr_g
        self.cluster_impostors = count
        self._set_fitted(centers, x, codes)
        return self

    def _cluster_tensors(self) -> dict[str, np.ndarray]:
        return {"cluster_impostors": self.cluster_impostors, **self._shift_tensors()}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.centers = _check_centers(tensors)
        if self.centers.shape[0] != self.n_clusters:
            raise ValueError(f"'centers' has {self.centers.shape[0]} rows, not {self.n_clusters}")
        self._set_shift(tensors, self.n_clusters)
        self.cluster_impostors = tensors["cluster_impostors"].astype(np.int64)


class FairCal(_Clustered):
    """FairCal (Salvador et al., ICLR 2022): cluster-wise beta calibration, probability scale.

    Fit on a labelled calibration set: k-means (scikit-learn, ``random_state=seed``) on the
    L2-normalised embeddings; the calibration pairs (as for :mod:`tcm.scoring.calibrators`:
    genuine and impostor pairs, each whole or ``max_pairs`` drawn with replacement, equal total
    weight); for each cluster ``k`` a beta calibration ``M_k`` fitted on the pairs with at least
    one side in ``k`` (a cluster whose pairs lack a genuine or an impostor falls back to the
    calibration fitted on all pairs), and its weight ``n_k`` = the number of those pairs. A
    sample is assigned its nearest center; the pair confidence is

        ``p = (n_k(i) M_k(i)(s) + n_k(j) M_k(j)(s)) / (n_k(i) + n_k(j))``

    (``n_k`` floored at 1). Probabilities are posteriors at prior 0.5.
    """

    kind = "faircal"
    score_scale = "probability"
    convention = (
        "p = (n_ci*M_ci(s) + n_cj*M_cj(s)) / (n_ci + n_cj); M_c = beta calibration on pairs with "
        "a side in cluster c; n_c = their count"
    )

    def __init__(
        self,
        n_clusters: int = 100,
        *,
        max_pairs: int = 200_000,
        seed: int = 0,
        n_init: int = 10,
    ) -> None:
        super().__init__()
        self._init_clusters(n_clusters, max_pairs, seed, n_init)
        self.abc = np.zeros((0, 3))
        self.weights = np.zeros(0)
        self.fallback = np.zeros(0, dtype=np.uint8)

    def fit(self, embeddings: ArrayLike, labels: ArrayLike) -> FairCal:
        """Fit on a labelled calibration set (disjoint from evaluated data); returns self.

        Raises:
            ValueError: bad inputs, no positive (same-class) pair or no negative pair,
                ``n_clusters`` above the number of samples.
        """
        x, codes = labelled(embeddings, labels)
        i, j, s, same = calibration_pairs(x, codes, self.max_pairs, self.seed)
        centers, cl = fit_kmeans(x, self.n_clusters, self.seed, self.n_init)
        glob = fit_beta(s, same, balanced_weights(same))
        abc = np.tile(np.array(glob), (self.n_clusters, 1))
        weights = np.zeros(self.n_clusters)
        fallback = np.zeros(self.n_clusters, dtype=np.uint8)
        for k in range(self.n_clusters):
            sel = (cl[i] == k) | (cl[j] == k)
            weights[k] = sel.sum()
            n_gen = int(same[sel].sum())
            if n_gen == 0 or n_gen == int(sel.sum()):
                fallback[k] = 1
                continue
            abc[k] = fit_beta(s[sel], same[sel], balanced_weights(same[sel]))
        self.abc, self.weights, self.fallback = abc, np.maximum(weights, 1.0), fallback
        self._set_fitted(centers, x, codes)
        return self

    def _cluster_tensors(self) -> dict[str, np.ndarray]:
        return {"abc": self.abc, "weights": self.weights, "fallback": self.fallback}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        k = self.n_clusters
        self.centers = _check_centers(tensors)
        abc, w = tensors["abc"], tensors["weights"]
        if self.centers.shape[0] != k or abc.shape != (k, 3) or w.shape != (k,):
            raise ValueError(f"'centers', 'abc', 'weights' must have {k} rows")
        if not (np.isfinite(abc).all() and np.isfinite(w).all()) or (abc[:, :2] < 0).any():
            raise ValueError("'abc' must be finite with a, b >= 0; 'weights' finite")
        if not (w >= 1).all():
            raise ValueError("'weights' must be >= 1")
        self.abc, self.weights = abc.astype(np.float64), w.astype(np.float64)
        self.fallback = tensors["fallback"].astype(np.uint8)

    def _score(
        self, cos: torch.Tensor, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        abc = torch.as_tensor(self.abc, dtype=cos.dtype, device=cos.device)
        w = torch.as_tensor(self.weights, dtype=cos.dtype, device=cos.device)
        pa_ = abc[a["id"]]
        pb_ = abc[b["id"]]
        pa = beta_apply(cos, pa_[:, 0, None], pa_[:, 1, None], pa_[:, 2, None])
        pb = beta_apply(cos, pb_[None, :, 0], pb_[None, :, 1], pb_[None, :, 2])
        wa = w[a["id"]][:, None]
        wb = w[b["id"]][None, :]
        return (wa * pa + wb * pb) / (wa + wb)

    def _score_inplace(
        self,
        cos: torch.Tensor,
        a: Mapping[str, torch.Tensor],
        b: Mapping[str, torch.Tensor],
        scratch: torch.Tensor | None,
    ) -> bool:
        # _score's operations (beta_apply's for each side) in the same order into whole-block
        # buffers, with ln q and ln(1 - q) computed once for both sides (the values _score
        # computes twice). Whole blocks, not row chunks: a transcendental kernel may round the
        # vectorised body and the tail of a contiguous block differently, so the layout of
        # every such operation is _score's (a non-contiguous block takes _score itself).
        if not cos.is_contiguous():
            return False
        abc = torch.as_tensor(self.abc, dtype=cos.dtype, device=cos.device)
        w = torch.as_tensor(self.weights, dtype=cos.dtype, device=cos.device)
        pa_, pb_ = abc[a["id"]], abc[b["id"]]
        n = cos.numel()
        if scratch is None or scratch.numel() < n:
            scratch = torch.empty(n, dtype=cos.dtype, device=cos.device)
        lq = scratch[:n].view(cos.shape)
        l1q = torch.empty_like(cos)
        t = torch.empty_like(cos)
        q = cos.add_(1.0).div_(2.0).clamp_(BETA_CLIP, 1.0 - BETA_CLIP)
        torch.log(q, out=lq)
        torch.neg(q, out=l1q).log1p_()
        # side a into cos (q is no longer needed), side b into lq
        torch.mul(pa_[:, 0, None], lq, out=cos)
        torch.mul(pa_[:, 1, None], l1q, out=t)
        cos.sub_(t).add_(pa_[:, 2, None]).sigmoid_()
        lq.mul_(pb_[None, :, 0])
        l1q.mul_(pb_[None, :, 1])
        lq.sub_(l1q).add_(pb_[None, :, 2]).sigmoid_()
        wa = w[a["id"]][:, None]
        wb = w[b["id"]][None, :]
        cos.mul_(wa).add_(lq.mul_(wb))
        torch.add(wa, wb, out=t)
        cos.div_(t)
        return True


class GroupThresholds(_Shift):
    """Group oracle: per-group thresholds at ``far`` when the group of every sample is known.

    Fit on a labelled calibration set with one group per sample: ``thr_G`` at ``far`` on all
    impostor pairs, ``thr_g`` at ``far`` on the impostor pairs with both samples in group ``g``
    (a group without any keeps ``thr_G``); the pair score is
    ``s' = s - 0.5 * (thr_g(i) + thr_g(j)) + thr_G`` (FSN's shift with known groups), so
    ``thr_G`` applies to the normalised score. ``prepare`` needs ``groups=`` (only groups seen in
    fit). Impostor pairs are taken as in :class:`FSN`.
    """

    kind = "group-thresholds"
    convention = (
        "s' = s - 0.5*(thr_g(i) + thr_g(j)) + thr_G; thr = quantile(impostors, 1 - far); "
        "thr_g on impostor pairs with both samples in group g"
    )
    uses_groups = True

    def __init__(
        self,
        *,
        far: float = 1e-3,
        max_pairs: int = 1_000_000,
        seed: int = 0,
        groups: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.far = check_fraction(far, "far")
        self.max_pairs = check_int(max_pairs, "max_pairs", 1)
        self.seed = check_int(seed, "seed", 0)
        if groups is not None and (
            not isinstance(groups, list) or not all(isinstance(g, str) for g in groups)
        ):
            raise ValueError("groups must be a list of strings (set by fit)")
        self.groups = groups

    def params(self) -> dict[str, Any]:
        return {
            "far": self.far,
            "max_pairs": self.max_pairs,
            "seed": self.seed,
            "groups": self.groups,
        }

    def fit(self, embeddings: ArrayLike, labels: ArrayLike, groups: ArrayLike) -> GroupThresholds:
        """Fit on a labelled calibration set with one group per sample; returns self.

        Raises:
            ValueError: bad inputs, no impostor pair.
        """
        x, codes = labelled(embeddings, labels)
        names = np.array([str(g) for g in np.asarray(groups, dtype=object).tolist()])
        gcodes, gnames = encode_labels(names, x.shape[0], "groups")
        rng = np.random.default_rng(self.seed)
        i, j = impostor_pairs(codes, self.max_pairs, rng)
        if i.shape[0] == 0:
            raise ValueError("calibration set has no negative pairs: all samples share one label")
        thr_g = far_threshold(pair_cosines(x, i, j), self.far)
        thr = np.full(gnames.shape[0], thr_g)
        for g in range(gnames.shape[0]):
            members = np.flatnonzero(gcodes == g)
            ci, cj = impostor_pairs(codes[members], self.max_pairs, rng)
            if ci.shape[0]:
                thr[g] = far_threshold(pair_cosines(x, members[ci], members[cj]), self.far)
        self.groups = [str(g) for g in gnames.tolist()]
        self.thresholds = torch.from_numpy(thr)
        self.global_threshold = thr_g
        self._mark_fitted(x.shape[1], fitted_on_hash(x, np.stack([codes, gcodes])))
        return self

    def _tensors(self) -> dict[str, np.ndarray]:
        return self._shift_tensors()

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        if self.groups is None:
            raise ValueError("params 'groups' missing")
        self._set_shift(tensors, len(self.groups))

    def _group_state(self, groups: ArrayLike, n: int) -> dict[str, torch.Tensor]:
        assert self.groups is not None
        names = [str(g) for g in np.asarray(groups, dtype=object).tolist()]
        if len(names) != n:
            raise ValueError(f"groups has {len(names)} entries but there are {n} embeddings")
        index = {g: k for k, g in enumerate(self.groups)}
        unknown = sorted({g for g in names if g not in index})
        if unknown:
            raise ValueError(
                f"{len(unknown)} group(s) not seen in fit, e.g. {unknown[0]!r}; known: "
                f"{self.groups[:10]}"
            )
        return {"id": torch.tensor([index[g] for g in names], dtype=torch.int64)}
