"""tcm.data.pairs: LFW pairs.txt / CSV parsing, id resolution and line-numbered errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tcm.data.pairs import lfw_id, read_lfw_pairs, read_pairs, read_pairs_csv, resolve_pairs

LFW = """2\t2
Ada 1 2
Bob 3 4
Ada 1 Cy 1
Bob 2 Dee 7
Cy 1 2
Dee 1 3
Ada 2 Dee 1
Cy 2 Bob 1
"""


def write(tmp_path: Path, text: str, name: str = "pairs.txt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_lfw_layout_ids_same_and_folds(tmp_path: Path) -> None:
    pl = read_lfw_pairs(write(tmp_path, LFW))
    assert len(pl) == 8
    assert pl.a[0] == "Ada/Ada_0001.jpg" and pl.b[0] == "Ada/Ada_0002.jpg"
    assert pl.a[3] == "Bob/Bob_0002.jpg" and pl.b[3] == "Dee/Dee_0007.jpg"
    assert pl.same.tolist() == [True, True, False, False] * 2
    assert pl.folds is not None and pl.folds.tolist() == [0] * 4 + [1] * 4
    assert pl.lines.tolist() == list(range(2, 10))
    assert read_pairs(pl.source).a == pl.a  # auto-detected as LFW


def test_lfw_single_number_header_and_trailing_blank_lines(tmp_path: Path) -> None:
    pl = read_lfw_pairs(write(tmp_path, "1\nAda 1 2\nAda 1 Bob 1\n\n\n"))
    assert pl.folds is not None and pl.folds.tolist() == [0, 0] and pl.same.tolist() == [1, 0]


def test_lfw_id_format() -> None:
    assert lfw_id("George_W_Bush", 52) == "George_W_Bush/George_W_Bush_0052.jpg"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty pairs file"),
        ("10 300 7\nA 1 2\n", r"line 1: expected 'F P'"),
        ("x 1\nA 1 2\nA 1 B 1\n", r"line 1: F \(folds\) must be a plain decimal integer"),
        ("0 1\n", "must be >= 1"),
        ("1 1\nA 1 2\n", r"2\*F\*P = 2 pair lines after line 1; found 1"),
        ("1 1\nA 1 2\nA 1 B 1\nC 1 2\n", "found 3"),
        ("1 1\nA 1 2 3\nA 1 B 1\n", r"line 2: fold 1 expects a matched pair 'name n1 n2'"),
        ("1 1\nA 1 2\nA 1 B\n", r"line 3: fold 1 expects a mismatched pair"),
        ("1 1\nA one 2\nA 1 B 1\n", r"line 2: image number n1 must be a plain decimal .*'one'"),
        ("1 1\nA 1 2\nA 1 B x\n", r"line 3: image number n2 must be a plain decimal integer"),
        ("2 1\nA 1 2\nA 1 B 1\nA 1 B 1\nC 1 D 1\n", r"line 4: fold 2 expects a matched pair"),
        # strict numbers: int() would read 1_0 as 10, '\u0661' (Arabic-Indic one) as 1
        ("1\nA 1_0 2\nA 1 B 1\n", r"line 2: image number n1 must be a plain decimal integer"),
        ("1\nA 1 2\nA \u0661 B 1\n", r"line 3: image number n1 .*ASCII digits only"),
        ("1\nA 1 +2\nA 1 B 1\n", r"line 2: image number n2 must be a plain decimal"),
        ("1\nA 0 2\nA 1 B 1\n", r"line 2: image number n1 must be >= 1; got '0'"),
        ("1_0\nA 1 2\nA 1 B 1\n", r"line 1: P \(pairs of each kind\) must be a plain decimal"),
        ("\u0661 1\nA 1 2\nA 1 B 1\n", r"line 1: F \(folds\) .*ASCII digits only"),
        # pairs that are no pairs, or listed twice
        ("1\nA 2 2\nA 1 B 1\n", r"line 2: pairs the image 'A/A_0002.jpg' with itself"),
        ("1\nA 1 2\nA 1 A 3\n", r"line 3: a mismatched pair names one person twice \('A'\)"),
        ("2\nA 1 2\nA 2 1\nA 1 B 1\nC 1 D 1\n", r"line 3: the pair .* already listed on line 2"),
        ("2 1\nA 1 2\nA 1 B 1\nC 1 2\nB 1 A 1\n", r"line 5: the pair .* already listed on line 3"),
        # the header's counts must match the lines (2 F P)
        (
            "1\nA 1 2\nA 1 B 1\nC 1 2\n",
            r"'1' \(1 fold\(s\) x 1 matched .* = 2 pair lines .* found 3",
        ),
        ("2 2\nA 1 2\nA 1 B 1\n", r"'2 2' \(2 fold\(s\) x 2 matched .* = 8 pair lines .* found 2"),
    ],
)
def test_lfw_malformed(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_lfw_pairs(write(tmp_path, text))


def test_lfw_errors_name_file_and_line_on_one_line(tmp_path: Path) -> None:
    p = write(tmp_path, "1\nA 1_0 2\nA 1 B 1\n")
    with pytest.raises(ValueError) as err:
        read_lfw_pairs(p)
    assert str(err.value).startswith(f"{p} line 2: ") and "\n" not in str(err.value)


def test_csv_self_and_duplicate_pairs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"line 2: pairs the image 'x' with itself"):
        read_pairs_csv(write(tmp_path, "a,b,same\nx,x,1\n", "p.csv"))
    with pytest.raises(ValueError, match=r"line 3: the pair 'y', 'x' is already listed on line 1"):
        read_pairs_csv(write(tmp_path, "x,y,1\nx,z,0\ny,x,0\n", "q.csv"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pairs file not found"):
        read_pairs(tmp_path / "nope.txt")


def test_csv_with_and_without_header(tmp_path: Path) -> None:
    a = read_pairs(write(tmp_path, "a,b,same\nx,y,1\nx,z,0\n", "p.csv"))
    b = read_pairs(write(tmp_path, "x,y,true\n\nx,z,False\n", "q.txt"))  # comma -> CSV
    assert a.a == b.a == ["x", "x"] and a.b == b.b == ["y", "z"]
    assert a.same.tolist() == b.same.tolist() == [True, False]
    assert a.folds is None and a.lines.tolist() == [2, 3] and b.lines.tolist() == [1, 3]


def test_csv_fold_column_any_order(tmp_path: Path) -> None:
    pl = read_pairs_csv(write(tmp_path, "fold,same,b,a\n3,1,y,x\n4,0,z,x\n", "p.csv"))
    assert pl.a == ["x", "x"] and pl.b == ["y", "z"] and pl.same.tolist() == [True, False]
    assert pl.folds is not None and pl.folds.tolist() == [3, 4]
    pl2 = read_pairs_csv(write(tmp_path, "x,y,1,0\nx,z,0,1\n", "q.csv"))
    assert pl2.folds is not None and pl2.folds.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty pair list"),
        ("a,b,same\n", "a header but no pairs"),
        ("x,y\n", "line 1: expected 3 fields"),
        ("a,b,same,colour\nx,y,1,red\n", "line 1: header must name the columns"),
        ("id1,id2,label\nx,y,1\n", "line 1: a header must name the columns"),
        ("x,y,1\nx,z\n", "line 2: expected 3 fields; got 2"),
        ("x,y,1\nx,z,maybe\n", r"line 2: 'same' must be 0/1 or true/false; got 'maybe'"),
        ("x,y,1\n,z,0\n", "line 2: empty sample id"),
        ("a,b,same,fold\nx,y,1,0\nx,z,0,one\n", "line 3: fold must be an integer"),
    ],
)
def test_csv_malformed(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_pairs_csv(write(tmp_path, text, "p.csv"))


def test_resolve_ids(tmp_path: Path) -> None:
    pl = read_lfw_pairs(write(tmp_path, "1\nAda 1 2\nAda 1 Bob 1\n"))
    ids = ["./Bob/Bob_0001.jpg", "Ada\\Ada_0002.jpg", "Ada/Ada_0001.jpg"]
    ia, ib = resolve_pairs(pl, np.asarray(ids))
    assert ia.tolist() == [2, 2] and ib.tolist() == [1, 0]


def test_resolve_unknown_id_names_id_and_line(tmp_path: Path) -> None:
    pl = read_lfw_pairs(write(tmp_path, "1\nAda 1 2\nAda 1 Bob 1\n"))
    with pytest.raises(ValueError, match=r"line 3: id 'Bob/Bob_0001.jpg' is not in the"):
        resolve_pairs(pl, ["Ada/Ada_0001.jpg", "Ada/Ada_0002.jpg"])
    csv = read_pairs_csv(write(tmp_path, "a,b,same\nx,y,1\nq,y,0\n", "p.csv"))
    with pytest.raises(ValueError, match=r"p.csv line 3: id 'q'"):
        resolve_pairs(csv, ["x", "y"])


def test_resolve_duplicate_ids(tmp_path: Path) -> None:
    csv = read_pairs_csv(write(tmp_path, "x,y,1\n", "p.csv"))
    with pytest.raises(ValueError, match="occurs twice"):
        resolve_pairs(csv, ["x", "y", "x"])


def test_resolve_by_path_suffix(tmp_path: Path) -> None:
    pl = read_lfw_pairs(write(tmp_path, "1\nAda 1 2\nAda 1 Bob 1\n"))
    ids = ["/data/lfw/Ada/Ada_0001.jpg", "/data/lfw/Ada/Ada_0002.jpg", "/data/lfw/Bob/Bob_0001.jpg"]
    ia, ib = resolve_pairs(pl, ids)
    assert ia.tolist() == [0, 0] and ib.tolist() == [1, 2]
    two = [*ids, "/other/Bob/Bob_0001.jpg"]
    with pytest.raises(ValueError, match=r"line 3: id 'Bob/Bob_0001\.jpg' matches several of"):
        resolve_pairs(pl, two)
