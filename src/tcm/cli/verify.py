"""``tcm verify EMB --pairs FILE [--json OUT]``: 1:1 verification on a pair list.

``EMB`` is an embeddings file (``.npz`` / ``.safetensors``, as written by ``tcm embed``) with
``embeddings`` and ``ids``; ``FILE`` is an LFW ``pairs.txt`` (ids ``name/name_%04d.jpg``) or a CSV
``a,b,same[,fold]`` (:mod:`tcm.data.pairs`). Prints TAR@FAR (FAR 1e-4 .. 1e-1, the threshold being
the exact impostor-similarity quantile), the EER and, for lists with at least 2 folds, the
cross-validated accuracy (LFW rule; a one-fold list such as ``pairsDevTrain.txt`` gets TAR@FAR
and EER, and the accuracy row and the JSON's ``accuracy_note`` say why it is absent);
``--json`` writes :meth:`tcm.metrics.Verification.to_dict` atomically, as strict JSON
(:func:`tcm._io.json_value`: NaN -> null, inf -> "inf").
Bad input (unknown id, malformed line, ...) exits with status 2 and one ``error:`` line.

Example:
    >>> from tcm.cli.main import main
    >>> main(["verify", "emb.npz", "--pairs", "pairs.txt", "--json", "v.json"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tcm.cli.scoring import ScorerInputs, add_scorer_args

__all__ = ["add_parser", "format_table", "run_verify"]


def run_verify(
    embeddings: str | Path,
    pairs: str | Path,
    fars: tuple[float, ...] | None = None,
    scoring: ScorerInputs | None = None,
    warn: Callable[[str], None] | None = None,
    save_scorer: str | None = None,
) -> dict[str, Any]:
    """Load ``embeddings`` and ``pairs``, resolve the ids and compute the verification metrics.

    ``scoring`` (:func:`tcm.cli.scoring.load_scorer_inputs`): score the pairs with that scorer
    (built against the embeddings file; ``warn`` gets its warnings, ``save_scorer`` the path to
    save it to) instead of the cosine; thresholds are then on its score scale.

    Returns ``Verification.to_dict()`` plus ``embeddings``, ``pairs`` (the paths), and
    ``num_pairs``, ``num_folds``; with a scorer also ``score_scale`` and ``scorer``.
    """
    from tcm.cli.main import _load_source
    from tcm.cli.scoring import pair_scores
    from tcm.data.pairs import read_pairs, resolve_pairs
    from tcm.metrics.verification import DEFAULT_VERIFICATION_FARS, verification

    f = _load_source(embeddings, labels=False)
    if f.ids is None:
        raise ValueError(
            f"{f.path} has no sample 'ids' (re-create it with `tcm embed`, which stores them, or "
            "add an (N,) string array 'ids')"
        )
    pl = read_pairs(pairs)
    ia, ib = resolve_pairs(pl, f.ids)
    emb = np.asarray(f.embeddings)
    scorer = None
    if scoring is not None:
        scorer = scoring.build([(str(embeddings), f)], warn or (lambda _: None), save_scorer)
    scores: Any = (emb[ia], emb[ib]) if scorer is None else pair_scores(scorer, emb, ia, ib)
    res = verification(
        scores,
        pl.same,
        folds=pl.folds,
        fars=DEFAULT_VERIFICATION_FARS if fars is None else fars,
    )
    out = {
        "embeddings": str(embeddings),
        "pairs": str(pairs),
        "num_pairs": len(pl),
        "num_folds": 0 if pl.folds is None else int(np.unique(pl.folds).size),
        **res.to_dict(),
    }
    if scorer is not None:
        out["score_scale"] = scorer.score_scale
        out.update(scoring.json() if scoring is not None else {})
    return out


def format_table(res: dict[str, Any]) -> str:
    """Human-readable table of :func:`run_verify`'s result."""
    lines = [
        f"pairs: {res['num_pairs']} ({res['num_genuine']} genuine, {res['num_impostor']} "
        f"impostor)" + (f", {res['num_folds']} folds" if res["num_folds"] else ""),
        "similarity = cosine; a pair is accepted when similarity >= threshold"
        if "scorer" not in res
        else f"score = {res['scorer']['kind']} ({res['score_scale']} scale); a pair is accepted "
        "when score >= threshold",
        "",
        f"{'metric':<22} {'value':>9} {'threshold':>10}",
        f"{'-' * 22} {'-' * 9} {'-' * 10}",
    ]
    coarse = False
    for key, tar in res["tar_at_far"].items():
        thr = res["thresholds_at_far"][key]
        mark = "*" if float(key) * res["num_impostor"] < 1 else ""
        coarse = coarse or bool(mark)
        name = f"TAR @ FAR {float(key):.0e}{mark}"
        lines.append(f"{name:<22} {tar:>9.4f} {thr:>10.4f}")
    lines.append(f"{'EER':<22} {res['eer']:>9.4f} {res['eer_threshold']:>10.4f}")
    acc = res.get("accuracy")
    if acc is not None:
        lines.append(
            f"{'accuracy (' + str(len(acc['folds'])) + '-fold)':<22} {acc['mean']:>9.4f} "
            f"{'':>10}  ± {acc['std']:.4f} (std), ± {acc['stderr']:.4f} (s.e.)"
        )
    elif res.get("accuracy_note"):
        lines.append(f"{'accuracy':<22} {'-':>9} {'':>10}  not computed: {res['accuracy_note']}")
    if coarse:
        lines.append(
            f"* FAR < 1 / {res['num_impostor']} impostor pairs: the threshold is interpolated "
            "between the two highest impostor similarities"
        )
    return "\n".join(lines)


def _cmd_verify(args: argparse.Namespace) -> int:
    from tcm._io import write_json
    from tcm.cli.main import _out, _warner, console_text
    from tcm.cli.scoring import load_scorer_inputs

    fars = tuple(args.far) if args.far else None
    sc = load_scorer_inputs(args)
    res = run_verify(args.embeddings, args.pairs, fars, sc, _warner(args), args.save_scorer)
    if args.json:  # the file first (strict JSON, atomic): a closed stdout cannot lose it
        write_json(args.json, res)
    _out(format_table(res))
    if args.json:
        _out(f"wrote {console_text(args.json)}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``verify`` on the ``tcm`` sub-command parsers; returns its parser."""
    v: argparse.ArgumentParser = subparsers.add_parser(
        "verify", help="1:1 verification on a pair list: TAR@FAR, EER, fold accuracy (>= 2 folds)"
    )
    v.add_argument("embeddings", metavar="EMB", help=".npz / .safetensors with embeddings + ids")
    v.add_argument(
        "--pairs",
        required=True,
        metavar="FILE",
        help="LFW pairs.txt (ids name/name_%%04d.jpg) or CSV a,b,same[,fold]",
    )
    v.add_argument("--json", metavar="OUT.json", help="also write the result as JSON")
    v.add_argument(
        "--far",
        type=float,
        nargs="+",
        metavar="F",
        help="target FARs for TAR@FAR (default 1e-4 1e-3 1e-2 1e-1)",
    )
    add_scorer_args(v)
    v.set_defaults(func=_cmd_verify)
    return v
