"""Per-sample domains and ids: base-class defaults and checks, glyph families, emoji vendors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcm.data import load
from tcm.data.base import TensorImageDataset
from tcm.data.emoji import load_emoji
from tcm.data.glyphs import default_font_dir, font_family, list_fonts


def tiny(n: int = 4) -> TensorImageDataset:
    return TensorImageDataset(
        "toy", "test", torch.zeros(n, 8, 8, dtype=torch.uint8), np.arange(n) % 2, ["a", "b"]
    )


def test_base_defaults() -> None:
    ds = tiny()
    assert ds.domains is None
    assert ds.ids == ["0", "1", "2", "3"]


def test_base_setters_validate() -> None:
    ds = tiny()
    ds.domains = ["x", "y", "x", "y"]
    assert isinstance(ds.domains, np.ndarray) and ds.domains.tolist() == ["x", "y", "x", "y"]
    ds.ids = ["a", "b", "c", "d"]
    assert ds.ids == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match=r"domains must have shape \(4,\)"):
        ds.domains = ["x"]
    with pytest.raises(ValueError, match="ids must have length 4"):
        ds.ids = ["a"]
    with pytest.raises(ValueError, match="'a' repeats"):
        ds.ids = ["a", "b", "a", "d"]
    ds.domains = None
    ds.ids = None
    assert ds.domains is None and ds.ids[0] == "0"


def test_font_family_rules() -> None:
    fams = {os.path.basename(p): font_family(p) for p in list_fonts()}
    assert fams["DejaVuSansMono-Bold.ttf"] == "DejaVu" == fams["DejaVuSerif.ttf"]
    assert fams["STIXGeneralBolIta.ttf"] == "STIX" == fams["STIXNonUni.ttf"]
    assert fams["cmr10.ttf"] == "Computer Modern" == fams["cmtt10.ttf"]
    assert set(fams.values()) == {"DejaVu", "STIX", "Computer Modern"}


def test_font_family_name_table(tmp_path: Path) -> None:
    src = Path(default_font_dir()) / "DejaVuSerif-Bold.ttf"
    dst = tmp_path / "renamed.ttf"
    dst.write_bytes(src.read_bytes())
    assert font_family(str(dst)) == "DejaVu Serif"  # typographic family; style not included
    assert font_family(str(tmp_path / "Missing-Bold.ttf")) == "Missing"


def test_rendercv_families_are_folder_names() -> None:
    pytest.importorskip("rendercv_fonts")
    from tcm.data.glyphs import extra_font_paths

    paths = extra_font_paths()
    fams = {font_family(p) for p in paths}
    folders = {os.path.basename(os.path.dirname(p)) for p in paths}
    assert fams == folders and len(fams) >= 10


def test_glyph_domains_and_ids() -> None:
    ds = load("glyphs", split="test", transform=None)
    assert ds.domains is not None and ds.domains.shape == (len(ds),)
    assert set(ds.domains.tolist()) == {"DejaVu", "STIX", "Computer Modern"}
    ids = ds.ids
    assert len(ids) == len(ds) == len(set(ids))
    fonts = ds.fonts  # type: ignore[attr-defined]
    for i in (0, len(ds) // 2, len(ds) - 1):
        ch = ds.class_names[int(ds.labels[i])]
        assert ids[i] == f"{ch}@{fonts[i]}"
        assert ds.domains[i] == font_family(fonts[i])
    # one class has samples in several families (groups are not classes)
    lab0 = ds.labels == ds.labels[0]
    assert len(set(ds.domains[lab0].tolist())) >= 2


def test_glyph_augmented_ids_unique() -> None:
    ds = load("glyphs", split="evaluation", transform=None, augment_copies=1)
    assert len(set(ds.ids)) == len(ds)
    assert any(i.endswith("#aug0") for i in ds.ids)
    assert ds.domains is not None and "#" not in "".join(set(ds.domains.tolist()))


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (64, 64), (*colour, 255)).save(path)


def test_emoji_domains_are_vendors(tmp_path: Path) -> None:
    keys = ["1f600", "1f601", "1f602", "1f603", "1f604", "2764"]
    for v, vendor in enumerate(("google", "twitter")):
        for k, key in enumerate(keys):
            _png(tmp_path / vendor / f"{key}.png", (30 * k, 90 * v, 10))
    ds = load_emoji(
        "all",
        sources={"google": str(tmp_path / "google"), "twitter": str(tmp_path / "twitter")},
        openmoji=False,
        transform=None,
        augment_copies=1,
    )
    assert ds.domains is not None
    assert set(ds.domains.tolist()) == {"google", "twitter"}
    assert len(set(ds.ids)) == len(ds)
    assert "1F600@google" in ds.ids and "1F600@twitter#aug0" in ds.ids
