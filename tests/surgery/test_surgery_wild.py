"""Surgery on the models users meet in the wild (issue 12): wrapped and compiled models, ViT-family
inputs, timm's layer decay and no_weight_decay, doctor's sample input."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import torchvision

from torchsmith.errors import SurgeryError
from torchsmith.surgery import (
    apply_surgery,
    doctor,
    feature_info,
    find_head,
    find_input_layers,
    freeze,
    layer_ids,
    param_groups,
    replace_module,
    return_features,
    set_in_channels,
    set_num_classes,
)

# --- wrapped and compiled models --------------------------------------------------------------------


@pytest.fixture
def gloo_world_of_one():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_surgery_refuses_ddp_and_fsdp_wrapped_models(gloo_world_of_one):
    from torch.distributed.fsdp import fully_shard

    ddp = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    for op in (lambda m: set_num_classes(m, 7), lambda m: replace_module(m, "module.1", nn.GELU())):
        with pytest.raises(SurgeryError, match="do surgery before wrapping") as e:
            op(ddp)
        assert "DistributedDataParallel" in str(e.value)
    assert ddp.module[2].out_features == 3  # nothing changed
    sharded = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    fully_shard(sharded[0])
    with pytest.raises(SurgeryError, match=r"submodule '0' is wrapped in FSDPModule: do surgery before"):
        freeze(sharded, ["0"])


def test_compiled_model_is_unwrapped_and_its_record_replays():
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(2, 3, 32, 32)
    report = set_num_classes(compiled, 7)
    assert report.replaced == ["fc"] and report.ops[0]["head"] == "fc"
    assert compiled(x).shape == (2, 7)
    return_features(compiled, ["layer2"])
    out, feats = compiled(x)
    assert out.shape == (2, 7) and feats["layer2"].shape == (2, 128, 4, 4)
    from torchsmith._provenance import get_provenance

    ops = get_provenance(net)["surgery"]
    assert not any("_orig_mod" in str(op) for op in ops)
    fresh = torchvision.models.resnet18(weights=None, num_classes=10)
    apply_surgery(fresh, ops)
    fresh.load_state_dict(net.state_dict())  # strict: the replayed model has the same keys and shapes
    assert fresh.eval()(x)[0].shape == (2, 7)


# --- ViT-family input layers ------------------------------------------------------------------------


def test_set_in_channels_on_vit_family_finds_the_patch_embedding():
    with torch.device("meta"):  # shapes only: no weights are computed
        tv16 = torchvision.models.vit_b_16()
        tv32 = torchvision.models.vit_b_32()
    timm_models = {}
    for name in (
        "vit_tiny_patch16_224",
        "eva02_tiny_patch14_224",
        "crossvit_tiny_240",
        "xcit_nano_12_p16_224",
    ):
        with torch.device("meta"):
            timm_models[name] = timm.create_model(name, pretrained=False)
    expected = {
        "vit_tiny_patch16_224": ["patch_embed.proj"],
        "eva02_tiny_patch14_224": ["patch_embed.proj"],
        "crossvit_tiny_240": ["patch_embed.0.proj", "patch_embed.1.proj"],
        "xcit_nano_12_p16_224": ["patch_embed.proj.0.0"],
    }
    for net, layers in [(tv16, ["conv_proj"]), (tv32, ["conv_proj"])] + [
        (timm_models[n], expected[n]) for n in expected
    ]:
        assert find_input_layers(net) == layers, type(net).__name__
        root_params = {n: p for n, p in net.named_parameters() if "." not in n}  # cls_token, pos_embed
        report = set_in_channels(net, 4)
        assert all(net.get_submodule(p).weight.shape[1] == 4 for p in layers)
        assert sorted(report.reshaped) == sorted(f"{p}.weight" for p in layers)
        assert all(net.get_parameter(n) is p for n, p in root_params.items())


def test_set_in_channels_keeps_rgb_weights_as_timm_adapt_input_conv():
    from timm.models import adapt_input_conv

    for c in (1, 2, 4, 7):
        net = torchvision.models.resnet18(weights=None)
        w = net.conv1.weight.detach().clone()
        set_in_channels(net, c)
        assert torch.allclose(net.conv1.weight, adapt_input_conv(c, w), atol=1e-6), c


def test_set_in_channels_weight_standardised_convs_exact_with_a_gain_loud_without():
    """ScaledStdConv2d: the kernel it applies is summed and the gain rescaled (exact); StdConv2d has no
    gain, so no 1-channel kernel can reproduce it: a warning and a note, never a silent change."""
    from timm.layers import ScaledStdConv2d, StdConv2d

    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    for cls in (ScaledStdConv2d, StdConv2d):
        net = nn.Sequential(cls(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 2))
        net.eval()
        if cls is ScaledStdConv2d:
            with torch.no_grad():
                net[0].gain.uniform_(0.5, 2.0)  # a trained gain, not the initial ones
        before = net(x.expand(-1, 3, -1, -1))
        if cls is ScaledStdConv2d:
            report = set_in_channels(net, 1, input_shape=(1, 3, 16, 16))
            assert torch.allclose(net(x), before, atol=1e-5), cls.__name__
            assert any("gain rescaled" in n for n in report.notes)
        else:
            with pytest.warns(UserWarning, match=r"StdConv2d.*NOT equivalent"):
                report = set_in_channels(net, 1, input_shape=(1, 3, 16, 16))
            assert any("NOT equivalent" in n for n in report.notes)
            assert not torch.allclose(net(x), before, atol=1e-3)
    plain = torchvision.models.resnet18(weights=None)
    assert not any("standardis" in n for n in set_in_channels(plain, 1).notes)


# --- layer decay and no_weight_decay, as timm has them --------------------------------------------


@pytest.mark.parametrize(
    ("name", "levels"),
    [
        ("swin_tiny_patch4_window7_224", 14),
        ("efficientnet_b0", 18),
        ("densenet121", 60),
        ("vit_tiny_patch16_224", 14),
    ],
)
def test_layer_decay_and_no_weight_decay_match_timm(name, levels):
    from timm.optim import param_groups_layer_decay

    with torch.device("meta"):
        net = timm.create_model(name, pretrained=False)
    assert layer_ids(net)[1] == levels
    nwd = net.no_weight_decay() if hasattr(net, "no_weight_decay") else ()
    ref = param_groups_layer_decay(net, weight_decay=0.05, no_weight_decay_list=nwd, layer_decay=0.75)
    want = {id(p): (g["lr_scale"], g["weight_decay"]) for g in ref for p in g["params"]}
    got = {
        id(p): (g["lr"], g["weight_decay"])
        for g in param_groups(net, lr=1.0, weight_decay=0.05, layer_decay=0.75)
        for p in g["params"]
    }
    assert got.keys() == want.keys()
    names = {id(p): n for n, p in net.named_parameters()}
    wrong = [names[i] for i in want if abs(want[i][0] - got[i][0]) > 1e-12 or want[i][1] != got[i][1]]
    assert wrong == []
    no_decay = {names[i] for i, (_, wd) in got.items() if wd == 0.0}
    for special in ("cls_token", "pos_embed", "relative_position_bias_table"):
        assert all(n in no_decay for n in names.values() if special in n)


# --- doctor's sample input ----------------------------------------------------------------------------


class _DataBranch(nn.Module):
    """A layer behind a data-dependent branch: an all-zero sample never takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.abs().mean() > 0:
            x = self.extra(x)
        return self.fc(x)


