"""Read an embeddings file (``tcm embed`` output, a run's ``embeddings.npz``).

Layout (``.npz``): ``embeddings`` ``(N, D)`` float, ``labels`` ``(N,)`` int64, ``class_names``
``(C,)`` str, and, when the dataset has them, ``ids`` ``(N,)`` str (stable sample ids) and
``groups`` ``(N,)`` str (the domain of each sample: font family, vendor, ...). ``.safetensors``
holds the numeric arrays as tensors and the string lists as JSON in the metadata
(``class_names``, ``ids``, ``groups``). The one writer is :func:`tcm._io.write_embeddings` (all
arrays in one go).

Example:
    >>> import tempfile, os, numpy as np
    >>> from tcm._io import write_embeddings
    >>> path = os.path.join(tempfile.mkdtemp(), "emb.npz")
    >>> ids, groups = ["a@x", "b@y"], ["x", "y"]
    >>> _ = write_embeddings(path, np.eye(2), np.array([0, 1]), ids=ids, groups=groups)
    >>> f = read_embedding_file(path)
    >>> f.embeddings.shape, f.ids, f.groups.tolist(), f.class_names
    ((2, 2), ['a@x', 'b@y'], ['x', 'y'], None)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tcm._io import EMBEDDING_STRING_KEYS

__all__ = ["EmbeddingFile", "read_embedding_file"]


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
        for key in EMBEDDING_STRING_KEYS:
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
        k: [str(s) for s in arrays.pop(k).tolist()] for k in EMBEDDING_STRING_KEYS if k in arrays
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
