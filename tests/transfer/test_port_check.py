"""After a structure port both models run on one random input; a port whose outputs differ is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchsmith.errors import TransferError
from torchsmith.transfer import load_weights


class RightMultiply(nn.Module):
    """A square layer that computes ``x @ W`` (a Keras-style kernel), not ``x @ W.T`` like nn.Linear."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n))

    def forward(self, x):
        return x @ self.weight


def test_shapes_that_agree_but_compute_otherwise_are_refused_and_the_model_is_untouched():
    source = nn.Sequential(RightMultiply(6), nn.ReLU(), nn.Linear(6, 3))
    model = nn.Sequential(nn.Linear(6, 6, bias=False), nn.ReLU(), nn.Linear(6, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TransferError, match=r"numerical|differ from the source's.*max relative difference"):
        load_weights(model, source, match="structure", example_input=torch.randn(2, 6))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_right_port_reports_the_check():
    source = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    model = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    report = load_weights(model, source, match="structure", example_input=torch.randn(2, 6))
    assert any(n.startswith("numerical check: outputs") for n in report.notes), report.notes


def test_a_new_classifier_is_checked_at_its_input():
    source = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 10))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    report = load_weights(model, source, match="structure", example_input=torch.randn(2, 6))
    assert any("inputs of '2' and '2'" in n for n in report.notes), report.notes
    assert [e["key"] for e in report.skipped_shape] == ["2.weight", "2.bias"]


def test_an_all_zero_output_does_not_count_as_agreement():
    """A zero-initialised head makes any two bodies agree; the check then looks at the head's input."""
    source = nn.Sequential(RightMultiply(6), nn.ReLU(), nn.Linear(6, 3))
    model = nn.Sequential(nn.Linear(6, 6, bias=False), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        source[2].weight.zero_()
        source[2].bias.zero_()
    with pytest.raises(TransferError, match="inputs of '2' and '2' differ"):
        load_weights(model, source, match="structure", example_input=torch.randn(2, 6))
