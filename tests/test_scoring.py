"""tcm.scoring: every scorer against an independent NumPy reimplementation, files, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from tcm.scoring import (
    FSN,
    ASNorm,
    Beta,
    Cosine,
    FairCal,
    GroupThresholds,
    Isotonic,
    Platt,
    Scorer,
    load_scorer,
)

EPS64 = np.finfo(np.float64).eps


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _calib(seed: int = 0, classes: int = 8, per: int = 5, dim: int = 4, spread: float = 1.2):
    """Tiny labelled set: class means plus noise (classes overlap, so nothing is separable)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)) * spread
    x = np.repeat(means, per, axis=0) + rng.normal(size=(classes * per, dim))
    return x, np.repeat(np.arange(classes), per)


def _all_pairs(x: np.ndarray, y: np.ndarray):
    xn = _unit(x)
    i, j = np.triu_indices(x.shape[0], 1)
    return i, j, (xn[i] * xn[j]).sum(1), y[i] == y[j]


def _newton_logistic(f: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted unregularised logistic regression by Newton's method; [coef..., intercept]."""
    a = np.hstack([f, np.ones((f.shape[0], 1))])
    beta = np.zeros(a.shape[1])
    for _ in range(100):
        p = 1 / (1 + np.exp(-(a @ beta)))
        g = a.T @ (w * (y - p))
        h = a.T @ (a * (w * p * (1 - p))[:, None])
        beta = beta + np.linalg.solve(h, g)
    return beta


def _balanced(same: np.ndarray) -> np.ndarray:
    return np.where(same, 0.5 / same.sum(), 0.5 / (~same).sum()) * same.shape[0]


def _beta_feats(s: np.ndarray) -> np.ndarray:
    q = np.clip((s + 1) / 2, 1e-6, 1 - 1e-6)
    return np.stack([np.log(q), -np.log(1 - q)], 1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


# --- Cosine -------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), m=st.integers(1, 6))
def test_cosine_is_identity(seed: int, n: int, m: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 3)) + 0.1, rng.normal(size=(m, 3)) + 0.1
    want = _unit(a) @ _unit(b).T
    np.testing.assert_allclose(Cosine().score(a, b), want, rtol=0, atol=16 * EPS64)


# --- AS-norm ------------------------------------------------------------------------------------


def _asnorm_brute(a, b, cohort, k, ddof, combine):
    an, bn, cn = _unit(a), _unit(b), _unit(cohort)

    def stats(x):
        mus, sds = [], []
        for row in x @ cn.T:
            top = np.sort(row)[::-1][: (k if k is not None else row.shape[0])]
            mus.append(top.mean())
            sds.append(top.std(ddof=ddof))
        return np.array(mus), np.array(sds)

    ma, sa = stats(an)
    mb, sb = stats(bn)
    s = an @ bn.T
    out = np.empty_like(s)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            za, zb = (s[i, j] - ma[i]) / sa[i], (s[i, j] - mb[j]) / sb[j]
            out[i, j] = {"mean": 0.5 * (za + zb), "z": za, "t": zb}[combine]
    return out


@pytest.mark.parametrize(
    "k,ddof,combine", [(5, 0, "mean"), (None, 0, "mean"), (3, 1, "mean"), (4, 0, "z"), (4, 0, "t")]
)
def test_asnorm_matches_brute_force(k, ddof, combine) -> None:
    rng = np.random.default_rng(1)
    cohort, a, b = rng.normal(size=(12, 5)), rng.normal(size=(4, 5)), rng.normal(size=(3, 5))
    sc = ASNorm(top_k=k, std_ddof=ddof, combine=combine).fit(cohort)
    want = _asnorm_brute(a, b, cohort, k, ddof, combine)
    # z-scores: errors of ~eps in cosines divided by sd ~ 0.2: a few hundred eps absolute.
    np.testing.assert_allclose(sc.score(a, b), want, rtol=0, atol=256 * EPS64 * np.abs(want).max())


def test_asnorm_blocked_prepare_equals_one_block() -> None:
    rng = np.random.default_rng(2)
    sc = ASNorm(top_k=4).fit(rng.normal(size=(9, 3)))
    x = torch.from_numpy(rng.normal(size=(7, 3)))
    one, blocked = sc.prepare(x), sc.prepare(x, block_size=2)
    for key in ("mu", "sd"):
        assert torch.equal(one.tensors[key], blocked.tensors[key])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_snorm_symmetric(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sc = ASNorm(top_k=None).fit(rng.normal(size=(10, 3)))
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    np.testing.assert_allclose(sc.score(a, b), sc.score(b, a).T, rtol=0, atol=1e-12)


def test_score_block_composes_blockwise_and_keeps_tensor_type() -> None:
    rng = np.random.default_rng(3)
    sc = ASNorm(top_k=3).fit(rng.normal(size=(8, 3)))
    a = torch.from_numpy(_unit(rng.normal(size=(6, 3))))
    b = torch.from_numpy(_unit(rng.normal(size=(5, 3))))
    sa, sb = sc.prepare(a), sc.prepare(b)
    dense = sc.score_block(a @ b.T, sa, sb)
    assert isinstance(dense, torch.Tensor) and dense.dtype == torch.float64
    part = sc.score_block(a[2:5] @ b[1:4].T, sa[2:5], sb[np.array([1, 2, 3])])
    assert torch.equal(part, dense[2:5, 1:4])
    as32 = sc.score_block((a @ b.T).float(), sa, sb)
    assert as32.dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        sc.score_block(a @ b.T, sb, sa)


def test_asnorm_cohort_smaller_than_top_k_refused() -> None:
    with pytest.raises(ValueError, match="cohort has 4 samples but top_k=5"):
        ASNorm(top_k=5).fit(np.random.default_rng(0).normal(size=(4, 3)))


# --- global calibrators ---------------------------------------------------------------------


def test_platt_matches_newton() -> None:
    x, y = _calib()
    _, _, s, same = _all_pairs(x, y)
    beta = _newton_logistic(s[:, None], same.astype(float), _balanced(same))
    sc = Platt().fit(x, y)
    grid = np.linspace(-1, 1, 41)
    got = sc.score_block(grid[:, None], *_states(sc, 41, 1))[:, 0]
    # lbfgs stops at tol 1e-10 on the gradient; the probabilities agree to ~1e-6.
    np.testing.assert_allclose(got, _sigmoid(beta[0] * grid + beta[1]), rtol=0, atol=1e-6)


def test_beta_matches_newton() -> None:
    x, y = _calib()
    _, _, s, same = _all_pairs(x, y)
    beta = _newton_logistic(_beta_feats(s), same.astype(float), _balanced(same))
    assert beta[0] > 0 and beta[1] > 0  # the main path (no coefficient dropped)
    sc = Beta().fit(x, y)
    grid = np.linspace(-0.99, 0.99, 41)
    got = sc.score_block(grid[:, None], *_states(sc, 41, 1))[:, 0]
    np.testing.assert_allclose(got, _sigmoid(_beta_feats(grid) @ beta[:2] + beta[2]), atol=1e-6)


def _pav(s: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted pool-adjacent-violators on x-sorted data with tied x merged first."""
    xs, inv = np.unique(s, return_inverse=True)
    wy = np.bincount(inv, w * y)
    ws = np.bincount(inv, w)
    blocks = [[wy[k] / ws[k], ws[k], 1] for k in range(xs.shape[0])]
    out: list[list[float]] = []
    for b in blocks:
        out.append(b)
        while len(out) > 1 and out[-2][0] > out[-1][0]:
            v2, w2, n2 = out.pop()
            v1, w1, n1 = out.pop()
            out.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    fitted = np.concatenate([[v] * int(n) for v, _, n in out])
    return xs, fitted


def test_isotonic_matches_pav() -> None:
    x, y = _calib(spread=0.8)
    _, _, s, same = _all_pairs(x, y)
    xs, fitted = _pav(s, same.astype(float), _balanced(same))
    sc = Isotonic().fit(x, y)
    got = sc.score_block(xs[:, None], *_states(sc, xs.shape[0], 1))[:, 0]
    np.testing.assert_allclose(got, fitted, rtol=0, atol=1e-12)
    # Outside the fitted range: clipped to the end values.
    ends = sc.score_block(np.array([[-1.0], [1.0]]), *_states(sc, 2, 1))[:, 0]
    np.testing.assert_allclose(ends, [fitted[0], fitted[-1]], atol=1e-12)


def _states(sc: Scorer, n: int, m: int):
    from tcm.scoring import SideState

    return SideState(n), SideState(m)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), kind=st.sampled_from([Platt, Beta, Isotonic]))
def test_calibrators_are_monotone(seed: int, kind: type[Scorer]) -> None:
    x, y = _calib(seed=seed, classes=5, per=4)
    sc = kind().fit(x, y)
    grid = np.sort(np.random.default_rng(seed).uniform(-1, 1, 200))
    p = sc.score_block(grid[:, None], *_states(sc, 200, 1))[:, 0]
    assert (np.diff(p) >= 0).all() and (p >= 0).all() and (p <= 1).all()


def test_calibration_without_positive_pairs_refused() -> None:
    x = np.random.default_rng(0).normal(size=(6, 3))
    for kind in (Platt, Beta, Isotonic, FairCal):
        with pytest.raises(ValueError, match="no positive"):
            kind(n_clusters=2).fit(x, np.arange(6)) if kind is FairCal else kind().fit(
                x, np.arange(6)
            )


def test_pair_sampling_is_seeded_and_capped() -> None:
    x, y = _calib(classes=6, per=6)
    a = Platt(max_pairs=50, seed=3).fit(x, y)
    b = Platt(max_pairs=50, seed=3).fit(x, y)
    c = Platt(max_pairs=50, seed=4).fit(x, y)
    assert (a.w, a.c) == (b.w, b.c) and (a.w, a.c) != (c.w, c.c)


# --- FSN, FairCal, group thresholds -------------------------------------------------------------


def _kmeans(xn: np.ndarray, k: int, seed: int = 0):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(xn)
    return km.cluster_centers_, km.labels_


def _nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return np.array([np.argmin(((centers - r) ** 2).sum(1)) for r in _unit(x)])


def test_fsn_matches_brute_force() -> None:
    x, y = _calib(classes=10, per=6)
    far, k = 0.05, 3
    xn = _unit(x)
    centers, cl = _kmeans(xn, k)
    i, j, s, same = _all_pairs(x, y)
    thr_g = np.quantile(s[~same], 1 - far)
    thr = []
    for c in range(k):
        sel = (~same) & (cl[i] == c) & (cl[j] == c)
        thr.append(np.quantile(s[sel], 1 - far) if sel.any() else thr_g)
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(4, 4))
    ca, cb = _nearest(a, centers), _nearest(b, centers)
    cos = _unit(a) @ _unit(b).T
    want = cos - 0.5 * (np.array(thr)[ca][:, None] + np.array(thr)[cb][None, :]) + thr_g
    sc = FSN(n_clusters=k, far=far).fit(x, y)
    assert sc.global_threshold == pytest.approx(thr_g, abs=1e-12)
    np.testing.assert_allclose(sc.score(a, b), want, rtol=0, atol=1e-12)


def test_faircal_matches_brute_force() -> None:
    x, y = _calib(seed=3, classes=10, per=6)
    k = 2
    centers, cl = _kmeans(_unit(x), k)
    i, j, s, same = _all_pairs(x, y)
    params, weights = [], []
    for c in range(k):
        sel = (cl[i] == c) | (cl[j] == c)
        beta = _newton_logistic(_beta_feats(s[sel]), same[sel].astype(float), _balanced(same[sel]))
        assert beta[0] > 0 and beta[1] > 0
        params.append(beta)
        weights.append(sel.sum())
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(3, 4))
    ca, cb = _nearest(a, centers), _nearest(b, centers)
    cos = _unit(a) @ _unit(b).T
    want = np.empty_like(cos)
    for r in range(cos.shape[0]):
        for q in range(cos.shape[1]):
            f = _beta_feats(np.array([cos[r, q]]))[0]
            pa = _sigmoid(f @ params[ca[r]][:2] + params[ca[r]][2])
            pb = _sigmoid(f @ params[cb[q]][:2] + params[cb[q]][2])
            wa, wb = weights[ca[r]], weights[cb[q]]
            want[r, q] = (wa * pa + wb * pb) / (wa + wb)
    got = FairCal(n_clusters=k).fit(x, y).score(a, b)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # lbfgs vs Newton


def test_group_thresholds_match_brute_force() -> None:
    x, y = _calib(classes=10, per=6)
    groups = np.where(y < 5, "A", "B")
    far = 0.1
    i, j, s, same = _all_pairs(x, y)
    thr_g = np.quantile(s[~same], 1 - far)
    thr = {g: np.quantile(s[(~same) & (groups[i] == g) & (groups[j] == g)], 1 - far) for g in "AB"}
    sc = GroupThresholds(far=far).fit(x, y, groups)
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    ga, gb = ["A", "B", "B"], ["B", "A"]
    cos = _unit(a) @ _unit(b).T
    shift = 0.5 * (np.array([thr[g] for g in ga])[:, None] + np.array([thr[g] for g in gb]))
    want = cos - shift + thr_g
    got = sc.score(a, b, groups_a=ga, groups_b=gb)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="not seen in fit"):
        sc.prepare(a, groups=["A", "C", "A"])
    with pytest.raises(ValueError, match="needs groups"):
        sc.prepare(a)


def test_n_clusters_above_samples_refused() -> None:
    x, y = _calib(classes=2, per=3)
    with pytest.raises(ValueError, match="n_clusters=7 exceeds the 6"):
        FairCal(n_clusters=7).fit(x, y)


# --- files --------------------------------------------------------------------------------------


def _fitted() -> list[Scorer]:
    x, y = _calib(classes=10, per=6)
    return [
        Cosine(),
        ASNorm(top_k=5).fit(x),
        Platt().fit(x, y),
        Beta().fit(x, y),
        Isotonic().fit(x, y),
        FSN(n_clusters=3, far=0.05).fit(x, y),
        FairCal(n_clusters=2).fit(x, y),
        GroupThresholds(far=0.1).fit(x, y, np.where(y < 5, "A", "B")),
    ]


@pytest.fixture(scope="module")
def fitted() -> list[Scorer]:
    return _fitted()


def test_save_load_round_trip(fitted: list[Scorer], tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(3, 4))
    for sc in fitted:
        path = sc.save(tmp_path / f"{sc.kind}.safetensors")
        back = load_scorer(path)
        assert type(back) is type(sc) and back.params() == sc.params()
        assert back.metadata() == sc.metadata()
        kw = {"groups_a": ["A"] * 4, "groups_b": ["B"] * 3} if sc.uses_groups else {}
        assert np.array_equal(back.score(a, b, **kw), sc.score(a, b, **kw))
        assert type(sc).load(path).kind == sc.kind
    meta = json.loads(_meta(tmp_path / "as-norm.safetensors"))
    assert meta["score_scale"] == "z-score" and meta["dim"] == 4
    assert meta["params"] == {"top_k": 5, "combine": "mean", "std_ddof": 0}
    assert len(meta["fitted_on_sha256"]) == 64


def _meta(path: Path) -> str:
    with safe_open(str(path), framework="np") as fh:
        return str(fh.metadata()["tcm_scorer"])


def test_tampered_tensor_refused(fitted: list[Scorer], tmp_path: Path) -> None:
    p = fitted[1].save(tmp_path / "s.safetensors")
    tensors = load_file(str(p))
    meta = _meta(p)
    tensors["cohort"][0, 0] += 0.5
    save_file(tensors, str(p), metadata={"tcm_scorer": meta})
    with pytest.raises(ValueError, match="do not match the recorded SHA-256") as e:
        load_scorer(p)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: {k: v for k, v in m.items() if k != "params"}, "lacks"),
        (lambda m: {**m, "kind": "nope"}, "unknown scorer kind"),
        (lambda m: {**m, "format": "other"}, "unsupported scorer format"),
        (lambda m: {**m, "score_scale": "probability"}, "score_scale"),
        (lambda m: {**m, "dim": -3}, "dim"),
        (lambda m: {**m, "params": {"top_k": 500}}, "invalid as-norm scorer"),
        (lambda m: {**m, "params": {"evil": 1}}, "invalid as-norm scorer"),
    ],
)
def test_bad_metadata_refused(fitted: list[Scorer], tmp_path: Path, edit, match: str) -> None:
    p = fitted[1].save(tmp_path / "s.safetensors")
    tensors = load_file(str(p))
    meta = edit(json.loads(_meta(p)))
    save_file(tensors, str(p), metadata={"tcm_scorer": json.dumps(meta)})
    with pytest.raises(ValueError, match=match) as e:
        load_scorer(p)
    assert "\n" not in str(e.value)


def test_unreadable_or_foreign_files_refused(fitted: list[Scorer], tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read scorer file"):
        load_scorer(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="not a tcm scorer file"):
        load_scorer(plain)
    bad_json = tmp_path / "bad.safetensors"
    save_file({"x": np.zeros(2)}, str(bad_json), metadata={"tcm_scorer": "{nope"})
    with pytest.raises(ValueError, match="not valid JSON"):
        load_scorer(bad_json)
    p = fitted[2].save(tmp_path / "platt.safetensors")
    with pytest.raises(ValueError, match="holds a platt scorer, not as-norm"):
        ASNorm.load(p)
    with pytest.raises(ValueError, match="not found"):
        load_scorer(tmp_path / "missing.safetensors")


def test_wrong_dimension_refused(fitted: list[Scorer]) -> None:
    for sc in fitted[1:]:
        with pytest.raises(ValueError, match="fitted on 4-dimensional embeddings; got 5"):
            sc.check_compatible(5)
        with pytest.raises(ValueError, match="4-dimensional"):
            sc.prepare(np.ones((2, 5)), groups=["A", "A"] if sc.uses_groups else None)
    Cosine().check_compatible(123)  # the identity takes any dimension


def test_unfitted_scorer_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not fitted"):
        Platt().prepare(np.ones((2, 3)))
    with pytest.raises(ValueError, match="not fitted"):
        ASNorm().save(tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    "codes,cap",
    [
        (np.repeat(np.arange(5), 4), 10_000),  # everything enumerated
        (np.r_[np.zeros(99, np.int64), 1], 100),  # few impostors among many pairs: by class
        (np.repeat(np.arange(6), 6), 50),  # both kinds sampled
    ],
)
def test_pair_helpers_return_valid_pairs(codes: np.ndarray, cap: int) -> None:
    from tcm.scoring.base import genuine_pairs, impostor_pairs

    rng = np.random.default_rng(0)
    n = codes.shape[0]
    want_gen = {(i, j) for i in range(n) for j in range(i + 1, n) if codes[i] == codes[j]}
    want_imp = {(i, j) for i in range(n) for j in range(i + 1, n) if codes[i] != codes[j]}
    for fn, want in ((genuine_pairs, want_gen), (impostor_pairs, want_imp)):
        a, b = fn(codes, cap, rng)
        got = list(zip(a.tolist(), b.tolist(), strict=True))
        assert set(got) <= want
        if len(want) <= cap:
            assert sorted(got) == sorted(want)  # all of them, each once
        else:
            assert len(got) == cap
