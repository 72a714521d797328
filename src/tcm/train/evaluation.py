"""Embedding a dataset and computing the evaluation metrics used by training and the CLI.

All metrics use L2-normalised embeddings and cosine similarity; a pair is accepted when
``similarity >= threshold``. Metric keys (floats): ``recall_at_{k}``, ``map_at_r``,
``r_precision``, ``opis``, ``epsilon_opis_{eps}`` and, when requested, ``tar_at_far_{far}``
(global TAR at the threshold whose global FAR is ``far``) and ``threshold_at_far_{far}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["DEFAULT_TAR_FARS", "compute_metrics", "embed_dataset", "far_key", "metric_table"]

from tcm.metrics.evaluation import DEFAULT_TAR_FARS, far_key


@torch.no_grad()
def embed_dataset(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    indices: Sequence[int] | np.ndarray | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed ``dataset`` (optionally only ``indices``) -> ``(embeddings (N, D) float32,
    labels (N,) int64)`` in dataset order. Under ``torch.distributed`` each rank embeds a
    strided shard and the results are all-gathered, so every rank returns the full arrays.
    """
    from tcm.losses.distributed import gather_no_grad

    idx_all = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)  # type: ignore[arg-type]
    mine = idx_all[rank::world_size]
    was_training = model.training
    model.eval()
    embs: list[torch.Tensor] = []
    labs: list[torch.Tensor] = []
    loader = DataLoader(
        torch.utils.data.Subset(dataset, mine.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    it: Any = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="embed", leave=False, unit="batch")
    for images, labels in it:
        out = model(images.to(device, non_blocking=True))
        embs.append(out.float())
        labs.append(torch.as_tensor(labels, device=out.device).to(torch.int64))
    model.train(was_training)
    dev = torch.device(device)
    emb = torch.cat(embs) if embs else torch.zeros((0, 1), device=dev)
    lab = torch.cat(labs) if labs else torch.zeros((0,), dtype=torch.int64, device=dev)
    pos = torch.as_tensor(mine, device=emb.device)
    if world_size > 1:
        emb = gather_no_grad(emb.contiguous())
        lab = gather_no_grad(lab.contiguous())
        pos = gather_no_grad(pos.contiguous())
    order = torch.argsort(pos)
    return (
        emb[order].cpu().numpy().astype(np.float32),
        lab[order].cpu().numpy().astype(np.int64),
    )


def compute_metrics(
    embeddings: Any,
    labels: Any,
    *,
    far_range: tuple[float, float] = (1e-2, 1e-1),
    num_thresholds: int = 101,
    epsilons: Sequence[float] = (0.05, 0.10),
    ks: Sequence[int] = (1, 2, 4, 8),
    tar_fars: Sequence[float] = (),
) -> dict[str, float]:
    """Retrieval (leave-one-out on the given set) + threshold-consistency metrics as the flat
    ``{key: float}`` of :meth:`tcm.metrics.Evaluation.metrics` (one :func:`tcm.metrics.evaluate`
    call: under ``torch.distributed`` every rank must call it and each computes its share).

    ``embeddings`` ``(N, D)`` (any float; normalised internally), ``labels`` ``(N,)``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> m = compute_metrics(rng.normal(size=(40, 8)), np.repeat(np.arange(10), 4))
        >>> 0.0 <= m["recall_at_1"] <= 1.0
        True
    """
    from tcm.metrics import evaluate

    sections = ["retrieval", "consistency"] + (["tar_at_far"] if tar_fars else [])
    ev = evaluate(
        embeddings,
        labels,
        ks=tuple(ks),
        far_range=(float(far_range[0]), float(far_range[1])),
        num_thresholds=num_thresholds,
        epsilons=tuple(epsilons),
        tar_fars=tuple(tar_fars),
        include=sections,
    )
    return ev.metrics()


def metric_table(runs: dict[str, dict[str, float]], keys: Sequence[str] | None = None) -> str:
    """Plain-text table: one row per metric, one column per run (values with 4 decimals)."""
    from tcm.metrics import metric_label

    names = list(runs)
    if keys is None:
        keys = [k for k in next(iter(runs.values()))] if runs else []
    rows = [[metric_label(k)] + [_fmt(runs[n].get(k)) for n in names] for k in keys]
    header = ["metric", *names]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    sep = "  ".join("-" * w for w in widths)
    body = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join([line, sep, *body])


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1 and float(v).is_integer():  # counts (e.g. classes above 2x the target FAR)
        return f"{int(v)}"
    if v != 0 and abs(v) < 1e-4:
        return f"{v:.3e}"
    if v != 0 and abs(v) < 0.1:
        return f"{v:.4g}"
    return f"{v:.4f}"
