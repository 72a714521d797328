"""One optimisation step on the global batch: forward, divergence check, backward, update.

The loss is computed on the *global* batch (all ranks' embeddings gathered; cosine
similarities of L2-normalised embeddings inside every loss). :class:`TrainStep` holds the model,
loss, optimiser, LR scheduler and gradient scaler and performs exactly one step per call, so
the state after a call is always a consistent step boundary (what a checkpoint stores).

Example:
    >>> import torch
    >>> from tcm.losses import build_loss
    >>> from tcm.models import build_model
    >>> model = build_model("small_cnn", 8, image_size=16)
    >>> loss_fn = build_loss("multi_similarity")
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    >>> step = TrainStep(model, model, loss_fn, opt, sched)
    >>> loss = step(torch.rand(8, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), step=0)
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from tcm._distributed import world_size
from tcm.models import EmbeddingModel
from tcm.train.config import TrainingConfig

__all__ = [
    "TrainStep",
    "TrainingDivergedError",
    "backward_global",
    "build_optimizer",
    "global_batch_loss",
    "lr_lambda",
]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and suggests a lower LR."""


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
    same scalar (and a cross-batch memory enqueues the global batch); single process:
    ``loss_fn(net(images), labels)``. ``amp`` (an autocast context) covers the network only; the
    loss runs in float32.
    """
    from tcm import losses as tlosses

    with amp if amp is not None else nullcontext():
        emb = net(images)
    emb = emb.float()
    if world_size() > 1:
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
    world = world_size()
    torch.autograd.backward(loss * world)
    if world > 1:
        for p in loss_fn.parameters():
            if p.grad is not None:
                p.grad.div_(world)


def lr_lambda(cfg: TrainingConfig, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per step: linear warmup, then cosine / step / constant (``cfg.optim``)."""
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


def build_optimizer(
    cfg: TrainingConfig, model: EmbeddingModel, loss_fn: nn.Module
) -> torch.optim.Optimizer:
    """AdamW / SGD with parameter groups: backbone, head, loss parameters (proxies)."""
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


class TrainStep:
    """``step(images, labels, step=k) -> detached loss``: one optimiser + scheduler step.

    ``net`` is what is called (the DDP wrapper under ``torchrun``), ``model`` the bare model
    (for gradient clipping). Raises :class:`TrainingDivergedError` before touching the weights
    when the loss is NaN / inf.
    """

    def __init__(
        self,
        net: nn.Module,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler | None = None,
        *,
        amp_dtype: torch.dtype | None = None,
        grad_clip: float | None = None,
        base_lr: float = 1e-3,
    ) -> None:
        self.net = net
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
        self.amp_dtype = amp_dtype
        self.grad_clip = grad_clip
        self.base_lr = base_lr

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, *, step: int, epoch: int = 0
    ) -> torch.Tensor:
        ctx = (
            torch.autocast("cuda", dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else nullcontext()
        )
        loss = global_batch_loss(self.net, self.loss_fn, images, labels, ctx)
        value = loss.detach()
        if not bool(torch.isfinite(value)):
            lr = self.base_lr
            raise TrainingDivergedError(
                f"loss is {float(value)} at step {step + 1} (epoch {epoch + 1}); training "
                "stopped. Try a lower "
                f"learning rate, e.g. optim.lr={lr / 10:g} (now {lr:g}), or enable "
                "optim.warmup_steps / train.grad_clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        backward_global(self.scaler.scale(loss), self.loss_fn)
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value

    def current_lr(self) -> float:
        """LR of the head parameter group after the last step."""
        return float(self.scheduler.get_last_lr()[1])
