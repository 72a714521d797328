"""Helpers shared by the on-disk dataset loaders (CUB, Cars196, SOP, iNaturalist, In-Shop, ...)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np

from tcm.data.base import FileImageDataset
from tcm.data.transforms import resolve_transform

__all__ = [
    "DEFAULT_PHOTO_SIZE",
    "build_file_dataset",
    "half_of",
    "read_lines",
    "require_file",
    "require_root",
]

DEFAULT_PHOTO_SIZE = 224
HALVES = ("calibration", "evaluation")


def require_root(root: str | os.PathLike[str] | None, name: str, hint: str) -> str:
    """Return ``root`` as a string; ValueError when it is None or not a directory."""
    if root is None:
        raise ValueError(f"{name}: pass root=<directory> ({hint}); nothing is downloaded")
    r = os.fspath(root)
    if not os.path.isdir(r):
        raise ValueError(f"{name}: root directory does not exist: {r!r} ({hint})")
    return r


def require_file(path: str, name: str) -> str:
    """Return ``path``; FileNotFoundError naming it when it does not exist."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: required file not found: {path!r}")
    return path


def read_lines(path: str) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file."""
    with open(path, encoding="utf-8") as fh:
        return [ln.strip() for ln in fh if ln.strip()]


def half_of(class_id: str, salt: str) -> str:
    """Stable half of a test class: ``"calibration"`` or ``"evaluation"`` (sha256 of the id)."""
    digest = hashlib.sha256(f"{salt}:{class_id}".encode()).digest()
    return HALVES[digest[0] & 1]


def build_file_dataset(
    name: str,
    split: str,
    paths: Sequence[str],
    class_ids: Sequence[str],
    *,
    image_size: int | None,
    transform: object,
    on_error: str,
    verify: bool,
    kind: str = "photo",
    class_name_map: dict[str, str] | None = None,
) -> FileImageDataset:
    """Filter the halves ``calibration`` / ``evaluation`` if asked, resolve the transform, build.

    ``paths`` / ``class_ids`` must already hold the samples of the base split (``test`` for the
    halves).
    """
    size = DEFAULT_PHOTO_SIZE if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"image_size must be an int >= 8 (pixels); got {image_size!r}")
    ids = [str(c) for c in class_ids]
    plist = list(paths)
    if split in HALVES:
        keep = [i for i, c in enumerate(ids) if half_of(c, name) == split]
        plist = [plist[i] for i in keep]
        ids = [ids[i] for i in keep]
    if not plist:
        raise ValueError(f"{name}: split {split!r} has no samples")
    tf = resolve_transform(transform, kind, split, size)
    return FileImageDataset(
        name,
        split,
        plist,
        np.asarray(ids),
        tf,
        on_error=on_error,
        verify=verify,
        class_name_map=class_name_map,
    )


def check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    """ValueError unless ``split`` is one of ``allowed``."""
    if split not in allowed:
        raise ValueError(f"{name}: split must be one of {allowed}; got {split!r}")
