"""Backbones, embedding head, pretrained loading (offline only)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tcm.models import (
    EmbeddingModel,
    ModelSpec,
    available_backbones,
    build_model,
    efficientnet_lite0_weights,
    load_pretrained_backbone,
    model_from_spec,
)

EPS32 = float(torch.finfo(torch.float32).eps)


def unit_tol(dim: int) -> float:
    """|float32 norm of a float32-normalised row - 1| and |entry - exact entry|: the norm is a
    sum of D squares (<= D/2 roundings of eps32/2 relative each, in any order) plus a sqrt, done
    once to normalise and once to measure, plus the division: <= (D + 3) * eps32."""
    return (dim + 3) * EPS32


def test_small_cnn_output_is_unit_norm_and_matches_manual_forward() -> None:
    torch.manual_seed(0)
    m = build_model("small_cnn", embedding_dim=12, image_size=32).eval()
    x = torch.rand(3, 3, 32, 32)
    e = m(x)
    assert e.shape == (3, 12)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3), rtol=0, atol=unit_tol(12))
    raw = m.head(m.backbone(x))  # same modules, same input: the same h as inside m(x)
    ref = raw / torch.sqrt((raw**2).sum(dim=1, keepdim=True))  # independent h / ||h||
    # two float32 normalisations of h (|entries| <= 1): each within unit_tol / 2 of exact
    torch.testing.assert_close(e, ref, rtol=0, atol=unit_tol(12))


def test_unnormalised_option() -> None:
    m = build_model("small_cnn", 4, image_size=16, normalize=False).eval()
    x = torch.rand(2, 3, 16, 16)
    # forward is exactly head(backbone(x)) when not normalising: the same ops on the same input
    # in one process give bit-identical results
    torch.testing.assert_close(m(x), m.head(m.backbone(x)), rtol=0, atol=0)


def test_gradcheck_through_model() -> None:
    torch.manual_seed(0)
    m = build_model("small_cnn", 3, image_size=8, head="bn_linear").double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    m.spec = ModelSpec("small_cnn", 3, 8, "bn_linear", False)  # gradcheck in float64
    # float64 central differences, h = 1e-6, unit-norm output: rounding error ~ eps64 / h
    # ~ 2e-10 per entry (5e-10 measured), truncation ~ h^2 |f'''| ~ 1e-12. atol = 1e-7 keeps a
    # 200x margin and still catches any wrong gradient (|J| ~ 0.1 here); rtol = 0 so the
    # default rtol = 1e-3 * |J| does not hide errors below 1e-4.
    assert torch.autograd.gradcheck(
        lambda t: F.normalize(m(t), dim=1), (x,), eps=1e-6, atol=1e-7, rtol=0
    )


@pytest.mark.parametrize(
    ("name", "size", "feat"),
    [("resnet50", 32, 2048), ("vit_b_16", 32, 768), ("efficientnet_lite0", 32, 1280)],
)
def test_large_backbones_build_offline(name: str, size: int, feat: int) -> None:
    m = build_model(name, embedding_dim=8, image_size=size).eval()
    assert m.head[-1].in_features == feat
    with torch.no_grad():
        assert m(torch.rand(1, 3, size, size)).shape == (1, 8)


def test_efficientnet_lite0_imagenet_weights_from_wheel() -> None:
    path = efficientnet_lite0_weights()
    assert path.is_file()
    ref = torch.load(path, map_location="cpu", weights_only=True)
    m = build_model("efficientnet_lite0", 16, pretrained="imagenet", image_size=64)
    sd = m.backbone.state_dict()
    for k in ("_conv_stem.weight", "_bn1.running_var"):
        assert torch.equal(sd["net." + k], ref[k])
    # the same weights file through the generic --pretrained path
    m2 = build_model("efficientnet_lite0", 16, pretrained=str(path), image_size=64)
    assert torch.equal(m2.backbone.state_dict()["net._conv_stem.weight"], ref["_conv_stem.weight"])


def test_pretrained_roundtrip_all_layouts(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = build_model("small_cnn", 8, image_size=16)
    bsd = src.backbone.state_dict()
    layouts = {
        "backbone.pt": bsd,
        "full.pt": src.state_dict(),
        "ckpt.pt": {"model": src.state_dict(), "step": 3},
        "ddp.pt": {"module." + k: v for k, v in src.state_dict().items()},
    }
    for fname, obj in layouts.items():
        torch.save(obj, tmp_path / fname)
        torch.manual_seed(2)
        dst = build_model("small_cnn", 8, pretrained=tmp_path / fname, image_size=16)
        got = dst.backbone.state_dict()
        assert all(torch.equal(got[k], bsd[k]) for k in bsd), fname


def test_pretrained_ignores_original_classifier(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    torch.save(resnet50(weights=None).state_dict(), tmp_path / "r50.pth")  # has fc.weight / fc.bias
    m = build_model("resnet50", 8, pretrained=tmp_path / "r50.pth", image_size=32)
    assert isinstance(m, EmbeddingModel)


def test_checkpoint_from_another_architecture_is_rejected(tmp_path: Path) -> None:
    torch.save(build_model("small_cnn", 8, image_size=32).state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(
        ValueError, match=r"do not match backbone 'resnet50'.*missing key.*another architecture"
    ):
        build_model("resnet50", 8, pretrained=tmp_path / "cnn.pt", image_size=32)


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    sd = build_model("small_cnn", 8, image_size=16).backbone.state_dict()
    sd["features.0.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(
        ValueError, match=r"features\.0\.weight: file \(5, 3, 3, 3\) vs model \(32, 3, 3, 3\)"
    ):
        build_model("small_cnn", 8, pretrained=tmp_path / "bad.pt", image_size=16)


def test_pretrained_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pretrained weights file not found"):
        build_model("small_cnn", 8, pretrained=tmp_path / "nope.pt", image_size=16)


def test_pretrained_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not contain a state dict"):
        load_pretrained_backbone(build_model("small_cnn", 8, image_size=16), tmp_path / "list.pt")


def test_pretrained_unreadable(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not read pretrained weights"):
        build_model("small_cnn", 8, pretrained=tmp_path / "junk.pt", image_size=16)


def test_pretrained_with_objects_is_refused_in_one_line(tmp_path: Path) -> None:
    import numpy as np

    torch.save({"w": np.zeros(3)}, tmp_path / "np.pt")  # needs a numpy global to unpickle
    with pytest.raises(ValueError) as info:
        build_model("small_cnn", 8, pretrained=tmp_path / "np.pt", image_size=16)
    msg = str(info.value)
    assert "\n" not in msg and "weights_only" not in msg
    assert f"pretrained weights file {tmp_path / 'np.pt'}" in msg
    assert "does not load for safety" in msg


def test_imagenet_unavailable_offline_for_torchvision() -> None:
    with pytest.raises(ValueError, match="not available offline"):
        build_model("resnet50", 8, pretrained="imagenet", image_size=32)


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'"):
        build_model("resnet51", 8)


def test_vit_image_size_must_divide_16() -> None:
    with pytest.raises(ValueError, match="divisible by 16; got 30"):
        build_model("vit_b_16", 8, image_size=30)


@pytest.mark.parametrize("size", [4, 32.0, True])
def test_bad_image_size(size: object) -> None:
    with pytest.raises(ValueError, match="image_size must be an integer"):
        build_model("small_cnn", 8, image_size=size)  # type: ignore[arg-type]


@pytest.mark.parametrize("dim", [0, -3, 2.5])
def test_bad_embedding_dim(dim: object) -> None:
    with pytest.raises(ValueError, match="embedding_dim must be a positive integer"):
        build_model("small_cnn", dim)  # type: ignore[arg-type]


def test_bad_head() -> None:
    with pytest.raises(ValueError, match="head must be one of"):
        build_model("small_cnn", 8, head="mlp")


def test_bad_input_rank() -> None:
    m = build_model("small_cnn", 8, image_size=16)
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\); got shape \(3, 16, 16\)"):
        m(torch.rand(3, 16, 16))


def test_model_from_spec_roundtrip_and_bad_spec() -> None:
    m = build_model("small_cnn", 6, image_size=16, head="bn_linear")
    m2 = model_from_spec(m.spec.to_dict())
    assert m2.spec == m.spec
    m2.load_state_dict(m.state_dict())
    with pytest.raises(ValueError, match="invalid model spec"):
        model_from_spec({"backbone": "small_cnn", "depth": 3})


def test_timm_backbone() -> None:
    if importlib.util.find_spec("timm") is None:
        assert "timm:<name>" not in available_backbones()
        with pytest.raises(ValueError, match="needs timm"):
            build_model("timm:resnet18", 8, image_size=32)
    else:  # pragma: no cover - timm not in the default environment
        m = build_model("timm:resnet18", 8, image_size=32).eval()
        assert m(torch.rand(1, 3, 32, 32)).shape == (1, 8)
