"""``glyphs``: the default open-world dataset, rendered from fonts at run time.

Class = one Unicode character (a letter or digit of any script: Latin, Greek, Cyrillic, ...);
instance = one font (optionally plus seeded augmented copies). Nothing is downloaded or shipped:
the fonts bundled with matplotlib (``matplotlib.get_data_path()/fonts/ttf``) are rendered with
Pillow.

Pipeline (every step deterministic):

1. Fonts: every ``.ttf`` / ``.otf`` in the font directory except :data:`SKIP_FONTS` (symbol fonts
   whose cmap maps ASCII letters to symbols, and Apple's LastResort font) and fonts without a
   Latin ``H`` (needed for sizing). ``extra_fonts=True`` adds the ~50 fonts of the PyPI package
   ``rendercv-fonts``.
2. Candidate characters: Unicode categories Lu, Ll, Lt, Lo, Nd that are NFKC-stable (no
   compatibility forms such as ligatures, full-width or mathematical alphanumerics), present in a
   font's cmap (fontTools) and drawing at least one ink pixel; kept when present in
   ``>= min_fonts`` fonts (default 10).
3. Rendering: greyscale, white glyph (255) on black (0) at ``S x S`` pixels. Per font the point
   size makes the cap height of ``H`` equal ``S / 2``; the baseline sits at ``0.7 S``; each glyph
   is centred horizontally on its ink box. Letter case therefore stays visible (``o`` vs ``O``).
4. Homoglyph rule (:func:`find_homoglyphs`), computed on 32-px renders for every image size:
   two characters *coincide in a font* when their renders ``a, b`` (floats in ``[0, 1]``,
   ``32 x 32``) have relative squared L2 distance
   ``r = ||a - b||^2 / (||a||^2 + ||b||^2) <= threshold`` (default 0.01; ``r = 0`` identical,
   ``r = 1`` no overlapping ink; an accent alone gives ``r ~ 0.02 - 0.05``). They are
   *homoglyphs* when they share ``>= 3`` fonts and coincide in ``>= fraction`` (default 0.5) of
   their shared fonts. Homoglyph pairs are joined into groups (connected components); each group
   keeps one representative (the member present in most fonts, ties: lowest code point) and the
   other members are dropped. So Latin ``A`` / Greek ``Α`` / Cyrillic ``А`` become the single
   class ``A``. On top, :data:`EXTRA_CONFUSABLES` drops ``0`` (-> ``O``), ``1`` and ``l``
   (-> ``I``): they nearly coincide only in the sans-serif fonts (min ``r`` 0.03 / 0.04 / 0.03,
   median 0.42 / 0.16 / 0.10), so the majority rule keeps them, but they are the classic
   confusions.
5. Split by a stable hash: ``u = int(sha256("tcm-glyphs:" + ch)[:8]) / 2**64``; ``train`` when
   ``u < 0.5`` else ``test``. The test classes split again into halves ``calibration`` /
   ``evaluation`` by ``sha256("tcm-glyphs-half:" + ch)``.

Every sample has a *domain* (``ds.domains``): the font family (:func:`font_family`; DejaVu, STIX,
Computer Modern for matplotlib's fonts, the folder name for ``rendercv-fonts``), and a stable id
(``ds.ids``): ``char@font file`` (``A@DejaVuSans.ttf``, ``A@DejaVuSans.ttf#aug0`` for augmented
copies).

Renders are cached in memory per (fonts, image size); the default set renders in a few
seconds on one CPU core.

Example:
    >>> from tcm.data import load
    >>> ds = load("glyphs", split="train", transform=None)
    >>> img, label = ds[0]
    >>> tuple(img.shape), ds.class_names[label] == ds.class_names[ds.labels[0]]
    ((3, 32, 32), True)
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from tcm.data.base import TensorImageDataset
from tcm.data.transforms import image_size_or_default, resolve_transform

__all__ = [
    "ANALYSIS_SIZE",
    "EXTRA_CONFUSABLES",
    "SKIP_FONTS",
    "GlyphCatalog",
    "GlyphDataset",
    "RenderStyle",
    "build_catalog",
    "default_font_dir",
    "extra_font_paths",
    "find_homoglyphs",
    "font_family",
    "glyph_catalog",
    "glyph_split",
    "is_candidate_char",
    "list_fonts",
    "load_glyphs",
    "render_glyphs",
]

ANALYSIS_SIZE = 32
EXTRA_CONFUSABLES: dict[str, str] = {"0": "O", "1": "I", "l": "I"}
SKIP_FONTS = frozenset({"LastResortHE-Regular.ttf", "cmex10.ttf", "cmsy10.ttf"})
CAP_HEIGHT = 0.5
BASELINE = 0.7
DEFAULT_IMAGE_SIZE = 32
_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo", "Nd"})
_LOCK = threading.Lock()


def default_font_dir() -> str:
    """Directory of the fonts bundled with matplotlib."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def extra_font_paths() -> list[str]:
    """Font files of the optional PyPI package ``rendercv-fonts`` (sorted).

    Raises:
        ValueError: the package is not installed (``pip install rendercv-fonts``).
    """
    try:
        import rendercv_fonts
    except ImportError as exc:
        raise ValueError(
            "extra_fonts=True needs the PyPI package 'rendercv-fonts' (pip install rendercv-fonts)"
        ) from exc
    base = os.path.dirname(os.path.abspath(rendercv_fonts.__file__))
    return _font_files(base)


