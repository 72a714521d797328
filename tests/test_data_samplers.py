"""Tests for tcm.data.samplers.ClassBalancedBatchSampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from tcm.data import ClassBalancedBatchSampler


def _labels(sizes: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def _check_batch(batch: list[int], labels: np.ndarray, p: int, m: int) -> None:
    assert len(batch) == p * m
    counts = Counter(labels[batch].tolist())
    assert len(counts) == p
    assert set(counts.values()) == {m}


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=4, max_size=20),
    m=st.integers(1, 4),
    p=st.integers(1, 4),
    seed=st.integers(0, 1000),
    drop_last=st.booleans(),
)
def test_batch_composition_property(
    sizes: list[int], m: int, p: int, seed: int, drop_last: bool
) -> None:
    labels = _labels(sizes)
    if p > len(sizes):
        return
    groups = [max(1, -(-n // m)) for n in sizes]
    s = ClassBalancedBatchSampler(labels, p * m, m, seed=seed, drop_last=drop_last)
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        _check_batch(b, labels, p, m)
        # no duplicate index inside a class group unless the class is smaller than m
        for c, k in Counter(labels[b].tolist()).items():
            idx = [i for i in b if labels[i] == c]
            if sizes[c] >= m:
                assert len(set(idx)) == k
    if not drop_last and max(groups) <= len(batches):
        # every sample appears at least once per epoch when the schedule is feasible
        seen = {i for b in batches for i in b}
        assert seen == set(range(labels.shape[0]))


def test_small_class_sampled_with_replacement() -> None:
    labels = _labels([1, 2, 8, 8])
    s = ClassBalancedBatchSampler(labels, batch_size=8, m_per_class=4, seed=3, drop_last=False)
    for b in s:
        for c in set(labels[b].tolist()):
            idx = [i for i in b if labels[i] == c]
            assert len(idx) == 4
            assert set(idx) <= set(np.flatnonzero(labels == c).tolist())


def test_epoch_length_brute_force() -> None:
    labels = _labels([5, 4, 4, 3, 9])  # groups of m=2: 3+2+2+2+5 = 14
    s = ClassBalancedBatchSampler(labels, batch_size=6, m_per_class=2, drop_last=True)
    assert len(s) == 14 // 3 == len(list(s))
    s2 = ClassBalancedBatchSampler(labels, batch_size=6, m_per_class=2, drop_last=False)
    assert len(s2) == 5 == len(list(s2))


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_split_disjoint_and_covering(world_size: int, drop_last: bool) -> None:
    labels = _labels([4, 6, 3, 7, 5, 2, 8, 4, 4, 5, 6, 3])
    kw = {"batch_size": 8, "m_per_class": 2, "seed": 11, "drop_last": drop_last}
    ranks = [
        ClassBalancedBatchSampler(labels, rank=r, world_size=world_size, **kw)  # type: ignore[arg-type]
        for r in range(world_size)
    ]
    for s in ranks:
        s.set_epoch(4)
    per_rank = [list(s) for s in ranks]
    lengths = {len(b) for b in per_rank}
    assert lengths == {len(ranks[0])}  # equal length on every rank (DDP needs this)
    glob = ranks[0].global_batches()
    # interleaving the ranks gives back the global epoch: positions are disjoint and cover it
    rebuilt = [per_rank[i % world_size][i // world_size] for i in range(len(glob))]
    assert rebuilt == glob
    single = ClassBalancedBatchSampler(labels, **kw)  # type: ignore[arg-type]
    single.set_epoch(4)
    if drop_last:
        # ranks use a prefix of the single-process epoch; positions never shared
        assert glob == list(single)[: len(glob)]
        positions = [set(range(r, len(glob), world_size)) for r in range(world_size)]
        assert set.intersection(*positions) == set()
    else:
        seen = {i for b in per_rank for batch in b for i in batch}
        assert seen == set(range(labels.shape[0]))


def test_determinism_and_set_epoch() -> None:
    labels = _labels([5] * 12)
    a = ClassBalancedBatchSampler(labels, 12, 3, seed=7)
    b = ClassBalancedBatchSampler(labels, 12, 3, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    c = ClassBalancedBatchSampler(labels, 12, 3, seed=8)
    assert list(c) != first
    assert list(a) == list(a)  # iterating twice in one epoch repeats it


def test_string_labels_and_dataloader() -> None:
    labels = np.array(["cat", "dog", "eel", "fox"] * 4)
    s = ClassBalancedBatchSampler(labels, batch_size=4, m_per_class=2)
    x = torch.arange(16, dtype=torch.float32)
    loader = DataLoader(TensorDataset(x), batch_sampler=s)
    out = [batch[0] for batch in loader]
    assert len(out) == len(s) == 4
    for t in out:
        assert len(set(labels[t.long().numpy()].tolist())) == 2


def test_torch_labels() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    s = ClassBalancedBatchSampler(labels, 4, 2)
    assert all(len(b) == 4 for b in s)


def test_error_batch_size_not_multiple() -> None:
    with pytest.raises(ValueError, match="multiple of m_per_class"):
        ClassBalancedBatchSampler(_labels([4, 4]), batch_size=5, m_per_class=2)


def test_error_too_few_classes() -> None:
    with pytest.raises(ValueError, match="only 2 classes"):
        ClassBalancedBatchSampler(_labels([4, 4]), batch_size=6, m_per_class=2)


def test_error_rank_out_of_range() -> None:
    with pytest.raises(ValueError, match="rank"):
        ClassBalancedBatchSampler(_labels([4, 4]), 4, 2, rank=2, world_size=2)


def test_error_bad_world_size() -> None:
    with pytest.raises(ValueError, match="world_size"):
        ClassBalancedBatchSampler(_labels([4, 4]), 4, 2, world_size=0)


def test_error_bad_m() -> None:
    with pytest.raises(ValueError, match="m_per_class"):
        ClassBalancedBatchSampler(_labels([4, 4]), 4, 0)


def test_error_bad_batch_size_type() -> None:
    with pytest.raises(ValueError, match="batch_size must be an int"):
        ClassBalancedBatchSampler(_labels([4, 4]), 4.0, 2)  # type: ignore[arg-type]


def test_error_negative_epoch() -> None:
    s = ClassBalancedBatchSampler(_labels([4, 4]), 4, 2)
    with pytest.raises(ValueError, match="epoch"):
        s.set_epoch(-1)


def test_error_empty_labels() -> None:
    with pytest.raises(ValueError, match="empty"):
        ClassBalancedBatchSampler(np.array([], dtype=np.int64), 4, 2)


def test_one_big_class_is_spread_over_batches() -> None:
    # class 0 needs 4 groups and there are exactly 4 batches: it must be in every batch
    labels = _labels([8, 1, 1, 1, 1])
    for seed in range(20):
        s = ClassBalancedBatchSampler(labels, 4, 2, seed=seed, drop_last=False)
        batches = list(s)
        assert len(batches) == 4
        assert all(0 in set(labels[b].tolist()) for b in batches)
        assert {i for b in batches for i in b} == set(range(labels.shape[0]))
