"""Class-balanced batch sampler (P classes x m samples per batch) with a correct DDP rank split.

Epoch construction (identical on every rank, seeded by ``(seed, epoch)``):

1. Every class ``c`` with ``n_c`` samples is shuffled and cut into ``ceil(n_c / m)`` groups of
   ``m`` indices. A class smaller than ``m`` gives one group drawn with replacement; the last,
   short group of a larger class is topped up with other samples of that class (no duplicate
   inside the group). So every sample appears at least once per epoch.
2. Groups are spread over the epoch (group ``j`` of ``k_c`` gets the key ``(j + u) / k_c`` with a
   uniform ``u``) and packed in key order into batches of ``P = batch_size // m`` groups of
   *distinct* classes. A class with as many groups left as batches left is put in the current
   batch first, so no group is lost whenever ``max_c ceil(n_c / m)`` <= number of batches.
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

import heapq
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

    @staticmethod
    def _take(
        c: int,
        queues: list[list[int]],
        head: list[int],
        used: set[int],
        chosen: list[int],
        count_heap: list[tuple[int, int]],
    ) -> None:
        """Move the next group of class ``c`` into the batch being built."""
        chosen.append(queues[c][head[c]])
        head[c] += 1
        used.add(c)
        remaining = len(queues[c]) - head[c]
        if remaining:
            heapq.heappush(count_heap, (-remaining, c))

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
                        others = perm[: j * m]  # the members not in this (last) chunk
                        extra = rng.choice(others, size=m - chunk.shape[0], replace=False)
                    else:
                        extra = rng.choice(perm, size=m - chunk.shape[0], replace=True)
                    chunk = np.concatenate([chunk, extra])
                group_cls.append(c)
                group_idx.append(chunk)
                keys.append((j + offset) / k)
        num_classes = len(self._members)
        p = self.classes_per_batch
        nb = self._num_global
        # per class: its groups in key order; heap of (next key, class); heap of (-remaining, class)
        queues: list[list[int]] = [[] for _ in range(num_classes)]
        for g in sorted(range(len(keys)), key=lambda g: keys[g]):
            queues[group_cls[g]].append(g)
        head = [0] * num_classes
        key_heap = [(keys[q[0]], float(rng.random()), c) for c, q in enumerate(queues)]
        heapq.heapify(key_heap)
        count_heap = [(-len(q), c) for c, q in enumerate(queues)]
        heapq.heapify(count_heap)
        batches: list[list[int]] = []
        for b in range(nb):
            left = nb - b
            chosen: list[int] = []
            used: set[int] = set()

            # a class with as many groups left as batches left must go into this batch
            while count_heap and len(chosen) < p and -count_heap[0][0] >= left:
                neg, c = heapq.heappop(count_heap)
                if -neg != len(queues[c]) - head[c] or c in used:
                    continue
                self._take(c, queues, head, used, chosen, count_heap)
            deferred: list[tuple[float, float, int]] = []
            while key_heap and len(chosen) < p:
                entry = heapq.heappop(key_heap)
                c = entry[2]
                if head[c] >= len(queues[c]):
                    continue
                if entry[0] != keys[queues[c][head[c]]] or c in used:
                    deferred.append((keys[queues[c][head[c]]], entry[1], c))
                    continue
                self._take(c, queues, head, used, chosen, count_heap)
            for entry in deferred:
                heapq.heappush(key_heap, entry)
            for c in used:
                if head[c] < len(queues[c]):
                    heapq.heappush(key_heap, (keys[queues[c][head[c]]], float(rng.random()), c))
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
