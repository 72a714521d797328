"""`tcm verify` on an LFW-style tree + pairs.txt written here, CSV lists, bad input; `tcm embed`
writes ids and groups."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import tcm.data as tdata
from conftest import tiny_dataset
from tcm._io import write_embeddings
from tcm.cli.main import main
from tcm.data.embedding_file import read_embedding_file
from tcm.metrics.verification import verification

PEOPLE = [f"Person_{k:02d}" for k in range(14)]


def lfw_tree(root: Path, seed: int = 0) -> dict[str, int]:
    """LFW layout name/name_%04d.jpg with 1 or 4-6 images per person (enough distinct
    same-person pairs for 10 folds of 6); returns {id: person}."""
    rng = np.random.default_rng(seed)
    out = {}
    for p, name in enumerate(PEOPLE):
        (root / name).mkdir(parents=True)
        count = 1 if p % 5 == 4 else int(rng.integers(4, 7))  # some people have one image
        for k in range(1, count + 1):
            Image.new("RGB", (8, 8), (p * 15, k * 40, 0)).save(root / name / f"{name}_{k:04d}.jpg")
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
            out[rel] = PEOPLE.index(rel.split("/")[0])
    return out


def lfw_pairs_file(path: Path, tree: dict[str, int], folds: int, per: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    images: dict[str, list[int]] = {}
    for rel in tree:
        name, file = rel.split("/")
        images.setdefault(name, []).append(int(file[-8:-4]))
    multi = [n for n in PEOPLE if len(images[n]) >= 2]
    lines = [f"{folds}\t{per}"]
    seen: set[frozenset[tuple[str, int]]] = set()  # a pair is listed once (tcm refuses repeats)

    def draw(matched: bool) -> str:
        for _ in range(10_000):
            if matched:
                n = multi[int(rng.integers(len(multi)))]
                i, j = rng.choice(sorted(images[n]), size=2, replace=False)
                key, line = frozenset({(n, int(i)), (n, int(j))}), f"{n}\t{i}\t{j}"
            else:
                a, b = rng.choice(len(PEOPLE), size=2, replace=False)
                na, nb = PEOPLE[a], PEOPLE[b]
                i, j = rng.choice(images[na]), rng.choice(images[nb])
                key, line = frozenset({(na, int(i)), (nb, int(j))}), f"{na}\t{i}\t{nb}\t{j}"
            if key not in seen:
                seen.add(key)
                return line
        raise AssertionError("too few distinct pairs in the tree")

    for _ in range(folds):
        lines += [draw(True) for _ in range(per)]
        lines += [draw(False) for _ in range(per)]
    path.write_text("\n".join(lines) + "\n")


def embeddings_file(path: Path, tree: dict[str, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = sorted(tree)
    protos = rng.normal(size=(len(PEOPLE), 12))
    labels = np.array([tree[i] for i in ids])
    emb = (protos[labels] + 0.9 * rng.normal(size=(len(ids), 12))).astype(np.float32)
    ids_perm = rng.permutation(len(ids))  # store rows in a shuffled order
    write_embeddings(path, emb[ids_perm], labels[ids_perm], ids=[ids[k] for k in ids_perm])
    return emb


def brute_verify(emb_file: Path, pairs: Path) -> tuple[list[float], list[bool], list[int]]:
    """Pair similarities by explicit loops from the raw files."""
    with np.load(emb_file) as z:
        e = z["embeddings"].astype(np.float64)
        row = {str(s): k for k, s in enumerate(z["ids"].tolist())}
    lines = pairs.read_text().splitlines()
    f, p = (int(x) for x in lines[0].split())
    sims, same, folds = [], [], []
    for k, line in enumerate(lines[1:]):
        parts = line.split()
        if len(parts) == 3:
            a = f"{parts[0]}/{parts[0]}_{int(parts[1]):04d}.jpg"
            b = f"{parts[0]}/{parts[0]}_{int(parts[2]):04d}.jpg"
        else:
            a = f"{parts[0]}/{parts[0]}_{int(parts[1]):04d}.jpg"
            b = f"{parts[2]}/{parts[2]}_{int(parts[3]):04d}.jpg"
        x, y = e[row[a]], e[row[b]]
        dot = sum(float(u * v) for u, v in zip(x, y, strict=True))
        na = math.sqrt(sum(float(u * u) for u in x))
        nb = math.sqrt(sum(float(v * v) for v in y))
        sims.append(dot / (na * nb))
        same.append(len(parts) == 3)
        folds.append(k // (2 * p))
    assert len(sims) == 2 * f * p
    return sims, same, folds


def brute_fold_accuracy(s: list[float], y: list[bool], folds: list[int]) -> list[float]:
    out = []
    for f in sorted(set(folds)):
        train = [(a, b) for a, b, k in zip(s, y, folds, strict=True) if k != f]
        test = [(a, b) for a, b, k in zip(s, y, folds, strict=True) if k == f]
        best, best_t = -1, 0.0
        for t in sorted({a for a, _ in train}):
            c = sum((a >= t) == b for a, b in train)
            if c >= best:
                best, best_t = c, t
        out.append(sum((a >= best_t) == b for a, b in test) / len(test))
    return out


@pytest.fixture
def lfw(tmp_path: Path) -> tuple[Path, Path]:
    tree = lfw_tree(tmp_path / "lfw")
    pairs = tmp_path / "pairs.txt"
    lfw_pairs_file(pairs, tree, folds=10, per=6)
    emb = tmp_path / "emb.npz"
    embeddings_file(emb, tree)
    return emb, pairs


def test_verify_lfw_ten_fold_against_brute_force(
    lfw: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emb, pairs = lfw
    out = tmp_path / "v.json"
    assert main(["verify", str(emb), "--pairs", str(pairs), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "TAR @ FAR 1e-04" in printed and "EER" in printed and "10-fold" in printed
    res = json.loads(out.read_text())
    assert list(res["tar_at_far"]) == ["0.0001", "0.001", "0.01", "0.1"]
    s, y, folds = brute_verify(emb, pairs)
    assert res["num_pairs"] == 120 and res["num_folds"] == 10
    acc = brute_fold_accuracy(s, y, folds)
    # the file stores float32 embeddings; both sides compute float64 cosines from them
    assert res["accuracy"]["folds"] == pytest.approx(acc, abs=0)
    assert res["accuracy"]["mean"] == pytest.approx(float(np.mean(acc)), rel=1e-12)
    assert res["accuracy"]["std"] == pytest.approx(float(np.std(acc, ddof=1)), rel=1e-12)
    neg = sorted(a for a, b in zip(s, y, strict=True) if not b)
    pos = [a for a, b in zip(s, y, strict=True) if b]
    for key, far in (("0.0001", 1e-4), ("0.1", 0.1)):
        h = (len(neg) - 1) * (1 - far)
        lo = math.floor(h)
        t = neg[lo] + (h - lo) * (neg[lo + 1] - neg[lo])
        assert res["thresholds_at_far"][key] == pytest.approx(t, abs=1e-12)
        assert res["tar_at_far"][key] == sum(a >= t for a in pos) / len(pos)
    assert len(res["roc"]["far"]) == len(set(s))
    assert 0.0 <= res["eer"] <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("v.json")) == ["v.json"]


def test_verify_csv_and_safetensors(lfw: tuple[Path, Path], tmp_path: Path) -> None:
    emb, pairs = lfw

    f = read_embedding_file(emb)
    st = tmp_path / "emb.safetensors"
    assert f.ids is not None and f.labels is not None
    write_embeddings(st, f.embeddings, f.labels, ids=f.ids)
    rows = ["a,b,same,fold"]
    lines = pairs.read_text().splitlines()[1:]
    for k, line in enumerate(lines):
        p = line.split()
        if len(p) == 3:
            rows.append(
                f"{p[0]}/{p[0]}_{int(p[1]):04d}.jpg,{p[0]}/{p[0]}_{int(p[2]):04d}.jpg,1,{k // 12}"
            )
        else:
            rows.append(
                f"{p[0]}/{p[0]}_{int(p[1]):04d}.jpg,{p[2]}/{p[2]}_{int(p[3]):04d}.jpg,0,{k // 12}"
            )
    csv = tmp_path / "pairs.csv"
    csv.write_text("\n".join(rows) + "\n")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["verify", str(emb), "--pairs", str(pairs), "--json", str(a)]) == 0
    assert main(["verify", str(st), "--pairs", str(csv), "--json", str(b)]) == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    for key in ("tar_at_far", "eer", "accuracy", "roc"):
        assert ra[key] == rb[key]


def test_verify_custom_fars(lfw: tuple[Path, Path], tmp_path: Path) -> None:
    emb, pairs = lfw
    out = tmp_path / "v.json"
    assert (
        main(["verify", str(emb), "--pairs", str(pairs), "--far", "0.05", "--json", str(out)]) == 0
    )
    assert list(json.loads(out.read_text())["tar_at_far"]) == ["0.05"]


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tcm verify: error: ")
    return err[0]


def test_verify_unknown_id_exits_2(
    lfw: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emb, pairs = lfw
    text = pairs.read_text().splitlines()
    text[3] = "Nobody\t1\t2"
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(text) + "\n")
    assert main(["verify", str(emb), "--pairs", str(bad)]) == 2
    assert "line 4: id 'Nobody/Nobody_0001.jpg' is not in" in _one_error(capsys)


def test_verify_malformed_pairs_exits_2(
    lfw: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emb, pairs = lfw
    text = pairs.read_text().splitlines()
    text[2] = "Person_01 1"
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(text) + "\n")
    assert main(["verify", str(emb), "--pairs", str(bad)]) == 2
    assert "line 3: fold 1 expects a matched pair" in _one_error(capsys)


def test_verify_one_fold_list_reports_tar_and_eer(
    lfw: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pairsDevTrain.txt form: a single number P, then P matched and P mismatched lines."""
    emb, pairs = lfw
    text = pairs.read_text().splitlines()
    one = tmp_path / "pairsDevTrain.txt"
    one.write_text("\n".join(["6", *text[1:13]]) + "\n")  # fold 1 of the 10-fold list
    js = tmp_path / "v.json"
    assert main(["verify", str(emb), "--pairs", str(one), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "TAR @ FAR 1e-01" in out and "EER" in out
    assert "accuracy" in out and "not computed: one fold (id 0)" in out
    res = json.loads(js.read_text())
    assert res["num_folds"] == 1 and res["num_pairs"] == 12
    assert res["accuracy"] is None and "at least 2 folds" in res["accuracy_note"]
    s, y, _ = brute_verify(emb, pairs)
    ref = verification(np.asarray(s[:12]), np.asarray(y[:12]))
    assert res["eer"] == pytest.approx(ref.eer, rel=1e-6, abs=1e-6)  # float32 embeddings
    assert res["tar_at_far"] == {repr(f): v for f, v in ref.tar_at_far.items()}


@pytest.mark.parametrize(
    ("line", "where", "match"),
    [
        ("Person_01\t1_0\t2", 2, "image number n1 must be a plain decimal integer"),
        ("Person_01\t\u0661\t2", 2, "ASCII digits only"),
        ("Person_01\t2\t2", 2, "pairs the image 'Person_01/Person_01_0002.jpg' with itself"),
        ("Person_01\t1\tPerson_01\t2", 8, "a mismatched pair names one person twice"),
    ],
)
def test_verify_loose_lfw_lines_exit_2(
    lfw: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    line: str,
    where: int,
    match: str,
) -> None:
    emb, pairs = lfw
    text = pairs.read_text().splitlines()
    text[where - 1] = line
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(text) + "\n", encoding="utf-8")
    assert main(["verify", str(emb), "--pairs", str(bad)]) == 2
    err = _one_error(capsys)
    assert f"{bad} line {where}: " in err and match in err


def test_verify_duplicate_pair_exits_2(
    lfw: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emb, pairs = lfw
    text = pairs.read_text().splitlines()
    name, i, name2, j = text[8].split("\t")
    text[20] = f"{name2}\t{j}\t{name}\t{i}"  # fold 2's first mismatched line, sides swapped
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(text) + "\n")
    assert main(["verify", str(emb), "--pairs", str(bad)]) == 2
    assert f"{bad} line 21: the pair " in (err := _one_error(capsys))
    assert "is already listed on line 9" in err


def test_verify_file_without_ids_exits_2(
    lfw: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, pairs = lfw
    e = tmp_path / "noids.npz"
    np.savez(e, embeddings=np.ones((3, 2)), labels=np.zeros(3))
    assert main(["verify", str(e), "--pairs", str(pairs)]) == 2
    assert "has no sample 'ids'" in _one_error(capsys)


def test_verify_missing_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "x.npz"), "--pairs", str(tmp_path / "p.txt")]) == 2
    assert "embeddings file not found" in _one_error(capsys)


