"""Hyper-parameters the weights do not hold: compared for every module pair, adopted or named (issue 24).

Same tensors, another function: a norm's eps (adopted by the model, named in the report), TF-"same"
padding and head counts (the model cannot take them: refused naming the difference and the modules,
not "the tensors were paired wrongly").
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from torchsmith.errors import TransferError
from torchsmith.transfer import load_weights
from torchsmith.transfer.hparams import compare_hparams


class _Net(nn.Module):
    """conv -> norm -> conv -> norm -> pool -> linear, with the norm kind and eps given."""

    def __init__(self, norm: str, eps: float, padding: object = 1, names: tuple[str, str] = ("c", "n")):
        super().__init__()
        c, n = names

        def make_norm(width: int) -> nn.Module:
            if norm == "bn":
                return nn.BatchNorm2d(width, eps=eps)
            if norm == "gn":
                return nn.GroupNorm(2, width, eps=eps)
            return nn.GroupNorm(1, width, eps=eps)  # a layer norm over (C, H, W)

        self.add_module(f"{c}1", nn.Conv2d(3, 8, 3, padding=padding))
        self.add_module(f"{n}1", make_norm(8))
        self.add_module(f"{c}2", nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.add_module(f"{n}2", make_norm(8))
        self.head = nn.Linear(8, 4)
        self._order = [f"{c}1", f"{n}1", f"{c}2", f"{n}2"]

    def forward(self, x):
        for name in self._order:
            x = torch.relu(getattr(self, name)(x))
        return self.head(x.mean(dim=(2, 3)))


def _randomise(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if t.dtype.is_floating_point:
                t.copy_(
                    torch.rand(t.shape, generator=g) * 0.2 + 0.01
                    if "var" in name
                    else torch.randn(t.shape, generator=g) * 0.3
                )


@settings(max_examples=10, deadline=None)
@given(
    norm=st.sampled_from(["bn", "gn", "ln"]),
    eps_pair=st.sampled_from([(1e-3, 1e-5), (1e-5, 1e-3), (1e-6, 1e-5), (1e-3, 1e-6), (0.1, 1e-5)]),
)
def test_an_other_eps_is_adopted_named_and_the_port_proven(norm, eps_pair):
    s_eps, t_eps = eps_pair
    source, model = _Net(norm, s_eps), _Net(norm, t_eps, names=("conv", "norm"))
    _randomise(source, 1)
    x = torch.randn(2, 3, 16, 16)
    report = load_weights(model, source, match="structure", example_input=x)
    assert {(d["attr"], d["target_value"], d["source_value"]) for d in report.adopted} == {
        ("eps", t_eps, s_eps)
    }
    assert sorted(d["target"] for d in report.adopted) == ["norm1", "norm2"]
    assert any("adopted the source's hyper-parameters" in n and "norm1 <- n1" in n for n in report.notes)
    assert model.norm1.eps == s_eps and model.norm2.eps == s_eps
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), source.eval()(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_adopt_hparams_false_refuses_naming_eps_and_the_modules(norm):
    source, model = _Net(norm, 1e-3), _Net(norm, 1e-5, names=("conv", "norm"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        TransferError, match=r"eps 1e-05 in the model vs 0.001 in the source, 2 module pairs: norm1 <- n1"
    ):
        load_weights(
            model, source, match="structure", example_input=torch.randn(2, 3, 16, 16), adopt_hparams=False
        )
    assert model.norm1.eps == 1e-5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("s_pad", "t_pad"), [(0, 1), (1, 0), (2, 1), ("same", 0)])
def test_a_padding_the_model_cannot_take_is_named_not_blamed_on_the_pairing(s_pad, t_pad):
    source, model = _Net("bn", 1e-5, padding=s_pad), _Net("bn", 1e-3, padding=t_pad, names=("conv", "norm"))
    _randomise(source, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TransferError) as info:
        load_weights(model, source, match="structure", example_input=torch.randn(2, 3, 16, 16))
    msg = str(info.value)
    assert "padding" in msg and "conv1 <- c1" in msg and "paired wrongly" not in msg
    assert "adopting eps" in msg  # what was adopted, and that it was not enough
    assert model.norm1.eps == 1e-3  # the adopted eps was given back with the refusal
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tf_same_padding_of_timm_is_named():
    timm = pytest.importorskip("timm")
    from timm.layers import Conv2dSame

    class Same(nn.Module):
        def __init__(self, same: bool):
            super().__init__()
            self.conv = Conv2dSame(3, 4, 3, stride=2) if same else nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x):
            return self.conv(x)

    assert timm
    diffs = compare_hparams(Same(False), Same(True), [{"target": "conv", "source": "conv"}])
    assert [(d.attr, d.source_value, d.adoptable) for d in diffs] == [
        ("padding", "TF 'same' (asymmetric, per input)", False)
    ]
    with pytest.raises(TransferError, match=r"padding \(1, 1\) in the model vs TF 'same' \(asymmetric"):
        load_weights(Same(False), Same(True), match="structure", example_input=torch.randn(1, 3, 16, 16))


def test_attention_head_counts_are_compared_on_the_owner():
    a = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
    b = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    diffs = compare_hparams(a, b, [{"target": "self_attn", "source": "self_attn"}])
    assert [(d.attr, d.target_value, d.source_value) for d in diffs] == [("attention heads", 4, 2)]
