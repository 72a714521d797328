"""Pair lists for 1:1 verification: LFW ``pairs.txt`` and CSV ``a,b,same``.

Formats (every error names the file and the 1-based line number):

* **LFW** ``pairs.txt``: the first line is ``F P`` (``F`` folds of ``P`` pairs of each kind; a
  single number ``P`` means one fold, as in ``pairsDevTrain.txt``). Then, for each fold, ``P``
  *matched* lines ``name n1 n2`` (same person, images ``n1`` and ``n2``) followed by ``P``
  *mismatched* lines ``name1 n1 name2 n2``; fields are separated by whitespace. The image id is
  ``name/name_%04d.jpg`` (``Aaron_Peirsol/Aaron_Peirsol_0001.jpg``, relative to the LFW root),
  the fold id the position of the block (``0 .. F-1``). Exactly ``2 F P`` pair lines must
  follow; trailing blank lines are ignored. ``F``, ``P`` and the image numbers are plain ASCII
  decimal integers ``>= 1`` (``1_0``, ``+1`` or non-ASCII digits are refused), and a
  mismatched line must name two different people.
* **CSV**: rows ``a,b,same`` with ``same`` in ``{0, 1, true, false}``, optionally a fourth
  column ``fold`` (integer fold id); a header row (``a,b,same[,fold]`` in any column order) is
  optional. Ids are free strings (for ``tcm embed`` files: paths relative to the dataset root, or
  ``char@font`` for glyphs).

In both formats a pair of a sample with itself, or a pair listed twice (in either order), is
refused.

:func:`resolve_pairs` maps the ids to rows of an embeddings file's ``ids`` array.

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> path = os.path.join(d, "pairs.txt")
    >>> _ = open(path, "w").write("1\\t1\\nAda 1 2\\nAda 1 Bob 1\\n")
    >>> pl = read_pairs(path)
    >>> pl.b, pl.same.tolist(), pl.folds.tolist()
    (['Ada/Ada_0002.jpg', 'Bob/Bob_0001.jpg'], [True, False], [0, 0])
    >>> ia, ib = resolve_pairs(pl, ["Bob/Bob_0001.jpg", "Ada/Ada_0001.jpg", "Ada/Ada_0002.jpg"])
    >>> ia.tolist(), ib.tolist()
    ([1, 1], [2, 0])
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairList", "lfw_id", "read_lfw_pairs", "read_pairs", "read_pairs_csv", "resolve_pairs"]

_TRUE = {"1", "true", "yes", "same"}
_FALSE = {"0", "false", "no", "different"}


@dataclass(frozen=True)
class PairList:
    """A parsed pair list.

    Attributes:
        a: ``N`` ids of the first sample of each pair.
        b: ``N`` ids of the second sample.
        same: ``(N,)`` bool, True for a genuine (same identity) pair.
        folds: ``(N,)`` int64 fold id per pair, or None when the list has no folds.
        lines: ``(N,)`` int64 1-based line number of each pair in ``source``.
        source: the file the list was read from.
    """

    a: list[str]
    b: list[str]
    same: np.ndarray
    folds: np.ndarray | None
    lines: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.a)


def lfw_id(name: str, number: int) -> str:
    """LFW image id ``name/name_%04d.jpg``.

    Example:
        >>> lfw_id("Aaron_Peirsol", 1)
        'Aaron_Peirsol/Aaron_Peirsol_0001.jpg'
    """
    return f"{name}/{name}_{number:04d}.jpg"


def _read_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ValueError(f"pairs file not found: {p}")
    try:
        with open(p, encoding="utf-8-sig") as fh:
            return p, fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read pairs file {p}: {exc}") from exc


def _int_field(text: str, where: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: {what} must be an integer; got {text!r}") from None


def _count_field(text: str, where: str, what: str) -> int:
    """A plain ASCII decimal integer ``>= 1`` (no sign, no ``_``, no other digits: Python's
    ``int`` accepts ``1_0`` and ``'١'``, which an LFW file never means)."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(
            f"{where}: {what} must be a plain decimal integer >= 1 (ASCII digits only); "
            f"got {text!r}"
        )
    v = int(text)
    if v < 1:
        raise ValueError(f"{where}: {what} must be >= 1; got {text!r}")
    return v


def _check_pair_set(a: list[str], b: list[str], lines: Sequence[int], src: str) -> None:
    """Refuse a pair of a sample with itself and a pair listed twice (in either order)."""
    seen: dict[tuple[str, str], int] = {}
    for ia, ib, lineno in zip(a, b, lines, strict=True):
        if ia == ib:
            raise ValueError(f"{src} line {lineno}: pairs the image {ia!r} with itself")
        key = (ia, ib) if ia <= ib else (ib, ia)
        first = seen.setdefault(key, lineno)
        if first != lineno:
            raise ValueError(
                f"{src} line {lineno}: the pair {ia!r}, {ib!r} is already listed on line {first}"
            )


