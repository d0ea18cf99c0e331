"""Every zoo model: forward shapes on two input sizes, the seeds' names, torchvision parity."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from seed_code import SeedNet, SeedResNet34
from torchsmith.errors import InputError
from torchsmith.zoo import create_model, get_entry, list_models

ZOO = [
    "mlp",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet_fpn",
    "seed_resnet34",
    "simple_cnn",
    "unet",
    "unet_seed",
]


def _run(model: nn.Module, *shape: int):
    model.eval()
    with torch.no_grad():
        return model(torch.randn(*shape))


def test_the_zoo_holds_every_seed_architecture():
    # other tests register their own models; the zoo's own are those defined inside torchsmith
    own = [n for n in list_models() if get_entry(n).factory.__module__.startswith("torchsmith.")]
    assert own == ZOO
    for name in ZOO:
        entry = get_entry(name)
        assert entry.description and "\n" not in entry.description, name


# (name, kwargs, [(input shape, expected output shape), ...]) -- two input sizes each, small on purpose
SHAPES = [
    ("mlp", {}, [((2, 784), (2, 10)), ((3, 1, 28, 28), (3, 10))]),
    ("simple_cnn", {}, [((2, 3, 10, 10), (2, 101)), ((1, 3, 37, 23), (1, 101))]),
    ("seed_resnet34", {"num_classes": 7}, [((2, 3, 32, 32), (2, 7)), ((1, 3, 45, 61), (1, 7))]),
    ("unet", {"bilinear": True}, [((1, 3, 101, 75), (1, 2, 101, 75)), ((2, 3, 32, 32), (2, 2, 32, 32))]),
    ("unet", {"bilinear": False}, [((1, 3, 101, 75), (1, 2, 101, 75)), ((1, 3, 16, 17), (1, 2, 16, 17))]),
    ("unet_seed", {}, [((1, 3, 32, 32), (1, 3, 32, 32)), ((1, 3, 33, 21), (1, 3, 33, 21))]),
] + [
    (f"resnet{d}", {"num_classes": 5}, [((2, 3, 32, 32), (2, 5)), ((1, 3, 64, 48), (1, 5))])
    for d in (18, 34, 50, 101, 152)
]


@pytest.mark.parametrize(("name", "kwargs", "cases"), SHAPES, ids=[f"{s[0]}-{s[1]}" for s in SHAPES])
def test_forward_shapes_on_two_input_sizes(name, kwargs, cases):
    model = create_model(name, **kwargs)
    assert type(model).__module__.startswith(("torchsmith.", "torch.nn"))
    for shape, expected in cases:
        assert tuple(_run(model, *shape).shape) == expected, shape


def test_unet_s10_returns_the_input_size_on_101_by_75():
    out = _run(create_model("unet", n_channels=3, n_classes=4), 1, 3, 101, 75)
    assert out.shape == (1, 4, 101, 75)


def test_resnet_fpn_five_levels_of_256_channels():
    model = create_model("resnet_fpn")  # depth 50
    assert model.out_channels == 256
    for size, strides in [((64, 64), (4, 8, 16, 32, 64)), ((96, 64), (4, 8, 16, 32, 64))]:
        out = _run(model, 1, 3, *size)
        assert list(out) == ["0", "1", "2", "3", "pool"]
        for (key, feat), stride in zip(out.items(), strides):
            assert feat.shape[1] == 256, key
            assert feat.shape[-2:] == (-(-size[0] // stride), -(-size[1] // stride)), key


@pytest.mark.parametrize("depth", [18, 34, 101])
def test_resnet_fpn_other_depths(depth):
    with torch.device("meta"):
        model = create_model("resnet_fpn", depth=depth)
    expected = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
    assert [b.in_channels for b in model.fpn.inner_blocks] == expected


@pytest.mark.parametrize("trainable", [0, 1, 3, 5])
def test_resnet_fpn_freezing_matches_torchvision(trainable):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    with torch.device("meta"):  # structure only: no memory, no init time
        ours = create_model("resnet_fpn", depth=18, trainable_layers=trainable)
        tv = resnet_fpn_backbone(
            backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=trainable
        )

    def trainable_body(m):
        return sorted(n for n, p in m.named_parameters() if n.startswith("body.") and p.requires_grad)

    assert trainable_body(ours) == trainable_body(tv)
    assert all(p.requires_grad for p in ours.fpn.parameters())


def test_resnet_fpn_default_freezes_layer1_and_before_like_the_seed():
    with torch.device("meta"):
        model = create_model("resnet_fpn", depth=50)
    for name, p in model.body.named_parameters():
        assert p.requires_grad == any(k in name for k in ("layer2", "layer3", "layer4")), name


def test_resnet_fpn_bad_arguments():
    with pytest.raises(InputError, match=r"trainable_layers must be an integer from 0 to 5, got 6"):
        create_model("resnet_fpn", trainable_layers=6)
    with pytest.raises(InputError, match=r"unknown ResNet depth 51.*valid depths: 18, 34, 50, 101, 152"):
        create_model("resnet_fpn", depth=51)


# --- torchvision parity ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_resnet_state_dict_keys_shapes_and_counts_equal_torchvision(depth):
    import torchvision

    with torch.device("meta"):
        ours = create_model(f"resnet{depth}")
        tv = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    ours_sd, tv_sd = ours.state_dict(), tv.state_dict()
    assert list(ours_sd) == list(tv_sd)
    assert all(ours_sd[k].shape == tv_sd[k].shape for k in tv_sd)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in tv.parameters())
    if depth == 50:
        assert count == 25_557_032


def test_torchvision_resnet50_weights_load_strictly_and_give_equal_outputs():
    import torchvision

    tv = torchvision.models.resnet50(weights=None)
    with torch.no_grad():  # make BN statistics non-trivial, so they must be carried over too
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    ours = create_model("resnet50")
    result = ours.load_state_dict(tv.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 64, 64)
    tv.eval(), ours.eval()
    with torch.no_grad():
        diff = (ours(x) - tv(x)).abs().max().item()
    assert diff < 1e-5


def test_resnet_options():
    headless = create_model("resnet18", include_top=False)
    assert not hasattr(headless, "fc") and not hasattr(headless, "avgpool")
    assert _run(headless, 1, 3, 64, 64).shape == (1, 512, 2, 2)
    gray = create_model("resnet18", in_chans=1, num_classes=3)
    assert gray.conv1.in_channels == 1 and _run(gray, 1, 1, 32, 32).shape == (1, 3)
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * k * k))
    w = create_model("resnet18").conv1.weight
    assert abs(w.std().item() - (2 / (64 * 7 * 7)) ** 0.5) < 0.005
    zero = create_model("resnet18", zero_init_residual=True)
    assert torch.count_nonzero(zero.layer1[0].bn2.weight) == 0


# --- seed parity: the seeds' own classes, copied verbatim, give their weights to ours ----------------


@pytest.mark.parametrize(("ours", "seed"), [("simple_cnn", SeedNet), ("seed_resnet34", SeedResNet34)])
def test_seed_models_take_the_seed_weights_and_agree_at_224(ours, seed):
    theirs = seed()
    model = create_model(ours)
    model.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    model.eval(), theirs.eval()
    with torch.no_grad():
        assert (model(x) - theirs(x)).abs().max().item() < 1e-5


def test_seed_resnet34_structure():
    with torch.device("meta"):
        model = create_model("seed_resnet34")
    assert [n for n, _ in model.named_children()] == [
        "pre",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    ]
    assert [model.layer1[0].left[0].out_channels, model.layer2[0].left[0].out_channels] == [128, 256]
    assert [model.layer3[0].left[0].out_channels, model.layer4[0].left[0].out_channels] == [512, 512]
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        assert layer[0].right is not None and all(b.right is None for b in layer[1:])
    assert model.fc.out_features == 101


def test_unet_seed_names_are_the_seeds():
    with torch.device("meta"):
        model = create_model("unet_seed")
    names = [n for n, _ in model.named_children()]
    assert names == [
        *(
            [
                "C1",
                "D1",
                "C2",
                "D2",
                "C3",
                "D3",
                "C4",
                "D4",
                "C5",
                "U1",
                "C6",
                "U2",
                "C7",
                "U3",
                "C8",
                "U4",
                "C9",
            ]
        ),
        "pre",
        "sigmoid",
    ]
    sd = model.state_dict()
    for key in (
        "C1.layer.0.weight",
        "C1.layer.5.running_var",
        "D4.layer.0.bias",
        "U1.C.weight",
        "pre.weight",
    ):
        assert key in sd, key
    assert sd["U1.C.weight"].shape == (512, 1024, 1, 1)


def test_unet_s10_names_and_modes():
    with torch.device("meta"):
        bilinear = create_model("unet")
        transposed = create_model("unet", bilinear=False)
    assert "inc.double_conv.0.weight" in bilinear.state_dict()
    assert "down4.maxpool_conv.1.double_conv.3.weight" in bilinear.state_dict()
    assert bilinear.down4.out_channels == 512 and transposed.down4.out_channels == 1024
    assert transposed.up1.up.weight.shape == (1024, 512, 2, 2)  # ConvTranspose2d(1024, 512)
    assert "outc.conv.weight" in transposed.state_dict()


@pytest.mark.parametrize(
    ("name", "shape", "minimum"), [("simple_cnn", (1, 3, 9, 40), 10), ("unet", (1, 3, 15, 64), 16)]
)
def test_too_small_input_is_a_clear_error(name, shape, minimum):
    model = create_model(name, **({"pool_size": 2} if name == "simple_cnn" else {"base_channels": 4}))
    with pytest.raises(InputError, match=rf"at least {minimum}, got \({', '.join(map(str, shape))}\)"):
        model(torch.randn(*shape))


def test_mlp_variants():
    model = create_model("mlp", hidden=[32, 16], num_classes=3, act_layer="gelu")
    assert [n for n, _ in model.named_children()] == ["flatten", "fc1", "act1", "fc2", "act2", "fc3"]
    assert _run(model, 2, 784).shape == (2, 3)
    with pytest.raises(InputError, match="widths must be positive"):
        create_model("mlp", hidden=0)


def test_unknown_model_and_argument_names_suggest_close_matches():
    with pytest.raises(InputError, match=r"unknown model 'resnet5'.*did you mean.*'resnet50'"):
        create_model("resnet5")
    with pytest.raises(InputError, match=r"has no argument 'num_class'.*did you mean 'num_classes'"):
        create_model("resnet18", num_class=3)
