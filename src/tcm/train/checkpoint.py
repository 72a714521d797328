"""Checkpoint files: atomic writes, a content hash verified on load, one typed training schema.

File format (``save_checkpoint``)::

    b"TCMCKPT1 " + sha256(payload) as 64 hex digits + b"\\n" + payload

where ``payload`` is the ``torch.save`` serialisation of the state mapping. :func:`load_checkpoint`
recomputes the hash before unpickling (``weights_only=True``): a flipped byte, a truncated file or a
file overwritten by something else is a :class:`ValueError` naming the file. Files without the
header (plain ``torch.save`` output, older tcm checkpoints) are still read, unverified.

Writes go to ``<name>.tmp-<pid>`` in the same directory, are flushed and fsync'ed, then moved over
the target with :func:`os.replace` (atomic on POSIX and Windows): a crash, kill or full disk leaves
the previous file intact; the temporary file is removed on error (:func:`tcm._io.atomic_write`;
``tcm train`` also removes the ``*.tmp-<pid>`` files a killed process left when it starts).

:class:`TrainingState` is the *only* description of what a training checkpoint holds
(``last.pt`` / ``best.pt``); the loop, ``load_model`` and the CLI go through it.

Example:
    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> p = save_checkpoint({"step": 3, "w": torch.zeros(2)}, d + "/last.pt")
    >>> load_checkpoint(p)["step"]
    3
    >>> blob = bytearray(p.read_bytes()); blob[-20] ^= 0xFF; _ = p.write_bytes(bytes(blob))
    >>> load_checkpoint(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: checkpoint ... is corrupt: content hash mismatch ...
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import torch

from tcm._io import atomic_write, safe_torch_load
from tcm.train.config import TrainingConfig, config_from_dict

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainingState",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "tcm-checkpoint-v1"
_MAGIC = b"TCMCKPT1 "
_HEADER_LEN = len(_MAGIC) + 64 + 1
_REQUIRED = (
    "model",
    "model_spec",
    "loss",
    "optimizer",
    "scheduler",
    "step",
    "epoch",
    "in_epoch",
    "config",
)


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Atomically write a state mapping (tensors, numbers, strings, lists, dicts) with its hash."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    payload = buf.getbuffer()
    digest = hashlib.sha256(payload).hexdigest().encode()

    def write(fh: IO[bytes]) -> None:
        fh.write(_MAGIC + digest + b"\n")
        fh.write(payload)

    return atomic_write(path, write)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying its content hash.

    Unpickling uses ``weights_only=True`` (no code runs from the file).

    Raises:
        ValueError: file missing, unreadable, truncated / corrupt (hash mismatch), or not a
            mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint not found: {p}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"checkpoint {p} is unreadable: {exc}") from exc
    payload: bytes | memoryview = data
    if data.startswith(_MAGIC):
        want = data[len(_MAGIC) : _HEADER_LEN - 1]
        payload = memoryview(data)[_HEADER_LEN:]
        got = hashlib.sha256(payload).hexdigest().encode()
        if len(data) < _HEADER_LEN or data[_HEADER_LEN - 1 : _HEADER_LEN] != b"\n" or got != want:
            raise ValueError(
                f"checkpoint {p} is corrupt: content hash mismatch (stored {want[:12].decode()}"
                f"..., computed {got[:12].decode()}...); the file was truncated or modified "
                "after it was written"
            )
    obj = safe_torch_load(
        io.BytesIO(payload),
        map_location,
        unsafe=f"checkpoint {p}",
        unreadable=f"checkpoint {p} is unreadable or corrupt",
    )
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {p} is not a mapping (got {type(obj).__name__})")
    return obj


@dataclass
class TrainingState:
    """Everything a training checkpoint (``last.pt`` / ``best.pt``) holds.

    Attributes:
        model: ``EmbeddingModel.state_dict()``; ``model_spec``: ``ModelSpec.to_dict()``.
        loss, optimizer, scheduler, scaler: state dicts (``scaler`` empty without float16 AMP).
        step: optimiser steps done; ``epoch`` / ``in_epoch``: position of the next batch.
        best: ``{"value", "step", "metrics"}`` of the best validation evaluation so far.
        history: one ``{"step", "epoch", "metrics"}`` per validation evaluation.
        rng: per-rank RNG states (torch / numpy / python / cuda) at the step boundary; with
            data-loader workers also ``loader_workers``: the states the workers of a loader
            restarted at ``in_epoch`` start from (see ``Trainer._loader_start``).
        config: the resolved :class:`~tcm.train.config.TrainingConfig` (validated on load;
            stored as its JSON-able ``model_dump(mode="json")``); ``world_size``: ranks.
        selection: ``{"split", "class_names"}`` of the validation (model-selection) classes.
    """

    model: dict[str, Any]
    model_spec: dict[str, Any]
    loss: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    step: int
    epoch: int
    in_epoch: int
    config: TrainingConfig
    scaler: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    rng: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1
    selection: dict[str, Any] = field(default_factory=dict)
    format: str = CHECKPOINT_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """The mapping written to disk (shallow: tensors are not copied; the config as its
        JSON-able dump)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["config"] = self.config.model_dump(mode="json")
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<checkpoint>") -> TrainingState:
        """Validate a loaded mapping (also the stored config). Raises ValueError naming what is
        missing or invalid."""
        if d.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{source} is not a tcm training checkpoint (format {d.get('format')!r}, "
                f"expected {CHECKPOINT_FORMAT!r})"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in _REQUIRED if n not in d)
        if missing:
            raise ValueError(f"{source} is not a complete tcm training checkpoint: no {missing}")
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("step", "epoch", "in_epoch", "world_size"):
            if k in kw:
                kw[k] = int(kw[k])
        kw["config"] = config_from_dict(kw["config"], f"stored in {source}", stored=True)
        return cls(**kw)

    def save(self, path: str | Path) -> Path:
        """Atomically write this state with its content hash (see :func:`save_checkpoint`)."""
        return save_checkpoint(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> TrainingState:
        """Load and verify a training checkpoint. Raises ValueError (corrupt / not tcm)."""
        return cls.from_dict(load_checkpoint(path, map_location), str(path))
