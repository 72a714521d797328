"""``tcm`` console script: train, evaluate, calibrate, embed, report, demo.

Convention everywhere: L2-normalised embeddings, cosine similarity, a pair is accepted when
``similarity >= threshold``. Exit codes: 0 ok, 1 training diverged (NaN loss), 2 any bad input or
environment problem (one ``error:`` line on stderr; the traceback only with ``--debug``), 130
interrupted by Ctrl-C, 141 standard output closed early (e.g. ``| head``), 143 stopped by SIGTERM
(checkpoint saved at the next step boundary).

Every option is applied or refused: an option that only matters with another one (``--n-boot``
without ``--ci``, ``--target-group`` without ``--on``, ``--data`` for an embeddings file, ...)
and a bad value (``--top -3``) are errors (exit 2) found before anything is loaded, and so are
unusable output paths (``--json``, ``--out``).

Example:
    >>> from tcm.cli.main import main
    >>> main(["--version"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import tcm
from tcm._io import write_embeddings, write_json
from tcm.cli.scoring import add_scorer_args, check_scorer_options, load_scorer_inputs

if TYPE_CHECKING:
    from tcm.data.embedding_file import EmbeddingFile

__all__ = ["build_parser", "console_text", "main"]

EXIT_OK, EXIT_DIVERGED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE, what a tool killed by a closed pipe reports
#: Defaults of the options that only apply to some inputs (``None`` in the parser, so that an
#: option given without effect can be refused; filled in by :func:`_check_options`).
SOURCE_DEFAULTS: dict[str, Any] = {"split": "test", "batch_size": 256, "device": "auto"}
N_BOOT_DEFAULT = 1000
NUM_THRESHOLDS_DEFAULT = 201
SEARCH_RANGE_DEFAULT = (1e-4, 0.5)
TOP_DEFAULT = 10
#: Unicode format characters that reorder or hide text on a terminal (bidi controls).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class StdoutClosed(Exception):
    """Standard output was closed by its reader (``BrokenPipeError`` on a console write)."""


def console_text(text: object, *, keep_newlines: bool = False) -> str:
    """``str(text)`` safe to print on a terminal: every control character (C0, DEL, C1, and the
    bidi controls) is replaced by its escaped form (``"\\x1b"``, ``"\\n"``, ``"\\u202e"``), so a
    class name, group name or path cannot move the cursor, recolour, retitle or clear the
    terminal. ``keep_newlines`` keeps ``"\\n"`` (for multi-line tables and messages).

    Example:
        >>> console_text("red\\x1b[31m")
        'red\\\\x1b[31m'
    """
    s = str(text)
    if s.isprintable():  # no Cc (and no Cf: the bidi controls are format characters)
        return s
    out = []
    for ch in s:
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif unicodedata.category(ch) == "Cc" or ch in _BIDI:
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


def _out(text: str) -> None:
    """Print one block of console output (control characters escaped, see :func:`console_text`).

    Raises:
        StdoutClosed: the reader of standard output went away (``tcm ... | head``).
    """
    try:
        print(console_text(text, keep_newlines=True), flush=True)
    except BrokenPipeError:
        raise StdoutClosed from None


def _warn(command: str, text: str) -> None:
    """One ``tcm COMMAND: warning: ...`` line on stderr (control characters escaped)."""
    print(f"tcm {command}: warning: {console_text(text)}", file=sys.stderr, flush=True)


def _warner(args: argparse.Namespace) -> Callable[[str], None]:
    """:func:`_warn` of ``args.command`` (rank 0 only)."""
    return lambda text: _warn(args.command, text) if _rank() == 0 else None


# ----------------------------------------------------------------------------- sources


def _embed_checkpoint(
    path: Path,
    data: str | None,
    split: str,
    root: str | None,
    batch_size: int,
    device: str,
    progress: bool = True,
) -> EmbeddingFile:
    """The samples of dataset ``data`` (default: the one the checkpoint trained on) / ``split``
    embedded by the checkpoint at ``path``, with the dataset's per-sample ids and domains (as
    ``groups``) when it has them; ``path`` of the result is the checkpoint."""
    import torch

    from tcm import data as tdata
    from tcm.data.embedding_file import EmbeddingFile
    from tcm.train.evaluation import embed_dataset
    from tcm.train.loop import load_model

    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, state = load_model(path, dev)
    stored = state.config.data
    name = data or stored.name
    if not name:
        raise ValueError(f"pass --data: checkpoint {path} does not name its dataset")
    options = dict(stored.options) if name == stored.name else {}
    size = model.spec.image_size
    transform: Any = "default"
    if split == "train":  # embed training images with the deterministic evaluation pipeline
        transform = tdata.load(name, split="test", root=root, image_size=size, **options).transform
    ds = tdata.load(name, split=split, root=root, image_size=size, transform=transform, **options)
    emb, lab = embed_dataset(model, ds, batch_size=batch_size, device=dev, progress=progress)
    ids = getattr(ds, "ids", None)
    groups = getattr(ds, "domains", None)
    return EmbeddingFile(
        embeddings=emb,
        labels=lab,
        class_names=list(ds.class_names),
        ids=None if ids is None else [str(i) for i in ids],
        groups=None if groups is None else np.asarray(groups),
        path=path,
    )


EMBEDDING_SUFFIXES = (".npz", ".safetensors")


def _source_file(source: str) -> Path:
    """The file a SOURCE names: a run directory's ``embeddings.npz``, else the path itself."""
    path = Path(source)
    return path / "embeddings.npz" if path.is_dir() else path


def _is_checkpoint(source: str) -> bool:
    """Whether SOURCE is embedded on the fly (a checkpoint, not an embeddings file / run dir)."""
    return _source_file(source).suffix not in EMBEDDING_SUFFIXES


def _embed_as_asked(path: Path, args: argparse.Namespace) -> EmbeddingFile:
    """Embed a checkpoint with the command's source options (``--data``, ``--split``,
    ``--root``, ``--batch-size``, ``--device``) and its progress setting."""
    return _embed_checkpoint(
        path,
        args.data,
        args.split,
        args.root,
        args.batch_size,
        args.device,
        progress=_show_progress(args),
    )


