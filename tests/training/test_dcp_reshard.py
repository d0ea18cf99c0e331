"""checkpoint.format dcp: sharded checkpoints that resume on another number of processes (1 -> 2 -> 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _tiny import recipe
from safetensors.torch import load_file

from torchsmith.cli.main import main
from torchsmith.errors import CheckpointError
from torchsmith.training import train
from torchsmith.training.checkpointing import load_checkpoint, read_dcp_model

LAUNCH = str(Path(__file__).with_name("_launch.py"))


def _fsdp_recipe(epochs: int) -> dict:
    return recipe(
        model={"name": "test_tiny_mlp", "kwargs": {"dropout": 0.0}},
        data={"batch_size": 32, "limit": 320},
        optimizer={"name": "Adam", "lr": 0.01},
        train={"epochs": epochs, "progress": False, "plot": False, "threads": 1},
        distributed={"strategy": "fsdp"},  # checkpoint.format auto -> dcp
    )


def test_dcp_resumes_from_one_to_two_to_one_process_and_converts(tmp_path):
    out = tmp_path / "run"
    first = train(_fsdp_recipe(1), out=out, log=None)  # one process writes DCP
    assert first.steps == 8 and "model" not in load_checkpoint(out / "last.pt")

    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(_fsdp_recipe(2)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", LAUNCH,
           "train", str(path), "--out", str(out), "--resume", "--set", "checkpoint.async=true"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resharded from 1 to 2 processes" in done.stderr
    state = load_checkpoint(out / "last.pt")
    assert state["world_size"] == 2 and state["step"] == 16
    shards = sorted(p.name for p in (out / state["dcp"] / "model").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shard

    lines: list[str] = []
    last = train(_fsdp_recipe(3), out=out, resume=True, log=lines.append)  # back to one process
    assert any("resharded from 2 to 1 processes" in s for s in lines)
    single = train({**_fsdp_recipe(3), "checkpoint": {"format": "pt"}}, out=tmp_path / "single", log=None)
    assert last.steps == single.steps == 24
    final = read_dcp_model(out / load_checkpoint(out / "last.pt")["dcp"])
    for name, ref in single.model.state_dict().items():
        torch.testing.assert_close(final[name], ref, rtol=1e-4, atol=1e-5, msg=name)
    assert len(list((out / "dcp").iterdir())) <= 2  # folders no checkpoint names are removed

    st = tmp_path / "model.safetensors"
    assert main(["convert", str(out / load_checkpoint(out / "last.pt")["dcp"] / "model"), str(st)]) == 0
    converted = load_file(st)
    assert converted.keys() == single.model.state_dict().keys()
    for name, t in converted.items():
        assert torch.equal(t, final[name])


def test_other_world_size_needs_dcp_at_an_epoch_boundary(tmp_path):
    r = recipe(data={"limit": 200}, train={"epochs": 1, "progress": False, "plot": False})
    train(r, out=tmp_path, log=None)
    state = load_checkpoint(tmp_path / "last.pt")
    state["world_size"] = 2
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"by 2 process\(es\), resumed with 1.*checkpoint\.format"):
        train({**r, "train": {**r["train"], "epochs": 2}}, out=tmp_path, resume=True, log=None)


class _Plant:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # what a crafted .metadata does the moment plain pickle.load reads it
        return (os.mkdir, (self.path,))


def test_resume_never_unpickles_a_crafted_dcp_metadata(tmp_path):
    import pickle

    r = recipe(data={"limit": 100}, train={"epochs": 1, "progress": False, "plot": False},
               checkpoint={"format": "dcp"})  # fmt: skip
    train(r, out=tmp_path / "run", log=None)
    folder = tmp_path / "run" / load_checkpoint(tmp_path / "run" / "last.pt")["dcp"] / "model"
    planted = tmp_path / "planted"
    (folder / ".metadata").write_bytes(pickle.dumps(_Plant(str(planted))))
    with pytest.raises(CheckpointError, match=r"\.metadata|metadata"):
        train({**r, "train": {**r["train"], "epochs": 2}}, out=tmp_path / "run", resume=True, log=None)
    assert not planted.exists()
