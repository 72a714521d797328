"""`tcm` CLI: train / evaluate / calibrate / embed / report / demo, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tcm.data as tdata
from conftest import tiny_dataset
from tcm.cli.main import main
from tcm.data.embedding_file import read_embedding_file
from tcm.data.samplers import ClassBalancedBatchSampler

TINY = [
    "data.image_size=16",
    "data.batch_size=8",
    "data.m_per_class=2",
    "model.embedding_dim=8",
    "train.epochs=1",
    "train.steps_per_epoch=2",
    "train.progress=false",
    "train.device=cpu",
    "train.tensorboard=false",
    "eval.num_thresholds=11",
]


def fake_load(
    name: str,
    split: str = "train",
    root: Any = None,
    image_size: Any = None,
    transform: Any = "default",
    **kw: Any,
) -> Any:
    """``tcm.data.load`` for the tiny dataset: ``evaluate`` / ``embed`` of a checkpoint load data
    through ``tcm.data.load`` (training uses the ``tcm.train`` dataset seam instead)."""
    if root is not None and not Path(root).exists():
        raise ValueError(f"dataset root not found: {root}")
    return tiny_dataset(split, image_size, augment=False)


@pytest.fixture(autouse=True)
def tiny_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tdata, "load", fake_load, raising=False)
    if not hasattr(tdata, "ClassBalancedBatchSampler"):
        monkeypatch.setattr(
            tdata, "ClassBalancedBatchSampler", ClassBalancedBatchSampler, raising=False
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setattr(tdata, "load", fake_load, raising=False)
    try:
        assert main(["train", *TINY, f"output_dir={out}"]) == 0
    finally:
        mp.undo()
    return out


def brute_pairs(e: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    i, j = np.triu_indices(len(y), 1)
    return (e @ e.T)[i, j], i, j


def test_train_prints_table(
    trained: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\n")
    assert main(["train", "--config", str(cfg), *TINY, f"output_dir={tmp_path / 'r'}"]) == 0
    out = capsys.readouterr().out
    assert "Recall@1" in out and "OPIS" in out and "best.pt" in out
    assert (trained / "best.pt").is_file()


def test_train_bad_override_exits_2_naming_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "optim.learning_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert "optim.learning_rate: unknown key" in err


def test_train_pretrained_from_other_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tcm.models import build_model

    torch.save(build_model("resnet50", 8, image_size=32).state_dict(), tmp_path / "r50.pt")
    assert main(["train", *TINY, "--pretrained", str(tmp_path / "r50.pt")]) == 2
    err = capsys.readouterr().err
    assert "do not match backbone 'small_cnn'" in err and "another architecture" in err


def test_train_missing_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["train", "--config", str(tmp_path / "x.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_train_missing_data_root(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["train", *TINY, f"data.root={tmp_path / 'gone'}"]) == 2
    assert "data root does not exist" in capsys.readouterr().err


def test_train_nan_loss_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tcm.losses as tlosses

    class NaNLoss(torch.nn.Module):
        def forward(self, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return e.sum() * float("nan")

    monkeypatch.setattr(tlosses, "build_loss", lambda *a, **k: NaNLoss())
    assert main(["train", *TINY, f"output_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "step 1" in err and "lower learning rate" in err


def test_train_interrupt_exits_130_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tcm.train.loop as loop

    real = loop.train

    def interrupted(cfg: Any, **kw: Any) -> Any:
        def hook(info: Any) -> None:
            raise KeyboardInterrupt

        return real(cfg, hooks=[hook], **kw) if not kw.get("resume") else real(cfg, **kw)

    monkeypatch.setattr(loop, "train", interrupted)
    args = ["train", *TINY, f"output_dir={tmp_path}"]
    assert main(args) == 130
    assert "--resume" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0


def test_evaluate_checkpoint_table_and_json(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    js = tmp_path / "m.json"
    assert main(["evaluate", str(trained / "best.pt"), "--data", "tiny", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    for label in (
        "Recall@1",
        "Recall@2",
        "Recall@4",
        "Recall@8",
        "MAP@R",
        "R-precision",
        "OPIS",
        "eps-OPIS 5%",
        "eps-OPIS 10%",
        "TAR@FAR=1e-04",
        "TAR@FAR=1e-01",
    ):
        assert label in out, label
    m = json.loads(js.read_text())["metrics"]
    with np.load(trained / "embeddings.npz") as z:  # best model's test embeddings
        e, y = z["embeddings"], z["labels"]
    s, i, j = brute_pairs(e, y)
    t = m["threshold_at_far_1e-01"]
    assert m["tar_at_far_1e-01"] == pytest.approx(np.mean(s[y[i] == y[j]] >= t), abs=1e-6)


def test_evaluate_npz_and_run_dir_agree(trained: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["evaluate", str(trained / "embeddings.npz"), "--json", str(a)]) == 0
    assert main(["evaluate", str(trained), "--json", str(b)]) == 0
    assert json.loads(a.read_text())["metrics"] == json.loads(b.read_text())["metrics"]


def test_evaluate_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["evaluate", str(tmp_path / "none.npz")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_evaluate_npz_without_labels(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", embeddings=np.zeros((3, 2)))
    assert main(["evaluate", str(tmp_path / "e.npz")]) == 2
    assert "no array 'labels'" in capsys.readouterr().err


def test_evaluate_checkpoint_of_other_architecture(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tcm.train.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(trained / "last.pt")
    ck["model_spec"]["embedding_dim"] = 5
    save_checkpoint(ck, tmp_path / "bad.pt")
    assert main(["evaluate", str(tmp_path / "bad.pt")]) == 2
    assert "does not fit architecture" in capsys.readouterr().err


def test_calibrate_far_matches_brute_force(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    js = tmp_path / "c.json"
    npz = trained / "embeddings.npz"
    assert main(["calibrate", str(npz), "--far", "0.05", "--json", str(js), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "worst 3 classes by FAR" in out and "FAR > 2x target" in out
    r = json.loads(js.read_text())
    with np.load(npz) as z:
        e, y = z["embeddings"], z["labels"]
    s, i, j = brute_pairs(e, y)
    t = r["threshold"]
    neg = y[i] != y[j]
    assert r["global_far"] == pytest.approx(np.mean(s[neg] >= t), abs=1e-9)
    fars = []
    for c in np.unique(y):
        one = (y[i] == c) ^ (y[j] == c)  # pairs with exactly one member in c
        fars.append(np.mean(s[one] >= t))
    np.testing.assert_allclose(r["per_class"]["far"], fars, atol=1e-9)
    assert r["classes_far_above_2x"] == int(np.sum(np.asarray(fars) > 0.1))
    assert r["per_class"]["names"][0] == "c100"
    assert r["far_spread"]["max"] == pytest.approx(max(fars))
    assert [w["far"] for w in r["worst_classes"]] == sorted(fars, reverse=True)[:3]


def test_calibrate_max_utility(trained: Path, tmp_path: Path) -> None:
    js = tmp_path / "c.json"
    npz = trained / "embeddings.npz"
    assert (
        main(["calibrate", str(npz), "--max-utility", "--num-thresholds", "21", "--json", str(js)])
        == 0
    )
    r = json.loads(js.read_text())
    with np.load(npz) as z:
        e, y = z["embeddings"], z["labels"]
    s, i, j = brute_pairs(e, y)

    def mean_utility(t: float) -> float:
        us = []
        for c in np.unique(y):
            tar = np.mean(s[(y[i] == c) & (y[j] == c)] >= t)
            trr = np.mean(s[(y[i] == c) ^ (y[j] == c)] < t)
            us.append(0.0 if tar + trr == 0 else 2 * tar * trr / (tar + trr))
        return float(np.mean(us))

    assert r["mode"] == "max_mean_utility"
    assert r["mean_utility"] == pytest.approx(mean_utility(r["threshold"]), abs=1e-9)
    neg = np.sort(s[y[i] != y[j]])
    grid = np.linspace(np.quantile(neg, 0.5), np.quantile(neg, 1 - 1e-4), 21)
    assert r["mean_utility"] >= max(mean_utility(t) for t in grid) - 1e-9


def test_calibrate_needs_a_target(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", str(trained / "embeddings.npz")]) == 2
    assert "--far" in capsys.readouterr().err


def test_calibrate_bad_far(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", str(trained / "embeddings.npz"), "--far", "2"]) == 2
    assert "--far must lie in (0, 1); got 2.0" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_embed_writes_file(
    trained: Path, tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tcm._io as tio

    real, writes = tio.atomic_write, []

    def counting(path: Any, write: Any) -> Path:
        writes.append(Path(path))
        return real(path, write)

    monkeypatch.setattr(tio, "atomic_write", counting)
    out = tmp_path / f"emb{suffix}"
    assert main(["embed", str(trained / "best.pt"), "--data", "tiny", "--out", str(out)]) == 0
    assert writes == [out]  # written once, ids included (no write / re-read / rewrite)
    f = read_embedding_file(out)
    assert f.ids is not None and len(f.ids) == len(f.embeddings)
    from tcm.cli.main import _load_source

    f = _load_source(out)
    e, y, names = f.embeddings, f.labels, f.class_names
    with np.load(trained / "embeddings.npz") as z:
        np.testing.assert_allclose(e, z["embeddings"], atol=1e-5)
        np.testing.assert_array_equal(y, z["labels"])
    assert names is not None and names[:2] == ["c100", "c101"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temp file left


def test_embed_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", str(tmp_path / "x.pt"), "--out", str(tmp_path / "e.npz")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_embed_missing_data_root(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "embed",
            str(trained / "best.pt"),
            "--root",
            str(tmp_path / "no"),
            "--out",
            str(tmp_path / "e.npz"),
        ]
    )
    assert code == 2 and "root not found" in capsys.readouterr().err


def test_report_calls_write_report(
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tcm.metrics.evaluation as evaluation_mod
    import tcm.report.run as report_run

    calls: list[dict[str, Any]] = []
    real = report_run.evaluate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    passes: list[int] = []
    real_stats = evaluation_mod.pair_statistics

    def stats_spy(*args: Any, **kwargs: Any) -> Any:
        passes.append(1)
        return real_stats(*args, **kwargs)

    monkeypatch.setattr(report_run, "evaluate", spy)
    monkeypatch.setattr(evaluation_mod, "pair_statistics", stats_spy)
    out = tmp_path / "rep"
    assert main(["report", str(trained), str(trained / "embeddings.npz"), "--out", str(out)]) == 0
    assert (out / "index.html").is_file()
    assert str(out / "index.html") in capsys.readouterr().out
    assert len(calls) == len(passes) == 2  # one evaluation per source
    assert all(c["calibration_far"] == 1e-3 and c["bins"] == 200 for c in calls)
    summary = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in summary["runs"]] == [trained.name, "embeddings"]
    names = np.load(trained / "embeddings.npz")["class_names"].tolist()
    for run in summary["runs"]:
        assert set(run["metrics"]) >= {"recall_at_1", "map_at_r", "opis", "epsilon_opis_0.05"}
        assert run["metric_sources"]["recall_at_1"] == "computed"
        worst = run["worst_classes_by_far"]
        assert worst and [w["name"] for w in worst] == [names[w["class"]] for w in worst]
    html = (out / "index.html").read_text(encoding="utf-8")
    assert f"<td>{names[summary['runs'][0]['worst_classes_by_far'][0]['class']]}</td>" in html


def test_report_given_threshold(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert main(["report", str(trained), "--out", str(out), "--threshold", "0.25"]) == 0
    (run,) = json.loads((out / "report.json").read_text())["runs"]
    assert run["threshold"] == 0.25 and run["threshold_source"] == "given"


def test_demo_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert "base+tcm" in out and "eps-OPIS 5%" in out and "report:" in out
    res = json.loads((tmp_path / "comparison.json").read_text())
    assert set(res) == {"base", "base+tcm"}
    assert res["base"] != res["base+tcm"]  # TCM changes training (same seed otherwise)
    assert (tmp_path / "report" / "index.html").is_file()
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    for run in summary["runs"]:  # the best checkpoint's metrics, under the vocabulary keys
        best = {k: v for k, v in res[run["name"]].items() if k in run["metrics"]}
        assert run["metrics"] == best and set(best) == {
            "recall_at_1",
            "map_at_r",
            "opis",
            "epsilon_opis_0.05",
            "epsilon_opis_0.1",
        }
        assert set(run["metric_sources"].values()) == {"caller"}
        assert all(w["name"].startswith("c1") for w in run["worst_classes_by_far"])


def test_module_entry_point_help() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tcm.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0
    for cmd in ("train", "evaluate", "calibrate", "embed", "report", "demo"):
        assert cmd in r.stdout


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main([])
    assert ei.value.code == 2


def test_one_source_loader_gives_an_embedding_file_for_every_kind(trained: Path) -> None:
    """A run directory, its embeddings file and its checkpoint (embedded on the fly) all load
    as an EmbeddingFile with the same samples; a group selection keeps ids and groups aligned."""
    import argparse
    from dataclasses import replace

    from tcm.cli.main import SOURCE_DEFAULTS, _load_source, _select_groups
    from tcm.data.embedding_file import EmbeddingFile

    args = argparse.Namespace(data=None, root=None, quiet=True, progress=False, **SOURCE_DEFAULTS)
    run = _load_source(str(trained), args)
    npz = _load_source(trained / "embeddings.npz")
    ckpt = _load_source(str(trained / "best.pt"), args)
    for f in (run, npz, ckpt):
        assert isinstance(f, EmbeddingFile) and f.labels is not None
    assert run.path == npz.path == trained / "embeddings.npz" and ckpt.path == trained / "best.pt"
    np.testing.assert_array_equal(run.labels, ckpt.labels)
    np.testing.assert_allclose(ckpt.embeddings, run.embeddings, atol=1e-5)
    assert ckpt.class_names == run.class_names and ckpt.ids == run.ids
    assert ckpt.groups is None and run.groups is None  # the tiny dataset has no domains
    n = run.embeddings.shape[0]
    grouped = replace(run, groups=np.array(["a", "b", "c"] * n)[:n])
    part = _select_groups(grouped, ["b"], "run")
    m = grouped.groups == "b"
    assert part.ids == [i for i, k in zip(run.ids or [], m, strict=True) if k]
    assert part.groups is not None and (part.groups == "b").all()
    np.testing.assert_array_equal(part.embeddings, run.embeddings[m])
