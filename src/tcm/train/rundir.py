"""The run directory of ``tcm train``: file names, preflight checks, the CSV log.

Files in ``output_dir``:

* ``last.pt`` / ``best.pt``: checkpoints (:class:`tcm.train.checkpoint.TrainingState`); ``best``
  is selected on the *validation* classes (ties go to the later evaluation),
* ``log.csv``: one row per logged step, per validation evaluation and the final test report,
* ``tb/``: TensorBoard events, ``config.yaml``: the resolved configuration,
* ``metrics.json``: validation history, best, ``selection`` (split + class names) and ``test``
  (test-class metrics of the selected checkpoint),
* ``embeddings.npz``: test embeddings of the selected checkpoint (input of ``tcm report``).

Example:
    >>> import tempfile
    >>> rd = RunDir(tempfile.mkdtemp())
    >>> rd.check_writable()
    >>> rd.last.name, rd.best.name
    ('last.pt', 'best.pt')
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from tcm._io import atomic_write, remove_stale_temporaries
from tcm.metrics.vocabulary import headline_keys, metric_info

__all__ = ["CSV_FIELDS", "RUN_COLUMNS", "CsvLog", "RunDir", "csv_fields"]

#: The run's own columns of ``log.csv``; the metric columns between them and ``elapsed_s`` are
#: the headline metrics of the metric table (:func:`tcm.metrics.headline_keys`).
RUN_COLUMNS: tuple[str, ...] = ("kind", "split", "step", "epoch", "loss", "base", "tcm", "lr")


def csv_fields() -> list[str]:
    """The columns of ``log.csv``: :data:`RUN_COLUMNS`, the headline metrics, ``elapsed_s``."""
    return [*RUN_COLUMNS, *headline_keys(), "elapsed_s"]


#: The columns of ``log.csv`` (:func:`csv_fields` when tcm was imported).
CSV_FIELDS = csv_fields()


class RunDir:
    """Paths of one run and the checks done before anything is loaded."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.expanduser(os.fspath(root)))
        self.last = self.root / "last.pt"
        self.best = self.root / "best.pt"
        self.log = self.root / "log.csv"
        self.metrics = self.root / "metrics.json"
        self.embeddings = self.root / "embeddings.npz"
        self.config = self.root / "config.yaml"
        self.tensorboard = self.root / "tb"

    def check_writable(self) -> None:
        """Create the directory if needed and prove it is writable (a temporary probe file).

        Raises:
            ValueError: the path (or a parent) is a file, or the directory cannot be created or
                written (permissions, read-only file system, disk full), naming the path.
        """
        r = self.root
        for parent in (r, *r.parents):
            if parent.exists() and not parent.is_dir():
                raise ValueError(f"output_dir {str(r)!r}: {str(parent)!r} is a file, not a folder")
            if parent.exists():
                break
        try:
            r.mkdir(parents=True, exist_ok=True)
            probe = r / f".write-probe.tmp-{os.getpid()}"
            with open(probe, "wb") as fh:
                fh.write(b"ok")
                fh.flush()
                os.fsync(fh.fileno())
            probe.unlink()
        except OSError as exc:
            raise ValueError(
                f"output_dir {str(r)!r} is not writable: {exc.strerror or exc}"
            ) from None

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the ``*.tmp-<pid>`` files of killed runs (only of processes no longer alive: a
        concurrent writer's files are kept; :func:`tcm._io.remove_stale_temporaries`)."""
        return remove_stale_temporaries(self.root)


class CsvLog:
    """Append-only CSV log with the columns :func:`csv_fields`.

    ``resume_step``: keep only the rows up to that step (rows written after the checkpoint by an
    interrupted run are dropped), rewriting the file atomically; ``None``: start a new file.
    ``keep_evals``: on resume, the evaluation steps still in the checkpoint's history (evaluation
    rows of other steps are dropped).
    """

    def __init__(
        self,
        path: Path,
        resume_step: int | None = None,
        keep_evals: Sequence[int] = (),
    ) -> None:
        self.path = path
        self.fields = csv_fields()
        rows: list[dict[str, str]] = []
        if resume_step is not None and path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    try:
                        step = int(row.get("step") or -1)
                    except ValueError:
                        continue
                    kind = row.get("kind")
                    if kind == "train" and step <= resume_step:
                        rows.append(row)
                    elif kind == "eval" and step in set(keep_evals):
                        rows.append(row)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields)
        w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k, "") for k in self.fields})
        data = buf.getvalue().encode()
        atomic_write(path, lambda fh: fh.write(data))
        self._fh: IO[str] = open(path, "a", newline="", encoding="utf-8")
        self._w = csv.DictWriter(self._fh, fieldnames=self.fields)

    def row(self, **kw: Any) -> None:
        """Append one row (missing columns empty) and flush.

        A metric key outside the headline set is left out of the log (``metrics.json`` and
        TensorBoard carry every metric).

        Raises:
            UnknownMetricError: a key that is neither a column nor a metric key of the table
                (:func:`tcm.metrics.metric_info`); nothing is written.
        """
        row: dict[str, Any] = {}
        for k, v in kw.items():
            if k in self.fields:
                row[k] = "" if v is None else v
            else:
                metric_info(k)
        self._w.writerow(row)
        self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()
