"""PairIndex / pair_statistics / PairStats / evaluate: exactness against independent brute force,
shard merging, extreme scales, work bounds and error paths."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

from tcm.metrics import (
    PairIndex,
    PairStats,
    calibrate,
    evaluate,
    operating_point,
    pair_statistics,
    retrieval_metrics,
    similarity_histogram,
    threshold_at_far,
    threshold_consistency,
)


def _data(n_cls: int = 12, per: int = 6, d: int = 8, seed: int = 0, dtype: Any = np.float32):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_cls), per)
    sizes = rng.integers(1, per + 1, size=n_cls)  # uneven classes, some with one sample
    keep = np.concatenate([np.flatnonzero(y == c)[: sizes[c]] for c in range(n_cls)])
    y = y[keep]
    x = rng.normal(size=(n_cls, d))[y] + 0.8 * rng.normal(size=(y.shape[0], d))
    perm = rng.permutation(y.shape[0])
    return x[perm].astype(dtype), y[perm]


def _brute(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All unordered pairs (i < j): similarities in the input dtype (as the passes compute
    them, then compared exactly), first and second index."""
    xt = torch.as_tensor(x)
    xn = xt / torch.linalg.vector_norm(xt, dim=1, keepdim=True)
    s = (xn @ xn.T).numpy().astype(np.float64)
    i, j = np.triu_indices(x.shape[0], k=1)
    return s[i, j], i, j


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_validates_and_normalises_the_input_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import tcm.metrics._pairs as pairs_mod
    import tcm.metrics.retrieval as retrieval_mod

    x, y = _data(seed=11)
    ref = retrieval_metrics(x, y, ks=(1, 4))
    calls: list[str] = []
    real = pairs_mod.l2_normalize

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append("pairs")
        return real(*args, **kw)

    def forbidden(*args: Any, **kw: Any) -> Any:
        raise AssertionError("retrieval validated / normalised the input again")

    monkeypatch.setattr(pairs_mod, "l2_normalize", counted)
    monkeypatch.setattr(retrieval_mod, "as_embeddings", forbidden)
    monkeypatch.setattr(retrieval_mod, "l2_normalize", forbidden)
    ev = evaluate(x, y, ks=(1, 4), block_size=16)
    assert calls == ["pairs"]
    assert ev.retrieval is not None and ev.retrieval.to_dict() == ref.to_dict()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_evaluate_retrieval_keeps_input_order_ties(dtype: Any) -> None:
    # exact ties across classes (repeated rows): neighbours are ordered by input index, not by
    # the class-sorted order of the pair passes
    rng = np.random.default_rng(5)
    base = rng.normal(size=(4, 3))
    x = base[rng.integers(0, 4, size=40)].astype(dtype)
    y = rng.integers(0, 6, size=40)
    ev = evaluate(x, y, ks=(1, 2, 4), include=["retrieval"])
    for chunk in (None, 7):  # the symmetric candidates / the per-chunk scan
        ref = retrieval_metrics(x, y, ks=(1, 2, 4), chunk_size=chunk)
        assert ev.retrieval is not None and ev.retrieval.to_dict() == ref.to_dict()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_evaluate_equals_the_separate_functions(dtype: Any) -> None:
    x, y = _data(dtype=dtype)
    fars = (1e-2, 5e-2, 1e-1)
    ev = evaluate(
        x, y, ks=(1, 2), tar_fars=fars, calibration_far=5e-2, threshold=0.3, bins=40,
        block_size=16,
    )  # fmt: skip
    ret = retrieval_metrics(x, y, ks=(1, 2))
    tc = threshold_consistency(x, y, block_size=16)
    assert ev.retrieval is not None and ev.retrieval.to_dict() == ret.to_dict()
    assert ev.consistency is not None
    assert ev.consistency.opis == tc.opis and ev.consistency.epsilon_opis == tc.epsilon_opis
    np.testing.assert_array_equal(ev.consistency.utility, tc.utility)
    np.testing.assert_array_equal(ev.consistency.thresholds, tc.thresholds)
    for f in fars:
        t = threshold_at_far(x, y, far=f, block_size=16)
        assert ev.threshold_at_far[f] == t
        assert ev.tar_at_far[f] == operating_point(x, y, t, block_size=16).global_tar
    op = operating_point(x, y, 0.3, block_size=16)
    assert ev.operating_point is not None
    for field in ("tar", "far", "frr", "trr", "classes", "class_sizes"):
        np.testing.assert_array_equal(getattr(ev.operating_point, field), getattr(op, field))
    assert ev.calibration is not None and ev.calibration.threshold == ev.threshold_at_far[5e-2]
    h = similarity_histogram(x, y, bins=40)
    assert ev.histogram is not None
    np.testing.assert_array_equal(ev.histogram.pos, h.pos)
    np.testing.assert_array_equal(ev.histogram.neg, h.neg)
    m = ev.metrics()
    assert m["recall_at_1"] == ret.recall_at_k[1] and m["opis"] == tc.opis
    assert m["tar_at_far_1e-02"] == ev.tar_at_far[1e-2]
    assert m["epsilon_opis_0.05"] == tc.epsilon_opis[0.05]


