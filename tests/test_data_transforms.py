"""Tests for tcm.data.transforms and the DMLDataset base classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcm.data import TensorImageDataset, test_transform, train_transform
from tcm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resolve_transform

EPS32 = float(torch.finfo(torch.float32).eps)


def norm_tol(v: float, c: int) -> float:
    """Bound on |float32 ((v - mean) / std) - exact| for a pixel value ``v`` in [0, 1].

    The uint8 resize/affine steps are integer arithmetic (a constant image stays exactly
    constant); only ``ToDtype`` (v = p / 255: <= 2 roundings), the float32 mean and std
    constants, the subtraction and the division round, each by at most eps32 / 2 relative:
    in total <= 2.5 * eps32 * (v + mean) / std. 4 * eps32 * (v + mean) / std bounds it on any
    CPU (elementwise ops only: no summation order is involved).
    """
    return 4 * EPS32 * (v + IMAGENET_MEAN[c]) / IMAGENET_STD[c]


def test_photo_test_pipeline_brute_force() -> None:
    # a constant image stays constant: output = (v / 255 - mean) / std per channel
    img = torch.full((3, 50, 70), 128, dtype=torch.uint8)
    out = test_transform("photo", 32)(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    for c in range(3):
        ref = (128 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(
            out[c].double(),
            torch.full((32, 32), ref, dtype=torch.float64),
            rtol=0,
            atol=norm_tol(128 / 255, c),
        )


def test_photo_test_pipeline_centre_crop() -> None:
    # left half black, right half white: resize + centre crop keep the edge in the middle, so
    # the pixel values (before Normalize) are antisymmetric: p(col) + p(15 - col) = 1
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    img[:, :, 32:] = 255
    out = test_transform("photo", 16)(img)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)[:, None, None]
    p = out.double() * std + mean  # back to [0, 1]
    # the uint8 resize rounds each column on its own: the two sides of a pair may each be off
    # by half a level (1 / 255 together); plus the float32 Normalize rounding (norm_tol)
    tol = 1 / 255 + 2 * 4 * EPS32 * (1 + max(IMAGENET_MEAN))
    torch.testing.assert_close(p + p.flip(2), torch.ones_like(p), rtol=0, atol=tol)
    assert float(p[:, :, :4].max()) < tol and float(p[:, :, 12:].min()) > 1 - tol  # flat parts
    assert float(out[0, 0, 0]) < 0 < float(out[0, 0, -1])


def test_train_photo_random_and_seeded() -> None:
    img = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    t = train_transform("photo", 24)
    torch.manual_seed(1)
    a = t(img)
    torch.manual_seed(1)
    b = t(img)
    assert torch.equal(a, b) and a.shape == (3, 24, 24)
    outs = {tuple(t(img).flatten()[:20].tolist()) for _ in range(5)}
    assert len(outs) > 1


def test_glyph_train_has_no_flip() -> None:
    # an asymmetric glyph (bar on the left) must stay on the left after any train augmentation
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    img[:, 4:28, 4:10] = 255
    t = train_transform("glyph", 32)
    for seed in range(30):
        torch.manual_seed(seed)
        out = t(img)
        cols = out[0].mean(0)
        assert float(cols[:16].sum()) > float(cols[16:].sum())
        # fill is black: the border stays at the normalised value of 0
        assert float(out[0, 31, 31]) == pytest.approx(
            (0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], rel=0, abs=norm_tol(0.0, 0)
        )


def test_emoji_fill_is_white() -> None:
    img = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    t = train_transform("emoji", 32)
    torch.manual_seed(0)
    out = t(img)
    # white image, white fill, integer affine: every output pixel is the normalised white
    for c in range(3):
        ref = (1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(
            out[c].double(),
            torch.full((32, 32), ref, dtype=torch.float64),
            rtol=0,
            atol=norm_tol(1.0, c),
        )


def test_resolve_transform() -> None:
    assert resolve_transform(None, "photo", "train", 32) is None
    f = resolve_transform("default", "glyph", "test", 32)
    assert f is not None
    g = lambda t: t  # noqa: E731
    assert resolve_transform(g, "photo", "train", 32) is g


def test_error_bad_kind() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        train_transform("video", 32)


def test_error_bad_size() -> None:
    with pytest.raises(ValueError, match="image_size"):
        test_transform("photo", 3)


def test_error_bad_transform_arg() -> None:
    with pytest.raises(ValueError, match="transform must be"):
        resolve_transform(42, "photo", "train", 32)


def test_tensor_dataset_contract() -> None:
    imgs = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    ds = TensorImageDataset("toy", "train", imgs, np.array([1, 0]), ["a", "b"])
    x, y = ds[0]
    assert torch.equal(x, imgs[0].float() / 255) and y == 1
    assert ds.num_classes == 2 and ds.class_counts().tolist() == [1, 1]
    assert "num_samples=2" in repr(ds)


def test_tensor_dataset_errors() -> None:
    imgs = torch.zeros(2, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="labels must lie in"):
        TensorImageDataset("t", "train", imgs, np.array([0, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="integer class codes"):
        TensorImageDataset("t", "train", imgs, np.array([0.5, 1.0]), ["a", "b"])
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset("t", "train", imgs.float(), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        TensorImageDataset("t", "train", imgs, np.array([0, 1, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="1-D"):
        TensorImageDataset("t", "train", imgs, np.zeros((2, 1), dtype=np.int64), ["a"])
    with pytest.raises(ValueError, match="callable"):
        TensorImageDataset("t", "train", imgs, np.array([0, 1]), ["a", "b"], transform=3)  # type: ignore[arg-type]
