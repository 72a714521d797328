"""Tests for the symmetric leave-one-out candidate search and exact top-k (tcm.metrics._knn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcm.metrics import _knn
from tcm.metrics._knn import (
    TorchSearcher,
    canonical_similarity,
    exact_topk,
    faiss_available,
    symmetric_candidates,
)
from tcm.metrics.retrieval import merge_per_query, retrieval_metrics, retrieval_per_query

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss not installed")

EPS32 = float(torch.finfo(torch.float32).eps)


def f32_dot_tol(dim: int) -> float:
    """How far two float32 evaluations of the same inner product of unit vectors may differ.

    Any summation order, blocking, SIMD width or thread split (MKL, OpenBLAS, faiss, a tile of
    another shape) gives a value within ``(D + 2) * eps32`` of the exact one (the bound
    :mod:`tcm.metrics._knn` certifies with), so two evaluations differ by <= twice that.
    """
    return 2 * (dim + 2) * EPS32


def top_gap(x: torch.Tensor, k: int) -> float:
    """Smallest float64 gap between consecutive scores among each row's top ``k + 1``
    (self excluded). Above :func:`f32_dot_tol` the top-``k`` ids and their order are the same
    for every float32 kernel, so comparing ids exactly is sound."""
    s = x.double() @ x.double().T
    s.fill_diagonal_(-torch.inf)
    top = torch.topk(s, k + 1, dim=1).values
    return float((top[:, :-1] - top[:, 1:]).min())


def unit(x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = torch.tensor(x, dtype=dtype)
    return t / t.norm(dim=1, keepdim=True)


def reference_order(x: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out top-k by the documented key (-s64, j): full canonical matrix, lexsort."""
    n = x.shape[0]
    x64 = x.to(torch.float64)
    s = canonical_similarity(x64, x64, torch.arange(n).expand(n, n).contiguous()).numpy()
    out = np.empty((n, k), dtype=np.int64)
    j = np.arange(n)
    for i in range(n):
        order = np.lexsort((j, -s[i]))
        out[i] = order[order != i][:k]
    return torch.from_numpy(out)


def tie_rows(n: int, seed: int) -> np.ndarray:
    """Entries in {-1, 0, +1} with exactly 4 non-zeros (D = 6): every similarity of the
    normalised rows is an exact multiple of 1/4 (massive exact ties, duplicates)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 6))
    for i in range(n):
        x[i, rng.choice(6, size=4, replace=False)] = rng.choice([-1.0, 1.0], size=4)
    return x


def near_tie_rows(n: int, seed: int) -> np.ndarray:
    """Groups of rows differing by ~1e-9: equal in float32, distinct in float64."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n // 4 + 1, 12))
    x = np.repeat(base, 4, axis=0)[:n]
    return x + 1e-9 * rng.standard_normal(x.shape)


