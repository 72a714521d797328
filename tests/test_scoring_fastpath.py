"""The fast scored paths (issue 21) against the exact ones: in-place block scoring
(``Scorer.score_block_``) is bit-identical to ``score_block``; the rounding bound of
``ASNorm.error_terms`` holds; scored retrieval (float32 scores certified by that bound,
candidates re-ranked in float64) returns exactly the neighbours of a float64 brute force, ties
at the k-th neighbour included, by every route (symmetric tiles, chunked search, re-search)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tcm.metrics import retrieval_metrics
from tcm.metrics._knn import canonical_similarity
from tcm.metrics._pairs import iter_blocks, prepare
from tcm.metrics.retrieval import (
    _scored_topk,
    _ScoredRanker,
    leave_one_out_input,
    prepare_retrieval,
    with_scorer,
)
from tcm.scoring import FSN, ASNorm, FairCal, GroupThresholds, Platt
from tcm.scoring.base import Scorer

COMBINES = ["mean", "z", "t"]


def _data(n_cls: int = 15, per: int = 6, dim: int = 8, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_cls), per)
    x = rng.normal(size=(n_cls * per, dim)) + 1.2 * rng.normal(size=(n_cls, dim))[y]
    return x, y


def _asnorm(combine: str, dim: int = 8, top_k: int | None = 10) -> ASNorm:
    cohort = np.random.default_rng(9).normal(size=(60, dim))
    return ASNorm(top_k=top_k, combine=combine).fit(cohort)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", [*COMBINES, "fsn", "faircal", "groups", "platt"])
def test_score_block_inplace_is_bit_identical(kind: str, dtype: torch.dtype) -> None:
    x, y = _data()
    sc: Scorer
    if kind in COMBINES:
        sc = _asnorm(kind)
    elif kind == "fsn":
        sc = FSN(n_clusters=3, far=0.1).fit(x, y)
    elif kind == "faircal":
        sc = FairCal(n_clusters=3).fit(x, y)
    elif kind == "groups":
        sc = GroupThresholds(far=0.1).fit(x, y, np.array(["a", "b", "c"])[np.arange(len(y)) % 3])
    else:
        sc = Platt().fit(x, y)
    # 700 rows: a block of several 1 MiB row chunks (AS-norm maps it chunk by chunk)
    big = np.random.default_rng(2).normal(size=(700, x.shape[1]))
    xt = torch.nn.functional.normalize(torch.as_tensor(big, dtype=dtype), dim=1)
    groups = np.array(["a", "b", "c"])[np.arange(700) % 3] if kind == "groups" else None
    st = sc.prepare(xt, groups=groups)
    for r0, r1, c0 in ((10, 40, 5), (0, 700, 0)):
        cos = xt[r0:r1] @ xt[c0:].T
        want = sc.score_block(cos.clone(), st[r0:r1], st[c0:])
        for scratch in (None, torch.empty(3, dtype=dtype), torch.empty(cos.numel(), dtype=dtype)):
            got = cos.clone()
            assert sc.score_block_(got, st[r0:r1], st[c0:], scratch) is got
            assert torch.equal(got, want)
    with pytest.raises(ValueError, match="shape"):
        sc.score_block_(cos.clone(), st[:3], st)


@pytest.mark.parametrize("combine", COMBINES)
def test_score_pairs_equals_the_block_values(combine: str) -> None:
    x, _ = _data()
    sc = _asnorm(combine)
    xt = torch.nn.functional.normalize(torch.as_tensor(x), dim=1)
    st = sc.prepare(xt)
    cols = torch.as_tensor(np.random.default_rng(1).integers(0, len(x), size=(20, 7)))
    cos = xt[:20] @ xt.T
    block = sc.score_block(cos, st[:20], st)
    got = sc.score_pairs(torch.gather(cos, 1, cols), st[:20], st, cols)
    assert got is not None and torch.equal(got, torch.gather(block, 1, cols))
    assert Platt().fit(*_data()).error_terms(st, st) is None


@pytest.mark.parametrize("combine", COMBINES)
def test_error_terms_bound_float32_scores(combine: str) -> None:
    # float32 scores of float32 rows against the float64 scores of the canonical cosines;
    # a small cohort std (sd ~ 1e-2) and cosines next to mu make the cancellation severe
    rng = np.random.default_rng(3)
    dim = 16
    base = rng.normal(size=dim)
    cohort = base + 0.05 * rng.normal(size=(80, dim))
    x = np.concatenate([base + 0.05 * rng.normal(size=(60, dim)), rng.normal(size=(60, dim))])
    sc = ASNorm(top_k=20, combine=combine).fit(cohort)
    xt = torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float32), dim=1)
    st = sc.prepare(xt)
    got = sc.score_block_(xt @ xt.T, st, st).double()
    idx = torch.arange(len(x)).expand(len(x), -1)
    exact = sc.score_pairs(canonical_similarity(xt, xt, idx), st, st, idx)
    assert exact is not None
    lip_a, mag_a, lip_b, mag_b = sc.error_terms(st, st)
    u = float(torch.finfo(torch.float32).eps)
    bound = (dim + 2) * u * (lip_a[:, None] + lip_b[None, :]) + u * (mag_a[:, None] + mag_b)
    err = (got - exact).abs()
    assert bool((err <= bound).all())
    assert float((err / bound).max()) > 1e-3  # the bound is not vacuous for this data


def _brute_order(sc: Scorer, x: np.ndarray, gal: np.ndarray | None = None) -> np.ndarray:
    """Gallery order of every query by ``(-score64, j)`` on the dense float64 scores of the
    float32-stored normalised rows (the query itself last in leave-one-out)."""
    q = torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float32), dim=1).double()
    g = q if gal is None else (
        torch.nn.functional.normalize(torch.as_tensor(gal, dtype=torch.float32), dim=1).double()
    )  # fmt: skip
    s = sc.score_block(q @ g.T, sc.prepare(q), sc.prepare(g)).numpy()
    if gal is None:
        np.fill_diagonal(s, -np.inf)
    return np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)


def _tied(per: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Rows repeated across classes and many copies of one row: exact ties at and around the
    k-th neighbour, more of them than the k + 8 candidates (forces the re-search)."""
    x, y = _data(per=per)
    x[30:45] = x[0:15]
    x[60:75] = x[50]  # 15 copies (classes 10 to 12)
    return x.astype(np.float32), y


