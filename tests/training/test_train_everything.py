"""Issue 15's done-when: a recipe that turns every loop feature on runs on digits, is SIGKILLed in the
middle of an epoch, resumes, and ends bit-identical to a run never interrupted: weights, optimizer,
EMA, history, retention, early-stopping state, CSV rows and the TensorBoard scalars (read back with
TensorBoard's own EventAccumulator)."""

from __future__ import annotations

import csv
import json
import os
import shutil
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

EVERYTHING = recipe(
    model={"name": "mlp", "kwargs": {"in_features": "auto", "num_classes": "auto", "hidden": 16}},
    data={
        "batch_size": 8,
        "limit": 400,
        "train_transforms": [{"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1]}}],
    },
    optimizer={"name": "AdamW", "lr": 0.01},
    scheduler={"name": "OneCycleLR", "interval": "step"},
    logging=["jsonl", "csv", "tensorboard"],
    checkpoint={"async": True, "keep_last": 2, "keep_best": 2, "metric": "val_loss", "every_n_steps": 4},
    train={
        "epochs": 3,
        "ema": {"decay": 0.9, "every_n_steps": 2, "eval": True},
        "early_stopping": {"metric": "val_acc", "mode": "max", "patience": 5, "min_delta": 0.0},
        "val_every_steps": 10,
        "max_time": "01:00:00",
        "profile": {"steps": [3, 4]},
        "log_every": 5,
        "progress": False,
        "plot": False,
        "threads": 1,
    },
)


def _scalars(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
        if not tag.endswith("/time")  # wall-clock seconds differ between runs
    }


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(path.open())]


def test_everything_on_survives_sigkill_and_resumes_bit_identically(tmp_path):
    path = tmp_path / "everything.yaml"
    path.write_text(yaml.safe_dump(EVERYTHING))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, LAUNCH, "train", str(path), "--out", str(killed), "--quiet"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = killed / "last.pt"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if ckpt.exists():
            proc.send_signal(signal.SIGSTOP)  # freeze, look, kill only mid-epoch after an epoch ended
            state = load_checkpoint(ckpt)
            if state["epoch"] >= 1 and state["batches_done"] > 0:
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    state = load_checkpoint(ckpt)
    assert state["epoch"] >= 1 and state["batches_done"] > 0 and state["callbacks"]["ema"]["updates"] > 0

    assert main(["train", str(path), "--out", str(killed), "--resume", "auto", "--quiet"]) == 0
    whole = train(path, out=tmp_path / "whole", log=None)
    assert whole.steps == 3 * 40 and whole.stop_reason is None

    a, b = load_checkpoint(killed / "last.pt"), load_checkpoint(tmp_path / "whole" / "last.pt")
    for name, ref in b["model"].items():
        assert torch.equal(a["model"][name], ref), name
    for name, ref in b["callbacks"]["ema"]["model"].items():
        assert torch.equal(a["callbacks"]["ema"]["model"][name], ref), f"EMA {name}"
        assert not torch.equal(a["model"][name], ref)  # the EMA is not the trained weights
    assert a["callbacks"]["ema"]["updates"] == b["callbacks"]["ema"]["updates"] == 60
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    for key in ("checkpoints", "early_stopping"):
        assert a["callbacks"][key] == b["callbacks"][key], key
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(json.loads(a["history"])) == strip(whole.history)
    assert json.loads(a["val_steps"]) == json.loads(b["val_steps"]) and len(json.loads(b["val_steps"])) == 9
    kept = sorted(os.listdir(killed / "checkpoints"))
    assert kept == sorted(os.listdir(tmp_path / "whole" / "checkpoints")) and len(kept) >= 2
    assert _rows(killed / "metrics.csv") == _rows(tmp_path / "whole" / "metrics.csv")
    jsonl = [strip(map(json.loads, (d / "metrics.jsonl").open())) for d in (killed, tmp_path / "whole")]
    assert jsonl[0] == jsonl[1] and len(jsonl[0]) == 3 + 9
    # TensorBoard: the resumed run cut the killed run's file back to its checkpoint and appended, so
    # one file holds exactly the uninterrupted run's scalars.
    assert len(list((killed / "tensorboard").iterdir())) == 1
    tb_killed, tb_whole = _scalars(killed / "tensorboard"), _scalars(tmp_path / "whole" / "tensorboard")
    wanted = {"step/train_loss", "step/lr", "step/val_loss", "epoch/val_acc", "epoch/train_loss"}
    assert wanted <= set(tb_whole)
    assert [s for s, _ in tb_whole["step/train_loss"]] == list(range(5, 121, 5))
    # On failure, say which (step, value) events differ and where the run was killed.
    diff = {
        t: (sorted(set(tb_killed.get(t, [])) ^ set(tb_whole.get(t, []))))
        for t in set(tb_killed) | set(tb_whole)
    }
    assert tb_killed == tb_whole, ({t: d for t, d in diff.items() if d}, state["step"])
    assert (killed / "profile" / "trace-rank0.json").stat().st_size > 0  # traced before the kill
    assert yaml.safe_load((killed / "recipe.yaml").read_text())["model"]["kwargs"]["in_features"] == 64


# --- TensorBoard and the metrics files across a SIGKILL at chosen moments --------------------------
# The defect behind the old xfail: a resumed run wrote a second event file and relied on TensorBoard's
# purge marker, which only works when the resumed file's name sorts after the killed one's; the name
# starts with the creation second, then host and pid, so a resume within the same second by a process
# whose pid sorted lower (the in-process resume above) read the resumed events first. A run now keeps
# one file, cut back to the checkpoint's length on resume: these tests read it without any purge.
KILL = str(Path(__file__).with_name("_kill.py"))
SMALL = recipe(
    data={"batch_size": 8, "limit": 200},  # 160 training samples: 20 steps per epoch
    logging=["jsonl", "csv", "tensorboard"],
    checkpoint={"every_n_steps": 4, "keep_last": 1},
    train={"epochs": 2, "val_every_steps": 6, "log_every": 2, "progress": False, "plot": False, "threads": 1},
)


def _events(folder: Path) -> list[tuple]:
    """Every summary value in the folder's event files, in file order, no purge applied."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = []
    for path in sorted(folder.iterdir()):
        for e in EventFileLoader(str(path)).Load():
            for v in e.summary.value:
                if not v.tag.endswith("/time"):
                    out.append((e.step, v.tag, v.simple_value if v.HasField("simple_value") else v.tensor))
    return out


@pytest.fixture(scope="module")
def small_whole(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    path = folder / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    train(path, out=folder / "run", log=None)
    return path, folder / "run"


@pytest.mark.parametrize(
    "hook,step,last_step",
    [
        ("on_validation_end", 6, 4),  # a validation's scalars past the checkpoint, then the kill
        ("on_epoch_end", 20, 16),  # the epoch's scalars logged, its checkpoint not taken
        ("on_checkpoint", 28, 24),  # inside a checkpoint, before its file is written
        ("on_step_end", 3, None),  # before the first checkpoint: --resume auto starts afresh
    ],
)
def test_a_kill_at_any_moment_leaves_every_metric_sink_as_an_unbroken_run(
    tmp_path, small_whole, hook, step, last_step
):
    path, whole = small_whole
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, KILL, str(path), str(out), hook, str(step)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    if last_step is None:
        assert not (out / "last.pt").exists()
    else:
        assert load_checkpoint(out / "last.pt")["step"] == last_step
    killed = _events(out / "tensorboard")
    assert any(s > (last_step or 0) for s, *_ in killed)  # the kill left events past the checkpoint

    assert main(["train", str(path), "--out", str(out), "--resume", "auto", "--quiet"]) == 0
    assert len(list((out / "tensorboard").iterdir())) == 1
    got, want = _events(out / "tensorboard"), _events(whole / "tensorboard")
    assert got == want, sorted(set(got) ^ set(want))
    assert _scalars(out / "tensorboard") == _scalars(whole / "tensorboard")
    assert _rows(out / "metrics.csv") == _rows(whole / "metrics.csv")
    strip = lambda f: [{k: v for k, v in json.loads(r).items() if k != "time"} for r in f.open()]  # noqa: E731
    assert strip(out / "metrics.jsonl") == strip(whole / "metrics.jsonl")
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(whole / "last.pt")
    assert [{k: v for k, v in r.items() if k != "time"} for r in json.loads(a["history"])] == [
        {k: v for k, v in r.items() if k != "time"} for r in json.loads(b["history"])
    ]


@pytest.mark.parametrize("damage", ["shorter", "rewritten"])
def test_a_resume_that_cannot_continue_the_event_file_warns_and_starts_a_new_one(
    tmp_path, small_whole, damage
):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    path, whole = small_whole
    out = tmp_path / "run"
    shutil.copytree(whole, out)
    (old,) = (out / "tensorboard").iterdir()
    data = old.read_bytes()
    # a power cut lost the end of the file / another run wrote different events into it
    old.write_bytes(data[:-100] if damage == "shorter" else data[:-1] + bytes([data[-1] ^ 1]))
    logs: list[str] = []
    train(path, out=out, resume=True, log=logs.append)
    why = "holds only" if damage == "shorter" else "not the ones the checkpoint recorded"
    assert any("cannot continue the run's event file" in line and why in line for line in logs), logs
    files = sorted((out / "tensorboard").iterdir())
    assert len(files) == 2 and old in files  # the old events are kept
    (new,) = set(files) - {old}
    first = list(EventFileLoader(str(new)).Load())[:2]
    assert first[1].session_log.status == SessionLog.START and first[1].step == 41


def test_a_resume_rewrites_metrics_files_a_kill_left_a_checkpoint_behind(tmp_path, small_whole):
    # The writer renames last.pt, then the metrics files: a kill between leaves them one checkpoint
    # behind, and resuming this finished run writes no checkpoint that would catch them up.
    path, whole = small_whole
    out = tmp_path / "run"
    shutil.copytree(whole, out)
    for name in ("metrics.jsonl", "metrics.csv"):
        lines = (out / name).read_text().splitlines(keepends=True)
        (out / name).write_text("".join(lines[:-1]))
    train(path, out=out, resume=True, log=None)
    assert (out / "metrics.jsonl").read_text() == (whole / "metrics.jsonl").read_text()
    assert (out / "metrics.csv").read_text() == (whole / "metrics.csv").read_text()


def test_a_resume_cleans_and_links_what_a_kill_during_retention_left(tmp_path, small_whole):
    # The writer renames last.pt, then links it into checkpoints/ through a temporary name: a kill
    # there leaves the temporary file and a kept entry without its file (the everything-on test
    # above failed on the temporary file in 3 of about 25 runs), and no later checkpoint fixes either.
    path, whole = small_whole
    out = tmp_path / "run"
    shutil.copytree(whole, out)
    (kept,) = (out / "checkpoints").iterdir()
    kept.unlink()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = out / "checkpoints" / f".epoch-0001-step-00000004.pt.{gone.pid}.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(path, out=out, resume=True, log=None)
    assert sorted((out / "checkpoints").iterdir()) == [kept]
    assert kept.read_bytes() == (out / "last.pt").read_bytes()
