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
from collections.abc import Callable
from typing import Any

from tcm.data.base import DMLDataset, FileImageDataset, TensorImageDataset
from tcm.data.samplers import ClassBalancedBatchSampler
from tcm.data.transforms import test_transform, train_transform

__all__ = [
    "ClassBalancedBatchSampler",
    "DMLDataset",
    "DatasetLoader",
    "FileImageDataset",
    "TensorImageDataset",
    "available_datasets",
    "load",
    "register_dataset",
    "registered_loader",
    "test_transform",
    "train_transform",
    "unregister_dataset",
]

#: A dataset loader: ``loader(split=, root=, image_size=, transform=, **options) -> DMLDataset``
#: (the signature of :func:`load` without the name).
DatasetLoader = Callable[..., DMLDataset]

# the built-in datasets: name -> (module, loader function); modules are imported on first use
_BUILTIN: dict[str, tuple[str, str]] = {
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
#: THE dataset registry (the one place a dataset name is looked up, by :func:`load` and by
#: training): the built-ins plus what :func:`register_dataset` added (which takes precedence).
_REGISTRY: dict[str, tuple[str, str] | DatasetLoader] = dict(_BUILTIN)


def available_datasets() -> list[str]:
    """Names accepted by :func:`load` (whether or not their files / fonts are installed)."""
    return sorted(_REGISTRY)


def register_dataset(name: str, loader: DatasetLoader) -> None:
    """Make :func:`load` (and ``data.name=<name>`` in training) use ``loader`` for ``name``
    (in this process; it takes precedence over a built-in dataset of that name).

    Raises:
        ValueError: an empty name or a loader that is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string; got {name!r}")
    if not callable(loader):
        raise ValueError(f"dataset loader must be callable: {loader!r}")
    _REGISTRY[name] = loader


def unregister_dataset(name: str) -> None:
    """Undo :func:`register_dataset` (a built-in of that name is restored; no error when
    absent)."""
    if name in _BUILTIN:
        _REGISTRY[name] = _BUILTIN[name]
    else:
        _REGISTRY.pop(name, None)


def registered_loader(name: str) -> DatasetLoader | None:
    """The loader :func:`register_dataset` registered for ``name``, or None (a built-in or an
    unknown name)."""
    entry = _REGISTRY.get(name)
    return None if entry is None or isinstance(entry, tuple) else entry


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
        name: one of :func:`available_datasets` (a built-in or a :func:`register_dataset`
            name).
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
    entry = _REGISTRY[name]
    loader = entry if not isinstance(entry, tuple) else _builtin(entry)
    ds: DMLDataset = loader(
        split=split, root=root, image_size=image_size, transform=transform, **kw
    )
    return ds


def _builtin(entry: tuple[str, str]) -> DatasetLoader:
    module, func = entry
    loader: DatasetLoader = getattr(importlib.import_module(module), func)
    return loader
