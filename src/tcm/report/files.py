"""The report's files on disk: which files a report owns, stale temporaries, the swap into place.

A report directory holds the files of *one* report. The report **owns**:

* ``index.html`` and ``report.json`` (always rewritten);
* the PNG figures it wrote, as listed under ``"figures"`` in the ``report.json`` it wrote, and
  only names of the report's own scheme (:data:`FIGURE_NAME`: ``accuracy_consistency.png``,
  ``far_frr_spread.png``, ``utility_NN_<slug>.png``, ``similarity_NN_<slug>.png``,
  ``group_far_NN_<slug>.png``).

Rewriting a report removes the owned figures of the previous report that the new one does not
write, so the directory then holds exactly the new report's files plus whatever else the user
put there (never touched). Temporaries left by a killed process are removed too
(:func:`remove_stale_temporaries`): the report's staging folders ``.tcm-report-<pid>-*`` and
``*.tmp-<pid>`` files of :func:`tcm.train.checkpoint.atomic_write`, each only when the process
``<pid>`` is no longer alive (a concurrent writer's temporaries are kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from tcm.train.checkpoint import atomic_write

__all__ = [
    "FIGURE_NAME",
    "STAGING_PREFIX",
    "owned_figures",
    "remove_stale_temporaries",
    "write_files",
]

#: Name prefix of the folder a report stages its files in (``.tcm-report-<pid>-<random>``).
STAGING_PREFIX = ".tcm-report-"
#: The names of the PNG figures a report writes (its slugs are ``[a-z0-9-]``).
FIGURE_NAME = re.compile(
    r"(?:accuracy_consistency|far_frr_spread|(?:utility|similarity|group_far)_\d{2,}_[a-z0-9-]+)"
    r"\.png"
)
_STAGING_PID = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)-")
_TMP_PID = re.compile(r".+\.tmp-(\d+)")


def _pid_alive(pid: int) -> bool:
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


def remove_stale_temporaries(directory: str | os.PathLike[str], started: float) -> list[Path]:
    """Delete the temporaries of dead processes in ``directory`` (not recursive).

    Removed: staging folders ``.tcm-report-<pid>-*`` and files ``*.tmp-<pid>`` whose process
    ``<pid>`` is not alive, and staging folders without a pid in their name (older tcm versions
    named them ``.tcm-report-<random>``) last modified before ``started`` (a ``time.time()`` of
    the current run). Temporaries of live processes (concurrent writers, this one) are kept.

    Returns:
        The removed paths, sorted.
    """
    d = Path(directory)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    for p in sorted(d.iterdir()):
        name = p.name
        if name.startswith(STAGING_PREFIX) and p.is_dir() and not p.is_symlink():
            m = _STAGING_PID.match(name)
            stale = not _pid_alive(int(m.group(1))) if m else _mtime(p) < started
            if stale:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
            continue
        m = _TMP_PID.fullmatch(name)
        if m and p.is_file() and not p.is_symlink() and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return float("inf")


def owned_figures(directory: str | os.PathLike[str]) -> set[str]:
    """The figures of the report in ``directory``: the ``"figures"`` of its ``report.json``
    that follow :data:`FIGURE_NAME` (empty when there is no readable report.json)."""
    try:
        data = json.loads((Path(directory) / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    figures = data.get("figures") if isinstance(data, dict) else None
    if not isinstance(figures, list):
        return set()
    return {f for f in figures if isinstance(f, str) and FIGURE_NAME.fullmatch(f)}


def _writer(data: bytes) -> Callable[[IO[bytes]], object]:
    return lambda fh: fh.write(data)


def write_files(out: Path, files: dict[str, bytes], started: float) -> None:
    """Put the report's ``files`` (name -> bytes) into ``out``.

    Every file is first written (with :func:`~tcm.train.checkpoint.atomic_write`, fsync'ed)
    into a staging folder inside ``out``; only then are the previous report's figures that
    this one does not write removed and the files moved in with :func:`os.replace`,
    ``index.html`` last. A failure while writing leaves ``out`` as it was. Stale temporaries
    of dead processes are removed first (:func:`remove_stale_temporaries`).
    """
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, started)
    tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    try:
        for name, data in files.items():
            atomic_write(tmp / name, _writer(data))
        for name in sorted(owned_figures(out) - set(files)):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
        for name in sorted(files, key=lambda n: n == "index.html"):
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