def _font_files(directory: str, exts: tuple[str, ...] = (".ttf", ".otf")) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(directory):
        for f in files:
            if f.lower().endswith(exts) and f not in SKIP_FONTS:
                out.append(os.path.join(dirpath, f))
    return sorted(out, key=lambda p: (os.path.basename(p), p))


def list_fonts(root: str | os.PathLike[str] | None = None, extra_fonts: bool = False) -> list[str]:
    """Font files used for rendering: ``root`` (default: matplotlib's) plus optional extras.

    Raises:
        ValueError: ``root`` is not a directory or holds no ``.ttf`` / ``.otf`` font.
    """
    directory = default_font_dir() if root is None else os.fspath(root)
    if not os.path.isdir(directory):
        raise ValueError(f"font directory does not exist: {directory!r}")
    fonts = _font_files(directory)
    if extra_fonts:
        fonts = fonts + [p for p in extra_font_paths() if p not in fonts]
    if not fonts:
        raise ValueError(f"no .ttf/.otf fonts found under {directory!r}")
    return fonts


_FAMILY_PREFIXES = (("DejaVu", "DejaVu"), ("STIX", "STIX"))
_CM_FILE = re.compile(r"cm[a-z]+\d+\.(ttf|otf)", re.IGNORECASE)


def _name_table_family(path: str) -> str | None:
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, lazy=True, fontNumber=0) as font:
            table = font["name"] if "name" in font else None
            if table is None:
                return None
            for name_id in (16, 1):  # typographic family, then legacy family
                name = table.getDebugName(name_id)
                if name:
                    return str(name).strip()
    except Exception:  # fontTools raises many types on broken files
        return None
    return None


def font_family(path: str) -> str:
    """Font family of a font file: the domain of its glyph samples.

    Styles and widths of one family are one family. Rules, first match wins:

    1. matplotlib's fonts: file names ``DejaVu*`` -> ``"DejaVu"`` (Sans, Serif, Mono, ...),
       ``STIX*`` -> ``"STIX"``, ``cm<name><size>.ttf`` -> ``"Computer Modern"``;
    2. fonts of the ``rendercv-fonts`` package: the name of their folder (``"Noto Sans"``);
    3. otherwise the typographic family of the font's ``name`` table (ID 16, else ID 1);
    4. otherwise the file stem up to the first ``-``.

    Example:
        >>> font_family("/x/DejaVuSerif-BoldItalic.ttf"), font_family("cmtt10.ttf")
        ('DejaVu', 'Computer Modern')
    """
    base = os.path.basename(path)
    for prefix, family in _FAMILY_PREFIXES:
        if base.startswith(prefix):
            return family
    if _CM_FILE.fullmatch(base):
        return "Computer Modern"
    rc = _rendercv_dir()
    if rc is not None:
        rel = os.path.relpath(os.path.abspath(path), rc)
        parts = rel.split(os.sep)
        if len(parts) > 1 and parts[0] != os.pardir:
            return parts[0]
    if os.path.isfile(path):
        name = _name_table_family(path)
        if name:
            return name
    return os.path.splitext(base)[0].split("-")[0]


