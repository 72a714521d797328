"""Input validation shared by every public entry point.

One convention everywhere in ``tcm``: embeddings are L2-normalised internally and compared by
cosine *similarity*; a pair is accepted when ``similarity >= threshold``.

These helpers turn user input (NumPy arrays, torch tensors on any device, Python lists) into
validated torch tensors and raise :class:`ValueError` with a message that names the problem and
the offending value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array, torch tensor or a (nested) sequence

__all__ = [
    "ArrayLike",
    "as_embeddings",
    "ceil_to_dtype",
    "check_fraction",
    "check_int",
    "check_same_length",
    "encode_labels",
    "l2_normalize",
]


def as_embeddings(
    x: ArrayLike,
    name: str = "embeddings",
    *,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Validate a 2-D float matrix of shape ``(N, D)`` and return it as a torch tensor.

    NumPy arrays and sequences become CPU tensors; torch tensors keep their device. float16 and
    bfloat16 are promoted to float32, float64 stays float64, integer input becomes float32.

    Raises:
        ValueError: wrong number of dimensions, empty input, or NaN/inf entries (the message gives
            the number of bad rows and the first bad row index).

    Example:
        >>> as_embeddings([[1.0, 0.0], [0.0, 2.0]]).shape
        torch.Size([2, 2])
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{name} must be a numeric (N, D) array; got {type(x).__name__}"
            ) from exc
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (N, D); got shape {tuple(t.shape)}")
    if not allow_empty and (t.shape[0] == 0 or t.shape[1] == 0):
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if t.dtype in (torch.float16, torch.bfloat16) or not t.is_floating_point():
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{name} must be real-valued floats; got dtype {t.dtype}")
        t = t.to(torch.float32)
    finite = torch.isfinite(t).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        raise ValueError(
            f"{name} contain NaN or inf values in {bad.numel()} row(s); first bad row index "
            f"{int(bad[0])}"
        )
    return t


def l2_normalize(x: torch.Tensor, name: str = "embeddings") -> torch.Tensor:
    """Return ``x / ||x||_2`` row-wise, safe at any scale.

    Each row is first multiplied by a power of two ``2^-e`` with ``2^(e-1) <= max_j |x_ij| < 2^e``
    (exact: only the exponent changes), so its squares can neither overflow (float32 rows above
    ~1e19 would otherwise square to inf and normalise to zero vectors) nor underflow (rows near
    1e-30 would lose their squares to subnormals and normalise to norms != 1). Rows of normal
    scale give bit-for-bit the same result as the plain formula; multiplying a row by any power
    of two leaves the result unchanged.

    Raises:
        ValueError: an all-zero row (cannot be normalised) or a non-finite entry / norm.

    Example:
        >>> l2_normalize(torch.tensor([[3.0, 4.0]]))
        tensor([[0.6000, 0.8000]])
        >>> l2_normalize(torch.tensor([[3e30, 4e30], [3e-30, 4e-30]]))
        tensor([[0.6000, 0.8000],
                [0.6000, 0.8000]])
    """
    amax = x.abs().amax(dim=1, keepdim=True) if x.shape[1] else x.new_zeros((x.shape[0], 1))
    zero = amax.squeeze(1) == 0
    if bool(zero.any()):
        first = int(torch.nonzero(zero).flatten()[0])
        raise ValueError(
            f"{name} have {int(zero.sum())} all-zero row(s) (cannot L2-normalise); first is "
            f"row {first}"
        )
    if not bool(torch.isfinite(amax).all()):
        bad = int(torch.nonzero(~torch.isfinite(amax.squeeze(1))).flatten()[0])
        raise ValueError(f"{name} contain a non-finite value (first in row {bad})")
    _, e = torch.frexp(amax)  # amax = m * 2^e, 0.5 <= m < 1
    # 2^-e in two factors: a single one over- or underflows for float32 rows near the limits
    # (subnormal rows need 2^149); each factor and each product stays representable.
    e1 = torch.div(e, 2, rounding_mode="floor")
    two = torch.tensor(2.0, dtype=x.dtype, device=x.device)
    scaled = x * torch.pow(two, -e1).to(x.dtype) * torch.pow(two, e1 - e).to(x.dtype)
    norms = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)
    if not bool(torch.isfinite(norms).all()) or bool((norms == 0).any()):  # pragma: no cover
        raise ValueError(f"{name}: a row norm is not finite after scaling")
    out: torch.Tensor = scaled / norms
    return out


def encode_labels(
    labels: ArrayLike, n: int | None = None, name: str = "labels"
) -> tuple[np.ndarray, np.ndarray]:
    """Map labels of any hashable, sortable type to dense integer codes.

    Args:
        labels: shape ``(N,)``; integers of any width, strings, or a torch tensor (any device).
            Values are never cast to float, so ids above 2**24 stay distinct.
        n: expected length (number of embeddings), or ``None`` to skip the check.

    Returns:
        ``(codes, classes)``: ``codes`` is an int64 array of shape ``(N,)`` in ``[0, C)`` with
        ``classes[codes] == labels``; ``classes`` holds the ``C`` sorted unique labels.

    Raises:
        ValueError: labels not 1-D, length mismatch, float labels with a fractional part,
            or NaN labels.

    Example:
        >>> codes, classes = encode_labels(["b", "a", "b"])
        >>> codes.tolist(), classes.tolist()
        ([1, 0, 1], ['a', 'b'])
    """
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    elif isinstance(labels, np.ndarray):
        arr = labels
    elif isinstance(labels, Sequence) or hasattr(labels, "__array__"):
        arr = np.asarray(labels)
    else:
        raise ValueError(f"{name} must be a 1-D array of class ids; got {type(labels).__name__}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (N,); got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]} but there are {n} embeddings")
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise ValueError(f"{name} contain NaN")
        if not np.all(np.floor(arr) == arr):
            raise ValueError(f"{name} are floats with a fractional part; pass integer class ids")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    classes, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), classes


def check_same_length(a: int, b: int, what_a: str, what_b: str) -> None:
    """Raise :class:`ValueError` if two lengths differ, naming both."""
    if a != b:
        raise ValueError(f"{what_a} has length {a} but {what_b} has length {b}")


def ceil_to_dtype(t: float, dtype: torch.dtype) -> float:
    """Smallest value representable in ``dtype`` that is ``>= t``: for ``s`` of that dtype,
    ``s >= ceil_to_dtype(t)`` iff ``s >= t`` (and ``s < ceil_to_dtype(t)`` iff ``s < t``), so a
    threshold on float64 scores is applied exactly to float32 scores.

    Example:
        >>> import torch
        >>> t = ceil_to_dtype(0.1, torch.float32)
        >>> t >= 0.1 and torch.tensor(t, dtype=torch.float32).item() == t
        True
    """
    if math.isinf(t) or dtype == torch.float64:
        return t
    v = torch.tensor(t, dtype=torch.float64).to(dtype)
    if float(v) < t:
        v = torch.nextafter(v, torch.tensor(float("inf"), dtype=dtype))
    return float(v)


def check_fraction(value: Any, name: str) -> float:
    """A number in the open interval (0, 1) (not bool), e.g. a FAR or an interval level."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in (0, 1); got {value!r}")
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1); got {value!r}")
    return v


def check_int(value: Any, name: str, minimum: int) -> int:
    """An integer (not bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)