def _load_source(
    source: str | Path, args: argparse.Namespace | None = None, *, labels: bool = True
) -> EmbeddingFile:
    """The one loader of a SOURCE's samples (every command that reads embeddings uses it).

    With ``args`` (the command's ``--data --root --split --batch-size --device`` and progress
    options), SOURCE is an ``.npz`` / ``.safetensors`` embeddings file, a run directory (its
    ``embeddings.npz``) or a checkpoint embedded on the fly (:func:`_embed_checkpoint`);
    without, an embeddings file read as it is named (``tcm verify``, ``tcm demo``).
    ``labels``: refuse a file without ``labels``.

    Raises:
        ValueError: a missing or unreadable source, or no labels where they are needed.
    """
    from tcm.data.embedding_file import read_embedding_file

    if args is None:
        path = Path(source)
    else:
        path = _source_file(str(source))
        if not path.exists():
            raise ValueError(f"file not found: {source}")
        if _is_checkpoint(str(source)):
            return _embed_as_asked(path, args)
    f = read_embedding_file(path)
    if labels and f.labels is None:
        raise ValueError(f"{path} has no array 'labels'")
    return f


def _labels(f: EmbeddingFile) -> np.ndarray:
    """The labels of a :func:`_load_source` result loaded with ``labels=True``."""
    assert f.labels is not None
    return f.labels


def _select_groups(f: EmbeddingFile, keep: Sequence[str] | None, source: str) -> EmbeddingFile:
    """Keep only the samples whose group is in ``keep`` (None: all) of a :func:`_load_source`
    result."""
    if not keep:
        return f
    g = _require_groups(f.groups, source)
    unknown = sorted(set(keep) - {str(v) for v in np.unique(g)})
    if unknown:
        raise ValueError(
            f"{source} has no group {unknown[0]!r} (groups: {sorted(map(str, np.unique(g)))})"
        )
    m = np.isin(g.astype(str), list(keep))
    ids = None if f.ids is None else [f.ids[i] for i in np.flatnonzero(m).tolist()]
    return replace(f, embeddings=f.embeddings[m], labels=_labels(f)[m], ids=ids, groups=g[m])


def _require_groups(groups: Any, source: str) -> np.ndarray:
    if groups is None:
        raise ValueError(
            f"{source} has no per-sample groups: write it with `tcm embed` from a dataset with "
            "domains (glyphs: font family, emoji: vendor, cjk_glyphs: design) or add a 'groups' "
            "array to the .npz"
        )
    return np.asarray(groups)


def _print_groups(gop: Any) -> None:
    """The per-group table and summaries of a GroupOperatingPoint."""
    iv = gop.intervals
    _out(f"\nper-group rates at threshold {gop.threshold:.6f} (within-group pairs):")
    _out(f"{'group':<24} {'genuine':>9} {'impostor':>10} {'FAR':>10} {'FRR':>8}")
    for k, name in enumerate(gop.groups.tolist()):
        name = console_text(name)
        ci_txt = ""
        if "far" in iv:
            lo, hi = np.atleast_1d(iv["far"].lo)[k], np.atleast_1d(iv["far"].hi)[k]
            ci_txt = f"  FAR {iv['far'].ci:.0%} CI [{lo:.3e}, {hi:.3e}]"
        _out(
            f"{name[:24]:<24} {int(gop.num_genuine[k]):>9} {int(gop.num_impostor[k]):>10} "
            f"{gop.far[k]:>10.3e} {gop.frr[k]:>8.4f}{ci_txt}"
        )
    s = gop.summary
    _out(
        f"FAR max/min {s['far_max_min']:.3g}  Max/GeoMean {s['far_max_geomean']:.3g}  "
        f"Gini {s['far_gini']:.3g} | FRR max/min {s['frr_max_min']:.3g}  Max/GeoMean "
        f"{s['frr_max_geomean']:.3g}  Gini {s['frr_gini']:.3g} | GARBE {s['garbe']:.3g}  "
        f"FDR {s['fdr']:.4f}"
    )
    if s.get("groups_left_out"):
        _out(
            f"groups left out of the summaries (no genuine or impostor pairs): "
            f"{int(s['groups_left_out'])}"
        )


def _add_source_args(p: argparse.ArgumentParser, *, data_help: str) -> None:
    """``--data --root --split --batch-size --device``: how a checkpoint source is embedded
    (defaults ``None`` here, filled in from :data:`SOURCE_DEFAULTS` by :func:`_check_options`)."""
    p.add_argument("--data", metavar="NAME", help=data_help)
    p.add_argument("--root", help="dataset root directory (default: the dataset's own default)")
    p.add_argument("--split", help="dataset split to embed (default: test)")
    p.add_argument("--batch-size", type=int, help="embedding batch size (default 256)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(default: auto)")


# ----------------------------------------------------------------------------- commands


def _resume_hint(args: argparse.Namespace) -> str:
    """The command that continues an interrupted ``tcm train`` (all options and overrides)."""
    import shlex

    parts = ["tcm", "train"]
    if args.config is not None:
        parts += ["--config", args.config]
    if args.pretrained:
        parts += ["--pretrained", args.pretrained]
    parts += list(args.overrides)
    parts.append("--resume")
    return " ".join(shlex.quote(p) for p in parts)


