"""The CPU fast path of the consistency passes (NumPy per block, worker threads) against the
generic torch path and brute force: block masks, exact buckets, worker-count invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tcm.metrics._pairs as pairs_mod
from _reference import count_pass
from tcm._validation import ceil_to_dtype
from tcm.metrics import PairIndex, pair_statistics, threshold_consistency
from tcm.metrics._pairs import block_grid, iter_blocks, make_block, mask_buffer, prepare
from tcm.metrics._passes import Buckets, floor_to_dtype, tail_pass


def _data(n, ncls, d=6, seed=0, big_class=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, ncls, size=n)
    if big_class:  # one class larger than a block, so blocks lie inside / across it
        y[:big_class] = ncls
    centers = rng.normal(size=(ncls + 1, d))
    x = rng.normal(size=(n, d)) + 1.3 * centers[y]
    return x, y


def _brute_mask(prep, spec):
    """Negative pairs ``i < j`` (different classes) of block ``spec``."""
    i0, i1, j0, j1 = spec
    rows = np.arange(i0, i1)[:, None]
    cols = np.arange(j0, j1)[None, :]
    return (cols > rows) & (prep.codes[i0:i1, None] != prep.codes[None, j0:j1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bs", [7, 16, 64])
def test_negative_indices_and_positives_match_brute_force(dtype, bs):
    x, y = _data(150, 12, seed=1, big_class=40)
    prep = prepare(x.astype(dtype), y)
    mbuf = mask_buffer(prep, bs)
    buf = torch.empty(bs * bs, dtype=prep.x.dtype)
    full = (prep.x @ prep.x.T).numpy()
    seen_pos = 0
    for spec in block_grid(prep.n, bs):
        blk = make_block(prep, spec, buf)
        i0, i1, j0, j1 = spec
        s = blk.sims.numpy().copy()
        neg = _brute_mask(prep, spec)
        # cuts giving every density: none, sparse, around 10% (the padded scan), dense, all
        cuts = [s.max() + 1.0, *np.quantile(s, [0.99, 0.95, 0.9, 0.85, 0.5]), s.min() - 1.0]
        for cut in cuts:
            got = blk.negative_indices(cut, mbuf)
            want = np.flatnonzero(neg & (s >= cut))
            np.testing.assert_array_equal(got, want)
        # positives: same class, i < j, in row-major order
        rr, cc = np.nonzero(~neg & (np.arange(j0, j1)[None, :] > np.arange(i0, i1)[:, None]))
        np.testing.assert_array_equal(blk.pos_sims.numpy(), s[rr, cc])
        np.testing.assert_array_equal(blk.pos_codes.numpy(), prep.codes[i0 + rr])
        seen_pos += rr.shape[0]
        # the -inf masking used by the torch path agrees
        masked = blk.mask_non_negatives_().numpy()
        np.testing.assert_array_equal(np.isneginf(masked), ~neg)
        # same values as a full matmul up to rounding (the kernel may depend on the shape)
        np.testing.assert_allclose(s, full[i0:i1, j0:j1], rtol=0, atol=1e-5)
    assert seen_pos == prep.num_positive_pairs


def test_iter_blocks_covers_every_pair_once():
    x, y = _data(101, 9, seed=2)
    prep = prepare(x, y)
    hits = np.zeros((prep.n, prep.n), dtype=np.int64)
    for blk in iter_blocks(prep, 13):
        h, w = blk.sims.shape
        hits[blk.row0 : blk.row0 + h, blk.col0 : blk.col0 + w] += 1
    assert np.array_equal(np.triu(hits, 1), np.triu(np.ones_like(hits), 1))


@pytest.mark.parametrize("kind", ["uniform", "tiny", "constant", "one"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_buckets_match_float64_searchsorted(kind, dtype):
    rng = np.random.default_rng(3)
    th = {
        "uniform": np.linspace(0.123456789, 0.4567, 101),
        "tiny": np.linspace(0.3, 0.3 + 1e-7, 11),  # several thresholds within one float32 ulp
        "constant": np.full(6, 0.25),
        "one": np.array([0.2]),
    }[kind]
    npdt = np.float32 if dtype == torch.float32 else np.float64
    v = np.concatenate(
        [
            rng.uniform(th[0], 1.0, 5000),
            th,
            np.nextafter(th, 2),
            np.nextafter(th, -2),
            [1.0, 1.0 + 1e-6],
        ]
    ).astype(npdt)
    v = v[v.astype(np.float64) >= th[0]]  # the passes only bucket values >= t_0
    bk = Buckets(th, dtype)
    want = np.searchsorted(th, v.astype(np.float64), side="right")  # float64 comparisons
    np.testing.assert_array_equal(bk(v), want)


@settings(max_examples=60, deadline=None)
@given(
    lo=st.floats(-1, 1),
    width=st.floats(0, 1),
    k=st.integers(1, 300),
    seed=st.integers(0, 10**6),
    single=st.booleans(),
)
@example(lo=1.0, width=2.220446049250313e-16, k=3, seed=0, single=False)  # a grid 1 ulp wide
def test_buckets_property(lo, width, k, seed, single):
    th = np.linspace(lo, lo + width, k)
    dtype = torch.float32 if single else torch.float64
    npdt = np.float32 if single else np.float64
    rng = np.random.default_rng(seed)
    v = np.concatenate([rng.uniform(lo, lo + width + 0.2, 400), th, np.nextafter(th, 3)])
    v = v.astype(npdt)
    v = v[v.astype(np.float64) >= th[0]]
    want = np.searchsorted(th, v.astype(np.float64), side="right")
    np.testing.assert_array_equal(Buckets(th, dtype)(v), want)


def test_ceil_floor_to_dtype():
    for t in (0.1, -0.3, 1 / 3, 0.5, 1e-30, -1e-30):
        c = ceil_to_dtype(t, torch.float32)
        f = floor_to_dtype(t, torch.float32)
        assert np.float32(c) == c and np.float32(f) == f
        assert f <= t <= c
        assert float(np.nextafter(np.float32(c), np.float32(-np.inf))) < t  # compared in float64
        assert float(np.nextafter(np.float32(f), np.float32(np.inf))) > t
    assert ceil_to_dtype(0.1, torch.float64) == 0.1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bs", [9, 50, None])
def test_numpy_path_equals_torch_path(dtype, bs):
    x, y = _data(230, 25, seed=4, big_class=60)
    x = x.astype(dtype)
    prep = prepare(x, y)
    block = bs or 64
    th = np.linspace(-0.1, 0.7, 13)
    lo, hi = [-0.05, 0.3, -np.inf], [0.1, 0.45, np.inf]
    fast_c = count_pass(prep, th, block, backend="numpy")
    fast_t = tail_pass(prep, lo, hi, block, backend="numpy")
    fast_r = threshold_consistency(x, y, block_size=bs, exact_cutoff=0, sample_size=500)
    slow_c = count_pass(prep, th, block, backend="torch")
    slow_t = tail_pass(prep, lo, hi, block, backend="torch")
    index = PairIndex(x, y, block_size=bs)
    slow_r = pair_statistics(index, exact_cutoff=0, sample_size=500, backend="torch").consistency()
    # bucket 0 (s < t_0) is never used; the paths pre-filter it differently
    np.testing.assert_array_equal(fast_c.neg[:, 1:], slow_c.neg[:, 1:])
    np.testing.assert_array_equal(fast_c.pos[:, 1:], slow_c.pos[:, 1:])
    np.testing.assert_array_equal(fast_t.num_above, slow_t.num_above)
    for a, b in zip(fast_t.values, slow_t.values, strict=True):
        np.testing.assert_array_equal(np.sort(a), np.sort(b))
    np.testing.assert_array_equal(fast_r.thresholds, slow_r.thresholds)
    np.testing.assert_array_equal(fast_r.utility, slow_r.utility)
    assert fast_r.opis == slow_r.opis


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_worker_count_does_not_change_results(workers, monkeypatch):
    x, y = _data(300, 30, seed=5, big_class=50)
    ref = threshold_consistency(x, y, block_size=32, exact_cutoff=0, sample_size=1000)
    ref_c = count_pass(prepare(x, y), np.linspace(0.0, 0.6, 7), 32)
    monkeypatch.setattr(pairs_mod, "num_workers", lambda prep: workers)
    got = threshold_consistency(x, y, block_size=32, exact_cutoff=0, sample_size=1000)
    got_c = count_pass(prepare(x, y), np.linspace(0.0, 0.6, 7), 32)
    np.testing.assert_array_equal(got.thresholds, ref.thresholds)
    np.testing.assert_array_equal(got.utility, ref.utility)
    np.testing.assert_array_equal(got_c.neg, ref_c.neg)
    np.testing.assert_array_equal(got_c.pos, ref_c.pos)


def test_map_blocks_restores_torch_threads():
    x, y = _data(120, 10, seed=6)
    before = torch.get_num_threads()
    count_pass(prepare(x, y), np.linspace(0.0, 0.5, 5), 16)
    assert torch.get_num_threads() == before


def test_huge_block_size_does_not_allocate_n_squared_of_it():
    x, y = _data(60, 5, seed=7)
    r = threshold_consistency(x, y, block_size=10**7)  # clamped to n internally
    assert np.isfinite(r.opis)
