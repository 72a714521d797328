"""The :class:`Scorer` interface, per-sample :class:`SideState`, and the safetensors file format.

A scorer is fitted once on deployment-side data (a cohort, or a labelled calibration set), then
maps the cosine similarities of any two sample sets to scores:

1. ``state = scorer.prepare(embeddings)`` computes per-sample state once per sample set (in
   row blocks; never more than ``block_size x cohort`` similarities in memory);
2. ``scorer.score_block(cos, state_a[rows], state_b[cols])`` maps a ``(b1, b2)`` block of cosine
   similarities elementwise, so a blocked pair pass can apply it block by block;
3. ``scorer.score(a, b)`` does both for small sets and returns the dense matrix.

``score_block_`` writes ``score_block``'s values, bit for bit, into a tensor block itself (the
metrics engine's form); ``score_pairs`` and ``error_terms`` (optional) let retrieval rank by
rounded scores and recheck the candidates in float64 (docs/scoring.md, "Scores in the engine").

Fitting never looks at evaluated data: it uses exactly what it is given, and the caller must pass
data disjoint from what is evaluated (training classes, or the calibration half of a split).

File format (``save`` / ``load``): a safetensors file whose tensors are the fitted state and
whose metadata key ``"tcm_scorer"`` holds a JSON object: ``format`` (``"tcm.scoring"``),
``version`` (1), ``kind`` (the class), ``score_scale``, ``convention`` (the formula in one line),
``params`` (hyper-parameters), ``dim`` (embedding dimension, or null for "any"),
``fitted_on_sha256`` (SHA-256 of the data it was fitted on) and ``tensors_sha256`` (SHA-256 of
its tensors: names, dtypes, shapes and bytes). Loading checks all of these and refuses a file it
cannot trust with a one-line ``ValueError``; nothing in the file can run code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from tcm._validation import ArrayLike, as_embeddings, encode_labels, l2_normalize

__all__ = ["SCORE_SCALES", "Scorer", "SideState", "load_scorer"]

FORMAT = "tcm.scoring"
VERSION = 1
META_KEY = "tcm_scorer"
DEFAULT_BLOCK = 4096

SCORE_SCALES = ("cosine", "z-score", "shifted-cosine", "probability")
"""Scales a scorer's output can be on: ``cosine`` (raw similarity in [-1, 1]), ``z-score``
(cohort-normalised, unbounded), ``shifted-cosine`` (cosine minus a per-sample threshold offset; the
global threshold applies), ``probability`` (posterior of "same class" at prior 0.5, in [0, 1])."""

_REGISTRY: dict[str, type[Scorer]] = {}

S = TypeVar("S", bound="Scorer")


@dataclass(frozen=True)
class SideState:
    """Per-sample state of one sample set: tensors whose first dimension is the sample.

    ``state[rows]`` (slice, index array or boolean mask) selects samples; ``len(state)`` is the
    number of samples.

    Example:
        >>> s = SideState(3, {"mu": torch.tensor([1.0, 2.0, 3.0])})
        >>> len(s[1:]), s[[2, 0]].tensors["mu"].tolist()
        (2, [3.0, 1.0])
    """

    n: int
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> SideState:
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        picked = {k: v[index] for k, v in self.tensors.items()}
        if isinstance(index, slice):  # (the engine's blocks) without an arange of all samples
            n = len(range(self.n)[index])
        else:
            n = int(torch.arange(self.n)[index].numel())
        return SideState(n, picked)


def _on(t: Mapping[str, torch.Tensor], c: torch.Tensor) -> dict[str, torch.Tensor]:
    """State tensors on ``c``'s device, floating ones in its dtype (those already there as they
    are: this runs once per block)."""
    dev, dt = c.device, c.dtype
    return {
        k: v
        if v.device == dev and (v.dtype == dt or not v.is_floating_point())
        else v.to(device=dev, dtype=dt)
        if v.is_floating_point()
        else v.to(dev)
        for k, v in t.items()
    }


def sha256_arrays(arrays: Mapping[str, Any]) -> str:
    """SHA-256 over the names, dtypes, shapes and C-order bytes of ``arrays`` (sorted by name).

    Example:
        >>> sha256_arrays({"a": np.zeros(2)}) == sha256_arrays({"a": np.zeros(2)})
        True
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[name]))
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fitted_on_hash(x: torch.Tensor, labels: np.ndarray | None = None) -> str:
    """SHA-256 of the L2-normalised embeddings (and label codes) a scorer was fitted on."""
    arrays: dict[str, Any] = {"embeddings": x.detach().cpu().numpy()}
    if labels is not None:
        arrays["labels"] = labels
    return sha256_arrays(arrays)


