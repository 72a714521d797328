"""Training loop: outputs, determinism, exact resume, Ctrl-C, NaN loss, atomic checkpoints."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tcm.losses as tlosses
from conftest import TINY_OVERRIDES, tiny_dataset
from tcm._io import write_embeddings
from tcm.train.checkpoint import load_checkpoint, save_checkpoint
from tcm.train.config import load_config
from tcm.train.evaluation import compute_metrics, metric_table
from tcm.train.loop import (
    StepInfo,
    TrainingDivergedError,
    load_model,
    train,
)
from tcm.train.step import lr_lambda


@pytest.fixture(autouse=True)
def _tiny(tiny_data: None) -> None:
    """Every test here trains on the tiny synthetic dataset (``data.name=tiny``)."""


def tiny_cfg(out: Path, *extra: str) -> Any:
    return load_config(None, [f"output_dir={out}", *TINY_OVERRIDES, *extra])


def params_of(path: Path) -> dict[str, torch.Tensor]:
    return dict(load_checkpoint(path)["model"])


def test_train_writes_all_outputs(tmp_path: Path) -> None:
    res = train(tiny_cfg(tmp_path), echo=None)
    assert res.steps == 4 and res.epochs_completed == 2 and not res.interrupted
    for f in ("last.pt", "best.pt", "log.csv", "metrics.json", "embeddings.npz", "config.yaml"):
        assert (tmp_path / f).is_file(), f
    assert any((tmp_path / "tb").iterdir())
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [r["step"] for r in rows if r["kind"] == "train"] == ["1", "2", "3", "4"]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == ["2", "4"]
    assert {r["split"] for r in rows if r["kind"] == "eval"} == {"validation"}
    assert [r["kind"] for r in rows][-1] == "test"
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["best"]["metrics"] == res.best_metrics
    assert summary["test"]["metrics"] == res.test_metrics
    assert summary["test"]["step"] == summary["best"]["step"]
    assert summary["selection"]["split"] == "validation"
    assert set(res.best_metrics or {}) >= {"recall_at_1", "map_at_r", "opis", "epsilon_opis_0.05"}
    with np.load(tmp_path / "embeddings.npz") as z:
        assert z["embeddings"].shape == (36, 8) and z["labels"].shape == (36,)
        assert list(z["class_names"][:2]) == ["c100", "c101"]
        # the stored embeddings are those of the best checkpoint on the test split
        model, _ = load_model(tmp_path / "best.pt")
        ds = tiny_dataset("test", 16)
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        with torch.no_grad():
            np.testing.assert_allclose(model(x).numpy(), z["embeddings"], atol=1e-5)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_same_seed_same_weights_and_different_seed_differs(tmp_path: Path) -> None:
    train(tiny_cfg(tmp_path / "a", "train.epochs=1", "train.tensorboard=false"), echo=None)
    train(tiny_cfg(tmp_path / "b", "train.epochs=1", "train.tensorboard=false"), echo=None)
    train(
        tiny_cfg(tmp_path / "c", "train.epochs=1", "train.tensorboard=false", "seed=1"), echo=None
    )
    a, b, c = (params_of(tmp_path / d / "last.pt") for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


class _StopAt:
    def __init__(self, step: int, how: str = "raise") -> None:
        self.step, self.how = step, how

    def __call__(self, info: StepInfo) -> None:
        if info.step == self.step:
            if self.how == "signal":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt


@pytest.mark.parametrize("stop_at", [2, 3])  # epoch boundary and mid-epoch
def test_resume_is_exact(tmp_path: Path, stop_at: int) -> None:
    extra = ("train.tensorboard=false", "optim.warmup_steps=2", "train.epochs=3")
    full = train(tiny_cfg(tmp_path / "full", *extra), echo=None)
    part = tmp_path / "part"
    res = train(tiny_cfg(part, *extra), hooks=[_StopAt(stop_at)], echo=None)
    assert res.interrupted and res.steps == stop_at
    assert load_checkpoint(part / "last.pt")["step"] == stop_at
    res2 = train(tiny_cfg(part, *extra), resume=True, echo=None)
    assert res2.steps == full.steps == 6 and not res2.interrupted
    a, b = params_of(tmp_path / "full" / "last.pt"), params_of(part / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert res2.best_metrics == full.best_metrics
    steps = [r["step"] for r in csv.DictReader(open(part / "log.csv")) if r["kind"] == "train"]
    assert steps == [str(i) for i in range(1, 7)]


def test_sigint_saves_and_exits_cleanly(tmp_path: Path) -> None:
    old = signal.getsignal(signal.SIGINT)
    res = train(
        tiny_cfg(tmp_path, "train.tensorboard=false"), hooks=[_StopAt(1, "signal")], echo=None
    )
    assert res.interrupted and res.steps == 1
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1
    assert signal.getsignal(signal.SIGINT) is old  # handler restored


def test_nan_loss_stops_naming_step_and_lr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tlosses.build_loss
    cfg = tiny_cfg(tmp_path, "train.tensorboard=false", "optim.lr=0.001")

    class NaNAfter(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            out: torch.Tensor = self.inner(e, y)
            return out * math.nan if self.calls == 3 else out

    monkeypatch.setattr(tlosses, "build_loss", lambda *a, **k: NaNAfter(real(*a, **k)))
    with pytest.raises(
        TrainingDivergedError, match=r"step 3 .*lower learning rate.*optim.lr=0.0001"
    ):
        train(cfg, echo=None)


def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot resume: no checkpoint"):
        train(tiny_cfg(tmp_path), resume=True, echo=None)


def test_resume_with_other_architecture_is_an_error(tmp_path: Path) -> None:
    train(tiny_cfg(tmp_path, "train.epochs=1", "train.tensorboard=false"), echo=None)
    with pytest.raises(ValueError, match="cannot resume"):
        train(
            tiny_cfg(tmp_path, "model.embedding_dim=4", "train.tensorboard=false"),
            resume=True,
            echo=None,
        )


def test_unknown_dataset_error_propagates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'missing'"):
        train(tiny_cfg(tmp_path, "data.name=missing"), echo=None)


def test_load_model_rejects_checkpoint_of_other_architecture(tmp_path: Path) -> None:
    train(tiny_cfg(tmp_path, "train.epochs=1", "train.tensorboard=false"), echo=None)
    ck = load_checkpoint(tmp_path / "last.pt")
    ck["model_spec"]["backbone"] = "resnet50"
    save_checkpoint(ck, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit architecture"):
        load_model(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a tcm training checkpoint"):
        load_model(tmp_path / "plain.pt")


def test_crash_during_checkpoint_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def broken_save(obj: Any, fh: Any) -> None:
        fh.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tcm.train.checkpoint.torch.save", broken_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    got = load_checkpoint(path)
    assert got["step"] == 1 and torch.equal(got["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_crash_during_training_checkpoint_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(tiny_cfg(tmp_path, "train.epochs=1", "train.tensorboard=false"), echo=None)
    before = load_checkpoint(tmp_path / "last.pt")

    def killed(obj: Any, fh: Any) -> None:
        fh.write(b"\x00" * 10)
        raise KeyboardInterrupt  # e.g. a kill arriving mid-write

    monkeypatch.setattr("tcm.train.checkpoint.torch.save", killed)
    res = train(
        tiny_cfg(tmp_path, "train.epochs=2", "train.tensorboard=false"), resume=True, echo=None
    )
    # every save is interrupted: the run stops and says that no new checkpoint was written
    assert res.interrupted and not res.checkpoint_saved
    monkeypatch.undo()
    after = load_checkpoint(tmp_path / "last.pt")
    assert after["step"] == before["step"] == 2
    assert all(torch.equal(after["model"][k], before["model"][k]) for k in before["model"])


def test_corrupt_checkpoint_is_a_value_error(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_lr_schedule_matches_formula() -> None:
    cfg = load_config(
        None, ["optim.warmup_steps=4", "optim.schedule=cosine", "optim.min_lr_ratio=0.1"]
    )
    f = lr_lambda(cfg, 24)
    for s in range(4):
        assert f(s) == pytest.approx((s + 1) / 4)
    for s in range(4, 25):
        p = (s - 4) / 20
        assert f(s) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
    g = lr_lambda(
        load_config(None, ["optim.schedule=step", "optim.step_size=3", "optim.gamma=0.5"]), 10
    )
    assert [g(s) for s in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    h = lr_lambda(load_config(None, ["optim.schedule=constant"]), 10)
    assert h(0) == h(9) == 1.0


def test_sgd_and_bn_head_train(tmp_path: Path) -> None:
    res = train(
        tiny_cfg(
            tmp_path,
            "optim.name=sgd",
            "model.head=bn_linear",
            "train.epochs=1",
            "train.tensorboard=false",
            "loss.tcm.enabled=true",
        ),
        echo=None,
    )
    assert res.steps == 2 and res.best_metrics is not None


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_write_embeddings_roundtrip(tmp_path: Path, suffix: str) -> None:
    from tcm.cli.main import _load_source

    e = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 2, 0])
    p = write_embeddings(tmp_path / f"e{suffix}", e, y, ["a", "b", "c"])
    f = _load_source(p)
    e2, y2, names = f.embeddings, f.labels, f.class_names
    np.testing.assert_array_equal(e2, e)
    np.testing.assert_array_equal(y2, y)
    assert names == ["a", "b", "c"]


def _brute_r1_and_tar(e: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float]:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    n = len(y)
    hits = 0
    for i in range(n):
        sims = [(s[i, j], j) for j in range(n) if j != i]
        best = max(sims)[1]
        hits += int(y[best] == y[i])
    pos = [s[i, j] for i in range(n) for j in range(i + 1, n) if y[i] == y[j]]
    return hits / n, float(np.mean(np.asarray(pos) >= t))


def test_compute_metrics_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(6), 5)
    e = rng.normal(size=(6, 8))[y] + 0.8 * rng.normal(size=(30, 8))
    m = compute_metrics(e, y, tar_fars=(1e-1,), num_thresholds=11)
    r1, tar = _brute_r1_and_tar(e, y, m["threshold_at_far_1e-01"])
    assert m["recall_at_1"] == pytest.approx(r1)
    assert m["tar_at_far_1e-01"] == pytest.approx(tar)
    table = metric_table({"run": m})
    assert "Recall@1" in table and "eps-OPIS 5%" in table and "TAR@FAR=1e-01" in table


def test_training_state_schema_round_trip_and_errors(tmp_path: Path) -> None:
    from tcm.train.checkpoint import TrainingState

    train(tiny_cfg(tmp_path, "train.epochs=1", "train.tensorboard=false"), echo=None)
    st = TrainingState.load(tmp_path / "last.pt")
    assert st.step == 2 and st.selection["split"] == "validation" and st.rng
    st.save(tmp_path / "copy.pt")
    again = TrainingState.load(tmp_path / "copy.pt")
    assert again.to_dict().keys() == st.to_dict().keys()
    d = st.to_dict()
    del d["optimizer"]
    save_checkpoint(d, tmp_path / "partial.pt")
    with pytest.raises(
        ValueError, match=r"not a complete tcm training checkpoint: no \['optimizer'\]"
    ):
        TrainingState.load(tmp_path / "partial.pt")


def test_eval_max_classes_keeps_ids_and_groups_of_the_kept_samples(tmp_path: Path) -> None:
    """``eval.max_classes`` cuts the test embeddings to a subset of classes: the ids / groups
    written next to them must be those of the kept samples (was: exit 2 at the test step)."""
    from tcm.data.embedding_file import read_embedding_file
    from tcm.train.datasets import register_dataset

    def provider(data: Any, split: str) -> Any:
        ds = tiny_dataset(split, data.image_size)
        ds.ids = [f"{split}-{i}" for i in range(len(ds))]
        ds.domains = [f"d{i % 3}" for i in range(len(ds))]
        return ds

    register_dataset("tiny", provider)  # the autouse fixture unregisters it afterwards
    res = train(
        tiny_cfg(tmp_path, "train.epochs=1", "train.tensorboard=false", "eval.max_classes=3"),
        echo=None,
    )
    assert res.test_metrics is not None and not res.interrupted
    f = read_embedding_file(tmp_path / "embeddings.npz")
    assert f.labels is not None and f.ids is not None and f.groups is not None
    assert f.embeddings.shape == (18, 8) and len(np.unique(f.labels)) == 3
    test = tiny_dataset("test", 16)
    rows = [int(s.removeprefix("test-")) for s in f.ids]
    assert rows == sorted(rows)  # dataset order
    np.testing.assert_array_equal(test.labels[rows], f.labels)
    assert f.groups.tolist() == [f"d{i % 3}" for i in rows]
    model, _ = load_model(tmp_path / "best.pt")
    x = torch.stack([test[i][0] for i in rows])
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), f.embeddings, atol=1e-5)


# ----------------------------------------------------------------- time-based checkpoints


class _Crash:
    """Raises ``RuntimeError`` in the hook of step ``step``: the run dies like ``kill -9``, without
    writing a checkpoint (only a ``KeyboardInterrupt`` saves ``last.pt``)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, info: StepInfo) -> None:
        if info.step == self.step:
            raise RuntimeError("killed")


