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
(:func:`tcm._io.remove_stale_temporaries`): the report's staging folders ``.tcm-report-<pid>-*``
and ``*.tmp-<pid>`` files of :func:`tcm._io.atomic_write`, each only when the process ``<pid>``
is no longer alive (a concurrent writer's temporaries are kept), and staging folders without a
pid (older tcm versions) last modified before the current run started.
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

from tcm._io import atomic_write, remove_stale_temporaries

__all__ = [
    "FIGURE_NAME",
    "STAGING_PREFIX",
    "owned_figures",
    "write_files",
]

#: Name prefix of the folder a report stages its files in (``.tcm-report-<pid>-<random>``).
STAGING_PREFIX = ".tcm-report-"
#: The names of the PNG figures a report writes (its slugs are ``[a-z0-9-]``).
FIGURE_NAME = re.compile(
    r"(?:accuracy_consistency|far_frr_spread|(?:utility|similarity|group_far)_\d{2,}_[a-z0-9-]+)"
    r"\.png"
)


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

    Every file is first written (with :func:`~tcm._io.atomic_write`, fsync'ed)
    into a staging folder inside ``out``; only then are the previous report's figures that
    this one does not write removed and the files moved in with :func:`os.replace`,
    ``index.html`` last. A failure while writing leaves ``out`` as it was. Stale temporaries
    of dead processes are removed first (:func:`tcm._io.remove_stale_temporaries`).
    """
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, staging_prefix=STAGING_PREFIX, started=started)
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
