"""The training loop: class-balanced batches, base loss + TCM, selection on validation classes.

``train(cfg)`` trains an :class:`~tcm.models.EmbeddingModel` (L2-normalised embeddings, cosine
similarity, a pair accepted when ``similarity >= threshold``) on the training classes of
``cfg.data``. A seeded fraction ``data.val_classes`` of whole training classes is held out:
``best.pt`` is chosen by ``train.select_metric`` on them, and the disjoint *test* classes are
evaluated once, at the end, only to report the selected checkpoint (``metrics.json["test"]``,
``embeddings.npz``). Output files: :mod:`tcm.train.rundir`.

Components: :class:`~tcm.train.rundir.RunDir` (files, preflight, CSV log),
:class:`~tcm.train.checkpoint.TrainingState` (the checkpoint schema, hash-verified),
:class:`~tcm.train.runner.EvaluationRunner` (metrics), :class:`~tcm.train.step.TrainStep` (one
optimiser step), :mod:`tcm.train.datasets` (the data seam: ``datasets=`` / ``register_dataset``
and the validation split). :class:`Trainer` wires them together.

Faults:

* Before any data is loaded: the config is fully validated (``load_config``), the output
  directory is checked (not a file, writable), stale ``*.tmp-*`` files are removed and, with
  ``resume=True``, the checkpoint is verified and compared with the config (seed, data, model,
  loss, optimiser): a difference is an error naming each key unless ``force=True``.
* Checkpoints are written only at step boundaries: ``last.pt`` before every evaluation and,
  between evaluations, once ``train.checkpoint_interval_s`` seconds passed since it was last
  written (a run killed hard loses at most about that much work).
  The first SIGINT (Ctrl-C) or SIGTERM finishes the current step, writes ``last.pt`` and returns
  (``interrupted=True``, ``stop_signal``); a second signal stops at once *without* writing
  (the previous ``last.pt`` stays valid). ``log.csv`` is truncated to the resumed step.
* A NaN/inf loss raises :class:`TrainingDivergedError`.

Resuming restores model, loss (incl. a cross-batch memory), optimiser, schedule, step position
and RNG states (with ``data.num_workers > 0`` also each data-loader worker's, see
``Trainer._loader_start``), so on CPU a resumed run gives bit-identical weights to an
uninterrupted one, also from the middle of an epoch.

Under ``torchrun`` (env ``WORLD_SIZE > 1``) the model is wrapped in DDP (gloo on CPU, nccl on
CUDA); the loss sees every rank's embeddings via ``tcm.losses.gather_with_grad`` and is scaled by
the world size, so gradients equal the single-process gradients on the global batch.

Example:
    >>> from tcm.train import load_config, train  # doctest: +SKIP
    >>> result = train(load_config("configs/demo.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import copy
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, default_collate, get_worker_info

from tcm._distributed import is_distributed, join_process_group
from tcm._io import atomic_write, write_embeddings, write_json
from tcm.data.base import DMLDataset
from tcm.data.samplers import ClassBalancedBatchSampler
from tcm.models import EmbeddingModel, build_model, model_from_spec
from tcm.train.checkpoint import CHECKPOINT_FORMAT, TrainingState
from tcm.train.config import TrainingConfig, dump_config
from tcm.train.datasets import (
    DatasetProvider,
    SelectionSplit,
    TransformedView,
    default_provider,
    split_validation_classes,
)
from tcm.train.rundir import CsvLog, RunDir
from tcm.train.runner import EvaluationRunner, SplitEvaluation
from tcm.train.state import get_rng_state, seed_everything, set_rng_state
from tcm.train.step import TrainingDivergedError, TrainStep, build_optimizer, lr_lambda

__all__ = [
    "CHECKPOINT_FORMAT",
    "StepInfo",
    "TrainResult",
    "Trainer",
    "TrainingDivergedError",
    "config_differences",
    "load_model",
    "train",
]

#: wall clock of the time-based checkpoints (``train.checkpoint_interval_s``); tests replace it
_clock = time.monotonic

#: config keys whose change makes ``--resume`` refuse (unless forced): (section, excluded keys)
_RESUME_KEYS: dict[str, tuple[str, ...]] = {
    "seed": (),
    "data": ("root", "num_workers"),
    "model": ("pretrained",),
    "loss": (),
    "optim": (),
}


@dataclass
class StepInfo:
    """Passed to ``hooks`` after every optimiser step (a step boundary)."""

    step: int
    epoch: int
    loss: float
    lr: float


@dataclass
class TrainResult:
    """What :func:`train` returns (metrics dicts use the keys of ``compute_metrics``).

    ``best_metrics`` / ``last_metrics`` / ``history``: *validation* classes; ``test_metrics``:
    the test classes, of the selected (best) checkpoint, ``None`` when the run was interrupted.
    ``stop_signal``: ``"SIGINT"`` / ``"SIGTERM"`` when stopped by a signal (or a
    ``KeyboardInterrupt`` raised by a hook: ``"SIGINT"``); ``checkpoint_saved``: whether
    ``last.pt`` holds the stop step (``False`` after a second signal).
    """

    output_dir: Path
    steps: int
    epochs_completed: int
    interrupted: bool
    best_metrics: dict[str, float] | None
    last_metrics: dict[str, float] | None
    best_checkpoint: Path | None
    last_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    test_metrics: dict[str, float] | None = None
    selection: dict[str, Any] = field(default_factory=dict)
    stop_signal: str | None = None
    checkpoint_saved: bool = True


# ----------------------------------------------------------------------------- helpers


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def _resolve_device(cfg: TrainingConfig, local_rank: int) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but CUDA is not available; use train.device=cpu")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class _Signals:
    """SIGINT / SIGTERM: the first sets ``requested`` (checked at step boundaries); a second one
    sets ``hard`` and raises ``KeyboardInterrupt`` at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.hard = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            self.hard = True
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    @contextmanager
    def installed(self) -> Iterator[None]:
        main = threading.current_thread() is threading.main_thread()
        if main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[int(sig)] = signal.signal(sig, self._handler)
        try:
            yield
        finally:
            if main:
                for num, h in self._old.items():
                    signal.signal(num, h)


