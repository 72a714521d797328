"""Training: config schema, training loop, checkpoints, evaluation helpers.

Example:
    >>> from tcm.train import load_config
    >>> load_config(None, ["train.epochs=1"]).train.epochs
    1
"""

from tcm.train.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from tcm.train.config import TrainingConfig, apply_overrides, dump_config, load_config
from tcm.train.evaluation import compute_metrics, embed_dataset, metric_table
from tcm.train.loop import (
    StepInfo,
    TrainingDivergedError,
    TrainResult,
    load_model,
    save_embeddings,
    train,
)

__all__ = [
    "StepInfo",
    "TrainResult",
    "TrainingConfig",
    "TrainingDivergedError",
    "apply_overrides",
    "atomic_write",
    "compute_metrics",
    "dump_config",
    "embed_dataset",
    "load_checkpoint",
    "load_config",
    "load_model",
    "metric_table",
    "save_checkpoint",
    "save_embeddings",
    "train",
]
