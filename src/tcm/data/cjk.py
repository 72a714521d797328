"""``cjk_glyphs``: Chinese / Japanese ideographs rendered from Debian CJK font packages.

A many-class scale benchmark: class = one CJK Unified Ideograph (U+4E00-9FFF, U+3400-4DBF;
NFKC-stable, so compatibility ideographs are excluded), instance = one font design. Nothing is
downloaded; the fonts come from (about 107 MB)::

    sudo apt-get install fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-wqy-zenhei \\
        fonts-ipafont-mincho fonts-ipafont-gothic fonts-seto fonts-kouzan-mouhitsu

Font discovery: with ``root=None`` every ``.ttf/.otf/.ttc/.otc`` file below ``/usr/share/fonts``
whose name contains one of :data:`PACKAGE_FONT_KEYS` (about 13 designs); with ``root=`` every font
file below that directory. A collection (``.ttc``) contributes its first face (``index=0``).
Fewer than ``min_fonts`` usable fonts -> ValueError with the install line above.

Rendering follows :mod:`tcm.data.glyphs` except the sizing: the ink height of ``国`` is
``0.8 S`` and it is centred vertically. There is no homoglyph pass: Unicode unifies ideographs of
the same shape, and near-identical pairs such as 土 / 士 or 未 / 末 are distinct characters.
The domain of a sample (``ds.domains``) is its design's family
(:func:`tcm.data.glyphs.font_family`: the typographic family of the font's name table, so the
weights of one design are one domain); ids are ``char@font file``.
Split by ``sha256("tcm-cjk:" + ch)`` (train / test halves, test split again into calibration /
evaluation). With all packages: ~10,400 classes in >= 10 designs.

Example:
    >>> is_cjk_char("国"), is_cjk_char("A"), is_cjk_char("\uf900")  # U+F900: a compatibility form
    (True, False, False)

    Loading needs the Debian font packages above, which a fresh checkout does not have, so this
    line is not run as a doctest:

    >>> ds = load_cjk_glyphs("train")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable

from tcm.data.glyphs import (
    DEFAULT_IMAGE_SIZE,
    GlyphDataset,
    RenderStyle,
    _font_files,
    build_catalog,
    build_glyph_dataset,
    render_glyphs,
)
from tcm.data.transforms import image_size_or_default

__all__ = [
    "APT_LINE",
    "CJK",
    "PACKAGE_FONT_KEYS",
    "find_cjk_fonts",
    "is_cjk_char",
    "load_cjk_glyphs",
]

APT_LINE = (
    "sudo apt-get install fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-wqy-zenhei "
    "fonts-ipafont-mincho fonts-ipafont-gothic fonts-seto fonts-kouzan-mouhitsu"
)
PACKAGE_FONT_KEYS = (
    "notosanscjk",
    "notoserifcjk",
    "ukai",
    "uming",
    "wqy-zenhei",
    "ipag",
    "ipam",
    "seto",
    "kouzan",
)
SYSTEM_FONT_DIR = "/usr/share/fonts"
FONT_EXTS = (".ttf", ".otf", ".ttc", ".otc")


def is_cjk_char(ch: str) -> bool:
    """True for an NFKC-stable CJK Unified Ideograph of the basic block or extension A."""
    if len(ch) != 1:
        return False
    cp = ord(ch)
    in_block = 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF
    return in_block and unicodedata.category(ch) == "Lo" and unicodedata.normalize("NFKC", ch) == ch


CJK = RenderStyle("cjk", "国", 0.8, None, is_cjk_char)


def find_cjk_fonts(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Font files for ``cjk_glyphs`` (see module doc); may be empty."""
    if root is not None:
        r = os.fspath(root)
        if not os.path.isdir(r):
            raise ValueError(f"cjk_glyphs: font directory does not exist: {r!r}")
        return _font_files(r, FONT_EXTS)
    if not os.path.isdir(SYSTEM_FONT_DIR):
        return []
    return [
        p
        for p in _font_files(SYSTEM_FONT_DIR, FONT_EXTS)
        if any(k in os.path.basename(p).lower() for k in PACKAGE_FONT_KEYS)
    ]


def load_cjk_glyphs(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    transform: object = "default",
    *,
    min_fonts: int = 10,
    augment_copies: int = 0,
    seed: int = 0,
    characters: Iterable[str] | None = None,
) -> GlyphDataset:
    """Load ``cjk_glyphs`` (see module doc).

    Args:
        split: ``"train"``, ``"test"``, ``"calibration"``, ``"evaluation"`` or ``"all"``.
        root: font directory (default: the Debian packages under ``/usr/share/fonts``).
        image_size: render size in pixels (default 32).
        min_fonts: keep ideographs present in at least this many fonts.
        characters: optional subset of ideographs to consider (e.g. for quick experiments).
    """
    size = image_size_or_default(image_size, DEFAULT_IMAGE_SIZE)
    fonts = find_cjk_fonts(root)
    if isinstance(min_fonts, bool) or not isinstance(min_fonts, int) or min_fonts < 1:
        raise ValueError(f"min_fonts must be an int >= 1; got {min_fonts!r}")
    if len(fonts) < min_fonts:
        where = SYSTEM_FONT_DIR if root is None else os.fspath(root)
        raise ValueError(
            f"cjk_glyphs: found {len(fonts)} CJK font file(s) under {where!r}, need >= "
            f"{min_fonts} (min_fonts); install them with: {APT_LINE}"
        )
    chars = None if characters is None else frozenset(c for c in characters if is_cjk_char(c))
    catalog = build_catalog(
        fonts,
        min_fonts=min_fonts,
        style=CJK,
        salt="tcm-cjk",
        homoglyph_threshold=None,
        characters=chars,
    )
    rendered = render_glyphs(fonts, size, min_fonts, CJK, chars)
    ds = build_glyph_dataset(
        "cjk_glyphs", split, catalog, rendered, transform, size, augment_copies, seed
    )
    return ds
