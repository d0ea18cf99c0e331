"""Paths and patterns: get/replace/insert/remove by dotted path, replace many by pattern."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from torchsmith.errors import SurgeryError
from torchsmith.surgery import (
    get_module,
    insert_module,
    module_from_spec,
    module_to_spec,
    remove_module,
    replace_module,
    replace_modules,
)


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), act=nn.ReLU()))
        self.blocks = nn.ModuleList([nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)])
        self.heads = nn.ModuleDict({"cls": nn.Linear(4, 2), "box": nn.Linear(4, 4)})

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = torch.relu(b(x))
        x = x.mean(dim=(2, 3))
        return self.heads["cls"](x), self.heads["box"](x)


def test_get_inside_sequential_modulelist_moduledict():
    net = Nested()
    assert get_module(net, "stem.conv") is net.stem.conv
    assert get_module(net, "blocks.2") is net.blocks[2]
    assert get_module(net, "heads.box") is net.heads["box"]
    assert get_module(net, "") is net


def test_bad_path_names_nearest_valid_paths():
    net = torchvision.models.resnet18(weights=None)
    with pytest.raises(SurgeryError) as e:
        get_module(net, "layer3.1.conv4")
    msg = str(e.value)
    assert "'layer3.1.conv4'" in msg and "'layer3.1.conv1'" in msg and "'layer3.1.conv2'" in msg
    with pytest.raises(SurgeryError, match="'layer3'"):
        replace_module(net, "layr3", nn.Identity())
    with pytest.raises(SurgeryError, match=r"children under 'layer2\.1'"):
        remove_module(net, "layer2.1.bn9")


def test_replace_keeps_every_other_weight_bit_identical():
    net = torchvision.models.resnet18(weights=None)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = replace_module(net, "layer3.1.conv2", nn.Conv2d(256, 256, 3, padding=1, bias=False))
    assert report.replaced == ["layer3.1.conv2"]
    after = net.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        if not k.startswith("layer3.1.conv2."):
            assert torch.equal(after[k], v), k
    assert not torch.equal(after["layer3.1.conv2.weight"], before["layer3.1.conv2.weight"])


def test_replace_moves_new_module_to_old_device_and_dtype():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)).double()
    replace_module(net, "1", nn.Linear(3, 5))
    assert net[1].weight.dtype == torch.float64
    assert net(torch.randn(2, 3, dtype=torch.float64)).shape == (2, 5)


def test_insert_in_numbered_and_named_containers_and_by_wrapping():
    seq = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    w1 = seq[1].weight
    r = insert_module(seq, "0", nn.ReLU())
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear"] and seq[2].weight is w1
    assert "2.weight" in r.keys_added and "1.weight" in r.keys_removed  # renumbered, weights kept
    assert r.added == ["1"] and r.moved == {"1": "2"}

    net = Nested()
    insert_module(net, "stem.conv", nn.BatchNorm2d(4), name="bn")
    assert list(net.stem._modules) == ["conv", "bn", "act"]
    insert_module(net, "blocks.0", nn.Identity(), after=False)
    assert len(net.blocks) == 4 and isinstance(net.blocks[0], nn.Identity)

    res = torchvision.models.resnet18(weights=None).eval()
    fc_w = res.fc.weight
    r = insert_module(res, "fc", nn.LogSoftmax(dim=1), name="logprob")
    assert res.fc.fc.weight is fc_w and isinstance(res.fc.logprob, nn.LogSoftmax)
    assert "fc.fc.weight" in r.keys_added and r.moved == {"fc": "fc.fc"} and r.added == ["fc"]
    out = res(torch.randn(1, 3, 32, 32))
    assert torch.allclose(out.exp().sum(), torch.tensor(1.0), atol=1e-5)


def test_remove_from_containers_and_elsewhere():
    net = Nested()
    remove_module(net, "blocks.1")
    assert len(net.blocks) == 2 and list(net.blocks._modules) == ["0", "1"]
    remove_module(net, "heads.box")
    assert list(net.heads) == ["cls"]
    res = torchvision.models.resnet18(weights=None)
    r = remove_module(res, "maxpool")
    assert isinstance(res.maxpool, nn.Identity) and "Identity" in str(r)
    assert res(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_replace_every_relu_by_silu_by_type():
    net = torchvision.models.resnet18(weights=None)
    r = replace_modules(net, "type:ReLU", "SiLU")
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert sum(isinstance(m, nn.SiLU) for m in net.modules()) == len(r.replaced) == 9
    assert r.params_before == r.params_after
    with pytest.raises(SurgeryError, match="did you mean 'SiLU'"):
        replace_modules(net, "type:SiLU", "SiLu")
    with pytest.raises(SurgeryError, match="matches no module"):
        replace_modules(net, "type:GELU", "ReLU")


def test_glob_and_regex_patterns():
    net = torchvision.models.resnet18(weights=None)
    assert replace_modules(net, "layer*.0.conv1", nn.Identity).replaced == [
        f"layer{i}.0.conv1" for i in range(1, 5)
    ]
    assert replace_modules(net, r"re:layer4\.1\.bn\d", "Identity").replaced == [
        "layer4.1.bn1",
        "layer4.1.bn2",
    ]


def test_batchnorm_to_frozen_batchnorm_carries_statistics():
    net = torchvision.models.resnet18(weights=None)
    for m in net.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    ref = net(x)
    r = replace_modules(net, nn.BatchNorm2d, "FrozenBatchNorm2d")
    assert len(r.replaced) == 20 and all(
        isinstance(net.get_submodule(p), FrozenBatchNorm2d) for p in r.replaced
    )
    net.train()  # frozen batch norm ignores the mode
    assert torch.allclose(net(x), ref, atol=1e-5)


def test_batchnorm_to_groupnorm_carries_affine_weights():
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        net.bn1.weight.uniform_()
    w = net.bn1.weight.clone()
    r = replace_modules(net, "type:BatchNorm2d", "GroupNorm", num_groups=32)
    assert isinstance(net.bn1, nn.GroupNorm) and net.bn1.num_groups == 32
    assert torch.equal(net.bn1.weight, w)
    assert any("running statistics" in n for n in r.notes)
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_shared_module_replaced_once_everywhere():
    act = nn.ReLU()
    net = nn.Sequential(nn.Linear(2, 2), act, nn.Linear(2, 2), act)
    replace_modules(net, "type:ReLU", "GELU")
    assert net[1] is net[3] and isinstance(net[1], nn.GELU)


def test_module_spec_round_trip_and_refusal():
    head = nn.Sequential(
        OrderedDict(fc1=nn.Linear(8, 4), relu1=nn.ReLU(), dropout1=nn.Dropout(0.3), fc2=nn.Linear(4, 2))
    )
    spec = module_to_spec(head)
    assert repr(module_from_spec(spec)) == repr(head)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

    assert module_to_spec(Custom()) is None
    with pytest.raises(SurgeryError, match="not allowed"):
        module_from_spec({"type": "os.system", "args": {"command": "true"}})
