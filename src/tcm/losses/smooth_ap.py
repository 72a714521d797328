"""Smooth-AP loss (Brown et al., ECCV 2020), vectorised over queries with a chunked mode."""

from __future__ import annotations

import torch

from tcm.losses._common import check_finite_param
from tcm.losses._ranking import (
    DEFAULT_MAX_ELEMENTS,
    PositiveIndex,
    RankChunk,
    RankingLoss,
)

__all__ = ["SmoothAPLoss"]


class SmoothAPLoss(RankingLoss):
    """Smooth-AP: 1 - mean smoothed Average Precision, every batch sample a query.

    With ``S`` the ``B x B`` cosine-similarity matrix of the L2-normalised batch, query ``i``,
    its positives ``P_i = {j ≠ i : y_j = y_i}`` and ``σ_τ(x) = sigmoid(x / τ)``::

        R_all(i, j) = 1 + Σ_{k≠i, k≠j}   σ_τ(S_ik - S_ij)      (rank of j among all others)
        R_pos(i, j) = 1 + Σ_{k∈P_i, k≠j} σ_τ(S_ik - S_ij)      (rank of j among positives)
        AP_i = (1/|P_i|) Σ_{j∈P_i} R_pos(i, j) / R_all(i, j)
        L = 1 - mean_{i : |P_i| >= 1} AP_i

    Queries without a positive are skipped; a batch where no sample has a positive gives a zero
    loss and a one-time warning naming the sampler fix.

    Memory: one ``(Q, P_max, B)`` block (``P_max`` = largest positive count of a query). With
    ``chunk_size=None`` the block is built at once if it has at most ``max_elements`` entries,
    otherwise queries are processed in chunks under activation checkpointing (memory
    ``O(chunk·P_max·B + B²)``), so ``B = 4000`` fits easily on a 24 GiB machine or one GPU.

    Args:
        temperature: ``τ > 0`` of the rank sigmoid (paper: 0.01), in cosine-similarity units.
        chunk_size: queries per chunk; ``None`` = choose by size.
        max_elements: block-size budget for the automatic choice.

    Shapes: ``embeddings (B, D)`` float, ``labels (B,)``; returns a scalar tensor in [0, 1).

    Example:
        >>> import torch
        >>> emb = torch.randn(8, 4, requires_grad=True)
        >>> loss = SmoothAPLoss()(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
        >>> loss.backward()
        >>> 0.0 <= float(loss.detach()) < 1.0
        True
    """

    loss_name = "SmoothAPLoss"

    def __init__(
        self,
        temperature: float = 0.01,
        chunk_size: int | None = None,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        super().__init__()
        self.temperature = check_finite_param(temperature, "temperature", positive=True)
        self._set_chunking(chunk_size, max_elements)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, chunk_size={self.chunk_size}"

    def _ranking_loss(self, sims: torch.Tensor, pidx: PositiveIndex) -> torch.Tensor:
        """Return ``1 - mean AP`` over the queries of ``pidx``."""

        def ap(ch: RankChunk) -> torch.Tensor:
            assert ch.r_pos is not None
            ratio = torch.where(ch.valid, ch.r_pos / ch.r_all, torch.zeros_like(ch.r_all))
            return ratio.sum(dim=1) / ch.n_pos.to(ratio.dtype)

        return 1.0 - self._per_query(sims, pidx, self.temperature, True, ap).mean()
