"""tcm calibrate --save, tcm match, tcm monitor: outputs, exit codes, faults."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tcm._io import write_embeddings
from tcm.cli.main import main
from tcm.deploy import Matcher, Threshold


def _data(tmp: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(30, 8))
    y = np.repeat(np.arange(30), 6)

    def draw(shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        x = 1.2 * centers[y] + rng.normal(size=(180, 8))
        x[:, 0] += shift
        p = rng.permutation(180)
        return x[p], y[p]

    paths = {}
    for name, shift in (("cal", 0.0), ("new", 0.0), ("shift", 4.0)):
        x, lab = draw(shift)
        paths[name] = write_embeddings(
            tmp / f"{name}.npz", x, lab, ids=[f"{name}{i}" for i in range(180)]
        )
    x, lab = draw()
    bad = x.copy()
    bad[7, 2] = np.nan
    paths["nan"] = write_embeddings(tmp / "nan.npz", bad, lab)
    paths["d4"] = write_embeddings(tmp / "d4.npz", x[:, :4], lab)
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("deploy")
    p = _data(tmp)
    p["t"] = tmp / "t.json"
    code = main(
        ["calibrate", str(p["cal"]), "--far", "0.01", "--save", str(p["t"]), "--guarantee",
         "--n-boot", "200", "--ci", "0.95"]
    )  # fmt: skip
    assert code == 0
    return p


def test_calibrate_save_writes_a_guaranteed_contract(files, capsys) -> None:
    c = Threshold.load(files["t"])
    assert c.method == "upper_bound" and c.target_far == 0.01
    assert c.threshold >= c.guarantee["point"]["threshold"]
    assert c.calibration["source"] == str(files["cal"])
    assert c.guarantee["class_bootstrap"]["far_upper"] <= 0.01


def test_calibrate_save_option_errors(files, tmp_path, capsys) -> None:
    assert main(["calibrate", str(files["cal"]), "--far", "0.01", "--guarantee"]) == 2
    assert "--guarantee only applies with --save" in capsys.readouterr().err
    assert main(["calibrate", str(files["cal"]), "--max-utility", "--save", "x.json"]) == 2
    assert "--save needs --far" in capsys.readouterr().err
    assert main(["calibrate", str(files["cal"]), "--far", "0.01", "--save", "x.txt"]) == 2


def test_calibrate_save_with_a_fitted_scorer_needs_save_scorer(tmp_path) -> None:
    import argparse

    from tcm.cli.deploy import check_calibrate_args

    args = argparse.Namespace(
        guarantee=False, save=str(tmp_path / "t.json"), far=1e-3, on=None, scorer="asnorm"
    )
    with pytest.raises(ValueError, match=r"needs --save-scorer OUT\.safetensors"):
        check_calibrate_args(args)
    for scorer, save_scorer in ((None, None), ("cosine", None), ("asnorm", "s.safetensors")):
        args.scorer, args.save_scorer = scorer, save_scorer
        check_calibrate_args(args)


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_match_equals_the_library_matcher(files, tmp_path, capsys) -> None:
    out = tmp_path / "m.csv"
    args = ["match", "--threshold", str(files["t"]), "--gallery", str(files["cal"])]
    assert main([*args, "--queries", str(files["new"]), "--out", str(out)]) == 0
    rows = _rows(out)
    assert rows[0] == ["query", "gallery", "score", "accepted"]
    from tcm.data.embedding_file import read_embedding_file

    g, q = read_embedding_file(files["cal"]), read_embedding_file(files["new"])
    r = Matcher(g.embeddings, Threshold.load(files["t"])).match(q.embeddings)
    assert [(a, b) for a, b, _, _ in rows[1:]] == [
        (f"new{i}", f"cal{j}") for i, j in zip(r.query_index, r.gallery_index, strict=True)
    ]
    assert all(acc == "1" for *_, acc in rows[1:])
    best = tmp_path / "b.csv"
    assert main([*args, "--queries", str(files["new"]), "--out", str(best), "--best"]) == 0
    assert len(_rows(best)) == 1 + 180
    top = tmp_path / "k.csv"
    assert main([*args, "--queries", str(files["new"]), "--out", str(top), "--top-k", "1"]) == 0
    assert len(_rows(top)) - 1 == len({a for a, *_ in rows[1:]})


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_match_faiss_index_measures_recall(files, tmp_path, capsys, kind) -> None:
    pytest.importorskip("faiss")
    out = tmp_path / "f.csv"
    args = ["match", "--threshold", str(files["t"]), "--gallery", str(files["cal"])]
    args += ["--queries", str(files["new"]), "--out", str(out), "--index", kind]
    assert main([*args, "--min-recall", "0.5"]) == 0
    assert "range recall" in capsys.readouterr().out


def test_match_faults_exit_2_with_one_line(files, tmp_path, capsys) -> None:
    out = tmp_path / "m.csv"
    base = ["match", "--out", str(out), "--queries", str(files["new"])]
    text = files["t"].read_text()
    (tmp_path / "cut.json").write_text(text[:200])
    edited = json.loads(text)
    edited["threshold"] -= 0.05
    (tmp_path / "ed.json").write_text(json.dumps(edited))
    cases = [
        (["--threshold", str(tmp_path / "cut.json"), "--gallery", str(files["cal"])], "truncated"),
        (["--threshold", str(tmp_path / "ed.json"), "--gallery", str(files["cal"])], "checksum"),
        (["--threshold", str(files["t"]), "--gallery", str(files["nan"])], "NaN"),
        (["--threshold", str(files["t"]), "--gallery", str(files["d4"])], "4-dimensional"),
        (
            [
                "--threshold",
                str(files["t"]),
                "--gallery",
                str(files["cal"]),
                "--best",
                "--top-k",
                "2",
            ],
            "--best",
        ),
        (
            ["--threshold", str(files["t"]), "--gallery", str(files["cal"]), "--min-recall", "0.9"],
            "--min-recall",
        ),
    ]
    for extra, needle in cases:
        assert main([*base, *extra]) == 2, needle
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not out.exists()


def test_monitor_exit_codes_json_and_report(files, tmp_path, capsys) -> None:
    base = ["monitor", "--threshold", str(files["t"]), "--n-boot", "200", "--window", "90"]
    assert main([*base, str(files["new"]), "--labels", "--json", str(tmp_path / "q.json")]) == 0
    quiet = json.loads((tmp_path / "q.json").read_text())
    assert not quiet["alarm"] and len(quiet["windows"]) == 2
    rep = tmp_path / "rep"
    code = main([*base, str(files["shift"]), "--labels", "--report", str(rep)])
    assert code == 3
    assert "ALARM" in capsys.readouterr().out
    assert "drift plot" in (rep / "monitor.html").read_text()
    assert main([*base, str(files["d4"])]) == 2
    assert "4-dimensional" in capsys.readouterr().err
    assert main([*base, str(files["new"]), "--window", "1"]) == 2
    assert "--window must be >= 2" in capsys.readouterr().err
    one = write_embeddings(tmp_path / "one.npz", np.ones((1, 8)), np.zeros(1))
    assert main([*base, str(one)]) == 2  # an empty window: no pairs
    assert "1 sample(s): a window needs >= 2" in capsys.readouterr().err
    assert main([*base, str(one), "--labels"]) == 2
    nan_contract = tmp_path / "nan.json"
    nan_contract.write_text(files["t"].read_text().replace('"far": ', '"far": NaN, "x": ', 1))
    assert main(["monitor", "--threshold", str(nan_contract), str(files["new"])]) == 2
    assert "complete JSON: non-standard JSON constant NaN" in capsys.readouterr().err


def test_kill_9_while_writing_matches_leaves_no_output(files, tmp_path) -> None:
    rng = np.random.default_rng(1)
    g = write_embeddings(tmp_path / "g.npz", rng.normal(size=(3000, 8)), np.zeros(3000))
    out = tmp_path / "all.csv"
    # threshold -1: every pair matches (9 M rows), so the write takes long enough to be killed
    c = Threshold.load(files["t"])
    t = Threshold(**{**c.__dict__, "threshold": -1.0})
    t.save(tmp_path / "all.json")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cmd = [sys.executable, "-m", "tcm.cli", "match", "--threshold", str(tmp_path / "all.json")]
    cmd += ["--gallery", str(g), "--queries", str(g), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    tmp_file = None
    while time.monotonic() < deadline and proc.poll() is None:
        tmps = list(tmp_path.glob("all.csv.tmp-*"))
        if tmps and tmps[0].stat().st_size > 0:
            tmp_file = tmps[0]
            break
        time.sleep(0.05)
    assert tmp_file is not None, "the match finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # no half-written output under the real name
    # the next run removes the dead process's temporary
    assert main(["match", "--threshold", str(files["t"]), "--gallery", str(files["cal"]),
                 "--queries", str(files["new"]), "--out", str(out)]) == 0  # fmt: skip
    assert not tmp_file.exists() and out.exists()
