"""The bottom I/O floor: atomic writes, stale temporaries, strict JSON, the embeddings file writer.

Every module of tcm that writes a file goes through this one (it imports only the standard
library and NumPy (torch only inside :func:`safe_torch_load`), never another tcm module, so every
layer may use it: it is the bottom layer):

* :func:`atomic_write` writes to ``<name>.tmp-<pid>`` next to the target, flushes and fsyncs,
  then moves it over the target with :func:`os.replace` (atomic on POSIX and Windows): a crash,
  kill or full disk leaves the previous file intact; the temporary file is removed on error.
* :func:`remove_stale_temporaries` deletes what a *killed* process left behind (its
  ``*.tmp-<pid>`` files and, for the report, its staging folders), only when that process is no
  longer alive: a concurrent writer's temporaries are never touched.
* :func:`json_value` is the one JSON value convention of tcm's files: NaN -> ``null``,
  ``+inf`` / ``-inf`` -> ``"inf"`` / ``"-inf"``; :func:`json_bytes` / :func:`write_json`
  serialise strictly (``allow_nan=False``: a strict parser accepts every file).
* :func:`file_sha256` hashes a file's bytes (the files a JSON record or contract names).
* :func:`safe_torch_load` reads a torch file without running code (``weights_only=True``).
* :func:`write_embeddings` writes an embeddings file (``tcm embed``, a training run's
  ``embeddings.npz``) in one go; :mod:`tcm.data.embedding_file` reads it.

Example:
    >>> import tempfile, json
    >>> d = Path(tempfile.mkdtemp())
    >>> p = write_json(d / "m.json", {"opis": float("nan"), "far": np.array([0.1, np.inf])})
    >>> json.loads(p.read_text())
    {'opis': None, 'far': [0.1, 'inf']}
    >>> sorted(x.name for x in d.iterdir())  # no temporary left
    ['m.json']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMBEDDING_STRING_KEYS",
    "atomic_write",
    "file_sha256",
    "json_bytes",
    "json_value",
    "pid_alive",
    "remove_stale_temporaries",
    "safe_torch_load",
    "write_embeddings",
    "write_json",
]

#: The string lists of an embeddings file: ``.npz`` str arrays, ``.safetensors`` JSON metadata.
EMBEDDING_STRING_KEYS = ("class_names", "ids", "groups")

_TMP_PID = re.compile(r".+\.tmp-(\d+)")


# ----------------------------------------------------------------------------- atomic files


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(fileobj)`` on a temporary file ``<name>.tmp-<pid>`` next to ``path``, then
    ``os.replace`` it over ``path`` (the parent folders are created).

    Raises whatever ``write`` raises (after deleting the temporary file); ``path`` is then
    untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return target


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (``True`` when it cannot be told)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    if os.name == "nt":  # no side-effect-free probe there: keep the file
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(
    directory: str | os.PathLike[str],
    *,
    staging_prefix: str | None = None,
    started: float = -math.inf,
) -> list[Path]:
    """Delete the temporaries of dead processes in ``directory`` (not recursive).

    Removed: files ``*.tmp-<pid>`` (left by :func:`atomic_write` in a killed process) whose
    process ``<pid>`` is not alive and, with ``staging_prefix``, folders
    ``<staging_prefix><pid>-*`` of dead processes plus folders ``<staging_prefix>*`` without a
    pid in their name (older tcm versions) last modified before ``started`` (a ``time.time()``
    of the current run). Temporaries of live processes (concurrent writers, this one) are kept.

    Returns:
        The removed paths, sorted.
    """
    d = Path(directory)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    staging = None if staging_prefix is None else re.compile(re.escape(staging_prefix) + r"(\d+)-")
    for p in sorted(d.iterdir()):
        name = p.name
        if staging is not None and name.startswith(str(staging_prefix)):
            if p.is_dir() and not p.is_symlink():
                m = staging.match(name)
                stale = not pid_alive(int(m.group(1))) if m else _mtime(p) < started
                if stale:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
                continue
        m = _TMP_PID.fullmatch(name)
        if m and p.is_file() and not p.is_symlink() and not pid_alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return math.inf


# ----------------------------------------------------------------------------- torch files


def safe_torch_load(
    source: str | Path | IO[bytes],
    map_location: str | torch.device = "cpu",
    *,
    unsafe: str,
    unreadable: str,
) -> Any:
    """``torch.load(source, weights_only=True)`` with one-line errors (torch is imported here,
    on first use).

    A file that holds Python objects other than tensors, numbers, strings, lists and dicts
    (a global that unpickling would have to import) is refused as ``"<unsafe> holds Python
    objects that tcm does not load for safety (<global>) ..."``; any other failure is
    ``"<unreadable>: <first line of torch's message>"``. torch's own advice (how to load the file
    anyway) is never repeated: tcm never runs code from a file it reads.

    Raises:
        ValueError: as described.
    """
    import torch

    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL (\S+)", text)
        if found is None:  # not a pickle at all, or a pickle opcode torch refuses
            detail = text.split("WeightsUnpickler error:", 1)[-1]
            raise ValueError(f"{unreadable}: {_first_line(detail, exc)}") from None
        raise ValueError(
            f"{unsafe} holds Python objects that tcm does not load for safety "
            f"({found.group(1)}); only tensors, numbers, strings, lists and dicts are read"
        ) from None
    except Exception as exc:
        raise ValueError(f"{unreadable}: {_first_line(str(exc), exc)}") from exc


def _first_line(text: str, exc: BaseException) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else f"{type(exc).__name__} (empty or truncated file?)"


# ----------------------------------------------------------------------------- JSON


def json_value(x: Any) -> Any:
    """``x`` as strict JSON values, the one convention of tcm's JSON files: NaN -> ``None``
    (``null``), ``+inf`` / ``-inf`` -> the strings ``"inf"`` / ``"-inf"``, NumPy arrays and
    tuples -> lists, NumPy scalars -> Python scalars, paths -> strings, mapping keys -> strings;
    nested dicts / lists are converted recursively, anything else is returned unchanged.

    ``json.dumps(json_value(x), allow_nan=False)`` then never writes the non-standard
    ``NaN`` / ``Infinity`` tokens (a strict parser accepts the file).

    Example:
        >>> json_value({"a": np.array([1.0, np.nan, np.inf]), "b": -math.inf, "c": (1, 2)})
        {'a': [1.0, None, 'inf'], 'b': '-inf', 'c': [1, 2]}
    """
    if isinstance(x, dict):
        return {str(k): json_value(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return [json_value(v) for v in x.tolist()]
    if isinstance(x, list | tuple):
        return [json_value(v) for v in x]
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
    return x


def json_bytes(obj: Any, *, indent: int = 2, sort_keys: bool = False) -> bytes:
    """``obj`` as strict JSON bytes (:func:`json_value`, then ``allow_nan=False``), no trailing
    newline."""
    text = json.dumps(json_value(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
    return text.encode()


def write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int = 2, sort_keys: bool = False
) -> Path:
    """Atomically write ``obj`` as strict JSON (:func:`json_bytes`) to ``path``."""
    data = json_bytes(obj, indent=indent, sort_keys=sort_keys)
    return atomic_write(path, lambda fh: fh.write(data))


# ----------------------------------------------------------------------------- embeddings file


def write_embeddings(
    path: str | os.PathLike[str],
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    ids: Sequence[str] | None = None,
    groups: Sequence[str] | np.ndarray | None = None,
) -> Path:
    """Atomically write an embeddings file in one go (layout in :mod:`tcm.data.embedding_file`).

    ``embeddings`` ``(N, D)`` are stored as float32, ``labels`` ``(N,)`` as int64,
    ``class_names`` (``class_names[labels]`` names each row; empty when ``None``) and, when
    given, ``ids`` / ``groups`` ``(N,)`` as strings. ``.npz`` holds them all as arrays; with the
    suffix ``.safetensors`` the two numeric arrays are tensors and the string lists JSON in the
    metadata.

    Raises:
        ValueError: ``ids`` or ``groups`` has a length other than the number of embeddings
            (nothing is written).
    """
    p = Path(path)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    lab = np.ascontiguousarray(labels, dtype=np.int64)
    names = [str(s) for s in class_names] if class_names is not None else []
    strings: dict[str, list[str]] = {"class_names": names}
    if ids is not None:
        strings["ids"] = [str(s) for s in ids]
    if groups is not None:
        strings["groups"] = [str(s) for s in np.asarray(groups, dtype=object).tolist()]
    n = int(emb.shape[0]) if emb.ndim else -1
    for key in ("ids", "groups"):
        if key in strings and len(strings[key]) != n:
            raise ValueError(
                f"{p}: {key!r} has length {len(strings[key])} but there are {n} embeddings"
            )
    if p.suffix == ".safetensors":
        from safetensors.numpy import save

        blob = save(
            {"embeddings": emb, "labels": lab},
            metadata={k: json.dumps(v) for k, v in strings.items()},
        )
        return atomic_write(p, lambda fh: fh.write(blob))
    arrays: dict[str, Any] = {"embeddings": emb, "labels": lab}
    arrays.update({k: np.asarray(v, dtype=str) for k, v in strings.items()})
    return atomic_write(p, lambda fh: np.savez(fh, **arrays))
