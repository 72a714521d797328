"""`tcm evaluate | calibrate | verify --scorer ...`: the CLI gives the library's numbers, saved
scorers reproduce them, and every bad combination is refused with one line (exit 2) before the
evaluation."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tcm.cli.main import main
from tcm.metrics import evaluate, operating_point, threshold_at_far
from tcm.metrics.verification import verification
from tcm.scoring import FSN, ASNorm, Platt, load_scorer

# Thresholds / rates computed by the same engine in the same dtype: equal up to float64
# rounding of a few operations on scores of order 10 (z-scores).
RTOL = 1e-9


def _npz(
    path: Path,
    seed: int,
    prefix: str | None,
    *,
    classes: int = 10,
    per_class: int = 5,
    dim: int = 12,
    ids: bool = False,
) -> Path:
    """``classes * per_class`` noisy prototypes; class names ``prefix0, prefix1, ...`` (none when
    ``prefix`` is None); sample ids ``s0, s1, ...`` with ``ids``."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    x = (rng.normal(size=(classes, dim))[y] + 0.8 * rng.normal(size=(y.size, dim))).astype("f4")
    arrays: dict[str, Any] = {"embeddings": x, "labels": y}
    if prefix is not None:
        arrays["class_names"] = np.array([f"{prefix}{c}" for c in range(classes)])
    if ids:
        arrays["ids"] = np.array([f"s{i}" for i in range(y.size)])
    np.savez(path, **arrays)
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "emb": _npz(tmp_path / "emb.npz", 0, "test", ids=True),
        "cohort": _npz(tmp_path / "cohort.npz", 1, "train", classes=8),
        "nonames": _npz(tmp_path / "nonames.npz", 2, None, classes=8),
        "overlap": _npz(tmp_path / "overlap.npz", 3, "test", classes=3),
        "dim8": _npz(tmp_path / "dim8.npz", 4, "train", dim=8),
        "singletons": _npz(tmp_path / "single.npz", 5, "train", classes=12, per_class=1),
        "target": _npz(tmp_path / "target.npz", 6, "other", classes=6),
        "nolabels": _unlabelled(tmp_path / "nolabels.npz"),
    }


def _unlabelled(path: Path) -> Path:
    np.savez(path, embeddings=np.random.default_rng(7).normal(size=(20, 12)).astype("f4"))
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _load(path: Path) -> np.lib.npyio.NpzFile:
    return np.load(path)


