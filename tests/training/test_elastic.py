"""Elastic runs: a clean one-line error when the group cannot form, and a torchrun restart that resumes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _tiny import recipe

from torchsmith.cli.main import main
from torchsmith.training.checkpointing import load_checkpoint

LAUNCH = str(Path(__file__).with_name("_launch.py"))
KILL = str(Path(__file__).with_name("_kill.py"))
# torch failing to form or re-form its group (torchsmith prefixes the store per restart on one node,
# see distributed._restart_store; what still fails this way is torch's, and the test skips on it).
_TORCH_FLAKE = (
    "connectFullMesh",
    "could not join the gloo process group",
    "the process group failed",
    "RendezvousTimeoutError",
    "RendezvousClosedError",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_group_that_cannot_form_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    port = _free_port()
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():  # fmt: skip
        monkeypatch.setenv(k, v)  # rank 1 never comes
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(data={"limit": 100}, distributed={"timeout": 2})))
    start = time.monotonic()
    code = main(["train", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and time.monotonic() - start < 60  # distributed.timeout, not torch's 30 minutes
    assert len(err.splitlines()) == 1, err
    assert f"127.0.0.1:{port}" in err and "--max-restarts" in err and "internal error" not in err


ELASTIC = recipe(
    model={"name": "test_tiny_mlp", "kwargs": {"dropout": 0.0}},
    data={"batch_size": 8, "limit": 200},  # 160 training samples: 20 steps of 2 x 4 per epoch
    optimizer={"name": "SGD", "lr": 0.05, "args": {"momentum": 0.9}},
    checkpoint={"every_n_steps": 4},
    train={"epochs": 2, "progress": False, "plot": False, "threads": 1},
    distributed={"timeout": 20},  # a collective waiting for a dead peer fails instead of hanging
)


def _torchrun(args: list[str], cwd: Path, max_restarts: int) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--max-restarts={max_restarts}", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--monitor-interval=0.1", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=cwd)
    return done.returncode, done.stdout + done.stderr


def _flake(code: int, text: str) -> str | None:
    """The line where torch's own gloo or rendezvous failed to (re-)form, when that is why it failed."""
    if code == 0:
        return None
    return next((line for line in text.splitlines() if any(s in line for s in _TORCH_FLAKE)), None)


def test_torchrun_restarts_a_sigkilled_worker_that_resumes_from_last_pt(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(ELASTIC))
    for attempt in range(2):  # once more when torch's gloo fails to re-form after the restart
        out, marker = tmp_path / f"run{attempt}", tmp_path / f"killed{attempt}"
        # rank 1 SIGKILLs itself at step 6 (last.pt holds step 4); the marker keeps the restart alive
        code, text = _torchrun([KILL, str(path), str(out), "on_step_end", "6", "1", str(marker)], tmp_path, 1)
        flake = _flake(code, text)
        if flake is None:
            break
    if flake is not None:
        pytest.skip(f"torch's gloo/rendezvous failed to re-form after the restart, twice: {flake.strip()}")
    assert code == 0, text[-3000:]
    assert marker.exists(), text[-3000:]  # the kill happened
    assert f"resumed from {out / 'last.pt'}: epoch 1, batch 4, step 4" in text, text[-3000:]

    code, text = _torchrun(
        [LAUNCH, "train", str(path), "--out", str(tmp_path / "whole"), "--quiet"], tmp_path, 0
    )
    if _flake(code, text):
        pytest.skip(f"torch's gloo failed to form for the uninterrupted run: {_flake(code, text)}")
    assert code == 0, text[-3000:]
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(tmp_path / "whole" / "last.pt")
    assert a["step"] == b["step"] == 40 and a["world_size"] == 2
    for name, ref in b["model"].items():
        assert torch.equal(a["model"][name], ref), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in json.loads(h)]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
