"""Elastic runs: a clean one-line error when the group cannot form, and a torchrun restart that resumes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _tiny import recipe

from torchsmith.cli.main import main
from torchsmith.training.checkpointing import load_checkpoint

LAUNCH = str(Path(__file__).with_name("_launch.py"))
# torch's own gloo sometimes fails to re-form after a restart (plain-torch runs fail too).
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


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _run_and_kill_a_worker(path: Path, out: Path, tmp_path: Path) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--max-restarts=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{_free_port()}",
           "--rdzv_conf=join_timeout=30", "--monitor-interval=0.1", LAUNCH, "train", str(path),
           "--out", str(out), "--resume", "auto"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "torchrun.log").open("w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline, killed = time.monotonic() + 120, False
    while proc.poll() is None and time.monotonic() < deadline and not killed:
        if (out / "last.pt").exists():
            workers = _children(proc.pid)
            if workers:
                os.kill(workers[-1], signal.SIGKILL)  # one worker dies mid-run
                killed = True
        time.sleep(0.01)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.seek(0)
    text = log.read()
    assert killed, "the run ended before a worker could be killed: " + text[-2000:]
    return proc.returncode, text


def test_torchrun_restarts_a_killed_worker_and_resumes(tmp_path):
    r = recipe(
        model={"name": "test_tiny_mlp", "kwargs": {"dropout": 0.0}},
        data={"batch_size": 8, "limit": 400},
        optimizer={"name": "SGD", "lr": 0.05},
        train={"epochs": 4, "checkpoint_every_steps": 5, "progress": False, "plot": False, "threads": 1},
        distributed={"timeout": 5},  # a group that fails to re-form errors out instead of hanging
    )
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    for attempt in range(2):  # retried once when torch's own gloo fails to re-form
        out = tmp_path / f"run{attempt}"
        code, text = _run_and_kill_a_worker(path, out, tmp_path)
        if code == 0 or not any(s in text for s in _TORCH_FLAKE) or attempt == 1:
            break
    if code != 0 and any(s in text for s in _TORCH_FLAKE):
        # Both tries hit torch's own failure to re-form gloo: what torchsmith owes then is one clean line.
        assert "--max-restarts" in text and "internal error" not in text, text[-3000:]
        pytest.skip("torch's gloo failed to re-form after the restart, twice (torch's flake, not ours)")
    assert code == 0, text[-3000:]
    assert "elastic restart" in text and "resumed from" in text
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 4 * 40 and state["world_size"] == 2
