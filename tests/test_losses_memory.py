"""CombinedLoss and the cross-batch memory against brute-force references."""

from __future__ import annotations

import itertools

import pytest
import torch

from tcm.losses import CombinedLoss, CrossBatchMemory, TCMLoss, build_loss

# float64 throughout: sums of at most a few hundred O(1) terms agree to ~1e-14 relative.
RTOL = 1e-10


def brute_tcm(
    emb: torch.Tensor,
    lab: list[int],
    ref: torch.Tensor,
    ref_lab: list[int],
    self_rows: bool,
    mp: float = 0.9,
    mn: float = 0.5,
) -> torch.Tensor:
    """TCM by an explicit loop over pairs (i in batch, j in reference), skipping i == j when the
    reference starts with the batch."""
    a = torch.nn.functional.normalize(emb, dim=1)
    b = torch.nn.functional.normalize(ref, dim=1)
    pos: list[torch.Tensor] = []
    neg: list[torch.Tensor] = []
    for i, j in itertools.product(range(len(lab)), range(len(ref_lab))):
        if self_rows and i == j:
            continue
        s = a[i] @ b[j]
        sv = float(s.detach())
        if lab[i] == ref_lab[j] and sv <= mp:
            pos.append(mp - s)
        elif lab[i] != ref_lab[j] and sv >= mn:
            neg.append(s - mn)
    zero = emb.new_zeros(())
    tp = torch.stack(pos).mean() if pos else zero
    tn = torch.stack(neg).mean() if neg else zero
    return tp + tn


