"""Tests for the on-disk loaders (CUB, Cars196, SOP, iNaturalist, In-Shop, folder, CSV) on tiny
fabricated trees, including corrupt and missing image files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from tcm.data import FileImageDataset, available_datasets, load
from tcm.data._images import read_rgb


def _jpeg(path: Path, value: int, size: tuple[int, int] = (20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, (7 * value) % 256)).save(path, "JPEG")


def _corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")


def fload(*args: Any, **kw: Any) -> FileImageDataset:
    ds = load(*args, **kw)
    assert isinstance(ds, FileImageDataset)
    return ds


# ---------------------------------------------------------------- layouts
def _cub(root: Path) -> dict[str, int]:
    """Classes 1, 2 (train) and 101, 150 (test), 2 images each. Returns rel path -> class."""
    entries = {}
    k = 0
    for c in (1, 2, 101, 150):
        for j in range(2):
            k += 1
            rel = f"{c:03d}.Bird_{c}/img_{j}.jpg"
            _jpeg(root / "images" / rel, 10 * k)
            entries[rel] = c
    (root / "images.txt").write_text("".join(f"{i} {r}\n" for i, r in enumerate(entries, 1)))
    (root / "image_class_labels.txt").write_text(
        "".join(f"{i} {c}\n" for i, c in enumerate(entries.values(), 1))
    )
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, 201)))
    return entries


def test_cub200(tmp_path: Path) -> None:
    entries = _cub(tmp_path)
    tr = load("cub200", "train", root=tmp_path, transform=None)
    te = load("cub200", "test", root=tmp_path, transform=None)
    assert len(tr) == 4 and len(te) == 4
    assert tr.class_names == ["001.Bird_1", "002.Bird_2"]
    assert te.class_names == ["101.Bird_101", "150.Bird_150"]
    assert set(tr.class_names).isdisjoint(te.class_names)
    assert tr.labels.tolist() == [0, 0, 1, 1]
    # image content: brute-force decode of the file with PIL
    img, label = te[2]
    rel = list(entries)[6]
    ref = torch.from_numpy(np.array(Image.open(tmp_path / "images" / rel).convert("RGB")))
    assert torch.allclose(img, ref.permute(2, 0, 1).float() / 255)
    assert label == 1
    # parent folder of CUB_200_2011 is accepted too
    (tmp_path.parent / "wrap").mkdir()
    os.symlink(tmp_path, tmp_path.parent / "wrap" / "CUB_200_2011")
    assert len(load("cub200", "train", root=tmp_path.parent / "wrap")) == 4


def test_cub200_default_transform_shapes(tmp_path: Path) -> None:
    _cub(tmp_path)
    tr = load("cub200", "train", root=tmp_path, image_size=16)
    te = load("cub200", "test", root=tmp_path, image_size=16)
    assert tr[0][0].shape == (3, 16, 16) and te[0][0].shape == (3, 16, 16)
    assert tr[0][0].dtype == torch.float32


def _cars(root: Path) -> None:
    rows = []
    for k, c in enumerate((1, 1, 98, 99, 99, 196)):
        rel = f"car_ims/{k + 1:06d}.jpg"
        _jpeg(root / rel, 30 * k)
        rows.append((rel, c, k % 2))
    ann = np.zeros((1, len(rows)), dtype=[("relative_im_path", "O"), ("class", "O"), ("test", "O")])
    for i, (rel, c, t) in enumerate(rows):
        ann[0, i] = (rel, np.array([[c]], dtype=np.uint8), np.array([[t]], dtype=np.uint8))
    names = np.empty((1, 196), dtype=object)
    for i in range(196):
        names[0, i] = f"Car model {i + 1}"
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": ann, "class_names": names})


def test_cars196(tmp_path: Path) -> None:
    _cars(tmp_path)
    tr = load("cars196", "train", root=tmp_path, transform=None)
    te = fload("cars196", "test", root=tmp_path, transform=None)
    assert tr.class_names == ["Car model 1", "Car model 98"]
    assert te.class_names == ["Car model 99", "Car model 196"]
    assert tr.labels.tolist() == [0, 0, 1] and te.labels.tolist() == [0, 0, 1]
    assert os.path.basename(te.paths[2]) == "000006.jpg"


def test_cars196_bad_mat(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "cars_annos.mat", {"something": np.zeros(3)})
    with pytest.raises(ValueError, match="no 'annotations'"):
        load("cars196", root=tmp_path)


def _sop(root: Path) -> None:
    lines: dict[str, list[str]] = {"train": [], "test": []}
    k = 0
    for split, classes in (("train", (1, 2, 3)), ("test", tuple(range(11319, 11327)))):
        for c in classes:
            for j in range(2):
                k += 1
                rel = f"bicycle_final/{c}_{j}.JPG"
                _jpeg(root / rel, 11 * k)
                lines[split].append(f"{k} {c} 1 {rel}")
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        body = "\n".join(lines[split])
        (root / name).write_text("image_id class_id super_class_id path\n" + body + "\n")


def test_sop(tmp_path: Path) -> None:
    _sop(tmp_path)
    tr = load("sop", "train", root=tmp_path, transform=None)
    te = load("sop", "test", root=tmp_path, transform=None)
    assert tr.num_classes == 3 and te.num_classes == 8 and len(tr) == 6 and len(te) == 16
    assert te.class_names == [str(c) for c in range(11319, 11327)]
    assert set(tr.class_names).isdisjoint(te.class_names)
    halves = [load("sop", h, root=tmp_path, transform=None) for h in ("calibration", "evaluation")]
    assert sum(len(h) for h in halves) == len(te)
    names = [set(h.class_names) for h in halves]
    assert names[0].isdisjoint(names[1]) and names[0] | names[1] == set(te.class_names)


def test_sop_bad_header(tmp_path: Path) -> None:
    (tmp_path / "Ebay_train.txt").write_text("1 1 1 a.jpg\n")
    with pytest.raises(ValueError, match="header"):
        load("sop", root=tmp_path)


def test_sop_bad_columns(tmp_path: Path) -> None:
    (tmp_path / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n1 1 a.jpg\n")
    with pytest.raises(ValueError, match="line 2"):
        load("sop", root=tmp_path)


def _inat(root: Path, split_dir: bool = True) -> None:
    lists: dict[str, list[str]] = {"train": [], "test": []}
    k = 0
    for split, cats in (("train", ("7477", "100")), ("test", ("5", "2"))):
        for cat in cats:
            for j in range(2):
                k += 1
                rel = f"train_val2018/Plantae/{cat}/{k:04d}_{j}.jpg"
                _jpeg(root / rel, 9 * k)
                lists[split].append(rel)
    d = root / "Inat_dataset_splits" if split_dir else root
    d.mkdir(exist_ok=True)
    (d / "Inaturalist_train_set1.txt").write_text("\n".join(lists["train"]) + "\n")
    (d / "Inaturalist_test_set1.txt").write_text("\n".join(lists["test"]) + "\n")


@pytest.mark.parametrize("split_dir", [True, False])
def test_inaturalist2018(tmp_path: Path, split_dir: bool) -> None:
    _inat(tmp_path, split_dir)
    tr = load("inaturalist2018", "train", root=tmp_path, transform=None)
    te = load("inaturalist2018", "test", root=tmp_path, transform=None)
    assert tr.class_names == ["100", "7477"] and te.class_names == ["2", "5"]
    assert tr.labels.tolist() == [1, 1, 0, 0]


def test_inaturalist2018_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Inaturalist_train_set1\.txt"):
        load("inaturalist2018", root=tmp_path)


def _inshop(root: Path) -> None:
    rows = []
    k = 0
    for item, statuses in (
        ("id_00000001", ("train", "train")),
        ("id_00000002", ("train", "train")),
        ("id_00000003", ("query", "gallery", "gallery")),
        ("id_00000004", ("query", "gallery")),
        ("id_00000005", ("query", "query")),
    ):
        for j, st in enumerate(statuses):
            k += 1
            rel = f"img/WOMEN/Dresses/{item}/{j:02d}_1_front.jpg"
            _jpeg(root / rel, 13 * k)
            rows.append(f"{rel} {item} {st}")
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    (root / "list_eval_partition.txt").write_text(text)


def test_inshop(tmp_path: Path) -> None:
    _inshop(tmp_path)
    tr = load("inshop", "train", root=tmp_path, transform=None)
    q = load("inshop", "query", root=tmp_path, transform=None)
    g = load("inshop", "gallery", root=tmp_path, transform=None)
    te = load("inshop", "test", root=tmp_path, transform=None)
    assert tr.class_names == ["id_00000001", "id_00000002"] and len(tr) == 4
    assert q.class_names == g.class_names == ["id_00000003", "id_00000004", "id_00000005"]
    assert q.labels.tolist() == [0, 1, 2, 2]
    assert g.labels.tolist() == [0, 0, 1]  # same coding as query although item 5 is absent
    assert len(te) == len(q) + len(g) == 7
    assert set(tr.class_names).isdisjoint(te.class_names)


def test_inshop_bad_status(tmp_path: Path) -> None:
    (tmp_path / "list_eval_partition.txt").write_text(
        "1\nimage_name item_id evaluation_status\nimg/a.jpg id_1 validation\n"
    )
    with pytest.raises(ValueError, match="line 3"):
        load("inshop", root=tmp_path)


def test_folder_hash_split(tmp_path: Path) -> None:
    for c in range(12):
        for j in range(2):
            _jpeg(tmp_path / f"class_{c:02d}" / f"{j}.png", 20 * c)
    (tmp_path / "class_00" / "notes.txt").write_text("not an image")
    tr = load("folder", "train", root=tmp_path, transform=None)
    te = load("folder", "test", root=tmp_path, transform=None)
    al = load("folder", "all", root=tmp_path, transform=None)
    assert set(tr.class_names).isdisjoint(te.class_names)
    assert set(tr.class_names) | set(te.class_names) == set(al.class_names)
    assert al.num_classes == 12 and len(al) == 24
    assert tr.num_classes > 0 and te.num_classes > 0


def test_folder_train_test_dirs(tmp_path: Path) -> None:
    _jpeg(tmp_path / "train" / "cat" / "a.jpg", 1)
    _jpeg(tmp_path / "train" / "dog" / "a.jpg", 2)
    _jpeg(tmp_path / "test" / "eel" / "a.jpg", 3)
    assert load("folder", "train", root=tmp_path).class_names == ["cat", "dog"]
    assert load("folder", "test", root=tmp_path).class_names == ["eel"]
    _jpeg(tmp_path / "test" / "cat" / "b.jpg", 4)
    with pytest.raises(ValueError, match="both train/ and test/"):
        load("folder", "train", root=tmp_path)


def test_csv_with_split_column(tmp_path: Path) -> None:
    for name, v in (("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3), ("d.jpg", 4)):
        _jpeg(tmp_path / "imgs" / name, v)
    (tmp_path / "data.csv").write_text(
        "path,label,split\nimgs/a.jpg,cat,train\nimgs/b.jpg,cat,train\n"
        "imgs/c.jpg,dog,test\nimgs/d.jpg,eel,test\n"
    )
    tr = load("csv", "train", root=tmp_path / "data.csv", transform=None)
    te = load("csv", "test", root=tmp_path / "data.csv", transform=None)
    assert tr.class_names == ["cat"] and len(tr) == 2
    assert te.class_names == ["dog", "eel"]


def test_csv_without_split_column(tmp_path: Path) -> None:
    lines = ["path,label"]
    for c in range(10):
        _jpeg(tmp_path / f"{c}.jpg", c)
        lines.append(f"{c}.jpg,{c}")
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    tr = load("csv", "train", root=tmp_path / "d.csv")
    te = load("csv", "test", root=tmp_path / "d.csv")
    assert set(tr.class_names).isdisjoint(te.class_names)
    assert tr.num_classes + te.num_classes == 10


def test_csv_overlap_warns(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg", 1)
    _jpeg(tmp_path / "b.jpg", 2)
    (tmp_path / "d.csv").write_text("path,label,split\na.jpg,x,train\nb.jpg,x,test\n")
    with pytest.warns(UserWarning, match="both train and test"):
        load("csv", "train", root=tmp_path / "d.csv")


def test_csv_bad_header(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("file,class\na.jpg,1\n")
    with pytest.raises(ValueError, match="path,label"):
        load("csv", root=tmp_path / "d.csv")


def test_csv_empty_label(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("path,label\na.jpg,\n")
    with pytest.raises(ValueError, match="line 2"):
        load("csv", root=tmp_path / "d.csv")


# ---------------------------------------------------------------- bad files
def _sop_with_bad_files(root: Path) -> tuple[Path, Path]:
    _sop(root)
    corrupt = root / "bicycle_final" / "1_0.JPG"
    _corrupt(corrupt)
    missing = root / "bicycle_final" / "2_1.JPG"
    missing.unlink()
    return corrupt, missing


def test_missing_file_raises_naming_it(tmp_path: Path) -> None:
    _sop_with_bad_files(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"2_1\.JPG"):
        load("sop", "train", root=tmp_path)


def test_missing_file_skipped_with_count(tmp_path: Path) -> None:
    _sop_with_bad_files(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 .* of 6.*2_1\.JPG"):
        ds = load("sop", "train", root=tmp_path, on_error="skip", transform=None)
    assert isinstance(ds, FileImageDataset)
    assert len(ds) == 5 and ds.skipped == 1
    assert np.bincount(ds.labels).tolist() == [2, 1, 2]


def test_corrupt_file_raises_at_getitem(tmp_path: Path) -> None:
    corrupt, missing = _sop_with_bad_files(tmp_path)
    _jpeg(missing, 1)
    ds = fload("sop", "train", root=tmp_path, transform=None)  # existence check passes
    idx = ds.paths.index(str(corrupt))
    with pytest.raises(ValueError, match=r"cannot decode image file .*1_0\.JPG"):
        ds[idx]


def test_corrupt_file_skip_substitutes_same_class(tmp_path: Path) -> None:
    corrupt, missing = _sop_with_bad_files(tmp_path)
    _jpeg(missing, 1)
    ds = fload("sop", "train", root=tmp_path, transform=None, on_error="skip")
    idx = ds.paths.index(str(corrupt))
    with pytest.warns(UserWarning, match=r"1_0\.JPG"):
        img, label = ds[idx]
    other = next(i for i in range(len(ds)) if ds.labels[i] == label and i != idx)
    assert torch.equal(img, ds[other][0])


def test_verify_pass(tmp_path: Path) -> None:
    _, missing = _sop_with_bad_files(tmp_path)
    with pytest.raises(ValueError, match=r"1_0\.JPG"):
        _jpeg(missing, 1)
        load("sop", "train", root=tmp_path, verify=True)
    missing.unlink()
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = load("sop", "train", root=tmp_path, verify=True, on_error="skip")
    assert len(ds) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(len(ds)):
            ds[i]


def test_all_files_bad(tmp_path: Path) -> None:
    (tmp_path / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n1 1 1 x.jpg\n")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no readable images"):
        load("sop", root=tmp_path, on_error="skip")


def test_whole_class_unreadable(tmp_path: Path) -> None:
    _sop(tmp_path)
    for j in range(2):
        _corrupt(tmp_path / "bicycle_final" / f"2_{j}.JPG")
    ds = fload("sop", "train", root=tmp_path, on_error="skip", transform=None)
    idx = ds.paths.index(str(tmp_path / "bicycle_final" / "2_0.JPG"))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no readable image in class"):
        ds[idx]


def test_read_rgb_modes(tmp_path: Path) -> None:
    p = tmp_path / "rgba.png"
    Image.new("RGBA", (3, 2), (10, 20, 30, 0)).save(p)
    t = read_rgb(p)
    assert t.dtype == torch.uint8 and t.shape == (3, 2, 3)
    assert t.flatten().tolist() == [255] * 18  # fully transparent -> white background
    g = tmp_path / "grey.png"
    Image.new("L", (2, 2), 77).save(g)
    assert read_rgb(g).flatten().tolist() == [77] * 12


# ---------------------------------------------------------------- argument errors
@pytest.mark.parametrize(
    "name", ["cub200", "cars196", "sop", "inaturalist2018", "inshop", "folder"]
)
def test_error_root_none(name: str) -> None:
    with pytest.raises(ValueError, match="root="):
        load(name)


def test_error_csv_root_none() -> None:
    with pytest.raises(ValueError, match="root="):
        load("csv")


@pytest.mark.parametrize(
    "name", ["cub200", "cars196", "sop", "inaturalist2018", "inshop", "folder"]
)
def test_error_root_not_dir(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load(name, root=tmp_path / "missing")


@pytest.mark.parametrize("name", ["cub200", "cars196", "sop", "inshop"])
def test_error_required_file_missing(name: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="required file not found"):
        load(name, root=tmp_path)


@pytest.mark.parametrize("name", ["cub200", "cars196", "sop", "inaturalist2018", "inshop"])
def test_error_bad_split(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load(name, "validation", root=tmp_path)


def test_error_bad_split_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be"):
        load("folder", "validation", root=tmp_path)


def test_error_bad_on_error(tmp_path: Path) -> None:
    _sop(tmp_path)
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'; got 'ignore'"):
        load("sop", root=tmp_path, on_error="ignore")


def test_error_bad_image_size(tmp_path: Path) -> None:
    _sop(tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        load("sop", root=tmp_path, image_size=0)


def test_error_bad_test_fraction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        load("folder", root=tmp_path, test_fraction=1.5)


def test_error_cub_unlabelled_image(tmp_path: Path) -> None:
    _cub(tmp_path)
    with open(tmp_path / "images.txt", "a") as fh:
        fh.write("99 extra/x.jpg\n")
    with pytest.raises(ValueError, match="'99'"):
        load("cub200", root=tmp_path)


def test_error_cars_class_range(tmp_path: Path) -> None:
    _cars(tmp_path)
    m = scipy.io.loadmat(tmp_path / "cars_annos.mat")
    m["annotations"][0, 0]["class"] = np.array([[200]], dtype=np.uint8)
    scipy.io.savemat(tmp_path / "cars_annos.mat", {"annotations": m["annotations"]})
    with pytest.raises(ValueError, match=r"1\.\.196; got 200"):
        load("cars196", root=tmp_path)


def test_available_datasets() -> None:
    names = available_datasets()
    for n in ("glyphs", "cjk_glyphs", "emoji", "cub200", "cars196", "sop", "inaturalist2018"):
        assert n in names
    assert {"inshop", "folder", "csv"} <= set(names)


def test_one_dataset_registry_for_load_and_training() -> None:
    """A dataset registered for training (provider of a DataConfig) is also what
    ``tcm.data.load`` finds, and vice versa; unregistering restores a shadowed built-in."""
    from conftest import tiny_dataset
    from tcm.data import register_dataset, registered_loader, unregister_dataset
    from tcm.train import datasets as tds
    from tcm.train.config import DataConfig

    seen: list[tuple[str, int]] = []

    def provider(d: Any, split: str) -> Any:
        seen.append((split, d.image_size))
        return tiny_dataset(split, d.image_size)

    tds.register_dataset("glyphs", provider)
    try:
        assert "glyphs" in tds.registered_datasets()
        assert load("glyphs", "test", image_size=8).name == "tiny"
        assert (
            tds.default_provider(DataConfig(name="glyphs", image_size=12), "train").name == "tiny"
        )
        assert seen == [("test", 8), ("train", 12)]
    finally:
        tds.unregister_dataset("glyphs")
    assert registered_loader("glyphs") is None and "glyphs" in available_datasets()
    register_dataset("tiny2", lambda split, **kw: tiny_dataset(split, kw["image_size"]))
    try:
        ds = tds.default_provider(DataConfig(name="tiny2", image_size=8), "test")
        assert ds.name == "tiny" and ds.split == "test" and "tiny2" in available_datasets()
    finally:
        unregister_dataset("tiny2")
    assert "tiny2" not in available_datasets()
    with pytest.raises(ValueError, match="non-empty string"):
        tds.register_dataset("", provider)


# ---------------------------------------------------------------- the shared photo reader
def test_photo_loaders_share_one_reader_with_ids_relative_to_root(tmp_path: Path) -> None:
    from tcm.data._files import ParsedSplit, read_photo_split
    from tcm.data.sop import parse_sop

    _sop(tmp_path)
    ds = load("sop", "test", root=tmp_path, image_size=16)
    ids = ds.ids  # type: ignore[attr-defined]
    assert len(ids) == len(ds) and not any(os.path.isabs(i) for i in ids)
    assert [os.path.join(str(tmp_path), i) for i in ids] == ds.paths
    parsed = parse_sop(str(tmp_path), "test")
    assert isinstance(parsed, ParsedSplit) and parsed.paths == ds.paths
    # halves go through the same reader: whole test classes, disjoint, covering the test split
    cal = load("sop", "calibration", root=tmp_path, image_size=16)
    ev = load("sop", "evaluation", root=tmp_path, image_size=16)
    assert not set(cal.class_names) & set(ev.class_names)
    assert sorted(cal.ids + ev.ids) == sorted(ids)  # type: ignore[attr-defined]

    def parse_two(root: str, split: str) -> ParsedSplit:
        return ParsedSplit(ds.paths[:4], ["a", "a", "b", "b"])

    own = read_photo_split(
        "mine",
        "train",
        tmp_path,
        parse_two,
        splits=("train",),
        root_hint="x",
        image_size=16,
        transform=None,
        on_error="raise",
        verify=False,
    )
    assert own.class_names == ["a", "b"] and own.labels.tolist() == [0, 0, 1, 1]


def test_inshop_query_and_gallery_share_the_coding(tmp_path: Path) -> None:
    _inshop(tmp_path)
    q = load("inshop", "query", root=tmp_path, image_size=16)
    g = load("inshop", "gallery", root=tmp_path, image_size=16)
    assert q.class_names == g.class_names
    for ds in (q, g):
        names = [ds.class_names[c] for c in ds.labels]
        assert all(f"/{n}/" in p for n, p in zip(names, ds.paths, strict=True))


def test_folder_domain_level(tmp_path: Path) -> None:
    for c, dom, v in (("cat", "phone", 1), ("cat", "dslr", 2), ("dog", "phone", 3)):
        _jpeg(tmp_path / "train" / c / dom / f"{v}.png", v)
    _jpeg(tmp_path / "test" / "eel" / "dslr" / "x.png", 9)
    tr = load("folder", "train", root=tmp_path, transform=None, domain_level=1)
    assert tr.domains is not None
    assert dict(zip(tr.ids, tr.domains.tolist(), strict=True)) == {
        "train/cat/dslr/2.png": "dslr",
        "train/cat/phone/1.png": "phone",
        "train/dog/phone/3.png": "phone",
    }
    assert load("folder", "train", root=tmp_path, transform=None).domains is None
    _jpeg(tmp_path / "train" / "dog" / "flat.png", 4)  # not below a domain folder
    with pytest.raises(ValueError, match=r"flat\.png is not 1 folder"):
        load("folder", "train", root=tmp_path, transform=None, domain_level=1)
    with pytest.raises(ValueError, match="domain_level"):
        load("folder", "train", root=tmp_path, transform=None, domain_level=0)


def test_csv_domain_column(tmp_path: Path) -> None:
    for name, v in (("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3)):
        _jpeg(tmp_path / "imgs" / name, v)
    (tmp_path / "d.csv").write_text(
        "path,label,split,domain\nimgs/a.jpg,cat,train,site1\nimgs/b.jpg,cat,train,site2\n"
        "imgs/c.jpg,dog,test,site1\n"
    )
    tr = load("csv", "train", root=tmp_path / "d.csv", transform=None)
    assert tr.domains is not None and tr.domains.tolist() == ["site1", "site2"]
    (tmp_path / "e.csv").write_text("path,label,domain\nimgs/a.jpg,cat,\n")
    with pytest.raises(ValueError, match="line 2: empty domain"):
        load("csv", "all", root=tmp_path / "e.csv", transform=None)
