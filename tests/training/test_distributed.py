"""Two processes under torchrun (gloo on the CPU) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from _tiny import recipe

from torchsmith.training import train
from torchsmith.training.checkpointing import checkpoint_model_state, load_checkpoint

LAUNCH = str(Path(__file__).with_name("_launch.py"))


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", LAUNCH, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_two_process_ddp_matches_one_process_and_names_unused_parameters(tmp_path):
    r = recipe(
        model={"name": "test_tiny_mlp", "kwargs": {"dropout": 0.0}},
        data={"batch_size": 32, "limit": 320},  # 256 training samples: 8 global batches of 32
        optimizer={"name": "SGD", "lr": 0.1, "args": {"momentum": 0.9}},
        train={"epochs": 2, "progress": False, "plot": False, "threads": 1, "checkpoint_every_steps": 5},
    )
    good = tmp_path / "ddp.yaml"
    good.write_text(yaml.safe_dump(r))
    bad = tmp_path / "unused.yaml"
    bad.write_text(yaml.safe_dump({**r, "model": {"name": "test_unused_mlp", "kwargs": {}}}))

    done = _torchrun(["train", str(good), "--out", str(tmp_path / "ddp"), "--json"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # only rank 0 prints
    assert result["world_size"] == 2

    single = train(r, out=tmp_path / "single", log=None)
    ddp = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ddp["world_size"] == 2 and len(ddp["ranks"]) == 2  # RNG state of every rank
    assert ddp["step"] == single.steps == 16
    for name, ref in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][name], ref, rtol=1e-5, atol=1e-6, msg=name)
    hist = json.loads(ddp["history"])
    assert [h["train_samples"] for h in hist] == [256, 256]  # summed over both ranks
    assert hist[-1]["val_acc"] == single.history[-1]["val_acc"]

    failed = _torchrun(["train", str(bad), "--out", str(tmp_path / "bad")], tmp_path)
    assert failed.returncode != 0
    assert "spare_head.weight" in failed.stderr and "spare_head.bias" in failed.stderr
    assert "no gradient" in failed.stderr
    assert not (tmp_path / "bad" / "last.pt").exists()


def test_fsdp_switch_on_cpu_matches_one_process(tmp_path):
    """strategy fsdp (FSDP2 fully_shard over gloo): same weights as one process, and it resumes."""
    r = recipe(
        model={"name": "test_tiny_mlp", "kwargs": {"dropout": 0.0}},
        data={"batch_size": 32, "limit": 320},
        optimizer={"name": "Adam", "lr": 0.01},
        train={"epochs": 1, "progress": False, "plot": False, "threads": 1},
        distributed={"strategy": "fsdp"},
    )
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(r))
    done = _torchrun(["train", str(path), "--out", str(tmp_path / "fsdp"), "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    more = _torchrun(["train", str(path), "--out", str(tmp_path / "fsdp"), "--quiet", "--resume",
                      "--set", "train.epochs=2"], tmp_path)  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    single = train({**r, "train": {**r["train"], "epochs": 2}}, out=tmp_path / "single", log=None)
    sharded = load_checkpoint(tmp_path / "fsdp" / "last.pt")
    assert sharded["step"] == single.steps == 16
    weights = checkpoint_model_state(tmp_path / "fsdp" / "last.pt", sharded)  # format auto: DCP
    for name, ref in single.model.state_dict().items():
        torch.testing.assert_close(weights[name], ref, rtol=1e-4, atol=1e-5, msg=name)