def test_evaluate_against_brute_force_pairs() -> None:
    x, y = _data(n_cls=9, per=7, seed=3, dtype=np.float64)
    ev = evaluate(x, y, tar_fars=(0.02,), threshold=0.25, calibration_far=None, block_size=8)
    s, i, j = _brute(x, y)
    same = y[i] == y[j]
    t = float(np.quantile(s[~same], 1 - 0.02))
    assert ev.threshold_at_far[0.02] == pytest.approx(t, rel=1e-12, abs=1e-15)
    # counts are exact integers: the rates are ratios of the same integers
    assert ev.tar_at_far[0.02] == np.count_nonzero(s[same] >= ev.threshold_at_far[0.02]) / (
        np.count_nonzero(same)
    )
    op = ev.operating_point
    assert op is not None
    for c, far_c, tar_c in zip(op.classes, op.far, op.tar, strict=True):
        one = (y[i] == c) ^ (y[j] == c)
        both = (y[i] == c) & (y[j] == c)
        assert far_c == np.count_nonzero(s[one] >= 0.25) / np.count_nonzero(one)
        assert tar_c == np.count_nonzero(s[both] >= 0.25) / np.count_nonzero(both)
    assert op.global_far == np.count_nonzero(s[~same] >= 0.25) / np.count_nonzero(~same)


def test_sections_select_the_work() -> None:
    x, y = _data()
    ev = evaluate(x, y, include=["retrieval"])
    assert ev.stats is None and ev.consistency is None and ev.retrieval is not None
    ev2 = evaluate(x, y, exclude=["retrieval", "calibration"], tar_fars=(0.1,))
    assert ev2.retrieval is None and ev2.calibration is None and set(ev2.tar_at_far) == {0.1}
    assert "recall_at_1" not in ev2.metrics() and "opis" in ev2.metrics()
    with pytest.raises(ValueError, match="unknown evaluation section 'recall'"):
        evaluate(x, y, include=["recall"])
    with pytest.raises(ValueError, match="distributed=True"):
        evaluate(x, y, distributed=True)


def test_evaluate_max_utility_calibration_is_the_grid_argmax() -> None:
    x, y = _data(seed=5)
    ev = evaluate(
        x, y, include=["calibration"], max_utility=True, search_range=(1e-3, 0.4),
        search_thresholds=31,
    )  # fmt: skip
    tc = threshold_consistency(x, y, far_range=(1e-3, 0.4), num_thresholds=31)
    k = int(np.argmax(tc.utility.mean(axis=0)))
    assert ev.calibration is not None
    assert ev.calibration.threshold == tc.thresholds[k]
    assert ev.calibration.mode == "max_mean_utility"
    assert ev.calibration.mean_utility == pytest.approx(tc.utility[:, k].mean(), rel=1e-12)


def test_to_dict_is_json_and_uses_the_vocabulary() -> None:
    import json

    x, y = _data()
    d = evaluate(x, y, threshold=0.2).to_dict([f"name{i}" for i in range(20)])
    json.dumps(d)
    assert set(d["metrics"]) >= {"recall_at_1", "map_at_r", "opis", "epsilon_opis_0.1"}
    assert d["calibration"]["per_class"]["names"][0].startswith("name")
    assert d["metrics"]["threshold"] == 0.2


# ----------------------------------------------------------------------------- statistics


