"""Private vectorised, optionally chunked, sigmoid-relaxed ranks shared by Smooth-AP and RS@k.

For query ``i`` (a row of the ``B x B`` cosine-similarity matrix ``S``) and one of its positives
``j`` (same label, ``j != i``)::

    R_all(i, j) = 1 + Σ_{k≠i, k≠j}     σ((S_ik - S_ij) / τ)      (relaxed rank among all others)
    R_pos(i, j) = 1 + Σ_{k∈P_i, k≠j}   σ((S_ik - S_ij) / τ)      (relaxed rank among positives)

Computed as ``0.5 + Σ_{k≠i} σ(...)`` (the ``k = j`` term is exactly ``σ(0) = 0.5`` and has zero
gradient), on a ``(queries, P_max, B)`` tensor where ``P_max`` is the largest number of positives
of a query; padded positive slots are masked out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tcm.losses._common import check_embeddings, cosine_similarity_matrix, label_codes

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "PositiveIndex",
    "RankChunk",
    "RankingLoss",
    "check_chunk",
    "per_query_losses",
    "positive_index",
]

# Largest (queries x P_max x B) block materialised at once in auto mode (~256 MB in float32).
DEFAULT_MAX_ELEMENTS = 1 << 26


class PositiveIndex:
    """Padded positive indices: ``idx (Q, P)`` long, ``valid (Q, P)`` bool, ``count (Q,)`` long,
    for the query rows ``rows (Q,)`` that have at least one positive."""

    def __init__(
        self, rows: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor, count: torch.Tensor
    ) -> None:
        self.rows = rows
        self.idx = idx
        self.valid = valid
        self.count = count


def positive_index(labels: torch.Tensor) -> PositiveIndex:
    """Build :class:`PositiveIndex` from integer labels ``(B,)`` without any Python loop."""
    pos = labels[:, None] == labels[None, :]
    pos.fill_diagonal_(False)
    count_all = pos.sum(dim=1)
    rows = torch.nonzero(count_all > 0).flatten()
    pos = pos[rows]
    count = count_all[rows]
    p_max = int(count.max()) if rows.numel() > 0 else 0
    q = rows.shape[0]
    idx = torch.zeros((q, max(p_max, 1)), dtype=torch.int64, device=labels.device)
    valid = torch.zeros((q, max(p_max, 1)), dtype=torch.bool, device=labels.device)
    if q > 0:
        r, c = torch.nonzero(pos, as_tuple=True)
        slot = (torch.cumsum(pos.to(torch.int64), dim=1) - 1)[r, c]
        idx[r, slot] = c
        valid[r, slot] = True
    return PositiveIndex(rows, idx, valid, count)


def relaxed_ranks(
    s_rows: torch.Tensor,
    rows: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    tau: float,
    with_pos: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(R_all, R_pos)`` of shape ``(Q, P)`` for query rows ``s_rows (Q, B)``.

    ``rows (Q,)`` are the query indices (their own column is excluded). ``R_pos`` is ``None``
    unless ``with_pos``. Padded slots hold finite garbage and must be masked by ``valid``.
    """
    cols = torch.arange(s_rows.shape[1], device=s_rows.device)
    neg_inf = torch.tensor(-math.inf, dtype=s_rows.dtype, device=s_rows.device)
    s_k = torch.where(cols[None, :] == rows[:, None], neg_inf, s_rows)  # exclude k = i
    s_j = torch.gather(s_rows, 1, idx)
    s_j = torch.where(valid, s_j, torch.zeros_like(s_j))  # (Q, P), finite everywhere
    # scale the (Q, B) / (Q, P) operands by 1/tau before broadcasting: one (Q, P, B) pass less
    inv = 1.0 / tau
    s_j = s_j * inv
    r_all = 0.5 + torch.sigmoid((s_k * inv)[:, None, :] - s_j[:, :, None]).sum(dim=-1)
    if not with_pos:
        return r_all, None
    s_pk = torch.where(valid, s_j, neg_inf)  # padded positives never count
    r_pos = 0.5 + torch.sigmoid(s_pk[:, None, :] - s_j[:, :, None]).sum(dim=-1)
    return r_all, r_pos


