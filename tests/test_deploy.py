"""tcm.deploy: matcher vs brute force, the threshold contract, the guaranteed-FAR threshold and
the drift monitor (tiny data)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tcm.deploy import ContractError, Matcher, Threshold, calibrate_threshold, monitor
from tcm.deploy.matcher import normalized_rows
from tcm.deploy.monitor import windows

# ----------------------------------------------------------------------------- matcher


def _brute(q: np.ndarray, g: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs with score >= t from the full score matrix, grouped by query, best first, ties
    by gallery index."""
    s = (normalized_rows(q, "q") @ normalized_rows(g, "g").T).numpy().astype(np.float64)
    qi, gi = np.nonzero(s >= t)
    sc = s[qi, gi]
    o = np.lexsort((gi, -sc, qi))
    return qi[o], gi[o], sc[o]


@pytest.mark.parametrize(("qb", "gb"), [(1, 1), (3, 5), (7, 1000), (1000, 2)])
def test_matcher_equals_brute_force_random(qb: int, gb: int) -> None:
    rng = np.random.default_rng(1)
    g, q = rng.normal(size=(53, 6)), rng.normal(size=(17, 6))
    t = 0.31
    m = Matcher(g, t, query_block=qb, gallery_block=gb)
    r = m.match(q)
    bq, bg, bs = _brute(q, g, t)
    assert r.query_index.tolist() == bq.tolist()
    assert r.gallery_index.tolist() == bg.tolist()
    np.testing.assert_allclose(r.score, bs, rtol=0, atol=4 * np.finfo(np.float32).eps)
    assert r.accepted.all()