class _ThreadComm:
    """In-process Communicator: ``world`` threads exchange arrays through shared slots."""

    def __init__(self, rank: int, world: int, shared: dict[str, Any]) -> None:
        self._rank, self._world, self._shared = rank, world, shared

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world(self) -> int:
        return self._world

    def _exchange(self, a: np.ndarray) -> list[np.ndarray]:
        self._shared["slots"][self._rank] = np.array(a, copy=True)
        self._shared["barrier"].wait()
        out = list(self._shared["slots"])
        self._shared["barrier"].wait()
        return out

    def sum(self, a: np.ndarray) -> np.ndarray:
        return np.sum(self._exchange(a), axis=0).astype(a.dtype)

    def concat(self, a: np.ndarray) -> np.ndarray:
        return np.concatenate(self._exchange(a))


def _run_sharded(world: int, **kw: Any) -> list[PairStats]:
    shared: dict[str, Any] = {"barrier": threading.Barrier(world), "slots": [None] * world}
    out: list[Any] = [None] * world
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            out[r] = pair_statistics(shard=(r, world), comm=_ThreadComm(r, world, shared), **kw)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            shared["barrier"].abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def _assert_same_stats(a: PairStats, b: PairStats) -> None:
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
    # bucket 0 (below every threshold) is documented as unused: the paths may fill it or not
    np.testing.assert_array_equal(a.pos[:, 1:], b.pos[:, 1:])
    np.testing.assert_array_equal(a.neg[:, 1:], b.neg[:, 1:])
    assert a.far_thresholds == b.far_thresholds
    assert (a.hist_pos is None) == (b.hist_pos is None)
    if a.hist_pos is not None:
        np.testing.assert_array_equal(a.hist_pos, b.hist_pos)
        np.testing.assert_array_equal(a.hist_neg, b.hist_neg)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("exact_cutoff", [0, 10**9])  # sampled bracket / all negatives
def test_sharded_statistics_equal_one_process(world: int, exact_cutoff: int) -> None:
    x, y = _data(n_cls=15, per=7, seed=2)
    index = PairIndex(x, y, block_size=8)
    kw: dict[str, Any] = dict(
        index=index, fars=[1e-3, 0.05], num_thresholds=21, thresholds=[0.1], bins=16,
        grids={"search": (1e-3, 0.5, 11)}, exact_cutoff=exact_cutoff, sample_size=50,
    )  # fmt: skip
    one = pair_statistics(**kw)
    for got in _run_sharded(world, **kw):
        _assert_same_stats(got, one)
        assert got.consistency().opis == one.consistency().opis


def test_fixed_threshold_shards_add_up_without_communication() -> None:
    x, y = _data(seed=4)
    index = PairIndex(x, y, block_size=8)
    th = [-0.2, 0.0, 0.3, 0.3, 0.7]  # a repeated threshold is allowed
    one = pair_statistics(index, far_range=None, thresholds=th, bins=10)
    parts = [
        pair_statistics(index, far_range=None, thresholds=th, bins=10, shard=(r, 3))
        for r in range(3)
    ]
    _assert_same_stats(parts[0] + parts[1] + parts[2], one)
    with pytest.raises(ValueError, match="needs comm="):
        pair_statistics(index, fars=[0.1], far_range=None, shard=(0, 2))
    other = pair_statistics(index, far_range=None, thresholds=[0.5])
    with pytest.raises(ValueError, match="cannot add PairStats"):
        _ = one + other


def test_union_of_grids_matches_each_grid_alone() -> None:
    x, y = _data(seed=6, dtype=np.float32)
    index = PairIndex(x, y, block_size=16)
    both = pair_statistics(
        index, num_thresholds=15, fars=[0.05], thresholds=[0.4],
        grids={"search": (1e-3, 0.3, 9)},
    )  # fmt: skip
    alone = pair_statistics(index, num_thresholds=15)
    np.testing.assert_array_equal(both.consistency().utility, alone.consistency().utility)
    s_alone = pair_statistics(index, far_range=None, grids={"search": (1e-3, 0.3, 9)})
    np.testing.assert_array_equal(
        both.consistency(grid="search").utility, s_alone.consistency(grid="search").utility
    )
    t_op = operating_point(x, y, 0.4, block_size=16)
    np.testing.assert_array_equal(both.operating_point(0.4).far, t_op.far)


