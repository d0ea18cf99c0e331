"""A spec's ``init:`` section: init_weights rules, checked before building, kept on reload."""

from __future__ import annotations

import pytest
import torch
import yaml

import torchsmith
from torchsmith.errors import SpecError

SPEC = {
    "input_shape": [2, 1, 12, 12],
    "init": {
        "rules": [
            {"fn": "kaiming_normal", "type": "Conv2d", "mode": "fan_out", "nonlinearity": "relu"},
            {"fn": "constant", "type": "Linear", "role": "weight", "val": 0.25},
        ],
        "seed": 7,
    },
    "chain": [
        {"type": "Conv2d", "out_channels": 8, "kernel_size": 3},
        {"type": "BatchNorm2d"},
        {"type": "ReLU"},
        {"type": "Flatten"},
        {"type": "Linear", "out_features": 3},
    ],
}


def test_init_rules_apply_in_order_with_defaults_and_seed():
    a, b = torchsmith.build_model(SPEC), torchsmith.build_model(SPEC)
    assert torch.equal(a[0].weight, b[0].weight)  # seeded per parameter: the same twice
    fan_out = 8 * 3 * 3
    assert a[0].weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.25)
    assert torch.all(a[4].weight == 0.25)
    assert torch.all(a[0].bias == 0) and torch.all(a[1].weight == 1)  # defaults: biases 0, norms 1
    other = torchsmith.build_model({**SPEC, "init": {**SPEC["init"], "seed": 8}})
    assert not torch.equal(a[0].weight, other[0].weight)


def test_bad_init_rule_names_the_file_line_and_field(tmp_path):
    bad = {**SPEC, "init": {"rules": [{"fn": "xavier_unifrom", "type": "Conv2d"}]}}
    path = tmp_path / "net.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(SpecError, match=r"net\.yaml:\d+: init: rules\[0\]: field 'fn'.*xavier_uniform"):
        torchsmith.build_model(path)
    with pytest.raises(SpecError, match="init"):
        torchsmith.validate_spec(path)  # found before any weight is allocated


def test_saved_spec_model_with_init_reloads_equal(tmp_path):
    model = torchsmith.build_model(SPEC)
    torchsmith.save(model, tmp_path / "m.safetensors")
    again = torchsmith.load_model(tmp_path / "m.safetensors")
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name
