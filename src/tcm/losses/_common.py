"""Private helpers shared by the losses: differentiable input checks and the similarity matrix.

Unlike :func:`tcm._validation.as_embeddings` (which detaches, for metrics), these helpers keep the
autograd graph of the embeddings intact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from tcm._validation import check_same_length, encode_labels, l2_normalize

__all__ = [
    "check_embeddings",
    "check_finite_param",
    "cosine_similarity_matrix",
    "label_codes",
    "normalized_float",
]


def check_embeddings(x: Any, name: str = "embeddings") -> torch.Tensor:
    """Check a differentiable ``(N, D)`` float tensor (graph kept) and return it unchanged.

    Raises:
        ValueError: not a torch tensor, not 2-D, empty, not floating point, or NaN/inf entries.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, D); got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D tensor of shape (N, D); got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    finite = torch.isfinite(x.detach()).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        raise ValueError(
            f"{name} contain NaN or inf values in {bad.numel()} row(s); first bad row index "
            f"{int(bad[0])}"
        )
    return x


def _is_int_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex()


def _int_tensor_labels(
    t: torch.Tensor, n: int, device: torch.device, name: str, what: str
) -> torch.Tensor:
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {tuple(t.shape)}")
    check_same_length(int(t.shape[0]), n, name, what)
    return t.to(device=device, dtype=torch.int64)


def _to_numpy(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy().reshape(-1)
    return np.asarray(labels).reshape(-1)


def label_codes(
    labels: Any,
    n: int,
    device: torch.device,
    name: str = "labels",
    ref_labels: Any = None,
    n_ref: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return int64 label tensors on ``device``: ``(N,)`` and, with ``ref_labels``, ``(R,)``.

    Integer torch tensors are used as they are (no host round-trip); anything else (NumPy, lists,
    strings) is validated and encoded to dense codes with :func:`tcm._validation.encode_labels`,
    jointly with ``ref_labels`` so that equal labels get equal codes across the two sets.

    Raises:
        ValueError: labels not 1-D, or length differing from ``n`` / ``n_ref``.
    """
    if ref_labels is None:
        if _is_int_tensor(labels):
            return _int_tensor_labels(labels, n, device, name, "embeddings"), None
        codes, _ = encode_labels(labels, n, name)
        return torch.as_tensor(codes, device=device), None
    if n_ref is None:
        raise ValueError("n_ref (number of reference embeddings) is required with ref_labels")
    if _is_int_tensor(labels) and _is_int_tensor(ref_labels):
        return (
            _int_tensor_labels(labels, n, device, name, "embeddings"),
            _int_tensor_labels(ref_labels, n_ref, device, "ref_labels", "ref_emb"),
        )
    encode_labels(labels, n, name)  # validates shape / length / values of each set
    encode_labels(ref_labels, n_ref, "ref_labels")
    joint, _ = encode_labels(np.concatenate([_to_numpy(labels), _to_numpy(ref_labels)]))
    return (
        torch.as_tensor(joint[:n], device=device),
        torch.as_tensor(joint[n:], device=device),
    )


def check_finite_param(
    value: float, name: str, *, positive: bool = False, nonneg: bool = False
) -> float:
    """Return ``float(value)`` or raise ValueError if it is not finite (or not > 0 / >= 0)."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real number; got {value!r}") from exc
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {value!r}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")
    if nonneg and v < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")
    return v


def normalized_float(x: torch.Tensor, name: str = "embeddings") -> torch.Tensor:
    """Row-wise L2-normalised ``x`` in at least float32 (float16/bfloat16 are upcast), computed
    with autocast disabled. Differentiable."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return l2_normalize(xf, name)


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity matrix ``S[i, j] = <a_i/|a_i|, b_j/|b_j|>``, shape ``(N, R)``, in [-1, 1].

    Computed with autocast disabled and in at least float32 (float16/bfloat16 inputs are upcast),
    so mixed-precision training never builds the matrix in half precision. ``b=None`` means
    ``b = a`` (the ``N x N`` batch matrix).
    """
    an = normalized_float(a)
    bn = an if b is None else normalized_float(b, "ref_emb").to(an.dtype)
    with torch.autocast(device_type=a.device.type, enabled=False):
        return an @ bn.T
