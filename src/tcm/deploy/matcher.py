"""Exact 1:N matching against a gallery at a deployment threshold (blocked; never ``N x M``).

A query ``q`` matches gallery item ``g`` when ``cos(q, g) >= t``. The scores are computed block
by block: ``Q_b @ G_b.T`` in float32 on L2-normalised rows (``query_block x gallery_block``
cells at a time), so memory stays bounded by the block sizes plus the results themselves.

With a fitted scorer (``scorer=``, :mod:`tcm.scoring`; e.g. a contract's
:meth:`~tcm.deploy.contract.Threshold.load_scorer`) each cosine block is mapped by
``scorer.score_block(cos, state_q, state_g)`` before the comparison, and ``t`` is on the
scorer's scale: the gallery's per-sample state is prepared once (and split per gallery block),
a query block's state once per query block; top-k and best rank by the score. The map runs in
float64 on the float32 cosines and is rounded to float32 (:func:`scored_block`): a pair's score
then does not depend on where it falls in a block (torch's vectorised and scalar ``log`` /
``exp`` can differ in the last float32 bit), so ties at ``t`` stay ties.

Modes of :meth:`Matcher.match` / :meth:`Matcher.iter_matches`:

* ``"range"`` (default): every gallery item with score ``>= t``;
* ``top_k=k``: the ``k`` best of those (fewer when fewer pass ``t``);
* ``mode="best"``: each query's best gallery item whatever its score, with the decision
  ``accepted = score >= t`` (so rejected queries are listed too).

Results are grouped by query (increasing query index), best first; ties are broken by the
smaller gallery index, so the result is a deterministic function of the scores and equals brute
force (``S = Q @ G.T``, then ``S >= t``) including scores exactly at ``t``.

Example:
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> m = Matcher(g, threshold=0.7)
    >>> r = m.match(np.array([[1.0, 0.1]]))
    >>> r.query_index.tolist(), r.gallery_index.tolist(), [round(float(s), 3) for s in r.score]
    ([0, 0], [0, 2], [0.995, 0.774])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tcm._validation import ArrayLike, as_embeddings, ceil_to_dtype, l2_normalize

if TYPE_CHECKING:
    from tcm.deploy.contract import Threshold
    from tcm.scoring import Scorer, SideState

__all__ = ["MODES", "MatchResult", "Matcher", "normalized_rows", "scored_block"]

MODES = ("range", "best")
DEFAULT_QUERY_BLOCK = 256
DEFAULT_GALLERY_BLOCK = 16_384


def normalized_rows(x: ArrayLike, name: str) -> torch.Tensor:
    """Validated (finite, 2-D, no zero row), L2-normalised, contiguous float32 CPU rows."""
    t = l2_normalize(as_embeddings(x, name), name)
    return t.to(device="cpu", dtype=torch.float32).contiguous()


def scored_block(scorer: Scorer, cos: torch.Tensor, a: SideState, b: SideState) -> torch.Tensor:
    """``scorer``'s float32 scores of a float32 cosine block, computed in float64 and rounded
    (module docstring); ``a`` / ``b``: the rows' and columns' states (:func:`float64_state`)."""
    out: torch.Tensor = scorer.score_block(cos.to(torch.float64), a, b)
    return out.to(torch.float32)


def float64_state(state: SideState) -> SideState:
    """``state`` with its floating tensors in float64 (converted once, not per block)."""
    from tcm.scoring import SideState

    return SideState(
        state.n,
        {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in state.tensors.items()},
    )


@dataclass(frozen=True)
class MatchResult:
    """Flat match arrays, grouped by query, best first (ties: smaller gallery index first).

    Attributes:
        query_index: ``(R,)`` int64 query rows (offset by the block start in streamed blocks).
        gallery_index: ``(R,)`` int64 gallery rows.
        score: ``(R,)`` float32 scores (cosine similarities, or the scorer's scores).
        accepted: ``(R,)`` bool, ``score >= threshold`` (all True except in ``"best"`` mode).
    """

    query_index: np.ndarray
    gallery_index: np.ndarray
    score: np.ndarray
    accepted: np.ndarray

    def __len__(self) -> int:
        return int(self.query_index.shape[0])

    @staticmethod
    def concat(parts: Sequence[MatchResult]) -> MatchResult:
        """The results of consecutive query blocks as one."""
        if not parts:
            return MatchResult(
                np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32),
                np.empty(0, bool),
            )  # fmt: skip
        return MatchResult(
            np.concatenate([p.query_index for p in parts]),
            np.concatenate([p.gallery_index for p in parts]),
            np.concatenate([p.score for p in parts]),
            np.concatenate([p.accepted for p in parts]),
        )


def _check_block(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    return int(value)


def _order(q: np.ndarray, g: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Positions sorting by query, then score descending, then gallery index."""
    return np.lexsort((g, -s.astype(np.float64), q))


class Matcher:
    """Exact matcher of query embeddings against a fixed gallery (module docstring).

    Args:
        gallery: ``(M, D)`` embeddings (NumPy / torch / nested lists); validated (no NaN / inf,
            no all-zero row) and L2-normalised once.
        threshold: the threshold ``t`` (on the scorer's scale with ``scorer``) or a
            :class:`~tcm.deploy.contract.Threshold` contract (checked against the gallery and
            the scorer: dimension and score).
        ids: optional ``M`` gallery ids (kept for the caller; results hold indices).
        query_block, gallery_block: rows per block of the blocked product.
        scorer: a fitted :class:`~tcm.scoring.Scorer` scoring every pair (module docstring);
            a contract on a scorer's scale needs it (``contract.load_scorer()``), a cosine
            contract refuses one. ``None`` or :class:`~tcm.scoring.Cosine`: the cosine.

    Raises:
        ValueError: a bad gallery (NaN / inf, zero row, not 2-D, empty), a threshold that is
            not a finite number, ids of the wrong length, a contract that does not fit, a
            scorer of another dimension, unfitted or needing per-sample groups.
    """

    def __init__(
        self,
        gallery: ArrayLike,
        threshold: float | Threshold,
        ids: Sequence[str] | None = None,
        *,
        query_block: int = DEFAULT_QUERY_BLOCK,
        gallery_block: int = DEFAULT_GALLERY_BLOCK,
        scorer: Scorer | None = None,
    ) -> None:
        from tcm.deploy.contract import Threshold

        self.gallery = normalized_rows(gallery, "gallery")
        self.size, self.dimension = (int(v) for v in self.gallery.shape)  # M rows, D
        self.contract: Threshold | None = None
        if isinstance(threshold, Threshold):
            threshold.check_applicable(self.dimension, scorer=scorer, what="the gallery")
            self.contract = threshold
            t = threshold.threshold
        else:
            t = threshold
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)):
            raise ValueError(f"threshold must be a number or a Threshold; got {t!r}")
        if not math.isfinite(float(t)):
            raise ValueError(f"threshold must be finite; got {t!r}")
        self.threshold = float(t)
        if ids is not None and len(ids) != self.gallery.shape[0]:
            raise ValueError(
                f"ids has {len(ids)} entries but the gallery has {self.gallery.shape[0]} rows"
            )
        self.ids = None if ids is None else [str(i) for i in ids]
        self.query_block = _check_block(query_block, "query_block")
        self.gallery_block = _check_block(gallery_block, "gallery_block")
        # the float32 value every score is compared with: scores are float32, so compare
        # against the float32 rounding of t (a float32 score s satisfies s >= t exactly when
        # s >= the smallest float32 >= t)
        self._t32 = ceil_to_dtype(self.threshold, torch.float32)
        self.scorer, self._gallery_states = self._prepare_scorer(scorer)

    def _prepare_scorer(self, scorer: Scorer | None) -> tuple[Scorer | None, list[SideState]]:
        """The scorer (``None`` for the cosine) and the gallery's state per gallery block."""
        if scorer is None or scorer.kind == "cosine":
            if scorer is not None:
                scorer.check_compatible(self.dimension)
            return None, []
        if not scorer.fitted:
            raise ValueError(f"{scorer.kind} scorer is not fitted; call fit(...) or load(...)")
        scorer.check_compatible(self.dimension)
        if scorer.uses_groups:
            raise ValueError(
                f"{scorer.kind} scorer needs per-sample groups, which the matcher does not pass"
            )
        state = float64_state(scorer.prepare(self.gallery))
        blocks = [
            state[g0 : g0 + self.gallery_block] for g0 in range(0, self.size, self.gallery_block)
        ]
        return scorer, blocks

    def _queries(self, queries: ArrayLike) -> torch.Tensor:
        q = normalized_rows(queries, "queries")
        if q.shape[1] != self.dimension:
            raise ValueError(
                f"queries have dimension {q.shape[1]} but the gallery has {self.dimension}"
            )
        return q

    def match(
        self, queries: ArrayLike, *, top_k: int | None = None, mode: str = "range"
    ) -> MatchResult:
        """All results at once (:meth:`iter_matches` concatenated)."""
        return MatchResult.concat(list(self.iter_matches(queries, top_k=top_k, mode=mode)))

    def iter_matches(
        self, queries: ArrayLike, *, top_k: int | None = None, mode: str = "range"
    ) -> Iterator[MatchResult]:
        """Results of one query block at a time (query indices are global).

        Args:
            queries: ``(N, D)`` embeddings.
            top_k: keep the ``k`` best matches ``>= t`` per query (``None``: all).
            mode: ``"range"`` or ``"best"`` (module docstring).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        if top_k is not None:
            top_k = _check_block(top_k, "top_k")
            if mode == "best":
                raise ValueError("mode='best' returns one match per query; top_k does not apply")
        q = self._queries(queries)
        for start in range(0, q.shape[0], self.query_block):
            qb = q[start : start + self.query_block]
            qs = None if self.scorer is None else float64_state(self.scorer.prepare(qb))
            if mode == "best":
                part = self._topk_block(qb, qs, 1, -math.inf)
                part = MatchResult(
                    part.query_index, part.gallery_index, part.score, part.score >= self._t32
                )
            elif top_k is None:
                part = self._range_block(qb, qs)
            else:
                part = self._topk_block(qb, qs, top_k, self._t32)
            yield MatchResult(part.query_index + start, *_rest(part))

    # ------------------------------------------------------------------ blocks

    def _scores(self, qb: torch.Tensor, qs: SideState | None, g0: int) -> torch.Tensor:
        """Scores of a query block against the gallery block at ``g0`` (``qs``: the query
        block's scorer state, ``None`` for the cosine)."""
        s = qb @ self.gallery[g0 : g0 + self.gallery_block].T
        if qs is None:
            return s
        assert self.scorer is not None
        return scored_block(self.scorer, s, qs, self._gallery_states[g0 // self.gallery_block])

    def _range_block(self, qb: torch.Tensor, qs: SideState | None) -> MatchResult:
        qi_parts: list[np.ndarray] = []
        gs: list[np.ndarray] = []
        ss: list[np.ndarray] = []
        for g0 in range(0, self.size, self.gallery_block):
            s = self._scores(qb, qs, g0)
            qi, gi = torch.nonzero(s >= self._t32, as_tuple=True)
            if qi.numel():
                ss.append(s[qi, gi].numpy())
                qi_parts.append(qi.numpy())
                gs.append(gi.numpy() + g0)
        return _sorted(qi_parts, gs, ss)

    def _topk_block(
        self, qb: torch.Tensor, qs: SideState | None, k: int, floor: float
    ) -> MatchResult:
        """The ``k`` best per row with score ``>= floor``; exact with ties (gallery blocks are
        visited in index order, so a later candidate equal to a row's current k-th best loses
        the tie and is skipped: rows that are full only take scores strictly above it)."""
        nq = qb.shape[0]
        kth = torch.full((nq,), -math.inf, dtype=torch.float32)
        full = torch.zeros(nq, dtype=torch.bool)
        q_all = np.empty(0, np.int64)
        g_all = np.empty(0, np.int64)
        s_all = np.empty(0, np.float32)
        for g0 in range(0, self.size, self.gallery_block):
            s = self._scores(qb, qs, g0)
            keep = (s >= floor) & ~full[:, None]
            keep |= full[:, None] & (s > kth[:, None])
            qi, gi = torch.nonzero(keep, as_tuple=True)
            if not qi.numel():
                continue
            q_all = np.concatenate([q_all, qi.numpy()])
            g_all = np.concatenate([g_all, gi.numpy() + g0])
            s_all = np.concatenate([s_all, s[qi, gi].numpy()])
            o = _order(q_all, g_all, s_all)
            q_all, g_all, s_all = q_all[o], g_all[o], s_all[o]
            starts = np.searchsorted(q_all, np.arange(nq), side="left")
            rank = np.arange(q_all.shape[0]) - starts[q_all]
            sel = rank < k
            q_all, g_all, s_all = q_all[sel], g_all[sel], s_all[sel]
            counts = np.bincount(q_all, minlength=nq)
            last = np.searchsorted(q_all, np.arange(nq), side="right") - 1
            is_full = counts >= k
            kv = np.full(nq, -np.inf, np.float32)
            kv[is_full] = s_all[last[is_full]]
            kth = torch.from_numpy(kv)
            full = torch.from_numpy(is_full)
        return MatchResult(
            q_all.astype(np.int64), g_all.astype(np.int64), s_all.astype(np.float32),
            np.ones(q_all.shape[0], bool),
        )  # fmt: skip


def _rest(r: MatchResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return r.gallery_index, r.score, r.accepted


def _sorted(qs: list[np.ndarray], gs: list[np.ndarray], ss: list[np.ndarray]) -> MatchResult:
    if not qs:
        return MatchResult.concat([])
    q = np.concatenate(qs).astype(np.int64)
    g = np.concatenate(gs).astype(np.int64)
    s = np.concatenate(ss).astype(np.float32)
    o = _order(q, g, s)
    return MatchResult(q[o], g[o], s[o], np.ones(q.shape[0], bool))
