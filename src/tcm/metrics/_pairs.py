"""Blocked iteration over all unordered pairs of samples (private helpers of ``tcm.metrics``).

Samples are sorted by class so that every class is a contiguous index range. The similarity
matrix ``S = X X^T`` (cosine similarity of L2-normalised rows, values in ``[-1, 1]``) is then
visited block by block over its upper triangle (block row ``bi <= `` block column ``bj``); it is
never materialised as a whole. In every yielded block the entries that are *not* negative pairs
(same class, or ``j <= i`` on a diagonal block) are set to ``-inf`` so that any comparison
``S >= t`` is False for them, and the positive pairs of the block (``i < j``, same class) are
returned separately with their class code.

Blocks can be split across processes with ``shard=(shard_index, num_shards)``; every block
belongs to exactly one shard, so per-shard states merged by summation equal the single-run
state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tcm._validation import ArrayLike, as_embeddings, encode_labels, l2_normalize

__all__ = [
    "Block",
    "Prepared",
    "check_shard",
    "default_block_size",
    "iter_blocks",
    "prepare",
    "sample_negative_similarities",
    "select_ge",
]


def select_ge(s: torch.Tensor, cut: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (row-major) indices and values of the entries of the 2-D ``s`` with ``s >= cut``.

    On CPU the index scan uses NumPy (several times faster than ``torch.nonzero`` /
    ``masked_select`` on large blocks); on CUDA it stays in torch.
    """
    mask = s >= cut
    if s.device.type == "cpu":
        flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
    else:
        flat = torch.nonzero(mask.view(-1)).squeeze(1)
    return flat, s.reshape(-1).index_select(0, flat)