@pytest.mark.parametrize("combine", COMBINES)
def test_ranker_equals_float64_path_and_brute_force(
    combine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _tied()
    sc = _asnorm(combine)
    inp = with_scorer(prepare_retrieval(x, y), sc)
    order = _brute_order(sc, x)
    qi = torch.arange(len(y))
    widths: list[int] = []
    search = _ScoredRanker._search

    def spy(self: _ScoredRanker, rows: torch.Tensor, kt: int) -> Any:
        widths.append(kt)
        return search(self, rows, kt)

    monkeypatch.setattr(_ScoredRanker, "_search", spy)
    for k in (1, 5, 12, 30):
        for chunk in (7, 1000):
            ranker = _ScoredRanker.of(inp, chunk)
            assert ranker is not None
            got = ranker.topk(qi, k)
            np.testing.assert_array_equal(got.numpy(), order[:, :k])
        np.testing.assert_array_equal(_scored_topk(inp, qi, k).numpy(), order[:, :k])
    # the ties defeat k + 8 candidates: some rows were searched again with more of them
    assert max(widths) > 30 + 8


@pytest.mark.parametrize("combine", COMBINES)
def test_scored_retrieval_all_routes_equal(combine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _tied()
    sc = _asnorm(combine)
    order = _brute_order(sc, x)
    rel = y[order] == y[:, None]
    r = np.bincount(y)[y] - 1
    ap = [np.sum(rel[i, : r[i]] * np.cumsum(rel[i, : r[i]]) / np.arange(1, r[i] + 1)) / r[i]
          for i in range(len(y))]  # fmt: skip
    ks = (1, 4, 16)
    import tcm.metrics.retrieval as rmod

    tiles: list[int] = []
    sym = rmod.symmetric_candidates

    def spy(*args: Any, **kw: Any) -> Any:
        tiles.append(1)
        return sym(*args, **kw)

    monkeypatch.setattr(rmod, "symmetric_candidates", spy)
    # all queries (mean: symmetric tiles), small chunks / tiles, and a query subset (chunked)
    for chunk in (None, 5):
        m = retrieval_metrics(x, y, ks=ks, scorer=sc, chunk_size=chunk)
        for k in ks:
            assert m.recall_at_k[k] == np.mean(rel[:, :k].any(axis=1))
        np.testing.assert_allclose(m.map_at_r, np.mean(ap), rtol=1e-12)
    prep = prepare(x, y).with_scorer(sc)
    part = retrieval_per_query_of_loo(prep, ks, np.arange(0, len(y), 3))
    np.testing.assert_allclose(part.map_at_r, np.asarray(ap)[::3], rtol=1e-12)
    assert len(tiles) == (2 if combine == "mean" else 0)  # only the symmetric score uses tiles


def retrieval_per_query_of_loo(prep: Any, ks: tuple[int, ...], sel: np.ndarray) -> Any:
    from tcm.metrics.retrieval import retrieval_per_query_of

    return retrieval_per_query_of(leave_one_out_input(prep), ks, query_indices=sel)


def test_scored_retrieval_separate_gallery() -> None:
    x, y = _tied()
    rng = np.random.default_rng(4)
    gal = np.concatenate([x[::2], x[::2]]).astype(np.float32)  # every gallery row twice
    gy = np.concatenate([y[::2], y[::2]])
    for combine in COMBINES:
        sc = _asnorm(combine)
        order = _brute_order(sc, x, gal)
        rel = gy[order] == y[:, None]
        m = retrieval_metrics(
            x, y, gal, gy, ks=(1, 3), scorer=sc, chunk_size=int(rng.integers(3, 9))
        )
        assert m.recall_at_k[1] == np.mean(rel[:, 0])
        assert m.recall_at_k[3] == np.mean(rel[:, :3].any(axis=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_values_equal_torch_topk(dtype: torch.dtype) -> None:
    from tcm.scoring.cohort import top_values

    rng = np.random.default_rng(5)
    x = torch.as_tensor(rng.integers(-4, 5, size=(40, 30)) / 4, dtype=dtype)  # many ties
    x[3] = 0.25
    for k in (1, 7, 30):
        want = torch.topk(x, k, dim=1).values
        assert torch.equal(top_values(x, k), want)
        # unordered (partitions its argument in place): the same values of each row
        got = top_values(x.clone(), k, ordered=False)
        assert torch.equal(torch.sort(got, dim=1, descending=True).values, want)
    # AS-norm's state: float64 statistics of the top-k set, each rounded once to the dtype
    sc = ASNorm(top_k=25, std_ddof=1).fit(rng.normal(size=(70, 6)).astype(np.float32))
    xt = torch.as_tensor(rng.normal(size=(50, 6)), dtype=dtype)
    st = sc.prepare(xt, block_size=16)
    xn = torch.nn.functional.normalize(xt.double(), dim=1)
    cos = (xn @ sc.cohort.double().T).numpy()
    top = -np.sort(-cos, axis=1)[:, :25]
    mu, sd = top.mean(axis=1), top.std(axis=1, ddof=1)
    # one rounding to dtype, plus the cohort cosines' own error (E = (D + 2) u each: the
    # brute force normalises and multiplies in its own order), which moves mu and sd by E
    u = float(torch.finfo(dtype).eps)
    e = (6 + 2) * u
    np.testing.assert_allclose(st.tensors["mu"].double().numpy(), mu, rtol=u, atol=e)
    np.testing.assert_allclose(st.tensors["sd"].double().numpy(), sd, rtol=u, atol=e)
    rel = 2 * u + e / sd  # a = 0.5 / sd and b = 0.5 mu / sd: relative error of sd, plus mu's
    assert np.all(np.abs(st.tensors["a"].double().numpy() - 0.5 / sd) <= rel * 0.5 / sd)
    b = 0.5 * mu / sd
    assert np.all(np.abs(st.tensors["b"].double().numpy() - b) <= rel * np.abs(b) + 0.5 * e / sd)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_asnorm_pair_value_is_position_independent_and_near_float64_brute_force(
    dtype: torch.dtype,
) -> None:
    # every route that scores a pair (any block shape / offset, in place in row chunks or
    # not, the pair engine's blocks) gives one value; it is within a float-precision bound of
    # the original formula 0.5 ((s - mu_i) / sd_i + (s - mu_j) / sd_j) in float64
    rng = np.random.default_rng(11)
    dim, n = 12, 700  # 700 columns: the in-place map works in several row chunks
    sc = ASNorm(top_k=30).fit(rng.normal(size=(200, dim)))
    xt = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(n, dim)), dtype=dtype))
    st = sc.prepare(xt)
    cos = xt @ xt.T
    full = sc.score_block_(cos.clone(), st, st)
    assert torch.equal(full, sc.score_block(cos, st, st))
    for r0, r1, c0, c1 in ((0, 1, 0, 1), (3, 10, 650, 700), (400, 700, 5, 600), (1, 699, 2, 3)):
        sub = sc.score_block_(cos[r0:r1, c0:c1].clone(), st[r0:r1], st[c0:c1])
        assert torch.equal(sub, full[r0:r1, c0:c1])
    cols = torch.as_tensor(rng.integers(0, n, size=(n, 5)))
    pairs = sc.score_pairs(torch.gather(cos, 1, cols), st, st, cols)
    assert pairs is not None and torch.equal(pairs, torch.gather(full, 1, cols))
    # symmetric (the value of (j, i) from the same cosine), as retrieval's tiles assume
    assert torch.equal(sc.score_block_(cos.T.contiguous(), st, st), full.T)
    # rows and columns shuffled: each pair at another position of the block, same value
    pr, pc = torch.as_tensor(rng.permutation(n)), torch.as_tensor(rng.permutation(n))
    shuffled = sc.score_block_(cos[pr][:, pc].contiguous(), st[pr.numpy()], st[pc.numpy()])
    assert torch.equal(shuffled, full[pr][:, pc])
    # the pair engine's blocks (sizes 64 and 100) hold the values of their own cosines
    prep = prepare(xt, np.arange(n) // 7).with_scorer(sc)
    assert prep.state is not None
    for bs in (64, 100):
        for blk in iter_blocks(prep, bs):
            h, w = blk.sims.shape
            r, q = slice(blk.row0, blk.row0 + h), slice(blk.col0, blk.col0 + w)
            c_blk = torch.mm(prep.x[r], prep.x[q].T)
            assert torch.equal(blk.sims, sc.score_block(c_blk, prep.state[r], prep.state[q]))
    # independent float64 brute force of the original formula
    xd = xt.double().numpy()
    c = xd @ sc.cohort.double().numpy().T
    top = -np.sort(-c, axis=1)[:, :30]
    mu, sd = top.mean(axis=1), top.std(axis=1)
    s64 = xd @ xd.T
    za, zb = (s64 - mu[:, None]) / sd[:, None], (s64 - mu) / sd
    brute = 0.5 * (za + zb)
    # float error: cosines (the scored ones and the cohort ones) within E = (D + 2) u, so mu
    # within E and sd within 2 E; a, b and the four operations each rounded to u / 2
    u = float(torch.finfo(dtype).eps)
    e = (dim + 2) * u
    per = lambda z, d: (2 * e * (1 + np.abs(z)) + 2 * u * (1 + np.abs(z))) / d  # noqa: E731
    tol = 0.5 * (per(za, sd[:, None]) + per(zb, sd)) + 2 * u * np.abs(brute)
    err = np.abs(full.double().numpy() - brute)
    assert np.all(err <= tol)
    assert (err / tol).max() > 1e-3  # not vacuous
