"""In-Shop Clothes Retrieval (DeepFashion) with its query / gallery protocol.

Expected under ``root``::

    list_eval_partition.txt   line 1: number of images; line 2: header
                              "image_name item_id evaluation_status"; then one image per line,
                              e.g. "img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train"
                              with status train / query / gallery
    img/...                   (paths relative to root; ``root/Img/img/...`` is also accepted)

Splits: ``train`` (25,882 images / 3,997 items), ``query`` (14,218 / 3,985), ``gallery``
(12,612 / 3,985), ``test`` = query + gallery. Query and gallery share one class coding (codes of the
sorted item ids of the test items), so their labels are directly comparable.

Example:
    >>> q = load_inshop("query", root="/data/inshop")  # doctest: +SKIP
"""

from __future__ import annotations

import os

import numpy as np

from tcm.data._files import (
    DEFAULT_PHOTO_SIZE,
    check_split,
    half_of,
    read_lines,
    require_file,
    require_root,
)
from tcm.data.base import FileImageDataset, check_on_error
from tcm.data.transforms import resolve_transform

__all__ = ["load_inshop"]

SPLITS = ("train", "test", "query", "gallery", "calibration", "evaluation")


def load_inshop(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    transform: object = "default",
    *,
    on_error: str = "raise",
    verify: bool = False,
) -> FileImageDataset:
    """Load In-Shop (see module doc). ``on_error``: ``"raise"`` or ``"skip"``."""
    check_split("inshop", split, SPLITS)
    check_on_error(on_error)
    r = require_root(root, "inshop", "the folder with list_eval_partition.txt and img/")
    path = require_file(os.path.join(r, "list_eval_partition.txt"), "inshop")
    lines = read_lines(path)
    if len(lines) < 2 or not lines[1].lower().startswith("image_name"):
        raise ValueError(
            f"inshop: {path!r} must have a count line then the header "
            "'image_name item_id evaluation_status'"
        )
    base = r
    rows: list[tuple[str, str, str]] = []
    for k, ln in enumerate(lines[2:], start=3):
        parts = ln.split()
        if len(parts) != 3 or parts[2] not in ("train", "query", "gallery"):
            raise ValueError(f"inshop: {path!r} line {k}: expected 'name item status', got {ln!r}")
        rows.append((parts[0], parts[1], parts[2]))
    if rows and not os.path.exists(os.path.join(r, rows[0][0])):
        alt = os.path.join(r, "Img")
        if os.path.exists(os.path.join(alt, rows[0][0])):
            base = alt
    if split == "train":
        wanted: tuple[str, ...] = ("train",)
    elif split in ("query", "gallery"):
        wanted = (split,)
    else:
        wanted = ("query", "gallery")
    test_items = sorted({it for _n, it, st in rows if st != "train"})
    train_items = sorted({it for _n, it, st in rows if st == "train"})
    items = train_items if split == "train" else test_items
    if split in ("calibration", "evaluation"):
        items = [it for it in items if half_of(it, "inshop") == split]
    code = {it: i for i, it in enumerate(items)}
    sel = [(n, it) for n, it, st in rows if st in wanted and it in code]
    if not sel:
        raise ValueError(f"inshop: split {split!r} has no samples in {path!r}")
    size = DEFAULT_PHOTO_SIZE if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"image_size must be an int >= 8 (pixels); got {image_size!r}")
    ds = FileImageDataset(
        "inshop",
        split,
        [os.path.join(base, n) for n, _ in sel],
        np.array([code[it] for _, it in sel], dtype=np.int64),
        resolve_transform(transform, "photo", split, size),
        on_error=on_error,
        verify=verify,
    )
    raw_codes = np.array([int(c) for c in ds.class_ids], dtype=np.int64)
    if split in ("query", "gallery"):
        # one coding for query and gallery: code = position in the sorted test item list
        ds.labels = raw_codes[ds.labels]
        ds.class_names = list(items)
    else:
        ds.class_names = [items[int(c)] for c in raw_codes]
    return ds
