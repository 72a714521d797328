"""tcm.deploy with a fitted scorer: the contract on the scorer's scale, the matcher and the monitor
scoring through it (brute force, ties at t), the scorer file's checks, and the CLI (tiny data)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tcm._io import write_embeddings
from tcm.cli.main import main
from tcm.deploy import ContractError, Matcher, Threshold, calibrate_threshold, monitor
from tcm.deploy.matcher import normalized_rows
from tcm.metrics import PairIndex, pair_statistics
from tcm.scoring import ASNorm, Cosine, FairCal, Scorer

F32 = float(np.finfo(np.float32).eps)


def _fitted(kind: str, seed: int = 5, d: int = 4) -> Scorer:
    """A small fitted AS-norm (cohort) or FairCal (labelled fit set; non-affine in the cosine),
    on random data disjoint from what is matched."""
    rng = np.random.default_rng(seed)
    if kind == "asnorm":
        return ASNorm(top_k=5).fit(rng.normal(size=(40, d)))
    y = np.repeat(np.arange(12), 5)
    x = 2.0 * rng.normal(size=(12, d))[y] + rng.normal(size=(60, d))
    return FairCal(n_clusters=3, n_init=2).fit(x, y)


def _brute(
    scorer: Scorer, q: np.ndarray, g: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair's score from the whole ``S = score_block(Q @ G.T)`` in one block (float32
    cosines, scored in float64, rounded to float32: the matcher's rule), ordered by query, score
    descending, gallery index."""
    qn, gn = normalized_rows(q, "q"), normalized_rows(g, "g")
    cos = (qn @ gn.T).to(torch.float64)
    s = scorer.score_block(cos, scorer.prepare(qn), scorer.prepare(gn)).to(torch.float32).numpy()
    qi, gi = np.meshgrid(np.arange(len(q)), np.arange(len(g)), indexing="ij")
    qi, gi, sc = qi.ravel(), gi.ravel(), s.ravel()
    o = np.lexsort((gi, -sc.astype(np.float64), qi))
    return qi[o], gi[o], sc[o]


def _expected(bq, bg, bs, t: float, k: int | None = None) -> list[tuple[int, int]]:
    keep = bs >= np.float32(t)
    out: list[tuple[int, int]] = []
    for i in np.unique(bq):
        rows = [
            (int(a), int(b))
            for a, b in zip(bq[keep & (bq == i)], bg[keep & (bq == i)], strict=True)
        ]
        out += rows if k is None else rows[:k]
    return out


def _pairs(r) -> list[tuple[int, int]]:
    return list(zip(r.query_index.tolist(), r.gallery_index.tolist(), strict=True))


