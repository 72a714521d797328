"""Threshold-Consistent Margin (TCM) regulariser (Zhang et al., ICLR 2024).

Definition (``docs/definitions.md`` §4), with cosine *similarities* ``s`` in [-1, 1]::

    L_TCM = λ+ · Σ_{s∈S+, s<=m+} (m+ - s) / #{s∈S+ : s<=m+}
          + λ- · Σ_{s∈S-, s>=m-} (s - m-) / #{s∈S- : s>=m-}

each term being 0 when it has no violating pair. ``S+`` / ``S-`` are the positive (same label) and
negative (different label) pair similarities of the batch, or of batch x reference set.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from tcm.losses._common import (
    check_embeddings,
    check_finite_param,
    label_codes,
    normalized_float,
)

__all__ = ["TCMLoss", "tcm_loss_from_similarities"]

_SAMPLER_HINT = (
    "use a class-balanced sampler (e.g. tcm.data.ClassBalancedBatchSampler with m_per_class >= 2)"
)


def tcm_loss_from_similarities(
    sims: torch.Tensor,
    pos_mask: torch.Tensor,
    neg_mask: torch.Tensor,
    lambda_pos: float = 1.0,
    lambda_neg: float = 1.0,
    margin_pos: float = 0.9,
    margin_neg: float = 0.5,
) -> torch.Tensor:
    """TCM from a similarity matrix and boolean pair masks (all of the same shape ``(N, R)``).

    ``sims`` are cosine similarities; ``pos_mask`` / ``neg_mask`` select the positive / negative
    pairs. Returns a 0-d tensor (dtype of ``sims``); an empty term contributes exactly 0.
    """
    pos_viol = pos_mask & (sims <= margin_pos)
    neg_viol = neg_mask & (sims >= margin_neg)
    zero = sims.new_zeros(())
    pos_sum = torch.where(pos_viol, margin_pos - sims, zero).sum()
    neg_sum = torch.where(neg_viol, sims - margin_neg, zero).sum()
    # clamp(min=1): an empty term has a zero numerator, so it contributes 0 (no data-dependent
    # branch, no host sync, works the same on CUDA).
    pos_cnt = pos_viol.sum().clamp(min=1).to(sims.dtype)
    neg_cnt = neg_viol.sum().clamp(min=1).to(sims.dtype)
    return lambda_pos * (pos_sum / pos_cnt) + lambda_neg * (neg_sum / neg_cnt)


def _has_positive(lab: torch.Tensor, ref_lab: torch.Tensor | None, batch: bool = True) -> bool:
    """Whether a positive pair exists, from the label vectors only (``O((B + R) log)``, not a
    pass over the ``B x R`` mask): a label repeated in the batch (when the batch is part of the
    reference set) or shared with ``ref_lab``."""
    if ref_lab is not None and ref_lab.numel() and bool(torch.isin(lab, ref_lab).any()):
        return True
    return batch and int(torch.unique(lab).numel()) < int(lab.numel())


class _TCMFromEmbeddings(torch.autograd.Function):
    """TCM on normalised embeddings ``a (N, D)`` vs ``b (R, D)`` (``b is None``: ``b = a``).

    ``n_self = N`` declares ``b = [a.detach(); constant rows]``: the gradient then also flows
    through the copy of ``a`` in ``b`` (``dL/da += G[:, :N]^T a``) without a gradient for the
    constant rows (one ``N x R`` matmul in backward instead of two).

    Forward builds ``S = a b^T`` once; backward uses the closed form
    ``dL/dS = -λ+/n+ on positive violators, +λ-/n- on negative violators, 0 elsewhere``, so only
    two boolean ``N x R`` masks are kept and the symmetric case needs a single matmul:
    ``dL/da = (G + G^T) a``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        a: torch.Tensor,
        b: torch.Tensor | None,
        pos_mask: torch.Tensor,
        neg_mask: torch.Tensor,
        lambda_pos: float,
        lambda_neg: float,
        margin_pos: float,
        margin_neg: float,
        n_self: int = 0,
    ) -> torch.Tensor:
        sims = a @ (a if b is None else b).T
        pos_viol = pos_mask & (sims <= margin_pos)
        neg_viol = neg_mask & (sims >= margin_neg)
        n_pos_raw = pos_viol.sum()
        n_neg_raw = neg_viol.sum()
        n_pos = n_pos_raw.clamp(min=1).to(sims.dtype)
        n_neg = n_neg_raw.clamp(min=1).to(sims.dtype)
        zero = sims.new_zeros(())
        # g = dL/dS (closed form, kept for backward); the loss is sum(g * S) plus the margins'
        # constants: lp/n+ · Σ(m+ - s) = lp·m+ - lp/n+ · Σ s over the positive violators, etc.
        g = torch.where(pos_viol, -lambda_pos / n_pos, zero)
        g = torch.where(neg_viol, lambda_neg / n_neg, g)
        const = lambda_pos * margin_pos * (n_pos_raw > 0).to(sims.dtype) - lambda_neg * (
            margin_neg * (n_neg_raw > 0).to(sims.dtype)
        )
        ctx.save_for_backward(a, b, g)
        ctx.n_self = n_self
        return torch.dot(g.reshape(-1), sims.reshape(-1)) + const

    @staticmethod
    @once_differentiable  # first-order only (the loss is piecewise linear in S)
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b, g0 = ctx.saved_tensors
        g = g0 * grad_out
        grad_a = grad_b = None
        if b is None:
            grad_a = (g + g.T) @ a
        else:
            if ctx.needs_input_grad[0]:
                grad_a = g @ b
                if ctx.n_self:  # b[:n_self] is a itself (constant copy): its side of the pairs
                    grad_a = grad_a + g[:, : ctx.n_self].T @ a
            if ctx.needs_input_grad[1]:
                grad_b = g.T @ a
        return grad_a, grad_b, None, None, None, None, None, None, None


