"""A warmup in front of any scheduler: timm's LR sequence (the oracle), closed forms, resume-exact."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from _tiny import recipe

from torchsmith.errors import RecipeError
from torchsmith.training import train
from torchsmith.training.checkpointing import load_checkpoint
from torchsmith.training.recipe import load_recipe
from torchsmith.training.schedulers import WarmupPlateau, build_schedule

timm_scheduler = pytest.importorskip("timm.scheduler")


def _opt(lr: float = 0.1, groups: int = 1) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr)


def _run(opt, sched, n: int, metric=None) -> list[float]:
    """The LR each of ``n`` intervals runs at (read before the scheduler steps)."""
    out = []
    for i in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if metric is None:
            sched.step()
        else:
            sched.step(metric(i))
    return out


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-15) for x, y in zip(a, b))


@pytest.mark.parametrize(
    ("epochs", "spe", "warmup", "warmup_lr", "min_lr"), [(10, 7, 3, 1e-4, 1e-5), (6, 5, 1, 0.0, 0.0)]
)
def test_warmup_cosine_per_step_is_timms_sequence(epochs, spe, warmup, warmup_lr, min_lr):
    s = {
        "name": "cosine",
        "interval": "step",
        "warmup_epochs": warmup,
        "warmup_lr": warmup_lr,
        "min_lr": min_lr,
    }
    opt = _opt()
    ours = _run(opt, build_schedule(s, opt, epochs=epochs, steps_per_epoch=spe), epochs * spe)
    ref_opt = _opt()
    ref = timm_scheduler.CosineLRScheduler(
        ref_opt,
        t_initial=(epochs - warmup) * spe,
        lr_min=min_lr,
        warmup_t=warmup * spe,
        warmup_lr_init=warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    theirs = []
    for i in range(epochs * spe):
        ref.step_update(i)
        theirs.append(ref_opt.param_groups[0]["lr"])
    assert _close(ours, theirs)
    assert ours[0] == warmup_lr and max(ours) == pytest.approx(0.1)


def test_warmup_cosine_per_epoch_is_timms_sequence():
    s = {"name": "CosineAnnealingLR", "warmup_epochs": 2, "warmup_lr": 1e-3, "min_lr": 1e-4}
    opt = _opt()
    ours = _run(opt, build_schedule(s, opt, epochs=12, steps_per_epoch=9), 12)
    ref_opt = _opt()
    ref = timm_scheduler.CosineLRScheduler(
        ref_opt, t_initial=10, lr_min=1e-4, warmup_t=2, warmup_lr_init=1e-3, warmup_prefix=True
    )
    theirs = []
    for e in range(12):
        ref.step(e)
        theirs.append(ref_opt.param_groups[0]["lr"])
    assert _close(ours, theirs)


@pytest.mark.parametrize("mode", ["linear", "constant"])
@pytest.mark.parametrize(
    ("name", "args", "after"),
    [
        ("step", {"step_size": 3, "gamma": 0.5}, lambda t: 0.5 ** (t // 3)),
        ("multistep", {"milestones": [2, 5], "gamma": 0.1}, lambda t: 0.1 ** ((t >= 2) + (t >= 5))),
        ("exponential", {"gamma": 0.9}, lambda t: 0.9**t),
    ],
)
def test_warmup_in_front_of_step_multistep_exponential_is_the_closed_form(mode, name, args, after):
    w, wlr, base, n = 4, 0.01, 0.1, 14
    s = {"name": name, "args": args, "warmup_epochs": w, "warmup_lr": wlr, "warmup_mode": mode}
    opt = _opt(base)
    ours = _run(opt, build_schedule(s, opt, epochs=n, steps_per_epoch=3), n)

    def expect(t: int) -> float:
        if t < w:
            return wlr + (base - wlr) * t / w if mode == "linear" else wlr
        return base * after(t - w)

    assert _close(ours, [expect(t) for t in range(n)])


def test_param_groups_keep_their_ratio_through_the_warmup():
    s = {"name": "cosine", "interval": "step", "warmup_steps": 4, "warmup_lr": 0.01}
    opt = _opt(0.1, groups=2)  # lrs 0.1 and 0.2
    sched = build_schedule(s, opt, epochs=2, steps_per_epoch=10, optimizer_lr=0.1)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([0.01, 0.02])
    assert all(b == pytest.approx(2 * a) for a, b in seen)
    assert seen[4] == pytest.approx([0.1, 0.2])


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # what a checkpoint holds is plain data


@pytest.mark.parametrize(
    "s",
    [
        {"name": "cosine", "interval": "step", "warmup_steps": 6, "warmup_lr": 0.0, "min_lr": 1e-4},
        {"name": "multistep", "args": {"milestones": [3, 6]}, "warmup_epochs": 3, "warmup_mode": "constant"},
        {"name": None, "interval": "step", "warmup_steps": 5, "warmup_lr": 0.001},
    ],
)
@pytest.mark.parametrize("cut", [2, 5, 8])
def test_resume_mid_warmup_or_after_gives_the_same_sequence(s, cut):
    n = 12
    opt = _opt()
    whole = _run(opt, build_schedule(s, opt, epochs=n, steps_per_epoch=1), n)
    opt1 = _opt()
    sched1 = build_schedule(s, opt1, epochs=n, steps_per_epoch=1)
    first = _run(opt1, sched1, cut)
    saved = _roundtrip({"opt": opt1.state_dict(), "sched": sched1.state_dict()})
    opt2 = _opt()
    sched2 = build_schedule(s, opt2, epochs=n, steps_per_epoch=1)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert first + _run(opt2, sched2, n - cut) == whole


def test_plateau_gets_its_warmup_then_reduces_on_the_metric_and_resumes():
    s = {"name": "plateau", "args": {"patience": 0, "factor": 0.5}, "warmup_epochs": 3, "warmup_lr": 0.0}
    opt = _opt(0.1)
    sched = build_schedule(s, opt, epochs=10, steps_per_epoch=4)
    assert isinstance(sched, WarmupPlateau)
    flat = lambda i: 1.0  # noqa: E731  (never improves)
    lrs = _run(opt, sched, 4, flat)
    assert _close(lrs, [0.0, 0.1 / 3, 0.2 / 3, 0.1])  # metrics during the warmup are ignored
    saved = _roundtrip(sched.state_dict())
    rest = _run(opt, sched, 3, flat)
    assert _close(rest, [0.1, 0.05, 0.025])  # first metric sets the best, then halved each epoch
    opt2 = _opt(0.1)
    again = build_schedule(s, opt2, epochs=10, steps_per_epoch=4)
    again.load_state_dict(saved)
    opt2.param_groups[0]["lr"] = 0.1
    assert _run(opt2, again, 3, flat) == rest


def test_plateau_with_a_warmup_in_steps_advances_per_optimizer_step():
    s = {"name": "ReduceLROnPlateau", "warmup_steps": 4, "warmup_lr": 0.02}
    opt = _opt(0.1)
    sched = build_schedule(s, opt, epochs=3, steps_per_epoch=10)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step_update()
    assert _close(lrs, [0.02, 0.04, 0.06, 0.08, 0.1])
    sched.step(1.0)  # an epoch's end after the warmup: the plateau's own step
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("scheduler", "match"),
    [
        ({"name": "cosine", "warmup_epochs": 1, "warmup_steps": 10}, "not both"),
        ({"name": "cosine", "warmup_steps": 10}, r"scheduler\.warmup_steps.*interval: step"),
        ({"name": "step", "args": {"step_size": 2}, "min_lr": 0.001}, r"scheduler\.min_lr.*no LR floor"),
        ({"name": "cosine", "args": {"eta_min": 0.1}, "min_lr": 0.001}, r"args\.eta_min says the same"),
        ({"name": "plateau", "interval": "step"}, r"scheduler\.interval.*epoch"),
        ({"name": "cosine", "warmup_epochs": 1.5}, r"warmup_epochs.*whole number"),
        ({"name": "cosine", "warmup_mode": "exp"}, r"scheduler\.warmup_mode"),
    ],
)
def test_a_schedule_that_cannot_be_built_is_refused_naming_the_field(scheduler, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(recipe(scheduler=scheduler))


def test_a_warmup_as_long_as_the_run_is_all_warmup():
    opt = _opt()
    sched = build_schedule({"name": "cosine", "warmup_epochs": 3}, opt, epochs=3, steps_per_epoch=2)
    assert _close(_run(opt, sched, 3), [0.0, 0.1 / 3, 0.2 / 3])


def test_short_names_are_the_torch_classes():
    r = load_recipe(recipe(scheduler={"name": "Cosine", "interval": "step", "warmup_steps": 3}))
    assert r["scheduler"]["name"] == "CosineAnnealingLR"


@pytest.mark.parametrize(
    "sched",
    [
        {"name": "cosine", "interval": "step", "min_lr": 1e-5},
        {"name": "plateau", "interval": "epoch"},  # per-epoch plateau, its warmup per step
    ],
)
def test_a_run_records_the_lr_of_every_step_and_the_warmup_shows(tmp_path, sched):
    r = recipe(
        data={"batch_size": 32, "limit": 160},  # 4 steps an epoch
        scheduler={**sched, "warmup_steps": 6, "warmup_lr": 1e-4},
        train={"epochs": 2, "plot": True, "checkpoint_every_steps": 5},
    )
    result = train(r, out=tmp_path / "run", log=None)
    trace = json.loads(load_checkpoint(tmp_path / "run" / "last.pt")["lr_trace"])
    assert [s for s, _ in trace] == list(range(1, result.steps + 1)) == list(range(1, 9))
    lrs = [lr for _, lr in trace]
    assert lrs[0] == pytest.approx(1e-4) and lrs[6] == pytest.approx(0.01)  # optimizer.lr after warmup
    assert lrs[:7] == sorted(lrs[:7]) and len(set(lrs[:7])) == 7
    if sched["name"] == "cosine":
        assert lrs[7] < lrs[6]
    else:
        assert lrs[7] == lrs[6]  # the plateau only acts at an epoch's end, after its warmup
    assert result.plot_file is not None and result.plot_file.stat().st_size > 0


def test_the_docs_warmup_recipe_loads_and_builds_its_schedule():
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    section = text[text.index("## Warmup in front of any scheduler") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    r = load_recipe(yaml.safe_load(block))
    assert r["scheduler"]["name"] == "CosineAnnealingLR" and r["train"]["deterministic"] is True
    opt = _opt(r["optimizer"]["lr"])
    sched = build_schedule(r["scheduler"], opt, epochs=r["train"]["epochs"], steps_per_epoch=4)
    lrs = _run(opt, sched, 40)
    assert lrs[0] == pytest.approx(1e-5) and lrs[8] == pytest.approx(0.003) and lrs[-1] > 1e-6
