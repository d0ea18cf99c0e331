"""match="structure": torchvision resnet18 ported into a re-implementation whose every name differs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from seed_code import SeedResidualBlock
from torchsmith.errors import TransferError
from torchsmith.transfer import load_weights
from torchsmith.transfer.structure import execution_order


class SeedStyleResNet18(nn.Module):
    """ResNet-18 in the seed's style (``pre``, ``make_layer``, ``left``/``right``), torchvision's layout."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.pre = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer1 = self.make_layer(64, 64, 2)
        self.layer2 = self.make_layer(64, 128, 2, stride=2)
        self.layer3 = self.make_layer(128, 256, 2, stride=2)
        self.layer4 = self.make_layer(256, 512, 2, stride=2)
        self.classifier = nn.Linear(512, num_classes)

    @staticmethod
    def make_layer(in_channels: int, out_channels: int, block_num: int, stride: int = 1) -> nn.Sequential:
        shortcut = None
        if stride != 1 or in_channels != out_channels:
            shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        blocks = [SeedResidualBlock(in_channels, out_channels, stride, shortcut)]
        blocks += [SeedResidualBlock(out_channels, out_channels) for _ in range(1, block_num)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.pre(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _randomise_batchnorm(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def test_torchvision_resnet18_ported_by_structure_gives_the_same_outputs():
    source = torchvision.models.resnet18()
    _randomise_batchnorm(source)
    source.eval()
    model = SeedStyleResNet18().eval()
    source_sd = source.state_dict()
    assert not set(model.state_dict()) & set(source_sd)  # every name differs
    with pytest.raises(TransferError, match="nothing was loaded"):
        load_weights(model, source_sd)  # by name nothing fits
    # its keys and shapes are also timm's resnetblur18 (blur pooling: another function): no guess
    with pytest.raises(TransferError, match=r"fit .*torchvision:resnet18.*timm:resnetblur18.*source_model="):
        load_weights(model, source_sd, match="structure")
    report = load_weights(model, source_sd, match="structure", source_model="torchvision:resnet18")
    assert any("loaded by name into 'torchvision:resnet18'" in n for n in report.notes)
    assert not report.unverified and any(n.startswith("numerical check:") for n in report.notes)
    assert report.fraction == 1.0 and len(report.loaded) == len(source_sd)
    assert not (report.missing or report.unexpected or report.skipped_shape)
    assert report.mapping[0] == {
        "target": "pre.0",
        "source": "conv1",
        "kind": "Conv2d",
        "status": "same shapes",
    }
    assert {
        "target": "layer2.0.right.0",
        "source": "layer2.0.downsample.0",
        "kind": "Conv2d",
        "status": "same shapes",
    } in report.mapping
    assert report.mapping[-1]["target"] == "classifier" and report.mapping[-1]["source"] == "fc"
    assert "pre.0" in str(report) and "layer2.0.downsample.0" in str(report)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - source(x)).abs().max().item()
    assert diff < 1e-4
    assert not model.training  # the trace restored the mode


def test_structure_from_a_module_with_a_new_head_skips_only_the_head():
    source = torchvision.models.resnet18()
    model = SeedStyleResNet18(num_classes=10)
    _randomise_batchnorm(source)
    model.train()
    report = load_weights(model, source, match="structure", example_input=torch.randn(1, 3, 64, 64))
    assert [e["key"] for e in report.skipped_shape] == ["classifier.weight", "classifier.bias"]
    assert report.mapping[-1]["status"] == "shapes differ (classifier)"
    assert model.training and source.training  # traced in eval mode, train mode restored
    assert torch.equal(model.pre[1].running_mean, source.bn1.running_mean)
    # Tracing does not touch batch-norm statistics.
    stats = source.bn1.running_mean.clone()
    execution_order(source, torch.randn(2, 3, 64, 64))
    assert torch.equal(stats, source.bn1.running_mean) and source.training


def test_a_divergent_structure_is_refused_with_the_first_divergence_named():
    source = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    target = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 4))
    before = target[0].weight.detach().clone()
    expected = (
        r"first divergence at position 1: model module '2' \[Linear: weight\(24,16\) bias\(24\)\] "
        r"vs source module '2' \[weight\(32,16\) bias\(32\)\]"
    )
    with pytest.raises(TransferError, match=expected):
        load_weights(target, source.state_dict(), match="structure")
    assert torch.equal(target[0].weight, before)
    longer = nn.Sequential(*source, nn.Linear(4, 4))
    with pytest.raises(
        TransferError, match=r"first divergence at position 3: the model has more modules with weights"
    ):
        load_weights(longer, source.state_dict(), match="structure", order="execution")


