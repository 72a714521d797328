"""Tests for build_loss / LossWithTCM / available_losses."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from tcm.losses import LossWithTCM, SmoothAPLoss, TCMLoss, available_losses, build_loss

NAMES = [
    "arcface",
    "contrastive",
    "cosface",
    "multi_similarity",
    "none",
    "proxy_anchor",
    "recall_surrogate",
    "smooth_ap",
    "triplet",
]


def _batch(
    seed: int = 0, b: int = 16, d: int = 8, classes: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, d, generator=g)
    labels = torch.arange(classes).repeat_interleave(b // classes)
    return emb, labels


def test_available_losses() -> None:
    assert available_losses() == NAMES


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tcm", [None, True, {"margin_pos": 0.8, "lambda_neg": 0.5}])
def test_every_loss_builds_runs_and_reports_terms(name: str, tcm: Any) -> None:
    emb, labels = _batch()
    fn = build_loss(name, tcm=tcm, num_classes=4, embedding_dim=8)
    assert isinstance(fn, LossWithTCM)
    e = emb.clone().requires_grad_(True)
    total = fn(e, labels)
    total.backward()
    assert torch.isfinite(total) and e.grad is not None and torch.isfinite(e.grad).all()
    terms = fn.last_terms
    assert set(terms) == {"base", "tcm", "total"}
    assert abs(terms["base"] + terms["tcm"] - terms["total"]) < 1e-5
    assert abs(terms["total"] - total.item()) < 1e-6
    has_tcm = tcm is not None or name == "none"
    assert (fn.tcm is not None) == has_tcm
    if has_tcm:
        params = {} if tcm in (None, True) else tcm
        want = TCMLoss(**params)(emb, labels).item()
        assert abs(terms["tcm"] - want) < 1e-6
    else:
        assert terms["tcm"] == 0.0


def test_base_term_equals_standalone_loss() -> None:
    emb, labels = _batch(1)
    fn = build_loss("smooth_ap", tcm=True, temperature=0.05)
    fn(emb, labels)
    assert abs(fn.last_terms["base"] - SmoothAPLoss(0.05)(emb, labels).item()) < 1e-7
    fn2 = build_loss("multi_similarity", alpha=3.0, beta=40.0, base=0.4)
    fn2(emb, labels)
    want = pml_losses.MultiSimilarityLoss(alpha=3.0, beta=40.0, base=0.4)(emb, labels).item()
    assert abs(fn2.last_terms["base"] - want) < 1e-6


def test_tcm_false_means_no_tcm() -> None:
    fn = build_loss("contrastive", tcm=False)
    assert fn.tcm is None
    assert not any(isinstance(m, TCMLoss) for m in fn.modules())


@pytest.mark.parametrize("name", ["proxy_anchor", "arcface", "cosface"])
def test_optimizer_updates_proxies(name: str) -> None:
    emb, labels = _batch(2)
    fn = build_loss(name, tcm=True, num_classes=4, embedding_dim=8)
    params = list(fn.parameters())
    assert params and sum(p.numel() for p in params) >= 4 * 8
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(fn.parameters(), lr=0.5)
    opt.zero_grad()
    fn(emb, labels).backward()
    opt.step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True))


def test_triplet_uses_miner_params() -> None:
    fn = build_loss("triplet", margin=0.1, miner_margin=0.3, type_of_triplets="hard")
    base: Any = fn.base
    assert base.miner.margin == pytest.approx(0.3)
    assert base.miner.type_of_triplets == "hard"
    assert base.loss.margin == pytest.approx(0.1)


def test_aliases_and_case() -> None:
    assert build_loss("RS@k").name == "recall_surrogate"
    assert build_loss("Smooth-AP").name == "smooth_ap"


def test_recall_surrogate_params_pass_through() -> None:
    base: Any = build_loss("recall_surrogate", ks=(1, 2), tau1=0.05, tau2=2.0, chunk_size=3).base
    assert base.ks == (1, 2) and base.tau2 == 2.0 and base.chunk_size == 3


def test_string_labels_for_pair_losses() -> None:
    emb, labels = _batch(3)
    fn = build_loss("multi_similarity", tcm=True)
    a = fn(emb, labels).item()
    b = fn(emb, [f"c{int(v)}" for v in labels]).item()
    assert abs(a - b) < 1e-6


# --- error paths -------------------------------------------------------------------------------


def test_error_unknown_name_lists_valid() -> None:
    with pytest.raises(ValueError, match=r"unknown loss 'foo'.*smooth_ap"):
        build_loss("foo")


def test_error_unknown_param_lists_valid() -> None:
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['tau'\].*temperature"):
        build_loss("smooth_ap", tau=0.1)


def test_error_unknown_tcm_param_lists_valid() -> None:
    with pytest.raises(ValueError, match=r"unknown TCM parameter\(s\) \['margin'\].*margin_pos"):
        build_loss("smooth_ap", tcm={"margin": 0.5})


def test_error_bad_tcm_arg() -> None:
    with pytest.raises(ValueError, match="tcm must be None, False, True or a dict"):
        build_loss("smooth_ap", tcm="yes")  # type: ignore[arg-type]


def test_error_bad_tcm_value_propagates() -> None:
    with pytest.raises(ValueError, match="margin_neg must be < margin_pos"):
        build_loss("smooth_ap", tcm={"margin_pos": 0.2, "margin_neg": 0.4})


@pytest.mark.parametrize("name", ["proxy_anchor", "arcface", "cosface"])
def test_error_missing_num_classes(name: str) -> None:
    with pytest.raises(ValueError, match="needs num_classes"):
        build_loss(name, embedding_dim=8)


@pytest.mark.parametrize("name", ["proxy_anchor", "arcface", "cosface"])
def test_error_missing_embedding_dim(name: str) -> None:
    with pytest.raises(ValueError, match="needs embedding_dim"):
        build_loss(name, num_classes=4)


def test_error_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes must be a positive integer; got 0"):
        build_loss("proxy_anchor", num_classes=0, embedding_dim=8)


def test_error_none_without_tcm() -> None:
    with pytest.raises(ValueError, match="nothing to optimise"):
        build_loss("none", tcm=False)


def test_error_neither_term() -> None:
    with pytest.raises(ValueError, match="got neither"):
        LossWithTCM(None, None)


def test_error_proxy_label_out_of_range() -> None:
    emb, _ = _batch()
    fn = build_loss("proxy_anchor", num_classes=4, embedding_dim=8)
    with pytest.raises(ValueError, match=r"labels in \[0, 4\); got label 4"):
        fn(emb, torch.tensor([0, 1, 2, 4] * 4))


def test_error_proxy_float_labels() -> None:
    emb, _ = _batch()
    fn = build_loss("cosface", num_classes=4, embedding_dim=8)
    with pytest.raises(ValueError, match="integer class ids"):
        fn(emb, torch.zeros(16))


def test_error_length_mismatch() -> None:
    emb, labels = _batch()
    with pytest.raises(ValueError, match="length 15"):
        build_loss("contrastive", tcm=True)(emb, labels[:15])


def test_error_non_finite() -> None:
    emb, labels = _batch()
    emb[3, 0] = float("nan")
    with pytest.raises(ValueError, match="first bad row index 3"):
        build_loss("smooth_ap")(emb, labels)
