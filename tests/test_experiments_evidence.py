"""experiments/evidence.py: the shift figures against a brute-force all-pairs reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _experiments import load_experiment

ROOT = Path(__file__).resolve().parent.parent


evidence = load_experiment("evidence")


def _cos(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def _brute_threshold(sim: np.ndarray, same: np.ndarray, mask: np.ndarray, far: float) -> float:
    """tcm's convention: the linear ``1 - far`` quantile of all impostor similarities."""
    iu = np.triu_indices(len(mask), 1)
    keep = mask[iu[0]] & mask[iu[1]] & ~same[iu]
    return float(np.quantile(sim[iu][keep], 1.0 - far))


def _data(mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    vendors = np.array(["a", "b", "c"])
    if mode == "cross":  # one image per vendor per class, like emoji
        y = np.repeat(np.arange(40), 3)
        g = np.tile(vendors, 40)
    else:
        y = np.repeat(np.arange(40), 6)
        g = np.tile(np.repeat(vendors[:2], 3), 40)
    shift = np.where(g == ("c" if mode == "cross" else "b"), 1.3, 0.8)[:, None]
    x = rng.normal(size=(40, 12))[y] + shift * rng.normal(size=(y.size, 12))
    cal = y < 20
    return x.astype(np.float32), y, g, cal


@pytest.mark.parametrize("mode", ["within", "cross"])
def test_shift_far_ratio_equals_brute_force(tmp_path: Path, mode: str) -> None:
    x, y, g, cal = _data(mode)
    names = np.array([f"k{i}" for i in range(40)])
    npz = tmp_path / "e.npz"
    np.savez(npz, embeddings=x, labels=y, class_names=names, groups=g)
    if mode == "cross":
        bench = evidence.Benchmark("t", (), ("a", "b"), ("c",), "cross")
    else:
        bench = evidence.Benchmark("t", (), ("a",), ("b",), "within")
    far = 0.02
    out = evidence.analyse(npz, bench, far=far, calibration=cal)
    sim = _cos(x)
    same = y[:, None] == y[None, :]
    src = cal & np.isin(g, bench.source)
    t = _brute_threshold(sim, same, src, far)
    # tcm computes cosine similarities in float32: a D-term dot product of unit vectors is off
    # by at most ~D/2 ulps of 1, the two normalisations add ~2 more; (D + 4) eps bounds both
    tol = (x.shape[1] + 4) * float(np.finfo(np.float32).eps)
    assert out["transfer"]["threshold"] == pytest.approx(t, abs=tol)
    t_used = out["transfer"]["threshold"]
    ev = ~cal
    if mode == "within":
        tgt = ev & np.isin(g, bench.target)
        pair = tgt[:, None] & tgt[None, :]
    else:
        is_t = np.isin(g, bench.target)
        pair = ev[:, None] & ev[None, :] & (is_t[:, None] != is_t[None, :])
    iu = np.triu_indices(len(y), 1)
    neg = pair[iu] & ~same[iu]
    pos = pair[iu] & same[iu]
    s = sim[iu]
    # a pair within `tol` of the threshold may fall either side in float32: count both ways
    far_hi = np.count_nonzero(s[neg] >= t_used - tol) / neg.sum()
    far_lo = np.count_nonzero(s[neg] >= t_used + tol) / neg.sum()
    assert far_lo / far <= out["transfer"]["far_ratio"] <= far_hi / far
    tar_hi = np.count_nonzero(s[pos] >= t_used - tol) / pos.sum()
    tar_lo = np.count_nonzero(s[pos] >= t_used + tol) / pos.sum()
    assert tar_lo <= out["transfer"]["target_tar"] <= tar_hi
    dep = out["deployment"]
    assert dep["classes"] == 20 and len(dep["far_per_class"]) == 20
    assert dep["groups"] == ["a", "b", "c"] if mode == "cross" else ["a", "b"]
    if mode == "cross":  # no genuine pair inside one vendor: rates from the cross blocks
        assert dep["group_rates"].startswith("cross-domain")
        assert np.isfinite(dep["garbe"])
