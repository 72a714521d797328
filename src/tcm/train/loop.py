"""The training loop: class-balanced batches, base loss + TCM, periodic open-world evaluation.

``train(cfg)`` trains an :class:`~tcm.models.EmbeddingModel` (L2-normalised embeddings, cosine
similarity) on the training classes of ``cfg.data`` and evaluates R@1, MAP@R, OPIS and eps-OPIS on
the disjoint test classes. Files in ``cfg.output_dir``:

* ``last.pt`` / ``best.pt``: checkpoints (atomic writes; ``best`` by ``train.select_metric``),
* ``log.csv``: one row per logged step and per evaluation; ``tb/``: TensorBoard events,
* ``metrics.json``: evaluation history and the best result; ``embeddings.npz``: test embeddings of
  the best model (``embeddings``, ``labels``, ``class_names``), the input of ``tcm report``,
* ``config.yaml``: the resolved configuration.

Resuming (``resume=True``) restores model, loss, optimiser, schedule, step position and RNG
states, so on CPU with ``data.num_workers=0`` a resumed run gives bit-identical weights to an
uninterrupted one. SIGINT (Ctrl-C) finishes the current step, writes ``last.pt`` and returns
with ``interrupted=True``; a NaN/inf loss raises :class:`TrainingDivergedError`.

Under ``torchrun`` (env ``WORLD_SIZE > 1``) the model is wrapped in DDP (gloo on CPU, nccl on
CUDA); the loss sees every rank's embeddings via ``tcm.losses.gather_with_grad`` and is scaled by
the world size, so gradients equal the single-process gradients on the global batch.

Example:
    >>> from tcm.train import load_config, train  # doctest: +SKIP
    >>> result = train(load_config("configs/demo.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import csv
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from tcm.models import EmbeddingModel, build_model, model_from_spec
from tcm.train.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from tcm.train.config import TrainingConfig, config_from_dict, dump_config
from tcm.train.evaluation import compute_metrics, embed_dataset

__all__ = [
    "StepInfo",
    "TrainResult",
    "TrainingDivergedError",
    "backward_global",
    "global_batch_loss",
    "load_model",
    "save_embeddings",
    "train",
]

CHECKPOINT_FORMAT = "tcm-checkpoint-v1"
_CSV_FIELDS = [
    "kind",
    "step",
    "epoch",
    "loss",
    "base",
    "tcm",
    "lr",
    "recall_at_1",
    "map_at_r",
    "opis",
    "epsilon_opis_0.05",
    "epsilon_opis_0.1",
    "elapsed_s",
]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and suggests a lower LR."""


@dataclass
class StepInfo:
    """Passed to ``hooks`` after every optimiser step."""

    step: int
    epoch: int
    loss: float
    lr: float


@dataclass
class TrainResult:
    """What :func:`train` returns (metrics dicts use the keys of ``compute_metrics``)."""

    output_dir: Path
    steps: int
    epochs_completed: int
    interrupted: bool
    best_metrics: dict[str, float] | None
    last_metrics: dict[str, float] | None
    best_checkpoint: Path | None
    last_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)


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


def _rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]  # noqa: NPY002 - global state is saved
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds user code too
    torch.manual_seed(seed)


def _lr_lambda(cfg: TrainingConfig, total_steps: int) -> Callable[[int], float]:
    o = cfg.optim

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        if o.schedule == "step":
            return float(o.gamma ** ((step - o.warmup_steps) // o.step_size))
        span = max(1, total_steps - o.warmup_steps)
        progress = min(1.0, (step - o.warmup_steps) / span)
        cos = 0.5 * (1.0 + math.cos(math.pi * progress))
        return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cos

    return f


def _build_optimizer(
    cfg: TrainingConfig, model: EmbeddingModel, loss_fn: nn.Module
) -> torch.optim.Optimizer:
    o = cfg.optim
    groups: list[dict[str, Any]] = [
        {"params": list(model.backbone.parameters()), "lr": o.lr * o.backbone_lr_mult},
        {"params": list(model.head.parameters()), "lr": o.lr},
    ]
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "lr": o.lr * o.loss_lr_mult})
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


