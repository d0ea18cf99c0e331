"""``train.deterministic``: bit-identical reruns and resumes, the flags it sets, and the op it names."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from _tiny import recipe

import torchsmith
from torchsmith.errors import RecipeError
from torchsmith.training import train
from torchsmith.training.checkpointing import load_checkpoint
from torchsmith.training.determinism import (
    CUBLAS_WORKSPACE_CONFIG,
    NondeterministicOpError,
    SeedWorker,
    deterministic_mode,
    translate_error,
)
from torchsmith.zoo import register_model

KILL = str(Path(__file__).with_name("_kill.py"))  # trains, SIGKILLs itself at a hook and step


def _recipe(**train_extra) -> dict:
    # MixUp + CutMix, a linear warmup into a cosine per step, deterministic: the recipe, tiny.
    return recipe(
        data={"batch_size": 16, "limit": 120},
        optimizer={"name": "AdamW", "lr": 0.01},
        scheduler={
            "name": "cosine",
            "interval": "step",
            "warmup_steps": 5,
            "warmup_lr": 1e-4,
            "min_lr": 1e-5,
        },
        train={
            "epochs": 2,
            "deterministic": True,
            "mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "switch_prob": 0.5},
            "checkpoint_every_steps": 3,
            "plot": False,
            **train_extra,
        },
    )


class _SeesFlags(torchsmith.Callback):
    def __init__(self):
        self.seen = None

    def on_train_start(self, trainer) -> None:
        cudnn = torch.backends.cudnn
        self.seen = (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark)


def _final(path) -> tuple[dict, list]:
    state = load_checkpoint(path / "last.pt")
    history = [{k: v for k, v in h.items() if k != "time"} for h in json.loads(state["history"])]
    return state, history


def test_two_runs_and_a_resume_after_kill_9_mid_warmup_are_bit_identical(tmp_path):
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump(_recipe()))
    flags = _SeesFlags()
    a = train(path, out=tmp_path / "a", log=None, callbacks=[flags])
    assert flags.seen == (True, True, False)
    assert not torch.are_deterministic_algorithms_enabled()  # the process's settings came back
    train(path, out=tmp_path / "b", log=None)
    # SIGKILL after optimizer step 4 (the helper's callback), past the checkpoint of step 3.
    proc = subprocess.run(
        [sys.executable, KILL, str(path), str(tmp_path / "c"), "on_step_end", "4"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed = load_checkpoint(tmp_path / "c" / "last.pt")
    assert killed["step"] == 3 and killed["batches_done"] == 3  # mid-warmup, mid-epoch
    resumed = train(path, out=tmp_path / "c", resume=True, log=None)
    assert resumed.resumed_from["step"] == 3
    sa, ha = _final(tmp_path / "a")
    assert a.steps == sa["step"] == 12
    for other in ("b", "c"):
        so, ho = _final(tmp_path / other)
        assert ho == ha, other
        for name, ref in sa["model"].items():
            assert torch.equal(so["model"][name], ref), f"{other}: {name} differs"
        for x, y in zip(so["optimizer"]["state"].values(), sa["optimizer"]["state"].values()):
            assert torch.equal(x["exp_avg"], y["exp_avg"]) and torch.equal(x["exp_avg_sq"], y["exp_avg_sq"])
        assert json.loads(so["lr_trace"]) == json.loads(sa["lr_trace"])
        assert (
            so["scheduler"]["_schedulers"][1]["last_epoch"] == sa["scheduler"]["_schedulers"][1]["last_epoch"]
        )


class _UnpoolNet(nn.Module):
    """max_unpool2d in training only: torch has no deterministic version of it (on the CPU either)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        if self.training:
            pooled, idx = F.max_pool2d(x, 2, return_indices=True)
            x = F.max_unpool2d(pooled, idx, 2)
        return self.fc(x.flatten(1))


@register_model("test_unpool_net", input_shape=(1, 1, 8, 8), overwrite=True)
def unpool_net(num_classes: int = 10):
    """A digits classifier whose training forward uses max_unpool2d."""
    return _UnpoolNet(num_classes)


def test_a_nondeterministic_op_is_named_with_the_ways_out(tmp_path):
    r = recipe(
        model={"name": "test_unpool_net"}, data={"limit": 64}, train={"deterministic": True, "plot": False}
    )
    with pytest.raises(NondeterministicOpError) as info:
        train(r, out=tmp_path / "run", log=None)
    e = info.value
    assert e.op == "max_unpooling2d_forward_out"
    message = str(e)
    assert "train.deterministic" in message and "'max_unpooling2d_forward_out'" in message
    assert "optimizer step 0" in message and "train.deterministic: false" in message
    assert isinstance(e, RecipeError)  # CLI exit 2
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_cublas_error_is_translated_and_others_pass_through():
    cublas = RuntimeError(
        "Deterministic behavior was enabled with either `torch.use_deterministic_algorithms(True)` or "
        "`at::Context::setDeterministicAlgorithms(true)`, but this operation is not deterministic because "
        "it uses CuBLAS and you have set CUBLAS_WORKSPACE_CONFIG=None."
    )
    e = translate_error(cublas, "at step 3")
    assert isinstance(e, NondeterministicOpError) and e.op == "cuBLAS" and ":4096:8" in str(e)
    other = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert translate_error(other) is other


def test_cublas_workspace_is_set_before_cuda_starts_and_refused_after(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    old = os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    try:
        with deterministic_mode(True):
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG
        del os.environ["CUBLAS_WORKSPACE_CONFIG"]
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        with pytest.raises(RecipeError, match=r"CUBLAS_WORKSPACE_CONFIG=:4096:8"), deterministic_mode(True):
            pass  # pragma: no cover
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"  # a deterministic value set by the user is kept
        with deterministic_mode(True):
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        if old is not None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = old
    assert not torch.are_deterministic_algorithms_enabled()


def test_workers_are_seeded_from_seed_and_worker():
    def draws(fn: SeedWorker, worker: int) -> tuple:
        fn(worker)
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            same = draws(SeedWorker(3), 1) == draws(SeedWorker(3), 1)
            differ = draws(SeedWorker(3), 0) != draws(SeedWorker(3), 1)
            other_seed = draws(SeedWorker(4), 1) != draws(SeedWorker(3), 1)
    finally:
        random.setstate(py)
        np.random.set_state(npy)
    assert same and differ and other_seed
    import pickle

    assert pickle.loads(pickle.dumps(SeedWorker(3))).seed == 3  # spawned workers get it too


class _Draws(torch.utils.data.Dataset):
    """Each item: what NumPy and Python's random give in the worker that loads it."""

    epoch = 0

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor([float(np.random.rand()), random.random()])


def test_real_workers_draw_the_same_per_epoch_and_differ_between_epochs():
    ds = _Draws()

    def epoch_draws(epoch: int) -> torch.Tensor:
        ds.epoch = epoch
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, worker_init_fn=SeedWorker(7))
        return torch.cat(list(loader))

    first, again, other = epoch_draws(0), epoch_draws(0), epoch_draws(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[0], first[2])  # the two workers do not share one stream
