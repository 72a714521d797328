"""Class-balanced batch sampler (P classes x m samples per batch) with a correct DDP rank split.

Epoch construction (identical on every rank, seeded by ``(seed, epoch)``):

1. Every class ``c`` with ``n_c`` samples is shuffled and cut into ``ceil(n_c / m)`` groups of
   ``m`` indices. A class smaller than ``m`` gives one group drawn with replacement; the last,
   short group of a larger class is topped up with other samples of that class (no duplicate
   inside the group). So every sample appears at least once per epoch.
2. Groups are spread over the epoch (group ``j`` of ``k_c`` gets the key ``(j + u) / k_c`` with a
   uniform ``u``) and packed in key order into batches of ``P = batch_size // m`` groups of
   *distinct* classes (a conflicting group waits for the next batch).
3. ``G = sum_c ceil(n_c / m)`` groups give ``floor(G / P)`` full batches; with ``drop_last=False``
   the leftover groups form one more batch, completed with fresh groups of other classes.
4. The global batch list is cut to a multiple of ``world_size`` (``drop_last=True``) or padded
   by repeating its first batches (``drop_last=False``); rank ``r`` takes batches
   ``r, r + world_size, ...``. Ranks therefore get disjoint, equally long parts of one epoch.

Example:
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(6), 4)
    >>> s = ClassBalancedBatchSampler(labels, batch_size=8, m_per_class=4, seed=0)
    >>> batches = list(s)
    >>> len(batches) == len(s) == 3, sorted(len(set(labels[b])) for b in batches)
    (True, [2, 2, 2])
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from tcm._validation import ArrayLike, encode_labels

__all__ = ["ClassBalancedBatchSampler"]


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int; got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
    return int(value)


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Yield lists of dataset indices: ``batch_size // m_per_class`` classes x ``m_per_class``.

    Use as ``DataLoader(ds, batch_sampler=sampler)`` and call :meth:`set_epoch` every epoch.

    Args:
        labels: ``(N,)`` class ids of the dataset (any integer or string ids).
        batch_size: indices per batch; must be a multiple of ``m_per_class``.
        m_per_class: samples per class in a batch (``m``).
        seed: base seed; the same ``seed`` and epoch give the same batches on every run / rank.
        rank, world_size: DDP position; rank ``r`` gets every ``world_size``-th global batch.
        drop_last: drop the incomplete tail (True) or complete / pad it (False); see module doc.

    Raises:
        ValueError: bad sizes, ``batch_size`` not a multiple of ``m_per_class``, fewer classes
            than ``batch_size // m_per_class``, ``rank`` outside ``[0, world_size)``.
    """

    def __init__(
        self,
        labels: ArrayLike,
        batch_size: int,
        m_per_class: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        codes, classes = encode_labels(labels)
        if codes.shape[0] == 0:
            raise ValueError("labels are empty: shape (0,)")
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.m_per_class = _check_int(m_per_class, "m_per_class", 1)
        self.world_size = _check_int(world_size, "world_size", 1)
        self.rank = _check_int(rank, "rank", 0)
        self.seed = _check_int(seed, "seed", 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}); got {rank}")
        if self.batch_size % self.m_per_class != 0:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of m_per_class "
                f"({self.m_per_class})"
            )
        self.classes_per_batch = self.batch_size // self.m_per_class
        num_classes = int(classes.shape[0])
        if self.classes_per_batch > num_classes:
            raise ValueError(
                f"batch_size // m_per_class = {self.classes_per_batch} classes per batch but the "
                f"labels have only {num_classes} classes"
            )
        self.drop_last = bool(drop_last)
        self.epoch = 0
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=num_classes)
        self._members: list[np.ndarray] = np.split(order, np.cumsum(counts)[:-1])
        self._groups_per_class = np.maximum(1, -(-counts // self.m_per_class))
        num_groups = int(self._groups_per_class.sum())
        full, rest = divmod(num_groups, self.classes_per_batch)
        self._num_global = full + (1 if (rest and not self.drop_last) else 0)
        if self._num_global == 0:
            raise ValueError(
                f"labels give {num_groups} groups of m={self.m_per_class}, fewer than the "
                f"{self.classes_per_batch} classes one batch needs; use drop_last=False"
            )
        ws = self.world_size
        if self.drop_last:
            self._per_rank = self._num_global // ws
        else:
            self._per_rank = -(-self._num_global // ws)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; the batches are a deterministic function of ``(seed, epoch)``."""
        self.epoch = _check_int(epoch, "epoch", 0)

    def __len__(self) -> int:
        """Number of batches this rank yields per epoch."""
        return self._per_rank

    def _group(self, rng: np.random.Generator, members: np.ndarray) -> np.ndarray:
        m = self.m_per_class
        if members.shape[0] >= m:
            return rng.choice(members, size=m, replace=False)
        return rng.choice(members, size=m, replace=True)

    def global_batches(self) -> list[list[int]]:
        """All ranks' batches of the current epoch, in order (rank r gets ``[r::world_size]``)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        m = self.m_per_class
        group_cls: list[int] = []
        group_idx: list[np.ndarray] = []
        keys: list[float] = []
        for c, members in enumerate(self._members):
            perm = rng.permutation(members)
            k = int(self._groups_per_class[c])
            offset = rng.random()
            for j in range(k):
                chunk = perm[j * m : (j + 1) * m]
                if chunk.shape[0] < m:
                    if perm.shape[0] >= m:
                        others = np.setdiff1d(perm, chunk, assume_unique=True)
                        extra = rng.choice(others, size=m - chunk.shape[0], replace=False)
                    else:
                        extra = rng.choice(perm, size=m - chunk.shape[0], replace=True)
                    chunk = np.concatenate([chunk, extra])
                group_cls.append(c)
                group_idx.append(chunk)
                keys.append((j + offset) / k)
        order = np.lexsort((rng.random(len(keys)), np.asarray(keys)))
        num_classes = len(self._members)
        p = self.classes_per_batch
        pending: list[int] = []
        pos = 0
        batches: list[list[int]] = []
        for _ in range(self._num_global):
            used: set[int] = set()
            chosen: list[int] = []
            still: list[int] = []
            for g in pending:
                if len(chosen) < p and group_cls[g] not in used:
                    used.add(group_cls[g])
                    chosen.append(g)
                else:
                    still.append(g)
            pending = still
            while len(chosen) < p and pos < len(order):
                g = int(order[pos])
                pos += 1
                if group_cls[g] in used:
                    pending.append(g)
                else:
                    used.add(group_cls[g])
                    chosen.append(g)
            batch = [int(i) for g in chosen for i in group_idx[g]]
            if len(chosen) < p:
                free = np.array([c for c in range(num_classes) if c not in used], dtype=np.int64)
                for c in rng.choice(free, size=p - len(chosen), replace=False).tolist():
                    batch.extend(int(i) for i in self._group(rng, self._members[c]))
            batches.append(batch)
        ws = self.world_size
        if self.drop_last:
            batches = batches[: (len(batches) // ws) * ws]
        else:
            total = self._per_rank * ws
            batches = [batches[i % len(batches)] for i in range(total)]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.global_batches()[self.rank :: self.world_size]