_EXACT = ("train.tensorboard=false", "optim.warmup_steps=2", "train.epochs=2")
_EXACT += ("train.steps_per_epoch=4",)  # 4 batches per epoch: mid-epoch positions 1, 2, 3


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``uninterrupted(workers) -> (final weights, TrainResult)`` of a run never stopped."""
    from conftest import tiny_provider
    from tcm.train.datasets import register_dataset, unregister_dataset

    cache: dict[int, Any] = {}

    def get(workers: int) -> Any:
        if workers not in cache:
            out = tmp_path_factory.mktemp(f"full{workers}")
            register_dataset("tiny", tiny_provider)
            try:
                res = train(tiny_cfg(out, *_EXACT, f"data.num_workers={workers}"), echo=None)
            finally:
                unregister_dataset("tiny")
            cache[workers] = (params_of(out / "last.pt"), res)
        return cache[workers]

    return get


@pytest.mark.parametrize(
    ("workers", "crash_at"),
    [(0, 3), (0, 4), (2, 2), (2, 3), (2, 4), (2, 6)],  # saved at in_epoch 1, 2, 3 / epoch 2
)
def test_time_based_checkpoint_resumes_exactly_mid_epoch(
    tmp_path: Path, uninterrupted: Any, workers: int, crash_at: int
) -> None:
    """``train.checkpoint_interval_s`` rewrites ``last.pt`` between evaluations; a run killed
    after it resumes from that step (mid-epoch) and ends bit-identical to an uninterrupted run,
    also with data-loader workers (their RNG streams are stored and restored)."""
    cfg = (*_EXACT, f"data.num_workers={workers}")
    with pytest.raises(RuntimeError, match="killed"):
        train(
            tiny_cfg(tmp_path, *cfg, "train.checkpoint_interval_s=1e-9"),
            hooks=[_Crash(crash_at)],
            echo=None,
        )
    st = load_checkpoint(tmp_path / "last.pt")
    assert st["step"] == crash_at - 1 and st["in_epoch"] == (crash_at - 1) % 4 != 0
    notes: list[str] = []
    res = train(tiny_cfg(tmp_path, *cfg), resume=True, echo=notes.append)
    assert not any("differs from an uninterrupted run" in n for n in notes), notes
    ref, full = uninterrupted(workers)
    got = params_of(tmp_path / "last.pt")
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    assert res.best_metrics == full.best_metrics and res.test_metrics == full.test_metrics
    steps = [r["step"] for r in csv.DictReader(open(tmp_path / "log.csv")) if r["kind"] == "train"]
    assert steps == [str(i) for i in range(1, 9)]


def test_resume_with_other_worker_count_says_augmentation_differs(tmp_path: Path) -> None:
    cfg = (*_EXACT, "train.checkpoint_interval_s=1e-9")
    with pytest.raises(RuntimeError, match="killed"):
        train(tiny_cfg(tmp_path, *cfg, "data.num_workers=2"), hooks=[_Crash(4)], echo=None)
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # more workers than this machine's cores
        res = train(tiny_cfg(tmp_path, *cfg, "data.num_workers=3"), resume=True, echo=notes.append)
    assert res.steps == 8 and not res.interrupted
    assert any("holds no RNG states for 3 data-loader workers" in n for n in notes), notes


@pytest.mark.parametrize(
    ("interval", "time_saves"),
    [("250", [3, 6]), ("0", []), ("null", []), ("1000", [])],
)
def test_checkpoint_interval_saves_last_when_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: str, time_saves: list[int]
) -> None:
    """A fake clock advancing 100 s per step: ``last.pt`` is rewritten at the first step boundary
    at least ``interval`` seconds after the previous write (evaluations write it too)."""
    import tcm.train.checkpoint as ckpt
    import tcm.train.loop as loop

    now = [0.0]
    monkeypatch.setattr(loop, "_clock", lambda: now[0])

    def tick(info: StepInfo) -> None:
        now[0] = 100.0 * info.step

    saves: list[int] = []
    real = ckpt.save_checkpoint

    def spy(state: Any, path: Any) -> Path:
        if Path(path).name == "last.pt":
            saves.append(int(state["step"]))
        return real(state, path)

    monkeypatch.setattr(ckpt, "save_checkpoint", spy)
    cfg = tiny_cfg(
        tmp_path,
        "train.tensorboard=false",
        "train.epochs=2",
        "train.steps_per_epoch=4",
        "train.eval_every=2",
        f"train.checkpoint_interval_s={interval}",
    )
    train(cfg, hooks=[tick], echo=None)
    # the evaluation at step 8 writes last.pt before and after it
    assert saves == [*time_saves, 8, 8]


def test_load_model_gives_the_typed_config_even_when_the_data_root_is_gone(
    tmp_path: Path,
) -> None:
    """``load_model`` returns the checkpoint's TrainingState with a validated TrainingConfig;
    checks of the machine that trained (data root, weights file) are not repeated."""
    from tcm.train.config import TrainingConfig

    root = tmp_path / "root"
    root.mkdir()
    out = tmp_path / "run"
    train(tiny_cfg(out, "train.epochs=1", f"data.root={root}"), echo=None)
    root.rmdir()
    model, state = load_model(out / "best.pt")
    assert isinstance(state.config, TrainingConfig)
    assert (state.config.data.name, state.config.data.root) == ("tiny", str(root))
    assert state.to_dict()["config"] == state.config.model_dump(mode="json")
    assert not model.training


def test_trainer_parts_are_built_once_and_frozen(tmp_path: Path) -> None:
    """Trainer creates every attribute in ``__init__``; the run's components are one frozen
    value and what changes while training is in ``progress``."""
    import dataclasses

    from tcm.train.loop import Trainer

    t = Trainer(tiny_cfg(tmp_path, "train.epochs=1", "train.tensorboard=false"), echo=None)
    before = set(vars(t))
    with pytest.raises(RuntimeError, match=r"built by Trainer\.run"):
        _ = t.parts
    res = t.run()
    assert set(vars(t)) == before
    assert res.steps == t.progress.step == t.parts.total == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.parts.total = 3  # type: ignore[misc]
