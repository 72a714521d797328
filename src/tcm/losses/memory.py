"""Cross-batch memory (XBM; Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020).

A FIFO queue of the last ``M`` *detached* embeddings and their labels. At every training step the
loss compares the current batch (``B`` rows, with gradient) against the reference set
``memory ∪ batch`` (``M' + B`` rows, ``M' <= M`` the number of rows stored so far), then the batch
is enqueued and the oldest rows fall out. Embeddings are stored as given (float32, or float64 for
float64 input; lower precisions are widened to float32); every loss
L2-normalises internally, so similarities are cosine similarities.

Under DDP the loss is computed on the all-gathered global batch (``tcm.train`` does this), so the
memory enqueues the global batch and holds the same rows on every rank.

Warm-up (``warmup=K``): the first ``K`` calls of :meth:`enqueue` store nothing, so for ``K``
training steps the loss sees the batch only; XBM starts its memory once the embeddings have
stopped moving fast, because rows enqueued early are stale by the time they are compared.

The queue and the call count are part of the module's ``state_dict`` (as *extra state*), so a
resumed run continues with the same memory. It never synchronises with the device: positions
are Python integers.

Example:
    >>> import torch
    >>> mem = CrossBatchMemory(4)
    >>> mem.enqueue(torch.ones(3, 2), torch.tensor([0, 1, 2]))
    >>> mem.enqueue(torch.zeros(2, 2), torch.tensor([3, 4]))
    >>> emb, lab = mem.contents()
    >>> lab.tolist()  # oldest first; label 0 fell out
    [1, 2, 3, 4]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["CrossBatchMemory"]


class CrossBatchMemory(nn.Module):
    """FIFO of the last ``size`` detached embeddings ``(size, D)`` and int64 labels ``(size,)``.

    Args:
        size: capacity ``M >= 1`` (rows). ``D`` is fixed by the first stored batch.
        warmup: number ``K >= 0`` of first :meth:`enqueue` calls (training steps) that store
            nothing.

    Example:
        >>> mem = CrossBatchMemory(8, warmup=2)
        >>> for step in range(3):
        ...     mem.enqueue(torch.ones(2, 3), torch.tensor([step, step]))
        >>> len(mem), mem.calls  # steps 0 and 1 were the warm-up
        (2, 3)
    """

    def __init__(self, size: int, warmup: int = 0) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"memory_size must be a positive integer (rows); got {size!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"memory warm-up must be an integer >= 0 (steps); got {warmup!r}")
        self.size = size
        self.warmup = warmup
        self.calls = 0  # enqueue calls so far, warm-up included
        self._emb: torch.Tensor | None = None
        self._lab: torch.Tensor | None = None
        self._ptr = 0  # next row to overwrite
        self._count = 0  # rows filled so far (<= size)

    def extra_repr(self) -> str:
        return f"size={self.size}, warmup={self.warmup}, filled={self._count}"

    def __len__(self) -> int:
        return self._count

    def reset(self) -> None:
        """Empty the memory and restart the warm-up."""
        self._emb = self._lab = None
        self._ptr = self._count = 0
        self.calls = 0

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Append ``embeddings (B, D)`` (detached; float32 or float64) and ``labels (B,)``;
        during the warm-up (the first ``warmup`` calls) only count the call."""
        self.calls += 1
        if self.calls <= self.warmup:
            return
        self._store(embeddings, labels)

    def _store(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        emb = embeddings.detach()
        if emb.dtype != torch.float64:
            emb = emb.to(torch.float32)
        lab = torch.as_tensor(labels, device=emb.device).detach().to(torch.int64).reshape(-1)
        if emb.ndim != 2 or lab.shape[0] != emb.shape[0]:
            raise ValueError(
                f"enqueue needs embeddings (B, D) and labels (B,); got {tuple(emb.shape)} and "
                f"{tuple(lab.shape)}"
            )
        if self._emb is None or self._emb.shape[1] != emb.shape[1]:
            if self._emb is not None:
                raise ValueError(
                    f"memory holds dimension {self._emb.shape[1]}, got embeddings of dimension "
                    f"{emb.shape[1]}"
                )
            self._emb = emb.new_zeros((self.size, emb.shape[1]))
            self._lab = lab.new_zeros((self.size,))
        assert self._lab is not None
        if self._emb.device != emb.device or self._emb.dtype != emb.dtype:
            self._emb = self._emb.to(device=emb.device, dtype=emb.dtype)
            self._lab = self._lab.to(emb.device)
        n = emb.shape[0]
        if n >= self.size:  # the batch alone fills the memory: keep its last M rows
            self._emb.copy_(emb[n - self.size :])
            self._lab.copy_(lab[n - self.size :])
            self._ptr, self._count = 0, self.size
            return
        end = self._ptr + n
        if end <= self.size:
            self._emb[self._ptr : end] = emb
            self._lab[self._ptr : end] = lab
        else:  # wrap around
            k = self.size - self._ptr
            self._emb[self._ptr :] = emb[:k]
            self._lab[self._ptr :] = lab[:k]
            self._emb[: n - k] = emb[k:]
            self._lab[: n - k] = lab[k:]
        self._ptr = end % self.size
        self._count = min(self.size, self._count + n)

    def contents(self, ordered: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored rows: ``(embeddings (M', D), labels (M',) int64)``, oldest first (or, with
        ``ordered=False``, in storage order: no copy; what a loss needs).

        Empty memory: ``(0, 0)`` and ``(0,)`` tensors.
        """
        if self._emb is None or self._lab is None or self._count == 0:
            return torch.zeros((0, 0)), torch.zeros((0,), dtype=torch.int64)
        if self._count < self.size:
            return self._emb[: self._count], self._lab[: self._count]
        if not ordered or self._ptr == 0:
            return self._emb, self._lab
        order = torch.cat(
            [
                torch.arange(self._ptr, self.size, device=self._emb.device),
                torch.arange(0, self._ptr, device=self._emb.device),
            ]
        )
        return self._emb[order], self._lab[order]

    def get_extra_state(self) -> dict[str, Any]:
        emb, lab = self.contents()
        return {
            "size": self.size,
            "calls": self.calls,
            "embeddings": emb.cpu().clone(),
            "labels": lab.cpu().clone(),
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or int(state.get("size", -1)) != self.size:
            got = state.get("size") if isinstance(state, dict) else state
            raise ValueError(
                f"cross-batch memory state of size {got} does not fit size {self.size}"
            )
        self.reset()
        emb, lab = state["embeddings"], state["labels"]
        if emb.numel():
            with torch.no_grad():
                self._store(emb, lab)
        # checkpoints written before the warm-up existed have no call count: a filled memory
        # is past any warm-up
        self.calls = int(state.get("calls", self.warmup if emb.numel() else 0))
