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

from tcm.data._files import ParsedSplit, photo_loader, read_lines, require_file

__all__ = ["load_inshop", "parse_inshop"]

SPLITS = ("train", "test", "query", "gallery", "calibration", "evaluation")


def parse_inshop(root: str, split: str) -> ParsedSplit:
    """Images of ``split`` (train / test / query / gallery) from list_eval_partition.txt.

    Query and gallery share one coding (``shared_classes``: the sorted test item ids).
    """
    path = require_file(os.path.join(root, "list_eval_partition.txt"), "inshop")
    lines = read_lines(path)
    if len(lines) < 2 or not lines[1].lower().startswith("image_name"):
        raise ValueError(
            f"inshop: {path!r} must have a count line then the header "
            "'image_name item_id evaluation_status'"
        )
    base = root
    rows: list[tuple[str, str, str]] = []
    for k, ln in enumerate(lines[2:], start=3):
        parts = ln.split()
        if len(parts) != 3 or parts[2] not in ("train", "query", "gallery"):
            raise ValueError(f"inshop: {path!r} line {k}: expected 'name item status', got {ln!r}")
        rows.append((parts[0], parts[1], parts[2]))
    if rows and not os.path.exists(os.path.join(root, rows[0][0])):
        alt = os.path.join(root, "Img")
        if os.path.exists(os.path.join(alt, rows[0][0])):
            base = alt
    if split == "train":
        wanted: tuple[str, ...] = ("train",)
    elif split in ("query", "gallery"):
        wanted = (split,)
    else:
        wanted = ("query", "gallery")
    sel = [(n, it) for n, it, st in rows if st in wanted]
    if not sel:
        raise ValueError(f"inshop: split {split!r} has no samples in {path!r}")
    shared = None
    if split in ("query", "gallery"):
        shared = sorted({it for _n, it, st in rows if st != "train"})
    return ParsedSplit(
        [os.path.join(base, n) for n, _ in sel], [it for _, it in sel], shared_classes=shared
    )


load_inshop = photo_loader(
    "inshop",
    parse_inshop,
    splits=SPLITS,
    root_hint="the folder with list_eval_partition.txt and img/",
    title="In-Shop",
)
