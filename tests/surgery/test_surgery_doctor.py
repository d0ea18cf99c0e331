"""doctor finds traps 1, 3, 7 and 11, and nothing on clean models; the CLI exits 1 on findings."""

from __future__ import annotations

import json

import timm
import torch.nn as nn
import torchvision

from torchsmith.cli.main import main
from torchsmith.surgery import doctor


class ExtraOutputSeed(nn.Module):
    """Seed 003's "extra output" model: fc1 is defined and never used (trap 7), softmax output (11)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(1000, 10, bias=True)
        self.output = nn.Softmax(dim=1)

    def forward(self, x):
        x1000 = self.net(x)
        x10 = self.dropout(self.relu(x1000))
        x10 = self.output(x10)
        return x10, x1000


def test_clean_models_have_no_findings():
    assert doctor(torchvision.models.resnet50(weights=None), (2, 3, 32, 32)) == []
    assert doctor(timm.create_model("mobilenetv3_small_050", pretrained=False), (2, 3, 32, 32)) == []


def test_trap1_and_trap3_without_a_forward_pass():
    net = torchvision.models.resnet18(weights=None)
    net.fc.out_features = 20  # seed 002: changes a number, not the layer
    net.state_dict = {"fc.weight": None}  # seed 002/003/004: loads nothing
    found = {(f.trap, f.path) for f in doctor(net, forward=False)}
    assert found == {(1, ""), (3, "fc")}
    msg = next(str(f) for f in doctor(net, forward=False) if f.trap == 3)
    assert "out_features is 20" in msg and "[1000, 512]" in msg


def test_trap7_and_trap11_from_a_sample_forward():
    net = torchvision.models.resnet18(weights=None)
    found = doctor(ExtraOutputSeed(net), (2, 3, 32, 32))
    assert [(f.trap, f.path) for f in found] == [(7, "fc1"), (11, "output")]
    assert "10,010 parameters" in str(found[0])
    # A functional softmax at the end is caught too, and a LogSoftmax end is fine.
    seq = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(dim=1))
    assert doctor(seq) == []


def test_cli_doctor(capsys):
    assert main(["doctor", "torchvision:squeezenet1_1", "--input-shape", "2,3,64,64"]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main(["doctor", "timm:mobilenetv3_small_050", "--json", "--no-forward"]) == 0
    assert json.loads(capsys.readouterr().out)["findings"] == []
    assert main(["doctor", "torchvision:resnet5"]) == 2
    assert "did you mean 'resnet50'" in capsys.readouterr().err


def test_cli_doctor_on_a_saved_checkpoint(tmp_path, capsys):
    import torchsmith
    from torchsmith.surgery import replace_head

    net = torchsmith.create_model("torchvision:resnet18")
    # A head ending in Softmax, recorded by the surgery and rebuilt by load_model: trap 11.
    replace_head(net, nn.Sequential(nn.Linear(512, 4), nn.Softmax(dim=1)))
    path = torchsmith.save(net, tmp_path / "net.safetensors")
    assert main(["doctor", str(path), "--input-shape", "2,3,32,32", "--json"]) == 1
    found = json.loads(capsys.readouterr().out)["findings"]
    assert [(f["trap"], f["path"]) for f in found] == [(11, "fc.1")]


class CalledAndDropped(nn.Module):
    """Seed 003's other slip: fc1 *is* called, but its result is dropped, so the "10-d" output is 1000-d."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(weights=None)
        self.fc1 = nn.Linear(1000, 10)

    def forward(self, x):
        x1000 = self.net(x)
        x10 = self.fc1(x1000)  # noqa: F841 - computed, never returned
        return x1000, x1000


def test_trap7_a_layer_called_but_its_result_dropped():
    found = doctor(CalledAndDropped(), (2, 3, 32, 32))
    assert [(f.trap, f.path) for f in found] == [(7, "fc1")]
    assert "never reaches the model's output" in found[0].message


def test_shared_modules_are_not_reported_as_unused():
    timm_model = timm.create_model("coat_lite_tiny", pretrained=False)  # cpe1 registered twice
    assert doctor(timm_model, (2, 3, 224, 224)) == []
