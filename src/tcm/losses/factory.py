"""Build any supported loss by name, optionally with the TCM regulariser added.

Standard losses come from pytorch-metric-learning (not re-implemented); Smooth-AP, RS@k and TCM
are ours. ``build_loss`` always returns a :class:`LossWithTCM` module so training code has one
interface and one ``.parameters()`` (proxy/classifier weights included) to give the optimiser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tcm.losses._common import check_embeddings, label_codes
from tcm.losses.recall_surrogate import RecallAtKSurrogateLoss
from tcm.losses.smooth_ap import SmoothAPLoss
from tcm.losses.tcm import TCMLoss

__all__ = ["LossWithTCM", "available_losses", "build_loss"]

_TCM_PARAMS = ("lambda_pos", "lambda_neg", "margin_pos", "margin_neg")


class _MinedLoss(nn.Module):
    """A pytorch-metric-learning loss fed by a miner: ``loss(emb, labels, miner(emb, labels))``."""

    def __init__(self, loss: nn.Module, miner: nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.loss(embeddings, labels, self.miner(embeddings, labels))
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
    "proxy_anchor": _Spec(
        ("margin", "alpha"),
        lambda p, nc, d: _pml("ProxyAnchorLoss")(num_classes=nc, embedding_size=d, **p),
        needs_classes=True,
        description="pytorch-metric-learning ProxyAnchorLoss",
    ),
    "multi_similarity": _Spec(
        ("alpha", "beta", "base"),
        lambda p, _nc, _d: _pml("MultiSimilarityLoss")(**p),
        description="pytorch-metric-learning MultiSimilarityLoss",
    ),
    "contrastive": _Spec(
        ("pos_margin", "neg_margin"),
        lambda p, _nc, _d: _pml("ContrastiveLoss")(**p),
        description="pytorch-metric-learning ContrastiveLoss (Euclidean distance of normalised "
        "embeddings)",
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
    "arcface": _Spec(
        ("margin", "scale"),
        lambda p, nc, d: _pml("ArcFaceLoss")(num_classes=nc, embedding_size=d, **p),
        needs_classes=True,
        description="pytorch-metric-learning ArcFaceLoss (margin in degrees)",
    ),
    "cosface": _Spec(
        ("margin", "scale"),
        lambda p, nc, d: _pml("CosFaceLoss")(num_classes=nc, embedding_size=d, **p),
        needs_classes=True,
        description="pytorch-metric-learning CosFaceLoss",
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


class LossWithTCM(nn.Module):
    """``total = base(embeddings, labels) + tcm(embeddings, labels)``, terms logged separately.

    ``base`` / ``tcm`` may each be ``None`` (not both). Proxy/classifier weights of the base loss
    are sub-module parameters, so ``optimizer = SGD(list(model.parameters()) +
    list(loss.parameters()), ...)`` trains them. After each forward, ``last_terms`` holds the
    detached Python floats ``{"base", "tcm", "total"}`` (0.0 for an absent term).

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
    ) -> None:
        super().__init__()
        if base is None and tcm is None:
            raise ValueError("LossWithTCM needs a base loss, a TCM loss or both; got neither")
        self.base = base
        self.tcm = tcm
        self.name = name
        self.needs_classes = needs_classes
        self.num_classes = num_classes
        self.last_terms: dict[str, float] = {}

    def extra_repr(self) -> str:
        return f"name={self.name!r}"

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
        lo, hi = int(lab_t.min()), int(lab_t.max())
        if self.num_classes is not None and (lo < 0 or hi >= self.num_classes):
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"loss {self.name!r} needs labels in [0, {self.num_classes}); got label {bad}"
            )
        return lab_t.to(torch.int64)

    def forward(self, embeddings: torch.Tensor, labels: Any) -> torch.Tensor:
        """Return the total loss (scalar tensor); see the class docstring."""
        emb = check_embeddings(embeddings)
        terms: list[torch.Tensor] = []
        base_val = tcm_val = 0.0
        if self.base is not None:
            b: torch.Tensor = self.base(emb, self._base_labels(labels, emb))
            terms.append(b)
            base_val = float(b.detach())
        if self.tcm is not None:
            t = self.tcm(emb, labels)
            terms.append(t)
            tcm_val = float(t.detach())
        total = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        self.last_terms = {"base": base_val, "tcm": tcm_val, "total": float(total.detach())}
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
        return LossWithTCM(None, tcm_mod, name="none")
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
        base, tcm_mod, name=key, needs_classes=spec.needs_classes, num_classes=num_classes
    )
