"""Every example spec builds and matches its Python twin: parameters, keys, output shapes, outputs."""

from __future__ import annotations

from pathlib import Path

import _spec_twins as twins
import pytest
import torch
import torchvision

from torchsmith.spec import build_model, load_spec, validate_spec

SPECS = Path(__file__).resolve().parents[2] / "examples" / "specs"


def _small_backbone():
    return torchvision.models.squeezenet1_1(weights=None)


R18 = {"backbone": "torchvision:squeezenet1_1", "softmax": True}

# spec file, build kwargs, twin factory, sample inputs
CASES = [
    ("s1_mlp", {}, twins.s1_mlp, lambda: (torch.randn(2, 784),)),
    ("s1_mlp_named", {}, twins.s1_mlp_named, lambda: (torch.randn(2, 784),)),
    (
        "s2_my_sequential",
        {"input_shape": (1, 3, 20, 20)},
        twins.s2_my_sequential,
        lambda: (torch.randn(2, 3, 20, 20),),
    ),
    ("s3_module_list", {}, twins.S3Model, lambda: (torch.randn(2, 784),)),
    ("s4_module_dict", {}, twins.S4Model, lambda: (torch.randn(2, 784),)),
    (
        "s5_simple_cnn",
        {"input_shape": (1, 3, 32, 32)},
        lambda: twins.S5Net(flat=64 * 6 * 6),
        lambda: (torch.randn(2, 3, 32, 32),),
    ),
    (
        "s9_unet",
        {"params": {"width": 4}, "input_shape": (1, 3, 32, 32)},
        lambda: twins.Unet9(w=4),
        lambda: (torch.randn(1, 3, 32, 32),),
    ),
    (
        "s10_unet",
        {"params": {"width": 4}, "input_shape": (1, 3, 37, 29)},
        lambda: twins.UNet10(3, 2, bilinear=True, w=4),
        lambda: (torch.randn(2, 3, 37, 29),),
    ),
    (
        "s10_unet",
        {"params": {"width": 4, "bilinear": False, "n_classes": 3}, "input_shape": (1, 3, 33, 40)},
        lambda: twins.UNet10(3, 3, bilinear=False, w=4),
        lambda: (torch.randn(2, 3, 33, 40),),
    ),
    (
        "s12_extra_input",
        {"params": R18, "input_shape": {"x": (2, 3, 32, 32), "add_variable": (2,)}},
        lambda: twins.ExtraInput(_small_backbone()),
        lambda: (torch.randn(2, 3, 32, 32), torch.randn(2)),
    ),
    (
        "s13_extra_output",
        {"params": R18, "input_shape": {"x": (2, 3, 32, 32)}},
        lambda: twins.ExtraOutput(_small_backbone()),
        lambda: (torch.randn(2, 3, 32, 32),),
    ),
]


def test_s8_fpn_spec_matches_the_zoo_resnet_fpn():
    """S8 as a spec (torchvision backbone + torchsmith FPN block) equals the zoo's Python ResNet-FPN."""
    from torchsmith.zoo import create_model

    params = {"backbone": "torchvision:resnet18", "channels": [64, 128, 256, 512], "width": 16}
    model = build_model(SPECS / "s8_resnet_fpn.yaml", params=params, input_shape=(1, 3, 64, 64)).eval()
    reference = create_model("resnet_fpn", depth=18, out_channels=16, trainable_layers=5).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got, want = model(x), reference(x)
    assert list(got) == list(want) == ["0", "1", "2", "3", "pool"]
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)
    # pick single levels: 'fpn.0' finds the dict key "0"
    spec = dict(load_spec(SPECS / "s8_resnet_fpn.yaml"))
    spec["graph"] = {**spec["graph"], "outputs": {"p2": "fpn.0", "pool": "fpn.pool"}}
    picked = build_model(spec, params=params, input_shape=(1, 3, 64, 64)).eval()
    picked.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        levels = picked(x)
    torch.testing.assert_close(levels["p2"], want["0"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(levels["pool"], want["pool"], rtol=1e-5, atol=1e-5)
    default = validate_spec(SPECS / "s8_resnet_fpn.yaml")  # the seed's resnet152 + 256 channels, on meta
    assert default["outputs"]["pool"] == [1, 256, 4, 4]


def _flat(out):
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize(
    ("name", "kwargs", "twin", "inputs"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_example_matches_twin(name, kwargs, twin, inputs):
    model = build_model(SPECS / f"{name}.yaml", **kwargs)
    reference = twin()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    model.load_state_dict(reference.state_dict(), strict=True)  # same names, same shapes
    model.eval()
    reference.eval()
    xs = inputs()
    with torch.no_grad():
        got, want = _flat(model(*xs)), _flat(reference(*xs))
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_s5_infers_the_seed_flatten_size_at_224():
    """Trap 10: the seed's 64*54*54 is read off the shape, on the meta device (no 190 MB allocated)."""
    report = validate_spec(SPECS / "s5_simple_cnn.yaml")
    assert report["inferred"]["fc1"] == {"in_features": 64 * 54 * 54}
    assert report["outputs"] == [1, 101]
    with torch.device("meta"):
        assert report["parameters"] == sum(p.numel() for p in twins.S5Net().parameters())


def test_s6_resnet34_matches_twin_on_meta():
    """S6 has 21M weights: compare names, shapes and counts on the meta device (no allocation)."""
    report = validate_spec(SPECS / "s6_resnet34.yaml")
    with torch.device("meta"):
        twin = twins.ResNet34()
    assert report["parameters"] == sum(p.numel() for p in twin.parameters())
    assert report["outputs"] == [1, 101]
    with torch.device("meta"):  # the real pass builds on the ambient device: here, meta
        model = build_model(SPECS / "s6_resnet34.yaml")
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in twin.state_dict().items()
    }
    stages = {layer["name"]: layer for layer in report["layers"]}
    assert stages["layer4"]["output_shape"] == [1, 512, 7, 7]
    assert stages["layer1"]["type"] == "Stage"


def test_default_specs_validate_with_the_seed_sizes():
    """The defaults (resnet50 backbones, width-64 U-Nets, 224/256 inputs) check out without allocating."""
    s12 = validate_spec(SPECS / "s12_extra_input.yaml")
    assert s12["outputs"] == [2, 10]
    assert s12["inferred"]["fc_add"] == {"in_features": 1001}
    assert s12["parameters"] == 25_557_032 + 1001 * 10 + 10  # resnet50 + fc_add
    s13 = validate_spec(SPECS / "s13_extra_output.yaml")
    assert s13["outputs"] == [[2, 10], [2, 1000]]
    s10 = validate_spec(SPECS / "s10_unet.yaml")
    assert s10["outputs"] == [1, 2, 101, 75]  # odd input, output at the input's size
    s9 = validate_spec(SPECS / "s9_unet.yaml")
    assert s9["outputs"] == [1, 3, 256, 256]


def test_state_dict_keys_follow_spec_names():
    model = build_model(SPECS / "s10_unet.yaml", params={"width": 4}, input_shape=(1, 3, 32, 32))
    keys = list(model.state_dict())
    assert "inc.double_conv.0.weight" in keys
    assert "up1.conv.double_conv.3.weight" in keys
    assert "outc.conv.bias" in keys
    # ops (pad_to, concat) are functions, not modules: nothing of theirs in the state_dict
    assert not any(k.startswith(("up1.cat", "up1.padded")) for k in keys)
