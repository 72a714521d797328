"""Global calibrators: cosine -> probability of "same class", fitted on a labelled calibration set.

Pairs (shared by every calibrator here and by :class:`~tcm.scoring.FairCal`): the genuine pairs
of the calibration set and its impostor pairs are taken separately; each kind is used whole when
there are at most ``max_pairs`` of it, otherwise ``max_pairs`` of that kind are drawn uniformly
with replacement with ``numpy.random.default_rng(seed)`` (see
:func:`tcm.scoring.base.genuine_pairs` / :func:`~tcm.scoring.base.impostor_pairs`). The fit
weighs the two kinds equally (each genuine pair ``1 / (2 n_gen)``, each impostor pair
``1 / (2 n_imp)``, rescaled to sum to the number of pairs), so the output is the posterior at
prior 0.5: ``logit(p)`` estimates the log-likelihood ratio, whatever the pair mix of the
calibration set. Every calibrator is non-decreasing in the cosine.

The caller must pass a calibration set disjoint from the evaluated data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tcm._validation import ArrayLike, check_int
from tcm.scoring.base import (
    Scorer,
    fitted_on_hash,
    genuine_pairs,
    impostor_pairs,
    labelled,
    pair_cosines,
)

__all__ = ["Beta", "Isotonic", "Platt"]

BETA_CLIP = 1e-6
"""``q = (s + 1) / 2`` is clipped to ``[BETA_CLIP, 1 - BETA_CLIP]`` before its logarithms."""


def calibration_pairs(
    x: torch.Tensor, codes: np.ndarray, max_pairs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, cosine, same)`` of the calibration pairs (module docstring).

    Raises:
        ValueError: no genuine pair or no impostor pair in the calibration set.
    """
    rng = np.random.default_rng(seed)
    gi, gj = genuine_pairs(codes, max_pairs, rng)
    if gi.shape[0] == 0:
        raise ValueError(
            "calibration set has no positive (same-class) pairs: every class has one sample"
        )
    ii, ij = impostor_pairs(codes, max_pairs, rng)
    if ii.shape[0] == 0:
        raise ValueError("calibration set has no negative pairs: all samples share one label")
    i = np.concatenate([gi, ii])
    j = np.concatenate([gj, ij])
    same = np.concatenate([np.ones(gi.shape[0], bool), np.zeros(ii.shape[0], bool)])
    return i, j, pair_cosines(x, i, j), same


def balanced_weights(same: np.ndarray) -> np.ndarray:
    """Weights giving genuine and impostor pairs equal total mass, summing to ``len(same)``."""
    n = same.shape[0]
    n_gen = int(same.sum())
    out: np.ndarray = np.where(same, n / (2.0 * n_gen), n / (2.0 * (n - n_gen)))
    return out


