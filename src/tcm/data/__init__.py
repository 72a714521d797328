"""Open-world DML datasets, class-balanced sampling and transforms.

Every dataset is a :class:`DMLDataset`: ``ds[i] -> (FloatTensor[3, H, W], int label)`` with dense
labels ``0..C-1`` per split, ``.labels`` (int64, ``(N,)``), ``.class_names``, ``.num_classes``,
``.name``, ``.split``. Train and test classes never overlap. See docs/data.md for every dataset.

Example:
    >>> from tcm.data import load, ClassBalancedBatchSampler
    >>> ds = load("glyphs", split="train")
    >>> sampler = ClassBalancedBatchSampler(ds.labels, batch_size=32, m_per_class=4)
    >>> batch = next(iter(sampler))
    >>> len(batch), len(set(ds.labels[batch].tolist()))
    (32, 8)
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from tcm.data.base import DMLDataset, FileImageDataset, TensorImageDataset
from tcm.data.samplers import ClassBalancedBatchSampler
from tcm.data.transforms import test_transform, train_transform

__all__ = [
    "ClassBalancedBatchSampler",
    "DMLDataset",
    "FileImageDataset",
    "TensorImageDataset",
    "available_datasets",
    "load",
    "test_transform",
    "train_transform",
]

# name -> (module, loader function); modules are imported on first use.
_REGISTRY: dict[str, tuple[str, str]] = {
    "glyphs": ("tcm.data.glyphs", "load_glyphs"),
    "cjk_glyphs": ("tcm.data.cjk", "load_cjk_glyphs"),
    "emoji": ("tcm.data.emoji", "load_emoji"),
    "cub200": ("tcm.data.cub200", "load_cub200"),
    "cars196": ("tcm.data.cars196", "load_cars196"),
    "sop": ("tcm.data.sop", "load_sop"),
    "inaturalist2018": ("tcm.data.inaturalist2018", "load_inaturalist2018"),
    "inshop": ("tcm.data.inshop", "load_inshop"),
    "folder": ("tcm.data.folder", "load_folder"),
    "csv": ("tcm.data.folder", "load_csv"),
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load` (whether or not their files / fonts are installed)."""
    return sorted(_REGISTRY)


def load(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    transform: Any = "default",
    **kw: Any,
) -> DMLDataset:
    """Load dataset ``name`` / ``split``.

    Args:
        name: one of :func:`available_datasets`.
        split: ``"train"`` or ``"test"``; ``"calibration"`` / ``"evaluation"`` (disjoint halves of
            the test classes) for every dataset; ``"query"`` / ``"gallery"`` for ``inshop``.
        root: dataset directory (file datasets: required; glyph datasets: font directory).
        image_size: output side in pixels (default: 32 for glyphs / cjk / emoji, 224 for photos).
        transform: ``"default"`` (train pipeline for ``"train"``, test pipeline otherwise),
            ``None`` (``uint8 / 255`` float at native size) or a callable on ``uint8 (3, H, W)``.
        **kw: dataset options (e.g. ``on_error="skip"``, ``augment_copies=2``).

    Raises:
        ValueError: unknown name or split, bad options, or missing data (message says how to
            install / where files were expected).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {available_datasets()}")
    module, func = _REGISTRY[name]
    loader = getattr(importlib.import_module(module), func)
    ds: DMLDataset = loader(
        split=split, root=root, image_size=image_size, transform=transform, **kw
    )
    return ds