def test_embedding_file_length_checks(tmp_path: Path) -> None:
    e = tmp_path / "e.npz"
    with pytest.raises(ValueError, match="'ids' has length 2 but there are 3 embeddings"):
        write_embeddings(e, np.ones((3, 2)), np.zeros(3), ids=["a", "b"])
    assert not e.exists()
    np.savez(e, embeddings=np.ones((3, 2)), ids=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="'ids' has length 2"):
        read_embedding_file(e)
    np.savez(e, embeddings=np.ones(3))
    with pytest.raises(ValueError, match=r"must be \(N, D\)"):
        read_embedding_file(e)


# ----------------------------------------------------------------------------- tcm embed

TINY = [
    "data.image_size=16",
    "data.batch_size=8",
    "data.m_per_class=2",
    "model.embedding_dim=8",
    "train.epochs=1",
    "train.steps_per_epoch=1",
    "train.progress=false",
    "train.device=cpu",
    "train.tensorboard=false",
    "eval.num_thresholds=11",
]


def fake_load(
    name: str,
    split: str = "train",
    root: Any = None,
    image_size: Any = None,
    transform: Any = "default",
    **kw: Any,
) -> Any:
    """The shared tiny dataset (tests/conftest.py) with per-sample domains and ids."""
    ds = tiny_dataset(split, image_size, augment=False)
    ds.domains = np.array(["north", "south"] * (len(ds) // 2))
    ds.ids = [f"{split}/img{k:03d}" for k in range(len(ds))]
    return ds


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_embed_writes_ids_and_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    monkeypatch.setattr(tdata, "load", fake_load)
    run = tmp_path / "run"
    assert main(["train", *TINY, f"output_dir={run}"]) == 0
    out = tmp_path / f"emb{suffix}"
    assert main(["embed", str(run / "best.pt"), "--data", "toy", "--out", str(out)]) == 0
    f = read_embedding_file(out)
    ref = fake_load("toy", "test")
    assert f.ids == ref.ids
    assert f.groups is not None and f.groups.tolist() == ref.domains.tolist()  # type: ignore[union-attr]
    assert f.labels is not None and f.labels.tolist() == ref.labels.tolist()
    assert f.class_names == ref.class_names
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run", out.name])
