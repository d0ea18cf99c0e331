"""The callback API and the built-in features written on it (EMA, early stopping, retention, logs,
val_every_steps, max_time, profiler), and num_classes/in_features taken from the data."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from _tiny import recipe

import torchsmith
from torchsmith.cli.main import main
from torchsmith.errors import RecipeError
from torchsmith.training import evaluate, load_recipe, train
from torchsmith.training.checkpointing import load_checkpoint

QUIET = {"progress": False, "plot": False, "threads": 1}


class Recorder(torchsmith.Callback):
    """Counts hooks, keeps a small state across resumes, and (optionally) stops at a step."""

    state_key = "recorder"

    def __init__(self, stop_at: int | None = None):
        self.calls: list[str] = []
        self.steps_seen = 0
        self.loaded = None
        self.stop_at = stop_at
        self.weights_after_step: list[dict] = []

    def on_train_start(self, trainer):
        self.calls.append("train_start")

    def on_step_end(self, trainer, loss):
        assert loss.dim() == 0
        self.steps_seen += 1
        self.calls.append("step")
        self.weights_after_step.append({k: v.clone() for k, v in trainer.raw_model.state_dict().items()})
        if self.stop_at is not None and trainer.step == self.stop_at:
            trainer.stop("the recorder said so")

    def on_validation_end(self, trainer, metrics):
        assert {"epoch", "step", "val_loss", "val_acc"} <= set(metrics)
        self.calls.append("val")

    def on_epoch_end(self, trainer, record):
        self.calls.append("epoch")

    def on_checkpoint(self, trainer, info):
        self.calls.append("ckpt")
        info.after_write(lambda out: self.calls.append("written"))

    def on_train_end(self, trainer):
        self.calls.append("train_end")

    def teardown(self, trainer):
        self.calls.append("teardown")

    def state_dict(self):
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state):
        self.loaded = dict(state)
        self.steps_seen = state["steps_seen"]


def test_hooks_order_state_and_a_stop_mid_epoch_that_resumes_bit_identically(tmp_path):
    base = recipe(data={"limit": 160}, train={**QUIET, "epochs": 2, "val_every_steps": 2})
    cb = Recorder(stop_at=3)
    first = train(base, out=tmp_path / "a", log=None, callbacks=[cb])
    assert first.stop_reason == "the recorder said so" and first.steps == 3 and first.history == []
    assert cb.calls == [
        "train_start", "step", "step", "val", "step", "ckpt", "written", "train_end", "teardown"
    ]  # fmt: skip
    stopped = load_checkpoint(tmp_path / "a" / "last.pt")
    assert (stopped["epoch"], stopped["batches_done"], stopped["step"]) == (0, 3, 3)  # mid-epoch, resumable
    assert stopped["callbacks"]["recorder"] == {"steps_seen": 3}

    again = Recorder()
    resumed = train(base, out=tmp_path / "a", resume=True, log=None, callbacks=[again])
    assert again.loaded == {"steps_seen": 3} and again.steps_seen == resumed.steps == 8
    assert (
        again.calls.count("epoch") == 2 and again.calls.count("val") == 1 + 2
    )  # step 6, and the epoch ends at 4 and 8
    whole = train(base, out=tmp_path / "b", log=None)
    for k, v in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)


def test_callbacks_must_be_callbacks_and_keys_unique(tmp_path):
    from torchsmith.errors import InputError

    with pytest.raises(InputError, match=r"not a torchsmith\.Callback"):
        train(recipe(), out=tmp_path, log=None, callbacks=[object()])
    with pytest.raises(InputError, match="share the state key 'recorder'"):
        train(recipe(), out=tmp_path, log=None, callbacks=[Recorder(), Recorder()])


def test_ema_averages_each_step_validates_and_is_what_checkpoints_serve(tmp_path):
    decay = 0.8
    r = recipe(data={"limit": 160}, train={**QUIET, "epochs": 2, "ema": {"decay": decay}})
    rec = Recorder()
    res = train(r, out=tmp_path, log=None, callbacks=[rec])
    # The EMA recomputed by hand from the weights after every step (the EMA starts as the initial model).
    last = load_checkpoint(tmp_path / "last.pt")
    ema = last["callbacks"]["ema"]
    assert ema["updates"] == res.steps == len(rec.weights_after_step) and ema["eval"] is True
    from torchsmith.training.build import build_model

    expect = build_model(load_recipe(r)).state_dict()
    for w in rec.weights_after_step:
        for k, v in expect.items():
            if v.is_floating_point():
                v.lerp_(w[k], 1 - decay)
    for k, v in expect.items():
        torch.testing.assert_close(ema["model"][k], v, rtol=1e-6, atol=1e-7, msg=k)
        assert not torch.equal(ema["model"][k], last["model"][k]) or not v.is_floating_point()
    # validation, best.pt, evaluate and the final model are on the EMA weights
    assert res.model is not None and torch.equal(res.model.state_dict()["4.weight"], ema["model"]["4.weight"])
    assert evaluate(None, tmp_path / "last.pt")["val_acc"] == pytest.approx(res.history[-1]["val_acc"])
    assert res.reloaded_acc == pytest.approx(res.val_acc)


def test_early_stopping_stops_and_a_resume_stays_stopped(tmp_path):
    es = {"metric": "val_loss", "patience": 1, "min_delta": 10.0}  # nothing improves by 10
    r = recipe(data={"limit": 160}, train={**QUIET, "epochs": 5, "early_stopping": es})
    res = train(r, out=tmp_path, log=None)
    assert len(res.history) == 2 and "early stopping: val_loss" in res.stop_reason
    again = train(r, out=tmp_path, resume=True, log=None)
    assert again.steps == res.steps and len(again.history) == 2
    bad = recipe(data={"limit": 160}, train={**QUIET, "early_stopping": {"metric": "val_top9"}})
    with pytest.raises(RecipeError, match=r"'train.early_stopping.metric': 'val_top9' is not among"):
        train(bad, out=tmp_path / "bad", log=None)


def test_keep_last_and_keep_best_with_a_resume(tmp_path):
    ck = {"keep_last": 2, "keep_best": 1, "metric": "val_loss", "every_n_steps": 2}
    r = recipe(data={"limit": 160}, checkpoint=ck, train={**QUIET, "epochs": 3, "max_steps": 8})
    train(r, out=tmp_path, log=None)
    r["train"]["max_steps"] = None
    train(r, out=tmp_path, resume=True, log=None)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    state = load_checkpoint(tmp_path / "last.pt")["callbacks"]["checkpoints"]
    entries = {e["file"]: e for e in state["entries"]}
    assert set(files) == set(entries)
    scored = [e for e in entries.values() if e["score"] is not None]
    best = min(scored, key=lambda e: e["score"])
    latest = sorted(entries.values(), key=lambda e: e["step"])[-2:]
    assert {best["file"], *(e["file"] for e in latest)} == set(files)
    assert latest[-1]["file"] == "epoch-0003-step-00000012.pt"
    for name in files:  # each a whole checkpoint of its step
        assert load_checkpoint(tmp_path / "checkpoints" / name)["step"] == entries[name]["step"]


def test_csv_jsonl_tensorboard_val_every_steps_and_profile(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = recipe(
        data={"limit": 160},
        logging=["csv", "tensorboard"],
        train={**QUIET, "epochs": 2, "val_every_steps": 3, "log_every": 2, "profile": {"steps": [2, 3]}},
    )
    res = train(r, out=tmp_path, log=None)
    assert not (tmp_path / "metrics.jsonl").exists() and res.metrics_file is None
    import csv

    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [(row["kind"], row["step"]) for row in rows] == [
        ("val_step", "3"), ("epoch", "4"), ("val_step", "6"), ("epoch", "8")
    ]  # fmt: skip
    assert float(rows[1]["train_loss"]) == res.history[0]["train_loss"]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"step/train_loss", "step/lr", "step/val_acc", "epoch/val_acc", "epoch/train_loss"} <= tags
    assert [e.step for e in acc.Scalars("step/train_loss")] == [2, 4, 6, 8]
    assert [e.step for e in acc.Scalars("step/val_acc")] == [3, 4, 6, 8]  # every validation
    assert [e.value for e in acc.Scalars("epoch/val_acc")] == pytest.approx(
        [h["val_acc"] for h in res.history]
    )
    (text,) = acc.Tensors("recipe/text_summary")  # add_text is stored as a text tensor
    assert b"test_tiny_mlp" in text.tensor_proto.string_val[0]
    trace = json.loads((tmp_path / "profile" / "trace-rank0.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert {n for n in names if n.startswith("ProfilerStep#")} == {"ProfilerStep#2", "ProfilerStep#3"}
    assert any(n.startswith("aten::") for n in names)


def test_max_time_stops_with_a_checkpoint_to_resume_from(tmp_path):
    r = recipe(data={"limit": 160}, train={**QUIET, "epochs": 2, "max_time": 1e-6})
    res = train(r, out=tmp_path, log=None)
    assert res.steps == 1 and "max_time" in res.stop_reason
    state = load_checkpoint(tmp_path / "last.pt")
    assert (state["batches_done"], state["step"]) == (1, 1)
    r["train"]["max_time"] = "01:00:00"
    done = train(r, out=tmp_path, resume=True, log=None)
    assert done.steps == 8 and done.stop_reason is None


def test_num_classes_and_in_features_from_the_data(tmp_path):
    r = recipe(model={"name": "mlp", "kwargs": {"in_features": "auto", "num_classes": "auto", "hidden": 16}})
    r["data"]["limit"] = 160
    r["train"] = {**QUIET, "epochs": 1}
    lines: list[str] = []
    res = train(r, out=tmp_path, log=lines.append)
    assert "model: model.kwargs.in_features auto -> 64 (from the training data)" in lines
    assert res.model.fc1.in_features == 64 and res.model.fc2.out_features == 10
    saved = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert saved["model"]["kwargs"] == {"in_features": 64, "num_classes": 10, "hidden": 16}
    assert evaluate(None, tmp_path / "last.pt")["val_acc"] == pytest.approx(res.val_acc)
    # a surgery op's num_classes too, and a model without in_features is refused by name
    r2 = recipe(surgery=[{"op": "set_num_classes", "num_classes": "auto"}], data={"limit": 64})
    r2["train"] = {**QUIET, "max_steps": 1}
    assert train(r2, out=tmp_path / "s", log=None).model[4].out_features == 10
    with pytest.raises(RecipeError, match=r"'model.kwargs.in_features'.*no argument"):
        train(
            recipe(model={"name": "test_unused_mlp", "kwargs": {"in_features": "auto"}}),
            out=tmp_path / "u",
            log=None,
        )


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.ema.decay=1.5", "train.ema.decay"),
        ("train.ema.every_n_steps=0", "train.ema.every_n_steps"),
        ("train.ema.evl=true", "train.ema.evl"),
        ("train.early_stopping.mode=up", "train.early_stopping.mode"),
        ("train.early_stopping.metric=accuracy", "train.early_stopping.metric"),
        ("train.early_stopping.patience=0", "train.early_stopping.patience"),
        ("checkpoint.keep_last=0", "checkpoint.keep_last"),
        ("checkpoint.keep_best=two", "checkpoint.keep_best"),
        ("checkpoint.metric=loss", "checkpoint.metric"),
        ("checkpoint.every_n_steps=0", "checkpoint.every_n_steps"),
        ("logging=[jsonl, wandb]", "logging[1]"),
        ("train.val_every_steps=0", "train.val_every_steps"),
        ("train.max_time=soon", "train.max_time"),
        ("train.max_time=-5", "train.max_time"),
        ("train.profile.steps=[5, 2]", "train.profile.steps"),
        ("train.profile=3", "train.profile"),
    ],
)
def test_every_new_field_is_checked_by_name(override, field):
    with pytest.raises(RecipeError, match=f"recipe field '{field.replace('[', chr(92) + '[')}'"):
        load_recipe(recipe(), overrides=[override])


def test_bad_field_at_the_cli_is_exit_2(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(train={"ema": {"decay": 2.0}})))
    assert main(["train", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "train.ema.decay" in capsys.readouterr().err