def test_torch_path_equals_numpy_path() -> None:
    x, y = _data(seed=7)
    kw: dict[str, Any] = dict(fars=[0.02], num_thresholds=13, thresholds=[0.2], bins=12)
    a = pair_statistics(PairIndex(x, y, block_size=16), backend="numpy", **kw)
    b = pair_statistics(PairIndex(x, y, block_size=16), backend="torch", **kw)
    _assert_same_stats(a, b)
    _assert_same_stats(a, pair_statistics(PairIndex(x, y, block_size=16), **kw))  # "auto"


def test_unknown_pass_backend_fails_before_any_pass(pass_guard: Any) -> None:
    index = PairIndex(*_data(seed=7))
    pass_guard.forbid()
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'numpy', 'torch'\)"):
        pair_statistics(index, fars=[0.1], backend="cuda")  # type: ignore[arg-type]


def test_histogram_matches_numpy_histogram() -> None:
    x, y = _data(seed=8, dtype=np.float64)
    st = pair_statistics(PairIndex(x, y, block_size=8), far_range=None, bins=25)
    s, i, j = _brute(x, y)
    same = y[i] == y[j]
    edges = np.linspace(-1.0, 1.0, 26)
    assert st.hist_neg is not None and st.hist_pos is not None
    np.testing.assert_array_equal(st.hist_neg, np.histogram(np.clip(s[~same], -1, 1), edges)[0])
    np.testing.assert_array_equal(st.hist_pos, np.histogram(np.clip(s[same], -1, 1), edges)[0])


def test_views_name_what_was_not_counted() -> None:
    x, y = _data()
    st = pair_statistics(PairIndex(x, y), fars=[0.1], num_thresholds=5)
    with pytest.raises(ValueError, match=r"threshold 0\.123 was not counted"):
        st.operating_point(0.123)
    with pytest.raises(ValueError, match=r"FAR 0\.2 was not requested"):
        st.threshold_at_far(0.2)
    with pytest.raises(ValueError, match="no threshold grid 'search'"):
        st.consistency(grid="search")
    with pytest.raises(ValueError, match="no histogram"):
        st.histogram()
    with pytest.raises(ValueError, match="choose one rule"):
        calibrate(st)


# ----------------------------------------------------------------------------- scale + bounds


@pytest.mark.parametrize("scale", [2.0**66, 2.0**-100])
def test_float32_extreme_power_of_two_scales_give_identical_results(scale: float) -> None:
    # scaling by a power of two is exact, so the results must be bit-identical; before safe
    # normalisation rows x 2^66 squared to inf (zero vectors) and rows x 2^-100 underflowed.
    x, y = _data(seed=9, dtype=np.float32)
    xs = (x.astype(np.float64) * scale).astype(np.float32)
    assert np.array_equal(xs.astype(np.float64) / scale, x.astype(np.float64))
    a, b = evaluate(x, y, tar_fars=(0.05,)), evaluate(xs, y, tar_fars=(0.05,))
    assert a.metrics() == b.metrics()


@pytest.mark.parametrize("scale", [1e20, 1e-30, 1e160, 1e-170])
def test_float64_extreme_scales_give_the_unscaled_results(scale: float) -> None:
    # x * scale is rounded once (relative error <= 2^-53); the normalised rows then agree to a
    # few float64 ulps, and every similarity to ~1e-15: far below the gaps between the
    # similarities of this small random set, so every count, hence every metric, is equal.
    x, y = _data(seed=10, dtype=np.float64)
    a = evaluate(x, y, tar_fars=(0.05,))
    b = evaluate(x * scale, y, tar_fars=(0.05,))
    ma, mb = a.metrics(), b.metrics()
    assert ma.keys() == mb.keys()
    for key in ma:
        assert mb[key] == pytest.approx(ma[key], rel=1e-12, abs=1e-12), key
    assert a.stats is not None and b.stats is not None
    np.testing.assert_array_equal(a.stats.pos, b.stats.pos)
    np.testing.assert_array_equal(a.stats.neg, b.stats.neg)


def test_float32_1e20_rows_are_unit_vectors_not_zeros() -> None:
    x, y = _data(seed=11, dtype=np.float32)
    idx = PairIndex(x * np.float32(1e20), y)
    norms = torch.linalg.vector_norm(idx.prepared.x.double(), dim=1)
    eps32 = float(np.finfo(np.float32).eps)
    assert float((norms - 1).abs().max()) <= 8 * x.shape[1] ** 0.5 * eps32


