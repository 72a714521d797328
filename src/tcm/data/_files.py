"""The one reader shared by the on-disk photo loaders (CUB, Cars196, SOP, iNaturalist, In-Shop,
folder, CSV).

Each dataset only knows its own layout: a ``parse(root, split) -> ParsedSplit`` function listing
the image paths and class ids of ``"train"`` or ``"test"`` (or its own extra splits).
:func:`read_photo_split` does everything else the same way for all of them: split / option checks,
the root check, the disjoint test halves ``calibration`` / ``evaluation``, the transform, missing
and corrupt files, dense labels and per-sample ``ids`` (paths relative to the root).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tcm.data.base import FileImageDataset, check_on_error
from tcm.data.transforms import image_size_or_default, resolve_transform

__all__ = [
    "DEFAULT_PHOTO_SIZE",
    "ParsedSplit",
    "build_file_dataset",
    "first_classes_split",
    "half_of",
    "read_lines",
    "read_photo_split",
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
    size = image_size_or_default(image_size, DEFAULT_PHOTO_SIZE)
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


@dataclass(frozen=True)
class ParsedSplit:
    """What a dataset's ``parse(root, split)`` returns, one entry per image.

    ``class_names``: optional ``{class id: readable name}``. ``shared_classes``: a fixed class
    coding (label = position in this list) shared by several splits, e.g. In-Shop's query and
    gallery; ``None``: dense codes of the split's own sorted class ids. ``domains``: optional
    domain (data distribution / group) of each image, aligned with ``paths``.
    """

    paths: list[str]
    class_ids: list[str]
    class_names: dict[str, str] | None = None
    shared_classes: list[str] | None = None
    domains: list[str] | None = None


Parser = Callable[[str, str], ParsedSplit]


def first_classes_split(
    images: Iterable[tuple[str, int]],
    split: str,
    n_train: int,
    class_names: dict[str, str] | None,
) -> ParsedSplit:
    """The CUB / Cars196 protocol: of the ``(path, class number)`` images, ``"train"`` keeps the
    classes ``1..n_train``, any other split the rest; class ids are written ``"001"``."""
    want_train = split == "train"
    paths, ids = [], []
    for path, c in images:
        if (c <= n_train) == want_train:
            paths.append(path)
            ids.append(f"{c:03d}")
    return ParsedSplit(paths, ids, class_names)


def read_photo_split(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None,
    parse: Parser,
    *,
    splits: tuple[str, ...],
    root_hint: str,
    image_size: int | None,
    transform: object,
    on_error: str,
    verify: bool,
    resolve_root: Callable[[str | os.PathLike[str] | None], str] | None = None,
) -> FileImageDataset:
    """Load ``split`` of dataset ``name`` laid out under ``root`` as ``parse`` describes.

    ``resolve_root`` replaces the default root check (a directory; e.g. a CSV file instead);
    ``ids`` are then relative to the folder holding that file.

    ``parse`` is called with the base split: ``"test"`` for the halves ``calibration`` /
    ``evaluation`` (whole test classes, split by a stable hash), ``split`` otherwise. The
    returned dataset has ``.ids``: each sample's path relative to ``root``.

    Raises:
        ValueError: bad split / option / image size, root missing, no samples, bad layout.
        FileNotFoundError: a required listing file or (``on_error="raise"``) an image is missing.
    """
    check_split(name, split, splits)
    check_on_error(on_error)
    r = resolve_root(root) if resolve_root is not None else require_root(root, name, root_hint)
    parsed = parse(r, "test" if split in HALVES else split)
    if parsed.shared_classes is None:
        ds = build_file_dataset(
            name,
            split,
            parsed.paths,
            parsed.class_ids,
            image_size=image_size,
            transform=transform,
            on_error=on_error,
            verify=verify,
            class_name_map=parsed.class_names,
        )
    else:
        ds = _shared_coding(name, split, parsed, image_size, transform, on_error, verify)
    base = r if os.path.isdir(r) else os.path.dirname(os.path.abspath(r))
    ds.ids = [os.path.relpath(p, base) for p in ds.paths]
    if parsed.domains is not None:
        by_path = dict(zip(parsed.paths, parsed.domains, strict=True))
        ds.domains = [by_path[p] for p in ds.paths]
    return ds


class PhotoLoader(Protocol):
    """Signature of the loaders :func:`photo_loader` makes (``tcm.data.load`` calls them)."""

    def __call__(
        self,
        split: str = "train",
        root: str | os.PathLike[str] | None = None,
        image_size: int | None = None,
        transform: object = "default",
        *,
        on_error: str = "raise",
        verify: bool = False,
    ) -> FileImageDataset: ...


def photo_loader(
    name: str, parse: Parser, *, splits: tuple[str, ...], root_hint: str, title: str
) -> PhotoLoader:
    """The ``load_<name>`` function of a photo benchmark read by :func:`read_photo_split`:
    ``load(split, root, image_size, transform, *, on_error="raise" | "skip", verify=False)``."""

    def load(
        split: str = "train",
        root: str | os.PathLike[str] | None = None,
        image_size: int | None = None,
        transform: object = "default",
        *,
        on_error: str = "raise",
        verify: bool = False,
    ) -> FileImageDataset:
        return read_photo_split(
            name,
            split,
            root,
            parse,
            splits=splits,
            root_hint=root_hint,
            image_size=image_size,
            transform=transform,
            on_error=on_error,
            verify=verify,
        )

    load.__name__ = load.__qualname__ = f"load_{name}"
    load.__doc__ = f'Load {title} (see module doc). ``on_error``: ``"raise"`` or ``"skip"``.'
    return load


def _shared_coding(
    name: str,
    split: str,
    parsed: ParsedSplit,
    image_size: int | None,
    transform: object,
    on_error: str,
    verify: bool,
) -> FileImageDataset:
    classes = list(parsed.shared_classes or [])
    if not parsed.paths:
        raise ValueError(f"{name}: split {split!r} has no samples")
    size = image_size_or_default(image_size, DEFAULT_PHOTO_SIZE)
    code = {c: i for i, c in enumerate(classes)}
    ds = FileImageDataset(
        name,
        split,
        parsed.paths,
        np.array([code[c] for c in parsed.class_ids], dtype=np.int64),
        resolve_transform(transform, "photo", split, size),
        on_error=on_error,
        verify=verify,
    )
    raw_codes = np.array([int(c) for c in ds.class_ids], dtype=np.int64)
    ds.labels = raw_codes[ds.labels]  # label = position in the shared class list
    ds.class_names = classes
    return ds
