"""Tests for the rendered glyph dataset (tcm.data.glyphs)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from tcm.data import glyphs as G
from tcm.data import load


@pytest.fixture(scope="module")
def catalog() -> G.GlyphCatalog:
    return G.glyph_catalog()


@pytest.fixture(scope="module")
def train() -> G.GlyphDataset:
    return G.load_glyphs("train", transform=None)


@pytest.fixture(scope="module")
def test_split() -> G.GlyphDataset:
    return G.load_glyphs("test", transform=None)


@pytest.fixture(scope="module")
def small_fonts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 6 Computer Modern text fonts (~67 characters each): fast; use with min_fonts=5."""
    d = tmp_path_factory.mktemp("fonts")
    src = G.default_font_dir()
    for f in ("cmb10.ttf", "cmmi10.ttf", "cmr10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf"):
        shutil.copy(os.path.join(src, f), d / f)
    return d


def _ref_split(ch: str) -> str:
    u = int(hashlib.sha256(("tcm-glyphs:" + ch).encode()).hexdigest()[:16], 16) / 2**64
    if u < 0.5:
        return "train"
    v = int(hashlib.sha256(("tcm-glyphs-half:" + ch).encode()).hexdigest()[:16], 16) / 2**64
    return "calibration" if v < 0.5 else "evaluation"


def test_split_disjoint_and_sizes(
    catalog: G.GlyphCatalog, train: G.GlyphDataset, test_split: G.GlyphDataset
) -> None:
    tr, te = set(train.class_names), set(test_split.class_names)
    assert tr.isdisjoint(te)
    assert tr | te == set(catalog.classes)
    assert 200 <= len(tr) <= 1000 and 200 <= len(te) <= 1000
    cal = set(catalog.split_classes("calibration"))
    ev = set(catalog.split_classes("evaluation"))
    assert cal.isdisjoint(ev) and cal | ev == te
    for ch in catalog.classes:
        assert catalog.splits[ch] == _ref_split(ch)


def test_contract_fields(train: G.GlyphDataset) -> None:
    assert train.labels.dtype == np.int64 and train.labels.shape == (len(train),)
    assert set(np.unique(train.labels).tolist()) == set(range(train.num_classes))
    assert len(set(train.class_names)) == train.num_classes
    assert train.name == "glyphs" and train.split == "train"
    counts = train.class_counts()
    assert counts.min() >= 10
    img, label = train[5]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert label == int(train.labels[5])
    assert len(train.fonts) == len(train)
    # every (class, font) pair occurs once
    pairs = set(zip(train.labels.tolist(), train.fonts, strict=True))
    assert len(pairs) == len(train)


def test_candidate_characters(catalog: G.GlyphCatalog) -> None:
    for ch in catalog.classes:
        assert unicodedata.category(ch) in {"Lu", "Ll", "Lt", "Lo", "Nd"}
        assert unicodedata.normalize("NFKC", ch) == ch
        assert catalog.font_counts[ch] >= 10
    scripts = {unicodedata.name(c).split()[0] for c in catalog.classes}
    assert {"LATIN", "GREEK", "CYRILLIC", "DIGIT"} <= scripts
    assert not G.is_candidate_char("\ufb01")  # ligature fi is a compatibility character
    assert not G.is_candidate_char("+")
    assert G.is_candidate_char("Ж")


def test_known_homoglyphs_merged(catalog: G.GlyphCatalog) -> None:
    h = catalog.homoglyphs
    kept = set(catalog.classes)
    for latin, others in {
        "A": "ΑА",
        "B": "ΒВ",
        "E": "ΕЕ",
        "O": "ΟО0",
        "P": "ΡР",
        "I": "Ι1l",
    }.items():
        assert latin in kept
        for o in others:
            assert h[o] == latin and o not in kept
    for lower, cyr in zip("aceopxy", "асеорху", strict=True):
        assert h[cyr] == lower
    for distinct in "ABEFOQabeoŁŋЖШЩЯλΣ23456789":
        assert distinct in kept, distinct
    assert not (set(h) & kept)


