"""``tune lr`` (LR range test) and ``tune batch-size``: state restored, nothing written, the search."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from _tiny import recipe

import torchsmith
from torchsmith.cli.main import main
from torchsmith.errors import InputError
from torchsmith.training import tune as tune_mod
from torchsmith.training.tune import find_largest, lr_range_test, parse_size, suggest_lr, tune_batch_size


def test_the_range_test_restores_model_optimizer_and_rng_bit_for_bit():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 3)
    )
    opt = torch.optim.AdamW(
        [{"params": model[0].parameters(), "lr": 0.01}, {"params": model[3].parameters(), "lr": 0.001}],
        lr=0.01,
    )
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    loss = torch.nn.functional.cross_entropy(model(x), y)  # some optimizer state and gradients first
    loss.backward()
    opt.step()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    opt_before = json.dumps(opt.state_dict()["param_groups"])
    moments = [s["exp_avg"].clone() for s in opt.state.values()]
    rng = torch.get_rng_state()
    seen_lrs = []

    def step(i):
        model.train()
        seen_lrs.append([g["lr"] for g in opt.param_groups])
        opt.zero_grad()
        out = torch.nn.functional.cross_entropy(model(x), y)
        out.backward()
        opt.step()
        return out

    result = lr_range_test(model, opt, step, min_lr=1e-5, max_lr=1.0, steps=25)
    assert result.steps == len(result.lrs) == len(result.losses) == len(seen_lrs) > 0
    assert result.lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(result.lrs, result.lrs[1:]))
    assert all(g2 == pytest.approx(g1 / 10) for g1, g2 in seen_lrs)  # the groups keep their ratio
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert not model.training and not model[1].training
    assert json.dumps(opt.state_dict()["param_groups"]) == opt_before
    assert all(torch.equal(s["exp_avg"], m) for s, m in zip(opt.state.values(), moments))
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_suggestion_is_the_steepest_descent_and_divergence_stops_the_test():
    lrs = [10 ** (-6 + i / 4) for i in range(25)]
    # A loss that falls fastest at index 12 (lr 1e-3), flattens, then explodes.
    losses = [2.0 - 1.0 / (1 + math.exp(-(i - 12) * 1.5)) + (50.0 if i >= 20 else 0.0) for i in range(25)]
    assert suggest_lr(lrs[:20], losses[:20], skip_begin=0, skip_end=0) == pytest.approx(lrs[12])
    it = iter(losses)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    r = lr_range_test(model, opt, lambda i: next(it), min_lr=lrs[0], max_lr=lrs[-1], steps=25, smoothing=0.0)
    assert r.steps == 21 and r.stopped and "passed 4 x its best" in r.stopped
    assert r.suggestion == pytest.approx(lrs[12])
    assert suggest_lr(lrs[:3], losses[:3]) is None


def test_tune_lr_on_a_recipe_suggests_plots_where_told_and_writes_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = recipe(
        data={"batch_size": 16, "limit": 200},
        scheduler={"name": "cosine", "warmup_steps": 2, "interval": "step"},
    )
    plot = tmp_path / "plots" / "lr.png"
    result = torchsmith.tune_lr(r, steps=30, min_lr=1e-5, max_lr=10.0, plot=plot)
    assert result.suggestion is not None and 1e-5 <= result.suggestion <= 10.0
    # The sweep reached the model although the recipe's warmup starts at lr 0: the loss moved.
    assert max(result.losses) - min(result.losses) > 0.5
    assert result.plot_file == plot and plot.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["lr.png", "plots"]  # no runs/ folder, nothing else
    assert json.loads(json.dumps(result.to_dict()))["suggestion"] == result.suggestion


def test_tune_cli_json_and_errors(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe(data={"batch_size": 16, "limit": 120})))
    code = main(["tune", "lr", str(path), "--steps", "12", "--no-plot", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["steps"] <= 12 and out["plot_file"] is None
    assert sorted(os.listdir(tmp_path)) == ["tiny.yaml"]
    code = main(["tune", "batch-size", str(path), "--json", "--quiet"])  # the CPU needs a budget
    captured = capsys.readouterr()
    assert code == 2 and "--max-memory" in json.loads(captured.out)["error"]
    assert main(["tune", "batch-size", str(path), "--max-memory", "lots", "--quiet"]) == 2


@pytest.mark.parametrize("limit", [1, 5, 37, 64, 1000])
@pytest.mark.parametrize("start", [1, 3, 64, 5000])
def test_doubling_then_bisecting_finds_the_boundary_with_few_trials(limit, start):
    for boundary in (0, 1, 2, 17, 64, 999, 10**6):
        tried = []

        def fits(n, b=boundary, tried=tried):
            tried.append(n)
            return n <= b

        found = find_largest(fits, start, limit)
        assert found == min(boundary, limit)
        assert len(tried) == len(set(tried)) and len(tried) <= 2 * max(limit, 2).bit_length() + 2
        assert all(1 <= n <= limit for n in tried)


def test_sizes_are_read_as_people_write_them():
    assert (
        parse_size("2GiB") == 2 * 1024**3
        and parse_size("1.5 GB") == 1_500_000_000
        and parse_size("64k") == 64_000
    )
    for bad in ("", "2 GiBs", "-1G", "0", "lots"):
        with pytest.raises(InputError, match="--max-memory"):
            parse_size(bad)


def test_batch_size_on_the_cpu_fits_a_budget_and_stops_at_the_data(monkeypatch):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("the CPU budget is measured through Linux's /proc/self/clear_refs")
    r = recipe(data={"batch_size": 8, "limit": 100})
    result = tune_batch_size(r, max_memory="4GiB")  # a tiny MLP: everything fits, up to the data
    assert result.batch_size == 80 == result.limit and "training set" in result.limited_by
    assert [t["batch_size"] for t in result.trials] == [8, 16, 32, 64, 80]
    assert all(t["fits"] and t["peak_bytes"] < 4 * 1024**3 for t in result.trials)
    assert "resident" in result.measure

    # The search against the budget, with a meter that says 1 MB a sample (the real one is noisy).
    seen = {}
    real_batch = tune_mod._batch

    def batch(ds, n):
        seen["n"] = n
        return real_batch(ds, n)

    monkeypatch.setattr(tune_mod, "_batch", batch)
    monkeypatch.setattr(tune_mod._CpuMeter, "peak", lambda self: seen["n"] * 1_000_000)
    found = tune_batch_size(r, max_memory="45MB", start=4)
    assert found.batch_size == 45 and "budget" in found.limited_by
    assert [t["batch_size"] for t in found.trials][:5] == [4, 8, 16, 32, 64]
    assert tune_batch_size(r, max_memory="0.5MB").batch_size == 0
