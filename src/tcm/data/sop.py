"""Stanford Online Products in its native layout (``Ebay_train.txt`` / ``Ebay_test.txt``).

Expected under ``root`` (the ``Stanford_Online_Products`` folder)::

    Ebay_train.txt   header "image_id class_id super_class_id path", then one image per line
    Ebay_test.txt    same columns; path relative to root, e.g. "bicycle_final/111085122871_0.JPG"
    <super class folders>/*.JPG

Train: 59,551 images / 11,318 classes; test: 60,502 images / 11,316 classes.

Example:
    >>> ds = load_sop("test", root="/data/Stanford_Online_Products")  # doctest: +SKIP
"""

from __future__ import annotations

import os

from tcm.data._files import ParsedSplit, photo_loader, read_lines, require_file

__all__ = ["load_sop", "parse_sop"]

SPLITS = ("train", "test", "calibration", "evaluation")


def parse_sop(root: str, split: str) -> ParsedSplit:
    """Images of ``split`` from ``Ebay_train.txt`` / ``Ebay_test.txt``."""
    fname = "Ebay_train.txt" if split == "train" else "Ebay_test.txt"
    path = require_file(os.path.join(root, fname), "sop")
    lines = read_lines(path)
    if not lines or not lines[0].lower().startswith("image_id"):
        raise ValueError(f"sop: {path!r} must start with the header 'image_id class_id ...'")
    paths, ids = [], []
    for k, ln in enumerate(lines[1:], start=2):
        parts = ln.split()
        if len(parts) != 4:
            raise ValueError(f"sop: {path!r} line {k}: expected 4 columns, got {ln!r}")
        paths.append(os.path.join(root, parts[3]))
        ids.append(parts[1])
    return ParsedSplit(paths, ids)


load_sop = photo_loader(
    "sop",
    parse_sop,
    splits=SPLITS,
    root_hint="the Stanford_Online_Products folder with Ebay_train.txt",
    title="SOP",
)
