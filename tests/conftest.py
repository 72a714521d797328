"""Shared fixtures: a tiny synthetic dataset plugged in through tcm.train's dataset seam.

``tiny_dataset(split, image_size)`` builds class prototypes + noise (train: 8 classes x 6, test:
6 classes x 6, disjoint class names). The ``tiny_data`` fixture registers it under the dataset
name ``"tiny"`` (:func:`tcm.train.datasets.register_dataset`) and ``tiny_provider`` is the same
thing as a ``datasets=`` argument of :func:`tcm.train.train`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tcm.data.base import TensorImageDataset

TINY_OVERRIDES = (
    "data.name=tiny",
    "data.image_size=16",
    "data.batch_size=8",
    "data.m_per_class=2",
    "model.embedding_dim=8",
    "loss.name=multi_similarity",
    "train.epochs=2",
    "train.steps_per_epoch=2",
    "train.progress=false",
    "train.log_every=1",
    "train.device=cpu",
    "eval.num_thresholds=11",
)


def tiny_dataset(split: str = "train", image_size: int | None = 16, augment: bool = True) -> Any:
    """Class prototypes + noise, 6 images per class, uint8; train-time noise from the global
    torch RNG (like real augmentation) when ``augment``."""
    size = image_size or 16
    n_cls, per = (8, 6) if split == "train" else (6, 6)
    off = 0 if split == "train" else 100
    g = torch.Generator().manual_seed(off + 7)
    protos = torch.rand(n_cls, 3, size, size, generator=g)
    imgs = protos.repeat_interleave(per, 0) + 0.3 * torch.rand(
        n_cls * per, 3, size, size, generator=g
    )
    imgs = (imgs.clamp(0, 1.3) / 1.3 * 255).to(torch.uint8)
    labels = np.repeat(np.arange(n_cls), per)
    tf = None
    if split == "train" and augment:
        tf = lambda im: im.float() / 255 + 0.05 * torch.rand(im.shape)  # noqa: E731
    names = [f"c{off + i}" for i in range(n_cls)]
    return TensorImageDataset("tiny", split, imgs, labels, names, transform=tf)


def tiny_provider(data: Any, split: str) -> Any:
    """A ``datasets=`` provider for :func:`tcm.train.train`."""
    if data.root is not None and not Path(data.root).exists():
        raise ValueError(f"dataset root not found: {data.root}")
    return tiny_dataset(split, data.image_size)


@pytest.fixture
def tiny_data() -> Iterator[None]:
    """Register the tiny dataset as ``data.name=tiny`` for the test's duration."""
    from tcm.train.datasets import register_dataset, unregister_dataset

    register_dataset("tiny", tiny_provider)
    try:
        yield
    finally:
        unregister_dataset("tiny")


@pytest.fixture
def tiny_cfg() -> Any:
    """``tiny_cfg(output_dir, *overrides) -> TrainingConfig`` for the tiny dataset."""
    from tcm.train.config import load_config

    def make(out: Path, *extra: str) -> Any:
        return load_config(None, [f"output_dir={out}", *TINY_OVERRIDES, *extra])

    return make


class PassGuard:
    """Makes every function through which tcm passes over pairs or neighbours (or starts an
    evaluation) raise, so a test can prove that something only *reads* count tables;
    :meth:`lifted` restores the real functions for a block (e.g. to build the input)."""

    TARGETS: tuple[tuple[str, str], ...] = (
        ("tcm.metrics.statistics", "pair_statistics"),
        ("tcm.metrics.statistics", "sweep"),
        ("tcm.metrics.statistics", "negative_quantiles"),
        ("tcm.metrics.evaluation", "pair_statistics"),
        ("tcm.metrics.evaluation", "retrieval_metrics_of"),
        ("tcm.metrics.transfer", "pair_statistics"),
        ("tcm.metrics._passes", "tail_pass"),
        ("tcm.metrics._passes", "sweep"),
        ("tcm.metrics._passes", "negative_quantiles"),
        ("tcm.metrics.retrieval", "retrieval_per_query"),
        ("tcm.metrics.retrieval", "retrieval_per_query_of"),
        ("tcm.report.run", "evaluate"),
    )

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import importlib

        self._mp = monkeypatch
        self._real = [
            (mod, name, getattr(mod, name))
            for mod, name in ((importlib.import_module(m), n) for m, n in self.TARGETS)
        ]

    def forbid(self) -> None:
        """From now on every target raises ``AssertionError`` naming itself."""
        for mod, name, _ in self._real:

            def fail(*args: Any, _what: str = f"{mod.__name__}.{name}", **kw: Any) -> Any:
                raise AssertionError(f"a pass was made: {_what}")

            self._mp.setattr(mod, name, fail)

    @contextlib.contextmanager
    def lifted(self) -> Iterator[None]:
        """The real functions inside the block, the failing ones again after it."""
        for mod, name, fn in self._real:
            self._mp.setattr(mod, name, fn)
        try:
            yield
        finally:
            self.forbid()


@pytest.fixture
def pass_guard(monkeypatch: pytest.MonkeyPatch) -> PassGuard:
    """A :class:`PassGuard`, not yet active (call ``.forbid()``)."""
    return PassGuard(monkeypatch)


@pytest.fixture
def no_passes(pass_guard: PassGuard) -> PassGuard:
    """Every pair pass, kNN pass and evaluate call fails for the whole test."""
    pass_guard.forbid()
    return pass_guard


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (its temporaries count as stale)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a running process (a concurrent writer), stopped after the test."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()
