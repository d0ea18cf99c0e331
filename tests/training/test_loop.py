"""The loop end to end on a tiny model: files written, reload matches, options that must agree do."""

from __future__ import annotations

import json

import pytest
import torch
from _tiny import recipe

from torchsmith.training import evaluate, train
from torchsmith.training.checkpointing import load_checkpoint


def test_run_writes_checkpoints_metrics_plot_and_reload_matches(tmp_path):
    r = recipe(train={"epochs": 3, "progress": True, "threads": 1, "log_every": 5}, optimizer={"lr": 0.02})
    lines: list[str] = []
    res = train(r, out=tmp_path, log=lines.append)
    # reached a sensible accuracy on digits even with a 2.4k-parameter MLP
    assert res.val_acc > 0.85
    assert res.reloaded_acc == res.val_acc  # same weights after a round trip through the disk
    assert any(line.startswith("epoch 3/3") for line in lines)
    metrics = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert {"train_loss", "train_acc", "train_top5", "val_loss", "val_acc", "val_top5", "lr"} <= set(
        metrics[0]
    )
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = load_checkpoint(tmp_path / "last.pt")  # weights_only=True inside
    assert last["epoch"] == 3 and last["batches_done"] == 0
    assert last["step"] == res.steps == 3 * 45
    assert set(last["ranks"][0]["rng"]) == {"python", "numpy", "torch", "cuda"}
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best"] == max(m["val_acc"] for m in metrics)
    ev = evaluate(None, tmp_path / "last.pt")
    assert ev["val_acc"] == pytest.approx(res.val_acc)
    assert ev["val_samples"] == 359


def test_grad_accumulation_matches_the_big_batch(tmp_path):
    base = {"model": {"name": "test_tiny_mlp", "kwargs": {"dropout": 0.0}}}
    big = train(
        recipe(
            **base,
            data={"batch_size": 64, "limit": 256},
            train={"epochs": 1, "progress": False, "plot": False, "threads": 1},
        ),
        out=tmp_path / "a",
        log=None,
    )
    acc = train(
        recipe(
            **base,
            data={"batch_size": 32, "limit": 256},
            train={"epochs": 1, "grad_accum": 2, "progress": False, "plot": False, "threads": 1},
        ),
        out=tmp_path / "b",
        log=None,
    )
    assert big.steps == acc.steps == 4  # 205 training samples: 3 full groups + 1 short group
    for (n, a), b in zip(big.model.state_dict().items(), acc.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)


def test_bf16_channels_last_clipping_and_max_steps(tmp_path):
    r = recipe(
        data={"limit": 256},
        train={
            "epochs": 5,
            "max_steps": 3,
            "precision": "bf16",
            "channels_last": True,
            "clip_grad_norm": 0.5,
            "progress": False,
            "plot": False,
            "threads": 1,
        },
    )
    res = train(r, out=tmp_path, log=None)
    assert res.steps == 3 and len(res.history) == 1  # stopped inside the first epoch
    assert res.reloaded_acc == res.val_acc


def test_fp16_on_cpu_is_refused_with_the_field(tmp_path):
    from torchsmith.errors import RecipeError

    if torch.cuda.is_available():
        pytest.skip("fp16 is valid on a GPU")
    with pytest.raises(RecipeError, match=r"'train.precision'.*bf16"):
        train(recipe(train={"precision": "fp16"}), out=tmp_path, log=None)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    from torchsmith.errors import CheckpointError

    with pytest.raises(CheckpointError, match="cannot resume: no checkpoint"):
        train(recipe(), out=tmp_path, resume=True, log=None)


def test_best_checkpoint_survives_later_last_checkpoints(tmp_path):
    """best.pt shares last.pt's bytes when written; a later last.pt (a new file by rename) leaves it be."""
    from torchsmith.training.checkpointing import save_checkpoint

    train(recipe(train={"epochs": 1, "threads": 1}), out=tmp_path, log=None)
    best_bytes = (tmp_path / "best.pt").read_bytes()
    assert best_bytes == (tmp_path / "last.pt").read_bytes()
    save_checkpoint(tmp_path / "last.pt", {"epoch": 99})
    assert (tmp_path / "best.pt").read_bytes() == best_bytes
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 99