def _rendercv_dir() -> str | None:
    try:
        import rendercv_fonts
    except ImportError:
        return None
    return str(os.path.dirname(os.path.abspath(rendercv_fonts.__file__)))


def is_candidate_char(ch: str) -> bool:
    """True for a single letter / decimal digit that is its own NFKC normal form."""
    return (
        len(ch) == 1
        and unicodedata.category(ch) in _CATEGORIES
        and unicodedata.normalize("NFKC", ch) == ch
    )


@dataclass(frozen=True)
class RenderStyle:
    """How a font family is sized and placed in the ``S x S`` frame.

    The point size makes the ink height of ``ref_char`` equal ``ref_height * S``; the baseline
    is at ``baseline * S``, or (``baseline=None``) where it centres ``ref_char`` vertically.
    ``char_filter`` selects the candidate characters of a cmap.
    """

    name: str
    ref_char: str
    ref_height: float
    baseline: float | None
    char_filter: Callable[[str], bool]


LATIN = RenderStyle("latin", "H", CAP_HEIGHT, BASELINE, is_candidate_char)


def _cmap_chars(path: str, char_filter: Callable[[str], bool] = is_candidate_char) -> set[str]:
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, lazy=True, fontNumber=0) as font:
            cmap = font.getBestCmap() or {}
    except Exception as exc:  # fontTools raises many types on broken files
        raise ValueError(f"cannot read font file {path!r}: {exc}") from exc
    return {chr(c) for c in cmap if c < 0x110000 and char_filter(chr(c))}


def _has_char(path: str, ch: str) -> bool:
    return ch in _cmap_chars(path, lambda c: c == ch)


class _FontRenderer:
    """Renders characters of one font at ``S x S`` with the module's size / baseline rule.

    Characters are drawn side by side into one wide strip (one numpy conversion per chunk);
    each is then centred horizontally on its ink columns (integer shift).
    """

    def __init__(self, path: str, size: int, style: RenderStyle = LATIN, index: int = 0) -> None:
        ref = ImageFont.truetype(path, 200, index=index)
        box = ref.getbbox(style.ref_char, anchor="ls")
        height = float(box[3] - box[1])
        if height <= 0:
            raise ValueError(f"font {path!r} has no usable {style.ref_char!r} glyph for sizing")
        pt = max(1.0, 200.0 * style.ref_height * size / height)
        self.font = ImageFont.truetype(path, pt, index=index)
        self.size = size
        if style.baseline is not None:
            self.baseline = style.baseline * size
        else:
            b = self.font.getbbox(style.ref_char, anchor="ls")
            self.baseline = size / 2.0 - (b[1] + b[3]) / 2.0

    def render_many(self, chars: list[str], chunk: int = 256) -> np.ndarray:
        """Return ``uint8 (len(chars), S, S)`` renders (white on black)."""
        s = self.size
        w = 2 * s
        out = np.zeros((len(chars), s, s), dtype=np.uint8)
        for start in range(0, len(chars), chunk):
            part = chars[start : start + chunk]
            strip = Image.new("L", (w * len(part), s))
            draw = ImageDraw.Draw(strip)
            for k, ch in enumerate(part):
                draw.text((k * w + s / 2, self.baseline), ch, font=self.font, fill=255, anchor="ls")
            arr = np.asarray(strip).reshape(s, len(part), w).transpose(1, 0, 2)
            for k in range(len(part)):
                block = arr[k]
                cols = np.flatnonzero(block.max(0))
                if cols.size == 0:
                    continue
                centre = (int(cols[0]) + int(cols[-1]) + 1) / 2.0
                lo = int(np.floor(centre - s / 2.0 + 0.5))
                src_lo, src_hi = max(lo, 0), min(lo + s, w)
                out[start + k, :, src_lo - lo : src_hi - lo] = block[:, src_lo:src_hi]
        return out


@dataclass
class _Rendered:
    chars: list[str]
    fonts: list[str]
    rows: np.ndarray  # (n_chars, n_fonts) int64 row into images, -1 = glyph missing
    images: np.ndarray  # (n_present, S, S) uint8


_RENDER_CACHE: dict[tuple[Any, ...], _Rendered] = {}


