"""Resume at an epoch boundary after kill -9, stale temp files, labels the model has no output for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _tiny import recipe
from PIL import Image
from sklearn.datasets import load_digits

from torchsmith.cli.main import main
from torchsmith.errors import RecipeError
from torchsmith.training import train
from torchsmith.training.checkpointing import load_checkpoint

LAUNCH = str(Path(__file__).with_name("_launch.py"))


def _plateau_recipe(tmp_path: Path) -> Path:
    # No validation set: ReduceLROnPlateau steps on the training loss, so a wrongly summed epoch after
    # the resume changes the learning rate and with it the weights.
    r = recipe(
        data={"batch_size": 8, "limit": 160, "val_fraction": 0},
        optimizer={"name": "SGD", "lr": 0.05},
        scheduler={"name": "ReduceLROnPlateau", "interval": "epoch", "args": {"patience": 0, "factor": 0.5}},
        train={"epochs": 4, "progress": False, "plot": False, "threads": 1},
    )
    path = tmp_path / "plateau.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def _kill_at_an_epoch_boundary(path: Path, out: Path, epochs: int) -> int:
    """Start a run, freeze it once last.pt records a finished epoch before the last, kill -9 it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, LAUNCH, "train", str(path), "--out", str(out), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = out / "last.pt"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if ckpt.exists():
            proc.send_signal(signal.SIGSTOP)
            if 1 <= load_checkpoint(ckpt)["epoch"] < epochs:
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    return proc.pid


def test_sigkill_at_an_epoch_boundary_resumes_bit_identically_with_plateau(tmp_path, capsys):
    path = _plateau_recipe(tmp_path)
    killed = tmp_path / "killed"
    pid = _kill_at_an_epoch_boundary(path, killed, 4)
    state = load_checkpoint(killed / "last.pt")
    assert state["batches_done"] == 0 and 1 <= state["epoch"] < 4  # killed at a boundary
    assert all(rank["acc"] is None and rank["count"] == 0 for rank in state["ranks"])
    # What a kill during a checkpoint write leaves (the dead process's pid in torchsmith's name
    # pattern), and files of the same look that are not torchsmith's.
    stale = killed / f".last.pt.{pid}.0123abcd.tmp"
    stale.write_bytes(b"torn")
    others = [
        killed / f".last.pt.{pid}.notours.tmp",
        killed / "notes.tmp",
        killed / f".mine.pt.{pid}.0123abcd.tmp",
    ]
    for p in others:
        p.write_bytes(b"keep")
    capsys.readouterr()

    assert main(["train", str(path), "--out", str(killed), "--resume", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and f"epoch {state['epoch'] + 1}, batch 0" in err  # --quiet keeps it
    assert not stale.exists() and all(p.read_bytes() == b"keep" for p in others)

    whole = train(path, out=tmp_path / "whole", log=None)
    resumed = load_checkpoint(killed / "last.pt")
    reference = load_checkpoint(tmp_path / "whole" / "last.pt")
    history = json.loads(resumed["history"])
    assert [h["train_samples"] for h in history] == [160] * 4  # every epoch counted once
    strip = lambda hist: [{k: v for k, v in h.items() if k != "time"} for h in hist]  # noqa: E731
    assert strip(history) == strip(whole.history)
    assert resumed["scheduler"] == reference["scheduler"]
    for name, ref in reference["model"].items():
        assert torch.equal(resumed["model"][name], ref), name


def _digit_png(path: Path, image) -> None:
    Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(path)


def _csv_run(root: Path, labels: list[int]) -> dict:
    images = load_digits().images
    (root / "images").mkdir(parents=True)
    names = [f"img{i:03d}.png" for i in range(len(labels))]
    for name, image in zip(names, images):
        _digit_png(root / "images" / name, image)
    rows = ["label,Image_index"] + [f"{y},{n}" for y, n in zip(labels, names)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "train.txt").write_text("\n".join(names[:-4]) + "\n")
    (root / "val.txt").write_text("\n".join(names[-4:]) + "\n")
    data = {
        "kind": "csv",
        "root": str(root / "images"),
        "csv": str(root / "labels.csv"),
        "list": str(root / "train.txt"),
        "val_list": str(root / "val.txt"),
        "label_column": 0,
        "image_size": 8,
    }
    return recipe(
        model={"name": "test_tiny_mlp", "kwargs": {"num_classes": 3}},
        data=data,
        train={"epochs": 1, "progress": False, "plot": False, "threads": 1},
    )


def test_a_label_the_model_has_no_output_for_exits_2_and_keeps_the_old_run(tmp_path, capsys):
    out = tmp_path / "run"
    good = _csv_run(tmp_path / "good", [i % 3 for i in range(16)])
    assert main(["train", _write(tmp_path / "good.yaml", good), "--out", str(out), "--quiet"]) == 0
    before = {name: (out / name).read_bytes() for name in ("recipe.yaml", "last.pt", "metrics.jsonl")}

    labels = [i % 3 for i in range(16)]
    labels[5] = 7  # a label beyond the model's 3 outputs
    bad = _csv_run(tmp_path / "bad", labels)
    capsys.readouterr()
    assert (
        main(["train", _write(tmp_path / "bad.yaml", bad), "--out", str(out), "--quiet", "--overwrite"]) == 2
    )
    err = capsys.readouterr().err
    assert "labels.csv" in err and "'7'" in err and "img005.png" in err and "3 outputs" in err
    assert "internal error" not in err and "IndexError" not in err
    assert {name: (out / name).read_bytes() for name in before} == before  # the old run is untouched


def test_a_class_folder_beyond_the_models_outputs_is_refused(tmp_path):
    images = load_digits().images
    for i in range(24):
        folder = tmp_path / "data" / f"class_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        _digit_png(folder / f"{i}.png", images[i])
    r = recipe(
        model={"name": "test_tiny_mlp", "kwargs": {"num_classes": 3}},
        data={"kind": "image_folder", "root": str(tmp_path / "data"), "val_fraction": 0.25, "image_size": 8},
        train={"epochs": 1, "progress": False, "plot": False, "threads": 1},
    )
    with pytest.raises(RecipeError, match=r"class 'class_3' \(label index 3\).*num_classes: 4"):
        train(r, out=tmp_path / "run", log=None)
    assert not (tmp_path / "run").exists()  # nothing written for a refused run


def _write(path: Path, r: dict) -> str:
    path.write_text(yaml.safe_dump(r))
    return str(path)


def test_curves_have_an_lr_panel_a_best_epoch_marker_integer_ticks_and_the_run_name(tmp_path):
    import matplotlib.pyplot as plt

    from torchsmith.training.loop import _curves_figure, plot_curves

    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 0.1 * e, "lr": 0.1 / 2**e}
        for e in range(1, 8)
    ]
    fig = _curves_figure(history, title="digits-run", best_epoch=3)
    assert fig._suptitle.get_text() == "digits-run"
    loss, _acc, lr = fig.axes
    assert lr.get_ylabel() == "learning rate"
    assert [tuple(line.get_ydata()) for line in lr.get_lines() if line.get_label().startswith("lr")] == [
        tuple(h["lr"] for h in history)
    ]
    for ax in fig.axes:
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 7]
        assert ticks and all(float(t).is_integer() for t in ticks)  # no epoch 2.5
        marks = [line for line in ax.get_lines() if line.get_label().startswith("best")]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [3, 3]
    stars = [line for line in loss.get_lines() if line.get_marker() == "*"]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [([3], [1 / 3]), ([3], [1.2 / 3])]
    plt.close(fig)
    out = plot_curves(history, tmp_path / "curves.png", title="digits-run", best_epoch=3)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
