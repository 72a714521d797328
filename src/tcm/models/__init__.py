"""Backbones and the embedding model used by ``tcm`` training.

An :class:`EmbeddingModel` maps images ``(B, 3, H, W)`` (float, ImageNet-normalised or in
``[0, 1]``) to **L2-normalised** embeddings ``(B, D)``; two images are compared by cosine
similarity ``s = <f(x_i), f(x_j)>`` in ``[-1, 1]`` and accepted as a match when
``s >= threshold``.

Example:
    >>> import torch
    >>> from tcm.models import build_model
    >>> model = build_model("small_cnn", embedding_dim=16, image_size=32)
    >>> emb = model(torch.rand(4, 3, 32, 32))
    >>> emb.shape
    torch.Size([4, 16])
    >>> s = emb @ emb.T          # cosine similarities: the rows are L2-normalised
    >>> accepted = s >= 0.5      # a pair is accepted when similarity >= threshold
    >>> bool(accepted.diagonal().all())  # s(i, i) = 1 (to float32 rounding) >= any t < 1
    True
"""

from __future__ import annotations

from tcm.models.backbones import available_backbones, build_backbone, efficientnet_lite0_weights
from tcm.models.embedding import (
    EmbeddingModel,
    ModelSpec,
    build_model,
    load_pretrained_backbone,
    model_from_spec,
)

__all__ = [
    "EmbeddingModel",
    "ModelSpec",
    "available_backbones",
    "build_backbone",
    "build_model",
    "efficientnet_lite0_weights",
    "load_pretrained_backbone",
    "model_from_spec",
]