def _cmd_train(args: argparse.Namespace) -> int:
    from tcm.metrics import headline_keys
    from tcm.train.config import load_config
    from tcm.train.evaluation import metric_table
    from tcm.train.loop import train

    overrides = list(args.overrides)
    if args.pretrained:
        overrides.append(f"model.pretrained={args.pretrained}")
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume, force=args.force)
    if result.interrupted:
        if not result.last_checkpoint.is_file():
            _out("stopped before the first checkpoint; start again (without --resume)")
        elif result.checkpoint_saved:
            _out(f"stopped at step {result.steps}; resume with: {_resume_hint(args)}")
        else:
            _out(f"stopped without a new checkpoint; resume with: {_resume_hint(args)}")
        return EXIT_TERMINATED if result.stop_signal == "SIGTERM" else EXIT_INTERRUPTED
    if result.best_metrics:
        runs = {"validation (best)": result.best_metrics}
        if result.test_metrics:
            runs["test (same ckpt)"] = result.test_metrics
        _out(metric_table(runs, headline_keys()))
        _out(result.selection.get("description", ""))
    _out(
        f"checkpoints: {result.best_checkpoint} (best on validation), "
        f"{result.last_checkpoint} (last)"
    )
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tcm.metrics import DEFAULT_TAR_FARS, evaluate, metric_info, metric_label
    from tcm.train.evaluation import metric_table

    sc = load_scorer_inputs(args)
    f = _load_source(args.source, args)
    names, groups = f.class_names, f.groups
    if args.groups:
        groups = _require_groups(groups, args.source)
    scorer = sc.build([(args.source, f)], _warner(args), args.save_scorer)
    ev = evaluate(
        f.embeddings,
        _labels(f),
        far_range=tuple(args.far_range),
        tar_fars=DEFAULT_TAR_FARS,
        groups=groups if args.groups else None,
        ci=args.ci,
        n_boot=args.n_boot,
        progress=_show_progress(args),
        scorer=scorer,
    )
    if _rank() == 0:
        if args.json:  # the file first: a closed stdout (`| head`) cannot lose it
            write_json(args.json, {"source": args.source, **ev.to_dict(names), **sc.json()})
        for line in sc.describe():
            _out(line)
        metrics = ev.metrics()
        shown = {k: v for k, v in metrics.items() if metric_info(k).in_console}
        _out(metric_table({console_text(Path(args.source).name): shown}))
        if ev.intervals:
            _out(f"\n{ev.intervals[next(iter(ev.intervals))].ci:.0%} class-bootstrap intervals:")
            for key, iv in ev.intervals.items():
                _out(f"  {metric_label(key):<24} [{float(iv.lo):.4g}, {float(iv.hi):.4g}]")
        if ev.groups is not None:
            _print_groups(ev.groups)
        if args.json:
            _out(f"wrote {console_text(args.json)}")
    return EXIT_OK


def _rank() -> int:
    """This process's ``torch.distributed`` rank (0 without a process group)."""
    from tcm._distributed import rank

    return rank()


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars on stderr (rank 0 only): ``--progress`` forces them, ``--quiet`` turns them
    off, else only when stderr is a terminal. Commands without these options keep their bars."""
    if not hasattr(args, "quiet"):
        return True
    if args.quiet or _rank() != 0:
        return False
    return bool(args.progress) or sys.stderr.isatty()


def _init_distributed(timeout: float | None = None) -> bool:
    """Join the process group when started by torchrun (``WORLD_SIZE > 1``), with ``timeout``
    seconds (``--dist-timeout``; default ``$TCM_DIST_TIMEOUT`` or 300) for every collective.

    Returns whether this call created the group (and so must leave it again).
    """
    from tcm._distributed import join_process_group

    return join_process_group(timeout=timeout)


def _leave_distributed(*, clean: bool) -> None:
    """Destroy the process group while the interpreter is still whole.

    Exiting with the group alive lets gloo's worker threads outlive Python's finalisation; the
    process then aborts ("terminate called without an active exception", SIGABRT) now and then,
    and torchrun reports the whole command as failed although every rank finished. ``clean``
    (every rank succeeded) first waits at a barrier so that no rank tears its side down while a
    peer still exchanges counts; after an error the group is destroyed at once (a barrier could
    wait forever on a peer that failed too).
    """
    import torch.distributed as dist

    from tcm._distributed import collective, is_distributed

    if not is_distributed():
        return
    if clean:
        with collective("final barrier"):
            dist.barrier()
    dist.destroy_process_group()


def _add_calibration_extras(
    args: argparse.Namespace, res: dict[str, Any], intervals: dict[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Add the worst classes by FAR, the source groups and (``--ci``) the global FAR / TAR
    intervals to the ``calibrate`` result ``res``; returns the worst-class order and intervals."""
    pc = res["per_class"]
    far = np.asarray(pc["far"])
    order = np.argsort(-far, kind="stable")[: args.top]
    res["worst_classes"] = [
        {"class": pc["names"][i], "far": pc["far"][i], "frr": pc["frr"][i]} for i in order.tolist()
    ]
    if args.source_group:
        res["source_groups"] = list(args.source_group)
    ivs = (
        {k: intervals[f"calibration_{k}"] for k in ("global_far", "global_tar")} if args.ci else {}
    )
    if ivs:
        res["intervals"] = {k: iv.to_dict() for k, iv in ivs.items()}
    return order, ivs


