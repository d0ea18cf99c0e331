"""Declarative replay from YAML, its errors, and features on a model FX cannot trace."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from torchsmith._provenance import get_provenance
from torchsmith.errors import SurgeryError
from torchsmith.surgery import apply_surgery, return_features

YAML = """\
- {op: set_num_classes, num_classes: 10}
- {op: set_in_channels, in_channels: 4, channel_map: [0, 1, 2, 0]}
- {op: replace_modules, match: "type:BatchNorm2d", new: FrozenBatchNorm2d}
- {op: add_inputs, at: fc, inputs: {age: 1}}
- {op: return_features, features: [layer2, layer3], output: true}
- {op: freeze, before: layer2, bn_stats: true}
"""


def test_apply_surgery_from_yaml_and_its_record(tmp_path):
    path = tmp_path / "surgery.yaml"
    path.write_text(YAML)
    net = torchvision.models.resnet18(weights=None)
    report = apply_surgery(net, path)
    assert report.model is net and net.fc.weight.shape == (10, 513) and net.conv1.in_channels == 4
    assert "fc" in report.replaced and report.reshaped["conv1.weight"] == ((64, 3, 7, 7), (64, 4, 7, 7))
    assert [op["op"] for op in get_provenance(net)["surgery"]] == [op["op"] for op in report.ops]
    assert len(report.ops) == 6 and report.to_dict()["params_after"] == report.params_after
    out, feats = net.eval()(torch.randn(1, 4, 32, 32), age=torch.tensor([1.0]))
    assert out.shape == (1, 10) and set(feats) == {"layer2", "layer3"}
    assert not net.layer1[0].conv1.weight.requires_grad and net.layer2[0].conv1.weight.requires_grad


def test_apply_surgery_errors_name_index_and_argument(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    with pytest.raises(
        SurgeryError, match=r"surgery\[0\]: unknown op 'set_num_clases' \(did you mean 'set_num_classes'"
    ):
        apply_surgery(net, [{"op": "set_num_clases", "num_classes": 3}])
    with pytest.raises(
        SurgeryError, match=r"surgery\[1\] \(freeze\): unknown argument 'bn_stat' \(did you mean 'bn_stats'"
    ):
        apply_surgery(net, [{"op": "unfreeze"}, {"op": "freeze", "bn_stat": True}])
    with pytest.raises(
        SurgeryError, match=r"surgery\[0\] \(remove_module\): .*nearest valid paths: 'layer1'"
    ):
        apply_surgery(net, [{"op": "remove_module", "path": "layer01"}])
    with pytest.raises(SurgeryError, match="missing argument"):
        apply_surgery(net, [{"op": "set_in_channels"}])
    bad = tmp_path / "bad.yaml"
    bad.write_text("op: freeze\n")
    with pytest.raises(SurgeryError, match="expected a list of operations"):
        apply_surgery(net, bad)


class DataDependent(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace this, hooks do not care."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = self.b(h)
        return self.head(torch.relu(h))


def test_features_on_a_model_fx_cannot_trace():
    net = DataDependent()
    with pytest.raises(Exception):  # noqa: B017 - whatever FX raises, it cannot trace this
        torch.fx.symbolic_trace(net)
    x = torch.randn(3, 4)
    ref_a = net.a(x)
    return_features(net, ["a"], output=False)
    feats = net(x)
    assert torch.equal(feats["a"], ref_a)


def test_replay_on_a_model_built_on_meta_then_assigned(tmp_path):
    """How load_model rebuilds: build on meta, replay the surgery, assign the saved tensors."""
    path = tmp_path / "surgery.yaml"
    path.write_text(
        YAML + "- {op: replace_modules, match: 'layer4.*.bn1', new: GroupNorm, kwargs: {num_groups: 8}}\n"
    )
    net = torchvision.models.resnet18(weights=None)
    apply_surgery(net, path)
    with torch.device("meta"):
        fresh = torchvision.models.resnet18(weights=None)
    apply_surgery(fresh, get_provenance(net)["surgery"])
    fresh.load_state_dict(net.state_dict(), strict=True, assign=True)
    assert not [n for n, t in [*fresh.named_parameters(), *fresh.named_buffers()] if t.is_meta]
    x, age = torch.randn(1, 4, 32, 32), torch.tensor([2.0])
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x, age)[0], net.eval()(x, age)[0])


def test_spec_model_with_two_inputs_heads_doctor_and_replay():
    import torchsmith
    from torchsmith.surgery import doctor, find_head, set_num_classes

    spec = {
        "name": "tiny_s12",
        "graph": {
            "inputs": {"x": [2, 8], "add_variable": [2]},
            "nodes": {
                "net": {"type": "Linear", "in_features": 8, "out_features": 16, "inputs": "x"},
                "relu": "ReLU",
                "extra": {"op": "unsqueeze", "dim": 1, "inputs": "add_variable"},
                "cat": {"op": "concat", "dim": 1, "inputs": ["relu", "extra"]},
                "fc_add": {"type": "Linear", "out_features": 3},
                "output": {"type": "Softmax", "dim": 1},
            },
            "outputs": "output",
        },
    }
    net = torchsmith.build_model(spec)
    assert find_head(net) == "fc_add"  # sample inputs come from the spec's declared input shapes
    assert [(f.trap, f.path) for f in doctor(net)] == [(11, "output")]
    set_num_classes(net, 5)
    fresh = torchsmith.build_model(spec)
    apply_surgery(fresh, get_provenance(net)["surgery"])
    fresh.load_state_dict(net.state_dict(), strict=True)
    x, v = torch.randn(2, 8), torch.randn(2)
    assert torch.equal(fresh(x, v), net(x, v)) and net(x, v).shape == (2, 5)


def test_unrecordable_operation_stops_replay_with_an_explanation():
    class MyHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(512, 3)

        def forward(self, x):
            return self.lin(x)

    from torchsmith.surgery import replace_head

    net = torchvision.models.resnet18(weights=None)
    report = replace_head(net, MyHead())
    assert "cannot be replayed (module" in report.notes[-1]
    ops = get_provenance(net)["surgery"]
    assert ops == [{"op": "unreplayable", "original_op": "replace_head", "arguments": ["module"]}]
    with pytest.raises(
        SurgeryError, match="changed by 'replace_head' with arguments that could not be recorded"
    ):
        apply_surgery(torchvision.models.resnet18(weights=None), ops)