def _dyadic(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit rows with entries in {-1/2, 1/2} (D = 4): every dot product is an exact multiple of
    1/4, so many scores equal the threshold exactly, whatever the summation order."""
    return rng.choice([-0.5, 0.5], size=(n, 4))


@pytest.mark.parametrize(("qb", "gb"), [(1, 1), (2, 3), (64, 64)])
def test_matcher_ties_at_threshold_equal_brute_force(qb: int, gb: int) -> None:
    rng = np.random.default_rng(2)
    g, q = _dyadic(rng, 40), _dyadic(rng, 12)
    t = 0.5  # a score exactly 0.5 is accepted
    r = Matcher(g, t, query_block=qb, gallery_block=gb).match(q)
    bq, bg, bs = _brute(q, g, t)
    assert np.any(bs == t)
    assert (r.query_index.tolist(), r.gallery_index.tolist()) == (bq.tolist(), bg.tolist())
    assert r.score.tolist() == bs.tolist()
    # a threshold just above the tie value drops exactly the ties
    r2 = Matcher(g, math.nextafter(0.5, 1.0), query_block=qb, gallery_block=gb).match(q)
    assert len(r2) == int(np.count_nonzero(bs > t))


def test_matcher_top_k_and_best_equal_brute_force_with_ties() -> None:
    rng = np.random.default_rng(3)
    g, q = _dyadic(rng, 30), _dyadic(rng, 9)
    bq, bg, bs = _brute(q, g, -1.0)
    for k in (1, 2, 5):
        r = Matcher(g, 0.0, gallery_block=4).match(q, top_k=k)
        keep = bs >= 0.0
        exp = [
            (a, b)
            for i in range(len(q))
            for a, b in list(
                zip(bq[keep & (bq == i)].tolist(), bg[keep & (bq == i)].tolist(), strict=True)
            )[:k]
        ]
        assert list(zip(r.query_index.tolist(), r.gallery_index.tolist(), strict=True)) == exp
    best = Matcher(g, 0.9, gallery_block=7).match(q, mode="best")
    first = np.searchsorted(bq, np.arange(len(q)))
    assert best.gallery_index.tolist() == bg[first].tolist()
    assert best.accepted.tolist() == (bs[first] >= 0.9).tolist()


def test_matcher_empty_results_and_query_matching_all() -> None:
    rng = np.random.default_rng(4)
    g, q = rng.normal(size=(20, 5)), rng.normal(size=(6, 5))
    empty = Matcher(g, 0.9999).match(q)
    assert len(empty) == 0 and empty.query_index.dtype == np.int64
    everything = Matcher(g, -1.0, gallery_block=3).match(q)
    assert len(everything) == 6 * 20
    assert np.all(np.diff(everything.query_index) >= 0)


def test_matcher_refuses_bad_gallery_and_queries() -> None:
    g = np.ones((4, 3))
    g[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        Matcher(g, 0.5)
    m = Matcher(np.eye(3), 0.5)
    with pytest.raises(ValueError, match="dimension 2 but the gallery has 3"):
        m.match(np.ones((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        Matcher(np.eye(3), math.nan)


# ----------------------------------------------------------------------------- contract


def _clustered(rng: np.random.Generator, c: int, n: int, d: int, sigma: float = 0.5):
    centers = rng.normal(size=(c, d))
    y = np.repeat(np.arange(c), n)
    return centers[y] + sigma * rng.normal(size=(c * n, d)), y


@pytest.fixture(scope="module")
def contract() -> Threshold:
    x, y = _clustered(np.random.default_rng(0), 30, 6, 8, sigma=0.7)
    return calibrate_threshold(x, y, far=0.02, n_boot=200)


def test_contract_round_trip_and_fields(contract: Threshold, tmp_path) -> None:
    p = contract.save(tmp_path / "t.json")
    back = Threshold.load(p)
    assert back == contract
    d = json.loads(p.read_text())
    assert d["comparison"] == ">=" and d["score"] == {"kind": "cosine"}
    assert d["calibration"]["num_samples"] == 180 and len(d["calibration"]["sha256"]) == 64
    assert d["dimension"] == 8 and d["tcm_version"]
    assert d["far_interval"]["lo"] <= d["far"] <= d["far_interval"]["hi"]


def test_contract_refuses_truncated_edited_and_foreign_files(contract, tmp_path) -> None:
    p = contract.save(tmp_path / "t.json")
    text = p.read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(ContractError, match="truncated"):
        Threshold.load(tmp_path / "cut.json")
    edited = json.loads(text)
    edited["threshold"] = 0.1
    (tmp_path / "ed.json").write_text(json.dumps(edited))
    with pytest.raises(ContractError, match="checksum mismatch"):
        Threshold.load(tmp_path / "ed.json")
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ContractError, match="not a tcm threshold contract"):
        Threshold.load(tmp_path / "x.json")
    with pytest.raises(ContractError, match="not found"):
        Threshold.load(tmp_path / "missing.json")


def test_contract_refuses_other_dimension_and_scorer(contract) -> None:
    with pytest.raises(ContractError, match="8-dimensional"):
        Matcher(np.eye(4), contract)

    class Fake:
        kind = "as_norm"

    with pytest.raises(ContractError, match=r"'cosine' but .* 'as_norm'"):
        contract.check_applicable(8, scorer=Fake())


def test_contract_records_and_checks_a_fitted_scorer(contract, tmp_path) -> None:
    from dataclasses import replace

    from tcm.deploy.contract import scorer_score
    from tcm.scoring import ASNorm

    rng = np.random.default_rng(9)
    path = ASNorm(top_k=3).fit(rng.normal(size=(10, 8))).save(tmp_path / "s.safetensors")
    c = replace(contract, score=scorer_score(path))
    assert c.score["kind"] == "as-norm" and c.score["scale"] == "z-score"
    c.check_applicable(8, scorer_file=path)  # the same file: accepted
    with pytest.raises(ContractError, match=r"'as-norm' but .* 'cosine'"):
        Matcher(np.eye(8), c)  # no scorer= for a contract on a scorer's scale
    ASNorm(top_k=3).fit(rng.normal(size=(10, 8))).save(path)  # refitted: another file
    with pytest.raises(ContractError, match="differs from the one the threshold was calibrated"):
        c.check_applicable(8, scorer_file=path)


# ----------------------------------------------------------------------------- guarantee


def _true_far(t: float, d: int) -> float:
    """FAR of two independent directions uniform on the sphere S^(d-1):
    (1 + s) / 2 ~ Beta((d - 1) / 2, (d - 1) / 2)."""
    from scipy.stats import beta

    return float(beta.sf((1.0 + t) / 2.0, (d - 1) / 2.0, (d - 1) / 2.0))


def test_guaranteed_threshold_keeps_far_below_target_in_repeated_draws() -> None:
    """Samples of a class are x = mu_c + sigma z with mu_c, z standard normal: each x is
    isotropic, and samples of different classes are independent, so the impostor score
    distribution is known exactly at every threshold (_true_far); impostor pairs sharing a
    class are dependent (sigma < 1), which the class bootstrap accounts for."""
    d, far, draws = 8, 0.02, 100
    rng = np.random.default_rng(12345)
    guaranteed_ok = point_over = naive_ok = 0
    for i in range(draws):
        x, y = _clustered(rng, 60, 4, d, sigma=0.5)
        c = calibrate_threshold(x, y, far=far, guarantee=True, n_boot=400, seed=i, reference=False)
        guaranteed_ok += _true_far(c.threshold, d) <= far
        point_over += _true_far(c.guarantee["point"]["threshold"], d) > far
        t_cp = c.guarantee["clopper_pearson"]["threshold"]
        naive_ok += t_cp is not None and _true_far(t_cp, d) <= far
    assert guaranteed_ok / draws >= 0.95  # 0.98 with this seed
    assert 0.3 <= point_over / draws <= 0.7  # 0.48
    assert naive_ok < guaranteed_ok  # 0.88: pairs sharing a class are not independent


def test_guarantee_refuses_a_set_too_small() -> None:
    x, y = _clustered(np.random.default_rng(5), 3, 2, 4)
    with pytest.raises(ValueError, match="too small to guarantee"):
        calibrate_threshold(x, y, far=1e-3, guarantee=True, n_boot=100, reference=False)


# ----------------------------------------------------------------------------- monitor


def _monitor_data(seed: int, shift: float):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, 8))
    y = np.repeat(np.arange(40), 6)

    def draw(s: float):
        x = 1.2 * centers[y] + rng.normal(size=(240, 8))
        x[:, 0] += s  # a component shared by every new sample (a new "font")
        p = rng.permutation(240)
        return x[p], y[p]

    xc, yc = draw(0.0)
    c = calibrate_threshold(xc, yc, far=0.01, n_boot=200)
    return c, draw(0.0), draw(shift)


def test_monitor_alarms_on_shift_and_stays_quiet_on_control() -> None:
    c, (x0, y0), (x1, y1) = _monitor_data(7, shift=4.0)
    quiet = monitor(c, x0, y0, window=120, n_boot=200)
    assert not quiet.alarm
    loud = monitor(c, x1, y1, window=120, n_boot=200)
    assert all(w["far_alarm"] for w in loud.windows)
    blind = monitor(c, x1, None, window=120, n_boot=200)  # no labels: the drift tests
    assert blind.alarm and any(w["drift_alarm"] for w in blind.windows)
    assert not monitor(c, x0, None, window=120, n_boot=200).alarm
    d = loud.to_dict()
    assert d["labelled"] and d["far_alarm_level"] == pytest.approx(0.02)


def test_monitor_groups_and_errors(contract) -> None:
    rng = np.random.default_rng(8)
    x, y = _clustered(rng, 10, 4, 8)
    g = np.array(["a", "b"] * 20)
    r = monitor(contract, x, y, g, n_boot=100)
    assert set(r.windows[0]["groups"]) == {"a", "b"}
    with pytest.raises(ValueError, match="8-dimensional"):
        monitor(contract, np.ones((5, 3)), n_boot=100)
    with pytest.raises(ValueError, match="empty"):
        monitor(contract, np.ones((0, 8)), n_boot=100)
    with pytest.raises(ValueError, match="needs >= 2"):
        windows(1, None)
    assert windows(7, 3) == [(0, 3), (3, 7)]
    with pytest.raises(ValueError, match="window must be"):
        windows(7, 1)
    nan = x.copy()
    nan[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        monitor(contract, nan, n_boot=100)


def test_matcher_accepts_torch_input() -> None:
    g = torch.eye(3, dtype=torch.float64)
    r = Matcher(g, 0.5).match(torch.eye(3))
    assert r.gallery_index.tolist() == [0, 1, 2]
