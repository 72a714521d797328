"""Exchanging mergeable metric states between shards (``torch.distributed`` or in-process).

The pair passes of :func:`tcm.metrics.pair_statistics` and the retrieval queries of
:func:`tcm.metrics.evaluate` can be split over ``W`` shards. What the shards must exchange is
small and exact: integer count tables (summed) and, for the exact FAR quantiles, the few
negative-pair similarities that fall inside the quantile brackets (concatenated). A
:class:`Communicator` provides these two collective operations; every shard calls them in the
same order with arrays of the same dtype (and, for :meth:`~Communicator.sum`, shape).

* :class:`TorchCommunicator` uses the default ``torch.distributed`` process group (gloo on CPU,
  NCCL on CUDA; NCCL needs the arrays on the rank's GPU, which is handled here). A collective
  that outlasts the group's timeout raises :class:`DistributedTimeoutError` (one line naming the
  timeout; set by :func:`tcm._distributed.join_process_group`).
* :func:`default_communicator` returns one when a process group is initialised with more than
  one rank, else ``None`` (single process).

Example:
    >>> default_communicator() is None  # no process group in a plain Python session
    True
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from tcm._distributed import DistributedTimeoutError, collective, is_distributed, world_size

__all__ = ["Communicator", "DistributedTimeoutError", "TorchCommunicator", "default_communicator"]


@runtime_checkable
class Communicator(Protocol):
    """Collectives over ``world`` shards; ``rank`` is this shard's index."""

    @property
    def rank(self) -> int:
        """This shard's index in ``[0, world)``."""
        ...

    @property
    def world(self) -> int:
        """Number of shards."""
        ...

    def sum(self, a: np.ndarray) -> np.ndarray:
        """Element-wise sum of every shard's ``a`` (same shape and dtype on every shard)."""
        ...

    def concat(self, a: np.ndarray) -> np.ndarray:
        """Concatenation (rank order) of every shard's 1-D ``a`` (lengths may differ)."""
        ...


class TorchCommunicator:
    """:class:`Communicator` over the default ``torch.distributed`` process group.

    Integer tables are summed as int64 (exact); concatenation all-gathers the lengths, pads to the
    longest and trims. With the NCCL backend tensors are moved to ``cuda:<current device>``.
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        if not is_distributed():
            raise ValueError("TorchCommunicator needs an initialised torch.distributed group")
        self._dist = dist
        self._rank = int(dist.get_rank())
        self._world = int(dist.get_world_size())
        backend = str(dist.get_backend()).lower()
        self._device = (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self._rank

    @property
    def world(self) -> int:
        """The process group's size."""
        return self._world

    def sum(self, a: np.ndarray) -> np.ndarray:
        """All-reduce (sum) of ``a``; returns a new array of ``a``'s dtype."""
        t = torch.from_numpy(np.ascontiguousarray(a)).to(self._device)
        with collective("all_reduce"):
            self._dist.all_reduce(t)
        return t.cpu().numpy().astype(a.dtype, copy=False)

    def concat(self, a: np.ndarray) -> np.ndarray:
        """All-gather of the 1-D ``a`` of every rank, concatenated in rank order."""
        flat = np.ascontiguousarray(a).reshape(-1)
        n = torch.tensor([flat.shape[0]], dtype=torch.int64, device=self._device)
        sizes = [torch.zeros_like(n) for _ in range(self._world)]
        with collective("all_gather"):
            self._dist.all_gather(sizes, n)
        lens = [int(s.item()) for s in sizes]
        width = max(max(lens), 1)
        buf = torch.zeros(width, dtype=torch.from_numpy(flat[:0]).dtype, device=self._device)
        buf[: flat.shape[0]] = torch.from_numpy(flat).to(self._device)
        out = [torch.empty_like(buf) for _ in range(self._world)]
        with collective("all_gather"):
            self._dist.all_gather(out, buf)
        return np.concatenate([o[:k].cpu().numpy() for o, k in zip(out, lens, strict=True)])


def default_communicator() -> TorchCommunicator | None:
    """A :class:`TorchCommunicator` if ``torch.distributed`` is initialised with more than one
    rank, else ``None``."""
    if world_size() > 1:
        return TorchCommunicator()
    return None