def _print_calibration(
    res: dict[str, Any], ivs: dict[str, Any], order: np.ndarray, scale_label: str
) -> None:
    """The ``calibrate`` console report: threshold, global rates (and intervals), per-class
    spreads and the worst classes by FAR."""
    pc = res["per_class"]
    _out(f"threshold ({scale_label}, accept if >=): {res['threshold']:.6f}")
    _out(
        f"global FAR {res['global_far']:.3e}   global TAR {res['global_tar']:.4f}   "
        f"classes {res['num_classes']}"
    )
    if ivs:
        fa, ta = ivs["global_far"], ivs["global_tar"]
        _out(
            f"{fa.ci:.0%} class-bootstrap intervals: global FAR [{float(fa.lo):.3e}, "
            f"{float(fa.hi):.3e}]   global TAR [{float(ta.lo):.4f}, {float(ta.hi):.4f}]"
        )
    for what in ("far", "frr"):
        s = res[f"{what}_spread"]
        _out(
            f"per-class {what.upper()}: min {s['min']:.3e}  median {s['p50']:.3e}  "
            f"p95 {s['p95']:.3e}  "
            f"max {s['max']:.3e}  std {s['std']:.3e}"
        )
    _out(
        f"classes with FAR > 2x target ({2 * res['reference_far']:.3e}): "
        f"{res['classes_far_above_2x']}"
    )
    _out(f"\nworst {len(order)} classes by FAR:")
    _out(f"{'class':<24} {'size':>6} {'FAR':>10} {'FRR':>8}")
    for i in order.tolist():
        _out(
            f"{console_text(pc['names'][i])[:24]:<24} {pc['size'][i]:>6} {pc['far'][i]:>10.3e} "
            f"{pc['frr'][i]:>8.4f}"
        )


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """``tcm calibrate SOURCE (--far F | --max-utility)``: one threshold and the per-class rates
    at it (``--source-group``: on those groups of SOURCE; ``--ci``: intervals of the global
    FAR / TAR); ``--on TARGET``: :func:`_calibrate_transfer`. Options: :func:`_check_options`."""
    from tcm.metrics import evaluate

    if args.on is not None:
        return _calibrate_transfer(args)
    sc = load_scorer_inputs(args)
    f = _select_groups(_load_source(args.source, args), args.source_group, args.source)
    names, lab = f.class_names, _labels(f)
    scorer = sc.build([(args.source, f)], _warner(args), args.save_scorer)
    ev = evaluate(
        f.embeddings,
        lab,
        include=["calibration"],
        calibration_far=args.far,
        max_utility=bool(args.max_utility),
        search_range=(float(args.search_range[0]), float(args.search_range[1])),
        search_thresholds=args.num_thresholds,
        ci=args.ci,
        n_boot=args.n_boot,
        progress=_show_progress(args),
        scorer=scorer,
    )
    assert ev.calibration is not None
    res = {**ev.calibration.to_dict(names), **sc.json()}
    if _rank() != 0:
        return EXIT_OK
    order, ivs = _add_calibration_extras(args, res, ev.intervals)
    warnings = _far_resolution_warnings(args.far, [(f"the source {args.source!r}", lab)])
    if warnings:
        res["warnings"] = warnings
    if args.json:  # the file first: a closed stdout (`| head`) cannot lose it
        write_json(args.json, res)
    for w in warnings:
        _warn(args.command, w)
    if args.source_group:
        groups = ", ".join(console_text(g) for g in args.source_group)
        _out(f"calibrated on group(s) {groups} of {console_text(args.source)}: {len(lab)} samples")
    for line in sc.describe():
        _out(line)
    _print_calibration(res, ivs, order, sc.scale_label())
    if args.json:
        _out(f"wrote {console_text(args.json)}")
    if args.save:
        from tcm.cli.deploy import save_contract

        save_contract(args, f, lab)
    return EXIT_OK