def render_glyphs(
    fonts: list[str],
    image_size: int,
    min_fonts: int = 10,
    style: RenderStyle = LATIN,
    characters: frozenset[str] | None = None,
) -> _Rendered:
    """Render every candidate character present in ``>= min_fonts`` of ``fonts`` (cached).

    A glyph counts as present when the font's cmap has it and its render has ink. Fonts without
    ``style.ref_char`` are skipped. ``characters`` restricts the candidates.
    """
    key = (tuple(fonts), int(image_size), int(min_fonts), style.name, characters)
    with _LOCK:
        hit = _RENDER_CACHE.get(key)
    if hit is not None:
        return hit
    usable: list[str] = []
    renderers: list[_FontRenderer] = []
    cmaps: list[set[str]] = []
    for path in fonts:
        font_chars = _cmap_chars(path, style.char_filter)
        if style.ref_char not in font_chars and not _has_char(path, style.ref_char):
            continue
        if characters is not None:
            font_chars &= characters
        try:
            renderer = _FontRenderer(path, image_size, style)
        except ValueError:  # the cmap lists the reference character but its glyph is empty
            continue
        usable.append(path)
        renderers.append(renderer)
        cmaps.append(font_chars)
    counts: dict[str, int] = {}
    for cm in cmaps:
        for ch in cm:
            counts[ch] = counts.get(ch, 0) + 1
    chars = sorted((c for c, n in counts.items() if n >= min_fonts), key=ord)
    index = {c: i for i, c in enumerate(chars)}
    rows = np.full((len(chars), len(usable)), -1, dtype=np.int64)
    images: list[np.ndarray] = []
    total = 0
    for f, (rend, cm) in enumerate(zip(renderers, cmaps, strict=True)):
        todo = sorted(cm & index.keys(), key=ord)
        if not todo:
            continue
        imgs = rend.render_many(todo)
        ink = imgs.reshape(len(todo), -1).max(1) > 0
        for ch in np.asarray(todo, dtype=object)[ink].tolist():
            rows[index[ch], f] = total
            total += 1
        images.append(imgs[ink])
    stack = (
        np.concatenate(images) if images else np.zeros((0, image_size, image_size), dtype=np.uint8)
    )
    result = _Rendered(chars=chars, fonts=usable, rows=rows, images=stack)
    with _LOCK:
        _RENDER_CACHE[key] = result
    return result