def _ref_r(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.astype(np.float64) / 255, b.astype(np.float64) / 255
    return float(((x - y) ** 2).sum() / ((x * x).sum() + (y * y).sum()))


def test_homoglyph_rule_brute_force(catalog: G.GlyphCatalog) -> None:
    """Re-derive the rule for dropped pairs and for random kept pairs with plain numpy."""
    r = G.render_glyphs(catalog.fonts, 32)
    idx = {c: i for i, c in enumerate(r.chars)}

    def coincide_fraction(a: str, b: str) -> tuple[int, float]:
        shared = close = 0
        for f in range(len(r.fonts)):
            ra, rb = r.rows[idx[a], f], r.rows[idx[b], f]
            if ra < 0 or rb < 0:
                continue
            shared += 1
            close += _ref_r(r.images[ra], r.images[rb]) <= 0.01
        return shared, close / max(shared, 1)

    computed = {k: v for k, v in catalog.homoglyphs.items() if k not in G.EXTRA_CONFUSABLES}
    # every dropped char is connected to its representative by a chain of rule pairs; at least
    # one member pair per group must satisfy the rule directly
    groups: dict[str, list[str]] = {}
    for k, v in computed.items():
        groups.setdefault(v, []).append(k)
    for rep, members in list(groups.items())[:40]:
        ok = any(
            coincide_fraction(a, b)[0] >= 3 and coincide_fraction(a, b)[1] >= 0.5
            for a in [rep, *members]
            for b in members
            if a != b
        )
        assert ok, (rep, members)
    rng = np.random.default_rng(0)
    kept = catalog.classes
    for _ in range(150):
        a, b = rng.choice(len(kept), size=2, replace=False)
        shared, frac = coincide_fraction(kept[a], kept[b])
        assert shared < 3 or frac < 0.5, (kept[a], kept[b])


def test_find_homoglyphs_synthetic() -> None:
    """Tiny hand-built render table: identical renders merge, different ones stay."""
    s = 32
    blank = np.zeros((s, s), np.uint8)
    bar = blank.copy()
    bar[4:28, 14:18] = 255
    box = blank.copy()
    box[8:24, 8:24] = 255
    bar_noisy = bar.copy()
    bar_noisy[4, 13] = 255  # one extra pixel: r ~ 0.005, still "coincides"
    images = np.stack([bar, bar, box, bar_noisy, bar, box, bar, box, box])
    # chars x fonts (3 fonts): X and Y identical in all fonts, Z always a box
    rows = np.array([[0, 3, 6], [1, 4, 8], [2, 5, 7]])
    rend = G._Rendered(chars=["X", "Y", "Z"], fonts=["f1", "f2", "f3"], rows=rows, images=images)
    out = G.find_homoglyphs(rend, np.arange(3))
    # Y equals X in fonts 1, 2 (2 of 3 >= 0.5) -> merged; Z differs
    assert out == {"Y": "X"}
    assert G.find_homoglyphs(rend, np.arange(3), fraction=1.0) == {}
    # threshold 0: only font 1 is an exact match (1 of 3 fonts) -> no merge
    assert G.find_homoglyphs(rend, np.arange(3), threshold=0.0) == {}
    # fraction 0.3: X~Y (font 1) and Y~Z (font 3, both boxes) -> one group via Y, rep X
    assert G.find_homoglyphs(rend, np.arange(3), fraction=0.3, threshold=0.0) == {
        "Y": "X",
        "Z": "X",
    }


def test_render_geometry(catalog: G.GlyphCatalog) -> None:
    r = G.render_glyphs(catalog.fonts, 32)
    i = r.chars.index("H")
    # integer ink-box rows/columns on the 32-px grid, not float comparisons: the tolerances are
    # in pixels (anti-aliasing and each font's own side bearings move an edge by about 1 px)
    for f in range(len(r.fonts)):
        img = r.images[r.rows[i, f]].astype(np.float64)
        cols = np.flatnonzero(img.max(0) > 0)
        assert abs((cols[0] + cols[-1] + 1) / 2 - 16) <= 1.0
        rows_ = np.flatnonzero(img.max(1) > 64)
        assert abs(rows_[-1] + 1 - 0.7 * 32) <= 1.5  # baseline
        assert abs((rows_[-1] - rows_[0] + 1) - 16) <= 2.0  # cap height = S / 2


def test_determinism_fresh_render(small_fonts: Path) -> None:
    a = G.load_glyphs(
        "train", root=small_fonts, min_fonts=5, transform=None, augment_copies=1, seed=3
    )
    G._RENDER_CACHE.clear()
    G._CATALOG_CACHE.clear()
    b = G.load_glyphs(
        "train", root=small_fonts, min_fonts=5, transform=None, augment_copies=1, seed=3
    )
    assert a.images is not b.images
    assert torch.equal(a.images, b.images)
    assert np.array_equal(a.labels, b.labels) and a.class_names == b.class_names
    c = G.load_glyphs(
        "train", root=small_fonts, min_fonts=5, transform=None, augment_copies=1, seed=4
    )
    assert np.array_equal(a.labels, c.labels)
    aug_a = torch.stack([a.images[i] for i, f in enumerate(a.fonts) if "#aug" in f])
    aug_c = torch.stack([c.images[i] for i, f in enumerate(c.fonts) if "#aug" in f])
    assert not torch.equal(aug_a, aug_c)
    plain = torch.stack([a.images[i] for i, f in enumerate(a.fonts) if "#aug" not in f])
    assert len(a) == 2 * plain.shape[0]


def test_image_size_and_transforms(small_fonts: Path) -> None:
    ds = load("glyphs", "test", root=small_fonts, min_fonts=5, image_size=48)
    img, _ = ds[0]
    assert img.shape == (3, 48, 48) and img.dtype == torch.float32
    assert float(img.min()) < -1.0  # ImageNet-normalised black background
    tr = load("glyphs", "train", root=small_fonts, min_fonts=5, image_size=48)
    torch.manual_seed(0)
    x1, _ = tr[0]
    torch.manual_seed(0)
    x2, _ = tr[0]
    assert torch.equal(x1, x2) and x1.shape == (3, 48, 48)
    custom = load(
        "glyphs", "train", root=small_fonts, min_fonts=5, transform=lambda t: t.float() * 2
    )
    assert float(custom[0][0].max()) == 510.0
    # the class split does not depend on the image size
    assert (
        ds.class_names
        == load("glyphs", "test", root=small_fonts, transform=None, min_fonts=5).class_names
    )


def test_extra_fonts_listed() -> None:
    pytest.importorskip("rendercv_fonts")
    fonts = G.list_fonts(extra_fonts=True)
    assert len(fonts) > len(G.list_fonts())
    assert not any(os.path.basename(f) in G.SKIP_FONTS for f in fonts)


def test_error_extra_fonts_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rendercv_fonts", None)
    with pytest.raises(ValueError, match="rendercv-fonts"):
        G.list_fonts(extra_fonts=True)


def test_error_bad_split(small_fonts: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load("glyphs", "validation", root=small_fonts, min_fonts=5)


def test_error_bad_image_size() -> None:
    with pytest.raises(ValueError, match="image_size"):
        load("glyphs", image_size=4)


def test_error_bad_min_fonts() -> None:
    with pytest.raises(ValueError, match="min_fonts"):
        load("glyphs", min_fonts=0)


def test_error_root_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load("glyphs", root=tmp_path / "nope")


def test_error_root_without_fonts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no \.ttf/\.otf fonts"):
        load("glyphs", root=tmp_path)


def test_error_too_few_fonts(small_fonts: Path) -> None:
    with pytest.raises(ValueError, match="present in >= 50"):
        load("glyphs", root=small_fonts, min_fonts=50)


def test_error_bad_augment_copies(small_fonts: Path) -> None:
    with pytest.raises(ValueError, match="augment_copies"):
        load("glyphs", root=small_fonts, min_fonts=5, augment_copies=-1)


def test_error_bad_transform(small_fonts: Path) -> None:
    with pytest.raises(ValueError, match="transform must be"):
        load("glyphs", root=small_fonts, min_fonts=5, transform="fancy")


def test_error_bad_font_file(tmp_path: Path) -> None:
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    with pytest.raises(ValueError, match=r"broken\.ttf"):
        load("glyphs", root=tmp_path)


def test_error_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load("mnist")


def test_index_error(small_fonts: Path) -> None:
    ds = load("glyphs", root=small_fonts, min_fonts=5, transform=None)
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0])


def test_font_with_empty_reference_glyph_is_skipped(
    small_fonts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real case: Debian's setofont-ex.ttf lists the CJK sizing character in its cmap but its
    # glyph is empty; such a font must be left out, not abort the whole dataset.
    fonts = G.list_fonts(small_fonts)
    bad = fonts[0]
    real = G._FontRenderer

    class Picky(real):  # type: ignore[misc, valid-type]
        def __init__(self, path: str, *a: object, **kw: object) -> None:
            if path == bad:
                raise ValueError(f"font {path!r} has no usable glyph for sizing")
            super().__init__(path, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(G, "_FontRenderer", Picky)
    G._RENDER_CACHE.clear()
    r = G.render_glyphs(fonts, 16, min_fonts=3)
    assert bad not in r.fonts and len(r.fonts) == len(fonts) - 1
    G._RENDER_CACHE.clear()