def normalized(x: ArrayLike, name: str = "embeddings") -> torch.Tensor:
    """``as_embeddings`` + ``l2_normalize`` (the project's validation of user embeddings)."""
    return l2_normalize(as_embeddings(x, name), name)


def labelled(x: ArrayLike, labels: ArrayLike) -> tuple[torch.Tensor, np.ndarray]:
    """Normalised calibration embeddings and dense label codes (checked to match in length)."""
    t = normalized(x, "calibration embeddings")
    codes, _ = encode_labels(labels, t.shape[0], "calibration labels")
    return t, codes


def _check_block_size(block_size: Any) -> int:
    if block_size is None:
        return DEFAULT_BLOCK
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1; got {block_size!r}")
    return block_size


class Scorer(ABC):
    """Base of every scorer (see the module docstring for the protocol).

    Subclasses set ``kind``, ``score_scale`` and ``convention``, and implement :meth:`params`,
    :meth:`_tensors`, :meth:`_set_tensors`, :meth:`_prepare_rows` and :meth:`_score`.
    """

    kind: ClassVar[str]
    score_scale: ClassVar[str]
    convention: ClassVar[str]
    needs_fit: ClassVar[bool] = True
    uses_groups: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _REGISTRY[cls.kind] = cls

    def __init__(self) -> None:
        self.dim: int | None = None
        self.fitted_on_sha256: str | None = None
        self._fitted = not self.needs_fit

    # --- subclass hooks -------------------------------------------------------------------
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Hyper-parameters as JSON values; ``type(self)(**params())`` rebuilds an unfitted copy."""

    def _tensors(self) -> dict[str, np.ndarray]:
        return {}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        if tensors:
            raise ValueError(f"{self.kind} expects no tensors; got {sorted(tensors)}")

    def _prepare_rows(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample state of one block of L2-normalised rows (default: none)."""
        return {}

    @abstractmethod
    def _score(
        self, cos: torch.Tensor, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Scores of a ``(b1, b2)`` cosine block given both sides' state tensors."""

    # --- the protocol ---------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self._fitted

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise ValueError(f"{self.kind} scorer is not fitted; call fit(...) or load(...) first")

    def _mark_fitted(self, dim: int | None, sha: str | None) -> None:
        self.dim, self.fitted_on_sha256, self._fitted = dim, sha, True

    def check_compatible(self, dim: int) -> None:
        """Raise ``ValueError`` unless embeddings of dimension ``dim`` can be scored."""
        if self.dim is not None and int(dim) != self.dim:
            raise ValueError(
                f"{self.kind} scorer was fitted on {self.dim}-dimensional embeddings; got {dim}"
            )

    def prepare(
        self,
        embeddings: ArrayLike,
        *,
        groups: ArrayLike | None = None,
        block_size: int | None = None,
    ) -> SideState:
        """Per-sample state of a sample set, computed in blocks of ``block_size`` rows.

        ``groups`` (one label per sample) is for scorers that use group labels
        (:class:`~tcm.scoring.GroupThresholds`) and refused by the others.
        """
        self._check_fitted()
        bs = _check_block_size(block_size)
        x = as_embeddings(embeddings)
        self.check_compatible(x.shape[1])
        if self.uses_groups != (groups is not None):
            raise ValueError(
                f"{self.kind} scorer needs groups= (one group per sample)"
                if self.uses_groups
                else f"{self.kind} scorer does not use groups; pass groups=None"
            )
        parts: list[dict[str, torch.Tensor]] = []
        for start in range(0, x.shape[0], bs):
            parts.append(self._prepare_rows(l2_normalize(x[start : start + bs])))
        tensors = {k: torch.cat([p[k] for p in parts]) for k in (parts[0] if parts else {})}
        if groups is not None:
            tensors.update(self._group_state(groups, x.shape[0]))
        return SideState(x.shape[0], tensors)

    def _group_state(self, groups: ArrayLike, n: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - only scorers with uses_groups

    def score_block(self, cos: Any, state_a: SideState, state_b: SideState) -> Any:
        """Scores of a ``(b1, b2)`` block of cosines between ``state_a``'s and ``state_b``'s
        samples (elementwise). A NumPy block gives a NumPy array, a tensor a tensor (same
        device; float64 kept, other floats computed in float32)."""
        self._check_fitted()
        is_np = not isinstance(cos, torch.Tensor)
        c = torch.as_tensor(np.asarray(cos)) if is_np else cos
        if c.ndim != 2 or c.shape != (len(state_a), len(state_b)):
            raise ValueError(
                f"cos block must have shape ({len(state_a)}, {len(state_b)}) (the two states' "
                f"sizes); got {tuple(c.shape)}"
            )
        if c.dtype != torch.float64:
            c = c.to(torch.float32)
        out = self._score(c, _on(state_a.tensors, c), _on(state_b.tensors, c))
        return out.cpu().numpy() if is_np else out

    def score_block_(
        self,
        cos: torch.Tensor,
        state_a: SideState,
        state_b: SideState,
        scratch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`score_block` of a float32 / float64 tensor block written into ``cos`` itself
        (bit-identical values); ``scratch``: an optional buffer of ``cos``'s dtype (of
        ``cos.numel()`` elements, or any size: a scorer uses it when it is large enough, else
        allocates). Returns ``cos``.
        The default copies :meth:`score_block`; a scorer overrides :meth:`_score_inplace` to
        avoid the full-size temporaries."""
        self._check_fitted()
        if cos.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"score_block_ needs a float32 or float64 block; got {cos.dtype}")
        if cos.ndim != 2 or cos.shape != (len(state_a), len(state_b)):
            raise ValueError(
                f"cos block must have shape ({len(state_a)}, {len(state_b)}) (the two states' "
                f"sizes); got {tuple(cos.shape)}"
            )
        a, b = _on(state_a.tensors, cos), _on(state_b.tensors, cos)
        if not self._score_inplace(cos, a, b, scratch):
            cos.copy_(self._score(cos, a, b))
        return cos

    def _score_inplace(
        self,
        cos: torch.Tensor,
        a: Mapping[str, torch.Tensor],
        b: Mapping[str, torch.Tensor],
        scratch: torch.Tensor | None,
    ) -> bool:
        """Write :meth:`_score` into ``cos`` with the same operations in the same order (so
        bit-identical); return False when the scorer has no in-place form (default)."""
        return False

    def score_pairs(
        self, cos: torch.Tensor, state_a: SideState, state_b: SideState, cols: torch.Tensor
    ) -> torch.Tensor | None:
        """Scores of listed pairs: ``cos`` ``(B, M)`` float64, row ``r`` pairing sample ``r`` of
        ``state_a`` with the samples ``cols[r]`` of ``state_b``; the value of each pair is the
        one :meth:`score_block` gives it in float64 (same operations). None when the scorer
        does not support it (then also :meth:`error_terms` is None)."""
        self._check_fitted()
        a, b = _on(state_a.tensors, cos), _on(state_b.tensors, cos)
        return self._score_pairs(cos, a, b, cols.to(cos.device))

    def _score_pairs(
        self,
        cos: torch.Tensor,
        a: Mapping[str, torch.Tensor],
        b: Mapping[str, torch.Tensor],
        cols: torch.Tensor,
    ) -> torch.Tensor | None:
        return None

    def symmetric(self) -> bool:
        """Whether ``score(i, j) == score(j, i)`` (bitwise) for two samples of one state
        (default False)."""
        return False

    def error_terms(
        self, state_a: SideState, state_b: SideState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Rounding bound of :meth:`score_block_`: float64 ``(lip_a, mag_a, lip_b, mag_b)``
        (per sample of ``state_a`` / ``state_b``) such that for cosines within ``E`` of the exact
        ones, ``score_block_`` in a precision of machine epsilon ``u`` gives every score within
        ``E * (lip_a[i] + lip_b[j]) + u * (mag_a[i] + mag_b[j])`` of the exact score (as
        :meth:`score_pairs` computes it, in float64, up to float64 rounding). None (default):
        no bound; retrieval then ranks whole rows of float64 scores."""
        return None

    def score(self, a: ArrayLike, b: ArrayLike, **kwargs: Any) -> np.ndarray:
        """Dense ``(N, M)`` float64 score matrix of two small sample sets (``kwargs``:
        ``groups_a`` / ``groups_b`` for scorers that use groups)."""
        self._check_fitted()
        xa = normalized(a).to(torch.float64)
        xb = normalized(b).to(torch.float64)
        sa = self.prepare(xa, groups=kwargs.get("groups_a"))
        sb = self.prepare(xb, groups=kwargs.get("groups_b"))
        out: np.ndarray = self.score_block((xa @ xb.T).numpy(), sa, sb)
        return out

    # --- files ----------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The JSON metadata written by :meth:`save` (without ``tensors_sha256``)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "score_scale": self.score_scale,
            "convention": self.convention,
            "params": self.params(),
            "dim": self.dim,
            "fitted_on_sha256": self.fitted_on_sha256,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted scorer atomically to a ``.safetensors`` file; returns its path."""
        from safetensors.numpy import save

        from tcm._io import atomic_write

        self._check_fitted()
        tensors = {k: np.ascontiguousarray(v) for k, v in self._tensors().items()}
        meta = self.metadata()
        meta["tensors_sha256"] = sha256_arrays(tensors)
        blob = save(tensors, metadata={META_KEY: json.dumps(meta, allow_nan=False)})
        return atomic_write(Path(path), lambda fh: fh.write(blob))

    @classmethod
    def load(cls: type[S], path: str | os.PathLike[str]) -> S:
        """Read a scorer written by :meth:`save`; ``Scorer.load`` accepts any kind, a subclass
        only its own.

        Raises:
            ValueError: unreadable file, missing / malformed metadata, unknown or wrong kind,
                tensors whose SHA-256 differs from the recorded one, bad parameters.
        """
        scorer = _read(Path(path))
        if cls is not Scorer and not isinstance(scorer, cls):
            raise ValueError(f"{path}: holds a {scorer.kind} scorer, not {cls.kind}")
        return scorer  # type: ignore[return-value]


def load_scorer(path: str | os.PathLike[str]) -> Scorer:
    """Read any scorer written by :meth:`Scorer.save` (see :meth:`Scorer.load`)."""
    return Scorer.load(path)


def _read(p: Path) -> Scorer:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    if not p.is_file():
        raise ValueError(f"scorer file not found: {p}")
    try:
        tensors = dict(load_file(str(p)))
        with safe_open(str(p), framework="np") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"cannot read scorer file {p}: {exc}") from exc
    if raw is None:
        raise ValueError(f"{p}: not a tcm scorer file (no {META_KEY!r} metadata)")
    try:
        meta = json.loads(raw, parse_constant=_no_constant)
    except ValueError as exc:
        raise ValueError(f"{p}: scorer metadata is not valid JSON ({exc})") from exc
    need = {"format", "version", "kind", "score_scale", "params", "dim", "tensors_sha256"}
    if not isinstance(meta, dict) or not need <= set(meta):
        missing = sorted(need - set(meta)) if isinstance(meta, dict) else sorted(need)
        raise ValueError(f"{p}: scorer metadata lacks {missing}")
    if meta["format"] != FORMAT or meta["version"] != VERSION:
        raise ValueError(
            f"{p}: unsupported scorer format {meta['format']!r} version {meta['version']!r} "
            f"(expected {FORMAT!r} version {VERSION})"
        )
    kind = meta["kind"]
    if not isinstance(kind, str) or kind not in _REGISTRY:
        raise ValueError(f"{p}: unknown scorer kind {kind!r}; known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[kind]
    if meta["score_scale"] != cls.score_scale:
        raise ValueError(
            f"{p}: score_scale {meta['score_scale']!r} does not match {kind} ({cls.score_scale!r})"
        )
    if sha256_arrays(tensors) != meta["tensors_sha256"]:
        raise ValueError(f"{p}: tensor contents do not match the recorded SHA-256 (file altered)")
    dim = meta["dim"]
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValueError(f"{p}: metadata 'dim' must be a positive integer or null; got {dim!r}")
    sha = meta.get("fitted_on_sha256")
    if sha is not None and not isinstance(sha, str):
        raise ValueError(f"{p}: metadata 'fitted_on_sha256' must be a string or null")
    if not isinstance(meta["params"], dict):
        raise ValueError(f"{p}: metadata 'params' must be a JSON object")
    try:
        scorer = cls(**meta["params"])
        scorer._set_tensors(tensors)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{p}: invalid {kind} scorer: {exc}") from exc
    scorer._mark_fitted(dim, sha)
    return scorer


def _no_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


# --- shared fitting helpers ----------------------------------------------------------------


def pair_cosines(x: torch.Tensor, i: np.ndarray, j: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Cosines ``x[i] . x[j]`` of listed pairs (rows already L2-normalised), in chunks."""
    out = np.empty(i.shape[0], dtype=np.float64)
    xd = x.to(torch.float64)
    for s in range(0, i.shape[0], chunk):
        a = xd[torch.from_numpy(i[s : s + chunk])]
        b = xd[torch.from_numpy(j[s : s + chunk])]
        out[s : s + chunk] = (a * b).sum(dim=1).numpy()
    return out


def genuine_pairs(
    codes: np.ndarray, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Genuine pairs ``(i < j, same label)``: all of them when there are at most ``cap``, else
    ``cap`` pairs drawn uniformly with replacement (class with probability proportional to its
    pair count, then two distinct members)."""
    order = np.argsort(codes, kind="stable")
    _, starts, counts = np.unique(codes[order], return_index=True, return_counts=True)
    per = counts.astype(np.int64) * (counts - 1) // 2
    total = int(per.sum())
    if total <= cap:
        ii, jj = [], []
        for st, c in zip(starts, counts, strict=True):
            if c >= 2:
                r, q = np.triu_indices(int(c), 1)
                ii.append(order[st + r])
                jj.append(order[st + q])
        if not ii:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        a, b = np.concatenate(ii), np.concatenate(jj)
    else:
        cls = rng.choice(per.shape[0], size=cap, p=per / total)
        c = counts[cls]
        u = rng.integers(0, c)
        v = rng.integers(0, c - 1)
        v = v + (v >= u)
        a, b = order[starts[cls] + u], order[starts[cls] + v]
    return np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)


def impostor_pairs(
    codes: np.ndarray, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Impostor pairs ``(i < j, different labels)``: all of them when there are at most ``cap``,
    else ``cap`` pairs drawn uniformly with replacement (rejection sampling of uniform pairs)."""
    n = codes.shape[0]
    _, counts = np.unique(codes, return_counts=True)
    total = n * (n - 1) // 2 - int((counts.astype(np.int64) * (counts - 1) // 2).sum())
    if total <= cap:
        i, j = np.triu_indices(n, 1) if n * (n - 1) // 2 <= 4 * cap + 1024 else _imp_by_class(codes)
        keep = codes[i] != codes[j]
        return i[keep].astype(np.int64), j[keep].astype(np.int64)
    a_parts: list[np.ndarray] = []
    b_parts: list[np.ndarray] = []
    need = cap
    frac = total / (n * (n - 1) / 2)
    while need > 0:
        m = math.ceil(need / frac * 1.1) + 16
        u = rng.integers(0, n, size=m)
        v = rng.integers(0, n - 1, size=m)
        v = v + (v >= u)
        ok = codes[u] != codes[v]
        u, v = u[ok][:need], v[ok][:need]
        a_parts.append(np.minimum(u, v))
        b_parts.append(np.maximum(u, v))
        need -= u.shape[0]
    return np.concatenate(a_parts).astype(np.int64), np.concatenate(b_parts).astype(np.int64)


def _imp_by_class(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All impostor pairs, class by class (memory proportional to their number)."""
    ii, jj = [], []
    for c in np.unique(codes):
        mem = np.flatnonzero(codes == c)
        other = np.flatnonzero(codes > c)
        ii.append(np.repeat(mem, other.shape[0]))
        jj.append(np.tile(other, mem.shape[0]))
    a, b = np.concatenate(ii), np.concatenate(jj)
    return np.minimum(a, b), np.maximum(a, b)
