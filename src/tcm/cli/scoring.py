"""``--scorer`` options of ``tcm evaluate | calibrate | verify``: post-hoc score normalisation.

The options (docs/cli.md, "Scores"; the scorers: docs/scoring.md):

* ``--scorer NAME``: ``cosine`` (the default without the option), ``snorm`` / ``asnorm``
  (fitted on ``--cohort FILE``, an embeddings file; labels optional), ``fsn`` / ``faircal`` /
  ``platt`` / ``beta`` / ``isotonic`` (fitted on ``--fit-on FILE``, a labelled embeddings file);
* ``--top-k K`` (asnorm, default 300), ``--clusters K`` (fsn / faircal, default 100),
  ``--scorer-far F`` (fsn, default 1e-3);
* ``--scorer-file S.safetensors``: a scorer saved before (no fitting options with it);
  ``--save-scorer OUT.safetensors``: save the scorer fitted here.

Work happens in three steps so that bad input is found as early as possible:
:func:`check_scorer_options` (with the command's other option checks, nothing read),
:func:`load_scorer_inputs` (reads the cohort / fit / scorer file before the evaluated set is
loaded or embedded), and :meth:`ScorerInputs.build` (after the evaluated set is loaded: the
class-overlap and dimension checks, then the fit).

A cohort / fit set must not share classes with the evaluated set(s): when both files have
``class_names`` a shared name is an error; when either lacks them the overlap cannot be checked
and a warning says so (label codes of two files are not comparable). The same file as an
evaluated one is always refused.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tcm._io import file_sha256

if TYPE_CHECKING:
    from tcm.data.embedding_file import EmbeddingFile
    from tcm.scoring import Scorer

__all__ = [
    "COHORT_SCORERS",
    "LABELLED_SCORERS",
    "SCORERS",
    "ScorerInputs",
    "add_scorer_args",
    "check_scorer_options",
    "load_scorer_inputs",
    "pair_scores",
]

#: Scorers fitted on a cohort (``--cohort``; labels not needed).
COHORT_SCORERS = ("snorm", "asnorm")
#: Scorers fitted on a labelled calibration set (``--fit-on``).
LABELLED_SCORERS = ("fsn", "faircal", "platt", "beta", "isotonic")
#: Scorers that need positive (same-class) pairs in their fit set.
_NEED_POSITIVES = ("faircal", "platt", "beta", "isotonic")
SCORERS = ("cosine", *COHORT_SCORERS, *LABELLED_SCORERS)
TOP_K_DEFAULT = 300
CLUSTERS_DEFAULT = 100
SCORER_FAR_DEFAULT = 1e-3

#: ``(option, attribute, scorers it applies to)`` of the hyper-parameter options.
_PARAM_OPTIONS = (
    ("--top-k", "top_k", ("asnorm",)),
    ("--clusters", "clusters", ("fsn", "faircal")),
    ("--scorer-far", "scorer_far", ("fsn",)),
)


def add_scorer_args(p: argparse.ArgumentParser) -> None:
    """Add ``--scorer --top-k --clusters --scorer-far --cohort --fit-on --scorer-file
    --save-scorer`` to a command's parser (defaults ``None``: an option given is known)."""
    g = p.add_argument_group("scores (post-hoc normalisation / calibration; docs/scoring.md)")
    g.add_argument(
        "--scorer",
        choices=SCORERS,
        help="score pairs with this scorer instead of the cosine: snorm/asnorm fitted on "
        "--cohort, fsn/faircal/platt/beta/isotonic on --fit-on",
    )
    g.add_argument("--top-k", type=int, metavar="K", help="asnorm: cohort top-k (default 300)")
    g.add_argument(
        "--clusters", type=int, metavar="K", help="fsn/faircal: k-means clusters (default 100)"
    )
    g.add_argument(
        "--scorer-far",
        type=float,
        metavar="F",
        help="fsn: FAR of the per-cluster thresholds (default 1e-3)",
    )
    g.add_argument(
        "--cohort",
        metavar="FILE",
        help="snorm/asnorm: cohort embeddings file, classes disjoint from the evaluated ones",
    )
    g.add_argument(
        "--fit-on",
        metavar="FILE",
        help="fsn/faircal/platt/beta/isotonic: labelled embeddings file to fit on, classes "
        "disjoint from the evaluated ones",
    )
    g.add_argument(
        "--scorer-file",
        metavar="S.safetensors",
        help="use a scorer fitted and saved before (--save-scorer); no fitting options",
    )
    g.add_argument(
        "--save-scorer", metavar="OUT.safetensors", help="also save the scorer fitted here"
    )


