"""Generic loaders for users' own data: ImageFolder-style trees and CSV lists.

``folder``: ``root/<class name>/<image>`` (extensions .jpg .jpeg .png .bmp .gif .webp .tif
.tiff, case-insensitive, searched recursively below each class folder). If ``root/train`` and
``root/test`` exist, they are used as the splits (their class sets must be disjoint: open world);
otherwise the classes are split by a stable hash of the class name: a class is ``test`` when
``sha256("tcm-folder:" + name)`` maps below ``test_fraction`` (default 0.5). ``split="all"``
returns every class.

``csv``: a CSV file with a header naming the columns ``path,label[,split][,domain]``; paths are
relative to the CSV's folder (or absolute). With a ``split`` column its values select the rows
(``train`` / ``test`` / any other value); without it the classes are split by hash as above.

Domains (``ds.domains``, the data distribution of each sample, e.g. camera or site): the CSV's
optional ``domain`` column; for ``folder``, ``domain_level=k`` takes the ``k``-th directory below
each class folder (``root/<class>/<domain>/<image>`` for ``k = 1``); images that sit less deep
are an error naming the file.

Example:
    >>> ds = load_folder("train", root="/data/my_products")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings

from tcm.data._files import ParsedSplit, read_photo_split, require_file
from tcm.data.base import FileImageDataset, check_on_error

__all__ = ["IMAGE_EXTENSIONS", "load_csv", "load_folder", "parse_csv", "parse_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FOLDER_SPLITS = ("train", "test", "calibration", "evaluation", "all")
CSV_SPLITS = ("train", "test", "calibration", "evaluation", "all")


def _is_test_class(name: str, salt: str, test_fraction: float) -> bool:
    digest = hashlib.sha256(f"{salt}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}")


def _hash_split(name: str, split: str, ids: list[str], test_fraction: float) -> list[int]:
    if split == "all":
        return list(range(len(ids)))
    base = "train" if split == "train" else "test"
    return [
        i
        for i, c in enumerate(ids)
        if _is_test_class(c, f"tcm-{name}", test_fraction) == (base == "test")
    ]


def _scan(
    directory: str, domain_level: int | None = None
) -> tuple[list[str], list[str], list[str]]:
    """``(paths, class ids, domains)`` of the images below ``directory/<class>/``; the domain is
    the ``domain_level``-th directory below the class folder ("" when not asked for)."""
    paths, ids, domains = [], [], []
    for cls in sorted(os.listdir(directory)):
        cdir = os.path.join(directory, cls)
        if not os.path.isdir(cdir):
            continue
        for dirpath, dirs, files in os.walk(cdir):
            dirs.sort()
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    path = os.path.join(dirpath, f)
                    paths.append(path)
                    ids.append(cls)
                    domains.append(_domain(path, cdir, domain_level))
    return paths, ids, domains


def _domain(path: str, class_dir: str, level: int | None) -> str:
    if level is None:
        return ""
    parts = os.path.relpath(path, class_dir).split(os.sep)  # [..., file]
    if len(parts) <= level:
        raise ValueError(
            f"folder: {path} is not {level} folder(s) below its class folder "
            f"(domain_level={level} expects <class>/{'<...>/' * (level - 1)}<domain>/<image>)"
        )
    return parts[level - 1]


def _check_domain_level(level: int | None) -> None:
    if level is not None and (isinstance(level, bool) or not isinstance(level, int) or level < 1):
        raise ValueError(f"folder: domain_level must be an integer >= 1 or None; got {level!r}")


def parse_folder(
    root: str, split: str, test_fraction: float = 0.5, domain_level: int | None = None
) -> ParsedSplit:
    """Images of ``split`` (train / test / all) of an ImageFolder-style tree (see module doc)."""
    _check_domain_level(domain_level)
    tr, te = os.path.join(root, "train"), os.path.join(root, "test")
    if os.path.isdir(tr) and os.path.isdir(te):
        ptr, itr, dtr = _scan(tr, domain_level)
        pte, ite, dte = _scan(te, domain_level)
        overlap = sorted(set(itr) & set(ite))
        if overlap:
            raise ValueError(
                f"folder: classes appear in both train/ and test/ (not open-world): {overlap[:5]}"
            )
        if split == "all":
            paths, ids, doms = ptr + pte, itr + ite, dtr + dte
        elif split == "train":
            paths, ids, doms = ptr, itr, dtr
        else:
            paths, ids, doms = pte, ite, dte
    else:
        paths, ids, doms = _scan(root, domain_level)
        keep = _hash_split("folder", split, ids, test_fraction)
        paths, ids, doms = [paths[i] for i in keep], [ids[i] for i in keep], [doms[i] for i in keep]
    if not paths:
        raise ValueError(
            f"folder: no images with extensions {IMAGE_EXTENSIONS} for split {split!r}"
        )
    return ParsedSplit(paths, ids, domains=doms if domain_level is not None else None)


def load_folder(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    transform: object = "default",
    *,
    on_error: str = "raise",
    verify: bool = False,
    test_fraction: float = 0.5,
    domain_level: int | None = None,
) -> FileImageDataset:
    """Load an ImageFolder-style tree (see module doc; ``domain_level``: per-sample domains)."""
    check_on_error(on_error)
    _check_fraction(test_fraction)
    _check_domain_level(domain_level)
    if split not in FOLDER_SPLITS:
        raise ValueError(
            f"folder: split must be train, test, calibration, evaluation or all; got {split!r}"
        )
    return read_photo_split(
        "folder",
        split,
        root,
        lambda r, s: parse_folder(r, s, test_fraction, domain_level),
        splits=FOLDER_SPLITS,
        root_hint="a folder of class sub-folders",
        image_size=image_size,
        transform=transform,
        on_error=on_error,
        verify=verify,
    )


def parse_csv(csv_path: str, split: str, test_fraction: float = 0.5) -> ParsedSplit:
    """Rows of ``split`` of a ``path,label[,split]`` CSV file (see module doc)."""
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "path" not in fields or "label" not in fields:
            raise ValueError(
                f"csv: {csv_path!r} needs a header with columns path,label[,split][,domain]; "
                f"got {fields}"
            )
        rows = [
            {k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader
        ]
    paths, ids, splits, doms = [], [], [], []
    for k, row in enumerate(rows, start=2):
        if not row.get("path") or not row.get("label"):
            raise ValueError(f"csv: {csv_path!r} line {k}: empty path or label")
        if "domain" in fields and not row.get("domain"):
            raise ValueError(f"csv: {csv_path!r} line {k}: empty domain")
        p = row["path"]
        paths.append(p if os.path.isabs(p) else os.path.join(base, p))
        ids.append(row["label"])
        splits.append(row.get("split", ""))
        doms.append(row.get("domain", ""))
    if "split" in fields:
        keep = [i for i, s in enumerate(splits) if s == split or split == "all"]
        tr_cls = {ids[i] for i, s in enumerate(splits) if s == "train"}
        te_cls = {ids[i] for i, s in enumerate(splits) if s == "test"}
        if tr_cls & te_cls:
            warnings.warn(
                f"csv: {len(tr_cls & te_cls)} class(es) appear in both train and test rows "
                "(not an open-world split)",
                UserWarning,
                stacklevel=5,
            )
    else:
        keep = _hash_split("csv", split, ids, test_fraction)
    if not keep:
        raise ValueError(f"csv: no rows for split {split!r} in {csv_path!r}")
    return ParsedSplit(
        [paths[i] for i in keep],
        [ids[i] for i in keep],
        domains=[doms[i] for i in keep] if "domain" in fields else None,
    )


def _csv_root(root: str | os.PathLike[str] | None) -> str:
    if root is None:
        raise ValueError("csv: pass root=<path to the .csv file>")
    return require_file(os.fspath(root), "csv")


def load_csv(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    transform: object = "default",
    *,
    on_error: str = "raise",
    verify: bool = False,
    test_fraction: float = 0.5,
) -> FileImageDataset:
    """Load a ``path,label[,split]`` CSV file; ``root`` is the CSV file path (see module doc)."""
    check_on_error(on_error)
    _check_fraction(test_fraction)
    if root is None:
        raise ValueError("csv: pass root=<path to the .csv file>")
    return read_photo_split(
        "csv",
        split,
        root,
        lambda r, s: parse_csv(r, s, test_fraction),
        splits=CSV_SPLITS if split in CSV_SPLITS else (split,),
        root_hint="the .csv file",
        image_size=image_size,
        transform=transform,
        on_error=on_error,
        verify=verify,
        resolve_root=_csv_root,
    )
