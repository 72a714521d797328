"""DDP through torchrun with 2 CPU processes (gloo): training runs and both ranks agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed as dist

LAUNCHER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, torch
    sys.path.insert(0, sys.argv[2])  # the tests folder: shared fixtures
    from conftest import TINY_OVERRIDES, tiny_provider
    from tcm.train.datasets import register_dataset

    register_dataset("tiny", tiny_provider)
    import torch.distributed as dist
    from tcm.train import load_config, train
    out = sys.argv[1]
    cfg = load_config(None, [f"output_dir={out}", *TINY_OVERRIDES, "train.epochs=2",
        "train.steps_per_epoch=1", "train.tensorboard=false", "loss.tcm.enabled=true",
        "loss.name=proxy_anchor", "loss.memory_size=24"])
    seen = []
    res = train(cfg, hooks=[lambda info: seen.append(info.loss)], echo=None)
    rank = int(os.environ["RANK"])

    assert dist.is_initialized()  # train() started the gloo group and keeps it
    # gradient check: DDP on 2 half-batches == one process on the whole batch
    from tcm.losses import build_loss
    from tcm.models import build_model
    from tcm.train.step import backward_global, global_batch_loss
    torch.manual_seed(0)
    model = build_model("small_cnn", 8, image_size=8)
    loss_fn = build_loss("proxy_anchor", tcm=True, num_classes=4, embedding_dim=8)
    ref_model = build_model("small_cnn", 8, image_size=8)
    ref_model.load_state_dict(model.state_dict())
    ref_loss = build_loss("proxy_anchor", tcm=True, num_classes=4, embedding_dim=8)
    ref_loss.load_state_dict(loss_fn.state_dict())
    g = torch.Generator().manual_seed(5)
    x = torch.rand(8, 3, 8, 8, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    model.eval(); ref_model.eval()  # BN statistics are per rank; compare without them
    half = slice(4 * rank, 4 * rank + 4)
    loss = global_batch_loss(ddp, loss_fn, x[half], y[half])
    backward_global(loss, loss_fn)
    dist.barrier()
    ref = ref_loss(ref_model(x), y)
    ref.backward()
    grads = [p.grad for p in model.parameters()] + [p.grad for p in loss_fn.parameters()]
    refs = [p.grad for p in ref_model.parameters()] + [p.grad for p in ref_loss.parameters()]
    # Per-tensor error relative to the tensor's scale: the two ranks' partial sums (4 rows
    # each, then all-reduced) and the reference's 8-row sum round differently in float32, so
    # they agree to a few ulps of the largest entry, not absolutely (a gradient of 152 has an
    # ulp of 1.5e-5). tol = 1e-5 * max|ref| is ~80 float32 ulps: far above the few ulps that
    # reordering produces, far below any real mismatch (a dropped rank or a missing scale
    # factor changes entries by O(max|ref|)).
    errs = [float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)
            for a, b in zip(grads, refs)]
    max_err = max(errs)
    loss_err = abs(float(loss) - float(ref)) / max(abs(float(ref)), 1e-30)
    dist.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"world": int(os.environ["WORLD_SIZE"]), "steps": res.steps, "losses": seen,
                   "best": res.best_metrics, "last": res.last_metrics,
                   "grad_err": max_err, "loss_err": loss_err}, f)
    """
)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_process_gloo_training_ranks_agree(tmp_path: Path) -> None:
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER)
    src = str(Path(__file__).resolve().parents[1] / "src")
    pp = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pp}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path / "run"),
        str(Path(__file__).resolve().parent),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((tmp_path / "run" / "rank0.json").read_text())
    b = json.loads((tmp_path / "run" / "rank1.json").read_text())
    assert a["world"] == b["world"] == 2
    assert a["steps"] == b["steps"] == 2
    # the loss is computed on the gathered global batch: identical on both ranks
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-6)
    # evaluation gathers all test embeddings: both ranks see the same metrics
    assert a["best"] == b["best"] and a["last"] == b["last"] and a["best"] is not None
    assert (tmp_path / "run" / "best.pt").is_file()
    # DDP gradients (model and loss proxies) equal the single-process gradients, relative to
    # each tensor's largest entry (see the launcher: 1e-5 ~ 80 float32 ulps)
    for r in (a, b):
        assert r["loss_err"] < 1e-5 and r["grad_err"] < 1e-5, r
