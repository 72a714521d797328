"""calibration_transfer against an independent brute force over all pairs of both sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcm.metrics.transfer import calibration_transfer


def _set(seed: int, noise: float, n_cls: int = 15, per: int = 6):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_cls), per)
    x = rng.normal(size=(n_cls, 8))[y] + noise * rng.normal(size=(y.shape[0], 8))
    g = np.where(np.arange(y.shape[0]) % 3 == 0, "b", "a")
    return x, y, g


def _pairs(x: np.ndarray, y: np.ndarray):
    xn = torch.as_tensor(x / np.linalg.norm(x, axis=1, keepdims=True))
    s = (xn @ xn.T).numpy()
    i, j = np.triu_indices(len(y), 1)
    return s[i, j], i, j, y[i] == y[j]


def test_transfer_equals_brute_force() -> None:
    xs, ys, _ = _set(0, 0.6)
    xt, yt, gt = _set(1, 1.0)
    f = 0.02
    tr = calibration_transfer(xs, ys, xt, yt, far=f, target_groups=gt, block_size=16)
    s, _, _, same = _pairs(xs, ys)
    t = float(np.quantile(s[~same], 1 - f))
    assert tr.threshold == pytest.approx(t, rel=1e-12)
    assert tr.source_tar == np.count_nonzero(s[same] >= tr.threshold) / np.count_nonzero(same)
    s2, i2, j2, same2 = _pairs(xt, yt)
    tf = np.count_nonzero(s2[~same2] >= tr.threshold) / np.count_nonzero(~same2)
    assert tr.target_far == tf and tr.far_ratio == pytest.approx(tf / f, rel=1e-15)
    tt = np.count_nonzero(s2[same2] >= tr.threshold) / np.count_nonzero(same2)
    assert tr.target_tar == tt and tr.tar_change == pytest.approx(tt - tr.source_tar, abs=1e-15)
    assert tr.target_threshold == pytest.approx(np.quantile(s2[~same2], 1 - f), rel=1e-12)
    class_far = []
    for c in np.unique(yt):
        one = (yt[i2] == c) ^ (yt[j2] == c)
        class_far.append(np.count_nonzero(s2[one] >= tr.threshold) / np.count_nonzero(one))
    class_far_a = np.array(class_far)
    assert tr.class_far["max"] == pytest.approx(class_far_a.max(), rel=1e-15)
    assert tr.class_far["p50"] == pytest.approx(np.median(class_far_a), rel=1e-12)
    assert tr.classes_over_2x == int(np.count_nonzero(class_far_a > 2 * f))
    assert tr.target_groups is not None and tr.source_groups is None
    b = tr.target_groups.groups.tolist().index("b")
    in_b = (gt[i2] == "b") & (gt[j2] == "b") & ~same2
    assert tr.target_groups.far[b] == np.count_nonzero(s2[in_b] >= tr.threshold) / in_b.sum()


def test_transfer_intervals_and_errors() -> None:
    xs, ys, _ = _set(2, 0.6, n_cls=30)
    xt, yt, _ = _set(3, 0.9, n_cls=30)
    a = calibration_transfer(xs, ys, xt, yt, far=0.01, ci=0.9, n_boot=300, seed=1)
    b = calibration_transfer(xs, ys, xt, yt, far=0.01, ci=0.9, n_boot=300, seed=1)
    assert a.intervals["far_ratio"] == b.intervals["far_ratio"]
    iv = a.intervals["target_far"]
    assert iv.lo <= a.target_far <= iv.hi
    with pytest.raises(ValueError, match="target: no negative pairs"):
        calibration_transfer(xs, ys, xt[:6], np.zeros(6, dtype=int), far=0.01)
    with pytest.raises(ValueError, match="dimension"):
        calibration_transfer(xs, ys, xt[:, :4], yt, far=0.01)
    with pytest.raises(ValueError, match="far"):
        calibration_transfer(xs, ys, xt, yt, far=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        calibration_transfer(xs, ys, xt, yt, far=0.01, ci=0.9, n_boot=0)
