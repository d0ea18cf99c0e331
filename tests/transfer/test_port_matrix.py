"""The structure-port matrix (issue 14): real torchvision, timm, HF transformers and zoo models with
random weights, both directions. Same architecture: ports with outputs equal to < 1e-5 relative.
Different architecture: refused. Never wrong. Each pair's two models are built once (module fixture)
and re-randomised before each direction, so a port that did nothing cannot pass."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from seed_code import SeedResNet34
from torchsmith.cli.main import main
from torchsmith.errors import TransferError
from torchsmith.transfer import load_weights
from torchsmith.zoo import create_model


def _mobilenetv3_timm():
    # torchvision's MobileNetV3 uses batch-norm eps 1e-3, timm's 1e-5: another function until equal.
    model = timm.create_model("mobilenetv3_small_100")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
    return model


def _convnext_atto_torchvision():
    # timm's convnext_atto (dims 40..320, depths 2-2-6-2, conv MLP) written with torchvision's classes.
    cfg = [
        CNBlockConfig(40, 80, 2),
        CNBlockConfig(80, 160, 2),
        CNBlockConfig(160, 320, 6),
        CNBlockConfig(320, None, 2),
    ]
    return ConvNeXt(cfg)


def _vgg11_bn_torchvision():
    # vgg11_bn with a 64-wide classifier (the 4096-wide one is 120M parameters): the same layers.
    model = torchvision.models.vgg11_bn(num_classes=10)
    model.classifier[0], model.classifier[3], model.classifier[6] = (
        nn.Linear(25088, 64),
        nn.Linear(64, 64),
        nn.Linear(64, 10),
    )
    return model


def _vgg11_bn_timm():
    model = timm.create_model("vgg11_bn", num_classes=10)
    model.pre_logits.fc1, model.pre_logits.fc2 = nn.Conv2d(512, 64, 7), nn.Conv2d(64, 64, 1)
    model.head.fc = nn.Linear(64, 10)
    return model


def _vit_tiny_torchvision():
    # timm's vit_tiny (2 blocks) written with torchvision's classes: nn.MultiheadAttention's fused
    # in_proj_weight, a root-owned class_token and encoder.pos_embedding.
    return VisionTransformer(224, 16, num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=768)


def _swin_torchvision():
    # a 2-stage swin (width 24) in torchvision's classes: qkv called functionally, a persistent
    # relative_position_index buffer
    return SwinTransformer([4, 4], 24, [2, 2], [1, 2], [7, 7], num_classes=10)


def _swin_timm():
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        embed_dim=24,
        depths=(2, 2),
        num_heads=(1, 2),
        img_size=112,
        num_classes=10,
    )


PAIRS = {
    "resnet18 tv/timm": (torchvision.models.resnet18, lambda: timm.create_model("resnet18"), (1, 3, 64, 64)),
    "resnet18 zoo/tv": (lambda: create_model("resnet18"), torchvision.models.resnet18, (1, 3, 64, 64)),
    "regnety_400mf tv/timm": (
        torchvision.models.regnet_y_400mf,
        lambda: timm.create_model("regnety_004"),
        (1, 3, 64, 64),
    ),
    "convnext_atto tv/timm": (
        _convnext_atto_torchvision,
        lambda: timm.create_model("convnext_atto"),
        (1, 3, 64, 64),
    ),
    "mobilenetv3_small tv/timm": (torchvision.models.mobilenet_v3_small, _mobilenetv3_timm, (1, 3, 64, 64)),
    "vgg11_bn tv/timm": (_vgg11_bn_torchvision, _vgg11_bn_timm, (1, 3, 32, 32)),
    "vit_tiny hf/timm": (
        lambda: create_model("hf:vit-tiny/image-classification", num_hidden_layers=4),
        lambda: timm.create_model("vit_tiny_patch16_224", depth=4),
        (1, 3, 224, 224),
    ),
    "vit_tiny tv/timm": (
        _vit_tiny_torchvision,
        lambda: timm.create_model("vit_tiny_patch16_224", depth=2),
        (1, 3, 224, 224),
    ),
    "vit_tiny tv/hf": (
        _vit_tiny_torchvision,
        lambda: create_model("hf:vit-tiny/image-classification", num_hidden_layers=2),
        (1, 3, 224, 224),
    ),
    "swin tv/timm": (_swin_torchvision, _swin_timm, (1, 3, 112, 112)),
}


@pytest.fixture(scope="module")
def built():
    cache: dict[str, tuple] = {}

    def get(name):
        if name not in cache:
            a, b, shape = PAIRS[name]
            cache[name] = (a(), b(), shape)
        return cache[name]

    return get


@torch.no_grad()
def _randomise(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.normal_(0.0, 0.05, generator=g)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.add_(1.0)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return (out.logits if hasattr(out, "logits") else out).double()


@pytest.mark.parametrize("direction", ["a->b", "b->a"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_same_architecture_ports_with_equal_outputs(built, name, direction):
    a, b, shape = built(name)
    source, model = (a, b) if direction == "a->b" else (b, a)
    _randomise(source, 1)
    _randomise(model, 2)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    want = _logits(source, x)
    assert want.abs().max() > 1e-3  # randomised apart (seeds 1, 2): only a real port makes them agree

    report = load_weights(model, source, match="structure", example_input=x)

    rel = ((_logits(model, x) - want).abs().max() / want.abs().max()).item()
    assert rel < 1e-5, (name, direction, rel)
    assert report.fraction == 1.0 and not report.missing and not report.unexpected
    assert any(n.startswith("numerical check: outputs") for n in report.notes), report.notes


def test_the_equivalences_used_are_named(built):
    a, b, shape = built("vgg11_bn tv/timm")
    _randomise(a, 4)
    report = load_weights(b, a, match="structure", example_input=torch.randn(shape))
    eq = report.to_dict()["equivalences"]
    assert {e["equivalence"] for e in eq} == {
        "Linear(k*h*w -> n) = Conv2d(k, n, (7, 7))",
        "1x1 Conv = Linear",
    }


def test_multihead_attention_in_proj_is_named(built):
    for name, expected in (
        ("vit_tiny tv/timm", "MultiheadAttention in_proj = fused qkv Linear"),
        ("vit_tiny tv/hf", "MultiheadAttention in_proj = cat(q, k, v) along dim 0"),
    ):
        a, b, shape = built(name)
        _randomise(a, 4)
        report = load_weights(b, a, match="structure", example_input=torch.randn(shape))
        assert [e["equivalence"] for e in report.to_dict()["equivalences"]] == [expected] * 2


def test_swin_index_buffers_are_kept_not_copied(built):
    """torchvision stores relative_position_index, timm recomputes it: neither side copies it."""
    tv, tm, shape = built("swin tv/timm")
    _randomise(tm, 7)
    with torch.no_grad():  # the model's own index: a port that copied or dropped it would change it
        own = {k: v.clone() for k, v in tv.state_dict().items() if k.endswith("relative_position_index")}
    report = load_weights(tv, tm, match="structure", example_input=torch.randn(shape))
    assert sorted(e["key"] for e in report.kept) == sorted(own) and len(own) == 4
    assert not report.missing and not report.unexpected
    assert all(torch.equal(tv.state_dict()[k], v) for k, v in own.items())
    back = load_weights(tm, tv, match="structure", example_input=torch.randn(shape))
    assert not back.kept and not back.unexpected  # the source's index buffers are not "unused"
    assert any("index buffers are not copied" in n for n in back.notes)


def test_inception_aux_head_that_never_runs_in_eval_is_unexpected_not_blocking():
    tv = torchvision.models.inception_v3(init_weights=False, aux_logits=True, num_classes=10)
    tm = timm.create_model("inception_v3", num_classes=10)
    x = torch.randn(1, 3, 75, 75)
    _randomise(tv, 8)
    _randomise(tm, 9)
    want = _logits(tv, x)
    report = load_weights(tm, tv, match="structure", example_input=x)
    assert ((_logits(tm, x) - want).abs().max() / want.abs().max()).item() < 1e-5
    aux = [e["key"] for e in report.unexpected]
    assert aux and all(k.startswith("AuxLogits.") for k in aux) and report.fraction == 1.0
    assert any(n.startswith("numerical check: outputs") for n in report.notes)
    # the other way the aux head is the model's: it keeps its values, and the check still runs
    _randomise(tm, 10)
    want = _logits(tm, x)
    back = load_weights(tv, tm, match="structure", example_input=x)
    assert ((_logits(tv, x) - want).abs().max() / want.abs().max()).item() < 1e-5
    assert {e["key"].split(".")[0] for e in back.missing} == {"AuxLogits"}
    assert any(n.startswith("numerical check: outputs") for n in back.notes), back.notes


def test_mobilenetv3_with_another_batchnorm_eps_adopts_it_or_is_refused():
    """Same tensors, another function (eps 1e-3 vs 1e-5): the model takes the source's eps, named in
    the report (issue 24); with adopt_hparams=False the port is refused naming eps and the modules."""
    source = torchvision.models.mobilenet_v3_small()
    model = timm.create_model("mobilenetv3_small_100")
    _randomise(source, 5)
    x = torch.randn(1, 3, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        TransferError, match=r"adopt_hparams=False.*eps 1e-05 in the model vs 0.001 in the source"
    ):
        load_weights(model, source, match="structure", example_input=x, adopt_hparams=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = load_weights(model, source, match="structure", example_input=x)
    assert {(d["attr"], d["target_value"], d["source_value"]) for d in report.adopted} == {
        ("eps", 1e-5, 1e-3)
    }
    assert any("adopted the source's hyper-parameters" in n for n in report.notes)
    want = _logits(source, x)
    assert ((_logits(model, x) - want).abs().max() / want.abs().max()).item() < 1e-5


@pytest.mark.parametrize("direction", ["seed->tv", "tv->seed"])
def test_a_different_width_is_refused(direction):
    seed, tv = SeedResNet34(num_classes=1000, adaptive_pool=True), torchvision.models.resnet34()
    source, model = (seed, tv) if direction == "seed->tv" else (tv, seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TransferError, match="structure match refused"):
        load_weights(model, source, match="structure", example_input=torch.randn(1, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cli_ports_a_sorted_safetensors_file_with_its_source_model(tmp_path, capsys):
    """A plain .safetensors (keys sorted, no architecture) ports when --source-model names it."""
    from safetensors.torch import save_file

    source = torchvision.models.resnet18()
    _randomise(source, 6)
    path = tmp_path / "tv_resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    args = ["load", "timm:resnet18", str(path), "--match", "structure"]
    rc = main([*args, "--source-model", "torchvision:resnet18", "--input-shape", "1,3,64,64", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["ok"] and data["fraction"] == 1.0
    assert len(data["mapping"]) == 41 and data["mapping"][0] == {
        "target": "conv1",
        "source": "conv1",
        "kind": "Conv2d",
        "status": "same shapes",
    }
    assert any(n.startswith("numerical check: outputs") for n in data["notes"])


def test_cli_source_model_needs_match_structure(tmp_path, capsys):
    rc = main(["load", "timm:resnet18", str(tmp_path / "x.pt"), "--source-model", "torchvision:resnet18"])
    assert rc == 2
    assert "--source-model: only used with --match structure" in capsys.readouterr().err
