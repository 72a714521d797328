"""Recall@k surrogate loss RS@k (Patel, Tolias & Matas, CVPR 2022), without Similarity Mixup."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tcm.losses._common import check_finite_param
from tcm.losses._ranking import (
    DEFAULT_MAX_ELEMENTS,
    PositiveIndex,
    RankChunk,
    RankingLoss,
)

__all__ = ["RecallAtKSurrogateLoss"]


class RecallAtKSurrogateLoss(RankingLoss):
    """Recall@k surrogate: ``1 - mean_k`` of a sigmoid-relaxed Recall@k, every sample a query.

    With ``S`` the ``B x B`` cosine-similarity matrix, query ``i``, positives
    ``P_i = {j ≠ i : y_j = y_i}``::

        r(i, j)   = 1 + Σ_{k≠i, k≠j} sigmoid((S_ik - S_ij) / τ1)     (relaxed rank of j)
        R@k(i)    = Σ_{j∈P_i} sigmoid((k - r(i, j)) / τ2) / min(k, |P_i|)
        L = (1/|K|) Σ_{k∈K} (1 - mean_{i : |P_i| >= 1} R@k(i))

    Defaults follow the paper: ``τ1 = 0.01`` (similarity units), ``τ2 = 1`` (rank units),
    ``K = (1, 2, 4, 8, 16)``. Similarity Mixup (SiMix) is not included: it is a batch
    augmentation applied before the loss and can be added by the caller.

    Queries without a positive are skipped; a batch where no sample has a positive gives a zero
    loss and a one-time warning. Memory: a ``(Q, P_max, B)`` block, chunked over queries with
    activation checkpointing when it exceeds ``max_elements`` (see :class:`SmoothAPLoss`).

    Args:
        ks: the ``k`` values (positive integers).
        tau1: temperature of the rank sigmoid (> 0).
        tau2: temperature of the ``k - rank`` sigmoid (> 0).
        chunk_size: queries per chunk; ``None`` = choose by size.
        max_elements: block-size budget for the automatic choice.

    Shapes: ``embeddings (B, D)`` float, ``labels (B,)``; returns a scalar tensor.

    Example:
        >>> import torch
        >>> emb = torch.randn(8, 4, requires_grad=True)
        >>> loss = RecallAtKSurrogateLoss(ks=(1, 2))(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
        >>> loss.backward()
    """

    loss_name = "RecallAtKSurrogateLoss"

    def __init__(
        self,
        ks: Sequence[int] = (1, 2, 4, 8, 16),
        tau1: float = 0.01,
        tau2: float = 1.0,
        chunk_size: int | None = None,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        super().__init__()
        if isinstance(ks, int | str) or len(ks) == 0:
            raise ValueError(f"ks must be a non-empty sequence of positive integers; got {ks!r}")
        for k in ks:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"ks must contain positive integers; got {k!r} in {tuple(ks)}")
        self.ks = tuple(int(k) for k in ks)
        self.tau1 = check_finite_param(tau1, "tau1", positive=True)
        self.tau2 = check_finite_param(tau2, "tau2", positive=True)
        self._set_chunking(chunk_size, max_elements)

    def extra_repr(self) -> str:
        return f"ks={self.ks}, tau1={self.tau1}, tau2={self.tau2}, chunk_size={self.chunk_size}"

    def _ranking_loss(self, sims: torch.Tensor, pidx: PositiveIndex) -> torch.Tensor:
        """Return the RS@k loss averaged over ``ks`` and the queries of ``pidx``."""
        tau2, ks = self.tau2, self.ks

        def recall_loss(ch: RankChunk) -> torch.Tensor:
            zero = torch.zeros_like(ch.r_all)
            total = ch.r_all.new_zeros(ch.r_all.shape[0])
            for k in ks:
                hit = torch.where(ch.valid, torch.sigmoid((k - ch.r_all) / tau2), zero).sum(dim=1)
                total = total + (1.0 - hit / ch.n_pos.clamp(max=k).to(hit.dtype))
            return total / len(ks)

        return self._per_query(sims, pidx, self.tau1, False, recall_loss).mean()