@dataclass(frozen=True)
class Prepared:
    """Validated, L2-normalised, class-sorted input.

    Attributes:
        x: ``(N, D)`` L2-normalised embeddings sorted by class code (float32 or float64, on the
            input's device).
        codes: ``(N,)`` int64 NumPy class codes of the sorted rows (non-decreasing).
        codes_t: ``codes`` as a torch tensor on ``x.device``.
        classes: ``(C,)`` the original label values, ``classes[c]`` is the label of code ``c``.
        counts: ``(C,)`` int64 number of samples per class, ``n_c``.
        starts: ``(C + 1,)`` int64 offsets: class ``c`` occupies sorted rows
            ``[starts[c], starts[c + 1])``.
    """

    x: torch.Tensor
    codes: np.ndarray
    codes_t: torch.Tensor
    classes: np.ndarray
    counts: np.ndarray
    starts: np.ndarray

    @property
    def n(self) -> int:
        """Number of samples ``N``."""
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of distinct labels ``C``."""
        return int(self.counts.shape[0])

    @property
    def num_positive_pairs(self) -> int:
        """``P = sum_c n_c (n_c - 1) / 2``."""
        c = self.counts
        return int((c * (c - 1) // 2).sum())

    @property
    def num_negative_pairs(self) -> int:
        """``M = N (N - 1) / 2 - P``."""
        return self.n * (self.n - 1) // 2 - self.num_positive_pairs


def prepare(embeddings: ArrayLike, labels: ArrayLike) -> Prepared:
    """Validate inputs, L2-normalise and sort samples by class code (stable sort).

    Raises:
        ValueError: see :func:`tcm._validation.as_embeddings`, :func:`encode_labels` and
            :func:`l2_normalize` (NaN/inf, shape, length mismatch, all-zero rows).
    """
    x = as_embeddings(embeddings)
    codes, classes = encode_labels(labels, n=int(x.shape[0]))
    x = l2_normalize(x)
    order = np.argsort(codes, kind="stable")
    codes_sorted = codes[order]
    x = x[torch.as_tensor(order, device=x.device)].contiguous()
    counts = np.bincount(codes_sorted, minlength=classes.shape[0]).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Prepared(
        x=x,
        codes=codes_sorted,
        codes_t=torch.as_tensor(codes_sorted, device=x.device),
        classes=classes,
        counts=counts,
        starts=starts,
    )


def default_block_size(n: int, dtype: torch.dtype) -> int:
    """Rows per block: 4096 for float32 (64 MiB per block), 2048 for float64, at most ``n``."""
    b = 4096 if dtype == torch.float32 else 2048
    return max(1, min(n, b))


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """Validate ``(shard_index, num_shards)``; raise ValueError naming the bad value."""
    if len(shard) != 2:
        raise ValueError(f"shard must be (shard_index, num_shards); got {shard!r}")
    idx, num = int(shard[0]), int(shard[1])
    if num < 1 or not 0 <= idx < num:
        raise ValueError(f"shard must satisfy 0 <= shard_index < num_shards; got {shard!r}")
    return idx, num


def check_block_size(block_size: int | None, prep: Prepared) -> int:
    """Return the block size to use; raise ValueError if ``block_size`` is not a positive int."""
    if block_size is None:
        return default_block_size(prep.n, prep.x.dtype)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise ValueError(f"block_size must be a positive integer or None; got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer or None; got {block_size}")
    return int(block_size)


@dataclass
class Block:
    """One block of the upper triangle of the similarity matrix.

    Attributes:
        row0, col0: global (class-sorted) index of the block's first row / column.
        sims: ``(Bi, Bj)`` cosine similarities; entries that are not negative pairs are ``-inf``.
        pos_sims: ``(P_b,)`` similarities of the positive pairs (``i < j``, same class) in the
            block.
        pos_codes: ``(P_b,)`` int64 class code of each positive pair.
    """

    row0: int
    col0: int
    sims: torch.Tensor
    pos_sims: torch.Tensor
    pos_codes: torch.Tensor


def iter_blocks(
    prep: Prepared, block_size: int, shard: tuple[int, int] = (0, 1)
) -> Iterator[Block]:
    """Yield the upper-triangle blocks of ``S = X X^T`` belonging to ``shard``.

    Block ``(bi, bj)`` with ``bi <= bj`` (in row-major order, numbered ``k = 0, 1, ...``) belongs
    to shard ``k % num_shards``. Every unordered pair ``i < j`` appears in exactly one block.
    """
    shard_index, num_shards = check_shard(shard)
    n = prep.n
    x = prep.x
    codes = prep.codes
    starts = prep.starts
    nb = (n + block_size - 1) // block_size
    neg_inf = float("-inf")
    k = -1
    for bi in range(nb):
        i0, i1 = bi * block_size, min(n, (bi + 1) * block_size)
        xi = x[i0:i1]
        for bj in range(bi, nb):
            k += 1
            if k % num_shards != shard_index:
                continue
            j0, j1 = bj * block_size, min(n, (bj + 1) * block_size)
            s = xi @ x[j0:j1].T
            if bi == bj:
                ci = prep.codes_t[i0:i1]
                same = ci[:, None] == ci[None, :]
                upper = torch.ones_like(same).triu_(1)
                idx = torch.nonzero(same & upper)
                pos = s[idx[:, 0], idx[:, 1]]
                pos_codes = ci[idx[:, 0]]
                s.masked_fill_(same | ~upper, neg_inf)
            elif codes[i1 - 1] == codes[j0]:
                c = int(codes[j0])
                r0 = max(i0, int(starts[c])) - i0
                c1 = min(j1, int(starts[c + 1])) - j0
                pos = s[r0:, :c1].reshape(-1).clone()
                pos_codes = torch.full((pos.shape[0],), c, dtype=torch.int64, device=s.device)
                s[r0:, :c1] = neg_inf
            else:
                pos = s.new_empty((0,))
                pos_codes = torch.empty((0,), dtype=torch.int64, device=s.device)
            yield Block(row0=i0, col0=j0, sims=s, pos_sims=pos, pos_codes=pos_codes)


def sample_negative_similarities(
    prep: Prepared, num: int, seed: int = 0, chunk: int = 65_536
) -> torch.Tensor:
    """Similarities of ``num`` negative pairs drawn uniformly (with replacement), 1-D float64.

    Pairs ``(i, j)`` are drawn uniformly from all ordered pairs and rejected when ``i == j`` or
    the labels agree, which is uniform over unordered negative pairs. Deterministic for a seed.
    Requires at least one negative pair (two classes). The similarities are only used to place
    brackets, so their summation order (einsum vs. matmul) does not matter.
    """
    rng = np.random.default_rng(seed)
    n = prep.n
    out: list[torch.Tensor] = []
    xn = prep.x.numpy() if prep.x.device.type == "cpu" else None
    have = 0
    while have < num:
        m = min(chunk, 2 * (num - have) + 16)
        i = rng.integers(0, n, size=m)
        j = rng.integers(0, n, size=m)
        keep = prep.codes[i] != prep.codes[j]
        i, j = i[keep], j[keep]
        if i.shape[0] == 0:
            continue
        i = i[: num - have]
        j = j[: num - have]
        if xn is not None:
            out.append(torch.from_numpy(np.einsum("nd,nd->n", xn[i], xn[j])).to(torch.float64))
        else:
            ti = torch.as_tensor(i, device=prep.x.device)
            tj = torch.as_tensor(j, device=prep.x.device)
            out.append((prep.x[ti] * prep.x[tj]).sum(dim=1).to(torch.float64))
        have += int(i.shape[0])
    return torch.cat(out)
