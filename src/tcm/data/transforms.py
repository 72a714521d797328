"""Standard deep-metric-learning train / test pipelines (torchvision.transforms.v2).

Every pipeline takes a ``uint8`` tensor ``(3, H, W)`` (RGB, 0..255) and returns a ``float32``
tensor ``(3, image_size, image_size)`` normalised with the ImageNet mean / std
(``(x / 255 - mean) / std``), so the same pipelines suit pretrained backbones.

Kinds:
    ``"photo"``: train = RandomResizedCrop(scale 0.16..1) + horizontal flip; test = resize the
        shorter side to ``round(image_size * 256 / 224)`` then centre crop (the usual DML recipe).
    ``"glyph"``: characters (white on black), where a mirror image is a different symbol:
        train = small RandomAffine (+-5 deg, +-5 % shift, scale 0.9..1.1, shear +-5 deg, black
        fill), no flip; test = resize to ``image_size`` only.
    ``"emoji"``: as ``"glyph"`` but the affine fill is white (emoji are drawn on white).

Example:
    >>> import torch
    >>> t = test_transform("photo", 32)
    >>> t(torch.zeros(3, 40, 50, dtype=torch.uint8)).shape
    torch.Size([3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torchvision.transforms import v2

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TRANSFORM_KINDS",
    "TransformKind",
    "image_size_or_default",
    "test_transform",
    "train_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TransformKind = Literal["photo", "glyph", "emoji"]
TRANSFORM_KINDS: tuple[str, ...] = ("photo", "glyph", "emoji")


def image_size_or_default(image_size: int | None, default: int) -> int:
    """``image_size`` (``default`` when ``None``), checked to be an int >= 8 (pixels).

    Raises:
        ValueError: not an int or below 8.
    """
    size = default if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"image_size must be an int >= 8 (pixels); got {image_size!r}")
    return size


def _check(kind: str, image_size: int) -> None:
    if kind not in TRANSFORM_KINDS:
        raise ValueError(f"transform kind must be one of {TRANSFORM_KINDS}; got {kind!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8 (pixels); got {image_size!r}")


def _finish() -> list[Callable[..., torch.Tensor]]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(kind: str, image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training pipeline: ``uint8 (3, H, W)`` -> normalised ``float32 (3, S, S)``, S=image_size."""
    _check(kind, image_size)
    if kind == "photo":
        steps: list[Callable[..., torch.Tensor]] = [
            v2.RandomResizedCrop(image_size, scale=(0.16, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps = [
            v2.Resize((image_size, image_size), antialias=True),
            v2.RandomAffine(
                degrees=5.0,
                translate=(0.05, 0.05),
                scale=(0.9, 1.1),
                shear=5.0,
                fill=255 if kind == "emoji" else 0,
            ),
        ]
    pipeline: Callable[[torch.Tensor], torch.Tensor] = v2.Compose([*steps, *_finish()])
    return pipeline


def test_transform(kind: str, image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Deterministic evaluation pipeline: ``uint8 (3, H, W)`` -> ``float32 (3, S, S)``."""
    _check(kind, image_size)
    if kind == "photo":
        steps: list[Callable[..., torch.Tensor]] = [
            v2.Resize(round(image_size * 256 / 224), antialias=True),
            v2.CenterCrop(image_size),
        ]
    else:
        steps = [v2.Resize((image_size, image_size), antialias=True)]
    pipeline: Callable[[torch.Tensor], torch.Tensor] = v2.Compose([*steps, *_finish()])
    return pipeline


# the name starts with "test": keep pytest from collecting it when a test module imports it
test_transform.__dict__["__test__"] = False


def resolve_transform(
    transform: object, kind: str, split: str, image_size: int
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Map the ``transform`` argument of :func:`tcm.data.load` to a callable or ``None``.

    ``"default"`` gives :func:`train_transform` for the ``"train"`` split and
    :func:`test_transform` otherwise; ``None`` and callables pass through.
    """
    if transform is None:
        return None
    if isinstance(transform, str):
        if transform != "default":
            raise ValueError(f"transform must be 'default', None or a callable; got {transform!r}")
        if split == "train":
            return train_transform(kind, image_size)
        return test_transform(kind, image_size)
    if callable(transform):
        return transform
    raise ValueError(
        f"transform must be 'default', None or a callable; got {type(transform).__name__}"
    )
