"""Training configuration: pydantic models (unknown keys are errors) loaded from YAML.

A config is a YAML mapping with the sections ``data``, ``model``, ``loss``, ``optim``, ``train``,
``eval`` plus ``seed`` and ``output_dir``. Command-line overrides use dotted keys, e.g.
``optim.lr=1e-4 loss.tcm.margin_neg=0.4 train.epochs=3``; values are parsed as YAML scalars
(``3`` -> int, ``1e-4`` -> float, ``true`` -> bool, ``null`` -> None, ``[1, 2]`` -> list) and
then validated against the schema, so a wrong type or unknown key names the offending key.

Example:
    >>> cfg = load_config(None, ["train.epochs=2", "optim.lr=0.01"])
    >>> cfg.train.epochs, cfg.optim.lr
    (2, 0.01)
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TCMConfig",
    "TrainConfig",
    "TrainingConfig",
    "apply_overrides",
    "check_loss",
    "config_from_dict",
    "dump_config",
    "load_config",
    "parse_override",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _stored(info: ValidationInfo) -> bool:
    """Whether the config being validated is one a checkpoint stores (``stored=True`` of
    :func:`config_from_dict`): it was fully checked when its run started, and the machine that
    reads it may lack the data root or weights file, so those checks (and building the loss)
    are skipped."""
    return isinstance(info.context, dict) and bool(info.context.get("stored"))


class DataConfig(_Strict):
    """Dataset and batching. ``batch_size`` is per process (rank).

    ``val_classes``: fraction of the *training* classes held out (whole classes, chosen with
    ``seed``) as the validation split on which ``best.pt`` is selected; the test classes are
    evaluated only to report the selected checkpoint (docs/definitions.md, model selection).
    """

    name: str = "glyphs"
    root: str | None = None
    image_size: int = Field(default=32, ge=8)
    train_split: str = "train"
    test_split: str = "test"
    batch_size: int = Field(default=64, ge=2)
    m_per_class: int = Field(default=4, ge=2)
    num_workers: int = Field(default=0, ge=0)
    val_classes: float = Field(default=0.1, gt=0, lt=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("root")
    @classmethod
    def _root_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not _stored(info) and not Path(os.path.expanduser(v)).exists():
            raise ValueError(f"data root does not exist: {v!r}")
        return v

    @model_validator(mode="after")
    def _batch_divisible(self) -> DataConfig:
        if self.batch_size % self.m_per_class != 0:
            raise ValueError(
                f"data.batch_size ({self.batch_size}) must be a multiple of data.m_per_class "
                f"({self.m_per_class})"
            )
        return self


class ModelConfig(_Strict):
    """Backbone + head. ``pretrained``: None, ``"imagenet"`` (efficientnet_lite0 only) or a path."""

    backbone: str = "small_cnn"
    embedding_dim: int = Field(default=128, ge=1)
    pretrained: str | None = None
    head: Literal["linear", "bn_linear"] = "linear"

    @field_validator("pretrained")
    @classmethod
    def _pretrained_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or v == "imagenet" or _stored(info):
            return v
        if not Path(os.path.expanduser(v)).is_file():
            raise ValueError(f"pretrained weights file does not exist: {v!r}")
        return v


class TCMConfig(_Strict):
    """TCM regulariser (docs/definitions.md section 4); accepted when similarity >= margins."""

    enabled: bool = True
    lambda_pos: float = Field(default=1.0, ge=0)
    lambda_neg: float = Field(default=1.0, ge=0)
    margin_pos: float = Field(default=0.9, ge=-1, le=1)
    margin_neg: float = Field(default=0.5, ge=-1, le=1)


class LossConfig(_Strict):
    """Base loss (``tcm.losses.available_losses()``) + its parameters + the TCM term.

    ``memory_size``: rows of a cross-batch memory (0 = none; see ``tcm.losses.CombinedLoss``);
    ``memory_warmup``: training steps before it starts storing (needs ``memory_size > 0``).
    The base loss is built and run once on a tiny random batch when the whole config is
    validated, so a bad ``loss.params`` value is an error at load time.
    """

    name: str = "multi_similarity"
    params: dict[str, Any] = Field(default_factory=dict)
    tcm: TCMConfig = Field(default_factory=lambda: TCMConfig(enabled=False))
    memory_size: int = Field(default=0, ge=0, le=10_000_000)
    memory_warmup: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _memory_warmup(self) -> LossConfig:
        if self.memory_warmup and not self.memory_size:
            raise ValueError(
                f"loss.memory_warmup ({self.memory_warmup}) needs a cross-batch memory: set "
                "loss.memory_size > 0"
            )
        return self

    @model_validator(mode="after")
    def _tcm_margins(self) -> LossConfig:
        if self.tcm.enabled and self.tcm.margin_neg >= self.tcm.margin_pos:
            raise ValueError(
                f"loss.tcm.margin_neg ({self.tcm.margin_neg}) must be < loss.tcm.margin_pos "
                f"({self.tcm.margin_pos})"
            )
        return self


class OptimConfig(_Strict):
    """Optimiser and learning-rate schedule (per step, linear warmup first)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    backbone_lr_mult: float = Field(default=1.0, gt=0)
    loss_lr_mult: float = Field(default=1.0, gt=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    step_size: int = Field(default=1000, ge=1)
    gamma: float = Field(default=0.1, gt=0, le=1)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)

    @field_validator("lr")
    @classmethod
    def _finite_lr(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"lr must be finite; got {v}")
        return v