def _batches(steps: int, b: int, d: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        lab = torch.randint(0, 5, (b,), generator=g)
        out.append((torch.randn(b, d, generator=g, dtype=torch.float64), lab))
    return out


def test_memory_fifo_wraps_and_keeps_last_rows() -> None:
    mem = CrossBatchMemory(5)
    for k in range(4):
        mem.enqueue(torch.full((2, 1), float(k)), torch.tensor([k, k]))
    emb, lab = mem.contents()
    assert lab.tolist() == [1, 2, 2, 3, 3]  # oldest first
    assert emb[:, 0].tolist() == [1.0, 2.0, 2.0, 3.0, 3.0]
    mem.enqueue(torch.arange(7.0)[:, None], torch.arange(7))  # larger than the memory
    assert mem.contents()[1].tolist() == [2, 3, 4, 5, 6]


def test_memory_state_dict_round_trip() -> None:
    a = build_loss("none", tcm=True, memory_size=6)
    for e, y in _batches(3, 4, 3):
        a(e.float(), y)
    b = build_loss("none", tcm=True, memory_size=6)
    b.load_state_dict(a.state_dict())
    assert a.memory is not None and b.memory is not None
    for x, y in zip(a.memory.contents(), b.memory.contents(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("memory_size", [5, 12, 64])
def test_tcm_with_memory_equals_brute_force(memory_size: int) -> None:
    loss_fn = CombinedLoss({"tcm": TCMLoss()}, memory_size=memory_size)
    past: list[tuple[torch.Tensor, int]] = []
    for emb0, y in _batches(5, 6, 4):
        emb = emb0.clone().requires_grad_(True)
        got = loss_fn(emb, y)
        got.backward()
        assert emb.grad is not None
        g_got = emb.grad.clone()
        mem = past[-memory_size:]
        ref_rows = [emb] + ([torch.stack([r for r, _ in mem])] if mem else [])
        ref_lab = y.tolist() + [lbl for _, lbl in mem]
        emb2 = emb0.clone().requires_grad_(True)
        ref_rows[0] = emb2
        want = brute_tcm(emb2, y.tolist(), torch.cat(ref_rows), ref_lab, self_rows=True)
        want.backward()
        assert emb2.grad is not None
        scale = max(float(want.detach().abs()), 1e-3)
        assert abs(float(got.detach()) - float(want.detach())) <= RTOL * scale
        gs = max(float(emb2.grad.abs().max()), 1e-12)
        assert float((g_got - emb2.grad).abs().max()) <= RTOL * gs
        assert torch.equal(loss_fn.last_terms["tcm"], got.detach())
        past.extend(zip(emb0.unbind(0), y.tolist(), strict=True))


def test_empty_memory_equals_batch_only_loss() -> None:
    ((emb, y),) = _batches(1, 8, 5)
    with_mem = CombinedLoss({"t": TCMLoss()}, memory_size=32)(emb, y)
    plain = TCMLoss()(emb, y)
    assert abs(float(with_mem) - float(plain)) <= RTOL * max(float(plain), 1e-3)


def test_ref_emb_passed_to_supporting_terms_only() -> None:
    (emb, y), (ref, ry) = _batches(2, 6, 4)
    fn = build_loss("smooth_ap", tcm=True)
    total = fn(emb, y, ref_emb=ref, ref_labels=ry)
    want_tcm = brute_tcm(emb, y.tolist(), ref, ry.tolist(), self_rows=False)
    from tcm.losses import SmoothAPLoss

    want_base = SmoothAPLoss()(emb, y)  # Smooth-AP takes no reference set: batch only
    assert abs(float(fn.last_terms["tcm"]) - float(want_tcm)) <= RTOL * max(float(want_tcm), 1e-3)
    assert abs(float(fn.last_terms["base"]) - float(want_base)) <= RTOL
    assert abs(float(total) - float(want_tcm + want_base)) <= RTOL * float(want_tcm + want_base)


def test_weights_and_named_terms() -> None:
    ((emb, y),) = _batches(1, 8, 4)
    fn = CombinedLoss({"a": TCMLoss(), "b": TCMLoss(margin_neg=0.2)}, weights={"b": 0.25})
    total = fn(emb, y)
    a, b = TCMLoss()(emb, y), TCMLoss(margin_neg=0.2)(emb, y)
    assert abs(float(total) - float(a + 0.25 * b)) <= RTOL * float(a + 0.25 * b)
    assert set(fn.terms_as_floats()) == {"a", "b", "total"}
    with pytest.raises(ValueError, match="unknown term"):
        CombinedLoss({"a": TCMLoss()}, weights={"c": 1.0})
    with pytest.raises(ValueError, match="do not pass"):
        CombinedLoss({"a": TCMLoss()}, memory_size=4)(emb, y, ref_emb=emb, ref_labels=y)


def test_multi_similarity_memory_matches_pml_cross_batch_memory() -> None:
    from pytorch_metric_learning.losses import CrossBatchMemory as PMLXBM
    from pytorch_metric_learning.losses import MultiSimilarityLoss

    # pml enqueues first and then compares with its M rows; ours compares with [batch; last M]
    # and then enqueues: the two reference sets coincide until the memory overflows (30 < 64)
    ours = build_loss("multi_similarity", memory_size=64)
    ref = PMLXBM(MultiSimilarityLoss(), embedding_size=4, memory_size=64)
    for emb0, y in _batches(5, 6, 4):
        a = ours(emb0.float(), y)
        b = ref(emb0.float(), y)
        # float32: relative agreement to ~1e-6 of the value's scale (sums of ~100 exp terms).
        # Gradients differ on purpose: pml's reference copy of the current batch is detached,
        # ours keeps its graph (so an empty memory gives exactly the batch-only gradient).
        assert abs(float(a) - float(b)) <= 1e-5 * max(float(b.abs()), 1.0)


def test_memory_warmup_steps_see_the_batch_only_then_the_memory_fills() -> None:
    """During the warm-up the loss equals the batch-only TCM; after it, the reference set is
    the batch plus the rows enqueued *after* the warm-up only (brute force)."""
    warmup, size = 2, 64
    loss_fn = CombinedLoss({"tcm": TCMLoss()}, memory_size=size, memory_warmup=warmup)
    stored: list[tuple[torch.Tensor, int]] = []
    for step, (emb, y) in enumerate(_batches(5, 6, 4)):
        got = float(loss_fn(emb, y))
        ref = torch.cat([emb, *([torch.stack([r for r, _ in stored])] if stored else [])])
        ref_lab = y.tolist() + [lbl for _, lbl in stored]
        want = float(brute_tcm(emb, y.tolist(), ref, ref_lab, self_rows=True))
        assert abs(got - want) <= RTOL * max(abs(want), 1e-3)
        assert loss_fn.memory is not None
        assert len(loss_fn.memory) == len(stored) + (6 if step >= warmup else 0)
        if step >= warmup:
            stored.extend(zip(emb.unbind(0), y.tolist(), strict=True))


def test_memory_warmup_survives_a_state_dict_round_trip() -> None:
    """A run resumed inside the warm-up still skips the remaining warm-up steps; one resumed
    after it goes on storing: both equal the uninterrupted loss at every later step."""
    batches = _batches(6, 4, 3)
    for cut in (1, 4):
        whole = build_loss("none", tcm=True, memory_size=32, memory_warmup=3)
        want = [float(whole(e, y)) for e, y in batches]
        first = build_loss("none", tcm=True, memory_size=32, memory_warmup=3)
        for e, y in batches[:cut]:
            first(e, y)
        resumed = build_loss("none", tcm=True, memory_size=32, memory_warmup=3)
        resumed.load_state_dict(first.state_dict())
        got = [float(resumed(e, y)) for e, y in batches[cut:]]
        assert got == pytest.approx(want[cut:], rel=RTOL)


def test_memory_state_without_call_count_loads_as_past_the_warmup() -> None:
    mem = CrossBatchMemory(4, warmup=10)
    mem.set_extra_state({"size": 4, "embeddings": torch.ones(2, 3), "labels": torch.tensor([0, 1])})
    assert len(mem) == 2 and mem.calls == 10
    mem.enqueue(torch.zeros(1, 3), torch.tensor([2]))
    assert len(mem) == 3


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_memory_warmup_must_be_a_nonnegative_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="warm-up must be an integer"):
        CrossBatchMemory(4, warmup=bad)  # type: ignore[arg-type]


def test_memory_warmup_without_memory_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs a cross-batch memory"):
        build_loss("none", tcm=True, memory_warmup=5)