def check_scorer_options(args: argparse.Namespace) -> None:
    """Refuse bad values and options without effect (nothing is read; part of
    ``tcm.cli.main._check_options``).

    Raises:
        ValueError: naming the option (exit code 2).
    """
    from tcm.cli.main import _check_at_least, _check_fraction, _check_output_file

    kind = args.scorer
    fitting = [
        (opt, attr)
        for opt, attr in (
            ("--scorer", "scorer"),
            ("--cohort", "cohort"),
            ("--fit-on", "fit_on"),
            ("--top-k", "top_k"),
            ("--clusters", "clusters"),
            ("--scorer-far", "scorer_far"),
            ("--save-scorer", "save_scorer"),
        )
        if getattr(args, attr) is not None
    ]
    if args.scorer_file is not None:
        if fitting:
            raise ValueError(
                f"--scorer-file uses a scorer fitted before; {fitting[0][0]} (a fitting option) "
                "does not apply with it"
            )
        return
    for option, attr, kinds in _PARAM_OPTIONS:
        if getattr(args, attr) is not None and kind not in kinds:
            with_ = " or ".join(f"--scorer {k}" for k in kinds)
            raise ValueError(f"{option} only applies with {with_}")
    if kind is None:
        for option, attr in (("--cohort", "cohort"), ("--fit-on", "fit_on")):
            if getattr(args, attr) is not None:
                raise ValueError(f"{option} only applies with --scorer NAME (the scorer it fits)")
        if args.save_scorer is not None:
            raise ValueError("--save-scorer only applies with --scorer NAME (the scorer fitted)")
        return
    if kind in COHORT_SCORERS:
        if args.fit_on is not None:
            raise ValueError(
                f"--scorer {kind} is fitted on a cohort: pass --cohort FILE, not --fit-on"
            )
        if args.cohort is None:
            raise ValueError(f"--scorer {kind} needs --cohort FILE (a cohort embeddings file)")
    elif kind in LABELLED_SCORERS:
        if args.cohort is not None:
            raise ValueError(
                f"--scorer {kind} needs labels: pass --fit-on FILE (a labelled embeddings file), "
                "not --cohort"
            )
        if args.fit_on is None:
            raise ValueError(f"--scorer {kind} needs --fit-on FILE (a labelled embeddings file)")
    else:  # cosine
        for option, attr in (("--cohort", "cohort"), ("--fit-on", "fit_on")):
            if getattr(args, attr) is not None:
                raise ValueError(f"{option} does not apply with --scorer cosine (nothing to fit)")
    _check_at_least(args.top_k, "--top-k", 1)
    _check_at_least(args.clusters, "--clusters", 1)
    _check_fraction(args.scorer_far, "--scorer-far")
    if args.save_scorer is not None:
        _check_output_file(args.save_scorer, "--save-scorer", (".safetensors",))


