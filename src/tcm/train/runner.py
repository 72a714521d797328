"""The evaluation runner of training: embed a split, compute its metrics, keep the RNG intact.

Embeddings are L2-normalised, pairs compared by cosine similarity, accepted when
``similarity >= threshold``. The metric keys are those of
:func:`tcm.train.evaluation.compute_metrics` (``recall_at_k``, ``map_at_r``, ``r_precision``,
``opis``, ``epsilon_opis_<eps>``). This module is the one place training computes metrics.

Example:
    >>> import numpy as np, torch
    >>> from tcm.data.base import TensorImageDataset
    >>> from tcm.models import build_model
    >>> from tcm.train.config import EvalConfig
    >>> ds = TensorImageDataset("toy", "test", torch.randint(0, 255, (12, 3, 16, 16),
    ...     dtype=torch.uint8), np.repeat(np.arange(4), 3), ["a", "b", "c", "d"])
    >>> runner = EvaluationRunner(EvalConfig(num_thresholds=5), seed=0)
    >>> ev = runner(build_model("small_cnn", 8, image_size=16), ds, split="test")
    >>> ev.embeddings.shape, 0.0 <= ev.metrics["recall_at_1"] <= 1.0
    ((12, 8), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tcm.train.config import EvalConfig
from tcm.train.evaluation import compute_metrics, embed_dataset
from tcm.train.state import get_rng_state, set_rng_state

__all__ = ["EvaluationRunner", "SplitEvaluation"]


@dataclass
class SplitEvaluation:
    """One split evaluated during training: ``metrics`` (the flat vocabulary of
    :meth:`tcm.metrics.Evaluation.metrics`), ``embeddings (N, D)`` float32, ``labels (N,)``.

    ``indices``: the dataset rows the ``N`` embeddings belong to (in dataset order) when
    ``eval.max_classes`` kept a subset of the classes; ``None``: every row of the dataset.
    """

    split: str
    metrics: dict[str, float]
    embeddings: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)
    indices: np.ndarray | None = None

    def rows_of(self, values: Sequence[Any] | np.ndarray | None) -> list[Any] | None:
        """The entries of a per-sample sequence of the dataset (ids, domains) that belong to
        the evaluated rows; ``None`` stays ``None``."""
        if values is None:
            return None
        items = list(values)
        if self.indices is None:
            return items
        return [items[int(i)] for i in self.indices]


class EvaluationRunner:
    """Embeds a dataset with a model and computes the metrics of ``eval`` config ``cfg``.

    ``cfg.max_classes`` keeps a seeded subset of whole classes. The global RNG states (torch,
    NumPy, Python, CUDA) are restored afterwards, so evaluating never changes training.
    Under ``torch.distributed`` every rank embeds a shard and all ranks get the same metrics.
    """

    def __init__(
        self,
        cfg: EvalConfig,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.cfg = cfg
        self.seed = seed
        self.device = torch.device(device)
        self.rank = rank
        self.world_size = world_size

    def _subset(self, labels: np.ndarray) -> np.ndarray | None:
        mc = self.cfg.max_classes
        classes = np.unique(labels)
        if mc is None or classes.shape[0] <= mc:
            return None
        keep = np.random.default_rng(self.seed).choice(classes, mc, replace=False)
        return np.flatnonzero(np.isin(labels, keep))

    def __call__(
        self,
        model: nn.Module,
        dataset: Dataset[Any],
        *,
        split: str,
        class_names: Sequence[str] = (),
    ) -> SplitEvaluation:
        """Evaluate ``model`` on ``dataset`` (which has a ``.labels`` array)."""
        saved = get_rng_state()
        try:
            labels = np.asarray(getattr(dataset, "labels"))  # noqa: B009 - Dataset protocol
            indices = self._subset(labels)
            emb, lab = embed_dataset(
                model,
                dataset,
                batch_size=self.cfg.batch_size,
                device=self.device,
                rank=self.rank,
                world_size=self.world_size,
                indices=indices,
            )
            metrics = compute_metrics(
                emb,
                lab,
                far_range=self.cfg.far_range,
                num_thresholds=self.cfg.num_thresholds,
                epsilons=self.cfg.epsilons,
                tar_fars=(),
            )
        finally:
            set_rng_state(saved)
        return SplitEvaluation(split, metrics, emb, lab, list(class_names), indices)
