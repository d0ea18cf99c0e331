"""checkpoint.async: writes in a background thread, one at a time; a kill -9 mid-write loses nothing."""

from __future__ import annotations

import json
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
from torchsmith.training.checkpointing import CheckpointWriter, load_checkpoint, snapshot

LAUNCH = str(Path(__file__).with_name("_launch.py"))


def test_writer_runs_one_write_at_a_time_and_raises_its_errors_in_the_caller():
    writer, running, overlaps = CheckpointWriter(asynchronous=True), [], []

    def job():
        running.append(1)
        overlaps.append(len(running))
        time.sleep(0.02)
        running.pop()

    for _ in range(3):
        writer.submit(job)
    assert writer.busy  # submit returned while the write goes on
    writer.wait()
    assert overlaps == [1, 1, 1] and not writer.busy

    def fail():
        raise OSError("disk full")

    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.wait()  # the error is raised once


def test_snapshot_is_a_copy_that_training_cannot_change():
    w = torch.ones(3)
    state = {"model": {"w": w}, "ranks": [{"acc": w}], "epoch": 1}
    snap = snapshot(state)
    w.add_(1)
    assert torch.equal(snap["model"]["w"], torch.ones(3))
    assert torch.equal(snap["ranks"][0]["acc"], torch.ones(3))
    assert snap["epoch"] == 1


def _tmp_files(folder: Path) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if n.startswith(".last.pt.") and n.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _kill_during_a_write(cmd: list[str], out: Path) -> bool:
    """Start ``cmd``, SIGKILL it while a last.pt write is under way; False if no write was caught."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    caught = False
    while proc.poll() is None and time.monotonic() < deadline:
        if _tmp_files(out) and (out / "last.pt").exists():
            proc.send_signal(signal.SIGSTOP)  # freeze every thread, then check we are mid-write
            if _tmp_files(out):
                caught = True
                break
            proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return caught


def test_sigkill_during_an_async_write_keeps_the_last_checkpoint_and_resumes_bit_identically(tmp_path):
    r = recipe(
        data={"batch_size": 8, "limit": 400},
        optimizer={"name": "AdamW", "lr": 0.01},
        train={"epochs": 2, "checkpoint_every_steps": 1, "progress": False, "plot": False, "threads": 1},
        checkpoint={"async": True},
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(r))
    out = tmp_path / "killed"
    cmd = [sys.executable, LAUNCH, "train", str(path), "--out", str(out), "--quiet", "--resume", "auto"]
    for _ in range(3):  # the write window is short; try again when the kill came between writes
        if _kill_during_a_write(cmd, out):
            break
    else:
        pytest.fail("never caught the process inside a checkpoint write")
    assert _tmp_files(out), "the kill came after the write finished"
    state = load_checkpoint(out / "last.pt")  # the previous checkpoint, whole
    assert 0 < state["step"] < 2 * 40

    assert main(["train", str(path), "--out", str(out), "--resume", "auto", "--quiet"]) == 0
    whole = train({**r, "checkpoint": {"async": False}}, out=tmp_path / "whole", log=None)
    resumed, reference = load_checkpoint(out / "last.pt"), load_checkpoint(tmp_path / "whole" / "last.pt")
    assert resumed["step"] == reference["step"] == whole.steps == 2 * 40
    for name, ref in reference["model"].items():
        assert torch.equal(resumed["model"][name], ref), name
    strip = lambda hist: [{k: v for k, v in h.items() if k != "time"} for h in hist]  # noqa: E731
    assert strip(json.loads(resumed["history"])) == strip(whole.history)


def test_resume_auto_starts_when_there_is_no_checkpoint(tmp_path):
    r = recipe(data={"limit": 100}, train={"epochs": 1, "progress": False, "plot": False})
    first = train(r, out=tmp_path, resume="auto", log=None)
    assert first.resumed_from is None
    second = train({**r, "train": {**r["train"], "epochs": 2}}, out=tmp_path, resume="auto", log=None)
    assert second.resumed_from is not None and second.resumed_from["epoch"] == 1
    assert [h["train_samples"] for h in second.history] == [80, 80]  # epoch 2 starts its sums at zero


def test_freeze_serialises_a_small_state_here_and_snapshots_a_large_one(monkeypatch):
    import io

    from torchsmith.training import checkpointing

    w = torch.ones(3)
    state = {"model": {"w": w}, "epoch": 1}
    frozen = checkpointing.freeze(state)
    assert isinstance(frozen, memoryview)  # the file's bytes, made at the step boundary
    w.add_(1)  # training goes on
    back = torch.load(io.BytesIO(bytes(frozen)), weights_only=True)
    assert back["format"] == checkpointing.FORMAT and back["epoch"] == 1
    assert torch.equal(back["model"]["w"], torch.ones(3))

    monkeypatch.setattr(checkpointing, "SERIALIZE_INLINE_BYTES", 8)  # 12 bytes of tensors: too big
    frozen = checkpointing.freeze(state)
    assert isinstance(frozen, dict) and frozen["model"]["w"] is not w
    assert torch.equal(frozen["model"]["w"], w)


def test_write_files_renames_them_all_or_leaves_every_old_file(tmp_path):
    from torchsmith.training.checkpointing import write_files

    write_files(tmp_path, {"last.pt": b"one", "metrics.jsonl": "a\n"}, links={"best.pt": "last.pt"})
    assert (tmp_path / "last.pt").read_bytes() == (tmp_path / "best.pt").read_bytes() == b"one"
    assert (tmp_path / "metrics.jsonl").read_text() == "a\n"

    write_files(tmp_path, {"last.pt": lambda p: p.write_bytes(b"two"), "metrics.jsonl": "a\nb\n"})
    assert (tmp_path / "last.pt").read_bytes() == b"two"
    assert (tmp_path / "best.pt").read_bytes() == b"one"  # a second name, not the same file

    def fails(path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_files(tmp_path, {"last.pt": b"three", "metrics.jsonl": fails})
    assert (tmp_path / "last.pt").read_bytes() == b"two"  # nothing renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
