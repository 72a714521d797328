"""Base dataset classes shared by every ``tcm.data`` loader.

Contract (docs/architecture.md): ``dataset[i] -> (image, label)`` where ``image`` is a
``FloatTensor[3, H, W]`` and ``label`` a dense class code in ``0 .. C-1`` *within that split*.
``.labels`` is an ``int64`` array of shape ``(N,)``, ``.class_names[c]`` the name of class
code ``c``. ``.domains`` (``(N,)`` str array or None) names the data distribution of each sample
(font family, vendor, ...; see docs/data.md) and ``.ids`` (``N`` unique str) is a stable sample id
(``char@font``, a path relative to the dataset root, ...; default ``str(index)``).

Transforms receive the decoded image as a ``torch.uint8`` tensor of shape ``(3, H, W)``
(RGB, 0..255) and must return a float tensor. ``transform=None`` returns ``image / 255``
(float32 in ``[0, 1]``, native size).

Example:
    >>> import numpy as np, torch
    >>> ds = TensorImageDataset("toy", "train", torch.zeros(2, 8, 8, dtype=torch.uint8),
    ...                         np.array([0, 1]), ["a", "b"], transform=None)
    >>> img, label = ds[1]
    >>> tuple(img.shape), label, ds.num_classes
    ((3, 8, 8), 1, 2)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from tcm.data._images import check_files_exist, read_rgb, verify_image

__all__ = [
    "DMLDataset",
    "FileImageDataset",
    "OnError",
    "TensorImageDataset",
    "Transform",
    "check_on_error",
    "dense_labels",
]

Transform = Callable[[torch.Tensor], torch.Tensor]
OnError = Literal["raise", "skip"]


def check_on_error(on_error: str) -> None:
    """Raise ValueError unless ``on_error`` is ``"raise"`` or ``"skip"``."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip'; got {on_error!r}")