def _collate_with_rng(samples: list[Any]) -> tuple[Any, int, dict[str, Any]]:
    """``collate_fn`` of the training loader with ``data.num_workers > 0`` (runs in the worker):
    the batch, the worker's id and its RNG state *after* producing the batch, so a checkpoint
    can store where every worker's augmentation stream stands (exact mid-epoch resume)."""
    info = get_worker_info()
    return default_collate(samples), -1 if info is None else info.id, get_rng_state(cuda=False)


class _RestoreWorkerRng:
    """``worker_init_fn`` of a resumed epoch: worker ``w`` continues from ``states[w]``."""

    def __init__(self, states: Sequence[dict[str, Any]]) -> None:
        self.states = list(states)

    def __call__(self, worker_id: int) -> None:
        set_rng_state(self.states[worker_id])


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["data.batch_size: 8 -> 16", ...]``: keys that make a resume refuse (see
    ``_RESUME_KEYS``), comparing two ``TrainingConfig.model_dump(mode="json")`` mappings."""
    out: list[str] = []

    def walk(prefix: str, a: Any, b: Any, skip: tuple[str, ...]) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b)):
                if k in skip:
                    continue
                walk(f"{prefix}.{k}", a.get(k), b.get(k), ())
        elif a != b:
            out.append(f"{prefix}: {a!r} -> {b!r}")

    for section, skip in _RESUME_KEYS.items():
        walk(section, old.get(section), new.get(section), skip)
    return out


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[EmbeddingModel, TrainingState]:
    """Rebuild the model stored in a tcm checkpoint; returns ``(model in eval mode, state)``
    (``state.config``: the run's typed :class:`~tcm.train.config.TrainingConfig`).

    Raises:
        ValueError: not a tcm checkpoint, corrupt (hash mismatch), or weights that do not fit
            the stored architecture.
    """
    state = TrainingState.load(path)
    model = model_from_spec(state.model_spec)
    try:
        model.load_state_dict(state.model)
    except RuntimeError as exc:
        raise ValueError(
            f"checkpoint {path} does not fit architecture {state.model_spec}: {exc}"
        ) from exc
    return model.to(device).eval(), state


def _unwrap(m: nn.Module) -> EmbeddingModel:
    inner = m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m
    assert isinstance(inner, EmbeddingModel)
    return inner


def _destroy_process_group() -> None:
    if is_distributed():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- the trainer


@dataclass(frozen=True)
class _Parts:
    """The components of a run, built once (``Trainer._build``) from the config and the data."""

    train_ds: DMLDataset
    test_ds: DMLDataset
    selection: SelectionSplit
    val_view: TransformedView  # the validation classes, read with the test transform
    model: EmbeddingModel
    net: nn.Module  # ``model``, wrapped in DDP under torchrun
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    step_fn: TrainStep
    evaluator: EvaluationRunner
    train_idx: np.ndarray  # sample indices of the classes trained on
    sampler: ClassBalancedBatchSampler
    per_epoch: int  # optimiser steps per epoch
    total: int  # optimiser steps of the whole run


def _initial_best() -> dict[str, Any]:
    return {"value": -math.inf, "step": -1, "metrics": None}


@dataclass
class _Progress:
    """Where a run stands (everything that changes while it trains; restored on resume).

    ``step`` / ``epoch`` / ``in_epoch``: optimiser steps done and the position of the next batch;
    ``best`` / ``history`` / ``best_model_state``: model selection so far; ``rng_snapshot``: the
    RNG states at the last step boundary; ``resume_workers`` / ``worker_after`` /
    ``worker_order_ok``: data-loader worker RNG states (``Trainer._loader_start``);
    ``at_boundary``: between two steps (a checkpoint may be written); ``evaluated_at`` /
    ``saved_at``: step of the last validation, clock of the last ``last.pt``.
    """

    step: int = 0
    epoch: int = 0
    in_epoch: int = 0
    best: dict[str, Any] = field(default_factory=_initial_best)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_model_state: dict[str, Any] | None = None
    rng_snapshot: dict[str, Any] = field(default_factory=dict)
    resume_workers: list[dict[str, Any]] | None = None
    worker_after: dict[int, dict[str, Any]] = field(default_factory=dict)
    worker_order_ok: bool = True
    at_boundary: bool = True
    evaluated_at: int = -1
    saved_at: float = 0.0


class Trainer:
    """One training run (see the module docstring); :func:`train` is ``Trainer(...).run()``."""

    def __init__(
        self,
        cfg: TrainingConfig,
        *,
        resume: bool = False,
        force: bool = False,
        datasets: DatasetProvider | None = None,
        hooks: Sequence[Callable[[StepInfo], None]] = (),
        echo: Callable[[str], None] | None = print,
    ) -> None:
        self.cfg = cfg
        self.resume = resume
        self.force = force
        self.provider = datasets if datasets is not None else default_provider
        self.hooks = list(hooks)
        self.echo = echo
        self.rank, self.world, self.local_rank = _dist_env()
        self.run_dir = RunDir(cfg.output_dir)
        self.signals = _Signals()
        self.t0 = time.monotonic()
        self.device = _resolve_device(cfg, self.local_rank)
        self._parts: _Parts | None = None  # built once by run() (_build)
        self.progress = _Progress()
        # rank 0's outputs of the run, open while run() trains (_loop)
        self.csv: CsvLog | None = None
        self.tb: Any = None
        self.bar: Any = None

    @property
    def parts(self) -> _Parts:
        """The run's components (built once, when :meth:`run` starts)."""
        if self._parts is None:
            raise RuntimeError("Trainer.parts is built by Trainer.run()")
        return self._parts

    # -- small utilities

    def say(self, text: str) -> None:
        if self.echo is None or self.rank != 0:
            return
        if self.echo is print:  # keep the tqdm bar intact
            from tqdm.auto import tqdm as _tqdm

            _tqdm.write(text)
        else:
            self.echo(text)

    def _all_rng(self) -> list[dict[str, Any]]:
        if self.world == 1:
            return [self.progress.rng_snapshot]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, self.progress.rng_snapshot)
        return gathered

    # -- phases

    def _preflight(self) -> TrainingState | None:
        """Everything that can fail without data: output dir, resume checks (the device was
        resolved by ``__init__``)."""
        rd = self.run_dir
        if self.rank == 0:
            rd.check_writable()
            for p in rd.remove_stale_temporaries():
                self.say(f"removed stale temporary file {p}")
        if not self.resume:
            return None
        if not rd.last.is_file():
            raise ValueError(f"cannot resume: no checkpoint at {rd.last}")
        state = TrainingState.load(rd.last)
        diffs = config_differences(
            state.config.model_dump(mode="json"), self.cfg.model_dump(mode="json")
        )
        if diffs and not self.force:
            raise ValueError(
                f"cannot resume from {rd.last}: the config differs from the checkpoint's in "
                f"{'; '.join(diffs)}. Use the original settings, a new output_dir, or --force "
                "(force=True) to resume anyway"
            )
        if diffs:
            self.say("resuming despite config changes (--force): " + "; ".join(diffs))
        return state

    def _build_loss(self, num_classes: int) -> nn.Module:
        """The configured loss (with the TCM term when enabled), on the run's device."""
        from tcm import losses as tlosses

        cfg = self.cfg
        tcm_arg: bool | dict[str, float] = False
        if cfg.loss.tcm.enabled:
            tcm_arg = cfg.loss.tcm.model_dump(exclude={"enabled"})
        return tlosses.build_loss(
            cfg.loss.name,
            tcm=tcm_arg,
            num_classes=num_classes,
            embedding_dim=cfg.model.embedding_dim,
            memory_size=cfg.loss.memory_size,
            memory_warmup=cfg.loss.memory_warmup,
            **cfg.loss.params,
        ).to(self.device)

    def _schedule_length(self, sampler_batches: int) -> tuple[int, int]:
        """``(steps per epoch, steps of the whole run)``, capped by ``train.steps_per_epoch``
        and ``train.max_steps``."""
        t = self.cfg.train
        per_epoch = sampler_batches
        if t.steps_per_epoch is not None:
            per_epoch = min(per_epoch, t.steps_per_epoch)
        total = t.epochs * per_epoch
        if t.max_steps is not None:
            total = min(total, t.max_steps)
        return per_epoch, total

    def _build_step(
        self,
        model: EmbeddingModel,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
    ) -> tuple[nn.Module, torch.amp.GradScaler, TrainStep]:
        """``(net, scaler, step)``: mixed precision, the DDP wrapper under torchrun, one step."""
        cfg = self.cfg
        use_amp = cfg.train.amp and self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        net: nn.Module = model
        if self.world > 1:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        step_fn = TrainStep(
            net,
            model,
            loss_fn,
            optimizer,
            scheduler,
            scaler,
            amp_dtype=amp_dtype if use_amp else None,
            grad_clip=cfg.train.grad_clip,
            base_lr=cfg.optim.lr,
        )
        return net, scaler, step_fn

    def _build(self) -> _Parts:
        from tcm import data as tdata

        cfg, d = self.cfg, self.cfg.data
        self.say(f"loading dataset {d.name!r} (splits {d.train_split}/{d.test_split}) ...")
        train_ds = self.provider(d, d.train_split)
        test_ds = self.provider(d, d.test_split)
        selection = split_validation_classes(
            train_ds.labels,
            train_ds.class_names,
            d.val_classes,
            cfg.seed,
            min_train_classes=d.batch_size // d.m_per_class,
        )
        val_view = TransformedView(train_ds, selection.val_indices, test_ds.transform)
        model = build_model(
            cfg.model.backbone,
            cfg.model.embedding_dim,
            cfg.model.pretrained,
            d.image_size,
            head=cfg.model.head,
        ).to(self.device)
        loss_fn = self._build_loss(int(train_ds.num_classes))
        optimizer = build_optimizer(cfg, model, loss_fn)
        train_idx = selection.train_indices
        sampler = tdata.ClassBalancedBatchSampler(
            train_ds.labels[train_idx],
            d.batch_size,
            d.m_per_class,
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world,
        )
        per_epoch, total = self._schedule_length(len(sampler))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total))
        net, scaler, step_fn = self._build_step(model, loss_fn, optimizer, scheduler)
        evaluator = EvaluationRunner(
            cfg.eval, seed=cfg.seed, device=self.device, rank=self.rank, world_size=self.world
        )
        return _Parts(
            train_ds=train_ds,
            test_ds=test_ds,
            selection=selection,
            val_view=val_view,
            model=model,
            net=net,
            loss_fn=loss_fn,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            step_fn=step_fn,
            evaluator=evaluator,
            train_idx=train_idx,
            sampler=sampler,
            per_epoch=per_epoch,
            total=total,
        )

    def _restore(self, state: TrainingState | None) -> None:
        self.progress = _Progress()
        if state is None:
            torch.manual_seed(self.cfg.seed + 1000 * self.rank)  # per-rank augmentation stream
            self.progress.rng_snapshot = get_rng_state()
            return
        src = self.run_dir.last
        try:
            self.parts.model.load_state_dict(state.model)
            self.parts.loss_fn.load_state_dict(state.loss)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(
                f"cannot resume from {src}: the config's model/loss differs ({exc})"
            ) from exc
        try:
            self.parts.optimizer.load_state_dict(state.optimizer)
            self.parts.scheduler.load_state_dict(state.scheduler)
            if state.scaler:
                self.parts.scaler.load_state_dict(state.scaler)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ValueError(
                f"cannot resume from {src}: the optimiser state does not fit ({exc})"
            ) from exc
        self.progress.step, self.progress.epoch, self.progress.in_epoch = (
            state.step,
            state.epoch,
            state.in_epoch,
        )
        self.progress.best = dict(state.best) if state.best else self.progress.best
        self.progress.history = list(state.history)
        rng = state.rng[self.rank] if self.rank < len(state.rng) else state.rng[0]
        set_rng_state(rng)
        self.progress.rng_snapshot = rng
        workers = rng.get("loader_workers")
        self.progress.resume_workers = list(workers) if isinstance(workers, list) else None
        if self.run_dir.best.is_file():
            self.progress.best_model_state = TrainingState.load(self.run_dir.best).model
        self.say(
            f"resumed from {src} at step {self.progress.step} (epoch {self.progress.epoch + 1}, "
            f"batch {self.progress.in_epoch})"
        )

    def _state(self, rngs: list[dict[str, Any]]) -> TrainingState:
        return TrainingState(
            model=_unwrap(self.parts.net).state_dict(),
            model_spec=self.parts.model.spec.to_dict(),
            loss=self.parts.loss_fn.state_dict(),
            optimizer=self.parts.optimizer.state_dict(),
            scheduler=self.parts.scheduler.state_dict(),
            scaler=self.parts.scaler.state_dict() if self.parts.scaler.is_enabled() else {},
            step=self.progress.step,
            epoch=self.progress.epoch,
            in_epoch=self.progress.in_epoch,
            best=self.progress.best,
            history=self.progress.history,
            rng=rngs,
            config=self.cfg,
            world_size=self.world,
            selection=self._selection_record(),
        )

    def _selection_record(self) -> dict[str, Any]:
        s = self.parts.selection
        return {
            "split": "validation",
            "description": s.describe(),
            "fraction": s.fraction,
            "seed": s.seed,
            "class_names": list(s.class_names),
        }

    def _save_last(self) -> None:
        """Write ``last.pt`` for the current step boundary (collective under DDP)."""
        rngs = self._all_rng()
        if self.rank == 0:
            self._state(rngs).save(self.run_dir.last)
        self.progress.saved_at = _clock()

    def _write_metrics(self, test: dict[str, Any] | None = None) -> None:
        if self.rank != 0:
            return
        summary: dict[str, Any] = {
            "history": self.progress.history,
            "best": self.progress.best,
            "last": self.progress.history[-1]["metrics"] if self.progress.history else None,
            "steps": self.progress.step,
            "selection": self._selection_record(),
        }
        if test is not None:
            summary["test"] = test
        write_json(self.run_dir.metrics, summary)  # strict JSON: NaN -> null, inf -> "inf"

    def _validate(self) -> None:
        """Checkpoint, evaluate the validation classes, update best / history / files."""
        self._save_last()  # an evaluation failure never loses the training done so far
        ev = self.parts.evaluator(
            _unwrap(self.parts.net),
            self.parts.val_view,
            split="validation",
            class_names=self.parts.selection.class_names,
        )
        metrics = ev.metrics
        self.progress.history.append(
            {"step": self.progress.step, "epoch": self.progress.epoch, "metrics": metrics}
        )
        value = metrics[self.cfg.train.select_metric]
        improved = (
            value >= self.progress.best["value"]
        )  # ties: the later (longer-trained) checkpoint
        if improved:
            self.progress.best = {"value": value, "step": self.progress.step, "metrics": metrics}
            self.progress.best_model_state = copy.deepcopy(_unwrap(self.parts.net).state_dict())
        rngs = self._all_rng()
        self.progress.evaluated_at = self.progress.step
        self.progress.saved_at = _clock()  # last.pt is (re)written below, on rank 0
        if self.rank != 0:
            return
        self.say(
            f"validation step {self.progress.step}: R@1 {metrics['recall_at_1']:.4f}"
            f"  MAP@R {metrics['map_at_r']:.4f}  OPIS {metrics['opis']:.4g}"
            f"  eps-OPIS(5%) {metrics.get('epsilon_opis_0.05', float('nan')):.4g}"
            + ("  (best)" if improved else "")
        )
        assert self.csv is not None
        self.csv.row(
            kind="eval",
            split="validation",
            step=self.progress.step,
            epoch=self.progress.epoch,
            elapsed_s=round(time.monotonic() - self.t0, 2),
            **metrics,
        )
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"val/{k}", v, self.progress.step)
        state = self._state(rngs)
        if improved:
            state.save(self.run_dir.best)
        state.save(self.run_dir.last)
        self._write_metrics()

    def _report_test(self) -> SplitEvaluation | None:
        """Evaluate the selected checkpoint on the test classes (reporting only)."""
        if self.progress.best_model_state is None:
            return None
        model = model_from_spec(self.parts.model.spec.to_dict()).to(self.device)
        model.load_state_dict(self.progress.best_model_state)
        ev = self.parts.evaluator(
            model, self.parts.test_ds, split="test", class_names=self.parts.test_ds.class_names
        )
        test = {
            "step": self.progress.best["step"],
            "split": self.cfg.data.test_split,
            "metrics": ev.metrics,
            "note": "test classes, evaluated once for the checkpoint selected on validation",
        }
        if self.rank == 0:
            # with per-sample ids and domains (font family, vendor, ...): `tcm evaluate RUN
            # --groups`; only those of the evaluated rows (eval.max_classes keeps a subset)
            write_embeddings(
                self.run_dir.embeddings,
                ev.embeddings,
                ev.labels,
                ev.class_names,
                ids=ev.rows_of(getattr(self.parts.test_ds, "ids", None)),
                groups=ev.rows_of(getattr(self.parts.test_ds, "domains", None)),
            )
            assert self.csv is not None
            self.csv.row(
                kind="test",
                split=self.cfg.data.test_split,
                step=self.progress.best["step"],
                elapsed_s=round(time.monotonic() - self.t0, 2),
                **ev.metrics,
            )
            self._write_metrics(test)
            m = ev.metrics
            best_step = self.progress.best["step"]
            self.say(
                f"test classes, checkpoint of step {best_step} (selected on validation):"
                f" R@1 {m['recall_at_1']:.4f}  MAP@R {m['map_at_r']:.4f}  OPIS {m['opis']:.4g}"
            )
        return ev

    def _eval_due(self) -> bool:
        t = self.cfg.train
        return self.progress.in_epoch == 0 and (
            self.progress.epoch % t.eval_every == 0 or self.progress.epoch == t.epochs
        )

    def _boundary_flags(self) -> tuple[str | None, bool]:
        """``(stop signal or None, time-based checkpoint due)``, agreed by all ranks (one
        collective: a rank's signal or clock decides for all)."""
        code = {None: 0, "SIGINT": 1, "SIGTERM": 2}[self.signals.requested]
        interval = self.cfg.train.checkpoint_interval_s
        due = bool(interval) and _clock() - self.progress.saved_at >= float(interval or 0)
        flags = torch.tensor([float(code), float(due)])
        if self.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return {0: None, 1: "SIGINT", 2: "SIGTERM"}[int(flags[0].item())], bool(flags[1].item())

    def _check_stop(self) -> str | None:
        return self._boundary_flags()[0]

    # -- data-loader workers: where each worker's RNG stream stands (exact mid-epoch resume)
    #
    # A map-style DataLoader hands batch j (counted from the loader's first batch) to worker
    # j mod W and yields batches in order; each worker's RNG advances only by the batches it
    # produces. The state of worker j mod W *before* batch j is therefore its state *after*
    # batch j - W. A resumed epoch at batch k restarts the loader at k0 = k - k mod W, so every
    # worker keeps its original id: worker w starts from the stored state after batch
    # k0 - W + w (fresh, i.e. torch's own seeding, when k0 == 0), and the k - k0 < W batches
    # already trained on are produced again (same RNG draws) and skipped.

    def _loader_start(self, workers: int) -> tuple[int, _RestoreWorkerRng | None]:
        """The first batch of this epoch's loader and its ``worker_init_fn``."""
        k = self.progress.in_epoch
        stored, self.progress.resume_workers = self.progress.resume_workers, None
        self.progress.worker_after = {}
        if workers == 0 or k == 0:
            return k, None
        k0 = k - k % workers
        if k0 == 0:
            return 0, None
        if stored is not None and len(stored) == workers:
            self.progress.worker_after = {k0 - workers + w: st for w, st in enumerate(stored)}
            return k0, _RestoreWorkerRng(stored)
        self.say(
            f"note: {self.run_dir.last} holds no RNG states for {workers} data-loader workers "
            "(another data.num_workers, or an older tcm); the augmentation of the rest of this "
            "epoch differs from an uninterrupted run"
        )
        return k, None

    def _worker_states(self, workers: int) -> list[dict[str, Any]] | None:
        """States the workers of a loader restarted at ``in_epoch`` need (see above); ``[]``:
        torch's own seeding; ``None``: unknown (the resume is then not exact)."""
        k = self.progress.in_epoch
        k0 = k - k % workers
        if k0 == 0:
            return []
        for j in [j for j in self.progress.worker_after if j < k0 - workers]:
            del self.progress.worker_after[j]  # never needed again: in_epoch only grows
        need = [k0 - workers + w for w in range(workers)]
        if not self.progress.worker_order_ok or any(
            j not in self.progress.worker_after for j in need
        ):
            return None
        return [self.progress.worker_after[j] for j in need]

    def _log_step(self, value: torch.Tensor) -> float:
        lv = float(value)
        lr = self.parts.step_fn.current_lr()
        cfg = self.cfg
        if self.rank == 0 and (
            self.progress.step % cfg.train.log_every == 0 or self.progress.step == self.parts.total
        ):
            raw = getattr(self.parts.loss_fn, "last_terms", {}) or {}
            terms = {k: float(v) for k, v in raw.items()}  # one host sync, only when logging
            assert self.csv is not None
            self.csv.row(
                kind="train",
                step=self.progress.step,
                epoch=self.progress.epoch,
                loss=lv,
                lr=lr,
                base=terms.get("base"),
                tcm=terms.get("tcm"),
                elapsed_s=round(time.monotonic() - self.t0, 2),
            )
            self.bar.set_postfix(loss=f"{lv:.4f}")
            if self.tb is not None:
                self.tb.add_scalar("train/loss", lv, self.progress.step)
                self.tb.add_scalar("train/lr", lr, self.progress.step)
                for k in ("base", "tcm"):
                    if k in terms:
                        self.tb.add_scalar(f"train/{k}", terms[k], self.progress.step)
        return lr

    def _epoch_loader(self, workers: int) -> tuple[DataLoader[Any], int]:
        """The loader of the current epoch's remaining batches and the index in the epoch of
        its first batch (see ``_loader_start``)."""
        cfg = self.cfg
        self.parts.sampler.set_epoch(self.progress.epoch)
        batches = [
            self.parts.train_idx[b].tolist()
            for b in list(self.parts.sampler)[: self.parts.per_epoch]
        ]
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + self.progress.epoch)
        start, init_fn = self._loader_start(workers)
        extra: dict[str, Any] = {}
        if workers:
            extra = {"collate_fn": _collate_with_rng, "worker_init_fn": init_fn}
        loader = DataLoader(
            self.parts.train_ds,
            batch_sampler=batches[start:],
            num_workers=workers,
            generator=gen,
            pin_memory=self.device.type == "cuda",
            **extra,
        )
        return loader, start

    def _evaluate_or_checkpoint(self, save_due: bool) -> str | None:
        """After a step: validate when due, else write ``last.pt`` when the time-based
        checkpoint (``train.checkpoint_interval_s``) is due; then the agreed stop signal, or
        ``None`` when neither was due or no signal came."""
        if self._eval_due():
            self._validate()
        elif save_due and self.progress.step < self.parts.total:
            self._save_last()
        else:
            return None
        return self._check_stop()

    def _epochs(self) -> str | None:
        """Run the remaining steps; returns the stop signal's name or ``None`` when done."""
        cfg = self.cfg
        if (
            self.resume
            and self.progress.step > 0
            and self.progress.evaluated_at != self.progress.step
            and self._eval_due()
        ):  # stopped after the last step of an epoch, before its evaluation
            self._validate()
        workers = cfg.data.num_workers
        while self.progress.step < self.parts.total and self.progress.epoch < cfg.train.epochs:
            loader, start = self._epoch_loader(workers)
            it = iter(loader)
            pos = start  # index in the epoch of the next batch the loader yields
            while True:
                self.progress.at_boundary = False  # fetching a batch already advances RNG streams
                try:
                    item = next(it)
                except StopIteration:
                    self.progress.at_boundary = True
                    break
                if workers:
                    (images, labels), worker_id, worker_rng = item
                    if worker_id != (pos - start) % workers:
                        self.progress.worker_order_ok = (
                            False  # not the DataLoader we know: no states
                        )
                    self.progress.worker_after[pos] = worker_rng
                    pos += 1
                    if (
                        pos <= self.progress.in_epoch
                    ):  # produced again only to advance its worker's RNG
                        self.progress.at_boundary = True
                        continue
                else:
                    images, labels = item
                images = images.to(self.device, non_blocking=True)
                labels = torch.as_tensor(labels).to(self.device)
                value = self.parts.step_fn(
                    images, labels, step=self.progress.step, epoch=self.progress.epoch
                )
                self.progress.step += 1
                self.progress.in_epoch += 1
                if self.progress.in_epoch >= self.parts.per_epoch:
                    self.progress.epoch, self.progress.in_epoch = self.progress.epoch + 1, 0
                self.progress.rng_snapshot = get_rng_state()
                if workers and self.progress.in_epoch:
                    states = self._worker_states(workers)
                    if states is not None:
                        self.progress.rng_snapshot["loader_workers"] = states
                self.progress.at_boundary = True
                self.bar.update(1)
                lr = self._log_step(value)
                for h in self.hooks:
                    h(
                        StepInfo(
                            step=self.progress.step,
                            epoch=self.progress.epoch,
                            loss=float(value),
                            lr=lr,
                        )
                    )
                stop, save_due = self._boundary_flags()
                if stop is None:
                    stop = self._evaluate_or_checkpoint(save_due)
                if stop is not None:
                    return stop
                if self.progress.step >= self.parts.total:
                    break
            if self.progress.step >= self.parts.total:
                break
        if self.progress.evaluated_at != self.progress.step:
            self._validate()
        return None

    def run(self) -> TrainResult:
        """Train; see :func:`train`."""
        cfg = self.cfg
        if self.world > 1 and not is_distributed():
            device = self.device
            # kept for the life of the process (a second train() call, e.g. `tcm demo`, reuses it);
            # timeout: $TCM_DIST_TIMEOUT or 300 s (tcm._distributed)
            if join_process_group("nccl" if device.type == "cuda" else "gloo"):
                atexit.register(_destroy_process_group)
        state = self._preflight()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        det_before = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        try:
            if cfg.train.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
                if self.device.type == "cuda":
                    torch.backends.cudnn.benchmark = False
            seed_everything(cfg.seed)
            self._parts = self._build()
            self._restore(state)
            return self._loop()
        finally:
            torch.use_deterministic_algorithms(det_before[0], warn_only=det_before[1])

    def _loop(self) -> TrainResult:
        cfg, rd = self.cfg, self.run_dir
        self.csv, self.tb = None, None
        if self.rank == 0:
            data = dump_config(cfg).encode()
            atomic_write(rd.config, lambda fh: fh.write(data))
            evals = [int(h["step"]) for h in self.progress.history]
            self.csv = CsvLog(rd.log, self.progress.step if self.resume else None, evals)
            if cfg.train.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(
                    str(rd.tensorboard), purge_step=self.progress.step if self.resume else None
                )
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=self.parts.total,
            initial=self.progress.step,
            disable=not (cfg.train.progress and self.rank == 0),
            unit="step",
            desc="train",
        )
        self.progress.evaluated_at = (
            self.progress.history[-1]["step"] if self.progress.history else -1
        )
        self.progress.saved_at = _clock()
        self.parts.net.train()
        stop: str | None = None
        saved = True
        test: SplitEvaluation | None = None
        try:
            with self.signals.installed():
                try:
                    stop = self._epochs()
                    if stop is None:
                        test = self._report_test()
                except KeyboardInterrupt:
                    stop = "SIGINT" if self.signals.requested is None else self.signals.requested
                    if self.signals.hard or not self.progress.at_boundary:
                        saved = False
                        self.say(
                            f"\ninterrupted again during step {self.progress.step + 1}: exiting "
                            f"without writing a checkpoint ({rd.last} is unchanged)"
                        )
                if stop is not None and saved:
                    try:
                        self._save_last()
                    except KeyboardInterrupt:  # a second signal while saving: atomic, no file
                        saved = False
                        self.say(f"\ninterrupted while saving: {rd.last} is unchanged")
                    else:
                        self.say(
                            f"\n{stop}: stopped at step {self.progress.step}; saved {rd.last} "
                            "(continue with --resume)"
                        )
        finally:
            self.bar.close()
            if self.csv is not None:
                self.csv.close()
            if self.tb is not None:
                self.tb.close()
        return TrainResult(
            output_dir=rd.root,
            steps=self.progress.step,
            epochs_completed=self.progress.epoch,
            interrupted=stop is not None,
            best_metrics=self.progress.best.get("metrics"),
            last_metrics=self.progress.history[-1]["metrics"] if self.progress.history else None,
            best_checkpoint=rd.best if rd.best.is_file() else None,
            last_checkpoint=rd.last,
            history=self.progress.history,
            test_metrics=None if test is None else test.metrics,
            selection=self._selection_record(),
            stop_signal=stop,
            checkpoint_saved=saved,
        )


def train(
    cfg: TrainingConfig,
    *,
    resume: bool = False,
    force: bool = False,
    datasets: DatasetProvider | None = None,
    hooks: Sequence[Callable[[StepInfo], None]] = (),
    echo: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train according to ``cfg`` (see the module docstring). Returns a :class:`TrainResult`.

    Args:
        resume: continue from ``output_dir/last.pt``.
        force: resume even when seed / data / model / loss / optimiser settings changed.
        datasets: a provider ``(data_config, split) -> DMLDataset`` (default:
            :func:`tcm.train.datasets.default_provider`).
        hooks: called with a :class:`StepInfo` after every step; a ``KeyboardInterrupt``
            raised by a hook stops like a first Ctrl-C (checkpoint written).
        echo: progress messages (``None``: silent).

    Raises:
        ValueError: bad configuration, output directory, data or checkpoint; resume refused.
        TrainingDivergedError: NaN/inf loss (message names the step, suggests a lower LR).
    """
    return Trainer(cfg, resume=resume, force=force, datasets=datasets, hooks=hooks, echo=echo).run()
