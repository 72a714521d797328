"""CUB-200-2011 in its native layout; open-world split: classes 1-100 train, 101-200 test.

Expected under ``root`` (the extracted ``CUB_200_2011`` folder, or its parent)::

    images.txt              "<image_id> <relative path>"   e.g. "1 001.Black_footed_Albatross/x.jpg"
    image_class_labels.txt  "<image_id> <class_id 1..200>"
    classes.txt             "<class_id> <class name>"      (optional: names only)
    images/<relative path>

Train: 5,864 images / 100 classes; test: 5,924 images / 100 classes.

Example:
    >>> ds = load_cub200("test", root="/data/CUB_200_2011")  # doctest: +SKIP
"""

from __future__ import annotations

import os

from tcm.data._files import (
    ParsedSplit,
    first_classes_split,
    photo_loader,
    read_lines,
    require_file,
)

__all__ = ["load_cub200", "parse_cub200"]

SPLITS = ("train", "test", "calibration", "evaluation")


def parse_cub200(root: str, split: str) -> ParsedSplit:
    """Images of ``split`` (``"train"``: classes 1-100, ``"test"``: 101-200) under ``root``."""
    r = root
    if not os.path.isfile(os.path.join(r, "images.txt")) and os.path.isfile(
        os.path.join(r, "CUB_200_2011", "images.txt")
    ):
        r = os.path.join(r, "CUB_200_2011")
    images = {}
    for ln in read_lines(require_file(os.path.join(r, "images.txt"), "cub200")):
        img_id, rel = ln.split(maxsplit=1)
        images[img_id] = rel
    labels = {}
    for ln in read_lines(require_file(os.path.join(r, "image_class_labels.txt"), "cub200")):
        img_id, cls = ln.split()
        labels[img_id] = int(cls)
    names: dict[str, str] = {}
    cpath = os.path.join(r, "classes.txt")
    if os.path.isfile(cpath):
        for ln in read_lines(cpath):
            cid, cname = ln.split(maxsplit=1)
            names[cid] = cname
    missing = sorted(set(images) - set(labels))
    if missing:
        raise ValueError(f"cub200: image id {missing[0]!r} has no entry in image_class_labels.txt")
    name_map = {f"{int(k):03d}": v for k, v in names.items()} if names else None
    ordered = sorted(images, key=int)
    files = [(os.path.join(r, "images", images[i]), labels[i]) for i in ordered]
    return first_classes_split(files, split, 100, name_map)


load_cub200 = photo_loader(
    "cub200",
    parse_cub200,
    splits=SPLITS,
    root_hint="the CUB_200_2011 folder with images.txt",
    title="CUB-200-2011",
)