def dense_labels(raw: Sequence[object] | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map raw class ids (ints or strings) to dense codes ``0..C-1`` in sorted id order.

    Returns ``(codes int64 (N,), class_names)`` with ``class_names[c] = str(id)``.
    """
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise ValueError(f"class ids must be 1-D; got shape {arr.shape}")
    classes, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), [str(c) for c in classes.tolist()]


class DMLDataset(Dataset[tuple[torch.Tensor, int]]):
    """Map-style dataset of ``(FloatTensor[3, H, W], int label)`` pairs.

    Attributes:
        name: dataset name as given to :func:`tcm.data.load`.
        split: ``"train"``, ``"test"``, ... .
        labels: ``np.ndarray[int64]`` of shape ``(N,)``, dense class codes ``0..C-1``.
        class_names: ``list[str]`` of length ``C``; ``class_names[code]`` names the class.
        transform: callable on a ``uint8 (3, H, W)`` tensor, or ``None`` (float ``[0, 1]``).
        domains: ``np.ndarray`` of str, shape ``(N,)``: the domain (data distribution / group) of
            each sample, or ``None`` when the dataset has none. Assigning validates the length.
        ids: ``list[str]`` of ``N`` unique, stable sample ids; ``str(index)`` unless the loader
            sets them (file datasets: their paths). Assigning validates length and uniqueness.
    """

    def __init__(
        self,
        name: str,
        split: str,
        labels: np.ndarray,
        class_names: Sequence[str],
        transform: Transform | None = None,
    ) -> None:
        lab = np.asarray(labels)
        if lab.ndim != 1:
            raise ValueError(f"labels must be 1-D of shape (N,); got shape {lab.shape}")
        if lab.size and lab.dtype.kind not in "iu":
            raise ValueError(f"labels must be integer class codes; got dtype {lab.dtype}")
        lab = lab.astype(np.int64)
        names = [str(c) for c in class_names]
        if lab.size and (lab.min() < 0 or lab.max() >= len(names)):
            raise ValueError(
                f"labels must lie in [0, {len(names)}) (number of class names); got range "
                f"[{int(lab.min())}, {int(lab.max())}]"
            )
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None; got {type(transform).__name__}")
        self.name = name
        self.split = split
        self.labels: np.ndarray = lab
        self.class_names: list[str] = names
        self.transform: Transform | None = transform
        self._domains: np.ndarray | None = None
        self._ids: list[str] | None = None

    @property
    def domains(self) -> np.ndarray | None:
        """Per-sample domain names, ``(N,)`` str array, or ``None``."""
        return self._domains

    @domains.setter
    def domains(self, value: Sequence[str] | np.ndarray | None) -> None:
        if value is None:
            self._domains = None
            return
        arr = np.asarray([str(v) for v in np.asarray(value, dtype=object).tolist()], dtype=str)
        if arr.ndim != 1 or arr.shape[0] != len(self):
            raise ValueError(
                f"domains must have shape ({len(self)},) (one per sample); got {arr.shape}"
            )
        self._domains = arr

    @property
    def ids(self) -> list[str]:
        """Stable per-sample ids (``N`` unique strings)."""
        return self._ids if self._ids is not None else self._default_ids()

    @ids.setter
    def ids(self, value: Sequence[str] | None) -> None:
        if value is None:
            self._ids = None
            return
        out = [str(v) for v in value]
        if len(out) != len(self):
            raise ValueError(f"ids must have length {len(self)} (one per sample); got {len(out)}")
        seen: set[str] = set()
        for i, v in enumerate(out):
            if v in seen:
                raise ValueError(f"sample ids must be unique; {v!r} repeats (second at row {i})")
            seen.add(v)
        self._ids = out

    def _default_ids(self) -> list[str]:
        return [str(i) for i in range(len(self))]

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` in this split."""
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _check_index(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if i < -n or i >= n:
            raise IndexError(f"index {index} out of range for {self.name}/{self.split} of size {n}")
        return i % n if n else i

    def load_uint8(self, index: int) -> torch.Tensor:
        """Return sample ``index`` as a ``uint8`` tensor ``(3, H, W)`` before any transform."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = self._check_index(index)
        img = self.load_uint8(i)
        out = img.to(torch.float32) / 255.0 if self.transform is None else self.transform(img)
        return out, int(self.labels[i])

    def class_counts(self) -> np.ndarray:
        """Number of samples per class code, ``int64`` shape ``(C,)``."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"num_samples={len(self)}, num_classes={self.num_classes})"
        )


class TensorImageDataset(DMLDataset):
    """Dataset whose images are held in memory as a ``uint8`` tensor.

    Args:
        images: ``(N, H, W)`` greyscale (returned as 3 identical channels) or ``(N, 3, H, W)``.
        labels: ``(N,)`` dense class codes.
        instance_names: optional per-sample description (e.g. the font or vendor).
    """

    def __init__(
        self,
        name: str,
        split: str,
        images: torch.Tensor,
        labels: np.ndarray,
        class_names: Sequence[str],
        transform: Transform | None = None,
        instance_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(name, split, labels, class_names, transform)
        if images.dtype != torch.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"images must be a uint8 tensor (N, H, W) or (N, 3, H, W); got dtype "
                f"{images.dtype}, shape {tuple(images.shape)}"
            )
        if images.ndim == 4 and images.shape[1] != 3:
            raise ValueError(f"colour images must have 3 channels; got shape {tuple(images.shape)}")
        if images.shape[0] != len(self):
            raise ValueError(f"{images.shape[0]} images but {len(self)} labels")
        self.images = images
        self.instance_names: list[str] = list(instance_names) if instance_names is not None else []

    def load_uint8(self, index: int) -> torch.Tensor:
        img = self.images[index]
        return img.unsqueeze(0).expand(3, -1, -1) if img.ndim == 2 else img


