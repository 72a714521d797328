"""Training: config schema, the training loop and its components.

* :func:`train` / :class:`Trainer` (``loop``): the run; :class:`TrainResult`.
* :class:`TrainingState` (``checkpoint``): the checkpoint schema (content hash verified on load).
* :class:`RunDir` (``rundir``): files of a run, preflight checks, the CSV log.
* :class:`EvaluationRunner` (``runner``): embed + metrics; :class:`TrainStep` (``step``).
* :func:`register_dataset` / ``datasets=`` (``datasets``): where training gets its data, and
  :func:`split_validation_classes` (model selection on held-out training classes).

Example:
    >>> from tcm.train import load_config
    >>> load_config(None, ["train.epochs=1"]).train.epochs
    1
"""

from tcm.train.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from tcm.train.config import TrainingConfig, apply_overrides, dump_config, load_config
from tcm.train.datasets import (
    DatasetProvider,
    SelectionSplit,
    register_dataset,
    split_validation_classes,
    unregister_dataset,
)
from tcm.train.evaluation import compute_metrics, embed_dataset, metric_table
from tcm.train.loop import (
    StepInfo,
    Trainer,
    TrainingDivergedError,
    TrainResult,
    load_model,
    train,
)
from tcm.train.rundir import RunDir
from tcm.train.runner import EvaluationRunner, SplitEvaluation
from tcm.train.step import TrainStep

__all__ = [
    "DatasetProvider",
    "EvaluationRunner",
    "RunDir",
    "SelectionSplit",
    "SplitEvaluation",
    "StepInfo",
    "TrainResult",
    "TrainStep",
    "Trainer",
    "TrainingConfig",
    "TrainingDivergedError",
    "TrainingState",
    "apply_overrides",
    "compute_metrics",
    "dump_config",
    "embed_dataset",
    "load_checkpoint",
    "load_config",
    "load_model",
    "metric_table",
    "register_dataset",
    "save_checkpoint",
    "split_validation_classes",
    "train",
    "unregister_dataset",
]