def read_lfw_pairs(path: str | os.PathLike[str]) -> PairList:
    """Parse an LFW ``pairs.txt`` (layout in the module doc).

    Raises:
        ValueError: missing file, empty file, a bad header, a line with the wrong number of
            fields (3 for matched, 4 for mismatched lines), an image number that is not a plain
            decimal integer >= 1, a mismatched line naming one person twice, an image paired
            with itself, a pair listed twice, or a number of pair lines other than ``2 F P`` -
            each naming the line.
    """
    src, text = _read_text(path)
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{src}: empty pairs file (expected a first line 'F P')")
    head = lines[0].split()
    if len(head) not in (1, 2):
        raise ValueError(
            f"{src} line 1: expected 'F P' (folds, pairs per kind per fold); got {lines[0]!r}"
        )
    what = ["P (pairs of each kind)"] if len(head) == 1 else ["F (folds)", "P (pairs per fold)"]
    nums = [_count_field(h, f"{src} line 1", w) for h, w in zip(head, what, strict=True)]
    n_folds, per = (1, nums[0]) if len(nums) == 1 else (nums[0], nums[1])
    expected = 2 * n_folds * per
    body = lines[1:]
    if len(body) != expected:
        raise ValueError(
            f"{src}: the header {lines[0].strip()!r} ({n_folds} fold(s) x {per} matched + {per} "
            f"mismatched pairs) needs 2*F*P = {expected} pair lines after line 1; found "
            f"{len(body)}"
        )
    a: list[str] = []
    b: list[str] = []
    same = np.zeros(expected, dtype=bool)
    folds = np.zeros(expected, dtype=np.int64)
    for k, line in enumerate(body):
        lineno = k + 2
        where = f"{src} line {lineno}"
        fold, pos = divmod(k, 2 * per)
        matched = pos < per
        fields = line.split()
        if matched:
            if len(fields) != 3:
                raise ValueError(
                    f"{where}: fold {fold + 1} expects a matched pair 'name n1 n2' (3 fields) "
                    f"here; got {len(fields)} field(s): {line!r}"
                )
            name = fields[0]
            n1 = _count_field(fields[1], where, "image number n1")
            n2 = _count_field(fields[2], where, "image number n2")
            a.append(lfw_id(name, n1))
            b.append(lfw_id(name, n2))
        else:
            if len(fields) != 4:
                raise ValueError(
                    f"{where}: fold {fold + 1} expects a mismatched pair 'name1 n1 name2 n2' "
                    f"(4 fields) here; got {len(fields)} field(s): {line!r}"
                )
            n1 = _count_field(fields[1], where, "image number n1")
            n2 = _count_field(fields[3], where, "image number n2")
            if fields[0] == fields[2]:
                raise ValueError(
                    f"{where}: a mismatched pair names one person twice ({fields[0]!r}); "
                    "same-person pairs go on the 'name n1 n2' lines"
                )
            a.append(lfw_id(fields[0], n1))
            b.append(lfw_id(fields[2], n2))
        same[k] = matched
        folds[k] = fold
    lines_no = np.arange(2, expected + 2, dtype=np.int64)
    _check_pair_set(a, b, lines_no.tolist(), src)
    return PairList(a, b, same, folds, lines_no, src)


def _parse_same(text: str, where: str) -> bool:
    v = text.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"{where}: 'same' must be 0/1 or true/false; got {text!r}")


