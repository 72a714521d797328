"""The threshold contract: one JSON file that says what a deployment threshold is and where it
came from (``tcm calibrate ... --save threshold.json``).

Fields (format ``tcm-threshold``, version 1):

* ``score``: how a pair is scored, ``{"kind": "cosine"}`` or a fitted scorer
  ``{"kind", "file", "sha256", "scale", "dimension", "params", "fitted_on_sha256"}`` (its
  :meth:`tcm.scoring.Scorer.save` file, :func:`scorer_score`); the threshold is then on that
  scorer's scale. A scorer file in the contract's folder (or below it) is written relative to
  that folder, so the two can move together; another one by its absolute path.
  :meth:`Threshold.load` resolves a relative ``file`` against the contract's folder;
  :meth:`Threshold.load_scorer` reads it back, verified by its SHA-256;
* ``comparison``: ``">="`` (a pair is accepted when ``score >= threshold``);
* ``threshold``, ``target_far``, ``method`` (``"point"``: the empirical FAR quantile;
  ``"upper_bound"``: the smallest threshold whose class-bootstrap upper FAR bound is
  ``<= target_far``, :mod:`tcm.deploy.guarantee`);
* ``far`` / ``tar`` at the threshold on the calibration set with ``far_interval`` /
  ``tar_interval`` (class bootstrap), and ``guarantee`` (both bounds, the TAR they cost);
* ``calibration``: ``num_samples``, ``num_classes``, ``num_groups``, ``groups``, ``sha256``
  (of the L2-normalised float32 embeddings and label codes), ``source``;
* ``dimension``, ``tcm_version``; ``reference``: score samples of the calibration set that
  :mod:`tcm.deploy.monitor` compares new data with;
* ``checksum``: SHA-256 of all other fields (canonical JSON): a hand-edited file is refused.

:meth:`Threshold.load` refuses a truncated, edited or incomplete file with one clear line;
:meth:`Threshold.check_applicable` refuses embeddings of another dimension or another scorer.

Example:
    >>> import tempfile, os
    >>> t = Threshold(threshold=0.5, target_far=1e-3, far=9e-4, tar=0.9, dimension=8)
    >>> p = t.save(os.path.join(tempfile.mkdtemp(), "threshold.json"))
    >>> Threshold.load(p).threshold
    0.5
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tcm._io import json_bytes, write_json

if TYPE_CHECKING:
    from tcm.scoring import Scorer

__all__ = [
    "COMPARISON",
    "FORMAT",
    "VERSION",
    "ContractError",
    "Threshold",
    "cosine_score",
    "read_scorer_file",
    "scorer_score",
]

FORMAT = "tcm-threshold"
VERSION = 1
COMPARISON = ">="
METHODS = ("point", "upper_bound")


class ContractError(ValueError):
    """A threshold contract that cannot be read or does not fit what it is applied to."""


def cosine_score() -> dict[str, Any]:
    """The ``score`` field of plain cosine similarity."""
    return {"kind": "cosine"}


def scorer_score(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``score`` field of a fitted scorer file (:meth:`tcm.scoring.Scorer.save`): its
    ``kind``, ``file`` (absolute path), ``sha256`` (of the file's bytes), ``scale``,
    ``dimension``, ``params`` and ``fitted_on_sha256``. A :class:`~tcm.scoring.Cosine` file (the
    identity) gives :func:`cosine_score`.

    Raises:
        ValueError: the file is missing or not a readable scorer.
    """
    return read_scorer_file(path)[1]


def read_scorer_file(path: str | os.PathLike[str]) -> tuple[Scorer | None, dict[str, Any]]:
    """The scorer in ``path`` (``None`` for a :class:`~tcm.scoring.Cosine` file) and its
    :func:`scorer_score` field, from one read of the file.

    Raises:
        ValueError: the file is missing or not a readable scorer.
    """
    from tcm._io import file_sha256
    from tcm.scoring import load_scorer

    p = Path(os.path.abspath(path))
    sha = file_sha256(p) if p.is_file() else ""  # the bytes hashed are the bytes loaded
    sc = load_scorer(p)
    if sc.kind == "cosine":
        return None, cosine_score()
    return sc, {
        "kind": sc.kind,
        "file": str(p),
        "sha256": sha,
        "scale": sc.score_scale,
        "dimension": sc.dim,
        "params": _plain(sc.params()),
        "fitted_on_sha256": sc.fitted_on_sha256,
    }


