"""Kill a training process mid-epoch with SIGKILL, resume it, and get bit-identical weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _tiny import recipe

from torchsmith.cli.main import main
from torchsmith.training import train
from torchsmith.training.checkpointing import load_checkpoint

LAUNCH = str(Path(__file__).with_name("_launch.py"))


def _recipe_file(tmp_path: Path) -> Path:
    r = recipe(
        data={
            "batch_size": 8,
            "limit": 400,
            "train_transforms": [{"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1]}}],
        },
        optimizer={"name": "AdamW", "lr": 0.01},
        scheduler={"name": "OneCycleLR", "interval": "step"},
        train={"epochs": 3, "checkpoint_every_steps": 7, "progress": False, "plot": False, "threads": 1},
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    path = _recipe_file(tmp_path)
    killed_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, LAUNCH, "train", str(path), "--out", str(killed_dir), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = killed_dir / "last.pt"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if ckpt.exists():
            proc.send_signal(signal.SIGSTOP)  # freeze it, look, and kill only in the middle of an epoch
            if load_checkpoint(ckpt)["batches_done"] > 0:
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    state = load_checkpoint(ckpt)  # whatever moment the kill came, the file on disk is whole
    assert state["epoch"] < 3
    assert state["batches_done"] > 0 and state["step"] > 0  # killed mid-epoch
    stopped_at = (state["epoch"], state["batches_done"], state["step"])

    code = main(["train", str(path), "--out", str(killed_dir), "--resume", "--quiet"])
    assert code == 0
    whole = train(path, out=tmp_path / "whole", log=None)

    resumed = load_checkpoint(killed_dir / "last.pt")
    reference = load_checkpoint(tmp_path / "whole" / "last.pt")
    assert resumed["step"] == reference["step"] == whole.steps == 3 * 40
    for name, ref in reference["model"].items():
        assert torch.equal(resumed["model"][name], ref), f"{name} differs after resuming at {stopped_at}"
    for a, b in zip(resumed["optimizer"]["state"].values(), reference["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    strip = lambda hist: [{k: v for k, v in h.items() if k != "time"} for h in hist]  # noqa: E731
    import json

    assert strip(json.loads(resumed["history"])) == strip(whole.history)


def test_resume_refuses_a_damaged_checkpoint(tmp_path):
    from torchsmith.errors import CheckpointError

    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"last\.pt"):
        train(recipe(), out=tmp_path, resume=True, log=None)


def test_elastic_restart_resumes_by_itself(tmp_path, monkeypatch):
    r = recipe(data={"limit": 200}, train={"epochs": 2, "max_steps": 5, "progress": False, "plot": False})
    first = train(r, out=tmp_path, log=None)
    assert first.resumed_from is None and first.steps == 5
    r["train"]["max_steps"] = None
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # what torchrun sets after a worker failure
    lines: list[str] = []
    second = train(r, out=tmp_path, log=lines.append)
    assert second.resumed_from is not None and second.resumed_from["epoch"] == 1
    assert any("elastic restart" in s for s in lines)
    assert second.steps == 2 * 5
