"""A structure port is checked before it is written: wrong values are refused, the target untouched.

The port runs the target with the ported tensors in place of its own (``functional_call``) and
copies them in only after the numerical check passed; models where that shortcut is not exact
(tied tensors, load hooks) are written, checked and rolled back. Both ways a refused port must
leave every tensor of the target bit-identical and its parameters the same objects.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from torchsmith.errors import TransferError
from torchsmith.transfer import load_weights
from torchsmith.transfer.structure import StructureMatch


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ids = {k: id(p) for k, p in model.named_parameters()}
    return state, ids


def _assert_untouched(model: nn.Module, snap: tuple[dict[str, torch.Tensor], dict[str, int]]) -> None:
    state, ids = snap
    now = model.state_dict()
    assert list(now) == list(state)
    for k, v in now.items():  # bit-identical: the same bytes, NaN or not
        assert v.dtype == state[k].dtype and torch.equal(
            v.view(-1).view(torch.uint8), state[k].view(-1).view(torch.uint8)
        ), k
    assert {k: id(p) for k, p in model.named_parameters()} == ids


_FLIPPED: list[str] = []


def _flip_one(key_part: str):
    """Patch StructureMatch.value so the model keys containing ``key_part`` get a flipped tensor
    (last dim): the right shape, the wrong values (what a matcher pairing the wrong way would
    give). Flipped keys are listed in ``_FLIPPED``, so a test can see the patch took effect."""
    original = StructureMatch.value
    _FLIPPED.clear()

    def value(self, key, source_sd, shape):
        v = original(self, key, source_sd, shape)
        if key_part in key:
            _FLIPPED.append(key)
            return v.flip(-1)
        return v

    return value


@pytest.mark.parametrize("key_part", ["layer3.1.conv2.weight", "conv1.weight"])
def test_a_port_with_wrong_values_is_refused_and_the_target_is_bit_identical(monkeypatch, key_part):
    source, target = torchvision.models.resnet18().eval(), timm.create_model("resnet18")
    snap = _snapshot(target)
    monkeypatch.setattr(StructureMatch, "value", _flip_one(key_part))
    with pytest.raises(TransferError, match="differ from the source's"):
        load_weights(target, source, match="structure", example_input=torch.randn(1, 3, 64, 64))
    assert _FLIPPED
    _assert_untouched(target, snap)


def test_the_same_port_unpatched_is_written_and_computes_the_source():
    source, target = torchvision.models.resnet18().eval(), timm.create_model("resnet18")
    x = torch.randn(1, 3, 64, 64)
    params = {k: id(p) for k, p in target.named_parameters()}
    report = load_weights(target, source, match="structure", example_input=x)
    assert report.fraction == 1.0
    assert {k: id(p) for k, p in target.named_parameters()} == params  # written in place
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x), source(x), rtol=1e-5, atol=1e-6)


class _Tied(nn.Module):
    """An encoder and a decoder sharing one weight: functional_call would tie the replacements."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 6, bias=False)
        self.mid = nn.Linear(6, 6)
        self.dec = nn.Linear(6, 6, bias=False)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(self.mid(self.enc(x)).relu())


class _Untied(_Tied):
    def __init__(self):
        super().__init__()
        self.dec.weight = nn.Parameter(self.enc.weight.detach().clone())


class _Hooked(nn.Sequential):
    """A model with a load_state_dict pre-hook: it is written by load_state_dict, then checked."""

    def __init__(self):
        super().__init__(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
        self.calls = 0
        self.register_load_state_dict_pre_hook(self._count)

    def _count(self, *args, **kwargs):
        self.calls += 1


def test_the_write_then_check_path_also_refuses_wrong_values_and_rolls_back(monkeypatch):
    source, target = _Untied(), _Tied()
    snap = _snapshot(target)
    monkeypatch.setattr(StructureMatch, "value", _flip_one("mid.weight"))
    with pytest.raises(TransferError, match="differ from the source's"):
        load_weights(target, source, match="structure", example_input=torch.randn(2, 6), allow_partial=True)
    assert _FLIPPED
    _assert_untouched(target, snap)


def test_a_hooked_target_is_ported_through_load_state_dict_and_checked():
    source = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    target = _Hooked()
    report = load_weights(target, source, match="structure", example_input=torch.randn(2, 6))
    assert target.calls >= 1  # the hook ran: the load went through load_state_dict
    assert any(n.startswith("numerical check: outputs") for n in report.notes), report.notes
    assert torch.equal(target[0].weight, source[0].weight)


def test_a_port_runs_each_model_once_on_the_full_input():
    """The source's traced run is the check's reference; the target's graph comes from a crop."""
    source, target = torchvision.models.resnet18().eval(), timm.create_model("resnet18")
    x = torch.randn(1, 3, 64, 64)
    shapes: dict[str, list[tuple[int, ...]]] = {"source": [], "target": []}
    for name, model in (("source", source), ("target", target)):
        model.register_forward_pre_hook(lambda _m, args, name=name: shapes[name].append(tuple(args[0].shape)))
    load_weights(target, source, match="structure", example_input=x)
    assert shapes["source"] == [(1, 3, 64, 64)]
    assert shapes["target"].count((1, 3, 64, 64)) == 1, shapes  # the check; the graph came from a crop
    assert all(s[-1] < 64 for s in shapes["target"] if s != (1, 3, 64, 64)), shapes


def test_a_wrong_split_of_a_fused_qkv_is_refused_with_the_graph_from_the_meta_device(monkeypatch):
    """timm's fused qkv into HF's q/k/v (a chunk equivalence); the ViT's graph is taken on meta."""
    from torchsmith.zoo import create_model

    source = timm.create_model("vit_tiny_patch16_224", depth=2).eval()
    target = create_model("hf:vit-tiny/image-classification", num_hidden_layers=2)
    snap = _snapshot(target)
    monkeypatch.setattr(StructureMatch, "value", _flip_one("1.attention.k_proj.weight"))
    with pytest.raises(TransferError, match="differ from the source's"):
        load_weights(target, source, match="structure", example_input=torch.randn(1, 3, 224, 224))
    assert _FLIPPED == ["vit.layers.1.attention.k_proj.weight"]
    _assert_untouched(target, snap)