def fit_logistic(
    features: np.ndarray, same: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, float]:
    """Unregularised weighted logistic regression (scikit-learn, lbfgs); ``(coef, intercept)``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=math.inf, tol=1e-10, max_iter=10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # separable data: coef grows
        model.fit(features, same.astype(np.int64), sample_weight=weights)
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


def beta_features(s: np.ndarray) -> np.ndarray:
    """``[ln q, -ln(1 - q)]`` with ``q = clip((s + 1) / 2)`` (beta calibration's features)."""
    q = np.clip((s + 1.0) / 2.0, BETA_CLIP, 1.0 - BETA_CLIP)
    return np.stack([np.log(q), -np.log1p(-q)], axis=1)


def fit_beta(s: np.ndarray, same: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """Beta calibration ``(a, b, c)`` with ``a, b >= 0`` (Kull et al. 2017: a negative
    coefficient is dropped and the other refitted; a still negative one leaves ``c`` alone)."""
    f = beta_features(s)
    coef, c = fit_logistic(f, same, w)
    a, b = float(coef[0]), float(coef[1])
    if a < 0 or b < 0:
        keep = 1 if a < b else 0
        coef1, c = fit_logistic(f[:, [keep]], same, w)
        a, b = (0.0, float(coef1[0])) if keep == 1 else (float(coef1[0]), 0.0)
        if max(a, b) < 0:
            a, b = 0.0, 0.0
            c = 0.0  # constant at the balanced prior
    return a, b, c


def beta_apply(cos: torch.Tensor, a: Any, b: Any, c: Any) -> torch.Tensor:
    """``sigmoid(a ln q - b ln(1 - q) + c)``, ``q = clip((cos + 1) / 2)`` (elementwise)."""
    q = ((cos + 1.0) / 2.0).clamp(BETA_CLIP, 1.0 - BETA_CLIP)
    return torch.sigmoid(a * torch.log(q) - b * torch.log1p(-q) + c)


class _Calibrator(Scorer):
    score_scale = "probability"

    def __init__(self, *, max_pairs: int = 200_000, seed: int = 0) -> None:
        super().__init__()
        self.max_pairs = check_int(max_pairs, "max_pairs", 1)
        self.seed = check_int(seed, "seed", 0)

    def params(self) -> dict[str, Any]:
        return {"max_pairs": self.max_pairs, "seed": self.seed}

    def fit(self, embeddings: ArrayLike, labels: ArrayLike) -> Any:
        """Fit on a labelled calibration set (disjoint from evaluated data); returns self.

        Raises:
            ValueError: bad embeddings / labels, no positive or no negative pair.
        """
        x, codes = labelled(embeddings, labels)
        _, _, s, same = calibration_pairs(x, codes, self.max_pairs, self.seed)
        self._fit_scores(s, same, balanced_weights(same))
        self._mark_fitted(x.shape[1], fitted_on_hash(x, codes))
        return self

    def _fit_scores(self, s: np.ndarray, same: np.ndarray, w: np.ndarray) -> None:
        raise NotImplementedError  # pragma: no cover


class Platt(_Calibrator):
    """Platt scaling: ``p = sigmoid(w s + c)`` with ``w > 0``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(40, 4)) + np.repeat(rng.normal(size=(8, 4)) * 2, 5, axis=0)
        >>> p = Platt().fit(x, np.repeat(np.arange(8), 5)).score(x[:2], x[:3])
        >>> p.shape, bool(((p > 0) & (p < 1)).all())
        ((2, 3), True)
    """

    kind = "platt"
    convention = "p = sigmoid(w * cos + c), fitted by logistic regression (prior 0.5)"

    def __init__(self, *, max_pairs: int = 200_000, seed: int = 0) -> None:
        super().__init__(max_pairs=max_pairs, seed=seed)
        self.w = math.nan
        self.c = math.nan

    def _fit_scores(self, s: np.ndarray, same: np.ndarray, w: np.ndarray) -> None:
        coef, c = fit_logistic(s[:, None], same, w)
        if not coef[0] > 0:
            raise ValueError(
                "Platt calibration: genuine pairs do not score higher than impostor pairs on "
                f"the calibration set (slope {coef[0]:.3g} <= 0)"
            )
        self.w, self.c = float(coef[0]), c

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"coef": np.array([self.w, self.c], dtype=np.float64)}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        coef = tensors["coef"]
        if coef.shape != (2,) or not np.isfinite(coef).all() or not coef[0] > 0:
            raise ValueError("'coef' must be 2 finite numbers with a positive slope")
        self.w, self.c = float(coef[0]), float(coef[1])

    def _score(
        self, cos: torch.Tensor, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return torch.sigmoid(self.w * cos + self.c)


class Beta(_Calibrator):
    """Beta calibration (Kull et al. 2017) of ``q = (s + 1) / 2``:
    ``p = sigmoid(a ln q - b ln(1 - q) + c)`` with ``a, b >= 0``."""

    kind = "beta"
    convention = (
        "p = sigmoid(a*ln(q) - b*ln(1-q) + c), q = clip((cos+1)/2, 1e-6, 1-1e-6), a, b >= 0"
    )

    def __init__(self, *, max_pairs: int = 200_000, seed: int = 0) -> None:
        super().__init__(max_pairs=max_pairs, seed=seed)
        self.abc = (math.nan, math.nan, math.nan)

    def _fit_scores(self, s: np.ndarray, same: np.ndarray, w: np.ndarray) -> None:
        self.abc = fit_beta(s, same, w)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"abc": np.array(self.abc, dtype=np.float64)}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        abc = tensors["abc"]
        if abc.shape != (3,) or not np.isfinite(abc).all() or (abc[:2] < 0).any():
            raise ValueError("'abc' must be 3 finite numbers with a, b >= 0")
        self.abc = (float(abc[0]), float(abc[1]), float(abc[2]))

    def _score(
        self, cos: torch.Tensor, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return beta_apply(cos, *self.abc)


class Isotonic(_Calibrator):
    """Isotonic regression (scikit-learn ``IsotonicRegression``, increasing, clipped outside
    the fitted range): a non-decreasing piecewise-linear map through the fitted knots."""

    kind = "isotonic"
    convention = "p = piecewise-linear interpolation of an increasing isotonic fit, clipped"

    def __init__(self, *, max_pairs: int = 200_000, seed: int = 0) -> None:
        super().__init__(max_pairs=max_pairs, seed=seed)
        self.knots_x = np.zeros(0)
        self.knots_y = np.zeros(0)

    def _fit_scores(self, s: np.ndarray, same: np.ndarray, w: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0.0, y_max=1.0)
        iso.fit(s, same.astype(np.float64), sample_weight=w)
        self.knots_x = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.knots_y = np.asarray(iso.y_thresholds_, dtype=np.float64)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"knots_x": self.knots_x, "knots_y": self.knots_y}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        kx, ky = tensors["knots_x"], tensors["knots_y"]
        if kx.ndim != 1 or kx.shape != ky.shape or kx.shape[0] == 0:
            raise ValueError("'knots_x' / 'knots_y' must be two non-empty 1-D arrays of one size")
        if not (np.isfinite(kx).all() and np.isfinite(ky).all()):
            raise ValueError("isotonic knots must be finite")
        if (np.diff(kx) < 0).any() or (np.diff(ky) < 0).any():
            raise ValueError("isotonic knots must be non-decreasing")
        self.knots_x, self.knots_y = kx.astype(np.float64), ky.astype(np.float64)

    def _score(
        self, cos: torch.Tensor, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        kx = torch.as_tensor(self.knots_x, dtype=cos.dtype, device=cos.device)
        ky = torch.as_tensor(self.knots_y, dtype=cos.dtype, device=cos.device)
        if kx.numel() == 1:
            return ky.expand(cos.shape).clone()
        s = cos.clamp(kx[0], kx[-1])
        k = torch.searchsorted(kx, s.contiguous(), right=True).clamp(1, kx.numel() - 1)
        x0, x1, y0, y1 = kx[k - 1], kx[k], ky[k - 1], ky[k]
        width = x1 - x0
        t = torch.where(width > 0, (s - x0) / torch.where(width > 0, width, 1.0), 1.0)
        return y0 + t * (y1 - y0)
