"""Structure pairing inside a module: name equivalences (gamma = weight, beta = bias), never a swap.

These sources are hand-made state_dicts of no known architecture: the port cannot be proven, so each
load says ``allow_unverified=True`` and the report says UNVERIFIED (issue 24).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchsmith.errors import TransferError
from torchsmith.transfer import load_weights


def _keras_source() -> dict:
    """A dense layer and a norm named the Keras/Flax way, stored beta first (as sorted files do)."""
    lin = nn.Linear(4, 6)
    return {
        "dense.weight": lin.weight.detach(),
        "dense.bias": lin.bias.detach(),
        "ln.beta": torch.randn(6),
        "ln.gamma": torch.randn(6) + 2.0,
    }


def _target() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6))


def test_a_gamma_beta_norm_is_ported_by_role_not_by_position():
    src = _keras_source()
    model = _target()
    report = load_weights(
        model, src, match="structure", example_input=torch.zeros(1, 4), allow_unverified=True
    )
    assert report.unverified and str(report).startswith("UNVERIFIED: ")
    assert torch.equal(model[1].weight, src["ln.gamma"])
    assert torch.equal(model[1].bias, src["ln.beta"])


@pytest.mark.parametrize("names", [("scale", "shift"), ("shift", "scale")])
def test_scale_shift_are_weight_and_bias_in_any_order(names):
    src = {f"norm.{n}": torch.randn(6) for n in names}
    model = nn.Sequential(nn.LayerNorm(6))
    load_weights(model, src, match="structure", example_input=torch.zeros(1, 6), allow_unverified=True)
    assert torch.equal(model[0].weight, src["norm.scale"])
    assert torch.equal(model[0].bias, src["norm.shift"])


def test_moving_statistics_are_running_statistics():
    bn = nn.BatchNorm1d(5)
    src = {
        "bn.moving_variance": torch.rand(5) + 0.5,
        "bn.moving_mean": torch.randn(5),
        "bn.beta": torch.randn(5),
        "bn.gamma": torch.randn(5),
    }
    model = nn.Sequential(bn)
    load_weights(model, src, match="structure", example_input=torch.zeros(2, 5), allow_unverified=True)
    assert torch.equal(bn.running_mean, src["bn.moving_mean"])
    assert torch.equal(bn.running_var, src["bn.moving_variance"])
    assert torch.equal(bn.weight, src["bn.gamma"])


def test_equal_shapes_with_unknown_names_are_refused_not_guessed():
    src = {"norm.a": torch.randn(6), "norm.b": torch.randn(6)}
    model = nn.Sequential(nn.LayerNorm(6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TransferError, match=r"'norm' \[a\(6\) b\(6\)\].*cannot be paired"):
        load_weights(model, src, match="structure", example_input=torch.zeros(1, 6))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_names_with_distinct_shapes_pair_by_shape():
    lin = nn.Linear(3, 5)
    src = {"fc.kern": lin.weight.detach(), "fc.offs": lin.bias.detach()}
    model = nn.Sequential(nn.Linear(3, 5))
    load_weights(model, src, match="structure", example_input=torch.zeros(1, 3), allow_unverified=True)
    assert torch.equal(model[0].weight, lin.weight) and torch.equal(model[0].bias, lin.bias)


def test_an_unidentified_state_dict_is_refused_by_default_naming_the_way_out():
    src = _keras_source()
    model = _target()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TransferError, match=r"not identified.*source_model=.*allow_unverified=True"):
        load_weights(model, src, match="structure", example_input=torch.zeros(1, 4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
