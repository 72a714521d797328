"""Blocked iteration over all unordered pairs of samples (private helpers of ``tcm.metrics``).

Samples are sorted by class so that every class is a contiguous index range. The similarity
matrix ``S = X X^T`` (cosine similarity of L2-normalised rows, values in ``[-1, 1]``) is then
visited block by block over its upper triangle (block row ``bi <=`` block column ``bj``), each
unordered pair exactly once; it is never materialised as a whole. Each block is computed into a
reused buffer (``torch.mm(..., out=)``; with a fresh 64 MiB output per 4096-row block the page
faults made each matmul ~1.6x slower) and yielded with its raw similarities plus a description
of the entries that are *not* negative pairs: because classes are contiguous, those are one
rectangle (a class crossing the gap between an off-diagonal block's rows and columns) or, on a
diagonal block, a per-row column bound (``c <= r`` or same class). The positive pairs of the
block (``i < j``, same class) are returned separately with their class code.

On CPU :func:`map_blocks` runs the blocks in one thread per core, each doing a single-threaded
matmul and then its NumPy post-processing (which releases the GIL): the post-processing is
single-threaded NumPy, so running it after a multi-threaded matmul would leave cores idle.

Blocks can be split across processes with ``shard=(shard_index, num_shards)``; every block
belongs to exactly one shard, so per-shard states merged by summation equal the single-run
state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from tcm._validation import ArrayLike, as_embeddings, encode_labels, l2_normalize
from tcm.metrics._progress import Tick, no_tick, stage, tile_pairs
from tcm.metrics._threads import run_single_threaded

if TYPE_CHECKING:
    from tcm.scoring.base import Scorer, SideState

__all__ = [
    "Block",
    "BlockSpec",
    "Prepared",
    "block_grid",
    "check_shard",
    "default_block_size",
    "flatnonzero",
    "iter_blocks",
    "make_block",
    "map_blocks",
    "mask_buffer",
    "num_workers",
    "prepare",
    "sample_negative_similarities",
]

R = TypeVar("R")
BlockSpec = tuple[int, int, int, int]
"""``(i0, i1, j0, j1)``: the block ``S[i0:i1, j0:j1]``."""


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
        order: ``(N,)`` int64 permutation: sorted row ``r`` is input row ``order[r]``.
        scorer, state: an optional fitted :class:`~tcm.scoring.Scorer` and its per-sample state
            of the sorted rows: every block of :func:`make_block` then holds the scores
            ``scorer.score_block(cos, state[rows], state[cols])`` instead of the cosines (see
            :meth:`with_scorer`).
    """

    x: torch.Tensor
    codes: np.ndarray
    codes_t: torch.Tensor
    classes: np.ndarray
    counts: np.ndarray
    starts: np.ndarray
    order: np.ndarray
    scorer: Scorer | None = None
    state: SideState | None = None

    def with_scorer(self, scorer: Scorer | None) -> Prepared:
        """These rows scored by ``scorer`` (its state prepared once on the sorted rows);
        ``None`` returns ``self``.

        Raises:
            ValueError: the scorer is unfitted, was fitted on another dimension, or needs groups.
        """
        if scorer is None:
            return self
        from dataclasses import replace

        if not scorer.fitted:
            raise ValueError(
                f"{scorer.kind} scorer is not fitted; call fit(...) or load(...) first"
            )
        scorer.check_compatible(int(self.x.shape[1]))
        if scorer.uses_groups:
            raise ValueError(
                f"{scorer.kind} scorer needs per-sample groups, which the pair engine does not pass"
            )
        return replace(self, scorer=scorer, state=scorer.prepare(self.x))

    def score_(
        self,
        s: torch.Tensor,
        i0: int,
        i1: int,
        j0: int,
        j1: int,
        scratch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Replace the cosines ``s = S[i0:i1, j0:j1]`` by their scores in place
        (:meth:`~tcm.scoring.Scorer.score_block_`, ``scratch`` its optional buffer; no-op
        without a scorer); returns ``s``."""
        if self.scorer is not None and self.state is not None:
            self.scorer.score_block_(s, self.state[i0:i1], self.state[j0:j1], scratch)
        return s

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
        order=order.astype(np.int64),
    )


def default_block_size(n: int, dtype: torch.dtype, device_type: str = "cpu") -> int:
    """Rows (= columns) per block, at most ``n``.

    CPU: 512 (1-2 MiB per block, so that a block is still in cache when it is scanned right
    after its matmul; the matmul itself is also faster than with bigger blocks: with 1024-4096
    rows a pass measured 5-25% slower, with 256 the per-block Python overhead shows; a power of
    two makes the column of a flat index a bit mask). Other devices: 4096 for float32, 2048
    for float64.
    """
    if device_type == "cpu":
        b = 512
    else:
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
        return default_block_size(prep.n, prep.x.dtype, prep.x.device.type)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise ValueError(f"block_size must be a positive integer or None; got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer or None; got {block_size}")
    return int(block_size)


@dataclass
class Block:
    """One block ``S[i0:i1, j0:j1]`` of the upper triangle of the similarity matrix.

    ``sims`` holds the raw similarities of *all* entries of the block; which of them are negative
    pairs is described by ``rect`` / ``cstart`` (see :meth:`negative_indices` and
    :meth:`mask_non_negatives_`). ``sims`` is a view of a buffer that the next block of the same
    iterator overwrites: consume a block before advancing.

    Attributes:
        row0, col0: global (class-sorted) index of the block's first row / column.
        sims: ``(h, w)`` cosine similarities.
        rect: ``(r0, c1)`` on an off-diagonal block crossed by one class: the entries
            ``[r0:, :c1]`` are its positive pairs; else None.
        cstart: ``(h,)`` int64 on a diagonal block: in row ``r`` the local columns
            ``c < cstart[r]`` are not negative pairs (``c <= r``, or ``c > r`` in the same class;
            ``cstart`` is non-decreasing); else None.
        pos_sims: ``(P_b,)`` similarities of the positive pairs (``i < j``, same class), in
            row-major order (so their class codes are non-decreasing).
        pos_codes: ``(P_b,)`` int64 class code of each positive pair.
        pos_rows, pos_cols: ``(P_b,)`` int64 NumPy global (class-sorted) row / column of each
            positive pair.
    """

    row0: int
    col0: int
    sims: torch.Tensor
    rect: tuple[int, int] | None
    cstart: np.ndarray | None
    pos_sims: torch.Tensor
    pos_codes: torch.Tensor
    pos_rows: np.ndarray
    pos_cols: np.ndarray

    def negative_indices(self, cut: float, mbuf: np.ndarray) -> np.ndarray:
        """CPU only: ascending flat (row-major) indices of the negative pairs with
        ``sims >= cut``. ``mbuf`` is a scratch bool buffer from :func:`mask_buffer`."""
        s = self.sims.numpy()
        h, w = s.shape
        e = h * w
        m = mbuf[:e].reshape(h, w)
        np.greater_equal(s, cut, out=m)
        if self.rect is not None:
            m[self.rect[0] :, : self.rect[1]] = False
        elif self.cstart is not None:
            cs = self.cstart
            ends = np.append(np.flatnonzero(np.diff(cs)) + 1, h)  # rows sharing one cstart
            a = 0
            for b in ends.tolist():
                m[a:b, : int(cs[a])] = False
                a = b
        return flatnonzero(mbuf, e)

    def mask_non_negatives_(self) -> torch.Tensor:
        """Set the entries that are not negative pairs to ``-inf`` in place; return ``sims``."""
        s = self.sims
        if self.rect is not None:
            s[self.rect[0] :, : self.rect[1]] = float("-inf")
        elif self.cstart is not None:
            cols = torch.arange(s.shape[1], device=s.device)
            cs = torch.as_tensor(self.cstart, device=s.device)
            s.masked_fill_(cols[None, :] < cs[:, None], float("-inf"))
        return s


def flatnonzero(buf: np.ndarray, e: int) -> np.ndarray:
    """``np.flatnonzero(buf[:e])`` for a 1-D bool ``buf`` with at least ``e + e // 8 + 16``
    entries (``buf[e:]`` is scratch).

    For a bool array ``np.flatnonzero`` switches to a slow, branchy scan when at most 10% of the
    entries are set (about 3x slower than its branch-free scan at 10%) - which is exactly where
    a tail cut at a 0.9 quantile lands. Such masks are padded with just enough ``True`` entries
    past ``e`` to take the fast scan; the padding's indices (all larger) are dropped. Very
    sparse masks (<= 2%) keep the sparse scan, which is fast for them.
    """
    t = int(np.count_nonzero(buf[:e]))
    if 0.02 * e < t <= 0.1 * e:
        pad = int((0.1 * e - t) / 0.9) + 2
        buf[e : e + pad] = True
        return np.flatnonzero(buf[: e + pad])[:t]
    return np.flatnonzero(buf[:e])


def mask_buffer(prep: Prepared, block_size: int) -> np.ndarray:
    """Scratch bool buffer for :meth:`Block.negative_indices` (blocks of ``block_size``)."""
    e = min(prep.n, block_size) ** 2
    return np.empty(e + e // 8 + 16, dtype=bool)


def block_grid(n: int, block_size: int, shard: tuple[int, int] = (0, 1)) -> list[BlockSpec]:
    """``(i0, i1, j0, j1)`` of the upper-triangle blocks (``bi <= bj``) belonging to ``shard``.

    Block ``(bi, bj)`` (in row-major order, numbered ``k = 0, 1, ...``) belongs to shard
    ``k % num_shards``. Every unordered pair ``i < j`` lies in exactly one block.
    """
    shard_index, num_shards = check_shard(shard)
    nb = (n + block_size - 1) // block_size
    out: list[BlockSpec] = []
    k = -1
    for bi in range(nb):
        for bj in range(bi, nb):
            k += 1
            if k % num_shards == shard_index:
                i1, j1 = min(n, (bi + 1) * block_size), min(n, (bj + 1) * block_size)
                out.append((bi * block_size, i1, bj * block_size, j1))
    return out


def make_block(prep: Prepared, spec: BlockSpec, buf: torch.Tensor) -> Block:
    """Compute block ``spec = (i0, i1, j0, j1)`` into the flat buffer ``buf`` (``torch.mm(...,
    out=)``: no allocation per block; a scorer maps it in place, the rest of ``buf`` its
    scratch) and describe its positive / excluded entries."""
    i0, i1, j0, j1 = spec
    x = prep.x
    codes = prep.codes
    starts = prep.starts
    dev = x.device
    h, w = i1 - i0, j1 - j0
    s = buf[: h * w].view(h, w)
    torch.mm(x[i0:i1], x[j0:j1].T, out=s)
    if prep.scorer is not None:
        prep.score_(s, i0, i1, j0, j1, buf[h * w :])
    rect: tuple[int, int] | None = None
    cstart: np.ndarray | None = None
    if i0 == j0:
        # row r of the block: columns up to the end of its class are not negatives
        cstart = np.minimum(starts[codes[i0:i1] + 1], i1) - i0
        cnt = cstart - np.arange(h) - 1  # positives (r, c), r < c < cstart[r]
        rows = np.repeat(np.arange(h), cnt)
        first = np.cumsum(cnt) - cnt
        cols = np.arange(rows.shape[0]) - np.repeat(first, cnt) + rows + 1
        flat = torch.as_tensor(rows * w + cols, device=dev)
        pos = s.reshape(-1).index_select(0, flat)
        pos_codes = torch.as_tensor(codes[i0 + rows], device=dev)
        prow, pcol = rows + i0, cols + i0
    elif codes[i1 - 1] == codes[j0]:
        c = int(codes[j0])
        r0 = max(i0, int(starts[c])) - i0
        c1 = min(j1, int(starts[c + 1])) - j0
        rect = (r0, c1)
        pos = s[r0:, :c1].reshape(-1).clone()
        pos_codes = torch.full((pos.shape[0],), c, dtype=torch.int64, device=dev)
        prow = np.repeat(np.arange(i0 + r0, i1, dtype=np.int64), c1)
        pcol = np.tile(np.arange(j0, j0 + c1, dtype=np.int64), h - r0)
    else:
        pos = s[:0, :0].reshape(-1)
        pos_codes = prep.codes_t[:0]
        prow = pcol = np.empty(0, dtype=np.int64)
    return Block(
        row0=i0,
        col0=j0,
        sims=s,
        rect=rect,
        cstart=cstart,
        pos_sims=pos,
        pos_codes=pos_codes,
        pos_rows=np.asarray(prow, dtype=np.int64),
        pos_cols=np.asarray(pcol, dtype=np.int64),
    )


def _block_buffer(prep: Prepared, block_size: int) -> torch.Tensor:
    """One block's buffer (twice that with a scorer: the second half is its scratch)."""
    e = min(prep.n, block_size) ** 2 * (1 if prep.scorer is None else 2)
    return torch.empty(e, dtype=prep.x.dtype, device=prep.x.device)


def _serial_blocks(
    prep: Prepared, specs: list[BlockSpec], block_size: int, tick: Tick = no_tick
) -> Iterator[Block]:
    buf = _block_buffer(prep, block_size)
    for spec in specs:
        yield make_block(prep, spec, buf)
        tick(tile_pairs(*spec))  # the consumer is done with the block


def _staged_blocks(
    prep: Prepared, specs: list[BlockSpec], block_size: int, desc: str
) -> Iterator[Block]:
    with stage(desc, sum(tile_pairs(*sp) for sp in specs)) as tick:
        yield from _serial_blocks(prep, specs, block_size, tick)


def iter_blocks(
    prep: Prepared, block_size: int, shard: tuple[int, int] = (0, 1), desc: str | None = None
) -> Iterator[Block]:
    """Yield the upper-triangle blocks of ``S = X X^T`` belonging to ``shard`` (see
    :func:`block_grid`), one after the other, all computed into one reused buffer. ``desc``:
    report the progress under this name (:mod:`tcm.metrics._progress`)."""
    specs = block_grid(prep.n, block_size, shard)
    if desc is None:
        return _serial_blocks(prep, specs, block_size)
    return _staged_blocks(prep, specs, block_size, desc)


def num_workers(prep: Prepared) -> int:
    """Threads :func:`map_blocks` uses: torch's intra-op thread count on CPU, else 1."""
    return max(1, torch.get_num_threads()) if prep.x.device.type == "cpu" else 1


def map_blocks(
    prep: Prepared,
    block_size: int,
    shard: tuple[int, int],
    fn: Callable[[Iterator[Block]], R],
    workers: int | None = None,
    desc: str | None = None,
) -> list[R]:
    """Run ``fn`` over the blocks of ``shard`` in ``workers`` threads; return their results.

    Each thread calls ``fn`` once with its own iterator (own buffer) that pulls the next block
    from a shared queue, so every block is seen by exactly one ``fn``; ``fn``'s results are
    meant to be merged (order-independent). On CPU each thread does its own single-threaded
    matmul and then NumPy work that releases the GIL, which uses all cores for both; a
    multi-threaded matmul followed by single-threaded NumPy would leave cores idle. Torch's
    thread count is set to 1 inside the workers (thread-local for the OpenMP/MKL settings) and
    its global default restored afterwards. ``desc``: report the progress under this name, one
    update per finished block (:mod:`tcm.metrics._progress`).
    """
    specs = block_grid(prep.n, block_size, shard)
    nw = num_workers(prep) if workers is None else workers
    nw = max(1, min(nw, len(specs)))
    with stage(desc or "", sum(tile_pairs(*sp) for sp in specs) if desc else 0) as tick:
        if nw == 1:
            return [fn(_serial_blocks(prep, specs, block_size, tick))]
        lock = threading.Lock()
        queue = iter(specs)

        def pull() -> BlockSpec | None:
            with lock:
                return next(queue, None)

        def blocks() -> Iterator[Block]:
            buf = _block_buffer(prep, block_size)
            while (sp := pull()) is not None:
                yield make_block(prep, sp, buf)
                tick(tile_pairs(*sp))

        return run_single_threaded(nw, lambda _i: fn(blocks()))


def sample_negative_similarities(
    prep: Prepared, num: int, seed: int = 0, chunk: int = 65_536
) -> torch.Tensor:
    """Similarities of ``num`` negative pairs drawn uniformly (with replacement), 1-D float64.

    Pairs ``(i, j)`` are drawn uniformly from all ordered pairs and rejected when ``i == j`` or
    the labels agree, which is uniform over unordered negative pairs. Deterministic for a seed.
    Requires at least one negative pair (two classes). The similarities are only used to place
    brackets, so their summation order (einsum vs. matmul) does not matter. On CPU the rows are
    gathered in index order, 4096 pairs at a time, into reused buffers (large fresh gathers are
    several times slower: page faults and cache misses).
    """
    rng = np.random.default_rng(seed)
    if prep.scorer is not None:
        return _sample_scored(prep, num, rng)
    n = prep.n
    out: list[torch.Tensor] = []
    sub = 4096
    if prep.x.device.type == "cpu":
        xn = prep.x.numpy()
        a = np.empty((sub, xn.shape[1]), dtype=xn.dtype)
        b = np.empty_like(a)
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
        if prep.x.device.type == "cpu":
            order = np.argsort(i, kind="stable")  # gather rows in order (same set of pairs)
            i, j = i[order], j[order]
            vals = np.empty(i.shape[0], dtype=np.float64)
            for s0 in range(0, i.shape[0], sub):
                t = min(sub, i.shape[0] - s0)
                np.take(xn, i[s0 : s0 + t], axis=0, out=a[:t], mode="clip")
                np.take(xn, j[s0 : s0 + t], axis=0, out=b[:t], mode="clip")
                vals[s0 : s0 + t] = np.einsum("nd,nd->n", a[:t], b[:t])
            out.append(torch.from_numpy(vals))
        else:
            ti = torch.as_tensor(i, device=prep.x.device)
            tj = torch.as_tensor(j, device=prep.x.device)
            out.append((prep.x[ti] * prep.x[tj]).sum(dim=1).to(torch.float64))
        have += int(i.shape[0])
    return torch.cat(out)


def _sample_scored(prep: Prepared, num: int, rng: np.random.Generator) -> torch.Tensor:
    """Scores of ``num`` negative pairs, each a uniform ordered pair, drawn as the entries of
    small random row x column blocks (a scorer maps blocks, not lists of pairs; the entries of
    one block are correlated, which only widens the brackets they place)."""
    n = prep.n
    side = 256
    out: list[torch.Tensor] = []
    have = 0
    while have < num:
        i = np.sort(rng.integers(0, n, size=side))
        j = np.sort(rng.integers(0, n, size=side))
        ti = torch.as_tensor(i, device=prep.x.device)
        tj = torch.as_tensor(j, device=prep.x.device)
        s = prep.x.index_select(0, ti) @ prep.x.index_select(0, tj).T
        assert prep.scorer is not None and prep.state is not None
        s = prep.scorer.score_block(s, prep.state[i], prep.state[j])
        keep = torch.as_tensor(prep.codes[i][:, None] != prep.codes[j][None, :], device=s.device)
        v = s[keep].to(torch.float64)[: num - have]
        out.append(v)
        have += int(v.shape[0])
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)
