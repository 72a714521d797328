"""Stanford Cars (Cars196) in its native layout; open-world split: classes 1-98 train, 99-196 test.

Expected under ``root``::

    cars_annos.mat   MATLAB struct "annotations" with fields relative_im_path
                     ("car_ims/000001.jpg"), class (1..196), test (ignored: the DML split is by
                     class), and the cell array "class_names"
    car_ims/*.jpg

Train: 8,054 images / 98 classes; test: 8,131 images / 98 classes. Read with ``scipy.io.loadmat``.

Example:
    >>> ds = load_cars196("train", root="/data/cars196")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tcm.data._files import ParsedSplit, first_classes_split, photo_loader, require_file

__all__ = ["load_cars196", "parse_cars196"]

SPLITS = ("train", "test", "calibration", "evaluation")


def _field(ann: Any, name: str) -> list[Any]:
    try:
        col = ann[name]
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"cars196: cars_annos.mat 'annotations' lacks field {name!r}") from exc
    return [np.asarray(v).reshape(-1)[0] if np.ndim(v) else v for v in np.ravel(col)]


def parse_cars196(root: str, split: str) -> ParsedSplit:
    """Images of ``split`` (``"train"``: classes 1-98, ``"test"``: 99-196) from cars_annos.mat."""
    import scipy.io

    mat_path = require_file(os.path.join(root, "cars_annos.mat"), "cars196")
    try:
        mat = scipy.io.loadmat(mat_path, squeeze_me=True)
    except (ValueError, OSError, TypeError) as exc:
        raise ValueError(f"cars196: cannot read {mat_path!r}: {exc}") from exc
    if "annotations" not in mat:
        raise ValueError(f"cars196: {mat_path!r} has no 'annotations' variable")
    ann = mat["annotations"]
    rels = [str(p) for p in _field(ann, "relative_im_path")]
    classes = [int(c) for c in _field(ann, "class")]
    names = mat.get("class_names")
    name_map = None
    if names is not None:
        name_map = {f"{i + 1:03d}": str(n) for i, n in enumerate(np.ravel(names))}
    for rel, c in zip(rels, classes, strict=True):
        if not 1 <= c <= 196:
            raise ValueError(f"cars196: class id must be in 1..196; got {c} for {rel!r}")
    images = [(os.path.join(root, rel), c) for rel, c in zip(rels, classes, strict=True)]
    return first_classes_split(images, split, 98, name_map)


load_cars196 = photo_loader(
    "cars196",
    parse_cars196,
    splits=SPLITS,
    root_hint="the folder with cars_annos.mat and car_ims/",
    title="Cars196",
)