class TrainConfig(_Strict):
    """Loop control. ``max_steps`` (if set) stops early; eval every ``eval_every`` epochs.

    ``checkpoint_interval_s``: rewrite ``last.pt`` at the first step boundary once this many
    seconds (wall clock) have passed since it was last written, so a killed run loses at most
    about that much work; ``0`` or ``None`` disables the time-based checkpoints (``last.pt`` is
    then written only before evaluations and when stopped by a signal).
    """

    epochs: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    steps_per_epoch: int | None = Field(default=None, ge=1)
    eval_every: int = Field(default=1, ge=1)
    log_every: int = Field(default=10, ge=1)
    amp: bool = True
    grad_clip: float | None = Field(default=None, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    select_metric: Literal["recall_at_1", "map_at_r"] = "recall_at_1"
    tensorboard: bool = True
    progress: bool = True
    deterministic: bool = True
    checkpoint_interval_s: float | None = 300.0

    @field_validator("checkpoint_interval_s")
    @classmethod
    def _interval(cls, v: float | None) -> float | None:
        if v is not None and (math.isnan(v) or v < 0):
            raise ValueError("must be >= 0 seconds (0 or null: no time-based checkpoints)")
        return v


class EvalConfig(_Strict):
    """Evaluation (validation classes for selection, test classes for the final report).

    ``far_range``: global-FAR calibration range of OPIS, ``0 < lo < hi < 1``;
    ``num_thresholds``: grid size ``K`` in [2, 100000]; ``epsilons``: each in (0, 0.5];
    ``max_classes`` evaluates a seeded subset of whole classes (faster; every kept class keeps
    all its samples).
    """

    batch_size: int = Field(default=256, ge=1)
    far_range: tuple[float, float] = (1e-2, 1e-1)
    num_thresholds: int = Field(default=101, ge=2, le=100_000)
    epsilons: tuple[float, ...] = Field(default=(0.05, 0.10), min_length=1)
    max_classes: int | None = Field(default=None, ge=2)

    @field_validator("far_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(x) for x in v) or not (0 < v[0] < v[1] < 1):
            raise ValueError(f"far_range must satisfy 0 < lo < hi < 1; got {v}")
        return v

    @field_validator("epsilons")
    @classmethod
    def _eps(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        bad = [e for e in v if not (math.isfinite(e) and 0 < e <= 0.5)]
        if bad:
            raise ValueError(f"every epsilon must lie in (0, 0.5]; bad: {bad}")
        return v


class TrainingConfig(_Strict):
    """The whole training configuration (see docs/cli.md for the reference)."""

    seed: int = 0
    output_dir: str = "runs/default"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _loss_builds(self, info: ValidationInfo) -> TrainingConfig:
        if not _stored(info):
            check_loss(self.loss, self.model.embedding_dim)
        return self


def check_loss(loss: LossConfig, embedding_dim: int) -> None:
    """Build the configured loss and run it once (forward + backward) on a tiny random batch.

    Uses its own RNG (the global torch RNG is left untouched). Proxy losses get 4 classes.

    Raises:
        ValueError: unknown loss / parameter, or a parameter value the loss rejects; the
            message names ``loss.name`` / ``loss.params``.
    """
    import torch

    from tcm.losses import build_loss

    tcm_arg: bool | dict[str, float] = False
    if loss.tcm.enabled:
        tcm_arg = loss.tcm.model_dump(exclude={"enabled"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            fn = build_loss(
                loss.name,
                tcm=tcm_arg,
                num_classes=4,
                embedding_dim=embedding_dim,
                memory_size=min(loss.memory_size, 16),
                **loss.params,
            )
            emb = torch.randn(8, embedding_dim, requires_grad=True)
            labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
            out = fn(emb, labels)
            out = fn(emb, labels)  # second call: with a non-empty memory
            out.backward()
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else exc
            raise ValueError(
                f"loss.params: loss {loss.name!r} with params {dict(loss.params)} does not work: "
                f"{detail}"
            ) from None


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        value = err.get("input")
        hide = err["type"] == "extra_forbidden" or isinstance(value, Mapping)
        shown = "" if hide else f" (got {value!r})"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"  {msg}" if key == "<root>" else f"  {key}: {msg}{shown}")
    return f"invalid config {source}:\n" + "\n".join(lines)


def config_from_dict(
    data: Mapping[str, Any], source: str = "<dict>", *, stored: bool = False
) -> TrainingConfig:
    """Validate a nested mapping. Raises ValueError naming every bad key.

    ``stored``: the config of a checkpoint (checked when its run started): the data root and
    the pretrained weights file need not exist here, and the loss is not built again.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"config {source} must be a mapping; got {type(data).__name__}")
    try:
        return TrainingConfig.model_validate(dict(data), context={"stored": stored})
    except ValidationError as exc:
        raise ValueError(_format_errors(exc, source)) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> ``(["a", "b"], parsed value)``; value parsed as a YAML scalar/list.

    Example:
        >>> parse_override("optim.lr=1e-4")
        (['optim', 'lr'], 0.0001)
    """
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"override {item!r}: cannot parse value {raw!r}: {exc}") from exc
    # YAML 1.1 reads "1e-4" as a string; accept plain float spellings
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a deep copy of ``data`` with dotted ``key=value`` overrides applied."""
    out: dict[str, Any] = copy.deepcopy(dict(data))
    for item in overrides:
        keys, value = parse_override(item)
        node: dict[str, Any] = out
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = {}
                node[k] = nxt
            elif isinstance(nxt, bool) and k == "tcm":
                nxt = {"enabled": nxt}
                node[k] = nxt
            if not isinstance(nxt, dict):
                raise ValueError(f"override {item!r}: {'.'.join(keys[: i + 1])} is not a section")
            node = nxt
        node[keys[-1]] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"config {path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a YAML mapping; got {type(data).__name__}")
    return data


def _normalise_tcm(data: dict[str, Any]) -> dict[str, Any]:
    loss = data.get("loss")
    if isinstance(loss, dict) and isinstance(loss.get("tcm"), bool):
        loss["tcm"] = {"enabled": loss["tcm"]}
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainingConfig:
    """Load and validate a YAML config (``None`` = defaults), applying dotted overrides.

    ``loss.tcm: true/false`` is shorthand for ``loss.tcm.enabled``.

    Raises:
        ValueError: missing file, bad YAML, unknown key or wrong type/value (names the key).
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    data = _normalise_tcm(apply_overrides(_normalise_tcm(data), overrides))
    return config_from_dict(data, str(path) if path is not None else "<defaults>")


def dump_config(cfg: TrainingConfig) -> str:
    """YAML text of a config (round-trips through :func:`load_config`)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