def _pair_sets(
    emb: torch.Tensor, labels: Any, ref_emb: Any, ref_labels: Any, batch_in_ref: bool
) -> tuple[
    torch.Tensor,
    torch.Tensor | None,
    torch.Tensor,
    torch.Tensor | None,
    torch.Tensor,
    torch.Tensor,
    int,
]:
    """The two sides of :class:`TCMLoss`'s pairs: label codes ``lab``, the reference labels other
    than the batch (or None), the normalised batch ``a``, the reference ``b`` (None: the batch
    against itself), the positive / negative masks ``(B, R)`` and ``n_self`` (batch rows at the
    front of the reference, whose self pairs are excluded)."""
    n_self = 0
    rlab_other: torch.Tensor | None = None  # reference labels other than the batch itself
    if ref_emb is None:
        lab, _ = label_codes(labels, emb.shape[0], emb.device)
        a = normalized_float(emb)
        b = None
        pos_mask = lab[:, None] == lab[None, :]
        neg_mask = ~pos_mask
        pos_mask.fill_diagonal_(False)
    else:
        empty_memory = batch_in_ref and isinstance(ref_emb, torch.Tensor) and ref_emb.ndim == 2
        empty_memory = empty_memory and ref_emb.shape[0] == 0
        ref = ref_emb if empty_memory else check_embeddings(ref_emb, "ref_emb")
        if ref.shape[1] != emb.shape[1]:
            raise ValueError(
                f"ref_emb has dimension {ref.shape[1]} but embeddings have dimension {emb.shape[1]}"
            )
        lab, rlab = label_codes(
            labels, emb.shape[0], emb.device, ref_labels=ref_labels, n_ref=ref.shape[0]
        )
        assert rlab is not None
        a = normalized_float(emb)
        if batch_in_ref:
            n_self = emb.shape[0]
            b = a.detach()
            if ref.shape[0]:
                m = normalized_float(ref.detach().to(emb.device), "ref_emb").to(a.dtype)
                b = torch.cat([b, m])
            rlab_other = rlab
            rlab = torch.cat([lab, rlab])
        else:
            b = normalized_float(ref.to(emb.device), "ref_emb").to(a.dtype)
            rlab_other = rlab
        pos_mask = lab[:, None] == rlab[None, :]
        neg_mask = ~pos_mask
        if batch_in_ref:
            pos_mask[:, :n_self].fill_diagonal_(False)
    return lab, rlab_other, a, b, pos_mask, neg_mask, n_self


