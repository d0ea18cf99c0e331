"""Every loss and optimizer seed 004 lists trains a tiny model for one step through the real loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from _tiny import recipe

from torchsmith.errors import RecipeError
from torchsmith.training import train
from torchsmith.training.losses import SEED_LOSSES, build_loss, list_losses
from torchsmith.training.optimizers import SEED_OPTIMIZERS, build_optimizer, list_optimizers, list_schedulers


def test_the_seed_lists_are_complete():
    assert len(SEED_LOSSES) == 15 and len(set(SEED_LOSSES)) == 15
    assert len(SEED_OPTIMIZERS) == 11 and len(set(SEED_OPTIMIZERS)) == 11
    assert set(SEED_LOSSES) <= set(list_losses())
    assert set(SEED_OPTIMIZERS) <= set(list_optimizers())
    assert {"OneCycleLR", "CosineAnnealingLR", "StepLR", "ReduceLROnPlateau"} <= set(list_schedulers())


def _tiny_run(tmp_path, **sections):
    r = recipe(
        data={"limit": 96, "batch_size": 32, "val_fraction": 0.25},
        train={"epochs": 1, "max_steps": 1, "progress": False, "threads": 1, "top_k": [1], "plot": False},
        **sections,
    )
    return train(r, out=tmp_path, log=None)


@pytest.mark.parametrize("name", SEED_LOSSES)
def test_each_seed_loss_trains_one_step(tmp_path, name):
    kwargs = {"num_classes": 11} if name == "CTCLoss" else {}  # CTC: output 0 is the blank
    res = _tiny_run(
        tmp_path, model={"name": "test_tiny_mlp", "kwargs": {**kwargs, "dropout": 0.0}}, loss={"name": name}
    )
    rec = res.history[-1]
    assert res.steps == 1
    assert rec["train_loss"] == rec["train_loss"] and abs(rec["train_loss"]) < 1e6  # finite
    assert 0.0 <= rec["val_acc"] <= 1.0
    # the step changed the weights
    from torchsmith.training.build import build_model
    from torchsmith.training.recipe import load_recipe

    fresh = build_model(
        load_recipe(recipe(model={"name": "test_tiny_mlp", "kwargs": {**kwargs, "dropout": 0.0}}))
    )
    changed = any(
        not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), res.model.state_dict().values())
    )
    assert changed


@pytest.mark.parametrize("name", [n for n in SEED_OPTIMIZERS if n != "SparseAdam"])
def test_each_seed_optimizer_trains_one_step(tmp_path, name):
    res = _tiny_run(tmp_path, optimizer={"name": name, "lr": 0.05})
    assert res.steps == 1
    w0 = recipe()  # same seed -> same initial weights
    from torchsmith.training.build import build_model
    from torchsmith.training.recipe import load_recipe

    fresh = build_model(load_recipe(w0))
    diff = sum(
        (a - b).abs().sum().item()
        for a, b in zip(fresh.state_dict().values(), res.model.state_dict().values())
    )
    assert diff > 0


def test_sparse_adam_steps_sparse_embeddings_and_refuses_dense_models(tmp_path):
    emb = nn.Embedding(20, 4, sparse=True)
    opt = build_optimizer("SparseAdam", emb.parameters(), lr=0.1, model=emb)
    before = emb.weight.detach().clone()
    emb(torch.tensor([1, 2, 3])).sum().backward()
    assert emb.weight.grad.is_sparse
    opt.step()
    changed_rows = (emb.weight.detach() != before).any(1).nonzero().flatten().tolist()
    assert changed_rows == [1, 2, 3]
    with pytest.raises(RecipeError, match=r"SparseAdam only handles sparse gradients.*1\.weight"):
        _tiny_run(tmp_path, optimizer={"name": "SparseAdam", "lr": 0.01})


def test_adapter_none_passes_outputs_through():
    crit = build_loss("MSELoss", {}, adapter="none")
    assert float(crit(torch.ones(2, 3), torch.zeros(2, 3))) == 1.0


def test_bad_loss_arguments_name_the_field():
    with pytest.raises(RecipeError, match=r"'loss.args.reduction'.*mean"):
        build_loss("L1Loss", {"reduction": "everything"})


@pytest.mark.parametrize(
    "sched",
    [
        ("StepLR", {"step_size": 1}, "epoch"),
        ("OneCycleLR", {}, "step"),
        ("ReduceLROnPlateau", {"patience": 0}, "epoch"),
    ],
)
def test_schedulers_run(tmp_path, sched):
    name, args, interval = sched
    r = recipe(
        data={"limit": 128, "batch_size": 32},
        scheduler={"name": name, "args": args, "interval": interval},
        train={"epochs": 2, "progress": False, "threads": 1, "plot": False},
    )
    res = train(r, out=tmp_path, log=None)
    lrs = [h["lr"] for h in res.history]
    assert len(lrs) == 2
    if name == "StepLR":
        assert lrs == pytest.approx([0.001, 0.0001])
    if name == "OneCycleLR":
        assert lrs[-1] < 0.001  # annealed to near zero at the end