class _RunsBackwards(nn.Module):
    """Registers ``a`` then ``b`` but runs ``b`` first: forward and registration orders disagree."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x):
        return self.a(torch.relu(self.b(x)))


def test_an_ambiguous_structure_is_refused_naming_the_disputed_module():
    source = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    target = _RunsBackwards()
    assert execution_order(target, torch.zeros(1, 8)) == ["", "b", "a"]
    with pytest.raises(TransferError, match=r"ambiguous: model module '(a|b)' pairs with source module"):
        load_weights(target, source.state_dict(), match="structure")
    report = load_weights(
        target, source.state_dict(), match="structure", order="execution", allow_unverified=True
    )
    assert report.unverified  # a hand-made Sequential: no architecture to check it against
    assert [(m["target"], m["source"]) for m in report.mapping] == [("b", "0"), ("a", "2")]
    x = torch.randn(3, 8)
    assert torch.allclose(target(x), source(x))
    # A source model is traced too, so forward order on both sides is unambiguous.
    report = load_weights(_RunsBackwards(), source, match="structure")
    assert [(m["target"], m["source"]) for m in report.mapping] == [("b", "0"), ("a", "2")]


def test_a_model_that_cannot_run_names_example_input():
    with pytest.raises(TransferError, match=r"could not run .* pass example_input="):
        load_weights(
            SeedStyleResNet18(),
            torchvision.models.resnet18(),
            match="structure",
            order="execution",
            example_input=torch.zeros(1, 5, 32, 32),
        )


class _NamedStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean(dim=(2, 3)))


def test_a_sorted_safetensors_source_is_refused_with_the_way_out(tmp_path):
    from safetensors.torch import save_file

    source = _NamedStem()
    path = tmp_path / "stem.safetensors"
    save_file(source.state_dict(), str(path))  # keys stored sorted: bn.* before conv.*
    target = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    with pytest.raises(TransferError, match=r"position 0.*keys are sorted .*pass that model as source"):
        load_weights(target, path, match="structure")
    rebuilt = _NamedStem()
    assert load_weights(rebuilt, path).fraction == 1.0
    report = load_weights(target, rebuilt, match="structure")
    assert [m["source"] for m in report.mapping] == ["conv", "bn", "head"]
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(target.eval()(x), source.eval()(x), atol=1e-6)


def test_torchvision_mobilenet_v2_ported_into_timm_gives_the_same_outputs():
    import timm

    tv = torchvision.models.mobilenet_v2()
    _randomise_batchnorm(tv)
    tv.eval()
    tm = timm.create_model("mobilenetv2_100", pretrained=False).eval()
    assert not set(tm.state_dict()) & set(tv.state_dict())  # conv_stem/blocks vs features.N
    x = torch.randn(1, 3, 32, 32)
    report = load_weights(tm, tv.state_dict(), match="structure", example_input=x)
    assert report.fraction == 1.0 and report.mapping[0] == {
        "target": "conv_stem",
        "source": "features.0.0",
        "kind": "Conv2d",
        "status": "same shapes",
    }
    with torch.no_grad():
        assert (tm(x) - tv(x)).abs().max().item() < 1e-4


class _DictNet(nn.Module):
    """The same MLP as an nn.Sequential, written with a ModuleDict and other names."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.layers = nn.ModuleDict(
            {f"dense_{chr(97 + i)}": nn.Linear(a, b) for i, (a, b) in enumerate(itertools.pairwise(widths))}
        )

    def forward(self, x):
        for i, layer in enumerate(self.layers.values()):
            x = layer(x) if i == 0 else layer(torch.tanh(x))
        return x


@settings(max_examples=12, deadline=None)
@given(widths=st.lists(st.integers(1, 12), min_size=2, max_size=14))
def test_property_any_mlp_ports_between_sequential_and_moduledict(widths):
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers += ([nn.Tanh()] if i else []) + [nn.Linear(a, b)]
    source = nn.Sequential(*layers)
    target = _DictNet(widths)
    report = load_weights(target, source.state_dict(), match="structure", source_model=source)
    assert not report.unverified and any(n.startswith("numerical check:") for n in report.notes)
    assert report.fraction == 1.0 and len(report.mapping) == len(widths) - 1
    x = torch.randn(3, widths[0])
    assert torch.allclose(target(x), source(x), atol=1e-6)


def test_a_torchsmith_safetensors_file_is_rebuilt_and_traced(tmp_path):
    import torchsmith

    source = torchsmith.create_model("torchvision:resnet18")
    _randomise_batchnorm(source)
    path = tmp_path / "resnet18.safetensors"
    torchsmith.save(source, path)  # records 'torchvision:resnet18'; safetensors sorts the keys
    model = SeedStyleResNet18()
    x = torch.randn(1, 3, 64, 64)
    report = load_weights(model, path, match="structure", example_input=x)
    assert report.fraction == 1.0 and report.mapping[0]["source"] == "conv1"
    assert any("rebuilt the architecture" in n for n in report.notes)
    with torch.no_grad():
        assert (model.eval()(x) - source.eval()(x)).abs().max().item() < 1e-4