class _SigintFlag:
    """Turns the first SIGINT into a flag checked between steps; a second one interrupts now."""

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    @contextmanager
    def installed(self) -> Iterator[None]:
        main = threading.current_thread() is threading.main_thread()
        if main:
            self._old = signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            if main:
                signal.signal(signal.SIGINT, self._old)


class _CsvLog:
    def __init__(self, path: Path, append: bool) -> None:
        new = not (append and path.is_file())
        self._fh: IO[str] = open(path, "a" if not new else "w", newline="", encoding="utf-8")
        self._w = csv.DictWriter(self._fh, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        if new:
            self._w.writeheader()

    def row(self, **kw: Any) -> None:
        self._w.writerow({k: ("" if v is None else v) for k, v in kw.items()})
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def save_embeddings(
    path: str | Path,
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Atomically write ``embeddings`` ``(N, D)`` float32, ``labels`` ``(N,)`` int64 and
    ``class_names`` (``(C,)`` str, ``class_names[labels]`` names each row) to ``.npz`` or, when
    the suffix is ``.safetensors``, to safetensors (class names in the metadata as JSON)."""
    p = Path(path)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    lab = np.ascontiguousarray(labels, dtype=np.int64)
    names = np.asarray(list(class_names) if class_names is not None else [], dtype=str)
    if p.suffix == ".safetensors":
        from safetensors.numpy import save

        blob = save(
            {"embeddings": emb, "labels": lab},
            metadata={"class_names": json.dumps(names.tolist())},
        )
        return atomic_write(p, lambda fh: fh.write(blob))
    return atomic_write(p, lambda fh: np.savez(fh, embeddings=emb, labels=lab, class_names=names))


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[EmbeddingModel, dict[str, Any]]:
    """Rebuild the model stored in a tcm checkpoint; returns ``(model in eval mode, checkpoint)``.

    Raises:
        ValueError: not a tcm checkpoint, or weights that do not fit the stored architecture.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT or "model_spec" not in ckpt:
        raise ValueError(f"{path} is not a tcm training checkpoint (no 'model_spec')")
    model = model_from_spec(ckpt["model_spec"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(
            f"checkpoint {path} does not fit architecture {ckpt['model_spec']}: {exc}"
        ) from exc
    return model.to(device).eval(), ckpt


# ----------------------------------------------------------------------------- training


def global_batch_loss(
    net: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    amp: AbstractContextManager[Any] | None = None,
) -> torch.Tensor:
    """Loss on the *global* batch: ``loss_fn(concat_r emb_r, concat_r labels_r)``.

    Under ``torch.distributed`` the embeddings of all ranks are gathered with
    ``tcm.losses.gather_with_grad`` (the local rows keep their graph), so every rank computes the
    same scalar; single process: ``loss_fn(net(images), labels)``. ``amp`` (an autocast
    context) covers the network only; the loss runs in float32.
    """
    from tcm import losses as tlosses

    with amp if amp is not None else nullcontext():
        emb = net(images)
    emb = emb.float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        emb = tlosses.gather_with_grad(emb)
        labels = tlosses.gather_no_grad(labels)
    out: torch.Tensor = loss_fn(emb, labels)
    return out


def backward_global(loss: torch.Tensor, loss_fn: nn.Module) -> None:
    """Backward of a :func:`global_batch_loss` giving single-process gradients under DDP.

    Each rank back-propagates only through its own rows and DDP averages over ``W`` ranks, so
    the model gradient is ``(1/W) dL/dθ``: we backward ``W·L``. Parameters of the loss itself
    (e.g. proxies, not wrapped by DDP) receive the full ``dL/dp`` on every rank; the factor ``W``
    is divided out of them again.
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    torch.autograd.backward(loss * world)
    if world > 1:
        for p in loss_fn.parameters():
            if p.grad is not None:
                p.grad.div_(world)


def _unwrap(m: nn.Module) -> EmbeddingModel:
    inner = m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m
    assert isinstance(inner, EmbeddingModel)
    return inner


def train(
    cfg: TrainingConfig,
    *,
    resume: bool = False,
    hooks: Sequence[Callable[[StepInfo], None]] = (),
    echo: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train according to ``cfg`` (see the module docstring). Returns a :class:`TrainResult`.

    Raises:
        ValueError: bad configuration or data (e.g. missing data root), nothing to resume.
        TrainingDivergedError: NaN/inf loss (message names the step, suggests a lower LR).
    """
    from tcm import data as tdata
    from tcm import losses as tlosses

    rank, world, local_rank = _dist_env()
    device = _resolve_device(cfg, local_rank)
    if world > 1 and not dist.is_initialized():
        # kept for the life of the process (a second train() call, e.g. `tcm demo`, reuses it)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy_process_group)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    def say(text: str) -> None:
        if echo is None or rank != 0:
            return
        if echo is print:  # keep the tqdm bar intact
            from tqdm.auto import tqdm as _tqdm

            _tqdm.write(text)
        else:
            echo(text)

    out = Path(cfg.output_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    det_before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        if resume and not last_path.is_file():
            raise ValueError(f"cannot resume: no checkpoint at {last_path}")
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = False
        _seed_everything(cfg.seed)

        d = cfg.data
        kw = dict(d.options)
        say(f"loading dataset {d.name!r} (splits {d.train_split}/{d.test_split}) ...")
        train_ds = tdata.load(
            d.name,
            split=d.train_split,
            root=d.root,
            image_size=d.image_size,
            transform="default",
            **kw,
        )
        test_ds = tdata.load(
            d.name,
            split=d.test_split,
            root=d.root,
            image_size=d.image_size,
            transform="default",
            **kw,
        )
        model = build_model(
            cfg.model.backbone,
            cfg.model.embedding_dim,
            cfg.model.pretrained,
            d.image_size,
            head=cfg.model.head,
        ).to(device)
        tcm_arg: bool | dict[str, float] = False
        if cfg.loss.tcm.enabled:
            tcm_arg = cfg.loss.tcm.model_dump(exclude={"enabled"})
        loss_fn = tlosses.build_loss(
            cfg.loss.name,
            tcm=tcm_arg,
            num_classes=int(train_ds.num_classes),
            embedding_dim=cfg.model.embedding_dim,
            **cfg.loss.params,
        ).to(device)
        optimizer = _build_optimizer(cfg, model, loss_fn)
        sampler = tdata.ClassBalancedBatchSampler(
            train_ds.labels, d.batch_size, d.m_per_class, seed=cfg.seed, rank=rank, world_size=world
        )
        per_epoch = len(sampler)
        if cfg.train.steps_per_epoch is not None:
            per_epoch = min(per_epoch, cfg.train.steps_per_epoch)
        total = cfg.train.epochs * per_epoch
        if cfg.train.max_steps is not None:
            total = min(total, cfg.train.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total))
        use_amp = cfg.train.amp and device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        step, epoch, in_epoch = 0, 0, 0
        best: dict[str, Any] = {"value": -math.inf, "step": -1, "metrics": None}
        history: list[dict[str, Any]] = []
        if resume:
            ck = load_checkpoint(last_path)
            if ck.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"{last_path} is not a tcm training checkpoint")
            try:
                model.load_state_dict(ck["model"])
                loss_fn.load_state_dict(ck["loss"])
            except RuntimeError as exc:
                raise ValueError(
                    f"cannot resume from {last_path}: the config's model/loss differs ({exc})"
                ) from exc
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            if ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            step, epoch, in_epoch = int(ck["step"]), int(ck["epoch"]), int(ck["in_epoch"])
            best = dict(ck["best"])
            history = list(ck["history"])
            _set_rng_state(ck["rng"][rank] if rank < len(ck["rng"]) else ck["rng"][0])
            say(f"resumed from {last_path} at step {step} (epoch {epoch + 1}, batch {in_epoch})")
        else:
            torch.manual_seed(cfg.seed + 1000 * rank)  # per-rank augmentation stream
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / "config.yaml", lambda fh: fh.write(dump_config(cfg).encode()))

        net: nn.Module = model
        if world > 1:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        csv_log = _CsvLog(out / "log.csv", append=resume) if rank == 0 else None
        tb: Any = None
        if rank == 0 and cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out / "tb"), purge_step=step if resume else None)
        t0 = time.monotonic()
        sig = _SigintFlag()
        rng_snapshot = _rng_state()
        pos_snapshot = (step, epoch, in_epoch)
        interrupted = False
        last_metrics: dict[str, float] | None = history[-1]["metrics"] if history else None

        def all_rng() -> list[dict[str, Any]]:
            if world == 1:
                return [rng_snapshot]
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rng_snapshot)
            return gathered

        def write_ckpt(path: Path, rngs: list[dict[str, Any]]) -> None:
            s, e, i = pos_snapshot
            state = {
                "format": CHECKPOINT_FORMAT,
                "model": _unwrap(net).state_dict(),
                "model_spec": model.spec.to_dict(),
                "loss": loss_fn.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "step": s,
                "epoch": e,
                "in_epoch": i,
                "best": best,
                "history": history,
                "rng": rngs,
                "config": cfg.model_dump(mode="json"),
                "data": {"name": cfg.data.name, "image_size": cfg.data.image_size},
                "world_size": world,
            }
            save_checkpoint(state, path)

        def evaluate() -> dict[str, float]:
            saved = _rng_state()  # evaluation must not perturb the training RNG streams
            try:
                return _evaluate()
            finally:
                _set_rng_state(saved)

        def _evaluate() -> dict[str, float]:
            idx = None
            mc = cfg.eval.max_classes
            if mc is not None and test_ds.num_classes > mc:
                keep = np.random.default_rng(cfg.seed).choice(
                    test_ds.num_classes, mc, replace=False
                )
                idx = np.flatnonzero(np.isin(np.asarray(test_ds.labels), keep))
            emb, lab = embed_dataset(
                _unwrap(net),
                test_ds,
                batch_size=cfg.eval.batch_size,
                device=device,
                rank=rank,
                world_size=world,
                indices=idx,
            )
            metrics = compute_metrics(
                emb,
                lab,
                far_range=cfg.eval.far_range,
                num_thresholds=cfg.eval.num_thresholds,
                epsilons=cfg.eval.epsilons,
            )
            evaluate.last = (emb, lab)  # type: ignore[attr-defined]
            return metrics

        def on_eval(metrics: dict[str, float]) -> None:
            nonlocal last_metrics
            last_metrics = metrics
            history.append({"step": step, "epoch": epoch, "metrics": metrics})
            value = metrics[cfg.train.select_metric]
            improved = value > best["value"]
            if improved:
                best.update(value=value, step=step, metrics=metrics)
            rngs = all_rng()
            if rank != 0:
                return
            say(
                f"eval step {step}: R@1 {metrics['recall_at_1']:.4f}"
                f"  MAP@R {metrics['map_at_r']:.4f}"
                f"  OPIS {metrics['opis']:.4g}"
                f"  eps-OPIS(5%) {metrics.get('epsilon_opis_0.05', float('nan')):.4g}"
                + ("  (best)" if improved else "")
            )
            assert csv_log is not None
            csv_log.row(
                kind="eval",
                step=step,
                epoch=epoch,
                elapsed_s=round(time.monotonic() - t0, 2),
                **metrics,
            )
            if tb is not None:
                for k, v in metrics.items():
                    tb.add_scalar(f"eval/{k}", v, step)
            if improved:
                write_ckpt(best_path, rngs)
                emb, lab = evaluate.last  # type: ignore[attr-defined]
                save_embeddings(out / "embeddings.npz", emb, lab, list(test_ds.class_names))
            write_ckpt(last_path, rngs)
            summary = {"history": history, "best": best, "last": metrics, "steps": step}
            atomic_write(
                out / "metrics.json", lambda fh: fh.write(json.dumps(summary, indent=2).encode())
            )

        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            initial=step,
            disable=not (cfg.train.progress and rank == 0),
            unit="step",
            desc="train",
        )
        evaluated_at = history[-1]["step"] if history else -1
        net.train()
        try:
            with sig.installed():
                if (
                    resume
                    and step > 0
                    and in_epoch == 0
                    and evaluated_at != step
                    and (epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs)
                ):  # interrupted after the last step of an epoch, before its evaluation
                    on_eval(evaluate())
                    evaluated_at = step
                while step < total and epoch < cfg.train.epochs:
                    sampler.set_epoch(epoch)
                    batches = list(sampler)[:per_epoch]
                    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
                    loader = DataLoader(
                        train_ds,
                        batch_sampler=batches[in_epoch:],
                        num_workers=d.num_workers,
                        generator=gen,
                        pin_memory=device.type == "cuda",
                    )
                    for images, labels in loader:
                        images = images.to(device, non_blocking=True)
                        labels = torch.as_tensor(labels).to(device)
                        ctx = torch.autocast("cuda", dtype=amp_dtype) if use_amp else nullcontext()
                        loss = global_batch_loss(net, loss_fn, images, labels, ctx)
                        if not bool(torch.isfinite(loss.detach())):
                            lr_now = cfg.optim.lr
                            raise TrainingDivergedError(
                                f"loss is {float(loss.detach())} at step {step + 1} "
                                f"(epoch {epoch + 1}); training stopped. Try a lower learning "
                                f"rate, e.g. optim.lr={lr_now / 10:g} "
                                f"(now {lr_now:g}), or enable optim.warmup_steps / train.grad_clip"
                            )
                        optimizer.zero_grad(set_to_none=True)
                        backward_global(scaler.scale(loss), loss_fn)
                        if cfg.train.grad_clip is not None:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                        scheduler.step()
                        step += 1
                        in_epoch += 1
                        if in_epoch >= per_epoch:
                            epoch, in_epoch = epoch + 1, 0
                        rng_snapshot = _rng_state()
                        pos_snapshot = (step, epoch, in_epoch)
                        lv = float(loss.detach())
                        lr = float(scheduler.get_last_lr()[1])
                        bar.update(1)
                        if rank == 0 and (step % cfg.train.log_every == 0 or step == total):
                            terms = getattr(loss_fn, "last_terms", {}) or {}
                            base = terms.get("base")
                            tcmv = terms.get("tcm")
                            row = {
                                "kind": "train",
                                "step": step,
                                "epoch": epoch,
                                "loss": lv,
                                "lr": lr,
                                "base": None if base is None else float(base),
                                "tcm": None if tcmv is None else float(tcmv),
                                "elapsed_s": round(time.monotonic() - t0, 2),
                            }
                            assert csv_log is not None
                            csv_log.row(**row)
                            bar.set_postfix(loss=f"{lv:.4f}")
                            if tb is not None:
                                tb.add_scalar("train/loss", lv, step)
                                tb.add_scalar("train/lr", lr, step)
                                if base is not None:
                                    tb.add_scalar("train/base", float(base), step)
                                if tcmv is not None:
                                    tb.add_scalar("train/tcm", float(tcmv), step)
                        for h in hooks:
                            h(StepInfo(step=step, epoch=epoch, loss=lv, lr=lr))
                        stop = torch.tensor([1.0 if sig.hit else 0.0])
                        if world > 1:
                            dist.all_reduce(stop)
                        if bool(stop.item() > 0):
                            raise KeyboardInterrupt
                        if in_epoch == 0 and (
                            epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs
                        ):
                            on_eval(evaluate())
                            evaluated_at = step
                        if step >= total:
                            break
                    else:
                        continue
                    break
                if evaluated_at != step:
                    on_eval(evaluate())
        except KeyboardInterrupt:
            interrupted = True
            rngs = all_rng() if world > 1 else [rng_snapshot]
            if rank == 0:
                write_ckpt(last_path, rngs)
                say(
                    f"\ninterrupted at step {pos_snapshot[0]}: saved {last_path}; "
                    "continue with --resume"
                )
        finally:
            bar.close()
            if csv_log is not None:
                csv_log.close()
            if tb is not None:
                tb.close()
        return TrainResult(
            output_dir=out,
            steps=pos_snapshot[0],
            epochs_completed=pos_snapshot[1],
            interrupted=interrupted,
            best_metrics=best.get("metrics"),
            last_metrics=last_metrics,
            best_checkpoint=best_path if best_path.is_file() else None,
            last_checkpoint=last_path,
            history=history,
        )
    finally:
        torch.use_deterministic_algorithms(det_before[0], warn_only=det_before[1])


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def config_of_checkpoint(ckpt: dict[str, Any]) -> TrainingConfig:
    """The training configuration stored in a checkpoint."""
    return config_from_dict(ckpt["config"], "checkpoint")
