"""Equivalences a structure port applies only when shapes prove them, named in the report."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchsmith.errors import TransferError
from torchsmith.transfer import load_weights


class FusedAttention(nn.Module):
    def __init__(self, d: int = 8, heads: int = 2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.proj(y)


class SplitAttention(nn.Module):
    """q/k/v as three Linears, run in the order key, value, query (as HF ViT does)."""

    def __init__(self, d: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape

        def split(t):
            return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

        k, v, q = split(self.key(x)), split(self.value(x)), split(self.query(x))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.out(y)


@pytest.mark.parametrize("direction", ["split->fused", "fused->split"])
def test_fused_qkv_and_separate_projections_port_both_ways(direction):
    source, model = (SplitAttention(), FusedAttention())[:: 1 if direction == "split->fused" else -1]
    x = torch.randn(2, 5, 8)
    report = load_weights(model, source, match="structure", example_input=x)
    assert any("fused qkv = cat(q, k, v)" in n for n in report.notes), report.notes
    assert torch.allclose(model(x), source(x), atol=1e-6)
    assert not report.unexpected and not report.missing


class Keras(nn.Module):
    """A GPT-2 style Conv1D: weight stored (in, out)."""

    def __init__(self):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.fc = Conv1D(6, 4)  # nf=6 outputs, nx=4 inputs
        self.out = Conv1D(6, 6)  # square: only the kinds tell that it is transposed

    def forward(self, x):
        return self.out(self.fc(x).relu())


def test_a_transposed_conv1d_ports_into_linear_even_when_square():
    source = Keras()
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6))
    x = torch.randn(3, 4)
    report = load_weights(model, source, match="structure", example_input=x)
    assert torch.allclose(model(x), source(x), atol=1e-6)
    assert sum("transposed Conv1D = Linear" in n for n in report.notes) == 2


def test_linear_on_a_flattened_map_is_a_conv_of_its_size_and_1x1_conv_is_linear():
    source = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 6), nn.ReLU())
    source.append(nn.Unflatten(1, (6, 1, 1)))
    source.append(nn.Conv2d(6, 2, 1))

    class Target(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Conv2d(4, 6, 5)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            return self.head(self.fc(self.stem(x)).relu().flatten(1))

    model = Target()
    x = torch.randn(2, 3, 5, 5)
    report = load_weights(model, source, match="structure", example_input=x)
    assert torch.allclose(model(x), source(x).flatten(1), atol=1e-5)
    text = " ".join(report.notes)
    assert "Linear(k*h*w -> n) = Conv2d(k, n, (5, 5))" in text and "1x1 Conv = Linear" in text


def test_a_reshape_that_changes_the_meaning_is_refused_by_the_numerical_check():
    """A Linear over a flattened map ported into a conv whose map is laid out otherwise (HWC)."""

    class HWC(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4 * 3 * 3, 5)

        def forward(self, x):
            return self.fc(x.permute(0, 2, 3, 1).flatten(1))

    class CHW(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Conv2d(4, 5, 3)

        def forward(self, x):
            return self.fc(x).flatten(1)

    with pytest.raises(TransferError, match="differ from the source's"):
        load_weights(CHW(), HWC(), match="structure", example_input=torch.randn(2, 4, 3, 3))
