"""Per-sample arrays of an embeddings file (``tcm embed`` output): read them, add ids and groups.

Layout (``.npz``): ``embeddings`` ``(N, D)`` float, ``labels`` ``(N,)`` int64, ``class_names``
``(C,)`` str, and, when the dataset has them, ``ids`` ``(N,)`` str (stable sample ids) and
``groups`` ``(N,)`` str (the domain of each sample: font family, vendor, ...). ``.safetensors``
holds the numeric arrays as tensors and the string lists as JSON in the metadata
(``class_names``, ``ids``, ``groups``).

Example:
    >>> import tempfile, os, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "emb.npz")
    >>> np.savez(path, embeddings=np.eye(2, dtype=np.float32), labels=np.array([0, 1]))
    >>> _ = add_sample_arrays(path, ids=["a@x", "b@y"], groups=["x", "y"])
    >>> f = read_embedding_file(path)
    >>> f.embeddings.shape, f.ids, f.groups.tolist(), f.class_names
    ((2, 2), ['a@x', 'b@y'], ['x', 'y'], None)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbeddingFile", "add_sample_arrays", "read_embedding_file"]


@dataclass(frozen=True)
class EmbeddingFile:
    """Arrays of an embeddings file; the optional ones are None when absent.

    Attributes:
        embeddings: ``(N, D)`` as stored.
        labels: ``(N,)`` class codes, or None.
        class_names: ``C`` class names, or None.
        ids: ``N`` sample ids, or None.
        groups: ``(N,)`` str array of sample domains, or None.
        path: the file.
    """

    embeddings: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    ids: list[str] | None
    groups: np.ndarray | None
    path: Path


def _read_raw(path: Path) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    if not path.is_file():
        raise ValueError(f"embeddings file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.numpy import load_file

        try:
            arrays = dict(load_file(str(path)))
            with safe_open(str(path), framework="np") as fh:
                meta = fh.metadata() or {}
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"cannot read embeddings file {path}: {exc}") from exc
        strings: dict[str, list[str]] = {}
        for key in ("class_names", "ids", "groups"):
            if key in meta:
                try:
                    values = json.loads(meta[key])
                except ValueError:
                    values = None
                if not isinstance(values, list):
                    raise ValueError(f"{path}: metadata {key!r} is not a JSON list")
                if key == "class_names" and not all(isinstance(v, str) for v in values):
                    raise ValueError(
                        f"{path}: metadata 'class_names' is not a JSON list of strings"
                    )
                strings[key] = [str(v) for v in values]
        return arrays, strings
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read embeddings file {path}: {exc}") from exc
    strings = {
        k: [str(s) for s in arrays.pop(k).tolist()]
        for k in ("class_names", "ids", "groups")
        if k in arrays
    }
    return arrays, strings


def read_embedding_file(path: str | os.PathLike[str]) -> EmbeddingFile:
    """Read an ``.npz`` / ``.safetensors`` embeddings file (layout in the module doc).

    Raises:
        ValueError: missing or unreadable file, no ``embeddings`` array, ``labels`` /
            ``ids`` / ``groups`` whose length differs from the number of embeddings, fewer
            ``class_names`` than the labels' class codes need, or (``.safetensors``) metadata
            ``class_names`` / ``ids`` / ``groups`` that is not a JSON list (``class_names``: of
            strings).
    """
    p = Path(path)
    arrays, strings = _read_raw(p)
    if "embeddings" not in arrays:
        raise ValueError(f"{p} has no array 'embeddings' (found: {sorted(arrays)})")
    emb = np.asarray(arrays["embeddings"])
    if emb.ndim != 2:
        raise ValueError(f"{p}: 'embeddings' must be (N, D); got shape {emb.shape}")
    n = emb.shape[0]
    labels = np.asarray(arrays["labels"]) if "labels" in arrays else None
    for key, length in (
        ("labels", None if labels is None else labels.shape[0]),
        ("ids", len(strings["ids"]) if "ids" in strings else None),
        ("groups", len(strings["groups"]) if "groups" in strings else None),
    ):
        if length is not None and length != n:
            raise ValueError(f"{p}: {key!r} has length {length} but there are {n} embeddings")
    names = strings.get("class_names")
    if names and labels is not None and labels.size and np.issubdtype(labels.dtype, np.integer):
        top = int(labels.max())
        if top >= len(names):
            raise ValueError(
                f"{p}: 'class_names' has {len(names)} names but the labels use class codes up "
                f"to {top} (one name per code 0..{top} needed)"
            )
    return EmbeddingFile(
        embeddings=emb,
        labels=labels,
        class_names=strings.get("class_names") or None,
        ids=strings.get("ids"),
        groups=np.asarray(strings["groups"], dtype=str) if "groups" in strings else None,
        path=p,
    )


def add_sample_arrays(
    path: str | os.PathLike[str],
    *,
    ids: Sequence[str] | None = None,
    groups: Sequence[str] | np.ndarray | None = None,
) -> Path:
    """Atomically rewrite an embeddings file with ``ids`` and / or ``groups`` added.

    Everything already in the file is kept (``.safetensors``: tensors and metadata); ``None``
    leaves that entry as it is.

    Raises:
        ValueError: the file cannot be read, or a length differs from the number of embeddings.
    """
    from tcm.train.checkpoint import atomic_write

    p = Path(path)
    extra: dict[str, list[str]] = {}
    if ids is not None:
        extra["ids"] = [str(s) for s in ids]
    if groups is not None:
        extra["groups"] = [str(s) for s in np.asarray(groups, dtype=object).tolist()]
    if not extra:
        return p
    if p.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.numpy import load_file, save

        arrays = dict(load_file(str(p)))
        with safe_open(str(p), framework="np") as fh:
            meta: dict[str, str] = dict(fh.metadata() or {})
        n = int(arrays["embeddings"].shape[0]) if "embeddings" in arrays else -1
        _check_lengths(p, extra, n)
        meta.update({k: json.dumps(v) for k, v in extra.items()})
        blob = save(arrays, metadata=meta)
        return atomic_write(p, lambda fh: fh.write(blob))
    try:
        with np.load(p, allow_pickle=False) as z:
            data: dict[str, Any] = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read embeddings file {p}: {exc}") from exc
    n = int(data["embeddings"].shape[0]) if "embeddings" in data else -1
    _check_lengths(p, extra, n)
    data.update({k: np.asarray(v, dtype=str) for k, v in extra.items()})
    return atomic_write(p, lambda fh: np.savez(fh, **data))


def _check_lengths(p: Path, extra: dict[str, list[str]], n: int) -> None:
    for key, values in extra.items():
        if len(values) != n:
            raise ValueError(f"{p}: {key!r} has length {len(values)} but there are {n} embeddings")