def per_query_losses(
    sims: torch.Tensor,
    pidx: PositiveIndex,
    fn: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
    ],
    chunk_size: int | None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> torch.Tensor:
    """Apply ``fn(s_rows, rows, idx, valid, count) -> (c,)`` over query chunks; return ``(Q,)``.

    ``chunk_size=None`` picks one chunk when ``Q·P·B <= max_elements``, otherwise chunks of
    ``max(1, max_elements // (P·B))`` queries. With more than one chunk and autograd enabled,
    each chunk is wrapped in activation checkpointing, so only one chunk's ``(c, P, B)``
    intermediates exist at a time (memory ``O(c·P·B + B²)``; the forward is recomputed once in
    backward).
    """
    q = pidx.rows.shape[0]
    p = pidx.idx.shape[1]
    b = sims.shape[1]
    if chunk_size is None:
        chunk = q if q * p * b <= max_elements else max(1, max_elements // (p * b))
    else:
        chunk = chunk_size
    chunk = max(1, min(chunk, q))
    use_ckpt = chunk < q and torch.is_grad_enabled() and sims.requires_grad
    outs: list[torch.Tensor] = []
    for start in range(0, q, chunk):
        sl = slice(start, start + chunk)
        rows = pidx.rows[sl]
        s_rows = sims.index_select(0, rows)
        args = (s_rows, rows, pidx.idx[sl], pidx.valid[sl], pidx.count[sl])
        if use_ckpt:
            out = checkpoint(fn, *args, use_reentrant=False)
            assert isinstance(out, torch.Tensor)
        else:
            out = fn(*args)
        outs.append(out)
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def zero_loss_no_positive(sims: torch.Tensor, owner: object, loss_name: str) -> torch.Tensor:
    """Zero (graph-connected) loss for a batch without positives, with a one-time warning."""
    if not getattr(owner, "_warned_no_pos", False):
        owner._warned_no_pos = True  # type: ignore[attr-defined]
        warnings.warn(
            f"{loss_name}: no sample in the batch has a positive (same-label) partner, the loss "
            "is 0; use a class-balanced sampler (e.g. tcm.data.ClassBalancedBatchSampler with "
            "m_per_class >= 2). This warning is shown once.",
            RuntimeWarning,
            stacklevel=3,
        )
    return sims.sum() * 0.0


def check_chunk(chunk_size: int | None, max_elements: int) -> tuple[int | None, int]:
    """Return ``(chunk_size, max_elements)`` as ints (``chunk_size`` may be ``None``).

    Raises:
        ValueError: ``chunk_size`` not a positive integer or ``None``, or ``max_elements`` not a
            positive integer.
    """
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer or None; got {chunk_size!r}")
    if isinstance(max_elements, bool) or int(max_elements) != max_elements or max_elements < 1:
        raise ValueError(f"max_elements must be a positive integer; got {max_elements!r}")
    return (None if chunk_size is None else int(chunk_size)), int(max_elements)


class RankChunk(NamedTuple):
    """Relaxed ranks of a chunk of ``c`` queries: ``r_all (c, P)``, ``r_pos (c, P)`` (``None``
    unless asked for), the positive-slot mask ``valid (c, P)`` and positive counts ``n_pos (c,)``.
    Padded slots of ``r_all`` / ``r_pos`` hold finite garbage and must be masked by ``valid``."""

    r_all: torch.Tensor
    r_pos: torch.Tensor | None
    valid: torch.Tensor
    n_pos: torch.Tensor


class RankingLoss(nn.Module):
    """Base of the chunked ranking losses (Smooth-AP, RS@k): input checks, the batch similarity
    matrix, the positive index and the zero loss of a batch without positives.

    A subclass sets ``loss_name``, calls :meth:`_set_chunking` in its ``__init__`` (after its own
    parameter checks) and implements :meth:`_ranking_loss`, usually with :meth:`_per_query`.
    """

    loss_name = "RankingLoss"
    chunk_size: int | None
    max_elements: int

    def _set_chunking(self, chunk_size: int | None, max_elements: int) -> None:
        """Check and store the chunking parameters; arm the one-time no-positive warning."""
        self.chunk_size, self.max_elements = check_chunk(chunk_size, max_elements)
        self._warned_no_pos = False

    def _ranking_loss(self, sims: torch.Tensor, pidx: PositiveIndex) -> torch.Tensor:
        """The loss of a batch with ``B x B`` similarities ``sims`` and at least one positive."""
        raise NotImplementedError

    def _per_query(
        self,
        sims: torch.Tensor,
        pidx: PositiveIndex,
        tau: float,
        with_pos: bool,
        fn: Callable[[RankChunk], torch.Tensor],
    ) -> torch.Tensor:
        """``(Q,)`` values ``fn(chunk)`` of the relaxed ranks (temperature ``tau``; ``r_pos`` only
        ``with_pos``) of each query chunk, chunked as :func:`per_query_losses` does."""

        def chunk_fn(
            s_rows: torch.Tensor,
            rows: torch.Tensor,
            idx: torch.Tensor,
            valid: torch.Tensor,
            count: torch.Tensor,
        ) -> torch.Tensor:
            r_all, r_pos = relaxed_ranks(s_rows, rows, idx, valid, tau, with_pos=with_pos)
            return fn(RankChunk(r_all, r_pos, valid, count))

        return per_query_losses(sims, pidx, chunk_fn, self.chunk_size, self.max_elements)

    def forward(self, embeddings: torch.Tensor, labels: Any) -> torch.Tensor:
        """Return the loss for ``embeddings (B, D)`` and ``labels (B,)``."""
        emb = check_embeddings(embeddings)
        lab, _ = label_codes(labels, emb.shape[0], emb.device)
        sims = cosine_similarity_matrix(emb)
        pidx = positive_index(lab)
        if pidx.rows.numel() == 0:
            return zero_loss_no_positive(sims, self, self.loss_name)
        return self._ranking_loss(sims, pidx)
