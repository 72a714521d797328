"""Identity and cohort-based scorers: :class:`Cosine`, :class:`ASNorm` (S-norm / AS-norm)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tcm._validation import ArrayLike, check_int
from tcm.scoring.base import Scorer, SideState, fitted_on_hash, normalized

__all__ = ["ASNorm", "Cosine"]

COMBINES = ("mean", "z", "t")


def top_values(x: torch.Tensor, k: int, *, ordered: bool = True) -> torch.Tensor:
    """The ``k`` largest values of each row of a finite 2-D ``x``, in decreasing order: the values
    of ``torch.topk(x, k, dim=1)``, element for element. On CPU by NumPy (``partition``, then a
    sort of the ``k`` kept), several times faster than ``torch.topk`` for a few hundred of a few
    thousand; elsewhere ``torch.topk``. ``ordered=False``: the same values of each row in an
    unspecified order (deterministic for a row's values; no sort); on CPU it partitions ``x``
    itself (each row's values permuted) and returns a view of it.

    Example:
        >>> top_values(torch.tensor([[0.1, 0.9, 0.5, 0.9]]), 3).tolist()
        [[0.8999999761581421, 0.8999999761581421, 0.5]]
    """
    if x.device.type != "cpu":
        return torch.topk(x, k, dim=1, sorted=ordered).values
    a = x.detach().numpy()
    n = a.shape[1]
    if not ordered:
        a.partition(n - k, axis=1)
        return x[:, n - k :]
    part = np.partition(a, n - k, axis=1)[:, n - k :]
    part.sort(axis=1)
    return torch.from_numpy(np.ascontiguousarray(part[:, ::-1]))


class Cosine(Scorer):
    """The identity: the score is the cosine similarity (the default; needs no fit).

    Example:
        >>> import numpy as np
        >>> Cosine().score(np.eye(2), np.array([[1.0, 1.0]])).round(4).tolist()
        [[0.7071], [0.7071]]
    """

    kind = "cosine"
    score_scale = "cosine"
    convention = "s' = cos"
    needs_fit = False

    def params(self) -> dict[str, Any]:
        return {}

    def fit(self, *args: Any, **kwargs: Any) -> Cosine:
        """Nothing to fit (accepts and ignores any arguments); returns self."""
        return self

    def _score(
        self, cos: torch.Tensor, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return cos.clone()


class ASNorm(Scorer):
    """Adaptive symmetric score normalisation against a cohort (S-norm when ``top_k=None``).

    For each sample ``i``: ``mu_i`` and ``sd_i`` are the mean and standard deviation (``ddof =
    std_ddof``; 0, the population std, is WeSpeaker's convention) of its ``top_k`` largest
    cosines to the cohort (all cohort cosines when ``top_k`` is None). The score of a pair with
    cosine ``s`` is, by ``combine``:

    * ``"mean"`` (default, symmetric AS-norm): ``0.5 * ((s - mu_i) / sd_i + (s - mu_j) / sd_j)``,
      computed as ``s * (a_i + a_j) - (b_i + b_j)`` with ``a = 0.5 / sd``, ``b = 0.5 * mu / sd``
      (state tensors ``a``, ``b``; the same value for a pair from the same cosine by every
      route);
    * ``"z"``: ``(s - mu_i) / sd_i``, the first (row) set's statistics only (Z-norm of the
      enrolment side);
    * ``"t"``: ``(s - mu_j) / sd_j``, the second (column) set's statistics only (T-norm of the
      test side).

    The cohort must not contain evaluated samples (a sample's own cosine 1 would enter its
    statistics). ``prepare`` computes ``block_size x cohort`` cosines at a time (top-k by
    :func:`top_values`).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> s = ASNorm(top_k=5).fit(rng.normal(size=(20, 4))).score(rng.normal(size=(2, 4)),
        ...                                                         rng.normal(size=(3, 4)))
        >>> s.shape
        (2, 3)
    """

    kind = "as-norm"
    score_scale = "z-score"
    convention = (
        "mu_i, sd_i = mean, std(ddof) of the top_k cohort cosines of i; "
        "mean: 0.5*((s-mu_i)/sd_i + (s-mu_j)/sd_j); z: (s-mu_i)/sd_i; t: (s-mu_j)/sd_j"
    )

    def __init__(
        self, top_k: int | None = 300, *, combine: str = "mean", std_ddof: int = 0
    ) -> None:
        super().__init__()
        self.top_k = None if top_k is None else check_int(top_k, "top_k", 1)
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}; got {combine!r}")
        self.combine = combine
        if std_ddof not in (0, 1) or isinstance(std_ddof, bool):
            raise ValueError(f"std_ddof must be 0 or 1; got {std_ddof!r}")
        self.std_ddof = int(std_ddof)
        if self.top_k is not None and self.top_k <= self.std_ddof:
            raise ValueError(f"top_k must be > std_ddof ({self.std_ddof}); got {self.top_k}")
        self.cohort = torch.zeros(0, 0)

    def params(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "combine": self.combine, "std_ddof": self.std_ddof}

    def fit(self, cohort: ArrayLike) -> ASNorm:
        """Keep the L2-normalised cohort (deployment-side samples, disjoint from evaluated
        data); returns self.

        Raises:
            ValueError: bad cohort embeddings; fewer cohort samples than ``top_k`` (or than
                ``std_ddof + 1`` for S-norm).
        """
        c = normalized(cohort, "cohort")
        self._check_size(c.shape[0])
        self.cohort = c
        self._mark_fitted(c.shape[1], fitted_on_hash(c))
        return self

    def _check_size(self, n: int) -> None:
        need = self.top_k if self.top_k is not None else self.std_ddof + 1
        if n < need:
            raise ValueError(
                f"cohort has {n} samples but top_k={self.top_k} needs at least {need}"
                if self.top_k is not None
                else f"cohort has {n} samples; S-norm with std_ddof={self.std_ddof} needs {need}"
            )

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"cohort": self.cohort.cpu().numpy()}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        c = tensors["cohort"]
        if c.ndim != 2 or not np.issubdtype(c.dtype, np.floating) or not np.isfinite(c).all():
            raise ValueError("'cohort' must be a finite 2-D float array")
        self._check_size(c.shape[0])
        self.cohort = torch.from_numpy(c.copy())

    def _prepare_rows(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        dtype = torch.promote_types(x.dtype, self.cohort.dtype)
        xs, co = x.to(dtype), self.cohort.to(device=x.device, dtype=dtype)
        n, m = int(xs.shape[0]), int(co.shape[0])
        # sub-blocks of about 4 MiB of cosines computed into one buffer (a fresh output per
        # block page-faults) and, on CPU, partitioned in place
        sub = max(1, (4 << 20) // max(1, m * xs.element_size()))
        buf = torch.empty(min(n, sub) * m, dtype=dtype, device=x.device)
        mus: list[torch.Tensor] = []
        sds: list[torch.Tensor] = []
        for r0 in range(0, n, sub):
            rows = min(sub, n - r0)
            cos = buf[: rows * m].view(rows, m)
            torch.mm(xs[r0 : r0 + rows], co.T, out=cos)
            vals = cos if self.top_k is None else top_values(cos, self.top_k, ordered=False)
            # statistics in float64, two-pass (3x faster than torch.std's Welford); of the
            # set: its order changes them by float64 roundings only
            v64 = vals.to(torch.float64, copy=True)
            mu64 = v64.mean(dim=1)
            d = v64.sub_(mu64[:, None])
            mus.append(mu64)
            sds.append(d.mul_(d).sum(dim=1).div_(v64.shape[1] - self.std_ddof).sqrt_())
        mu64, sd64 = torch.cat(mus), torch.cat(sds)
        mu, sd = mu64.to(dtype), sd64.to(dtype)  # each stored value rounded once
        if bool((sd <= 0).any()):
            raise ValueError(
                "a sample's top-k cohort cosines are all equal (std 0); AS-norm is undefined for it"
            )
        out = {"mu": mu, "sd": sd}
        if self.combine == "mean":  # the affine form's coefficients, each rounded once
            out["a"] = (0.5 / sd64).to(dtype)
            out["b"] = (0.5 * mu64 / sd64).to(dtype)
        return out

    def _score(
        self, cos: torch.Tensor, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        if self.combine == "mean":
            return cos * (a["a"][:, None] + b["a"]) - (a["b"][:, None] + b["b"])
        return self._formula(cos, a["mu"][:, None], a["sd"][:, None], b["mu"], b["sd"])

    def _formula(
        self,
        cos: torch.Tensor,
        mu_a: torch.Tensor,
        sd_a: torch.Tensor,
        mu_b: torch.Tensor,
        sd_b: torch.Tensor,
    ) -> torch.Tensor:
        """``z`` / ``t`` scores of ``cos`` with both sides' statistics broadcast against it."""
        if self.combine == "z":
            return (cos - mu_a) / sd_a
        return (cos - mu_b) / sd_b

    def _score_inplace(
        self,
        cos: torch.Tensor,
        a: Mapping[str, torch.Tensor],
        b: Mapping[str, torch.Tensor],
        scratch: torch.Tensor | None,
    ) -> bool:
        # _score's operations, in place, over row chunks of about 1 MiB (each chunk's
        # operations while it is in cache). ``mean``: the sum of the two sides' ``a`` into
        # a scratch chunk, a multiply, the sum of their ``b`` into it, a subtraction: each
        # one correctly rounded elementwise operation, as in _score, so bit for bit the same.
        h, w = cos.shape
        rows = max(1, (1 << 20) // max(1, w * cos.element_size()))
        if self.combine != "mean":
            mu, sd = (a["mu"][:, None], a["sd"][:, None]) if self.combine == "z" else (None, None)
            for r0 in range(0, h, rows):
                c = cos[r0 : r0 + rows]
                if mu is None or sd is None:
                    c.sub_(b["mu"]).div_(b["sd"])
                else:
                    c.sub_(mu[r0 : r0 + rows]).div_(sd[r0 : r0 + rows])
            return True
        a_r, b_r, a_c, b_c = a["a"][:, None], a["b"][:, None], b["a"], b["b"]
        if scratch is None or scratch.numel() < min(h, rows) * w:
            scratch = torch.empty(min(h, rows) * w, dtype=cos.dtype, device=cos.device)
        if h <= rows:  # one chunk (the pair passes' blocks): no slicing
            t = scratch[: h * w].view(h, w)
            torch.add(a_r, a_c, out=t)
            cos.mul_(t)
            torch.add(b_r, b_c, out=t)
            cos.sub_(t)
            return True
        for r0 in range(0, h, rows):
            c = cos[r0 : r0 + rows]
            t = scratch[: c.numel()].view(c.shape)
            torch.add(a_r[r0 : r0 + rows], a_c, out=t)
            c.mul_(t)
            torch.add(b_r[r0 : r0 + rows], b_c, out=t)
            c.sub_(t)
        return True

    def _score_pairs(
        self,
        cos: torch.Tensor,
        a: Mapping[str, torch.Tensor],
        b: Mapping[str, torch.Tensor],
        cols: torch.Tensor,
    ) -> torch.Tensor:
        if self.combine == "mean":
            return cos * (a["a"][:, None] + b["a"][cols]) - (a["b"][:, None] + b["b"][cols])
        return self._formula(cos, a["mu"][:, None], a["sd"][:, None], b["mu"][cols], b["sd"][cols])

    def symmetric(self) -> bool:
        """``mean`` is symmetric: ``0.5 * (za + zb)`` with a commutative float sum."""
        return self.combine == "mean"

    def error_terms(
        self, state_a: SideState, state_b: SideState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per side, for ``mean``: ``lip = 1.01 a`` and ``mag = 1.6 a + 1.01 |b|``. Derivation:
        with ``|cos' - cos| <= E`` and each of the four operations rounded to ``u / 2``, the sum
        ``A = a_i + a_j`` is within ``(u / 2) A``, the product ``cos' A`` within ``E A + u (1 +
        E) A`` of ``cos (a_i + a_j)``, the sum of the ``b`` within ``(u / 2)(|b_i| + |b_j|)``,
        and the final subtraction adds ``(u / 2)`` times ``(1 + E) A + |b_i| + |b_j|`` (to first
        order): in all ``E A + 1.5 (1 + E) u A + u (|b_i| + |b_j|)``, covered by the constants
        for ``E <= 0.06`` (``(D + 2) u`` for any practical ``D``), which also leave room for the
        float64 score's own rounding. ``z`` / ``t``: ``lip = 1 / sd``, ``mag = 3 (1 + |mu|) /
        sd`` on the side they use (0 on the other): ``(cos' - mu) / sd`` is within ``(E +
        1.02 u (1 + E + |mu|)) / sd`` of ``(cos - mu) / sd``. The bound covers the computed and
        the exact score's errors together (each against the real value of the formula with
        the stored statistics)."""
        if self.combine == "mean":

            def affine(st: SideState) -> tuple[torch.Tensor, torch.Tensor]:
                a = st.tensors["a"].to(torch.float64)
                b = st.tensors["b"].to(torch.float64)
                return 1.01 * a, 1.6 * a + 1.01 * b.abs()

            return (*affine(state_a), *affine(state_b))

        def terms(st: SideState, k: float) -> tuple[torch.Tensor, torch.Tensor]:
            mu = st.tensors["mu"].to(torch.float64)
            sd = st.tensors["sd"].to(torch.float64)
            return (1.0 / sd) * (k > 0), k * (1.0 + mu.abs()) / sd

        ka, kb = {"z": (3.0, 0.0), "t": (0.0, 3.0)}[self.combine]
        return (*terms(state_a, ka), *terms(state_b, kb))
