"""Joining the ``torch.distributed`` process group, with a timeout (the one place that does it),
and the one test of whether a group is on (:func:`is_distributed`, :func:`world_size`,
:func:`rank`). This bottom module imports nothing from tcm (metrics, losses, train and cli all
use it); torch is imported only inside the functions.

``tcm evaluate`` / ``tcm calibrate`` and training join the default process group when torchrun
started more than one process (``WORLD_SIZE > 1``). The group's timeout bounds every collective
(gloo honours it in ``all_reduce``, ``all_gather``, ``barrier``; with NCCL the watchdog ends the
process) and the rendezvous: a rank that is stopped or stuck makes the others fail after it
instead of after torch's default of 30 minutes. The timeout is ``--dist-timeout SECONDS``, else
the environment variable ``TCM_DIST_TIMEOUT``, else :data:`DEFAULT_DIST_TIMEOUT` (300 s).

A collective that times out raises :class:`DistributedTimeoutError` with a one-line message
naming the timeout and how to change it (:func:`collective` translates torch's error).

Example:
    >>> dist_timeout(12.5)
    12.5
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

__all__ = [
    "DEFAULT_DIST_TIMEOUT",
    "DIST_TIMEOUT_ENV",
    "DistributedTimeoutError",
    "collective",
    "dist_timeout",
    "is_distributed",
    "join_process_group",
    "rank",
    "world_size",
]

#: Seconds a rank waits for the others (rendezvous and every collective) unless told otherwise.
DEFAULT_DIST_TIMEOUT = 300.0
#: Environment variable with the timeout in seconds (``--dist-timeout`` takes precedence).
DIST_TIMEOUT_ENV = "TCM_DIST_TIMEOUT"

_joined_timeout: float | None = None  # the timeout of the group join_process_group created


class DistributedTimeoutError(TimeoutError):
    """A rank waited longer than the process group's timeout for the other ranks."""


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is available and its default process group is initialised."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks of the default process group (1 without one)."""
    import torch.distributed as dist

    return int(dist.get_world_size()) if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    import torch.distributed as dist

    return int(dist.get_rank()) if is_distributed() else 0


def dist_timeout(seconds: float | None = None) -> float:
    """The process-group timeout in seconds: ``seconds`` if given, else ``$TCM_DIST_TIMEOUT``,
    else :data:`DEFAULT_DIST_TIMEOUT`.

    Raises:
        ValueError: the value is not a finite number > 0 (the message names where it came from).
    """
    if seconds is not None:
        value, source = float(seconds), "--dist-timeout"
    else:
        raw = os.environ.get(DIST_TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_DIST_TIMEOUT
        source = DIST_TIMEOUT_ENV
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{source} must be a number of seconds > 0; got {raw!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{source} must be a number of seconds > 0; got {value:g}")
    return value


def join_process_group(backend: str | None = None, *, timeout: float | None = None) -> bool:
    """Join the default process group when torchrun started several processes.

    Does nothing without ``WORLD_SIZE > 1`` or when a group already exists. ``backend`` None
    picks NCCL (and ``cuda:LOCAL_RANK``) when CUDA is available, else gloo. ``timeout``: see
    :func:`dist_timeout` (validated here, before anything is joined).

    Returns:
        Whether this call created the group (the caller then destroys it again).
    Raises:
        ValueError: an invalid timeout.
        DistributedTimeoutError: the other ranks did not join within the timeout.
    """
    global _joined_timeout
    seconds = dist_timeout(timeout)
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    with collective("joining the process group", seconds):
        dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
    _joined_timeout = seconds
    return True


def _is_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, TimeoutError) or "timed out" in text or "timeout" in text


@contextmanager
def collective(what: str, seconds: float | None = None) -> Iterator[None]:
    """Turn torch's timeout error of the collective(s) inside into a
    :class:`DistributedTimeoutError` with one line naming ``what``, the rank, the timeout and how
    to change it; other errors pass unchanged.

    ``seconds``: the timeout to name (default: the one :func:`join_process_group` used).
    """
    try:
        yield
    except (RuntimeError, TimeoutError) as exc:
        if not _is_timeout(exc) or isinstance(exc, DistributedTimeoutError):
            raise
        limit = _joined_timeout if seconds is None else seconds
        within = f"within {limit:g} s" if limit is not None else "within the group's timeout"
        who = str(rank()) if is_distributed() else os.environ.get("RANK", "?")
        raise DistributedTimeoutError(
            f"rank {who}: {what}: no answer from the other ranks {within} (a rank is stuck, "
            f"stopped or far slower); wait longer with --dist-timeout SECONDS or "
            f"{DIST_TIMEOUT_ENV}=SECONDS"
        ) from exc
