"""Tests for tcm.metrics.retrieval against an independent brute-force reference."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tcm.metrics._knn import faiss_available
from tcm.metrics.retrieval import (
    merge_per_query,
    retrieval_metrics,
    retrieval_per_query,
    shard_query_indices,
)

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss not installed")

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
# Every metric is a mean over queries of per-query rationals in [0, 1] (hits / k, sums of P(i)
# over <= R ranks), computed in float64. Given the same ranking, two implementations differ
# only in summation order: <= (queries + R) * eps64 ~ 2e-13 for the <= 500 queries here.
METRIC_TOL = 1e-12


def relevance_gap(x: np.ndarray, y: np.ndarray, depth: int) -> float:
    """Smallest float64 similarity gap between two neighbours of different relevance that are
    adjacent in a query's ranking (leave-one-out, first ``depth`` ranks). Only such a pair
    can change a metric when it swaps, so if this exceeds twice a method's per-similarity
    rounding error, that method gives exactly the metrics of the float64 ranking."""
    x = np.asarray(x, dtype=np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :depth]
    ss = np.take_along_axis(s, order, axis=1)
    rel = y[order] == y[:, None]
    gaps = (ss[:, :-1] - ss[:, 1:])[rel[:, :-1] != rel[:, 1:]]
    return float(gaps.min())


def f32_similarity_err(dim: int) -> float:
    """Bound on how far the similarity ``retrieval_metrics`` ranks float32 input by (the
    float64 dot product of the rows rounded to float32 and normalised in float32) is from the
    float64 reference: input rounding (eps32) plus two float32 normalisations (D + 3) * eps32 / 2,
    <= (D + 2) * eps32 (also the bound :mod:`tcm.metrics._knn` certifies float32 scores with)."""
    return (dim + 2) * EPS32


# --------------------------------------------------------------------------- reference


def brute_force(
    q: np.ndarray,
    ql: np.ndarray,
    g: np.ndarray | None,
    gl: np.ndarray | None,
    ks: tuple[int, ...],
) -> dict[str, Any]:
    """Full similarity matrix, explicit ordering by (-sim, index) and explicit loops."""
    loo = g is None
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    if loo:
        gn, gl_ = qn, ql
    else:
        assert g is not None and gl is not None
        gn, gl_ = g / np.linalg.norm(g, axis=1, keepdims=True), gl
    sims = qn.astype(np.float64) @ gn.astype(np.float64).T
    recall = {k: [] for k in ks}  # type: dict[int, list[float]]
    aps: list[float] = []
    rps: list[float] = []
    labs: list[Any] = []
    excluded = 0
    for i in range(len(qn)):
        cand = [j for j in range(len(gn)) if not (loo and j == i)]
        order = sorted(cand, key=lambda j: (-sims[i, j], j))
        rel = [1 if gl_[j] == ql[i] else 0 for j in order]
        r = sum(rel)
        if r == 0:
            excluded += 1
            continue
        for k in ks:
            recall[k].append(1.0 if any(rel[:k]) else 0.0)
        rps.append(sum(rel[:r]) / r)
        ap = 0.0
        for pos in range(1, r + 1):
            if rel[pos - 1]:
                ap += sum(rel[:pos]) / pos
        aps.append(ap / r)
        labs.append(ql[i])
    per_class: dict[Any, list[float]] = {}  # label -> MAP@R of its queries
    for lab, ap in zip(labs, aps, strict=True):
        per_class.setdefault(lab, []).append(ap)
    return {
        "recall": {k: float(np.mean(v)) for k, v in recall.items()},
        "map": float(np.mean(aps)),
        "rp": float(np.mean(rps)),
        "n": len(aps),
        "excluded": excluded,
        "per_class_map": {k: float(np.mean(v)) for k, v in per_class.items()},
    }


def assert_matches(m: Any, ref: dict[str, Any], tol: float = METRIC_TOL) -> None:
    assert m.num_queries == ref["n"]
    assert m.num_excluded_queries == ref["excluded"]
    for k, v in ref["recall"].items():
        assert m.recall_at_k[k] == pytest.approx(v, abs=tol)
    assert m.map_at_r == pytest.approx(ref["map"], abs=tol)
    assert m.r_precision == pytest.approx(ref["rp"], abs=tol)
    got = dict(zip(m.per_class.classes.tolist(), m.per_class.map_at_r.tolist(), strict=True))
    assert set(got) == set(ref["per_class_map"])
    for c, v in ref["per_class_map"].items():
        assert got[c] == pytest.approx(v, abs=tol)


def tie_data(n: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with exactly 4 entries in {-1, +1} (D = 6): after L2-normalisation entries are +-0.5,
    so every cosine similarity is an exact multiple of 0.25 -> massive exact ties and duplicates.
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 6))
    for i in range(n):
        pos = rng.choice(6, size=4, replace=False)
        x[i, pos] = rng.choice([-1.0, 1.0], size=4)
    return x, rng.integers(0, n_classes, size=n)


def smooth_data(n: int, n_classes: int, seed: int, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n)
    centers = rng.standard_normal((n_classes, dim))
    return centers[labels] + 0.8 * rng.standard_normal((n, dim)), labels


KS = (1, 2, 4, 8)


# --------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_leave_one_out_with_ties_matches_brute_force(backend: str, chunk_size: int | None) -> None:
    x, y = tie_data(300, 25, seed=1)
    m = retrieval_metrics(x, y, ks=KS, backend=backend, chunk_size=chunk_size)  # type: ignore[arg-type]
    assert_matches(m, brute_force(x, y, None, None, KS))
    assert m.leave_one_out and m.num_gallery == 300 and m.backend == backend


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_separate_gallery_with_ties_and_excluded_queries(backend: str) -> None:
    xq, yq = tie_data(120, 30, seed=2)
    xg, yg = tie_data(400, 25, seed=3)  # classes 25..29 of the queries have no gallery item
    m = retrieval_metrics(xq, yq, xg, yg, ks=(1, 3, 500), backend=backend)  # type: ignore[arg-type]
    ref = brute_force(xq, yq, xg, yg, (1, 3, 500))
    assert ref["excluded"] > 0
    assert_matches(m, ref)
    assert m.recall_at_k[500] == 1.0  # k beyond the gallery size uses the whole gallery


def test_smooth_data_string_labels_and_float32_tensor_input() -> None:
    x, y = smooth_data(250, 12, seed=2)
    # float32 input vs the float64 reference: the rankings (hence the metrics, to METRIC_TOL)
    # agree on any CPU when no two differently relevant neighbours are within the rounding
    assert relevance_gap(x, y, int(np.bincount(y).max()) + max(KS)) > 2 * f32_similarity_err(8)
    names = np.array([f"class-{v:02d}" for v in y])
    m = retrieval_metrics(torch.tensor(x, dtype=torch.float32), names, ks=KS)
    assert_matches(m, brute_force(x, names, None, None, KS))
    assert m.per_class.classes.dtype.kind == "U"
    json.dumps(m.to_dict())


def test_per_class_fields_and_counts() -> None:
    x, y = tie_data(200, 9, seed=5)
    m = retrieval_metrics(x, y, ks=(1, 2))
    pc = m.per_class
    assert int(pc.num_queries.sum()) == m.num_queries
    # per-class means re-weighted to the overall mean: float64 sums in another order
    weighted = float((pc.map_at_r * pc.num_queries).sum() / pc.num_queries.sum())
    assert weighted == pytest.approx(m.map_at_r, rel=0, abs=METRIC_TOL)
    assert float((pc.recall_at_1 * pc.num_queries).sum() / m.num_queries) == pytest.approx(
        m.recall_at_k[1], rel=0, abs=METRIC_TOL
    )
    assert float((pc.r_precision * pc.num_queries).sum() / m.num_queries) == pytest.approx(
        m.r_precision, rel=0, abs=METRIC_TOL
    )


def test_singleton_class_is_excluded_and_counted() -> None:
    x = np.array([[1.0, 0.0], [0.9, 0.2], [0.0, 1.0], [-1.0, 0.1]])
    m = retrieval_metrics(x, [0, 0, 1, 2], ks=(1,))
    assert m.num_queries == 2 and m.num_excluded_queries == 2
    assert m.per_class.classes.tolist() == [0]
    assert m.recall_at_k[1] == 1.0 and m.map_at_r == 1.0


def test_self_excluded_by_index_not_by_value() -> None:
    # duplicates of the same vector: the query's twin (sim 1.0) must still be retrieved
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    m = retrieval_metrics(x, [0, 0, 1, 1], ks=(1,))
    assert m.recall_at_k[1] == 1.0 and m.map_at_r == 1.0


def test_tie_rule_lower_gallery_index_first() -> None:
    # query equidistant to a wrong item (index 0) and a right item (index 1): index 0 wins
    g = np.array([[1.0, 0.0], [0.0, 1.0]])
    q = np.array([[1.0, 1.0]])
    m = retrieval_metrics(q, [7], g, [3, 7], ks=(1, 2))
    assert m.recall_at_k == {1: 0.0, 2: 1.0}
    assert m.map_at_r == 0.0 and m.r_precision == 0.0
    m2 = retrieval_metrics(q, [7], g[::-1].copy(), [7, 3], ks=(1,))
    assert m2.recall_at_k[1] == 1.0 and m2.map_at_r == 1.0


def test_huge_integer_ids_do_not_collide() -> None:
    x, y = tie_data(200, 20, seed=6)
    big = (2**24 + y).astype(np.int64)  # adjacent ids above 2**24 (equal in float32)
    huge = (2**60 + 3 * y).astype(np.int64)
    ref = retrieval_metrics(x, y, ks=KS)
    for lab in (big, huge, torch.from_numpy(big)):
        m = retrieval_metrics(x, lab, ks=KS)
        assert m.map_at_r == ref.map_at_r and m.recall_at_k == ref.recall_at_k
        assert m.per_class.classes.size == ref.per_class.classes.size
    assert np.float32(2**24) == np.float32(2**24 + 1)  # why the above would fail with floats
    m_mixed = retrieval_metrics(x[:100], big[:100], x[100:], big[100:].astype(np.uint64))
    ref_mixed = retrieval_metrics(x[:100], y[:100], x[100:], y[100:])
    assert m_mixed.map_at_r == ref_mixed.map_at_r


def test_float64_and_cuda_agnostic_devices() -> None:
    x, y = smooth_data(150, 10, seed=7)
    # float32 and float64 give the same ranking (no near-ties within float32 rounding)
    assert relevance_gap(x, y, int(np.bincount(y).max()) + 8) > 2 * f32_similarity_err(8)
    a = retrieval_metrics(torch.tensor(x, dtype=torch.float64), y)
    b = retrieval_metrics(x.astype(np.float32), y)
    assert a.map_at_r == pytest.approx(b.map_at_r, rel=0, abs=METRIC_TOL)
    if torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        c = retrieval_metrics(torch.tensor(x, device="cuda"), torch.tensor(y, device="cuda"))
        assert c.map_at_r == pytest.approx(a.map_at_r, rel=0, abs=METRIC_TOL)


# --------------------------------------------------------------------------- backends, shards


@needs_faiss
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faiss_equals_torch_exactly(seed: int) -> None:
    for x, y in (tie_data(400, 40, seed), smooth_data(400, 40, seed, dim=16)):
        for chunk in (None, 13):
            a = retrieval_per_query(x, y, backend="torch", chunk_size=chunk)
            b = retrieval_per_query(x, y, backend="faiss", chunk_size=chunk)
            np.testing.assert_array_equal(a.hits, b.hits)
            np.testing.assert_array_equal(a.map_at_r, b.map_at_r)
            np.testing.assert_array_equal(a.r_precision, b.r_precision)


@pytest.mark.parametrize("loo", [True, False])
def test_sharded_equals_single(loo: bool) -> None:
    x, y = tie_data(310, 30, seed=8)
    g, gl = (None, None) if loo else tie_data(200, 30, seed=9)
    single = retrieval_metrics(x, y, g, gl, ks=KS)
    world = 3
    parts = [
        retrieval_per_query(x, y, g, gl, ks=KS, query_indices=shard_query_indices(310, r, world))
        for r in range(world)
    ]
    merged = merge_per_query(parts[::-1])  # order of parts does not matter
    assert merged.to_dict() == single.to_dict()
    idx = np.concatenate([shard_query_indices(310, r, world) for r in range(world)])
    np.testing.assert_array_equal(idx, np.arange(310))


def test_query_indices_slice_and_tensor() -> None:
    x, y = tie_data(60, 6, seed=10)
    a = retrieval_per_query(x, y, query_indices=slice(10, 20))
    b = retrieval_per_query(x, y, query_indices=torch.arange(10, 20))
    np.testing.assert_array_equal(a.map_at_r, b.map_at_r)
    np.testing.assert_array_equal(a.query_indices, np.arange(10, 20))


# --------------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(4, 60), c=st.integers(1, 8))
def test_permutation_and_label_renaming_invariance(seed: int, n: int, c: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = smooth_data(n, c, seed)  # continuous: no ties, so the order of samples is irrelevant
    if not (np.bincount(y) >= 2).any():
        y[0] = y[1]
    base = retrieval_metrics(x, y, ks=(1, 3))
    perm = rng.permutation(n)
    rename = rng.permutation(c) * 1000 - 7  # bijective relabelling, incl. negative ids
    other = retrieval_metrics(x[perm], rename[y[perm]], ks=(1, 3))
    assert other.num_queries == base.num_queries
    # same per-query values (the canonical float64 similarity of a pair does not depend on its
    # position), averaged in another order
    assert other.map_at_r == pytest.approx(base.map_at_r, rel=0, abs=METRIC_TOL)
    assert other.r_precision == pytest.approx(base.r_precision, rel=0, abs=METRIC_TOL)
    assert other.recall_at_k[3] == pytest.approx(base.recall_at_k[3], rel=0, abs=METRIC_TOL)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 40), c=st.integers(1, 5))
def test_metric_bounds_and_ordering(seed: int, n: int, c: int) -> None:
    x, y = tie_data(n, c, seed)
    if not (np.bincount(y) >= 2).any():
        y[-1] = y[0]
    m = retrieval_metrics(x, y, ks=(1, 2, 4))
    # P(i) <= 1 gives MAP@R <= R-precision per query; P(1) = rel(1) gives R@1 <= MAP@R * R...
    pq = retrieval_per_query(x, y, ks=(1, 2, 4))
    v = pq.r > 0
    # slack: both sides are float64 sums of <= 40 terms in [0, 1], <= 40 * eps64 each
    assert np.all(pq.map_at_r[v] <= pq.r_precision[v] + METRIC_TOL)
    assert np.all((pq.map_at_r[v] >= 0) & (pq.r_precision[v] <= 1))
    # ...and a hit at rank 1 contributes P(1) = 1 to the MAP@R sum: MAP@R >= rel(1) / R
    assert np.all(pq.map_at_r[v] >= pq.hits[v, 0] / pq.r[v] - METRIC_TOL)
    assert np.all(np.isnan(pq.map_at_r[~v]))
    assert m.recall_at_k[1] <= m.recall_at_k[2] <= m.recall_at_k[4]
    assert m.map_at_r <= m.r_precision + METRIC_TOL


# --------------------------------------------------------------------------- peer comparison


def test_matches_pytorch_metric_learning_on_random_data() -> None:
    calc_mod = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    rng = np.random.default_rng(11)
    sizes = rng.integers(2, 9, size=80)
    y = np.repeat(np.arange(80), sizes)
    x = rng.standard_normal((80, 32))[y] + 1.0 * rng.standard_normal((y.size, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    calc = calc_mod.AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    acc = calc.get_accuracy(tx, ty, tx, ty, ref_includes_query=True)
    m = retrieval_metrics(x, y, ks=(1,))
    # pml ranks by float32 squared L2 distance |q|^2 + |g|^2 - 2<q, g> = 2 - 2s: each of the
    # three terms within D * eps32 (x2 for 2<q, g>), i.e. s within (2D + 6) * eps32; ours is
    # within (D + 2) * eps32. With no differently relevant neighbours closer than twice the
    # larger bound both rankings are the exact one, and pml's per-query values are float64
    # like ours: the metrics agree to float64 summation order.
    assert relevance_gap(x, y, int(sizes.max())) > 2 * (2 * 32 + 6) * EPS32
    assert m.recall_at_k[1] == pytest.approx(acc["precision_at_1"], rel=0, abs=METRIC_TOL)
    assert m.map_at_r == pytest.approx(acc["mean_average_precision_at_r"], rel=0, abs=METRIC_TOL)
    assert m.r_precision == pytest.approx(acc["r_precision"], rel=0, abs=METRIC_TOL)


# --------------------------------------------------------------------------- errors


X4 = np.eye(4)
Y4 = np.array([0, 0, 1, 1])


def test_error_label_length_mismatch() -> None:
    with pytest.raises(ValueError, match="query_labels has length 3 but there are 4"):
        retrieval_metrics(X4, [0, 0, 1])


def test_error_gallery_label_length_mismatch() -> None:
    with pytest.raises(ValueError, match="gallery_labels has length 2 but there are 4"):
        retrieval_metrics(X4, Y4, X4, [0, 1])


def test_error_dimension_mismatch() -> None:
    with pytest.raises(ValueError, match="dimension 4 but gallery_emb has dimension 3"):
        retrieval_metrics(X4, Y4, np.ones((2, 3)), [0, 1])


def test_error_gallery_labels_missing() -> None:
    with pytest.raises(ValueError, match="gallery_labels is None"):
        retrieval_metrics(X4, Y4, X4, None)


def test_error_gallery_labels_without_gallery() -> None:
    with pytest.raises(ValueError, match="gallery_labels given without gallery_emb"):
        retrieval_metrics(X4, Y4, None, Y4)


def test_error_nan_embeddings() -> None:
    x = X4.copy()
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf.*row index 2"):
        retrieval_metrics(x, Y4)


def test_error_zero_row() -> None:
    x = X4.copy()
    x[1] = 0.0
    with pytest.raises(ValueError, match=r"all-zero row.*row 1"):
        retrieval_metrics(x, Y4)


def test_error_empty() -> None:
    with pytest.raises(ValueError, match="query_emb is empty"):
        retrieval_metrics(np.zeros((0, 4)), [])


def test_error_nan_labels() -> None:
    with pytest.raises(ValueError, match="contain NaN"):
        retrieval_metrics(X4, [0.0, np.nan, 1.0, 1.0])


def test_error_2d_labels() -> None:
    with pytest.raises(ValueError, match=r"must be 1-D.*\(4, 1\)"):
        retrieval_metrics(X4, Y4[:, None])


@pytest.mark.parametrize("ks", [(), (0,), (1, -2), (1.5,), (True,), "1"])
def test_error_bad_ks(ks: Any) -> None:
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(X4, Y4, ks=ks)


@pytest.mark.parametrize("chunk", [0, -1, 2.5])
def test_error_bad_chunk_size(chunk: Any) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(X4, Y4, chunk_size=chunk)


def test_error_unknown_backend() -> None:
    with pytest.raises(ValueError, match=r"backend must be .*'annoy'"):
        retrieval_metrics(X4, Y4, backend="annoy")  # type: ignore[arg-type]


def test_error_no_valid_query() -> None:
    with pytest.raises(ValueError, match=r"no valid query.*4 queries"):
        retrieval_metrics(X4, [0, 1, 2, 3])


def test_error_bad_query_indices() -> None:
    with pytest.raises(ValueError, match=r"query_indices must be in \[0, 4\); got 4"):
        retrieval_per_query(X4, Y4, query_indices=[0, 4])
    with pytest.raises(ValueError, match="duplicates"):
        retrieval_per_query(X4, Y4, query_indices=[1, 1])


def test_error_overlapping_or_mismatched_parts() -> None:
    a = retrieval_per_query(X4, Y4, query_indices=[0, 1])
    with pytest.raises(ValueError, match="overlap: query index 1"):
        merge_per_query([a, retrieval_per_query(X4, Y4, query_indices=[1, 2])])
    with pytest.raises(ValueError, match="different settings"):
        merge_per_query([a, retrieval_per_query(X4, Y4, ks=(1,), query_indices=[2, 3])])
    with pytest.raises(ValueError, match="at least one"):
        merge_per_query([])


def test_error_bad_shard() -> None:
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        shard_query_indices(10, 2, 2)


@pytest.mark.parametrize("block", [13, 64, 1000])
def test_symmetric_candidates_equal_dense_topk(block: int) -> None:
    from tcm.metrics._knn import symmetric_candidates

    rng = np.random.default_rng(12)
    x = torch.tensor(rng.standard_normal((300, 5)))
    x = x / x.norm(dim=1, keepdim=True)
    vals, idx = symmetric_candidates(x, 9, block)
    dense = x @ x.T
    dense.fill_diagonal_(-torch.inf)
    ref_v, ref_i = torch.topk(dense, 9, dim=1)
    # float64 dot products of unit vectors (D = 5), tiles vs one matmul: each within
    # (D + 2) * eps64 of the exact value, so they differ by <= 2 * (D + 2) * eps64
    torch.testing.assert_close(vals, ref_v, rtol=0, atol=2 * (5 + 2) * EPS64)
    top = torch.topk(dense, 10, dim=1).values
    assert float((top[:, :-1] - top[:, 1:]).min()) > 2 * (5 + 2) * EPS64  # no near-ties, so
    assert torch.equal(idx, ref_i)  # the ids agree exactly
    assert not bool((idx == torch.arange(300)[:, None]).any())


def test_distributed_single_rank_gloo(tmp_path: Any) -> None:
    import torch.distributed as dist

    from tcm.metrics.retrieval import distributed_retrieval_metrics

    x, y = tie_data(120, 12, seed=13)
    single = retrieval_metrics(x, y)
    assert distributed_retrieval_metrics(x, y).to_dict() == single.to_dict()  # no process group
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert distributed_retrieval_metrics(x, y).to_dict() == single.to_dict()
    finally:
        dist.destroy_process_group()