@dataclass
class ScorerInputs:
    """What :func:`load_scorer_inputs` read: the scorer kind and hyper-parameters, the fit file
    (cohort or labelled set) or the saved scorer. :meth:`build` gives the fitted scorer."""

    kind: str | None
    option: str | None = None
    fit_path: str | None = None
    fit_file: EmbeddingFile | None = None
    loaded: Scorer | None = None
    scorer_file: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    scorer: Scorer | None = None

    def build(
        self,
        evaluated: Sequence[tuple[str, EmbeddingFile]],
        warn: Callable[[str], None],
        save: str | None = None,
    ) -> Scorer | None:
        """The fitted scorer (None without ``--scorer`` / ``--scorer-file``), after checking it
        against the ``(name, file)`` evaluated sets: same dimension, and a fit set that shares
        no class with them (see the module doc); ``save``: write it there (``--save-scorer``).

        Raises:
            ValueError: another dimension, a shared class or the same file, a fit error.
        """
        if self.loaded is not None:
            for name, f in evaluated:
                try:
                    self.loaded.check_compatible(int(f.embeddings.shape[1]))
                except ValueError as exc:
                    raise ValueError(f"--scorer-file {self.scorer_file}: {exc} ({name})") from None
            self.scorer = self.loaded
            return self.scorer
        if self.kind is None:
            return None
        from tcm import scoring

        fit = self.fit_file
        if fit is not None:
            self._check_disjoint(evaluated, warn)
        if self.kind == "cosine":
            scorer: Scorer = scoring.Cosine()
        elif self.kind in COHORT_SCORERS:
            assert fit is not None
            scorer = scoring.ASNorm(self.params["top_k"]).fit(fit.embeddings)
        else:
            assert fit is not None and fit.labels is not None
            cls = {
                "fsn": scoring.FSN,
                "faircal": scoring.FairCal,
                "platt": scoring.Platt,
                "beta": scoring.Beta,
                "isotonic": scoring.Isotonic,
            }[self.kind]
            kw = {k: v for k, v in self.params.items() if k in ("n_clusters", "far")}
            scorer = cls(**kw).fit(fit.embeddings, fit.labels)
        if save is not None:
            from tcm._distributed import rank

            if rank() == 0:  # under torchrun every rank fits the same scorer; one writes it
                scorer.save(save)
        self.scorer = scorer
        return scorer

    def _check_disjoint(
        self, evaluated: Sequence[tuple[str, EmbeddingFile]], warn: Callable[[str], None]
    ) -> None:
        fit = self.fit_file
        assert fit is not None
        what = f"{self.option} {self.fit_path}"
        dim = int(fit.embeddings.shape[1])
        for name, f in evaluated:
            d = int(f.embeddings.shape[1])
            if d != dim:
                raise ValueError(
                    f"{what} has {dim}-dimensional embeddings; the evaluated set {name!r} has {d}"
                )
            if Path(f.path).resolve() == Path(fit.path).resolve():
                raise ValueError(
                    f"{what} is the evaluated set {name!r}: fit on classes disjoint from the "
                    "evaluated ones (e.g. the training classes)"
                )
            if fit.class_names is None or f.class_names is None:
                missing = self.fit_path if fit.class_names is None else name
                warn(
                    f"cannot check that {what} shares no class with {name!r}: {missing!r} has "
                    "no class_names"
                )
                continue
            shared = sorted(set(fit.class_names) & set(f.class_names))
            if shared:
                raise ValueError(
                    f"{what} shares {len(shared)} class(es) with the evaluated set {name!r} "
                    f"(e.g. {shared[0]!r}); fit on classes disjoint from the evaluated ones"
                )

    def scale_label(self) -> str:
        """:func:`tcm.metrics.results.scale_label` of the scorer built (cosine without one)."""
        from tcm.metrics.results import scale_label

        return scale_label("cosine" if self.scorer is None else self.scorer.score_scale)

    def describe(self) -> list[str]:
        """Console lines naming the scorer used (none without ``--scorer`` / ``--scorer-file``,
        so plain-cosine output stays as it was)."""
        s = self.scorer
        if s is None:
            return []
        params = ", ".join(f"{k}={v}" for k, v in s.params().items())
        src = (
            f"loaded from {self.scorer_file}"
            if self.scorer_file is not None
            else f"fitted on {self.option} {self.fit_path}"
            if self.fit_path is not None
            else "no fit"
        )
        return [
            f"scores: {s.kind}({params}), {src}; thresholds on the {s.score_scale} scale "
            "(accept if >=)"
        ]

    def json(self) -> dict[str, Any]:
        """``{"scorer": record()}``, or ``{}`` without a scorer (cosine JSON unchanged)."""
        rec = self.record()
        return {} if rec is None else {"scorer": rec}

    def record(self) -> dict[str, Any] | None:
        """The JSON record of the scorer used: kind, params, score_scale, convention, and where
        it came from (fit file and its SHA-256, or the scorer file); None without a scorer."""
        s = self.scorer
        if s is None:
            return None
        out: dict[str, Any] = {
            "kind": s.kind,
            "params": s.params(),
            "score_scale": s.score_scale,
            "convention": s.convention,
            "fitted_on_sha256": s.fitted_on_sha256,
        }
        if self.scorer_file is not None:
            out["scorer_file"] = self.scorer_file
            out["scorer_file_sha256"] = file_sha256(self.scorer_file)
        if self.fit_path is not None:
            out["fit_option"] = self.option
            out["fit_file"] = self.fit_path
            out["fit_file_sha256"] = file_sha256(self.fit_path)
        return out


