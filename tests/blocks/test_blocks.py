"""The building blocks: shapes, parameter names that match the seeds and torchvision, clear errors."""

from __future__ import annotations

import inspect
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

import torchsmith.blocks as blocks
from seed_code import SeedCNNLayer, SeedDownSampling, SeedResidualBlock, SeedUpSampling
from torchsmith.blocks import (
    BackboneWithFPN,
    BasicBlock,
    Bottleneck,
    CNNLayer,
    ConvNormAct,
    DoubleConv,
    Down,
    DownSampling,
    FeaturePyramidNetwork,
    IntermediateLayerGetter,
    LastLevelMaxPool,
    OutConv,
    ResidualBlock,
    Up,
    UpSampling,
)
from torchsmith.errors import InputError


def _same_outputs(a: nn.Module, b: nn.Module, *inputs: torch.Tensor) -> float:
    a.eval(), b.eval()
    with torch.no_grad():
        return (a(*inputs) - b(*inputs)).abs().max().item()


def test_all_lists_only_block_classes():
    assert blocks.__all__ == sorted(blocks.__all__)
    for name in blocks.__all__:
        obj = getattr(blocks, name)
        assert inspect.isclass(obj) and issubclass(obj, nn.Module), name


# --- conv-norm-act -----------------------------------------------------------------------------------


def test_conv_norm_act_layout_and_names():
    block = ConvNormAct(3, 8, stride=2)
    assert [type(m).__name__ for m in block] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert block[0].bias is None  # a norm follows, so no bias
    assert block(torch.randn(2, 3, 9, 9)).shape == (2, 8, 5, 5)
    bare = ConvNormAct(3, 8, norm_layer=None, act_layer=None)
    assert len(bare) == 1 and bare[0].bias is not None


@pytest.mark.parametrize(
    ("norm", "act", "types"),
    [
        ("groupnorm", "silu", ["Conv2d", "GroupNorm", "SiLU"]),
        ("instancenorm", "gelu", ["Conv2d", "InstanceNorm2d", "GELU"]),
        ("frozen_batchnorm", "leaky_relu", ["Conv2d", "FrozenBatchNorm2d", "LeakyReLU"]),
        ("none", "none", ["Conv2d"]),
    ],
)
def test_norm_and_activation_by_name(norm, act, types):
    block = ConvNormAct(4, 8, norm_layer=norm, act_layer=act)
    assert [type(m).__name__ for m in block] == types
    assert block(torch.randn(1, 4, 6, 6)).shape == (1, 8, 6, 6)


def test_unknown_norm_name_suggests_close_match():
    with pytest.raises(InputError, match=r"unknown norm_layer 'batchnrom'.*did you mean 'batchnorm'"):
        ConvNormAct(3, 8, norm_layer="batchnrom")
    with pytest.raises(InputError, match=r"unknown act_layer 'rleu'.*valid names:.*relu"):
        ConvNormAct(3, 8, act_layer="rleu")


# --- U-Net blocks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "seed", "inputs"),
    [
        (lambda: CNNLayer(3, 8), lambda: SeedCNNLayer(3, 8), [(2, 3, 10, 10)]),
        (lambda: DownSampling(8), lambda: SeedDownSampling(8), [(2, 8, 10, 10)]),
        (lambda: UpSampling(8), lambda: SeedUpSampling(8), [(2, 8, 5, 5), (2, 4, 10, 10)]),
    ],
)
def test_s9_blocks_take_the_seed_weights_and_compute_the_same(ours, seed, inputs):
    a, b = ours(), seed()
    a.load_state_dict(b.state_dict(), strict=True)
    xs = [torch.randn(*s) for s in inputs]
    assert _same_outputs(a, b, *xs) == 0.0


def test_double_conv_names_and_mid_channels():
    block = DoubleConv(3, 16, mid_channels=4)
    keys = list(block.state_dict())
    assert keys[0] == "double_conv.0.weight" and "double_conv.4.running_var" in keys
    assert block.double_conv[0].out_channels == 4
    assert block(torch.randn(1, 3, 7, 5)).shape == (1, 16, 7, 5)


def test_down_modes():
    x = torch.randn(1, 4, 11, 9)
    assert Down(4, 8)(x).shape == (1, 8, 5, 4)  # max-pool floors
    assert Down(4, 8, mode="conv")(x).shape == (1, 8, 6, 5)  # strided conv rounds up
    assert "maxpool_conv.1.double_conv.0.weight" in Down(4, 8).state_dict()
    with pytest.raises(InputError, match=r"unknown mode 'maxpol'.*did you mean 'maxpool'"):
        Down(4, 8, mode="maxpol")


