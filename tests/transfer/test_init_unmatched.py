"""init_weights says when a rule sets nothing (no match, or always shadowed); strict=True refuses."""

from __future__ import annotations

import pytest
import torch
import torchvision

from torchsmith.errors import RecipeError
from torchsmith.transfer import InitRule, init_weights


def _resnet():
    with torch.device("meta"):
        return torchvision.models.resnet18(num_classes=10)


def test_rules_that_set_nothing_are_warnings_naming_why():
    rules = [
        InitRule("kaiming_normal", type="Conv2d"),
        InitRule("zeros", path="layer5.*"),  # no such module
        InitRule("normal", type="Embedding"),  # not in a ResNet
        InitRule("xavier_uniform", type="conv"),  # every conv already taken by rule 0
        InitRule("normal", type="Linear", std=0.01),
    ]
    report = init_weights(_resnet(), rules)
    assert len(report.warnings) == 3
    w1, w2, w3 = report.warnings
    assert w1.startswith("rules[1] InitRule('zeros', path='layer5.*') matches no parameter: no module path")
    assert "'layer1.0.conv1'" in w1 or "'conv1'" in w1
    assert w2.startswith("rules[2]") and "no module of that type" in w2 and "Conv2d" in w2
    assert w3.startswith("rules[3]") and "taken by earlier rule #0 kaiming_normal" in w3
    assert "warning: rules[1]" in str(report) and report.to_dict()["warnings"] == report.warnings
    assert report.rule_of("fc.weight") == "#4 normal"  # the other rules still apply


def test_strict_refuses_before_initialising_anything():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    before = model[0].weight.detach().clone()
    with pytest.raises(RecipeError, match=r"init\[1\] .*matches no parameter.*strict=True"):
        init_weights(model, [InitRule("zeros", type="Linear"), InitRule("ones", type="Conv2d")], strict=True,
                     where="init")  # fmt: skip
    assert torch.equal(model[0].weight, before)
    # The mapping form of a recipe or spec has the same switch.
    with pytest.raises(RecipeError, match="taken by earlier rule #0 zeros"):
        init_weights(model, {"rules": [{"fn": "zeros", "type": "Linear"}, {"fn": "ones", "type": "linear"}],
                             "strict": True})  # fmt: skip
    with pytest.raises(RecipeError, match="field 'strict': expected true or false"):
        init_weights(model, {"rules": [], "strict": "yes"})
    # A rule whose parameters were all skipped on purpose is only noted, even with strict.
    report = init_weights(model, [InitRule("zeros", path="0")], skip={"0.weight"}, strict=True)
    assert report.warnings and "left alone" in report.warnings[0]


def test_a_spec_init_rule_that_matches_nothing_fails_with_strict():
    import torchsmith
    from torchsmith.errors import SpecError

    spec = {
        "input_shape": [1, 4],
        "init": {"rules": [{"fn": "zeros", "path": "layer5.*"}], "strict": True},
        "chain": [{"type": "Linear", "out_features": 2}],
    }
    with pytest.raises(SpecError, match=r"init: rules\[0\].*matches no parameter: no module path"):
        torchsmith.build_model(spec)
    spec["init"]["strict"] = False
    assert torchsmith.build_model(spec)[0].weight.shape == (2, 4)
