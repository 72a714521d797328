"""iNaturalist-2018 with the Smooth-AP open-world split (Brown et al., ECCV 2020).

Expected under ``root`` (the folder that holds ``train_val2018/``)::

    train_val2018/<super category>/<category id>/<image>.jpg
    Inat_dataset_splits/Inaturalist_train_set1.txt   one image path per line, relative to root,
    Inat_dataset_splits/Inaturalist_test_set1.txt    e.g. "train_val2018/Plantae/7477/3b60c9.jpg"

The split files are looked up, in order, as ``root/Inat_dataset_splits/<name>``,
``root/<name>``; other names can be passed with ``train_file=`` / ``test_file=`` (absolute or
relative to root). The class is the category folder (the parent directory name of each file).
Train: 325,846 images / 5,690 classes; test: 136,093 images / 2,452 classes.

Example:
    >>> ds = load_inaturalist2018("test", root="/data/inat2018")  # doctest: +SKIP
"""

from __future__ import annotations

import os

from tcm.data._files import build_file_dataset, check_split, read_lines, require_root
from tcm.data.base import FileImageDataset, check_on_error

__all__ = ["load_inaturalist2018"]

SPLITS = ("train", "test", "calibration", "evaluation")
TRAIN_FILE = "Inaturalist_train_set1.txt"
TEST_FILE = "Inaturalist_test_set1.txt"


def _find(root: str, name: str) -> str:
    cands = [name] if os.path.isabs(name) else []
    cands += [os.path.join(root, "Inat_dataset_splits", name), os.path.join(root, name)]
    for c in cands:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(f"inaturalist2018: split file {name!r} not found; looked at {cands}")


def load_inaturalist2018(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    transform: object = "default",
    *,
    on_error: str = "raise",
    verify: bool = False,
    train_file: str = TRAIN_FILE,
    test_file: str = TEST_FILE,
) -> FileImageDataset:
    """Load iNaturalist-2018 (see module doc). ``on_error``: ``"raise"`` or ``"skip"``."""
    check_split("inaturalist2018", split, SPLITS)
    check_on_error(on_error)
    r = require_root(root, "inaturalist2018", "the folder with train_val2018/ and split files")
    path = _find(r, train_file if split == "train" else test_file)
    paths, ids = [], []
    for k, ln in enumerate(read_lines(path), start=1):
        rel = ln.split()[0]
        cls = os.path.basename(os.path.dirname(rel.replace("\\", "/")))
        if not cls:
            raise ValueError(
                f"inaturalist2018: {path!r} line {k}: path {rel!r} has no category folder"
            )
        paths.append(rel if os.path.isabs(rel) else os.path.join(r, rel))
        ids.append(cls)
    return build_file_dataset(
        "inaturalist2018",
        split,
        paths,
        ids,
        image_size=image_size,
        transform=transform,
        on_error=on_error,
        verify=verify,
    )