def read_pairs_csv(path: str | os.PathLike[str]) -> PairList:
    """Parse a CSV pair list ``a,b,same[,fold]`` (header optional; see the module doc).

    Raises:
        ValueError: missing or empty file, a row with the wrong number of fields, an empty id,
            a ``same`` value other than 0/1/true/false, a non-integer fold, fold ids on only
            some rows, a sample paired with itself or a pair listed twice - each naming the
            line.
    """
    src, text = _read_text(path)
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[int, list[str]]] = []
    for row in reader:
        if not row or all(not c.strip() for c in row):
            continue
        rows.append((reader.line_num, [c.strip() for c in row]))
    if not rows:
        raise ValueError(f"{src}: empty pair list (expected rows 'a,b,same')")
    cols = {"a": 0, "b": 1, "same": 2, "fold": 3}
    first_line, first = rows[0]
    lowered = [c.lower() for c in first]
    if "same" in lowered and "a" in lowered and "b" in lowered:
        extra = [c for c in lowered if c not in cols]
        if extra or len(set(lowered)) != len(lowered):
            raise ValueError(
                f"{src} line {first_line}: header must name the columns a, b, same and "
                f"optionally fold; got {first}"
            )
        cols = {c: lowered.index(c) for c in lowered}
        rows = rows[1:]
        width = len(lowered)
    else:
        width = len(first)
        if width >= 3 and first[2].lower() not in _TRUE | _FALSE:
            raise ValueError(
                f"{src} line {first_line}: a header must name the columns a, b, same and "
                f"optionally fold; got {first}"
            )
        if width not in (3, 4):
            raise ValueError(
                f"{src} line {first_line}: expected 3 fields 'a,b,same' (or 4 with a fold); got "
                f"{width}: {first}"
            )
        cols = {k: v for k, v in cols.items() if v < width}
    if not rows:
        raise ValueError(f"{src}: empty pair list (a header but no pairs)")
    a: list[str] = []
    b: list[str] = []
    same: list[bool] = []
    folds: list[int] = []
    lines: list[int] = []
    for lineno, row in rows:
        where = f"{src} line {lineno}"
        if len(row) != width:
            raise ValueError(f"{where}: expected {width} fields; got {len(row)}: {row}")
        ia, ib = row[cols["a"]], row[cols["b"]]
        if not ia or not ib:
            raise ValueError(f"{where}: empty sample id")
        a.append(ia)
        b.append(ib)
        same.append(_parse_same(row[cols["same"]], where))
        if "fold" in cols:
            folds.append(_int_field(row[cols["fold"]], where, "fold"))
        lines.append(lineno)
    _check_pair_set(a, b, lines, src)
    return PairList(
        a,
        b,
        np.asarray(same, dtype=bool),
        np.asarray(folds, dtype=np.int64) if "fold" in cols else None,
        np.asarray(lines, dtype=np.int64),
        src,
    )


def read_pairs(path: str | os.PathLike[str]) -> PairList:
    """Read a pair list: CSV when the file name ends in ``.csv`` or its first non-blank line
    contains a comma, otherwise LFW ``pairs.txt``."""
    src, text = _read_text(path)
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if src.lower().endswith(".csv") or "," in first:
        return read_pairs_csv(src)
    return read_lfw_pairs(src)


def _normalise_id(x: str) -> str:
    s = str(x).replace("\\", "/")
    while s.startswith("./"):
        s = s[2:]
    return s


def resolve_pairs(
    pairs: PairList, ids: Sequence[str] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(ia, ib)`` ``(N,)`` int64 of each pair's samples in ``ids``.

    Ids are compared as strings after turning ``\\`` into ``/`` and dropping a leading ``./``. A
    pair id matches the sample id equal to it or, failing that, the one sample id that ends in
    ``"/" + id`` (so ``Ada/Ada_0001.jpg`` finds ``/data/lfw/Ada/Ada_0001.jpg`` when the
    embeddings file stores full paths).

    Raises:
        ValueError: an empty pair list; an id of ``ids`` that occurs twice (ambiguous); a pair id
            not in ``ids`` or matching several of them by suffix (naming the id, the line and an
            example of the available ids).
    """
    if len(pairs) == 0:
        raise ValueError(f"{pairs.source}: empty pair list")
    table: dict[str, int] = {}
    for i, raw in enumerate(np.asarray(ids).tolist()):
        key = _normalise_id(raw)
        if key in table:
            raise ValueError(
                f"sample id {raw!r} occurs twice in the embeddings file (rows {table[key]} and "
                f"{i}); pair ids must be unique"
            )
        table[key] = i
    if not table:
        raise ValueError("the embeddings file has no sample ids")
    suffixes: dict[str, int] | None = None  # built on the first miss: suffix -> row (-1: many)
    out = []
    for side in (pairs.a, pairs.b):
        idx = np.empty(len(side), dtype=np.int64)
        for k, raw in enumerate(side):
            key = _normalise_id(raw)
            hit = table.get(key)
            if hit is None:
                if suffixes is None:
                    suffixes = _suffix_index(table)
                hit = suffixes.get(key)
            if hit is None or hit < 0:
                example = next(iter(table))
                why = "is not in" if hit is None else "matches several of"
                raise ValueError(
                    f"{pairs.source} line {int(pairs.lines[k])}: id {raw!r} {why} the "
                    f"embeddings file's ids ({len(table)} ids, e.g. {example!r})"
                )
            idx[k] = hit
        out.append(idx)
    return out[0], out[1]


def _suffix_index(table: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, row in table.items():
        parts = key.split("/")
        for k in range(1, len(parts)):
            suffix = "/".join(parts[k:])
            out[suffix] = row if suffix not in out else -1
    return out