def _num_impostor_pairs(labels: np.ndarray) -> int:
    """``M = N (N - 1) / 2 - sum_c n_c (n_c - 1) / 2``: pairs of samples of different classes."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    n = int(counts.sum())
    return n * (n - 1) // 2 - int((counts * (counts - 1) // 2).sum())


def _far_resolution_warnings(
    far: float | None, sets: Sequence[tuple[str, np.ndarray]]
) -> list[str]:
    """One warning per ``(name, labels)`` set whose impostor pairs cannot resolve the target
    ``far``: ``far < 1 / M`` (the smallest non-zero FAR one threshold can give)."""
    out: list[str] = []
    if far is None:
        return out
    for name, labels in sets:
        m = _num_impostor_pairs(labels)
        if m > 0 and far * m < 1:
            out.append(
                f"--far {far:g} is below the resolution of {name}: the FAR cannot be resolved "
                f"with {m} impostor pairs (smallest non-zero FAR 1/{m} = {1 / m:.3g}), so the "
                "FAR figures at this target are not meaningful"
            )
    return out


def _calibrate_transfer(args: argparse.Namespace) -> int:
    """``tcm calibrate SOURCE --far F --on TARGET``: the source threshold on the target."""
    from tcm.metrics import calibration_transfer

    sc = load_scorer_inputs(args)
    s_f = _select_groups(_load_source(args.source, args), args.source_group, args.source)
    t_f = _select_groups(_load_source(args.on, args), args.target_group, args.on)
    s_lab, t_lab = _labels(s_f), _labels(t_f)
    scorer = sc.build([(args.source, s_f), (args.on, t_f)], _warner(args), args.save_scorer)
    tr = calibration_transfer(
        s_f.embeddings,
        s_lab,
        t_f.embeddings,
        t_lab,
        far=args.far,
        source_groups=s_f.groups,
        target_groups=t_f.groups,
        ci=args.ci,
        n_boot=args.n_boot,
        progress=_show_progress(args),
        scorer=scorer,
    )
    sets = [(f"the source {args.source!r}", s_lab), (f"the target {args.on!r}", t_lab)]
    warnings = _far_resolution_warnings(args.far, sets)
    if args.json:  # the file first: a closed stdout (`| head`) cannot lose it
        res = {"source": args.source, "target": args.on, **tr.to_dict(), **sc.json()}
        write_json(args.json, {**res, "warnings": warnings} if warnings else res)
    for w in warnings:
        _warn(args.command, w)
    src = console_text(args.source)
    for line in sc.describe():
        _out(line)
    on_scale = "" if scorer is None else f" ({sc.scale_label()}, accept if >=)"
    _out(f"threshold{on_scale} calibrated on {src} for FAR {args.far:g}: {tr.threshold:.6f}")
    _out(f"{'':<22} {'source':>10} {'target':>10}")
    _out(f"{'global FAR':<22} {tr.source_far:>10.3e} {tr.target_far:>10.3e}")
    _out(f"{'global TAR':<22} {tr.source_tar:>10.4f} {tr.target_tar:>10.4f}")
    ratio = f"FAR ratio (target / {args.far:g}): {tr.far_ratio:.3f}"
    if "far_ratio" in tr.intervals:
        iv = tr.intervals["far_ratio"]
        ratio += f"  {iv.ci:.0%} CI [{float(iv.lo):.3f}, {float(iv.hi):.3f}]"
    _out(ratio)
    _out(f"TAR change: {tr.tar_change:+.4f}")
    _out(
        f"threshold for FAR {args.far:g} on the target: {tr.target_threshold:.6f} "
        f"(calibrated threshold is off by {tr.threshold_offset:+.6f})"
    )
    c = tr.class_far
    _out(
        f"target per-class FAR: min {c['min']:.3e}  median {c['p50']:.3e}  p90 {c['p90']:.3e}  "
        f"p99 {c['p99']:.3e}  max {c['max']:.3e}"
    )
    _out(
        f"target classes with FAR > 2x target ({2 * args.far:.3e}): {tr.classes_over_2x} of "
        f"{tr.num_target_classes}"
    )
    if tr.target_groups is not None:
        _print_groups(tr.target_groups)
    if args.json:
        _out(f"wrote {console_text(args.json)}")
    return EXIT_OK


def _cmd_embed(args: argparse.Namespace) -> int:
    path = Path(args.checkpoint)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    f = _embed_as_asked(path, args)
    emb, names = f.embeddings, f.class_names or []
    out = write_embeddings(args.out, emb, _labels(f), names, ids=f.ids, groups=f.groups)
    _out(
        f"wrote {console_text(out)}: {emb.shape[0]} embeddings of dim {emb.shape[1]}, "
        f"{len(names)} classes"
    )
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    """``tcm report SOURCES... --out DIR [--groups] [--ci L --n-boot N] [--transfer S:T]
    [--scorer NAME ...]``.

    Each source is evaluated once (twice with a scorer: the cosine run ``NAME`` and the
    normalised run ``NAME · KIND``), its pairs scored once more for the DET section. Sources
    named in ``--transfer`` keep their embeddings until the transfer table is computed
    (``tcm.metrics.calibration_transfer``; with a scorer also between the normalised runs); the
    others are evaluated right away and keep only their Evaluation."""
    from tcm.report import write_report

    sc = load_scorer_inputs(args)  # the cohort / fit file read before the sources
    run_names = _run_names(args.sources)
    transfer = [_split_transfer(spec, run_names) for spec in args.transfer or ()]
    loaded = []
    for src, name in zip(args.sources, run_names, strict=True):
        f = _load_source(src, args)
        groups = _require_groups(f.groups, src) if args.groups else None
        loaded.append((name, f, groups))
    evaluated = [(src, f) for src, (_, f, _) in zip(args.sources, loaded, strict=True)]
    scorer = sc.build(evaluated, _warner(args), args.save_scorer)
    variants: list[tuple[str, Any, dict[str, Any] | None]] = [("{}", None, None)]
    if scorer is not None:  # every source twice: cosine, then normalised
        variants.append((f"{{}} · {sc.kind}", scorer, sc.record()))
        transfer += [(f"{a} · {sc.kind}", f"{b} · {sc.kind}") for a, b in transfer]
    in_transfer = {n for pair in transfer for n in pair}
    runs = []
    for name, f, groups in loaded:
        for pattern, run_scorer, record in variants:
            run_name = pattern.format(name)
            keep = run_name in in_transfer
            runs.append(_report_run(args, run_name, f, groups, run_scorer, record, keep))
    index = write_report(
        args.out,
        runs,
        threshold=args.threshold,
        ci=args.ci,
        n_boot=args.n_boot,
        transfer=transfer or None,
        det=True,
    )
    _out(f"report: {console_text(index)}")
    return EXIT_OK


def _report_run(
    args: argparse.Namespace,
    name: str,
    f: EmbeddingFile,
    groups: np.ndarray | None,
    scorer: Any,
    record: dict[str, Any] | None,
    keep: bool,
) -> Any:
    """One run of ``tcm report``: evaluated now (embeddings dropped), or, with ``keep`` (a
    transfer run), kept as embeddings for ``write_report`` to evaluate."""
    from tcm.report import ReportRun

    common: dict[str, Any] = {
        "class_names": f.class_names,
        "groups": groups,
        "scorer": scorer,
        "scorer_record": record,
    }
    if keep:  # evaluated once by write_report; embeddings kept for transfer
        return ReportRun(name, f.embeddings, _labels(f), **common)
    return ReportRun.from_embeddings(
        name,
        f.embeddings,
        _labels(f),
        threshold=args.threshold,
        ci=args.ci,
        n_boot=args.n_boot,
        det=True,
        **common,
    )


def _run_names(sources: Sequence[str]) -> list[str]:
    """The report's run names: each source's file stem or directory name, ``" (2)"``, ... added
    to repeated names."""
    out = []
    seen: dict[str, int] = {}
    for src in sources:
        p = Path(src)
        name = p.name if p.is_dir() else p.stem
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def _split_transfer(spec: str, names: Sequence[str]) -> tuple[str, str]:
    """``SRC_NAME:TGT_NAME`` -> the pair of run names (split at the ``:`` where both sides are
    run names, so names may contain ``:``)."""
    for i, ch in enumerate(spec):
        if ch == ":" and spec[:i] in names and spec[i + 1 :] in names:
            return spec[:i], spec[i + 1 :]
    raise ValueError(
        f"--transfer {spec!r}: expected SOURCE_NAME:TARGET_NAME with run names from {list(names)}"
        " (a run's name is its file stem or directory name)"
    )


def demo_configs(out_dir: str | Path, overrides: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """The two demo configs: ``(name, TrainingConfig)`` for base loss and base loss + TCM."""
    from tcm.train.config import load_config

    base_dir = Path(out_dir)
    runs = []
    for name, tcm_on in (("base", False), ("base+tcm", True)):
        cfg = load_config(
            None,
            [
                *DEMO_OVERRIDES,
                *overrides,
                f"loss.tcm.enabled={tcm_on}",
                f"output_dir={base_dir / name.replace('+', '_')}",
            ],
        )
        runs.append((name, cfg))
    return runs


#: The demo recipe (mirrored in configs/demo.yaml; a test checks they agree).
DEMO_OVERRIDES: tuple[str, ...] = (
    "seed=0",
    "data.name=glyphs",
    "data.image_size=32",
    "data.batch_size=64",
    "data.m_per_class=4",
    "model.backbone=small_cnn",
    "model.embedding_dim=64",
    "loss.name=smooth_ap",
    "optim.name=adamw",
    "optim.lr=0.002",
    "optim.warmup_steps=20",
    "optim.schedule=cosine",
    "train.epochs=4",
    "train.steps_per_epoch=75",
    "train.eval_every=2",
    "train.select_metric=map_at_r",
    "train.device=cpu",
)


def _cmd_demo(args: argparse.Namespace) -> int:
    from tcm.metrics import headline_keys
    from tcm.train.evaluation import metric_table
    from tcm.train.loop import train

    t0 = time.monotonic()
    results: dict[str, dict[str, float]] = {}
    selection = ""
    report_runs = []
    for name, cfg in demo_configs(args.out, args.overrides):
        tcm_txt = " + TCM" if cfg.loss.tcm.enabled else ""
        _out(
            f"[demo] training '{name}' ({cfg.loss.name}{tcm_txt}, "
            f"{cfg.model.backbone}, {cfg.train.epochs} epochs) -> {cfg.output_dir}"
        )
        res = train(cfg)
        if res.interrupted:
            return EXIT_TERMINATED if res.stop_signal == "SIGTERM" else EXIT_INTERRUPTED
        results[name] = res.test_metrics or {}
        selection = res.selection.get("description", "")
        _out(f"[demo] '{name}' done after {time.monotonic() - t0:.0f} s")
        report_runs.append((name, Path(cfg.output_dir) / "embeddings.npz"))
    _out(
        "\nunseen test classes (glyphs), each run's checkpoint selected on held-out training "
        f"classes ({selection}); test classes used only for this table:"
    )
    _out(metric_table(results, headline_keys()))
    write_json(Path(args.out) / "comparison.json", results)
    report_path: Path | None = None
    if not args.no_report:
        from tcm.report import ReportRun, write_report

        runs = []
        for name, npz in report_runs:
            f = _load_source(npz)
            best = {k: v for k, v in results[name].items() if k in headline_keys()}
            runs.append(
                ReportRun(name, f.embeddings, _labels(f), metrics=best, class_names=f.class_names)
            )
        report_path = write_report(Path(args.out) / "report", runs)
    if report_path is not None:
        _out(f"\nreport: {report_path}")
    _out(f"[demo] total {time.monotonic() - t0:.0f} s")
    return EXIT_OK


# ----------------------------------------------------------------------------- parser


def _add_progress_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        action="store_true",
        help="progress bars with ETA on stderr even when it is not a terminal (default: only "
        "on a terminal; rank 0 under torchrun)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_dist_timeout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dist-timeout",
        type=float,
        metavar="SECONDS",
        help="under torchrun: fail when the other ranks do not answer within SECONDS "
        "(default: $TCM_DIST_TIMEOUT or 300)",
    )


def _add_ci_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ci",
        type=float,
        metavar="LEVEL",
        help="class-bootstrap intervals, LEVEL in (0, 1), e.g. 0.95",
    )
    p.add_argument(
        "--n-boot",
        type=int,
        metavar="N",
        help=f"with --ci: bootstrap resamples (default {N_BOOT_DEFAULT})",
    )


def _add_pass_args(p: argparse.ArgumentParser, *, json_help: str) -> None:
    """The options of the commands that make pair passes (evaluate, calibrate): intervals,
    process-group timeout, progress bars, the scorer, and ``--json``."""
    _add_ci_args(p)
    _add_dist_timeout_arg(p)
    _add_progress_args(p)
    add_scorer_args(p)
    p.add_argument("--json", metavar="OUT.json", help=json_help)


def _add_train_parser(sub: Any) -> None:
    """Register ``tcm train``."""
    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("--config", help="YAML config (see configs/); default: built-in defaults")
    t.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-4"
    )
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt")
    t.add_argument(
        "--force",
        action="store_true",
        help="with --resume: continue even if seed / data / model / loss / optimiser changed",
    )
    t.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    t.add_argument(
        "--pretrained",
        metavar="PATH",
        help="local backbone state dict / checkpoint (= model.pretrained=PATH; 'imagenet' for "
        "efficientnet_lite0)",
    )
    t.set_defaults(func=_cmd_train)


def _add_evaluate_parser(sub: Any) -> None:
    """Register ``tcm evaluate``."""
    e = sub.add_parser("evaluate", help="Recall@k, MAP@R, R-precision, OPIS, eps-OPIS, TAR@FAR")
    e.add_argument("source", metavar="CHECKPOINT|EMBEDDINGS.npz|RUN_DIR")
    _add_source_args(e, data_help="dataset to embed (checkpoints; default: the training dataset)")
    e.add_argument(
        "--far-range",
        nargs=2,
        type=float,
        default=[1e-2, 1e-1],
        metavar=("LO", "HI"),
        help="OPIS calibration range of global FAR (default 1e-2 1e-1)",
    )
    e.add_argument(
        "--groups",
        action="store_true",
        help="per-group FAR/FRR, cross-group matrices and summaries (needs per-sample groups)",
    )
    _add_pass_args(e, json_help="also write the metrics as JSON")
    e.set_defaults(func=_cmd_evaluate)


def _add_calibrate_parser(sub: Any) -> None:
    """Register ``tcm calibrate``."""
    c = sub.add_parser("calibrate", help="choose one threshold; per-class FAR/FRR at it")
    c.add_argument("source", metavar="CHECKPOINT|EMBEDDINGS.npz|RUN_DIR")
    _add_source_args(c, data_help="dataset to embed (checkpoints; default: the training dataset)")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--far", type=float, help="target global FAR, e.g. 1e-3")
    g.add_argument("--max-utility", action="store_true", help="maximise the mean per-class utility")
    c.add_argument(
        "--search-range",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        help="with --max-utility: global-FAR range searched (default 1e-4 0.5)",
    )
    c.add_argument(
        "--num-thresholds",
        type=int,
        help=f"with --max-utility: grid size, >= 2 (default {NUM_THRESHOLDS_DEFAULT})",
    )
    c.add_argument(
        "--top",
        type=int,
        help=f"number of worst classes to list, >= 0 (default {TOP_DEFAULT}; not with --on)",
    )
    c.add_argument(
        "--on",
        metavar="TARGET",
        help="evaluate the threshold calibrated on SOURCE (--far) on another set (transfer)",
    )
    c.add_argument(
        "--source-group",
        action="append",
        metavar="NAME",
        help="calibrate on these groups of SOURCE only (repeatable)",
    )
    c.add_argument(
        "--target-group",
        action="append",
        metavar="NAME",
        help="with --on: evaluate on these groups of TARGET only (repeatable)",
    )
    _add_pass_args(c, json_help="also write the result as JSON")
    from tcm.cli import deploy as _deploy

    _deploy.add_calibrate_args(c)
    c.set_defaults(func=_cmd_calibrate)


def _add_embed_parser(sub: Any) -> None:
    """Register ``tcm embed``."""
    m = sub.add_parser("embed", help="write embeddings + labels (+ class names) of a dataset")
    m.add_argument("checkpoint", metavar="CHECKPOINT")
    _add_source_args(m, data_help="dataset to embed (default: the training dataset)")
    m.add_argument("--out", required=True, help="output .npz or .safetensors")
    _add_progress_args(m)
    m.set_defaults(func=_cmd_embed)


def _add_report_parser(sub: Any) -> None:
    """Register ``tcm report``."""
    r = sub.add_parser("report", help="HTML report over one or more runs")
    r.add_argument("sources", nargs="+", metavar="RUN_DIR|EMBEDDINGS.npz|CHECKPOINT")
    _add_source_args(r, data_help="dataset to embed for checkpoint sources")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument(
        "--threshold", type=float, help="deployment threshold (default: per run at FAR 1e-3)"
    )
    r.add_argument(
        "--groups",
        action="store_true",
        help="per-group FAR heatmap and table from the sources' per-sample groups",
    )
    _add_ci_args(r)
    r.add_argument(
        "--transfer",
        action="append",
        metavar="SRC_NAME:TGT_NAME",
        help="calibration-transfer row: threshold of FAR 1e-3 on run SRC applied to run TGT "
        "(run name = file stem or directory name; repeatable; with --scorer also between the "
        "normalised runs)",
    )
    add_scorer_args(r)
    r.set_defaults(func=_cmd_report)


def _add_demo_parser(sub: Any) -> None:
    """Register ``tcm demo``."""
    d = sub.add_parser("demo", help="glyphs: base loss vs base loss + TCM, table + report")
    d.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    d.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for both runs")
    d.add_argument("--no-report", action="store_true", help="skip the HTML report")
    d.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``tcm`` command (subcommands: see docs/cli.md)."""
    p = argparse.ArgumentParser(
        prog="tcm",
        description="Threshold-consistent deep metric learning: train, evaluate, calibrate, "
        "embed, report. Embeddings are L2-normalised; similarity = cosine; accept if >= threshold.",
    )
    p.add_argument("--version", action="version", version=f"tcm {tcm.__version__}")
    p.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (any command)"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_calibrate_parser(sub)
    _add_embed_parser(sub)
    _add_report_parser(sub)
    _add_demo_parser(sub)
    from tcm.cli import verify as _verify

    _verify.add_parser(sub)
    from tcm.cli import deploy as _deploy

    _deploy.add_parsers(sub)
    return p


