"""Heads (set_num_classes, replace_head), input channels and extra inputs on torchvision, timm and zoo."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from torchsmith.errors import InputError, SurgeryError
from torchsmith.surgery import (
    add_inputs,
    find_head,
    find_input_layers,
    replace_head,
    set_in_channels,
    set_num_classes,
)


def test_find_head_on_torchvision_timm_and_zoo():
    assert find_head(torchvision.models.mobilenet_v3_small(weights=None)) == "classifier.3"
    assert find_head(torchvision.models.squeezenet1_1(weights=None)) == "classifier.1"  # a 1x1 conv head
    assert find_head(timm.create_model("mobilenetv3_small_050", pretrained=False)) == "classifier"
    from torchsmith.zoo import create_model

    unet = create_model("unet", base_channels=8)
    head = find_head(unet)
    assert isinstance(unet.get_submodule(head), nn.Conv2d)


def test_set_num_classes_timm_keeps_other_weights_and_attributes():
    net = timm.create_model("mobilenetv3_small_050", pretrained=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    old_w = net.classifier.weight.detach().clone()
    r = set_num_classes(net, 7, keep=[5, 3])
    assert net.num_classes == 7 and net.classifier.out_features == 7
    assert torch.equal(net.classifier.weight[:2], old_w[[5, 3]])
    assert r.reshaped["classifier.weight"] == ((1000, 1024), (7, 1024))
    for k, v in net.state_dict().items():
        if not k.startswith("classifier."):
            assert torch.equal(v, before[k]), k
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_set_num_classes_zoo_unet_and_dtype():
    from torchsmith.zoo import create_model

    unet = create_model("unet", base_channels=8).double()
    set_num_classes(unet, 5)
    head = unet.get_submodule(find_head(unet))
    assert head.out_channels == 5 and head.weight.dtype == torch.float64
    assert unet.eval()(torch.randn(1, 3, 16, 16, dtype=torch.float64)).shape == (1, 5, 16, 16)


def test_head_not_found_names_candidates():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)

        def forward(self, x):
            return self.norm(self.fc(x))

    # It ends in a norm: it has no classifier, so set_num_classes adds one instead of replacing fc.
    with pytest.raises(SurgeryError, match=r"has no classifier.*head='path'"):
        find_head(Encoder())
    enc = Encoder()
    assert set_num_classes(enc, 3, input_shape=(1, 8)).added == ["head"] and enc(torch.randn(2, 8)).shape == (
        2,
        3,
    )
    with pytest.raises(SurgeryError, match="nearest valid paths"):
        set_num_classes(Encoder(), 3, head="fcc")


def test_replace_head_checks_width():
    net = torchvision.models.resnet18(weights=None)
    with pytest.raises(SurgeryError, match=r"shape \[1, 512\], so .* would see width 512 .*expects 2048"):
        replace_head(net, nn.Sequential(nn.Linear(2048, 10)))
    assert net.fc.in_features == 512  # unchanged after the refusal


def test_set_in_channels_gray_equals_repeated_rgb_on_resnet50():
    net = torchvision.models.resnet50(weights=None).eval()
    gray = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        ref = net(gray.repeat(1, 3, 1, 1))
        assert find_input_layers(net) == ["conv1"]
        r = set_in_channels(net, 1)
        out = net(gray)
    assert r.reshaped == {"conv1.weight": ((64, 3, 7, 7), (64, 1, 7, 7))}
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_set_in_channels_found_by_tracing_and_channel_map():
    class Normalised(nn.Module):
        """Scales its input, then a branchy stem: no 'first conv with 3 inputs' to guess."""

        def __init__(self):
            super().__init__()
            self.aux = nn.Conv2d(5, 4, 1)  # registered first, never sees the input
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 4, 1)
            self.register_buffer("const", torch.ones(1, 5, 8, 8))

        def forward(self, x):
            x = x * 2 - 1
            return self.a(x) + self.b(x) + self.aux(self.const).mean()

    net = Normalised()
    assert find_input_layers(net, (1, 3, 8, 8)) == ["a", "b"]
    w = net.a.weight.detach().clone()
    set_in_channels(net, 4, channel_map=[0, 1, 2, 0], input_shape=(1, 3, 8, 8))  # RGB + NIR from R
    assert torch.equal(net.a.weight[:, 3], w[:, 0]) and net.b.in_channels == 4 and net.aux.in_channels == 5
    assert net(torch.randn(2, 4, 8, 8)).shape == (2, 4, 8, 8)

    tnet = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    set_in_channels(tnet, 6)
    assert tnet.conv_stem.in_channels == 6 and tnet.in_chans == 6
    assert tnet(torch.randn(1, 6, 32, 32)).shape == (1, 1000)


def test_add_inputs_outputs_unchanged_and_trap8_shapes():
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
        r = add_inputs(net, "fc", {"add_variable": 1})
        assert r.reshaped == {"fc.weight": ((1000, 512), (1000, 513))}
        v = torch.tensor([3.0, -1.0])
        # Zero weights: the same result up to the rounding of a wider matrix product.
        torch.testing.assert_close(net(x, v), ref, rtol=1e-6, atol=1e-6)  # positional, (batch,) unsqueezed
        torch.testing.assert_close(net(x, add_variable=v[:, None]), ref, rtol=1e-6, atol=1e-6)  # (batch, 1)
        with pytest.raises(
            InputError, match=r"'add_variable' has shape \(2, 3\); expected \(2,\) or \(2, 1\)"
        ):
            net(x, add_variable=torch.zeros(2, 3))
        with pytest.raises(InputError, match=r"shape \(5,\)"):
            net(x, add_variable=torch.zeros(5))
        with pytest.raises(InputError, match="needs the extra input"):
            net(x)
        # Concatenated into a convolution (broadcast over positions) and added through a projection.
        add_inputs(net, "layer4.0.conv1", {"sensor": 3})
        add_inputs(net, "layer3.0.conv1", {"tag": 2}, mode="add")
        out = net(x, v, sensor=torch.randn(2, 3), tag=torch.randn(2, 2))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # once the new weights move, the extra input changes the output
        net.fc.weight[:, -1] = 1.0
    assert not torch.equal(net(x, v, torch.randn(2, 3), torch.randn(2, 2)), ref)
    with pytest.raises(SurgeryError, match=r"candidates inside: .layer1\.0\.conv1."):
        add_inputs(net, "layer1.0", {"z": 1})
    # Replacing the widened layer afterwards keeps the extra input joined to it.
    set_num_classes(net, 4)
    assert net.fc.in_features == 513
    assert net(x, v, torch.randn(2, 3), torch.randn(2, 2)).shape == (2, 4)


@settings(max_examples=15, deadline=None)
@given(k=st.integers(min_value=1, max_value=4), seed=st.integers(min_value=0, max_value=2**16))
def test_set_in_channels_keeps_outputs_for_gray_images_property(k, seed):
    """Summed (c=1) or repeated-and-rescaled (c = 3k) kernels: a gray image gives the same output."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    gray = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        ref = net(gray.expand(-1, 3, -1, -1))
        c = 1 if k == 1 else 3 * (k - 1)
        set_in_channels(net, c, input_shape=(1, 3, 6, 6))
        out = net(gray.expand(-1, c, -1, -1))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
