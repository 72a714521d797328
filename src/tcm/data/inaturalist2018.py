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

from tcm.data._files import ParsedSplit, read_lines, read_photo_split
from tcm.data.base import FileImageDataset

__all__ = ["load_inaturalist2018", "parse_inaturalist2018"]

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


def parse_inaturalist2018(
    root: str, split: str, train_file: str = TRAIN_FILE, test_file: str = TEST_FILE
) -> ParsedSplit:
    """Images of ``split`` listed in the Smooth-AP split files; class = category folder."""
    path = _find(root, train_file if split == "train" else test_file)
    paths, ids = [], []
    for k, ln in enumerate(read_lines(path), start=1):
        rel = ln.split()[0]
        cls = os.path.basename(os.path.dirname(rel.replace("\\", "/")))
        if not cls:
            raise ValueError(
                f"inaturalist2018: {path!r} line {k}: path {rel!r} has no category folder"
            )
        paths.append(rel if os.path.isabs(rel) else os.path.join(root, rel))
        ids.append(cls)
    return ParsedSplit(paths, ids)


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
    return read_photo_split(
        "inaturalist2018",
        split,
        root,
        lambda r, s: parse_inaturalist2018(r, s, train_file, test_file),
        splits=SPLITS,
        root_hint="the folder with train_val2018/ and split files",
        image_size=image_size,
        transform=transform,
        on_error=on_error,
        verify=verify,
    )