def test_work_bounds_are_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _data()
    index = PairIndex(x, y)
    with pytest.raises(ValueError, match="too large"):
        pair_statistics(index, num_thresholds=10**9)
    with pytest.raises(ValueError, match="too large"):
        pair_statistics(index, far_range=None, bins=10**7)
    import tcm.metrics._checks as checks

    monkeypatch.setattr(checks, "MAX_TABLE_BYTES", 1 << 20)
    with pytest.raises(ValueError, match=r"GiB .*classes x .*thresholds"):
        pair_statistics(index, num_thresholds=20_000)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fars": [0.0]}, "fars entry"),
        ({"far_range": (0.2, 0.1)}, "f_lo < f_hi"),
        ({"thresholds": [float("nan")]}, "thresholds entry"),
        ({"bins": -1}, "bins"),
        ({"grids": {"g": (0.1, 0.2)}}, "grid 'g'"),
        ({"shard": (2, 2)}, "shard"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], match: str) -> None:
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        pair_statistics(PairIndex(x, y), **kwargs)


def test_pair_index_errors_and_groups() -> None:
    with pytest.raises(ValueError, match="all-zero"):
        PairIndex([[0.0, 0.0], [1.0, 0.0]], [0, 1])
    with pytest.raises(ValueError, match="groups has length 1"):
        PairIndex([[1.0, 0.0], [0.0, 1.0]], [0, 1], groups=["a"])
    idx = PairIndex([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [1, 0, 1], groups=["u", "v", "u"])
    assert idx.group_names is not None and idx.group_codes is not None
    assert idx.group_names.tolist() == ["u", "v"]
    assert idx.group_codes.tolist() == [1, 0, 0]  # rows sorted by class: 1(v), then 0(u), 2(u)
    with pytest.raises(ValueError, match="no negative pairs"):
        pair_statistics(PairIndex([[1.0, 0.0], [0.0, 1.0]], [0, 0]), fars=[0.1])


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_leave_one_out_retrieval_splits_tiles_and_equals_one_process(world: int) -> None:
    from tcm.metrics.retrieval import merge_per_query, retrieval_per_query, shard_query_indices

    x, y = _data(n_cls=20, per=6, seed=12)
    n = x.shape[0]
    shared: dict[str, Any] = {"barrier": threading.Barrier(world), "slots": [None] * world}
    parts: list[Any] = [None] * world

    def rank(r: int) -> None:
        parts[r] = retrieval_per_query(
            x, y, ks=(1, 4), chunk_size=16, query_indices=shard_query_indices(n, r, world),
            comm=_ThreadComm(r, world, shared),
        )  # fmt: skip

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = merge_per_query(parts)
    want = retrieval_metrics(x, y, ks=(1, 4), chunk_size=16)
    assert got.to_dict() == want.to_dict()


def test_single_metric_functions_give_intervals_from_tables() -> None:
    from tcm.metrics.bootstrap import bootstrap_opis, bootstrap_ratio

    x, y = _data(n_cls=40, per=6, seed=13)
    tc = threshold_consistency(x, y, ci=0.9, n_boot=200, seed=2)
    ref = bootstrap_opis(tc.utility, ci=0.9, n_boot=200, seed=2)
    assert tc.intervals["opis"] == ref
    assert tc.intervals["opis"].lo <= tc.opis * (1 + 1e-12)
    assert threshold_consistency(x, y).intervals == {}
    op = operating_point(x, y, 0.3, ci=0.9, n_boot=200, seed=2)
    s, i, j = _brute(x, y)
    classes = np.unique(y)
    acc = np.array([np.count_nonzero(s[(y[i] == c) ^ (y[j] == c)] >= 0.3) for c in classes])
    n = np.array([np.count_nonzero(y == c) for c in classes], dtype=float)
    want = bootstrap_ratio(acc, n * (len(y) - n), ci=0.9, n_boot=200, seed=2)
    assert op.intervals["global_far"].point == pytest.approx(op.global_far, rel=1e-12)
    assert op.intervals["global_far"].lo == pytest.approx(want.lo, rel=1e-12)
    assert op.intervals["global_far"].hi == pytest.approx(want.hi, rel=1e-12)
    with pytest.raises(ValueError, match="n_boot"):
        operating_point(x, y, 0.3, ci=0.9, n_boot=0)
