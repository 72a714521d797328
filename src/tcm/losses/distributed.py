"""Gathering embeddings across ``torch.distributed`` ranks for batch-level losses (DDP).

Pair/rank losses (TCM, Smooth-AP, Recall@k surrogate, ...) need the *global* batch. The usual
recipe on every rank::

    all_emb = gather_with_grad(emb)          # (sum_r B_r, D), local rows keep their graph
    all_lab = gather_no_grad(labels)         # (sum_r B_r,)
    loss = loss_fn(all_emb, all_lab)         # same value on every rank

The loss value then equals the single-process loss on the concatenated batch. Gradient scaling:
rank ``r`` back-propagates only through its own rows, and for those rows it gets exactly the
single-process gradient ``dL/d emb_r``. DDP then *averages* parameter gradients over the ``W``
ranks, so the parameter gradient is ``(1/W)·dL/dθ`` of the single-process loss on the global batch.
Multiply the loss by ``W`` (``torch.distributed.get_world_size()``) to reproduce the
single-process gradient exactly (or fold the factor into the learning rate).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from tcm._distributed import is_distributed, world_size

__all__ = ["gather_no_grad", "gather_with_grad", "is_distributed", "world_size"]


def _all_gather_padded(x: torch.Tensor) -> list[torch.Tensor]:
    """All-gather tensors whose first dimension may differ across ranks (other dims equal)."""
    ws = dist.get_world_size()
    n_local = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [torch.zeros_like(n_local) for _ in range(ws)]
    dist.all_gather(sizes, n_local)
    counts = [int(s.item()) for s in sizes]
    n_max = max(counts)
    if x.shape[0] < n_max:
        pad = x.new_zeros((n_max - x.shape[0], *x.shape[1:]))
        xp = torch.cat([x, pad], dim=0)
    else:
        xp = x
    out = [torch.empty_like(xp) for _ in range(ws)]
    dist.all_gather(out, xp.contiguous())
    return [o[:c] for o, c in zip(out, counts, strict=True)]


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (rank order); no gradient. Identity when not
    distributed. Ranks may hold different numbers of rows.

    Example:
        >>> gather_no_grad(torch.tensor([1, 2])).tolist()  # single process: identity
        [1, 2]
    """
    if not is_distributed():
        return x
    with torch.no_grad():
        return torch.cat(_all_gather_padded(x.detach()), dim=0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` (shape ``(B_r, ...)`` on rank ``r``) into ``(Σ_r B_r, ...)``, rank order.

    The slice belonging to this rank *is* ``x`` (same autograd graph); the other ranks' slices are
    constants. Backward therefore gives each rank ``dL/dx`` for its own rows only (no
    communication in backward). See the module docstring for the DDP gradient scaling (``1/W``).
    Identity when ``torch.distributed`` is not initialised (single process).

    Example:
        >>> x = torch.randn(4, 8, requires_grad=True)
        >>> gather_with_grad(x) is x  # not distributed: identity
        True
    """
    if not is_distributed():
        return x
    parts = _all_gather_padded(x.detach())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)