def sop_like(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes of 2..8 samples (like SOP), class centre plus strong noise."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, size=n // 2 + 1)
    labels = np.repeat(np.arange(sizes.size), sizes)[:n]
    x = rng.standard_normal((sizes.size, dim))[labels] + 1.8 * rng.standard_normal((n, dim))
    perm = rng.permutation(n)
    return x[perm].astype(np.float32), labels[perm]


# --------------------------------------------------------------------------- candidates


@needs_faiss
@pytest.mark.parametrize("block", [1, 5, 64, 256, 257, 1000])
def test_heap_candidates_equal_dense_topk(block: int) -> None:
    x = unit(np.random.default_rng(3).standard_normal((257, 16)))
    vals, idx = symmetric_candidates(x, 9, block)
    assert vals.dtype == torch.float32 and idx.dtype == torch.int64
    dense = x @ x.T
    dense.fill_diagonal_(-torch.inf)
    ref_v, ref_i = torch.topk(dense, 9, dim=1)
    # tiles (torch.mm of another shape) vs one dense matmul: same pairs, other kernels
    torch.testing.assert_close(vals, ref_v, rtol=0, atol=f32_dot_tol(16))
    assert top_gap(x, 9) > f32_dot_tol(16)  # continuous data: no near-ties, so ...
    assert torch.equal(idx, ref_i)  # ... the ids agree exactly
    assert bool((vals[:, :-1] >= vals[:, 1:]).all())
    assert not bool((idx == torch.arange(257)[:, None]).any())


@needs_faiss
def test_heap_and_torch_candidates_agree() -> None:
    x = unit(np.random.default_rng(4).standard_normal((300, 10)))
    hv, hi = _knn._symmetric_candidates_heap(x, 12, 37)
    tv, ti = _knn._symmetric_candidates_torch(x, 12, 37)
    torch.testing.assert_close(hv, tv, rtol=0, atol=f32_dot_tol(10))
    assert top_gap(x, 12) > f32_dot_tol(10)  # no near-ties: the ids must agree exactly
    assert torch.equal(hi, ti)


@needs_faiss
def test_heap_candidates_with_exact_ties_are_a_valid_top_kk() -> None:
    x = unit(tie_rows(200, seed=5))
    vals, idx = symmetric_candidates(x, 7, 16)
    dense = x.double() @ x.double().T
    dense.fill_diagonal_(-torch.inf)
    ref_v = torch.topk(dense, 7, dim=1).values
    assert torch.equal(vals.double(), ref_v)  # multiples of 1/4: exact in float32
    assert torch.equal(dense.gather(1, idx), ref_v)  # the ids carry those scores
    assert all(len(set(r)) == 7 for r in idx.tolist())  # no id twice


def test_symmetric_candidates_errors() -> None:
    x = unit(np.eye(4))
    with pytest.raises(ValueError, match="kk must be in"):
        symmetric_candidates(x, 4, 2)
    with pytest.raises(ValueError, match="block must be"):
        symmetric_candidates(x, 2, 0)


# --------------------------------------------------------------------------- exact order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 5, 40])
@pytest.mark.parametrize("max_rows", [None, 1, 7])
def test_exact_topk_from_symmetric_candidates_matches_reference_on_ties(
    dtype: torch.dtype, k: int, max_rows: int | None
) -> None:
    x = unit(tie_rows(150, seed=6), dtype)
    n = x.shape[0]
    xs = x.float()
    u0 = float(torch.finfo(torch.float32).eps) * (1.0 if dtype == torch.float32 else 2.0)
    cand = symmetric_candidates(xs, min(k + 8, n - 1), 32)
    rows = torch.arange(n)
    got = exact_topk(
        TorchSearcher(x), x, x, k, rows, initial=cand, initial_unit_roundoff=u0, max_rows=max_rows
    )
    assert torch.equal(got, reference_order(x, k))


@pytest.mark.parametrize("max_rows", [None, 3])
def test_exact_topk_float64_near_ties_resolved_in_float64(max_rows: int | None) -> None:
    x = unit(near_tie_rows(120, seed=7), torch.float64)
    cand = symmetric_candidates(x.float(), 13, 50)  # float32 cannot separate the groups
    got = exact_topk(
        TorchSearcher(x),
        x,
        x,
        5,
        torch.arange(120),
        initial=cand,
        initial_unit_roundoff=2.0 * float(torch.finfo(torch.float32).eps),
        max_rows=max_rows,
    )
    assert torch.equal(got, reference_order(x, 5))


def test_exact_topk_rejects_bad_initial() -> None:
    x = unit(np.eye(5))
    bad = (torch.zeros(5, 2), torch.zeros(5, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="initial candidates"):
        exact_topk(TorchSearcher(x), x, x, 3, torch.arange(5), initial=bad)


# --------------------------------------------------------------------------- end to end


def _per_query_path(x: np.ndarray, y: np.ndarray, ks: tuple[int, ...]) -> dict[str, object]:
    """Same metrics via the chunked (non-symmetric) path: explicit query_indices."""
    part = retrieval_per_query(x, y, ks=ks, query_indices=np.arange(len(y)))
    return merge_per_query([part]).to_dict()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_symmetric_path_bit_identical_to_chunked_and_faiss(dtype: type) -> None:
    x, y = sop_like(1500, 24, seed=8)
    x = x.astype(dtype)
    ks = (1, 2, 4, 8)
    sym = retrieval_metrics(x, y, ks=ks, chunk_size=256).to_dict()
    assert sym == retrieval_metrics(x, y, ks=ks).to_dict()  # block size does not matter
    assert sym == _per_query_path(x, y, ks)
    if faiss_available():
        assert sym == {
            **retrieval_metrics(x, y, ks=ks, backend="faiss").to_dict(),
            "backend": "torch",
        }


def test_symmetric_path_with_ties_and_large_k_matches_chunked() -> None:
    x = tie_rows(400, seed=9)
    y = np.random.default_rng(9).integers(0, 3, size=400)  # classes of ~133: k > 64
    ks = (1, 10, 100)
    assert retrieval_metrics(x, y, ks=ks, chunk_size=64).to_dict() == _per_query_path(x, y, ks)


def test_near_ties_float64_symmetric_equals_chunked() -> None:
    x = near_tie_rows(200, seed=10)
    y = np.arange(200) % 37
    ks = (1, 3)
    assert retrieval_metrics(x, y, ks=ks, chunk_size=33).to_dict() == _per_query_path(x, y, ks)


def test_without_faiss_uses_torch_merge_and_gives_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = sop_like(700, 16, seed=11)
    with_heaps = retrieval_metrics(x, y, chunk_size=100).to_dict()
    monkeypatch.setattr(_knn, "faiss_available", lambda: False)
    monkeypatch.setattr("tcm.metrics.retrieval.faiss_available", lambda: False)
    assert retrieval_metrics(x, y, chunk_size=100).to_dict() == with_heaps


@needs_faiss
@pytest.mark.parametrize("block", [7, 64, 600])
def test_heap_candidates_same_for_any_number_of_workers(block: int) -> None:
    x = unit(np.random.default_rng(11).standard_normal((700, 12)))
    ref_v, ref_i = _knn._symmetric_candidates_heap(x, 10, block, workers=1)
    n_threads = torch.get_num_threads()
    import faiss

    n_omp = faiss.omp_get_max_threads()
    # Not bit-identical in general: with workers > 1 each worker runs a single-threaded
    # torch.mm, over tiles of block // 2 when block >= 512, and BLAS promises no equal rounding
    # across shapes or thread counts; the ids (no near-ties, checked) must agree exactly.
    assert top_gap(x, 10) > f32_dot_tol(12)
    for workers in (2, 3):
        v, i = _knn._symmetric_candidates_heap(x, 10, block, workers=workers)
        torch.testing.assert_close(v, ref_v, rtol=0, atol=f32_dot_tol(12))
        assert torch.equal(i, ref_i)
        assert torch.get_num_threads() == n_threads  # restored after the worker threads
        import faiss

        assert faiss.omp_get_max_threads() == n_omp  # set to 1 only inside the workers
