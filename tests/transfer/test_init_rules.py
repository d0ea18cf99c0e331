"""Rule-based init: each function's statistics against its formula (seed 001, 004 §3.5), precedence,
defaults, determinism, skip/only, and errors that name the rule and field."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from torchsmith.errors import InputError, RecipeError
from torchsmith.transfer import InitRule, init_weights, load_init_rules, rules_from_config

# Real layers; sizes large enough for tight statistics, small enough to be fast.
FAN_IN_CONV, FAN_OUT_CONV = 64 * 9, 128 * 9  # Conv2d(64, 128, 3)
FAN_IN_FC, FAN_OUT_FC = 1024, 512  # Linear(1024, 512)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(64, 128, 3), nn.BatchNorm2d(128), nn.Flatten(), nn.Linear(1024, 512))


def _init_one(layer_type: str, fn: str, **params) -> nn.Module:
    net = _net()
    init_weights(net, [InitRule(fn, type=layer_type, **params)], seed=3)
    return net


def _stats(t: torch.Tensor) -> tuple[float, float, float]:
    t = t.detach().double()
    return t.mean().item(), t.std().item(), t.abs().max().item()


def test_xavier_uniform_bound_is_gain_sqrt_6_over_fan_in_plus_fan_out():
    net = _init_one("Linear", "xavier_uniform", gain="relu")
    bound = math.sqrt(2) * math.sqrt(6 / (FAN_IN_FC + FAN_OUT_FC))
    mean, std, amax = _stats(net[3].weight)
    assert amax <= bound and amax > 0.99 * bound
    assert abs(mean) < 0.01 * bound
    assert std == pytest.approx(bound / math.sqrt(3), rel=0.02)


def test_xavier_normal_std_is_gain_sqrt_2_over_fan_in_plus_fan_out():
    net = _init_one("Conv2d", "xavier_normal", gain=0.5)
    mean, std, _ = _stats(net[0].weight)
    expected = 0.5 * math.sqrt(2 / (FAN_IN_CONV + FAN_OUT_CONV))
    assert std == pytest.approx(expected, rel=0.02)
    assert abs(mean) < 0.02 * expected


@pytest.mark.parametrize(
    ("a", "mode", "nonlinearity"), [(0, "fan_in", "relu"), (0.2, "fan_out", "leaky_relu")]
)
def test_kaiming_uniform_bound(a, mode, nonlinearity):
    net = _init_one("Conv2d", "kaiming_uniform", a=a, mode=mode, nonlinearity=nonlinearity)
    fan = FAN_IN_CONV if mode == "fan_in" else FAN_OUT_CONV
    gain = math.sqrt(2.0) if nonlinearity == "relu" else math.sqrt(2.0 / (1 + a * a))
    bound = gain * math.sqrt(3.0 / fan)  # = sqrt(6 / ((1 + a^2) * fan)) for leaky_relu
    _, std, amax = _stats(net[0].weight)
    assert amax <= bound and amax > 0.99 * bound
    assert std == pytest.approx(bound / math.sqrt(3), rel=0.02)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_kaiming_normal_std(mode):
    net = _init_one("Linear", "kaiming_normal", mode=mode, nonlinearity="relu")
    fan = FAN_IN_FC if mode == "fan_in" else FAN_OUT_FC
    mean, std, _ = _stats(net[3].weight)
    assert std == pytest.approx(math.sqrt(2.0 / fan), rel=0.02)
    assert abs(mean) < 0.02 * std


def test_uniform_normal_trunc_normal_constant():
    w = _init_one("Linear", "uniform", a=-0.3, b=0.7)[3].weight
    assert w.min() >= -0.3 and w.max() <= 0.7
    assert w.mean().item() == pytest.approx(0.2, abs=0.005)
    assert w.std().item() == pytest.approx(1.0 / math.sqrt(12), rel=0.02)
    w = _init_one("Linear", "normal", mean=0.5, std=0.01)[3].weight
    assert w.mean().item() == pytest.approx(0.5, abs=0.001)
    assert w.std().item() == pytest.approx(0.01, rel=0.02)
    w = _init_one("Linear", "trunc_normal", std=0.02, a=-0.03, b=0.03)[3].weight
    assert w.min() >= -0.03 and w.max() <= 0.03
    assert w.std().item() < 0.02  # truncation narrows the spread
    w = _init_one("Linear", "constant", val=0.3)[3].weight  # seed 004 §3.5: constant_(linear.weight, 0.3)
    assert torch.all(w == 0.3)


def test_eye_dirac_orthogonal_sparse_zeros_ones():
    lin = nn.Linear(8, 8)
    init_weights(lin, [InitRule("eye")])
    assert torch.equal(lin.weight, torch.eye(8))
    conv = nn.Conv2d(4, 4, 3, padding=1)
    init_weights(conv, [InitRule("dirac")])  # the identity filter; default rule zeroes the bias
    x = torch.randn(1, 4, 6, 6)
    assert torch.allclose(conv(x), x)
    tall = nn.Linear(64, 128)
    init_weights(tall, [InitRule("orthogonal", gain=2.0)], seed=0)
    w = tall.weight.detach()
    assert torch.allclose(w.T @ w, 4.0 * torch.eye(64), atol=1e-4)
    sp = nn.Linear(50, 40)
    init_weights(sp, [InitRule("sparse", sparsity=0.25, std=0.01)], seed=0)
    zeros_per_column = (sp.weight == 0).sum(dim=0)
    assert torch.all(zeros_per_column >= math.ceil(0.25 * 40))
    assert sp.weight[sp.weight != 0].std().item() == pytest.approx(0.01, rel=0.15)
    init_weights(sp, [InitRule("ones"), InitRule("ones", role="bias")], defaults=False)
    assert torch.all(sp.weight == 1) and torch.all(sp.bias == 1)
    init_weights(sp, [InitRule("zeros", role="*")])
    assert torch.all(sp.weight == 0) and torch.all(sp.bias == 0)


def test_gain_forms_resolve_through_calculate_gain():
    leaky = math.sqrt(2 / 1.04)
    forms = [
        ("tanh", 5 / 3),
        ("leaky_relu:0.2", leaky),
        ({"nonlinearity": "leaky_relu", "param": 0.2}, leaky),
        (1.5, 1.5),
    ]
    for gain, expected in forms:
        assert InitRule("xavier_normal", gain=gain).params == {"gain": gain}
        compiled = rules_from_config([{"fn": "xavier_normal", "gain": gain}])[0]
        from torchsmith.transfer.init_rules import _compile

        assert _compile(compiled, "t").params["gain"] == pytest.approx(expected)


def test_first_matching_rule_wins_and_defaults_come_last():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    rules = [
        InitRule("constant", path="2", val=1.0),  # the head: specific, first
        InitRule("constant", type="Linear", val=2.0),
        InitRule("constant", type="norm", role="bias", val=5.0),  # beats the norm-bias default
    ]
    report = init_weights(net, rules)
    assert torch.all(net[2].weight == 1.0) and torch.all(net[0].weight == 2.0)
    assert torch.all(net[1].weight == 1.0)  # default: norm weight -> 1
    assert torch.all(net[1].bias == 5.0)
    assert torch.all(net[0].bias == 0) and torch.all(net[2].bias == 0)  # default: bias -> 0
    assert report.rule_of("2.weight") == "#0 constant"
    assert report.rule_of("0.weight") == "#1 constant"
    assert report.rule_of("1.bias") == "#2 constant"
    assert report.rule_of("1.weight") == "default: ones"
    assert report.rule_of("0.bias") == "default: zeros (bias)"
    # Swapping the two weight rules swaps who wins for the head.
    report = init_weights(net, [rules[1], rules[0]])
    assert torch.all(net[2].weight == 2.0) and report.rule_of("2.weight") == "#0 constant"
    # Without defaults, unmatched parameters are untouched and reported so.
    net[1].weight.data.fill_(7.0)
    report = init_weights(net, [InitRule("zeros", type="Linear")], defaults=False)
    assert torch.all(net[1].weight == 7.0) and "1.weight" in report.untouched
    assert "untouched" in str(report)


def test_type_matches_subclasses_and_paths_accept_globs_and_regex():
    class MyConv(nn.Conv2d):
        pass

    net = nn.Sequential(MyConv(2, 2, 1), nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)))
    init_weights(net, [InitRule("constant", path="1.*", val=3.0), InitRule("constant", type="conv", val=4.0)])
    assert torch.all(net[0].weight == 4.0)  # a subclass of Conv2d matches the conv family
    assert torch.all(net[1][0].weight == 3.0) and torch.all(net[1][1].weight == 3.0)
    init_weights(
        net, [InitRule("constant", path=r"re:^1\.1$", val=9.0), InitRule("constant", type=nn.Conv2d, val=1.0)]
    )
    assert (
        torch.all(net[1][1].weight == 9.0)
        and torch.all(net[1][0].weight == 1.0)
        and torch.all(net[0].weight == 1.0)
    )


def test_seeded_init_is_deterministic_and_independent_of_only_and_global_rng():
    rules = [
        InitRule("kaiming_normal", type="Conv2d", mode="fan_out", nonlinearity="relu"),
        InitRule("normal", type="Linear", std=0.01),
    ]
    a, b = _net(), _net()
    init_weights(a, rules, seed=42)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    init_weights(b, rules, seed=42)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not consumed
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    c = _net()
    before = c[0].weight.detach().clone()
    report = init_weights(c, rules, seed=42, only={"3.weight"})
    assert torch.equal(c[3].weight, a[3].weight)  # same value as in the full init
    assert torch.equal(c[0].weight, before) and "0.weight" in report.skipped
    d = _net()
    init_weights(d, rules, seed=43)
    assert not torch.equal(d[0].weight, a[0].weight)


def test_skip_a_transfer_report_never_overwrites_loaded_weights():
    from torchsmith.transfer import load_weights

    src = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    dst = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5))
    report = load_weights(dst, src)
    report_init = init_weights(dst, [InitRule("zeros", role="*")], skip=report)
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[0].bias, src[0].bias)
    assert torch.all(dst[2].weight == 0)  # the new head was initialised
    assert set(report_init.skipped) == {"0.weight", "0.bias"}


def test_yaml_rules_file(tmp_path):
    path = tmp_path / "init.yaml"
    path.write_text(
        "init:\n"
        "  - {fn: kaiming_normal, type: Conv2d, mode: fan_out, nonlinearity: relu}\n"
        "  - {fn: normal, type: Linear, params: {std: 0.01}}\n"
        "  - {fn: constant, path: '1', role: bias, val: 0.5}\n"
    )
    rules = load_init_rules(path)
    assert [r.fn for r in rules] == ["kaiming_normal", "normal", "constant"]
    net = _net()
    report = init_weights(net, path, seed=0)
    assert torch.all(net[1].bias == 0.5) and report.rule_of("1.bias") == "#2 constant"
    assert net[3].weight.std().item() == pytest.approx(0.01, rel=0.03)
    assert report.to_dict()["parameters"][0] == {
        "name": "0.weight",
        "shape": [128, 64, 3, 3],
        "rule": "#0 kaiming_normal",
        "skipped": False,
    }


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            {"fn": "kaiming_norml"},
            r"rules\[1\]: field 'fn': unknown init function 'kaiming_norml' \(did you mean 'kaiming_normal'",
        ),
        (
            {"fn": "normal", "stdev": 1},
            r"rules\[1\]: unknown field 'stdev' for fn 'normal' \(did you mean 'std'",
        ),
        (
            {"fn": "kaiming_normal", "mode": "fanout"},
            r"rules\[1\]: field 'mode': expected 'fan_in' or 'fan_out'",
        ),
        (
            {"fn": "xavier_normal", "gain": "rellu"},
            r"rules\[1\]: field 'gain': unknown nonlinearity 'rellu' \(did you mean 'relu'",
        ),
        ({"fn": "sparse"}, r"rules\[1\]: fn 'sparse' needs field 'sparsity'"),
        (
            {"fn": "normal", "type": "Conv2D"},
            r"rules\[1\]: field 'type': unknown module type 'Conv2D' \(did you mean",
        ),
        ({"fn": "normal", "std": "big"}, r"rules\[1\]: field 'std': expected a number"),
        ({"function": "normal"}, r"rules\[1\]: missing field 'fn'.*found fields: 'function'"),
    ],
)
def test_bad_rules_name_the_index_and_field(rule, expected):
    with pytest.raises(RecipeError, match=expected):
        init_weights(nn.Linear(2, 2), [{"fn": "zeros"}, rule])


def test_a_rule_that_cannot_apply_names_the_parameter():
    with pytest.raises(
        InputError, match=r"rules\[0\] \(xavier_normal\) cannot initialise '0.bias' of shape \(3,\)"
    ):
        init_weights(nn.Sequential(nn.Linear(2, 3)), [InitRule("xavier_normal", role="*")])
    with pytest.raises(
        InputError, match=r"only: the model has no parameter '0.wieght' \(did you mean '0.weight'"
    ):
        init_weights(nn.Sequential(nn.Linear(2, 3)), [], only={"0.wieght"})


def test_a_recipe_mapping_with_seed_and_defaults():
    a, b = _net(), _net()
    config = {"rules": [{"fn": "normal", "type": "Linear", "std": 0.01}], "seed": 5, "defaults": False}
    report = init_weights(a, config, where="init")
    init_weights(b, [InitRule("normal", type="Linear", std=0.01)], seed=5, defaults=False)
    assert torch.equal(a[3].weight, b[3].weight) and report.seed == 5
    assert report.rule_of("3.bias") is None  # defaults off
    with pytest.raises(RecipeError, match=r"init: unknown field 'seeds' \(did you mean 'seed'"):
        init_weights(a, {"rules": [], "seeds": 1}, where="init")
    with pytest.raises(RecipeError, match=r"init.rules\[0\]: field 'mode'"):
        init_weights(a, {"rules": [{"fn": "kaiming_normal", "mode": "in"}]}, where="init")


def test_lazy_parameters_are_skipped_not_crashed_on():
    net = nn.Sequential(nn.Linear(2, 2), nn.LazyLinear(3))
    report = init_weights(net, [InitRule("normal")], seed=0)
    assert report.skipped == ["1.weight", "1.bias"] and report.rule_of("0.weight") == "#0 normal"
