"""Shared weights in specs: ``call: NODE`` runs one module on other inputs (the siamese example)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchsmith
from torchsmith.errors import SpecError
from torchsmith.spec import build_model, validate_spec

SIAMESE = Path(__file__).resolve().parents[2] / "examples" / "specs" / "siamese.yaml"


class _Siamese(nn.Module):  # the plain-PyTorch twin of examples/specs/siamese.yaml
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 13 * 13, 16)
        )
        self.head = nn.Linear(16, 1)

    def forward(self, a, b):
        return self.head((self.enc(a) - self.enc(b)).abs())


def test_siamese_shares_one_encoder_and_matches_its_twin(tmp_path):
    model = build_model(SIAMESE).eval()
    twin = _Siamese().eval()
    assert list(model.state_dict()) == list(twin.state_dict())  # enc once, no enc_b
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in twin.parameters()) == 21_745
    assert validate_spec(SIAMESE)["parameters"] == 21_745
    twin.load_state_dict(model.state_dict())
    a, b = torch.randn(3, 1, 28, 28), torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(a, b), twin(a, b), rtol=0, atol=0)
        assert torch.equal(model(a, a), twin.head(torch.zeros(3, 16)))  # same weights on both sides
    torchsmith.save(model, tmp_path / "s.safetensors")
    loaded = torchsmith.load_model(tmp_path / "s.safetensors").eval()
    assert list(loaded.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():  # equal weights; the last bit may differ until saved tensors are 64-byte aligned
        torch.testing.assert_close(loaded(a, b), model(a, b))


BASE = """
graph:
  inputs: {a: [1, 4], b: [1, 4]}
  nodes:
    enc: {inputs: a, type: Linear, out_features: 3}
    other: {inputs: b, %s}
    s: {op: add, inputs: [enc, other]}
"""


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ("call: nope", "'nope' is not a node"),
        ("call: a", "'a' is a graph input"),
        ("call: s", "'s' is an op node"),
        ("call: enc, stride: 2", "unknown key 'stride' in a call node"),
    ],
)
def test_call_errors_name_the_node(node, expected):
    with pytest.raises(SpecError) as info:
        validate_spec(BASE % node)
    assert info.value.line == 6 and expected in str(info.value)


def test_call_with_an_input_the_module_cannot_take():
    text = BASE.replace("b: [1, 4]", "b: [1, 5]") % "call: enc"
    with pytest.raises(
        SpecError, match=r"<spec>:6: graph.nodes.other: the module of node 'enc' cannot take .*\(1, 5\)"
    ):
        validate_spec(text)


def test_call_before_the_called_node_is_written_still_runs_after_it():
    text = """
graph:
  inputs: {a: [1, 4], b: [1, 4]}
  nodes:
    other: {inputs: b, call: enc}
    enc: {inputs: a, type: Linear, out_features: 3}
    s: {op: add, inputs: [enc, other]}
"""
    model = build_model(text)
    x = torch.randn(2, 4)
    torch.testing.assert_close(model(x, x), 2 * model.enc(x))