def _dyadic(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit rows with entries in {-1/2, 1/2} (D = 4): every cosine is exactly -1, -1/2, 0, 1/2
    or 1 in any summation order, so equal pairs get bit-equal scores: ties."""
    return rng.choice([-0.5, 0.5], size=(n, 4))


# ----------------------------------------------------------------------------- matcher


@pytest.mark.parametrize("kind", ["asnorm", "faircal"])
@pytest.mark.parametrize(("qb", "gb"), [(1, 1), (3, 5), (64, 7)])
def test_matcher_with_scorer_equals_brute_force_random(kind: str, qb: int, gb: int) -> None:
    scorer = _fitted(kind)
    rng = np.random.default_rng(1)
    g, q = rng.normal(size=(41, 4)), rng.normal(size=(13, 4))
    bq, bg, bs = _brute(scorer, q, g)
    t = float(np.median(bs))  # half the pairs pass; t is itself a pair's score
    m = Matcher(g, t, scorer=scorer, query_block=qb, gallery_block=gb)
    r = m.match(q)
    assert _pairs(r) == _expected(bq, bg, bs, t)
    exp = bs[bs >= np.float32(t)]  # same order as _expected within a query
    np.testing.assert_allclose(
        np.sort(r.score), np.sort(exp), rtol=0, atol=16 * F32 * float(np.abs(bs).max())
    )
    for k in (1, 3):
        assert _pairs(m.match(q, top_k=k)) == _expected(bq, bg, bs, t, k)
    best = m.match(q, mode="best")
    first = np.searchsorted(bq, np.arange(len(q)))
    assert best.gallery_index.tolist() == bg[first].tolist()
    assert best.accepted.tolist() == (bs[first] >= np.float32(t)).tolist()
    # the scores are not the cosines' order: some query's matches are ranked otherwise
    cos = (normalized_rows(q, "q") @ normalized_rows(g, "g").T).numpy()
    c = cos[r.query_index, r.gallery_index]
    assert np.any((r.query_index[1:] == r.query_index[:-1]) & (np.diff(c) > 0))


@pytest.mark.parametrize("kind", ["asnorm", "faircal"])
@pytest.mark.parametrize(("qb", "gb"), [(1, 1), (2, 3), (64, 64)])
def test_matcher_with_scorer_ties_at_threshold(kind: str, qb: int, gb: int) -> None:
    scorer = _fitted(kind)
    rng = np.random.default_rng(2)
    g, q = _dyadic(rng, 30), _dyadic(rng, 10)
    bq, bg, bs = _brute(scorer, q, g)
    values, counts = np.unique(bs, return_counts=True)
    t = float(values[counts >= 3][len(values[counts >= 3]) // 2])  # a score many pairs share
    assert np.count_nonzero(bs == np.float32(t)) >= 3
    m = Matcher(g, t, scorer=scorer, query_block=qb, gallery_block=gb)
    r = m.match(q)
    assert _pairs(r) == _expected(bq, bg, bs, t)
    assert np.count_nonzero(r.score == np.float32(t)) == np.count_nonzero(bs == np.float32(t))
    for k in (1, 2, 5):  # ties in the ranking: the smaller gallery index first
        assert _pairs(m.match(q, top_k=k)) == _expected(bq, bg, bs, t, k)
    above = Matcher(g, math.nextafter(t, math.inf), scorer=scorer, gallery_block=gb).match(q)
    assert len(above) == int(np.count_nonzero(bs > np.float32(t)))  # exactly the ties dropped


def test_matcher_cosine_scorer_is_the_cosine_path() -> None:
    rng = np.random.default_rng(3)
    g, q = rng.normal(size=(20, 4)), rng.normal(size=(5, 4))
    a, b = Matcher(g, 0.2).match(q), Matcher(g, 0.2, scorer=Cosine()).match(q)
    assert _pairs(a) == _pairs(b) and a.score.tolist() == b.score.tolist()


def test_matcher_refuses_scorer_of_another_dimension_or_unfitted() -> None:
    with pytest.raises(ValueError, match="fitted on 4-dimensional embeddings; got 6"):
        Matcher(np.eye(6), 0.5, scorer=_fitted("asnorm"))
    with pytest.raises(ValueError, match="not fitted"):
        Matcher(np.eye(4), 0.5, scorer=ASNorm(top_k=3))


# ----------------------------------------------------------------------------- contract


def _cal(seed: int = 0, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(25), 6)
    return 1.5 * rng.normal(size=(25, d))[y] + rng.normal(size=(150, d)), y


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("scored")
    x, y = _cal()
    out = {"dir": d, "x": x, "y": y}
    for kind in ("asnorm", "faircal"):
        path = _fitted(kind, seed=7).save(d / f"{kind}.safetensors")
        c = calibrate_threshold(x, y, far=0.02, n_boot=200, guarantee=True, scorer=path)
        out[kind] = (path, c)
    return out


@pytest.mark.parametrize("kind", ["asnorm", "faircal"])
def test_calibrate_with_scorer_is_on_its_scale(scored, kind: str) -> None:
    path, c = scored[kind]
    sc = Scorer.load(path)
    s = c.score
    assert (s["kind"], s["scale"], s["dimension"]) == (sc.kind, sc.score_scale, 4)
    assert s["file"] == str(path.resolve()) and len(s["sha256"]) == 64
    assert s["params"] == json.loads(json.dumps(sc.params()))
    # the point threshold is the exact impostor quantile of the *scores*, not the cosines
    idx = PairIndex(scored["x"], scored["y"], scorer=sc)
    t_point = pair_statistics(idx, fars=[0.02], far_range=None).threshold_at_far(0.02)
    assert c.guarantee["point"]["threshold"] == t_point
    cos_t = calibrate_threshold(scored["x"], scored["y"], far=0.02, n_boot=200).threshold
    assert t_point != cos_t
    assert c.method == "upper_bound" and c.threshold >= t_point
    assert c.far_interval["hi"] <= 0.02
    # the monitor, scoring through the same scorer, finds the contract's FAR on its own set
    res = monitor(c, scored["x"], scored["y"], n_boot=200, scorer=sc)
    assert res.windows[0]["far"] == c.far
    assert res.settings["score"] == sc.kind and res.settings["score_scale"] == sc.score_scale
    assert res.windows[0]["acceptance_rate"] == c.reference["acceptance_rate"]


def test_contract_scorer_file_moves_with_the_contract(scored, tmp_path) -> None:
    path, c = scored["asnorm"]
    d = tmp_path / "a"
    d.mkdir()
    shutil.copy(path, d / "s.safetensors")
    c2 = calibrate_threshold(
        scored["x"], scored["y"], far=0.02, n_boot=50, scorer=d / "s.safetensors"
    )
    c2.save(d / "t.json")
    assert json.loads((d / "t.json").read_text())["score"]["file"] == "s.safetensors"
    shutil.move(str(d), str(tmp_path / "b"))  # the folder moved: the relative file follows
    back = Threshold.load(tmp_path / "b" / "t.json")
    assert back.score["file"] == str(tmp_path / "b" / "s.safetensors")
    assert back.load_scorer() is not None
    # a scorer outside the contract's folder is recorded by its absolute path
    c.save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["score"]["file"] == str(path.resolve())
    assert Threshold.load(tmp_path / "c.json") == c


def test_contract_scorer_errors(scored, tmp_path) -> None:
    path, c = scored["asnorm"]
    x4 = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(ContractError, match=r"'as-norm' but the gallery are scored with 'cosine'"):
        Matcher(x4, c)  # no scorer for a scorer contract
    with pytest.raises(ContractError, match=r"'as-norm' but the new embeddings are scored with"):
        monitor(c, x4)
    with pytest.raises(ContractError, match="fitted_on_sha256"):
        Matcher(x4, c, scorer=_fitted("asnorm", seed=99))  # another fitted AS-norm
    with pytest.raises(ContractError, match=r"'as-norm' but .* 'faircal'"):
        Matcher(x4, c, scorer=Scorer.load(scored["faircal"][0]))
    cos = calibrate_threshold(scored["x"], scored["y"], far=0.02, n_boot=50)
    with pytest.raises(ContractError, match=r"'cosine' but the gallery are scored with 'as-norm'"):
        Matcher(x4, cos, scorer=Scorer.load(path))
    with pytest.raises(ContractError, match="score is 'cosine' but a scorer file was given"):
        cos.load_scorer(path)
    with pytest.raises(ContractError, match="file the threshold contract names is missing"):
        c.load_scorer(tmp_path / "gone.safetensors")
    other = _fitted("asnorm", seed=11).save(tmp_path / "other.safetensors")
    with pytest.raises(ContractError, match="not the one the threshold was calibrated with"):
        c.load_scorer(other)
    wide = ASNorm(top_k=3).fit(np.random.default_rng(0).normal(size=(10, 6)))
    with pytest.raises(ContractError, match="fitted on 6-dimensional embeddings; the threshold"):
        c.check_applicable(4, scorer=wide)
    with pytest.raises(ValueError, match="path of a saved scorer file"):
        calibrate_threshold(scored["x"], scored["y"], far=0.02, scorer=_fitted("asnorm"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fitted on 4-dimensional embeddings; got 8"):
        calibrate_threshold(*_cal(d=8), far=0.02, n_boot=50, scorer=path)
    with pytest.raises(ValueError, match="must give its scorer's 'file'"):
        Threshold(threshold=1.0, target_far=0.01, far=0.01, tar=0.5, dimension=4,
                  score={"kind": "as-norm"})  # fmt: skip


def test_matcher_scores_through_the_contract_scorer(scored) -> None:
    _, c = scored["faircal"]
    sc = c.load_scorer()
    assert sc is not None
    x = scored["x"]
    r = Matcher(x[:80], c, scorer=sc, gallery_block=9).match(x[80:])
    bq, bg, bs = _brute(sc, x[80:], x[:80])
    assert _pairs(r) == _expected(bq, bg, bs, c.threshold)
    assert len(r) > 0 and np.all(r.score >= np.float32(c.threshold))


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 8))

    def draw(classes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(classes, n)
        return 1.2 * centers[y] + rng.normal(size=(len(y), 8)), y

    p: dict[str, Path] = {"dir": d}
    for name, cls in (
        ("cohort", np.arange(30, 50)),
        ("cal", np.arange(30)),
        ("new", np.arange(30)),
    ):
        x, y = draw(cls, 6 if name != "cohort" else 3)
        names = [f"c{i}" for i in cls]  # the cohort's classes are not the others'
        p[name] = write_embeddings(
            d / f"{name}.npz", x, y - cls[0], names, ids=[f"{name}{i}" for i in range(len(y))]
        )
    x, y = draw(np.arange(30), 6)
    p["d4"] = write_embeddings(d / "d4.npz", x[:, :4], y, [f"c{i}" for i in range(30)])
    p["t"], p["s"] = d / "t.json", d / "as.safetensors"
    code = main(
        ["calibrate", str(p["cal"]), "--far", "0.01", "--scorer", "asnorm", "--top-k", "10",
         "--cohort", str(p["cohort"]), "--save-scorer", str(p["s"]), "--save", str(p["t"]),
         "--guarantee", "--ci", "0.95", "--n-boot", "200"]
    )  # fmt: skip
    assert code == 0
    return p


def test_cli_calibrate_save_with_scorer(cli, capsys) -> None:
    c = Threshold.load(cli["t"])
    assert c.score["kind"] == "as-norm" and c.score["scale"] == "z-score"
    assert json.loads(cli["t"].read_text())["score"]["file"] == "as.safetensors"  # same folder
    from tcm.data.embedding_file import read_embedding_file

    f = read_embedding_file(cli["cal"])
    lib = calibrate_threshold(
        f.embeddings, f.labels, far=0.01, guarantee=True, n_boot=200, scorer=cli["s"]
    )
    assert lib.threshold == c.threshold and lib.far == c.far
    # --scorer-file: the same contract from the saved scorer
    t2 = cli["dir"] / "t2.json"
    args = ["calibrate", str(cli["cal"]), "--far", "0.01", "--scorer-file", str(cli["s"])]
    assert main([*args, "--save", str(t2), "--guarantee", "--ci", "0.95", "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "z-score scale of" in out
    assert Threshold.load(t2).threshold == c.threshold


def test_cli_match_and_monitor_score_through_the_contract_scorer(cli, tmp_path, capsys) -> None:
    out = tmp_path / "m.csv"
    base = ["match", "--threshold", str(cli["t"]), "--gallery", str(cli["cal"])]
    assert main([*base, "--queries", str(cli["new"]), "--out", str(out), "--top-k", "2"]) == 0
    assert "score as-norm, z-score scale" in capsys.readouterr().out
    from tcm.data.embedding_file import read_embedding_file

    g, q = read_embedding_file(cli["cal"]), read_embedding_file(cli["new"])
    c = Threshold.load(cli["t"])
    r = Matcher(g.embeddings, c, scorer=c.load_scorer()).match(q.embeddings, top_k=2)
    rows = out.read_text().splitlines()[1:]
    assert [tuple(row.split(",")[:2]) for row in rows] == [
        (f"new{i}", f"cal{j}") for i, j in _pairs(r)
    ]
    assert all(float(row.split(",")[2]) >= c.threshold - 1e-6 * abs(c.threshold) for row in rows)
    js = tmp_path / "mon.json"
    mon = ["monitor", "--threshold", str(cli["t"]), str(cli["new"]), "--labels", "--n-boot", "200"]
    assert main([*mon, "--json", str(js)]) in (0, 3)
    res = json.loads(js.read_text())
    assert res["score"] == "as-norm" and res["score_scale"] == "z-score"
    assert "(as-norm, z-score scale)" in capsys.readouterr().out
    # a moved scorer file: --scorer-file names the copy (verified)
    moved = tmp_path / "moved.safetensors"
    shutil.copy(cli["s"], moved)
    assert main([*base, "--queries", str(cli["new"]), "--out", str(tmp_path / "m2.csv"),
                 "--top-k", "2", "--scorer-file", str(moved)]) == 0  # fmt: skip
    assert (tmp_path / "m2.csv").read_bytes() == out.read_bytes()


def test_cli_scorer_contract_errors_exit_2_with_one_line(cli, tmp_path, capsys) -> None:
    out = tmp_path / "m.csv"
    # a copy of the contract without its scorer file next to it
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(cli["t"], lone / "t.json")
    other = ASNorm(top_k=3).fit(np.random.default_rng(1).normal(size=(20, 8)))
    other_file = other.save(tmp_path / "other.safetensors")
    cos_t = tmp_path / "cos.json"
    assert main(["calibrate", str(cli["cal"]), "--far", "0.01", "--save", str(cos_t)]) == 0
    wide = ASNorm(top_k=3).fit(np.random.default_rng(1).normal(size=(20, 4)))
    wide_file = wide.save(tmp_path / "wide.safetensors")
    capsys.readouterr()
    match = ["match", "--gallery", str(cli["cal"]), "--queries", str(cli["new"]), "--out", str(out)]
    cases = [
        ([*match, "--threshold", str(lone / "t.json")], "contract names is missing"),
        ([*match, "--threshold", str(cli["t"]), "--scorer-file", str(other_file)],
         "not the one the threshold was calibrated with"),
        ([*match, "--threshold", str(cos_t), "--scorer-file", str(cli["s"])],
         "score is 'cosine' but a scorer file was given"),
        ([*match, "--threshold", str(cli["t"]), "--index", "hnsw"], "searches by cosine"),
        (["monitor", "--threshold", str(cli["t"]), str(cli["new"]), "--scorer-file",
          str(other_file)], "not the one the threshold was calibrated with"),
        (["monitor", "--threshold", str(cos_t), str(cli["new"]), "--scorer-file", str(cli["s"])],
         "score is 'cosine' but a scorer file was given"),
        (["monitor", "--threshold", str(lone / "t.json"), str(cli["new"])], "is missing"),
        (["calibrate", str(cli["cal"]), "--far", "0.01", "--scorer", "asnorm", "--cohort",
          str(cli["cohort"]), "--save", str(tmp_path / "x.json")], "needs --save-scorer"),
        (["calibrate", str(cli["cal"]), "--far", "0.01", "--scorer-file", str(wide_file),
          "--save", str(tmp_path / "x.json")], "fitted on 4-dimensional embeddings; got 8"),
        ([*match, "--threshold", str(cli["t"]), "--gallery", str(cli["d4"])], "4-dimensional"),
    ]  # fmt: skip
    for argv, needle in cases:
        assert main(argv) == 2, needle
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (needle, err)
        assert not out.exists() and not (tmp_path / "x.json").exists()
    # the scorer file replaced by another one (refitted in place): refused by its SHA-256
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(cli["t"], bad / "t.json")
    shutil.copy(other_file, bad / "as.safetensors")
    assert main([*match, "--threshold", str(bad / "t.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256" in err[0]