# ----------------------------------------------------------------------------- option checks

_SOURCE_OPTIONS = (
    ("--data", "data"),
    ("--root", "root"),
    ("--split", "split"),
    ("--batch-size", "batch_size"),
    ("--device", "device"),
)


def _check_fraction(value: float | None, option: str) -> None:
    if value is not None and not 0 < value < 1:  # NaN fails too
        raise ValueError(f"{option} must lie in (0, 1); got {value}")


def _check_at_least(value: int | None, option: str, minimum: int) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{option} must be >= {minimum}; got {value}")


def _check_far_range(pair: Sequence[float], option: str) -> None:
    lo, hi = pair
    if not 0 < lo < hi < 1:
        raise ValueError(f"{option} LO HI must satisfy 0 < LO < HI < 1; got {lo:g} {hi:g}")


def _check_output_file(path: str, option: str, suffixes: Sequence[str]) -> None:
    """An output file ``path`` can be written: the right suffix, not a directory, an existing
    writable folder (checked before any work; the file itself is written atomically)."""
    p = Path(path)
    if p.suffix not in suffixes:
        raise ValueError(f"{option} {path!r}: expected a {' or '.join(suffixes)} file name")
    if p.is_dir():
        raise ValueError(f"{option} {path!r} is a directory, not a file")
    parent = p.parent
    if not parent.exists():
        raise ValueError(f"{option} {path!r}: folder {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise ValueError(f"{option} {path!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path!r}: folder {str(parent)!r} is not writable")


def _check_output_dir(path: str, option: str) -> None:
    """An output directory ``path`` can be created or written (nothing is created here)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option} {path!r} is a file, not a folder")
    existing = next(q for q in (p, *p.parents) if q.exists())
    if not existing.is_dir():
        raise ValueError(f"{option} {path!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path!r}: folder {str(existing)!r} is not writable")


def _sources(args: argparse.Namespace) -> list[str]:
    """The SOURCEs of a command whose ``--data ... --device`` options embed checkpoints."""
    if args.command == "report":
        return list(args.sources)
    if args.command == "calibrate" and args.on is not None:
        return [args.source, args.on]
    return [args.source] if args.command in ("evaluate", "calibrate") else [args.checkpoint]


def _check_options(args: argparse.Namespace) -> None:
    """Refuse, before anything is loaded, every bad option value, every option that would have
    no effect (it only matters with another option or input) and every unusable output path;
    then fill in the defaults of the options parsed as ``None`` (so that "given" is known).

    Raises:
        ValueError: naming the option (exit code 2).
    """
    cmd = args.command
    if cmd == "train" and args.force and not args.resume:
        raise ValueError("--force only applies with --resume (resume despite a changed recipe)")
    if hasattr(args, "batch_size"):
        sources = _sources(args)
        if cmd != "embed" and not any(_is_checkpoint(src) for src in sources):
            for option, attr in _SOURCE_OPTIONS:
                if getattr(args, attr) is not None:
                    what = "is an embeddings file" if len(sources) == 1 else "are embeddings files"
                    raise ValueError(
                        f"{option} only applies to checkpoint sources (embedded on the fly); "
                        f"{', '.join(map(repr, sources))} {what}"
                    )
        _check_at_least(args.batch_size, "--batch-size", 1)
        for attr, default in SOURCE_DEFAULTS.items():
            if getattr(args, attr) is None:
                setattr(args, attr, default)
    if hasattr(args, "n_boot"):
        _check_fraction(args.ci, "--ci")
        if args.n_boot is not None and args.ci is None:
            raise ValueError("--n-boot N only applies with --ci LEVEL (the bootstrap intervals)")
        _check_at_least(args.n_boot, "--n-boot", 1)
        args.n_boot = N_BOOT_DEFAULT if args.n_boot is None else args.n_boot
    if cmd == "evaluate":
        _check_far_range(args.far_range, "--far-range")
    elif cmd == "calibrate":
        _check_calibrate(args)
    elif cmd == "verify":
        for far in args.far or ():
            _check_fraction(far, "--far")
    elif cmd in ("match", "monitor"):
        from tcm.cli import deploy as _deploy

        (_deploy.check_match_args if cmd == "match" else _deploy.check_monitor_args)(args)
    elif cmd == "embed":
        _check_output_file(args.out, "--out", EMBEDDING_SUFFIXES)
    elif cmd == "report":
        t = args.threshold
        if t is not None and not -1 <= t <= 1:  # NaN fails too
            raise ValueError(f"--threshold must be a cosine similarity in [-1, 1]; got {t}")
        if t is not None and args.scorer not in (None, "cosine"):
            raise ValueError(
                f"--threshold is a cosine similarity; --scorer {args.scorer} scores are on "
                "another scale: drop --threshold (each run is calibrated for FAR 1e-3)"
            )
        names = _run_names(args.sources)
        for spec in args.transfer or ():
            _split_transfer(spec, names)
        _check_output_dir(args.out, "--out")
    if hasattr(args, "scorer_file"):
        check_scorer_options(args)
    if getattr(args, "json", None):
        _check_output_file(args.json, "--json", (".json",))


def _check_calibrate(args: argparse.Namespace) -> None:
    """:func:`_check_options` of ``tcm calibrate``."""
    if args.far is None and not args.max_utility:
        raise ValueError("choose a target: --far F (e.g. 1e-3) or --max-utility")
    _check_fraction(args.far, "--far")
    _check_at_least(args.top, "--top", 0)
    if args.on is not None:
        if args.far is None:
            raise ValueError("--on TARGET needs --far F (the threshold is calibrated on SOURCE)")
        if args.top is not None:
            raise ValueError(
                "--top lists the worst classes of a calibration without --on; with --on TARGET "
                "the target's per-class FAR is summarised instead"
            )
    elif args.target_group:
        raise ValueError("--target-group needs --on TARGET (without --on there is no target)")
    for option, attr in (
        ("--search-range", "search_range"),
        ("--num-thresholds", "num_thresholds"),
    ):
        if getattr(args, attr) is not None and not args.max_utility:
            raise ValueError(f"{option} only applies with --max-utility (the searched grid)")
    if args.search_range is not None:
        _check_far_range(args.search_range, "--search-range")
    if args.num_thresholds is not None:
        from tcm.metrics._checks import check_num_thresholds

        check_num_thresholds(args.num_thresholds, "--num-thresholds")
    from tcm.cli.deploy import check_calibrate_args

    check_calibrate_args(args)
    args.top = TOP_DEFAULT if args.top is None else args.top
    args.search_range = SEARCH_RANGE_DEFAULT if args.search_range is None else args.search_range
    if args.num_thresholds is None:
        args.num_thresholds = NUM_THRESHOLDS_DEFAULT


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, ValueError | OSError):
        text = f"{type(exc).__name__}: {text}"
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text} ({exc.filename})"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tcm`` console script; returns the exit code.

    Exit codes: 0 ok; 1 training diverged; 2 any other error (bad config, data, file, output
    path, option value or an option without effect, checkpoint, ...): one
    ``tcm COMMAND: error: ...`` message on stderr (control characters escaped), plus the
    traceback with ``--debug``; 130 Ctrl-C; 141 standard output closed by its reader (files
    written before are complete); 143 SIGTERM.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    joined = False
    try:
        _check_options(args)
        if args.command in ("evaluate", "calibrate"):
            joined = _init_distributed(args.dist_timeout)
        code: int = args.func(args)
        if joined:
            _leave_distributed(clean=True)
            joined = False
    except KeyboardInterrupt:
        print(f"tcm {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StdoutClosed:
        _silence_stdout()
        return EXIT_STDOUT_CLOSED
    except Exception as exc:
        from tcm.train.step import TrainingDivergedError

        if debug:
            import traceback

            traceback.print_exc()
        text = console_text(_one_line(exc), keep_newlines=True)
        print(f"tcm {args.command}: error: {text}", file=sys.stderr)
        if isinstance(exc, TrainingDivergedError):
            return EXIT_DIVERGED
        return EXIT_BAD_INPUT
    finally:
        if joined:
            _leave_distributed(clean=False)
    return code


def _silence_stdout() -> None:
    """After the reader of stdout went away: point the stdout descriptor at ``os.devnull`` so
    that the interpreter's final flush of the buffered text does not fail again (the recipe of
    the Python docs, "Note on SIGPIPE"). Only for the process's own stdout (not in tests that
    replaced ``sys.stdout``)."""
    if sys.stdout is not sys.__stdout__ or sys.stdout is None:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
