"""tcm.metrics._threads: worker threads with single-threaded torch inside."""

from __future__ import annotations

import threading

import pytest
import torch

from tcm.metrics._threads import run_single_threaded


def test_results_in_order_and_torch_single_threaded_inside() -> None:
    before = torch.get_num_threads()
    seen: list[tuple[int, int, int]] = []

    def fn(i: int) -> int:
        seen.append((i, torch.get_num_threads(), threading.get_ident()))
        return i * i

    assert run_single_threaded(3, fn) == [0, 1, 4]
    assert sorted(i for i, _, _ in seen) == [0, 1, 2]
    assert all(t == 1 for _, t, _ in seen)
    assert threading.get_ident() not in {ident for _, _, ident in seen}
    assert torch.get_num_threads() == before


def test_one_worker_runs_inline_unchanged() -> None:
    before = torch.get_num_threads()
    out = run_single_threaded(1, lambda i: (i, torch.get_num_threads(), threading.get_ident()))
    assert out == [(0, before, threading.get_ident())]


def test_setup_runs_in_every_worker_and_errors_propagate() -> None:
    calls: list[int] = []
    assert run_single_threaded(2, lambda i: i, setup=lambda: calls.append(1)) == [0, 1]
    assert len(calls) == 2
    before = torch.get_num_threads()

    def boom(i: int) -> int:
        if i == 1:
            raise RuntimeError("worker 1 failed")
        return i

    with pytest.raises(RuntimeError, match="worker 1 failed"):
        run_single_threaded(2, boom)
    assert torch.get_num_threads() == before
