"""Where training gets its data, and the validation split used for model selection.

The seam: a *dataset provider* is any callable ``provider(data_config, split) -> DMLDataset``.
:func:`tcm.train.train` takes one as ``datasets=``; without it, :func:`default_provider` looks
``data.name`` up in the one dataset registry, :mod:`tcm.data`'s (built-ins, and what
:func:`tcm.data.register_dataset` or :func:`register_dataset` here added: how tests and launcher
scripts plug in synthetic data, also in subprocesses and under ``torchrun``). A provider
registered here is called with the run's whole ``DataConfig``; ``tcm.data.load(name, ...)``
reaches it too (with a ``DataConfig`` of the arguments given).

Model selection (docs/definitions.md): :func:`split_validation_classes` holds out a seeded
fraction of whole *training* classes; ``best.pt`` is chosen on them, and the test classes are
only used to report the chosen checkpoint. The held-out images are read through
:class:`TransformedView` with the test split's deterministic transform (no augmentation).

Example:
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(20), 3)
    >>> s = split_validation_classes(labels, [f"c{i}" for i in range(20)], 0.1, seed=0)
    >>> len(s.val_class_codes), len(s.train_indices) + len(s.val_indices)
    (2, 60)
    >>> bool(np.isin(labels[s.train_indices], s.val_class_codes).any())
    False
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tcm.data.base import DMLDataset
from tcm.train.config import DataConfig

__all__ = [
    "DatasetProvider",
    "SelectionSplit",
    "TransformedView",
    "default_provider",
    "register_dataset",
    "registered_datasets",
    "split_validation_classes",
    "unregister_dataset",
]

DatasetProvider = Callable[[DataConfig, str], DMLDataset]
"""``provider(data_config, split) -> DMLDataset``; ``split`` is ``data.train_split`` or
``data.test_split``."""


class _ProviderLoader:
    """A :data:`DatasetProvider` in :mod:`tcm.data`'s registry (with :func:`tcm.data.load`'s
    signature, for callers without a ``DataConfig``)."""

    def __init__(self, name: str, provider: DatasetProvider) -> None:
        self.name = name
        self.provider = provider

    def __call__(
        self,
        split: str = "train",
        root: str | None = None,
        image_size: int | None = None,
        transform: Any = "default",
        **options: Any,
    ) -> DMLDataset:
        fields: dict[str, Any] = {"name": self.name, "root": root, "options": dict(options)}
        if image_size is not None:
            fields["image_size"] = image_size
        return self.provider(DataConfig.model_construct(**fields), split)


def register_dataset(name: str, provider: DatasetProvider) -> None:
    """Make ``data.name=<name>`` use ``provider`` (registered in :mod:`tcm.data`'s one registry;
    takes precedence over a built-in dataset of that name)."""
    from tcm import data as tdata

    if isinstance(name, str) and name and not callable(provider):  # a bad name: tcm.data says
        raise ValueError(f"provider must be callable (data_config, split) -> dataset: {provider!r}")
    tdata.register_dataset(name, _ProviderLoader(name, provider))


def unregister_dataset(name: str) -> None:
    """Remove a registered provider (no error when absent; see
    :func:`tcm.data.unregister_dataset`)."""
    from tcm import data as tdata

    tdata.unregister_dataset(name)


def registered_datasets() -> list[str]:
    """Names registered with :func:`register_dataset` or :func:`tcm.data.register_dataset`
    (sorted)."""
    from tcm import data as tdata

    return [n for n in tdata.available_datasets() if tdata.registered_loader(n) is not None]


def default_provider(data: DataConfig, split: str) -> DMLDataset:
    """The registered provider of ``data.name`` (given the whole config), else
    ``tcm.data.load`` with the config's options."""
    from tcm import data as tdata

    loader = tdata.registered_loader(data.name)
    if isinstance(loader, _ProviderLoader):
        return loader.provider(data, split)
    return tdata.load(
        data.name,
        split=split,
        root=data.root,
        image_size=data.image_size,
        transform="default",
        **dict(data.options),
    )


@dataclass(frozen=True)
class SelectionSplit:
    """Training classes split into the classes trained on and the validation classes.

    ``train_indices`` / ``val_indices``: sample indices into the training dataset;
    ``val_class_codes``: the held-out label codes; ``class_names``: their names (sorted by code).
    """

    train_indices: np.ndarray
    val_indices: np.ndarray
    val_class_codes: np.ndarray
    class_names: list[str]
    fraction: float
    seed: int

    def describe(self) -> str:
        """``"validation: 10% of the training classes (61 classes, seed 0)"``."""
        return (
            f"validation: {self.fraction:.0%} of the training classes "
            f"({len(self.val_class_codes)} classes, seed {self.seed})"
        )


def split_validation_classes(
    labels: np.ndarray,
    class_names: Sequence[str],
    fraction: float,
    seed: int,
    *,
    min_train_classes: int = 1,
) -> SelectionSplit:
    """Hold out ``max(2, round(fraction · C))`` whole classes (with >= 2 samples) of ``labels``.

    The classes are drawn with ``numpy.random.default_rng(seed)`` (independent of the global RNG
    streams); a class is either entirely in the validation split or entirely in training.

    Raises:
        ValueError: too few classes to hold out 2 and keep ``min_train_classes`` for training.
    """
    lab = np.asarray(labels, dtype=np.int64)
    codes, counts = np.unique(lab, return_counts=True)
    eligible = codes[counts >= 2]
    n_val = max(2, round(float(fraction) * codes.shape[0]))
    if eligible.shape[0] < n_val or codes.shape[0] - n_val < min_train_classes:
        raise ValueError(
            f"data.val_classes={fraction}: the training split has {codes.shape[0]} classes "
            f"({eligible.shape[0]} with >= 2 samples); holding out {n_val} for validation would "
            f"leave fewer than {min_train_classes} classes (batch_size // m_per_class) to train on"
        )
    rng = np.random.default_rng([int(seed), 0x5E1EC7])
    val = np.sort(rng.choice(eligible, size=n_val, replace=False))
    is_val = np.isin(lab, val)
    return SelectionSplit(
        train_indices=np.flatnonzero(~is_val),
        val_indices=np.flatnonzero(is_val),
        val_class_codes=val,
        class_names=[str(class_names[int(c)]) for c in val],
        fraction=float(fraction),
        seed=int(seed),
    )


class TransformedView(Dataset[tuple[torch.Tensor, int]]):
    """Samples ``indices`` of ``base`` read with another ``transform`` (``None``: ``uint8/255``).

    ``view[k] -> (transform(base.load_uint8(indices[k])), base.labels[indices[k]])``;
    ``.labels`` holds those labels (``(len(indices),)`` int64).
    """

    def __init__(
        self, base: DMLDataset, indices: np.ndarray, transform: Callable[[Any], Any] | None
    ) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.labels: np.ndarray = np.asarray(base.labels)[self.indices]

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        i = int(self.indices[k])
        img = self.base.load_uint8(i)
        out = img.to(torch.float32) / 255.0 if self.transform is None else self.transform(img)
        return out, int(self.base.labels[i])