@pytest.mark.parametrize(("mode", "deep_channels"), [("bilinear", 8), ("transpose", 16), ("nearest", 16)])
@pytest.mark.parametrize(("h", "w"), [(11, 7), (12, 8)])
def test_up_pads_to_the_skip_size(mode, deep_channels, h, w):
    skip = torch.randn(2, 8, h, w)
    deep = torch.randn(2, deep_channels, h // 2, w // 2)
    up = Up(16, 5, mode=mode)
    assert up(deep, skip).shape == (2, 5, h, w)


def test_up_crops_when_the_upsampled_map_is_larger():
    # a strided-conv encoder rounds 7 up to 4; upsampling gives 8 and must be cropped back to 7
    out = UpSampling(8)(torch.randn(1, 8, 4, 4), torch.randn(1, 4, 7, 7))
    assert out.shape == (1, 8, 7, 7)


def test_up_without_double_conv_must_keep_channels():
    with pytest.raises(InputError, match="out_channels=4"):
        Up(16, 4, mode="nearest", double_conv=False)


def test_out_conv():
    assert OutConv(8, 3)(torch.randn(1, 8, 5, 5)).shape == (1, 3, 5, 5)


# --- residual blocks ---------------------------------------------------------------------------------


def test_residual_block_matches_the_seed():
    seed = SeedResidualBlock(4, 8, 2, nn.Sequential(nn.Conv2d(4, 8, 1, 2, bias=False), nn.BatchNorm2d(8)))
    ours = ResidualBlock(4, 8, 2, shortcut=True)
    ours.load_state_dict(seed.state_dict(), strict=True)
    assert _same_outputs(ours, seed, torch.randn(2, 4, 9, 9)) == 0.0
    identity = ResidualBlock(8, 8)
    assert identity.right is None and identity(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)


def test_residual_block_without_needed_shortcut_is_an_error():
    with pytest.raises(InputError, match="needs a shortcut"):
        ResidualBlock(4, 8, stride=2)


@pytest.mark.parametrize("kind", ["BasicBlock", "Bottleneck"])
def test_resnet_blocks_match_torchvision(kind):
    import torchvision.models.resnet as tvr

    ours_cls, tv_cls = {
        "BasicBlock": (BasicBlock, tvr.BasicBlock),
        "Bottleneck": (Bottleneck, tvr.Bottleneck),
    }[kind]
    out = 16 * ours_cls.expansion

    def down():
        return nn.Sequential(nn.Conv2d(8, out, 1, 2, bias=False), nn.BatchNorm2d(out))

    tv = tv_cls(8, 16, stride=2, downsample=down())
    ours = ours_cls(8, 16, stride=2, downsample=down())
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert _same_outputs(ours, tv, torch.randn(2, 8, 8, 8)) < 1e-6


def test_basic_block_rejects_groups_and_activation_is_a_parameter():
    with pytest.raises(InputError, match="groups=1"):
        BasicBlock(8, 8, groups=2)
    block = Bottleneck(16, 4, act_layer="silu")
    assert isinstance(block.relu, nn.SiLU)


# --- FPN ---------------------------------------------------------------------------------------------


def _features():
    return OrderedDict(
        [("a", torch.randn(1, 8, 16, 12)), ("b", torch.randn(1, 16, 8, 6)), ("c", torch.randn(1, 32, 3, 3))]
    )


def test_fpn_matches_torchvision():
    from torchvision.ops import FeaturePyramidNetwork as TvFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool as TvPool

    tv = TvFPN([8, 16, 32], 4, extra_blocks=TvPool())
    ours = FeaturePyramidNetwork([8, 16, 32], 4, extra_blocks=LastLevelMaxPool())
    # torchvision wraps each conv in a Sequential ("inner_blocks.0.0.weight"); the seed does not
    ours.load_state_dict({k.replace(".0.", ".", 1): v for k, v in tv.state_dict().items()}, strict=True)
    feats = _features()
    a, b = ours(feats), tv(feats)
    assert list(a) == ["a", "b", "c", "pool"] == list(b)
    for key in a:
        assert a[key].shape[1] == 4
        assert torch.equal(a[key], b[key]), key
    assert a["pool"].shape[-2:] == (2, 2)


def test_fpn_init_reaches_the_convs():
    fpn = FeaturePyramidNetwork([8, 16], 4)
    assert all(torch.count_nonzero(b.bias) == 0 for b in fpn.inner_blocks)


def test_fpn_wrong_inputs_are_named():
    fpn = FeaturePyramidNetwork([8, 16, 32], 4)
    with pytest.raises(InputError, match=r"expects 3 feature maps.*got 2"):
        fpn(OrderedDict(list(_features().items())[:2]))
    bad = _features()
    bad["b"] = torch.randn(1, 15, 8, 6)
    with pytest.raises(InputError, match=r"feature 'b' has shape \(1, 15, 8, 6\), expected \(N, 16, H, W\)"):
        fpn(bad)


def test_backbone_with_fpn_on_a_small_convnet():
    net = nn.Sequential(
        OrderedDict(
            stem=ConvNormAct(3, 8, stride=2),
            s1=Down(8, 16, mode="conv"),
            s2=Down(16, 32, mode="conv"),
            head=nn.Flatten(),
        )
    )
    model = BackboneWithFPN(net, {"stem": "0", "s1": "1", "s2": "2"}, [8, 16, 32], 6)
    assert "head" not in model.body  # children after the last returned one are dropped
    out = model(torch.randn(1, 3, 32, 32))
    assert [(k, tuple(v.shape)) for k, v in out.items()] == [
        ("0", (1, 6, 16, 16)),
        ("1", (1, 6, 8, 8)),
        ("2", (1, 6, 4, 4)),
        ("pool", (1, 6, 2, 2)),
    ]
    assert model.out_channels == 6


def test_intermediate_layer_getter_unknown_child():
    net = nn.Sequential(OrderedDict(layer1=nn.ReLU(), layer2=nn.ReLU()))
    with pytest.raises(
        InputError, match=r"\['layer3'\].*did you mean 'layer2' or 'layer1'.*children are: layer1, layer2"
    ):
        IntermediateLayerGetter(net, {"layer3": "0"})