class TCMLoss(nn.Module):
    """Threshold-Consistent Margin loss on L2-normalised embeddings (cosine similarity).

    Formula (``s`` = cosine similarity of a pair, ``S+``/``S-`` = positive/negative pairs)::

        L = λ+ · mean{ m+ - s : s∈S+, s <= m+ }  +  λ- · mean{ s - m- : s∈S-, s >= m- }

    where the mean of an empty set is 0. Positive pairs whose similarity is at most ``m+`` are
    pulled up to ``m+``; negative pairs whose similarity is at least ``m-`` are pushed below
    ``m-``. Pairs already beyond their margin contribute nothing.

    Pairs:
        * without ``ref_emb``: all ordered pairs ``(i, j)``, ``i != j``, of the batch (``B x B``
          similarity matrix minus its diagonal). Each unordered pair appears twice with the same
          similarity, so the mean over violating pairs is the same as over unordered pairs
          ``i < j``; this matches pytorch-metric-learning's ``ThresholdConsistentMarginLoss``.
        * with ``ref_emb`` (shape ``(R, D)``) and ``ref_labels`` (shape ``(R,)``): all pairs
          ``(i in batch, j in reference)`` (``B x R`` matrix, nothing excluded), labels compared
          across the two sets.

    The loss is built from one similarity matrix and boolean masks (memory ``O(B·R)``), never
    from per-pair copies of embeddings. The matrix is computed in float32 (or float64 for float64
    input) with autocast disabled, so float16 / bfloat16 autocast training is safe. The backward
    is a closed form (first-order gradients only; no double backward).

    A batch without any positive pair makes the positive term 0; a one-time warning (per loss
    instance; checked on the first call and every 100th, as the check synchronises with the
    device) then names the fix: sample several images per class.

    Args:
        lambda_pos: weight ``λ+ >= 0`` of the positive term.
        lambda_neg: weight ``λ- >= 0`` of the negative term.
        margin_pos: ``m+`` in [-1, 1], cosine similarity positives should reach.
        margin_neg: ``m-`` in [-1, 1], ``m- < m+``, cosine similarity negatives should stay below.

    Shapes:
        ``embeddings (B, D)`` float (any dtype, any device), ``labels (B,)`` integer tensor or any
        label array; output: scalar tensor (float32, or float64 for float64 input).

    Raises:
        ValueError: bad parameters (margins outside [-1, 1], ``margin_neg >= margin_pos``,
            negative lambdas) or bad input (length mismatch, non-finite embeddings, ``ref_emb``
            without ``ref_labels`` or vice versa, embedding dimension mismatch).

    Example:
        >>> import torch
        >>> loss_fn = TCMLoss(margin_pos=0.9, margin_neg=0.5)
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], requires_grad=True)
        >>> loss = loss_fn(emb, torch.tensor([0, 0, 1]))
        >>> round(float(loss.detach()), 4)  # pos: 0.9 - 0.8, neg: 0.6 - 0.5
        0.2
        >>> loss.backward()
    """

    def __init__(
        self,
        lambda_pos: float = 1.0,
        lambda_neg: float = 1.0,
        margin_pos: float = 0.9,
        margin_neg: float = 0.5,
    ) -> None:
        super().__init__()
        self.lambda_pos = check_finite_param(lambda_pos, "lambda_pos", nonneg=True)
        self.lambda_neg = check_finite_param(lambda_neg, "lambda_neg", nonneg=True)
        self.margin_pos = check_finite_param(margin_pos, "margin_pos")
        self.margin_neg = check_finite_param(margin_neg, "margin_neg")
        for name, m in (("margin_pos", self.margin_pos), ("margin_neg", self.margin_neg)):
            if not -1.0 <= m <= 1.0:
                raise ValueError(f"{name} must lie in [-1, 1] (cosine similarity); got {m}")
        if self.margin_neg >= self.margin_pos:
            raise ValueError(
                f"margin_neg must be < margin_pos; got margin_neg={self.margin_neg}, "
                f"margin_pos={self.margin_pos}"
            )
        self._warned_no_pos = False
        self._calls = 0

    def extra_repr(self) -> str:
        return (
            f"lambda_pos={self.lambda_pos}, lambda_neg={self.lambda_neg}, "
            f"margin_pos={self.margin_pos}, margin_neg={self.margin_neg}"
        )

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: Any,
        ref_emb: torch.Tensor | None = None,
        ref_labels: Any = None,
        *,
        batch_in_ref: bool = False,
    ) -> torch.Tensor:
        """Return the TCM loss (scalar tensor) for ``embeddings (B, D)`` and ``labels (B,)``.

        ``batch_in_ref=True`` (a cross-batch memory): the reference set is ``[embeddings;
        ref_emb]``, the batch itself followed by ``ref_emb (M, D)`` treated as constants
        (detached). The self pairs ``(i, i)`` are excluded and the batch-batch pairs get their
        gradient through both sides, so with ``M = 0`` (``ref_emb`` of shape ``(0, D)``) the value
        and gradient equal the batch-only loss.
        """
        emb = check_embeddings(embeddings)
        if (ref_emb is None) != (ref_labels is None):
            raise ValueError(
                "ref_emb and ref_labels must be given together; got ref_emb="
                f"{'None' if ref_emb is None else 'tensor'}, ref_labels="
                f"{'None' if ref_labels is None else 'given'}"
            )
        lab, rlab_other, a, b, pos_mask, neg_mask, n_self = _pair_sets(
            emb, labels, ref_emb, ref_labels, batch_in_ref
        )
        in_ref = ref_emb is None or batch_in_ref
        # the positive-pair check costs a host sync on CUDA: first call, then every 100th
        check = not self._warned_no_pos and self._calls % 100 == 0
        self._calls += 1
        if check and not _has_positive(lab, rlab_other, in_ref):
            self._warned_no_pos = True
            warnings.warn(
                "TCMLoss: the batch has no positive pair (no two samples share a label), so the "
                f"positive term is 0; {_SAMPLER_HINT}. This warning is shown once.",
                RuntimeWarning,
                stacklevel=2,
            )
        with torch.autocast(device_type=a.device.type, enabled=False):
            out: torch.Tensor = _TCMFromEmbeddings.apply(
                a,
                b,
                pos_mask,
                neg_mask,
                self.lambda_pos,
                self.lambda_neg,
                self.margin_pos,
                self.margin_neg,
                n_self,
            )
        return out