def test_doctor_uses_a_random_sample_and_the_models_own_size():
    assert doctor(_DataBranch()) == []
    # 224 (guessed from the first layer) is too small for inception's training-mode aux head.
    assert doctor(torchvision.models.inception_v3(weights=None, init_weights=False)) == []


# --- heads found by what the output depends on; aux heads --------------------------------------------


def test_set_num_classes_adds_a_head_to_a_model_without_one():
    pe = timm.create_model("vit_pe_spatial_tiny_patch16_512", pretrained=False)  # num_classes=0
    block_fc2 = pe.blocks[11].mlp.fc2
    with pytest.raises(SurgeryError, match="has no classifier"):
        find_head(pe)
    report = set_num_classes(pe, 7)
    assert report.added == ["head"] and report.replaced == [] and "added a 7-class head" in report.notes[0]
    assert pe.blocks[11].mlp.fc2 is block_fc2 and pe.num_classes == 7
    assert find_head(pe) == "head" and pe.head.out_features == 7
    r18 = timm.create_model("resnet18", pretrained=False, num_classes=0)
    report = set_num_classes(r18, 5)
    assert "fc" in report.added and r18.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    # A model of no library: a Linear on the output, through a forward hook, and it replays.
    tv = torchvision.models.resnet18(weights=None)
    tv.fc = nn.Identity()
    report = set_num_classes(tv, 3)
    assert report.added == ["head"] and tv.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    fresh = torchvision.models.resnet18(weights=None)
    fresh.fc = nn.Identity()
    apply_surgery(fresh, report.ops)
    fresh.load_state_dict(tv.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(fresh.eval()(x), tv.eval()(x))


def test_aux_heads_change_with_the_main_head():
    inc = torchvision.models.inception_v3(weights=None, init_weights=False)
    report = set_num_classes(inc, 7)
    assert sorted(report.replaced) == ["AuxLogits.fc", "fc"]
    assert any("auxiliary head AuxLogits.fc: 1000 -> 7" in n for n in report.notes)
    assert report.ops[0]["aux_heads"] == ["AuxLogits.fc"]
    g = torchvision.models.googlenet(weights=None, init_weights=False, aux_logits=True)
    report = set_num_classes(g, 7)
    assert sorted(report.replaced) == ["aux1.fc2", "aux2.fc2", "fc"]
    out = g.train()(torch.randn(2, 3, 224, 224))
    assert [t.shape[-1] for t in out] == [7, 7, 7]


# --- strides from the model's own downsampling --------------------------------------------------------


def test_feature_info_strides_are_traced_not_divided():
    r50 = torchvision.models.resnet50(weights=None)
    for size in (240, 200):  # 200 // 7 would say 28 (and 15.385 at layer3)
        info = feature_info(r50, ["layer1", "layer2", "layer3", "layer4"], input_shape=(1, 3, size, size))
        assert [f["stride"] for f in info] == [4, 8, 16, 32]
        assert [f["path"] for f in feature_info(r50, input_shape=(1, 3, size, size))][-4:] == [
            "layer1",
            "layer2",
            "layer3",
            "layer4",
        ]
    with torch.device("meta"):
        nets = {
            "alexnet": torchvision.models.alexnet(),
            "squeezenet1_0": torchvision.models.squeezenet1_0(),
            "squeezenet1_1": torchvision.models.squeezenet1_1(),
            "inception_v3": torchvision.models.inception_v3(init_weights=False),
        }
    for name, net in nets.items():
        strides = [f["stride"] for f in feature_info(net)]
        assert strides[:4] in ([2, 4, 8, 16], [4, 8, 16, 32]), (name, strides)
    assert [f["stride"] for f in feature_info(nets["inception_v3"])] == [2, 4, 8, 16, 32]


@pytest.mark.parametrize(
    "name",
    [
        "tf_efficientnet_b1",
        "resnet10t",
        "tf_efficientnetv2_b3",
        "mobilenetv3_small_050",
        "convnext_atto",
        "regnetx_002",
        "densenet121",
        "resnet50d",
        "cspresnet50",
    ],
)
def test_traced_strides_match_timms_feature_info(name):
    from torchsmith.surgery._dryrun import dry_run
    from torchsmith.surgery.features import _stride_at

    with torch.device("meta"):
        net = timm.create_model(name, pretrained=False)
    run = dry_run(net, train=False)  # at the model's own default size (240, 176, 256, ...)
    in_hw = tuple(run.input_shape[2:])
    traced = [_stride_at(run, d["module"], in_hw, {}) for d in net.feature_info]
    assert traced == [d["reduction"] for d in net.feature_info]
    assert [f["stride"] for f in feature_info(net)] == [d["reduction"] for d in net.feature_info]


def test_an_output_at_several_resolutions_has_no_single_stride():
    with torch.device("meta"):
        net = timm.create_model("hrnet_w18_small", pretrained=False)
    from torchsmith.surgery._dryrun import dry_run
    from torchsmith.surgery.features import _stride_at

    run = dry_run(net, train=False)
    assert _stride_at(run, "stage2", tuple(run.input_shape[2:]), {}) is None  # branches at 4 and 8
    assert _stride_at(run, "conv1", tuple(run.input_shape[2:]), {}) == 2
