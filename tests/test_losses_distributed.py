"""DDP correctness of gather_with_grad with 2 CPU processes (gloo)."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tcm.losses import SmoothAPLoss, TCMLoss, build_loss, gather_no_grad, gather_with_grad

SIZES = (5, 3)  # unequal local batch sizes on purpose


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SIZES), 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return x, w, labels


def _losses() -> dict[str, torch.nn.Module]:
    return {"tcm": TCMLoss(margin_pos=0.6, margin_neg=0.1), "smooth_ap": SmoothAPLoss(0.1)}


def _memory_losses() -> dict[str, torch.nn.Module]:
    """Losses with a cross-batch memory smaller than 3 global batches (it wraps around)."""
    return {
        "tcm_xbm": build_loss("none", tcm={"margin_pos": 0.6, "margin_neg": 0.1}, memory_size=11),
        "ms_tcm_xbm": build_loss("multi_similarity", tcm=True, memory_size=11),
    }


MEMORY_STEPS = 3


def _step_data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(sum(SIZES), 6, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (sum(SIZES),), generator=g)


def _memory_run(
    fn: torch.nn.Module, w0: torch.Tensor, rows: slice | None
) -> list[dict[str, torch.Tensor]]:
    """MEMORY_STEPS steps; ``rows``: this rank's slice (gathered), ``None``: one process."""
    out = []
    for step in range(MEMORY_STEPS):
        x, labels = _step_data(step)
        w = w0.clone().requires_grad_(True)
        if rows is None:
            emb = x @ w
            emb.retain_grad()
            loss = fn(emb, labels)
        else:
            emb = x[rows] @ w
            emb.retain_grad()
            loss = fn(gather_with_grad(emb), gather_no_grad(labels[rows]))
        loss.backward()
        assert emb.grad is not None
        out.append({"loss": loss.detach(), "emb_grad": emb.grad.detach()})
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, w0, labels = _data()
        lo = sum(SIZES[:rank])
        sl = slice(lo, lo + SIZES[rank])
        result = {}
        for name, fn in _losses().items():
            w = w0.clone().requires_grad_(True)
            emb = x[sl] @ w
            emb.retain_grad()
            all_emb = gather_with_grad(emb)
            all_lab = gather_no_grad(labels[sl])
            loss = fn(all_emb, all_lab)
            loss.backward()
            assert w.grad is not None and emb.grad is not None
            grad_w = w.grad.clone()
            dist.all_reduce(grad_w)  # DDP-style averaging over the 2 ranks
            grad_w /= 2
            result[name] = {
                "loss": loss.detach(),
                "emb_grad": emb.grad.detach(),
                "w_grad": grad_w,
                "labels": all_lab,
            }
        for name, fn in _memory_losses().items():
            result[name] = _memory_run(fn, w0, sl)  # type: ignore[assignment]
            mem = fn.memory
            assert mem is not None
            result[name + "_memory"] = mem.contents()[1]  # type: ignore[assignment]
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_identity_without_process_group() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    assert gather_no_grad(x) is x


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """One 2-process gloo run of :func:`_worker` shared by the tests below."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(  # type: ignore[attr-defined]
        _worker, args=(_free_port(), str(out)), nprocs=2, join=True
    )
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_ddp_two_processes_match_single_process(ddp_results: list[dict[str, Any]]) -> None:
    x, w0, labels = _data()
    res = ddp_results
    for name, fn in _losses().items():
        w = w0.clone().requires_grad_(True)
        emb = x @ w
        emb.retain_grad()
        loss = fn(emb, labels)
        loss.backward()
        assert w.grad is not None and emb.grad is not None
        offsets = (0, SIZES[0])
        for r in range(2):
            got = res[r][name]
            assert torch.equal(got["labels"], labels)
            torch.testing.assert_close(got["loss"], loss.detach(), rtol=0, atol=1e-12)
            rows = slice(offsets[r], offsets[r] + SIZES[r])
            torch.testing.assert_close(got["emb_grad"], emb.grad[rows], rtol=1e-10, atol=1e-12)
            # DDP averages parameter gradients: each rank back-propagates only its own rows, so
            # the averaged gradient is (1 / world_size) x the single-process gradient.
            torch.testing.assert_close(got["w_grad"], w.grad / 2, rtol=1e-10, atol=1e-12)


def test_ddp_cross_batch_memory_holds_global_batch(ddp_results: list[dict[str, Any]]) -> None:
    """Under 2-process DDP the memory enqueues the gathered global batch: losses and gradients
    of every step equal one process on the whole batch (float64: agreement to ~1e-12)."""
    res = ddp_results
    _, w0, _ = _data()
    offsets = (0, SIZES[0])
    for name, fn in _memory_losses().items():
        want = _memory_run(fn, w0, None)
        for r in range(2):
            got = res[r][name]
            rows = slice(offsets[r], offsets[r] + SIZES[r])
            for g, ref in zip(got, want, strict=True):
                torch.testing.assert_close(g["loss"], ref["loss"], rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(
                    g["emb_grad"], ref["emb_grad"][rows], rtol=1e-10, atol=1e-12
                )
            mem = fn.memory
            assert mem is not None
            assert torch.equal(res[r][name + "_memory"], mem.contents()[1])
