"""Safe image decoding: every failure becomes a :class:`ValueError` that names the file.

Images are returned as ``torch.uint8`` tensors of shape ``(3, H, W)`` (RGB, values 0..255), the
input format of every ``tcm.data`` transform.

Example:
    >>> import tempfile, os
    >>> from PIL import Image
    >>> p = os.path.join(tempfile.mkdtemp(), "x.png")
    >>> Image.new("RGB", (4, 3), (255, 0, 0)).save(p)
    >>> read_rgb(p).shape
    torch.Size([3, 3, 4])
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["check_files_exist", "pil_to_uint8_chw", "read_rgb", "verify_image"]


def pil_to_uint8_chw(img: Image.Image, background: int = 255) -> torch.Tensor:
    """Convert a PIL image of any mode to a ``uint8`` tensor ``(3, H, W)``.

    Transparent pixels (modes ``RGBA``, ``LA``, ``P`` with transparency) are composited onto a
    uniform grey level ``background`` (0..255, default white).
    """
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (background, background, background, 255))
        img = Image.alpha_composite(base, rgba)
    rgb = img.convert("RGB")
    arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_rgb(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode an image file into a ``uint8`` tensor ``(3, H, W)`` (RGB, 0..255).

    Raises:
        FileNotFoundError: ``path`` does not exist (message names the path).
        ValueError: the file exists but cannot be decoded (truncated, corrupt, not an image);
            the message names the path and the decoder's reason.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"image file not found: {p!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                img.load()
                return pil_to_uint8_chw(img)
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise ValueError(f"cannot decode image file {p!r}: {type(exc).__name__}: {exc}") from exc


def verify_image(path: str | os.PathLike[str]) -> str | None:
    """Fully decode ``path``; return ``None`` when it is a readable image, else the reason."""
    try:
        read_rgb(path)
    except (FileNotFoundError, ValueError) as exc:
        return str(exc)
    return None


def check_files_exist(paths: list[str]) -> list[int]:
    """Return the indices of ``paths`` that are not existing regular files (cheap ``stat`` only)."""
    return [i for i, p in enumerate(paths) if not os.path.isfile(p)]