def test_calibrate_asnorm_equals_library(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    far, k = 0.02, 7
    out_json = tmp_path / "c.json"
    argv = ["calibrate", files["emb"], "--far", far, "--scorer", "asnorm", "--top-k", k]
    argv += ["--cohort", files["cohort"], "--json", out_json]
    code, out, _ = _run(argv, capsys)
    assert code == 0
    d, c = _load(files["emb"]), _load(files["cohort"])
    scorer = ASNorm(k).fit(c["embeddings"])
    t = threshold_at_far(d["embeddings"], d["labels"], far=far, scorer=scorer)
    op = operating_point(d["embeddings"], d["labels"], t, scorer=scorer)
    res = json.loads(out_json.read_text())
    assert res["threshold"] == pytest.approx(t, rel=RTOL, abs=RTOL)
    assert res["global_far"] == pytest.approx(op.global_far, rel=RTOL)
    assert res["global_tar"] == pytest.approx(op.global_tar, rel=RTOL)
    rec = res["scorer"]
    assert rec["kind"] == "as-norm" and rec["score_scale"] == "z-score"
    assert rec["params"]["top_k"] == k and rec["fit_file"] == str(files["cohort"])
    import hashlib

    assert rec["fit_file_sha256"] == hashlib.sha256(files["cohort"].read_bytes()).hexdigest()
    assert f"threshold (z-score, accept if >=): {t:.6f}" in out


def test_save_then_scorer_file_gives_identical_output(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "fsn.safetensors"
    common = ["calibrate", files["emb"], "--far", 0.05]
    fit = ["--scorer", "fsn", "--clusters", 3, "--scorer-far", 0.05, "--fit-on", files["cohort"]]
    code, out1, _ = _run(
        [*common, *fit, "--save-scorer", saved, "--json", tmp_path / "a.json"], capsys
    )
    assert code == 0 and saved.is_file()
    assert isinstance(load_scorer(saved), FSN)
    code, out2, _ = _run([*common, "--scorer-file", saved, "--json", tmp_path / "b.json"], capsys)
    assert code == 0
    # only the line saying where the scorer came from (and the JSON file name) differ
    assert out1.splitlines()[1:-1] == out2.splitlines()[1:-1]
    assert "fitted on --fit-on" in out1.splitlines()[0]
    assert "loaded from" in out2.splitlines()[0]
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    ra, rb = a.pop("scorer"), b.pop("scorer")
    assert a == b
    assert ra["fitted_on_sha256"] == rb["fitted_on_sha256"] and ra["params"] == rb["params"]


def test_evaluate_with_scorer_equals_library(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "e.json"
    argv = ["evaluate", files["emb"], "--scorer", "platt", "--fit-on", files["cohort"]]
    code, out, _ = _run([*argv, "--json", out_json], capsys)
    assert code == 0 and "thresholds on the probability scale" in out
    d, c = _load(files["emb"]), _load(files["cohort"])
    ev = evaluate(d["embeddings"], d["labels"], scorer=Platt().fit(c["embeddings"], c["labels"]))
    res = json.loads(out_json.read_text())
    assert res["scorer"]["kind"] == "platt"
    for key, value in ev.metrics().items():
        assert res["metrics"][key] == pytest.approx(value, rel=RTOL, abs=1e-12), key


def test_calibrate_transfer_with_scorer(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["calibrate", files["emb"], "--far", 0.05, "--on", files["target"]]
    argv += ["--scorer", "snorm", "--cohort", files["cohort"], "--json", tmp_path / "t.json"]
    code, out, _ = _run(argv, capsys)
    assert code == 0
    assert "threshold (z-score, accept if >=) calibrated on" in out
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["scorer"]["params"]["top_k"] is None


def test_verify_with_scorer_equals_dense_scores(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _load(files["emb"])
    y = d["labels"]
    rng = np.random.default_rng(0)
    pairs = sorted(
        {tuple(sorted(rng.choice(y.size, 2, replace=False).tolist())) for _ in range(80)}
    )
    pairs += [(5 * c, 5 * c + 1) for c in range(10) if (5 * c, 5 * c + 1) not in pairs]
    lines = [f"s{i},s{j},{int(y[i] == y[j])}" for i, j in pairs]
    (tmp_path / "p.csv").write_text("\n".join(lines) + "\n")
    argv = ["verify", files["emb"], "--pairs", tmp_path / "p.csv", "--json", tmp_path / "v.json"]
    code, out, _ = _run(
        [*argv, "--scorer", "asnorm", "--top-k", 5, "--cohort", files["cohort"]], capsys
    )
    assert code == 0 and "score = as-norm (z-score scale)" in out
    scorer = ASNorm(5).fit(_load(files["cohort"])["embeddings"])
    dense = scorer.score(d["embeddings"], d["embeddings"])
    i, j = np.array(pairs).T
    ref = verification(dense[i, j], y[i] == y[j]).to_dict()
    res = json.loads((tmp_path / "v.json").read_text())
    assert res["score_scale"] == "z-score"
    for key, thr in ref["thresholds_at_far"].items():
        assert res["thresholds_at_far"][key] == pytest.approx(thr, rel=RTOL)
    assert res["eer"] == pytest.approx(ref["eer"], rel=RTOL)


def test_no_class_names_warns(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["calibrate", files["emb"], "--far", 0.05, "--scorer", "asnorm", "--top-k", 5]
    code, _, err = _run([*argv, "--cohort", files["nonames"]], capsys)
    assert code == 0
    assert "warning: cannot check that --cohort" in err and "no class_names" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top-k", "5"], "--top-k only applies with --scorer asnorm"),
        (["--scorer", "fsn", "--fit-on", "{cohort}", "--top-k", "5"], "--top-k only applies"),
        (["--scorer", "asnorm", "--clusters", "3", "--cohort", "{cohort}"], "--clusters only"),
        (["--scorer", "faircal", "--scorer-far", "0.1", "--fit-on", "{cohort}"], "--scorer-far"),
        (["--cohort", "{cohort}"], "--cohort only applies with --scorer NAME"),
        (["--save-scorer", "{tmp}/s.safetensors"], "--save-scorer only applies with --scorer"),
        (["--scorer", "fsn", "--cohort", "{cohort}"], "--scorer fsn needs labels: pass --fit-on"),
        (["--scorer", "asnorm", "--fit-on", "{cohort}"], "pass --cohort FILE, not --fit-on"),
        (["--scorer", "asnorm"], "--scorer asnorm needs --cohort FILE"),
        (["--scorer", "platt"], "--scorer platt needs --fit-on FILE"),
        (["--scorer", "cosine", "--cohort", "{cohort}"], "does not apply with --scorer cosine"),
        (["--scorer-file", "{tmp}/s.safetensors", "--cohort", "{cohort}"], "--cohort (a fitting"),
        (["--scorer-file", "{tmp}/s.safetensors", "--scorer", "fsn"], "--scorer (a fitting"),
        (["--scorer", "asnorm", "--cohort", "{cohort}", "--top-k", "0"], "--top-k must be >= 1"),
        (["--scorer", "fsn", "--fit-on", "{cohort}", "--scorer-far", "2"], "--scorer-far must"),
        (["--scorer", "platt", "--fit-on", "{cohort}", "--save-scorer", "{tmp}/s.npz"], "expected"),
        # found by reading the fit file, before the evaluated set
        (["--scorer", "asnorm", "--cohort", "{cohort}", "--top-k", "41"], "fewer than --top-k 41"),
        (["--scorer", "platt", "--fit-on", "{singletons}"], "has no positive pairs"),
        (["--scorer", "faircal", "--fit-on", "{singletons}"], "has no positive pairs"),
        (["--scorer", "fsn", "--fit-on", "{cohort}", "--clusters", "41"], "--clusters 41 is more"),
        (["--scorer", "platt", "--fit-on", "{nonames}x"], "--fit-on: file not found"),
        (["--scorer-file", "{tmp}/missing.safetensors"], "--scorer-file: file not found"),
        (["--scorer", "beta", "--fit-on", "{nolabels}"], "--fit-on: "),
        # found against the evaluated set, before the evaluation
        (["--scorer", "asnorm", "--cohort", "{overlap}", "--top-k", "5"], "shares 3 class(es)"),
        (["--scorer", "snorm", "--cohort", "{emb}"], "is the evaluated set"),
        (["--scorer", "isotonic", "--fit-on", "{dim8}"], "has 8-dimensional embeddings"),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "calibrate", "verify"])
def test_refused_before_evaluation(
    command: str,
    extra: list[str],
    message: str,
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_passes: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mv = importlib.import_module("tcm.metrics.verification")  # the module, not the function
    monkeypatch.setattr(mv, "verification", _no_verification)
    names = {k: str(v) for k, v in files.items()}
    argv = [command, names["emb"]]
    argv += {"calibrate": ["--far", "0.05"], "verify": ["--pairs", str(tmp_path / "p.csv")]}.get(
        command, []
    )
    (tmp_path / "p.csv").write_text("s0,s1,1\ns0,s5,0\n")
    argv += [a.format(tmp=tmp_path, **names) for a in extra]
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tcm {command}: error: "), err
    assert message in lines[0]
    assert not (tmp_path / "s.safetensors").exists()


def _no_verification(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("verification ran")


def test_scorer_file_of_other_dimension_refused(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_passes: Any
) -> None:
    saved = tmp_path / "s.safetensors"
    ASNorm(5).fit(_load(files["dim8"])["embeddings"]).save(saved)
    code, _, err = _run(["evaluate", files["emb"], "--scorer-file", saved], capsys)
    assert code == 2
    assert "fitted on 8-dimensional embeddings; got 12" in err and str(saved) in err


def test_scorer_cosine_equals_no_scorer(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["calibrate", files["emb"], "--far", 0.05]
    code, out1, _ = _run([*base, "--json", tmp_path / "a.json"], capsys)
    assert code == 0 and "scores:" not in out1
    code, out2, _ = _run([*base, "--scorer", "cosine", "--json", tmp_path / "b.json"], capsys)
    assert code == 0 and out2.splitlines()[0] == (
        "scores: cosine(), no fit; thresholds on the cosine scale (accept if >=)"
    )
    assert out2.splitlines()[1:-1] == out1.splitlines()[:-1]
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert b.pop("scorer")["kind"] == "cosine" and a == b