def pair_scores(
    scorer: Scorer, embeddings: np.ndarray, ia: np.ndarray, ib: np.ndarray, chunk: int = 512
) -> np.ndarray:
    """Scores of the listed pairs ``(embeddings[ia[p]], embeddings[ib[p]])`` (float64): the
    per-sample state of the samples used is prepared once, then each chunk of pairs is scored as
    the diagonal of its ``(chunk, chunk)`` block (``score_block`` is elementwise)."""
    import torch

    from tcm.scoring.base import normalized

    used, inv = np.unique(np.concatenate([ia, ib]), return_inverse=True)
    pa, pb = inv[: ia.shape[0]], inv[ia.shape[0] :]
    x = normalized(embeddings[used]).to(torch.float64)
    state = scorer.prepare(x)
    out = np.empty(ia.shape[0], dtype=np.float64)
    for s in range(0, ia.shape[0], chunk):
        a, b = pa[s : s + chunk], pb[s : s + chunk]
        cos = x[torch.from_numpy(a)] @ x[torch.from_numpy(b)].T
        block = scorer.score_block(cos, state[a], state[b])
        out[s : s + chunk] = torch.diagonal(block).numpy()
    return out


def load_scorer_inputs(args: argparse.Namespace) -> ScorerInputs:
    """Read ``--cohort`` / ``--fit-on`` / ``--scorer-file`` (before the evaluated set is loaded)
    and check what can be checked without it: a cohort not smaller than ``--top-k``, a fit set
    with the pairs its scorer needs, a readable scorer file.

    Raises:
        ValueError: an unreadable file, a too small cohort, no positive / negative pairs.
    """
    from tcm.cli.main import _load_source

    if args.scorer_file is not None:
        from tcm.scoring import load_scorer

        if not Path(args.scorer_file).is_file():
            raise ValueError(f"--scorer-file: file not found: {args.scorer_file}")
        scorer = load_scorer(args.scorer_file)
        if scorer.uses_groups:
            raise ValueError(
                f"--scorer-file {args.scorer_file}: a {scorer.kind} scorer needs per-sample "
                "groups, which the CLI does not pass"
            )
        return ScorerInputs(scorer.kind, loaded=scorer, scorer_file=args.scorer_file)
    kind = args.scorer
    if kind is None:
        return ScorerInputs(None)
    params: dict[str, Any] = {}
    if kind == "cosine":
        return ScorerInputs(kind)
    if kind in COHORT_SCORERS:
        option, path = "--cohort", args.cohort
        params["top_k"] = None if kind == "snorm" else (args.top_k or TOP_K_DEFAULT)
    else:
        option, path = "--fit-on", args.fit_on
        if kind in ("fsn", "faircal"):
            params["n_clusters"] = args.clusters or CLUSTERS_DEFAULT
        if kind == "fsn":
            params["far"] = SCORER_FAR_DEFAULT if args.scorer_far is None else args.scorer_far
    if not Path(path).is_file():
        raise ValueError(f"{option}: file not found: {path}")
    try:
        f = _load_source(path, labels=kind in LABELLED_SCORERS)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None
    n = int(f.embeddings.shape[0]) if f.embeddings.ndim == 2 else 0
    k = params.get("top_k")
    if k is not None and n < k:
        raise ValueError(
            f"{option} {path} has {n} samples, fewer than --top-k {k}; pass a smaller --top-k "
            "or a larger cohort"
        )
    if kind in LABELLED_SCORERS:
        assert f.labels is not None
        _, counts = np.unique(np.asarray(f.labels), return_counts=True)
        if kind in _NEED_POSITIVES and not (counts >= 2).any():
            raise ValueError(
                f"{option} {path} has no positive pairs (no class with 2 or more samples); "
                f"--scorer {kind} needs same-class pairs"
            )
        if counts.size < 2:
            raise ValueError(
                f"{option} {path} has no negative pairs (one class only); --scorer {kind} needs "
                "pairs of different classes"
            )
        c = params.get("n_clusters")
        if c is not None and c > n:
            raise ValueError(f"--clusters {c} is more than the {n} samples of {option} {path}")
    return ScorerInputs(kind, option=option, fit_path=path, fit_file=f, params=params)