def find_homoglyphs(
    rendered: _Rendered,
    candidates: np.ndarray,
    threshold: float = 0.01,
    fraction: float = 0.5,
    min_shared: int = 3,
) -> dict[str, str]:
    """Apply the homoglyph rule (module doc, step 4) to the rows ``candidates`` of ``rendered``.

    Returns ``{dropped_char: representative_char}``; representatives are not keys.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"homoglyph threshold must be in [0, 1]; got {threshold!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"homoglyph fraction must be in (0, 1]; got {fraction!r}")
    cand = np.asarray(candidates, dtype=np.int64)
    n = cand.shape[0]
    rows = rendered.rows[cand]
    present = rows >= 0
    imgs = torch.from_numpy(rendered.images).to(torch.float32) / 255.0
    flat = imgs.reshape(imgs.shape[0], -1)
    # Pre-filter on 4x4 block means: 16 * ||P(a - b)||^2 <= ||a - b||^2 (Jensen), so a pair whose
    # pooled distance already exceeds the bound cannot coincide; survivors are checked exactly.
    pool = max(1, min(4, imgs.shape[-1] // 8))
    pooled = torch.nn.functional.avg_pool2d(imgs.unsqueeze(1), pool).reshape(imgs.shape[0], -1)
    sq_full = (flat * flat).sum(1)
    shared = torch.zeros(n, n, dtype=torch.int32)
    coincide = torch.zeros(n, n, dtype=torch.int32)
    for f in range(rows.shape[1]):
        p = torch.from_numpy(present[:, f])
        if int(p.sum()) < 2:
            continue
        row_of = torch.from_numpy(np.where(present[:, f], rows[:, f], 0))
        xp = pooled[row_of] * p[:, None]
        sqp = (xp * xp).sum(1)
        sq = sq_full[row_of] * p
        total = sq[:, None] + sq[None, :]
        both = torch.triu(p[:, None] & p[None, :], diagonal=1)
        dpool = (sqp[:, None] + sqp[None, :] - 2.0 * (xp @ xp.T)).clamp_min(0.0)
        maybe = both & (pool * pool * dpool <= threshold * total + 1e-6)
        shared += both.to(torch.int32)
        ia, ib = torch.nonzero(maybe, as_tuple=True)
        if ia.numel():
            d = ((flat[row_of[ia]] - flat[row_of[ib]]) ** 2).sum(1)
            # r = ||a - b||^2 / (||a||^2 + ||b||^2) <= threshold
            close = d <= threshold * total[ia, ib]
            coincide[ia[close], ib[close]] += 1
    ok = (shared >= min_shared) & (coincide.to(torch.float64) >= fraction * shared)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in torch.nonzero(ok).tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for a in range(n):
        groups.setdefault(find(a), []).append(a)
    nfonts = present.sum(1)
    out: dict[str, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        chars = [rendered.chars[int(cand[a])] for a in members]
        rep = min(range(len(members)), key=lambda k: (-int(nfonts[members[k]]), ord(chars[k])))
        for k, ch in enumerate(chars):
            if k != rep:
                out[ch] = chars[rep]
    return out


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def glyph_split(ch: str, salt: str = "tcm-glyphs") -> str:
    """Stable split of a character: ``"train"``, ``"calibration"`` or ``"evaluation"``.

    ``u = int(sha256(salt + ":" + ch)[:8]) / 2**64``; train when ``u < 0.5``. ``"calibration"``
    and ``"evaluation"`` (halves by ``sha256(salt + "-half:" + ch)``) form the ``"test"`` split.
    """
    if _unit_hash(f"{salt}:{ch}") < 0.5:
        return "train"
    return "calibration" if _unit_hash(f"{salt}-half:{ch}") < 0.5 else "evaluation"


@dataclass
class GlyphCatalog:
    """Result of steps 1-5 for one font set.

    Attributes:
        fonts: usable font paths (instance index = position).
        classes: kept characters (homoglyph representatives included), by code point.
        homoglyphs: ``{dropped_char: representative_char}``.
        splits: ``{char: "train" | "calibration" | "evaluation"}`` for every kept class.
        font_counts: ``{char: number of fonts with the glyph}`` for every kept class.
    """

    fonts: list[str]
    classes: list[str]
    homoglyphs: dict[str, str]
    splits: dict[str, str]
    font_counts: dict[str, int] = field(default_factory=dict)

    def split_classes(self, split: str) -> list[str]:
        """Characters of ``split``: train, test, calibration, evaluation or all."""
        if split == "all":
            return list(self.classes)
        if split == "test":
            return [c for c in self.classes if self.splits[c] != "train"]
        return [c for c in self.classes if self.splits[c] == split]


_CATALOG_CACHE: dict[tuple[Any, ...], GlyphCatalog] = {}
SPLITS = ("train", "test", "calibration", "evaluation", "all")


def glyph_catalog(
    root: str | os.PathLike[str] | None = None,
    *,
    extra_fonts: bool = False,
    min_fonts: int = 10,
    homoglyph_threshold: float = 0.01,
    homoglyph_fraction: float = 0.5,
) -> GlyphCatalog:
    """Compute (and cache) the class list, homoglyph groups and split of the glyph dataset."""
    fonts = list_fonts(root, extra_fonts)
    return build_catalog(
        fonts,
        min_fonts=min_fonts,
        style=LATIN,
        salt="tcm-glyphs",
        homoglyph_threshold=homoglyph_threshold,
        homoglyph_fraction=homoglyph_fraction,
        extra_confusables=EXTRA_CONFUSABLES,
    )


def build_catalog(
    fonts: list[str],
    *,
    min_fonts: int,
    style: RenderStyle,
    salt: str,
    homoglyph_threshold: float | None,
    homoglyph_fraction: float = 0.5,
    extra_confusables: dict[str, str] | None = None,
    characters: frozenset[str] | None = None,
) -> GlyphCatalog:
    """Steps 2-5 of the module doc for any font set; ``homoglyph_threshold=None`` skips step 4."""
    if isinstance(min_fonts, bool) or not isinstance(min_fonts, int) or min_fonts < 1:
        raise ValueError(f"min_fonts must be an int >= 1; got {min_fonts!r}")
    key = (
        tuple(fonts),
        min_fonts,
        style.name,
        salt,
        homoglyph_threshold,
        float(homoglyph_fraction),
        characters,
    )
    with _LOCK:
        hit = _CATALOG_CACHE.get(key)
    if hit is not None:
        return hit
    rendered = render_glyphs(fonts, ANALYSIS_SIZE, min_fonts, style, characters)
    counts = (rendered.rows >= 0).sum(1)
    cand = np.flatnonzero(counts >= min_fonts)
    if cand.size == 0:
        raise ValueError(
            f"no character is present in >= {min_fonts} of the {len(rendered.fonts)} usable fonts"
        )
    dropped: dict[str, str] = {}
    if homoglyph_threshold is not None:
        dropped = find_homoglyphs(rendered, cand, homoglyph_threshold, homoglyph_fraction)
    present = {rendered.chars[i] for i in cand.tolist()}
    for ch, rep in (extra_confusables or {}).items():
        rep = dropped.get(rep, rep)
        if ch in present and rep in present and ch not in dropped:
            dropped[ch] = rep
    classes = [rendered.chars[i] for i in cand.tolist() if rendered.chars[i] not in dropped]
    fc = {rendered.chars[i]: int(counts[i]) for i in cand.tolist()}
    catalog = GlyphCatalog(
        fonts=rendered.fonts,
        classes=classes,
        homoglyphs=dropped,
        splits={c: glyph_split(c, salt) for c in classes},
        font_counts={c: fc[c] for c in classes},
    )
    with _LOCK:
        _CATALOG_CACHE[key] = catalog
    return catalog


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seeded small affine jitter + stroke width change + blur on a ``uint8 (S, S)`` render."""
    s = img.shape[0]
    pil = Image.fromarray(img)
    angle = float(rng.uniform(-8.0, 8.0))
    scale = float(rng.uniform(0.9, 1.1))
    shear = float(rng.uniform(-0.15, 0.15))
    tx, ty = (float(v) for v in rng.uniform(-0.06 * s, 0.06 * s, size=2))
    th = np.deg2rad(angle)
    cos, sin = np.cos(th) / scale, np.sin(th) / scale
    c = (s - 1) / 2.0
    a, b = cos, sin + shear * cos
    d, e = -sin, cos - shear * sin
    coeffs = (a, b, c - a * (c + tx) - b * (c + ty), d, e, c - d * (c + tx) - e * (c + ty))
    pil = pil.transform((s, s), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    stroke = rng.integers(0, 3)  # 0: none, 1: thicker, 2: thinner
    if stroke == 1:
        pil = pil.filter(ImageFilter.MaxFilter(3))
    elif stroke == 2 and s >= 48:
        pil = pil.filter(ImageFilter.MinFilter(3))
    radius = float(rng.uniform(0.0, 0.04 * s))
    if radius > 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(pil, dtype=np.uint8)


def _augment_rgb(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seeded small affine jitter + blur on a ``uint8 (S, S, 3)`` image on white."""
    s = img.shape[0]
    angle = float(rng.uniform(-8.0, 8.0))
    scale = float(rng.uniform(0.9, 1.1))
    tx, ty = (int(v) for v in rng.integers(-round(0.06 * s), round(0.06 * s) + 1, size=2))
    pil = Image.fromarray(img).rotate(
        angle,
        resample=Image.Resampling.BILINEAR,
        translate=(tx, ty),
        fillcolor=(255, 255, 255),
    )
    if abs(scale - 1.0) > 1e-3:
        side = max(1, round(s * scale))
        big = pil.resize((side, side), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (max(s, side), max(s, side)), (255, 255, 255))
        canvas.paste(big, ((canvas.width - side) // 2, (canvas.height - side) // 2))
        off = (canvas.width - s) // 2
        pil = canvas.crop((off, off, off + s, off + s))
    radius = float(rng.uniform(0.0, 0.03 * s))
    if radius > 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(pil, dtype=np.uint8).copy()


class GlyphDataset(TensorImageDataset):
    """Rendered glyph dataset; extra attributes ``fonts`` (per-sample font file name),
    ``homoglyphs`` (``{dropped: representative}``) and ``catalog`` (:class:`GlyphCatalog`).
    ``domains`` are font families (:func:`font_family`), ``ids`` ``char@font``."""

    fonts: list[str]
    homoglyphs: dict[str, str]
    catalog: GlyphCatalog


def build_glyph_dataset(
    name: str,
    split: str,
    catalog: GlyphCatalog,
    rendered: _Rendered,
    transform: object,
    image_size: int,
    augment_copies: int,
    seed: int,
    kind: str = "glyph",
) -> GlyphDataset:
    """Assemble the samples of ``split`` from a catalog and its renders (shared with cjk)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    bad_copies = isinstance(augment_copies, bool) or not isinstance(augment_copies, int)
    if bad_copies or augment_copies < 0:
        raise ValueError(f"augment_copies must be an int >= 0; got {augment_copies!r}")
    classes = catalog.split_classes(split)
    if not classes:
        raise ValueError(f"{name}: split {split!r} has no classes")
    index = {c: i for i, c in enumerate(rendered.chars)}
    font_names = [os.path.basename(f) for f in rendered.fonts]
    families = [font_family(f) for f in rendered.fonts]
    if len(set(font_names)) < len(font_names):  # same file name in two folders: ids need paths
        font_ids = [
            f if font_names.count(n) > 1 else n
            for f, n in zip(rendered.fonts, font_names, strict=True)
        ]
    else:
        font_ids = font_names
    imgs: list[np.ndarray] = []
    labels: list[int] = []
    inst: list[str] = []
    domains: list[str] = []
    ids: list[str] = []
    for code, ch in enumerate(classes):
        ci = index[ch]
        for f in np.flatnonzero(rendered.rows[ci] >= 0).tolist():
            base = rendered.images[rendered.rows[ci, f]]
            imgs.append(base)
            labels.append(code)
            inst.append(font_names[f])
            domains.append(families[f])
            ids.append(f"{ch}@{font_ids[f]}")
            for k in range(augment_copies):
                rng = np.random.default_rng([seed, int(_unit_hash(ch) * 2**53), f, k])
                imgs.append(_augment(base, rng))
                labels.append(code)
                inst.append(f"{font_names[f]}#aug{k}")
                domains.append(families[f])
                ids.append(f"{ch}@{font_ids[f]}#aug{k}")
    tensor = torch.from_numpy(np.stack(imgs))
    kind_tf = resolve_transform(transform, kind, split, image_size)
    ds = GlyphDataset(
        name, split, tensor, np.asarray(labels, dtype=np.int64), classes, kind_tf, inst
    )
    ds.fonts = inst
    ds.domains = np.asarray(domains, dtype=str)
    ds.ids = ids
    ds.homoglyphs = dict(catalog.homoglyphs)
    ds.catalog = catalog
    return ds


def load_glyphs(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    transform: object = "default",
    *,
    extra_fonts: bool = False,
    min_fonts: int = 10,
    augment_copies: int = 0,
    seed: int = 0,
    homoglyph_threshold: float = 0.01,
    homoglyph_fraction: float = 0.5,
) -> GlyphDataset:
    """Load the glyph dataset (see the module doc for the exact construction).

    Args:
        split: ``"train"``, ``"test"``, ``"calibration"`` / ``"evaluation"`` (halves of test),
            or ``"all"``.
        root: font directory to use instead of matplotlib's.
        image_size: render size ``S`` in pixels (default 32).
        transform: ``"default"`` (glyph train/test pipeline of :mod:`tcm.data.transforms`),
            ``None`` (float ``[0, 1]``, white glyph on black) or a callable on ``uint8 (3, S, S)``.
        extra_fonts: add the fonts of ``rendercv-fonts`` (ValueError if not installed). Off by
            default so that the class list is identical on every machine.
        min_fonts: keep characters present in at least this many fonts.
        augment_copies: seeded augmented copies added per (character, font) render.
        seed: seed of the augmented copies.
    """
    size = image_size_or_default(image_size, DEFAULT_IMAGE_SIZE)
    catalog = glyph_catalog(
        root,
        extra_fonts=extra_fonts,
        min_fonts=min_fonts,
        homoglyph_threshold=homoglyph_threshold,
        homoglyph_fraction=homoglyph_fraction,
    )
    rendered = render_glyphs(list_fonts(root, extra_fonts), size, min_fonts)
    return build_glyph_dataset(
        "glyphs", split, catalog, rendered, transform, size, augment_copies, seed
    )