class FileImageDataset(DMLDataset):
    """Dataset of image files on disk, decoded lazily in ``__getitem__``.

    At construction only existence is checked (one ``stat`` per file). Missing files raise
    :class:`FileNotFoundError` naming the first one (``on_error="raise"``) or are dropped with a
    :class:`UserWarning` giving their count and the first paths (``on_error="skip"``).
    ``verify=True`` additionally decodes every file at construction (slow) with the same policy.

    A file that fails to decode in ``__getitem__`` raises :class:`ValueError` naming the path
    (``on_error="raise"``); with ``on_error="skip"`` a warning names it and the next readable
    sample of the same class is returned instead (the class keeps its size; if no sample of
    the class is readable, ValueError).

    Args:
        paths: absolute or relative file paths, length ``N``.
        raw_labels: length ``N`` raw class ids (ints or strings); they are re-encoded to dense
            codes in sorted id order after dropping skipped files.
        class_name_map: optional ``{raw id as str: human-readable name}``.
    """

    def __init__(
        self,
        name: str,
        split: str,
        paths: Sequence[str],
        raw_labels: Sequence[object] | np.ndarray,
        transform: Transform | None = None,
        *,
        on_error: str = "raise",
        verify: bool = False,
        class_name_map: dict[str, str] | None = None,
    ) -> None:
        check_on_error(on_error)
        path_list = [os.fspath(p) for p in paths]
        raw = np.asarray(raw_labels)
        if raw.ndim != 1 or raw.shape[0] != len(path_list):
            raise ValueError(f"{len(path_list)} paths but labels have shape {raw.shape}")
        bad = check_files_exist(path_list)
        reasons = {i: f"image file not found: {path_list[i]!r}" for i in bad}
        if bad and on_error == "raise":
            raise FileNotFoundError(
                f"{name}/{split}: {len(bad)} image file(s) missing; first: {path_list[bad[0]]!r}"
            )
        if verify:
            missing = set(bad)
            for i, p in enumerate(path_list):
                if i in missing:
                    continue
                why = verify_image(p)
                if why is not None:
                    if on_error == "raise":
                        raise ValueError(f"{name}/{split}: {why}")
                    reasons[i] = why
        if reasons:
            first = [path_list[i] for i in sorted(reasons)[:3]]
            warnings.warn(
                f"{name}/{split}: skipped {len(reasons)} unreadable or missing image file(s) "
                f"of {len(path_list)}; first: {first}",
                UserWarning,
                stacklevel=2,
            )
            keep = np.array([i not in reasons for i in range(len(path_list))], dtype=bool)
            path_list = [p for p, k in zip(path_list, keep, strict=True) if k]
            raw = raw[keep]
        if len(path_list) == 0:
            raise ValueError(f"{name}/{split}: no readable images left (0 samples)")
        codes, ids = dense_labels(raw)
        names = [class_name_map.get(c, c) for c in ids] if class_name_map else ids
        super().__init__(name, split, codes, names, transform)
        self.paths: list[str] = path_list
        self.class_ids: list[str] = ids
        self.on_error: str = on_error
        self.skipped: int = len(reasons)
        self._bad: set[int] = set()

    def _default_ids(self) -> list[str]:
        return list(self.paths)

    def load_uint8(self, index: int) -> torch.Tensor:
        try:
            return read_rgb(self.paths[index])
        except (FileNotFoundError, ValueError) as exc:
            if self.on_error == "raise":
                raise
            self._bad.add(index)
            warnings.warn(
                f"{self.name}/{self.split}: {exc}; using another image of the same class instead",
                UserWarning,
                stacklevel=3,
            )
        same = np.flatnonzero(self.labels == self.labels[index])
        order = np.concatenate([same[same > index], same[same < index]])
        for j in order.tolist():
            if j in self._bad:
                continue
            try:
                return read_rgb(self.paths[j])
            except (FileNotFoundError, ValueError):
                self._bad.add(j)
        raise ValueError(
            f"{self.name}/{self.split}: no readable image in class "
            f"{self.class_names[int(self.labels[index])]!r} (first bad file {self.paths[index]!r})"
        )