def _plain(value: Any) -> Any:
    """``value`` as it reads back from the contract's JSON (tuples become lists, ...)."""
    return json.loads(json_bytes(value))


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json_bytes(body, indent=0, sort_keys=True)).hexdigest()


@dataclass(frozen=True)
class Threshold:
    """A deployment threshold and its provenance (module docstring).

    Attributes:
        threshold: ``t``; a pair is accepted when ``score >= t``.
        target_far: the FAR the threshold was chosen for.
        far, tar: global FAR / TAR at ``t`` on the calibration set.
        dimension: embedding dimension ``D`` it applies to.
        method: ``"point"`` or ``"upper_bound"``.
        far_interval, tar_interval: ``{"lo", "hi", "ci", "method"}`` or empty.
        guarantee: the guaranteed-FAR report (:class:`tcm.deploy.guarantee.Guarantee`) or empty.
        calibration: size, classes, groups and content hash of the calibration set.
        score: ``{"kind": "cosine"}`` or the fitted scorer's kind / file / sha256 / scale.
        comparison: always ``">="``.
        reference: calibration score samples for the monitor.
        tcm_version: the tcm version that wrote it.
    """

    threshold: float
    target_far: float
    far: float
    tar: float
    dimension: int
    method: str = "point"
    far_interval: dict[str, Any] = field(default_factory=dict)
    tar_interval: dict[str, Any] = field(default_factory=dict)
    guarantee: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    score: dict[str, Any] = field(default_factory=cosine_score)
    comparison: str = COMPARISON
    reference: dict[str, Any] = field(default_factory=dict)
    tcm_version: str = ""

    def __post_init__(self) -> None:
        _validate(asdict(self), "Threshold")
        if not self.tcm_version:
            import tcm

            object.__setattr__(self, "tcm_version", tcm.__version__)

    # ------------------------------------------------------------------ files

    def to_dict(self, base: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The file's JSON object (with ``format``, ``version`` and ``checksum``); ``base``: the
        folder of the file, against which a scorer file in it (or below) is made relative."""
        raw = {"format": FORMAT, "version": VERSION, **asdict(self)}
        if base is not None and isinstance(raw["score"].get("file"), str):
            raw["score"]["file"] = _relative_file(raw["score"]["file"], base)
        body: dict[str, Any] = json.loads(json_bytes(raw))  # the exact values the file will hold
        body["checksum"] = _checksum(body)
        return body

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the contract atomically as strict JSON; returns the path."""
        return write_json(path, self.to_dict(base=Path(os.path.abspath(path)).parent))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Threshold:
        """Read and verify a contract written by :meth:`save`.

        Raises:
            ContractError: missing / unreadable file, not JSON (e.g. truncated), another
                format or version, a checksum that does not match (edited by hand), a missing
                or ill-typed field.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ContractError(f"threshold contract not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ContractError(f"cannot read threshold contract {p}: {exc}") from exc
        try:
            obj = json.loads(text, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise ContractError(
                f"{p} is not a valid threshold contract (not strict, complete JSON: {exc}); it "
                "may be truncated or edited - write it again with `tcm calibrate ... --save`"
            ) from exc
        return cls.from_dict(obj, str(p), base=p.parent)

    @classmethod
    def from_dict(
        cls,
        obj: Any,
        where: str = "threshold contract",
        base: str | os.PathLike[str] | None = None,
    ) -> Threshold:
        """Verify and build from a :meth:`to_dict` object (see :meth:`load`); a relative scorer
        ``file`` is resolved against ``base`` (the contract's folder; default: the current
        directory)."""
        if not isinstance(obj, dict):
            raise ContractError(f"{where}: expected a JSON object")
        if obj.get("format") != FORMAT:
            raise ContractError(
                f"{where}: not a tcm threshold contract (format {obj.get('format')!r}, expected "
                f"{FORMAT!r})"
            )
        if obj.get("version") != VERSION:
            raise ContractError(
                f"{where}: contract version {obj.get('version')!r} is not supported (this tcm "
                f"reads version {VERSION})"
            )
        body = {k: v for k, v in obj.items() if k != "checksum"}
        if obj.get("checksum") != _checksum(body):
            raise ContractError(
                f"{where}: checksum mismatch - the contract was edited or damaged after it was "
                "written; calibrate again (`tcm calibrate ... --save`) instead of editing it"
            )
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(body) - names - {"format", "version"})
        if unknown:
            raise ContractError(f"{where}: unknown field(s) {unknown}")
        kwargs = {k: v for k, v in body.items() if k in names}
        score = kwargs.get("score")
        if isinstance(score, dict) and isinstance(score.get("file"), str):
            f = Path(score["file"])
            if not f.is_absolute():
                kwargs["score"] = {**score, "file": os.path.abspath(Path(base or ".") / f)}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ContractError(f"{where}: {exc}") from exc

    # ------------------------------------------------------------------ use

    @property
    def uses_scorer(self) -> bool:
        """Whether pairs are scored by a fitted scorer (not the cosine)."""
        return self.score.get("kind") != "cosine"

    def load_scorer(self, path: str | os.PathLike[str] | None = None) -> Scorer | None:
        """The fitted scorer the threshold is on (``None`` for a cosine contract): read from the
        file the contract names, or from ``path`` (a copy of it somewhere else), after checking
        that the file's SHA-256 is the recorded one.

        Raises:
            ContractError: a cosine contract given ``path``, a missing file, a file with another
                SHA-256 (another or a refitted scorer), an unreadable file, a scorer of another
                kind or dimension than recorded.
        """
        from tcm._io import file_sha256
        from tcm.scoring import load_scorer

        kind = self.score.get("kind")
        if not self.uses_scorer:
            if path is not None:
                raise ContractError(
                    f"the threshold contract's score is 'cosine' but a scorer file was given "
                    f"({path}): a threshold only holds for the score it was calibrated on"
                )
            return None
        p = Path(path if path is not None else str(self.score["file"]))
        if not p.is_file():
            raise ContractError(
                f"the {kind} scorer file the threshold contract names is missing: {p} (pass "
                "where it is now: --scorer-file / load_scorer(path))"
            )
        sha = file_sha256(p)
        want = str(self.score.get("sha256"))
        if sha != want:
            raise ContractError(
                f"the scorer file {p} is not the one the threshold was calibrated with (sha256 "
                f"{sha[:12]}... vs {want[:12]}... in the contract): another or a refitted scorer"
            )
        try:
            scorer = load_scorer(p)
        except ValueError as exc:
            raise ContractError(f"cannot read the scorer {p}: {exc}") from exc
        self.check_applicable(self.dimension, scorer=scorer, what=f"the scorer file {p}")
        return scorer

    def check_applicable(
        self,
        dimension: int,
        *,
        scorer: Scorer | None = None,
        scorer_file: str | os.PathLike[str] | None = None,
        what: str = "the embeddings",
    ) -> None:
        """Refuse embeddings of another dimension, or a score other than the recorded one.

        Args:
            dimension: ``D`` of the embeddings it is applied to.
            scorer: ``None`` (cosine) or a :class:`tcm.scoring.Scorer`: its ``kind`` is
                compared, and for a fitted scorer its dimension, ``params`` and
                ``fitted_on_sha256`` too (a :class:`~tcm.scoring.Cosine` scorer is the cosine).
            scorer_file: the scorer's file: its kind and SHA-256 must match the contract's.

        Raises:
            ContractError: naming both sides of the mismatch.
        """
        if int(dimension) != self.dimension:
            raise ContractError(
                f"the threshold contract was calibrated on {self.dimension}-dimensional "
                f"embeddings; {what} are {dimension}-dimensional (another model?)"
            )
        kind = self.score.get("kind")
        got = "cosine" if scorer is None else str(getattr(scorer, "kind", type(scorer).__name__))
        sha = None
        if scorer_file is not None:
            try:
                field_ = scorer_score(scorer_file)
            except (OSError, ValueError) as exc:
                raise ContractError(f"cannot read the scorer {scorer_file}: {exc}") from exc
            got, sha = str(field_["kind"]), field_.get("sha256")
        if kind != got:
            raise ContractError(
                f"the threshold contract's score is {kind!r} but {what} are scored with "
                f"{got!r}: a threshold only holds for the score it was calibrated on"
            )
        want = self.score.get("sha256")
        if sha is not None and want and sha != want:
            raise ContractError(
                f"the {kind} scorer file {scorer_file} differs from the one the threshold was "
                f"calibrated with (sha256 {sha[:12]}... vs {str(want)[:12]}...)"
            )
        if scorer is not None and got != "cosine":
            self._check_scorer(scorer)

    def _check_scorer(self, scorer: Scorer) -> None:
        """A fitted scorer object against the recorded one: dimension, params, fitted-on hash."""
        kind = scorer.kind
        dim = getattr(scorer, "dim", None)
        if dim is not None and int(dim) != self.dimension:
            raise ContractError(
                f"the {kind} scorer was fitted on {dim}-dimensional embeddings; the threshold "
                f"contract is for {self.dimension}-dimensional ones"
            )
        params = getattr(scorer, "params", None)
        for key, value in (
            ("params", None if params is None else _plain(params())),
            ("fitted_on_sha256", getattr(scorer, "fitted_on_sha256", None)),
        ):
            want = self.score.get(key)
            if want is not None and value is not None and value != want:
                raise ContractError(
                    f"the {kind} scorer is not the one the threshold was calibrated with "
                    f"({key} {value!r} vs {want!r} in the contract)"
                )


def _relative_file(file: str, base: str | os.PathLike[str]) -> str:
    """``file`` relative to ``base`` (POSIX separators) when it lies in that folder or below,
    else its absolute path."""
    a = Path(os.path.abspath(file))
    try:
        return a.relative_to(os.path.abspath(base)).as_posix()
    except ValueError:
        return str(a)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


_NUMBERS: tuple[str, ...] = ("threshold", "target_far", "far", "tar")


def _validate(d: dict[str, Any], where: str) -> None:
    for key in _NUMBERS:
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{key} must be a finite number; got {v!r}")
    if not 0.0 < float(d["target_far"]) < 1.0:
        raise ValueError(f"target_far must lie in (0, 1); got {d['target_far']!r}")
    for key in ("far", "tar"):
        if not 0.0 <= float(d[key]) <= 1.0:
            raise ValueError(f"{key} must lie in [0, 1]; got {d[key]!r}")
    dim = d["dimension"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dimension must be an integer >= 1; got {dim!r}")
    if d["method"] not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {d['method']!r}")
    if d["comparison"] != COMPARISON:
        raise ValueError(
            f"comparison must be {COMPARISON!r} (tcm accepts a pair when score >= threshold); "
            f"got {d['comparison']!r}"
        )
    for key in ("far_interval", "tar_interval", "guarantee", "calibration", "score", "reference"):
        if not isinstance(d[key], dict):
            raise ValueError(f"{key} must be a JSON object; got {type(d[key]).__name__}")
    score = d["score"]
    if not isinstance(score.get("kind"), str):
        raise ValueError("score must name its kind, e.g. {'kind': 'cosine'}")
    if score["kind"] != "cosine":
        for key in ("file", "sha256", "scale"):
            if not isinstance(score.get(key), str) or not score[key]:
                raise ValueError(
                    f"score of kind {score['kind']!r} must give its scorer's {key!r} "
                    "(tcm.deploy.contract.scorer_score)"
                )
    if not isinstance(d["tcm_version"], str):
        raise ValueError("tcm_version must be a string")
