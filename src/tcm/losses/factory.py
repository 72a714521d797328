"""Build any supported loss by name, optionally with the TCM regulariser added.

Standard losses come from pytorch-metric-learning (not re-implemented); Smooth-AP, RS@k and TCM
are ours. ``build_loss`` always returns a :class:`LossWithTCM` module so training code has one
interface and one ``.parameters()`` (proxy/classifier weights included) to give the optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from tcm.losses._common import check_embeddings, label_codes
from tcm.losses.memory import CrossBatchMemory
from tcm.losses.recall_surrogate import RecallAtKSurrogateLoss
from tcm.losses.smooth_ap import SmoothAPLoss
from tcm.losses.tcm import TCMLoss

__all__ = ["CombinedLoss", "LossWithTCM", "available_losses", "build_loss"]

_TCM_PARAMS = ("lambda_pos", "lambda_neg", "margin_pos", "margin_neg")


class _MinedLoss(nn.Module):
    """A pytorch-metric-learning loss fed by a miner: ``loss(emb, labels, miner(emb, labels))``.

    With a reference set the miner mines ``(anchor in batch, positive / negative in reference)``
    triplets; ``ref_includes_batch`` drops the self pairs ``anchor == positive``.
    """

    supports_ref_emb = True

    def __init__(self, loss: nn.Module, miner: nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: Any = None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        ref_includes_batch: bool = False,
    ) -> torch.Tensor:
        if indices_tuple is None:
            indices_tuple = self.miner(embeddings, labels, ref_emb, ref_labels)
            if ref_includes_batch:
                a, p, n = indices_tuple
                keep = a != p
                indices_tuple = (a[keep], p[keep], n[keep])
        out: torch.Tensor = self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        return out


@dataclass(frozen=True)
class _Spec:
    params: tuple[str, ...]
    make: Callable[[dict[str, Any], int | None, int | None], nn.Module]
    needs_classes: bool = False
    description: str = ""


def _pml(cls_name: str) -> Any:
    """Import a pytorch-metric-learning loss class lazily (keeps ``import tcm.losses`` light)."""
    from pytorch_metric_learning import losses as pml_losses

    return getattr(pml_losses, cls_name)


def _pml_plain(cls_name: str) -> Callable[[dict[str, Any], int | None, int | None], nn.Module]:
    """Builder of a pytorch-metric-learning loss that takes only its own parameters."""
    return lambda p, _nc, _d: _pml(cls_name)(**p)


def _pml_with_classes(
    cls_name: str,
) -> Callable[[dict[str, Any], int | None, int | None], nn.Module]:
    """Builder of a pytorch-metric-learning classification loss (proxies / class weights: it
    also takes the number of classes and the embedding size)."""
    return lambda p, nc, d: _pml(cls_name)(num_classes=nc, embedding_size=d, **p)


def _pml_spec(
    cls_name: str, params: tuple[str, ...], description: str, *, classes: bool = False
) -> _Spec:
    """The registry entry of a pytorch-metric-learning loss ``cls_name`` taking ``params``;
    ``classes``: a classification loss (also built with the number of classes and the embedding
    size)."""
    build = _pml_with_classes(cls_name) if classes else _pml_plain(cls_name)
    return _Spec(params, build, needs_classes=classes, description=description)


def _triplet(p: dict[str, Any], _nc: int | None, _d: int | None) -> nn.Module:
    from pytorch_metric_learning import miners as pml_miners

    miner_kw = {}
    if "miner_margin" in p:
        miner_kw["margin"] = p.pop("miner_margin")
    if "type_of_triplets" in p:
        miner_kw["type_of_triplets"] = p.pop("type_of_triplets")
    miner_kw.setdefault("type_of_triplets", "semihard")
    return _MinedLoss(_pml("TripletMarginLoss")(**p), pml_miners.TripletMarginMiner(**miner_kw))


_REGISTRY: dict[str, _Spec] = {
    "smooth_ap": _Spec(
        ("temperature", "chunk_size", "max_elements"),
        lambda p, _nc, _d: SmoothAPLoss(**p),
        description="Smooth-AP (Brown et al. 2020), tcm.losses.SmoothAPLoss",
    ),
    "recall_surrogate": _Spec(
        ("ks", "tau1", "tau2", "chunk_size", "max_elements"),
        lambda p, _nc, _d: RecallAtKSurrogateLoss(**p),
        description="Recall@k surrogate RS@k (Patel et al. 2022)",
    ),
    "proxy_anchor": _pml_spec(
        "ProxyAnchorLoss",
        ("margin", "alpha"),
        "pytorch-metric-learning ProxyAnchorLoss",
        classes=True,
    ),
    "multi_similarity": _pml_spec(
        "MultiSimilarityLoss",
        ("alpha", "beta", "base"),
        "pytorch-metric-learning MultiSimilarityLoss",
    ),
    "contrastive": _pml_spec(
        "ContrastiveLoss",
        ("pos_margin", "neg_margin"),
        "pytorch-metric-learning ContrastiveLoss (Euclidean distance of normalised embeddings)",
    ),
    "triplet": _Spec(
        (
            "margin",
            "swap",
            "smooth_loss",
            "triplets_per_anchor",
            "miner_margin",
            "type_of_triplets",
        ),
        _triplet,
        description="pytorch-metric-learning TripletMarginLoss + TripletMarginMiner (semihard)",
    ),
    "arcface": _pml_spec(
        "ArcFaceLoss",
        ("margin", "scale"),
        "pytorch-metric-learning ArcFaceLoss (margin in degrees)",
        classes=True,
    ),
    "cosface": _pml_spec(
        "CosFaceLoss",
        ("margin", "scale"),
        "pytorch-metric-learning CosFaceLoss",
        classes=True,
    ),
    "none": _Spec((), lambda p, _nc, _d: nn.Identity(), description="no base loss (TCM only)"),
}

_ALIASES = {"rs@k": "recall_surrogate", "recall_at_k": "recall_surrogate", "smoothap": "smooth_ap"}


def available_losses() -> list[str]:
    """Names accepted by :func:`build_loss` (sorted).

    Example:
        >>> "smooth_ap" in available_losses()
        True
    """
    return sorted(_REGISTRY)


def _pair_indices(
    labels: torch.Tensor, ref_labels: torch.Tensor, exclude_self: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """pytorch-metric-learning pair tuple ``(a1, p, a2, n)`` of all positive / negative pairs
    ``(i in batch, j in reference)``; ``exclude_self`` drops ``(i, i)`` (reference starts with the
    batch)."""
    same = labels[:, None] == ref_labels[None, :]
    diff = ~same
    if exclude_self:
        same[:, : labels.shape[0]].fill_diagonal_(False)
    a1, p = torch.nonzero(same, as_tuple=True)
    a2, n = torch.nonzero(diff, as_tuple=True)
    return a1, p, a2, n


def _supports_ref(module: nn.Module) -> bool:
    """Whether a loss term accepts ``ref_emb`` / ``ref_labels`` (reference-set losses)."""
    flag = getattr(module, "supports_ref_emb", None)
    if flag is not None:
        return bool(flag)
    if isinstance(module, TCMLoss):
        return True
    try:
        from pytorch_metric_learning.losses import GenericPairLoss, TripletMarginLoss
    except ImportError:  # pragma: no cover - pml is a dependency
        return False
    return isinstance(module, GenericPairLoss | TripletMarginLoss)


def _is_pml(module: nn.Module) -> bool:
    from pytorch_metric_learning.losses import BaseMetricLossFunction

    return isinstance(module, BaseMetricLossFunction)


class CombinedLoss(nn.Module):
    """Weighted sum of named loss terms, optionally with a cross-batch memory.

    ``total = Σ_k w_k · term_k(embeddings, labels[, reference set])`` (in the spirit of
    pytorch-metric-learning's ``MultipleLosses``). Every term sees L2-normalised embeddings and
    cosine similarities (each loss normalises internally).

    Reference set: a term that supports one (:class:`TCMLoss`, pytorch-metric-learning's pair
    and triplet losses, or any module with ``supports_ref_emb = True``) is called with
    ``ref_emb (R, D)`` / ``ref_labels (R,)``: pairs ``(i in batch, j in reference)``. Terms that
    do not (Smooth-AP, RS@k, proxy/classifier losses) see the batch only. ``indices_tuple`` (a
    pytorch-metric-learning pair or triplet tuple) is passed to pytorch-metric-learning terms.

    Cross-batch memory (``memory_size=M > 0``; Wang et al., CVPR 2020): each forward uses the
    reference set ``[batch; memory]`` (``B + M'`` rows, the memory detached, the self pairs
    ``(i, i)`` excluded) for every reference-capable term, then enqueues the detached batch. With
    an empty memory this equals the batch-only loss. Memory requires integer labels.

    ``last_terms`` (after each forward): ``{name: unweighted term value, ..., "total": weighted
    sum}`` as detached 0-d tensors (no host synchronisation; call ``float()`` when logging).

    Args:
        terms: ``{name: loss module}`` (a sequence gets the names ``"0"``, ``"1"``, ...).
        weights: ``{name: weight}`` or a sequence (default 1 each).
        memory_size: rows ``M`` of the cross-batch memory (0: none).
        memory_warmup: forward calls (training steps) before the memory stores anything
            (0: from the first; see :class:`CrossBatchMemory`).

    Shapes:
        ``embeddings (B, D)`` float, ``labels (B,)``; output: scalar tensor.

    Example:
        >>> import torch
        >>> loss_fn = CombinedLoss({"tcm": TCMLoss(), "tcm_strict": TCMLoss(margin_pos=0.95)},
        ...                        weights={"tcm": 1.0, "tcm_strict": 0.5}, memory_size=16)
        >>> emb = torch.randn(8, 4, requires_grad=True)
        >>> loss = loss_fn(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
        >>> loss.backward()
        >>> sorted(loss_fn.last_terms), len(loss_fn.memory)
        (['tcm', 'tcm_strict', 'total'], 8)
    """

    def __init__(
        self,
        terms: dict[str, nn.Module] | Mapping[str, nn.Module] | list[nn.Module],
        weights: Mapping[str, float] | list[float] | tuple[float, ...] | None = None,
        *,
        memory_size: int = 0,
        memory_warmup: int = 0,
    ) -> None:
        super().__init__()
        named = (
            dict(terms) if isinstance(terms, Mapping) else {str(i): m for i, m in enumerate(terms)}
        )
        if not named:
            raise ValueError("CombinedLoss needs at least one loss term")
        if "total" in named:
            raise ValueError("'total' is reserved for the sum; rename that loss term")
        self.terms = nn.ModuleDict(named)
        if weights is None:
            w = {k: 1.0 for k in named}
        elif isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(named))
            if unknown:
                raise ValueError(f"weights for unknown term(s) {unknown}; terms: {list(named)}")
            w = {k: float(weights.get(k, 1.0)) for k in named}
        else:
            if len(weights) != len(named):
                raise ValueError(f"{len(weights)} weights for {len(named)} loss terms")
            w = {k: float(v) for k, v in zip(named, weights, strict=True)}
        for k, v in w.items():
            if not math.isfinite(v):
                raise ValueError(f"weight of term {k!r} must be finite; got {v}")
        self.weights = w
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 0:
            raise ValueError(f"memory_size must be an integer >= 0 (rows); got {memory_size!r}")
        if memory_warmup and not memory_size:
            raise ValueError(
                f"memory_warmup={memory_warmup!r} needs a cross-batch memory (memory_size > 0)"
            )
        self.memory: CrossBatchMemory | None = (
            CrossBatchMemory(memory_size, warmup=memory_warmup) if memory_size > 0 else None
        )
        self.last_terms: dict[str, torch.Tensor] = {}

    def term_labels(self, name: str, labels: Any, emb: torch.Tensor) -> Any:
        """Labels handed to term ``name`` (hook for subclasses; default: unchanged)."""
        return labels

    def _call(
        self,
        name: str,
        term: nn.Module,
        emb: torch.Tensor,
        labels: Any,
        indices_tuple: Any,
        ref: tuple[torch.Tensor, torch.Tensor] | None,
        memory: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        lab = self.term_labels(name, labels, emb)
        pml = _is_pml(term)
        if (ref is None and memory is None) or not _supports_ref(term):
            if pml:
                return cast(torch.Tensor, term(emb, lab, indices_tuple))
            return cast(torch.Tensor, term(emb, lab))
        if memory is not None and isinstance(term, TCMLoss):
            # the reference set [batch; memory] is assembled inside TCM (no gradient for the
            # memory rows: one matmul less in backward)
            m_emb, m_lab = memory
            return cast(torch.Tensor, term(emb, lab, m_emb, m_lab, batch_in_ref=True))
        ref_is_batch = memory is not None
        if memory is not None:
            lab_t = torch.as_tensor(lab, device=emb.device).to(torch.int64)
            ref = (torch.cat([emb, memory[0]]), torch.cat([lab_t, memory[1]]))
        assert ref is not None
        ref_emb, ref_lab = ref
        if isinstance(term, TCMLoss):
            return cast(torch.Tensor, term(emb, lab, ref_emb=ref_emb, ref_labels=ref_lab))
        if pml:
            idx = indices_tuple
            if idx is None and ref_is_batch:
                lab_t = torch.as_tensor(lab, device=emb.device).to(torch.int64)
                idx = _pair_indices(lab_t, ref_lab.to(emb.device), exclude_self=True)
            return cast(torch.Tensor, term(emb, lab, idx, ref_emb, ref_lab))
        return cast(
            torch.Tensor,
            term(
                emb,
                lab,
                indices_tuple=indices_tuple,
                ref_emb=ref_emb,
                ref_labels=ref_lab,
                ref_includes_batch=ref_is_batch,
            ),
        )

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: Any,
        indices_tuple: Any = None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: Any = None,
    ) -> torch.Tensor:
        """Weighted total loss (scalar tensor); see the class docstring."""
        emb = check_embeddings(embeddings)
        if (ref_emb is None) != (ref_labels is None):
            raise ValueError("ref_emb and ref_labels must be given together")
        ref: tuple[torch.Tensor, torch.Tensor] | None = None
        memory: tuple[torch.Tensor, torch.Tensor] | None = None
        mem_labels: torch.Tensor | None = None
        if self.memory is not None:
            if ref_emb is not None:
                raise ValueError(
                    "this loss has a cross-batch memory (its own reference set); do not pass "
                    "ref_emb / ref_labels as well"
                )
            mem_labels = torch.as_tensor(labels, device=emb.device)
            if mem_labels.is_floating_point() or mem_labels.ndim != 1:
                raise ValueError(
                    "a cross-batch memory needs 1-D integer labels; got dtype "
                    f"{mem_labels.dtype}, shape {tuple(mem_labels.shape)}"
                )
            mem_labels = mem_labels.to(torch.int64)
            labels = mem_labels
            m_emb, m_lab = self.memory.contents(ordered=False)
            if m_emb.numel():
                memory = (m_emb.to(device=emb.device, dtype=emb.dtype), m_lab.to(emb.device))
            else:
                memory = (emb.new_zeros((0, emb.shape[1])), mem_labels.new_zeros((0,)))
        elif ref_emb is not None:
            ref = (ref_emb, torch.as_tensor(ref_labels))
        values: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for name, term in self.terms.items():
            v = self._call(name, term, emb, labels, indices_tuple, ref, memory)
            values[name] = v.detach()
            weighted = v if self.weights[name] == 1.0 else v * self.weights[name]
            total = weighted if total is None else total + weighted
        assert total is not None
        if self.memory is not None and mem_labels is not None:
            self.memory.enqueue(emb, mem_labels)
        values["total"] = total.detach()
        self.last_terms = values
        return total

    def terms_as_floats(self) -> dict[str, float]:
        """``last_terms`` as Python floats (one host synchronisation; call when logging)."""
        return {k: float(v) for k, v in self.last_terms.items()}


class LossWithTCM(CombinedLoss):
    """``total = base(embeddings, labels) + tcm(embeddings, labels)``, terms logged separately.

    A :class:`CombinedLoss` with the terms ``"base"`` and ``"tcm"`` (weight 1 each). ``base`` /
    ``tcm`` may each be ``None`` (not both). Proxy/classifier weights of the base loss
    are sub-module parameters, so ``optimizer = SGD(list(model.parameters()) +
    list(loss.parameters()), ...)`` trains them. After each forward, ``last_terms`` holds
    ``{"base", "tcm", "total"}`` as detached 0-d tensors (0 for an absent term).
    ``memory_size=M`` adds a cross-batch memory (see :class:`CombinedLoss`).

    Labels: proxy/classifier losses (``needs_classes``) need integer class ids in
    ``[0, num_classes)``; the other losses accept any labels.

    Example:
        >>> import torch
        >>> loss_fn = build_loss("smooth_ap", tcm={"margin_pos": 0.9})
        >>> emb = torch.randn(8, 16, requires_grad=True)
        >>> loss = loss_fn(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
        >>> sorted(loss_fn.last_terms)
        ['base', 'tcm', 'total']
    """

    def __init__(
        self,
        base: nn.Module | None,
        tcm: TCMLoss | None,
        *,
        name: str = "custom",
        needs_classes: bool = False,
        num_classes: int | None = None,
        memory_size: int = 0,
        memory_warmup: int = 0,
    ) -> None:
        if base is None and tcm is None:
            raise ValueError("LossWithTCM needs a base loss, a TCM loss or both; got neither")
        terms: dict[str, nn.Module] = {}
        if base is not None:
            terms["base"] = base
        if tcm is not None:
            terms["tcm"] = tcm
        super().__init__(terms, memory_size=memory_size, memory_warmup=memory_warmup)
        self.name = name
        self.needs_classes = needs_classes
        self.num_classes = num_classes

    @property
    def base(self) -> nn.Module | None:
        """The base loss module (``None`` for TCM only)."""
        return self.terms["base"] if "base" in self.terms else None

    @property
    def tcm(self) -> TCMLoss | None:
        """The TCM term (``None`` when disabled)."""
        t = self.terms["tcm"] if "tcm" in self.terms else None
        return t if isinstance(t, TCMLoss) else None

    def extra_repr(self) -> str:
        return f"name={self.name!r}"

    def term_labels(self, name: str, labels: Any, emb: torch.Tensor) -> Any:
        if name == "base":
            return self._base_labels(labels, emb)
        return labels

    def _base_labels(self, labels: Any, emb: torch.Tensor) -> torch.Tensor:
        if not self.needs_classes:
            lab, _ = label_codes(labels, emb.shape[0], emb.device)
            return lab
        lab_t = torch.as_tensor(labels, device=emb.device)
        if lab_t.is_floating_point() or lab_t.dtype == torch.bool or lab_t.ndim != 1:
            raise ValueError(
                f"loss {self.name!r} needs 1-D integer class ids in [0, num_classes); got dtype "
                f"{lab_t.dtype}, shape {tuple(lab_t.shape)}"
            )
        if lab_t.shape[0] != emb.shape[0]:
            raise ValueError(
                f"labels has length {lab_t.shape[0]} but there are {emb.shape[0]} embeddings"
            )
        if self.num_classes is not None:
            bad = (lab_t < 0) | (lab_t >= self.num_classes)
            if bool(bad.any()):
                v = int(lab_t[bad][0])
                raise ValueError(
                    f"loss {self.name!r} needs labels in [0, {self.num_classes}); got label {v}"
                )
        return lab_t.to(torch.int64)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: Any,
        indices_tuple: Any = None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: Any = None,
    ) -> torch.Tensor:
        """Return the total loss (scalar tensor); see the class docstring."""
        total = super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        for k in ("base", "tcm"):
            self.last_terms.setdefault(k, total.detach().new_zeros(()))
        return total


def _tcm_from_arg(tcm: bool | Mapping[str, Any] | None) -> TCMLoss | None:
    if tcm is None or tcm is False:
        return None
    if tcm is True:
        return TCMLoss()
    if not isinstance(tcm, Mapping):
        raise ValueError(f"tcm must be None, False, True or a dict of TCMLoss params; got {tcm!r}")
    unknown = sorted(set(tcm) - set(_TCM_PARAMS))
    if unknown:
        raise ValueError(f"unknown TCM parameter(s) {unknown}; valid: {list(_TCM_PARAMS)}")
    return TCMLoss(**dict(tcm))


def build_loss(
    name: str,
    tcm: bool | Mapping[str, Any] | None = None,
    *,
    num_classes: int | None = None,
    embedding_dim: int | None = None,
    memory_size: int = 0,
    memory_warmup: int = 0,
    **params: Any,
) -> LossWithTCM:
    """Build loss ``name`` with ``params``, plus TCM if requested, as a :class:`LossWithTCM`.

    Args:
        name: one of :func:`available_losses` (aliases: ``rs@k``, ``recall_at_k``). ``"none"``
            means TCM only (``tcm=None`` then means default TCM).
        tcm: ``None``/``False``: no TCM; ``True``: ``TCMLoss()`` defaults; a dict: ``TCMLoss``
            parameters (``lambda_pos, lambda_neg, margin_pos, margin_neg``).
        num_classes, embedding_dim: required by proxy/classifier losses (``proxy_anchor``,
            ``arcface``, ``cosface``); ignored by the others.
        memory_size: rows ``M`` of a cross-batch memory (Wang et al., CVPR 2020; 0 = none):
            every reference-capable term (TCM, multi_similarity, contrastive, triplet) then
            compares the batch with ``[batch; last M detached embeddings]``.
        memory_warmup: training steps before the memory starts storing (0 = from the first).
        **params: parameters of the base loss (unknown ones raise ValueError listing the valid
            ones). ``triplet`` also takes ``miner_margin`` and ``type_of_triplets`` (miner).

    Example:
        >>> loss_fn = build_loss("proxy_anchor", tcm=True, num_classes=10, embedding_dim=8)
        >>> sum(p.numel() for p in loss_fn.parameters())  # the proxies
        80
    """
    if not isinstance(name, str):
        raise ValueError(f"loss name must be a string; got {name!r}")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; valid: {available_losses()}")
    spec = _REGISTRY[key]
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for loss {key!r}; valid: {list(spec.params)}"
        )
    if key == "none":
        if tcm is False:
            raise ValueError("loss 'none' with tcm=False has nothing to optimise; pass tcm=True")
        tcm_mod = _tcm_from_arg(True if tcm is None else tcm)
        return LossWithTCM(
            None, tcm_mod, name="none", memory_size=memory_size, memory_warmup=memory_warmup
        )
    if spec.needs_classes:
        missing = [
            n
            for n, v in (("num_classes", num_classes), ("embedding_dim", embedding_dim))
            if v is None
        ]
        if missing:
            raise ValueError(f"loss {key!r} needs {' and '.join(missing)} (got None)")
        for n, v in (("num_classes", num_classes), ("embedding_dim", embedding_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{n} must be a positive integer; got {v!r}")
    tcm_mod = _tcm_from_arg(tcm)
    base = spec.make(dict(params), num_classes, embedding_dim)
    return LossWithTCM(
        base,
        tcm_mod,
        name=key,
        needs_classes=spec.needs_classes,
        num_classes=num_classes,
        memory_size=memory_size,
        memory_warmup=memory_warmup,
    )
