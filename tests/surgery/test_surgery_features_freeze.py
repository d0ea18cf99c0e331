"""Extra outputs and feature shapes, freezing with batch-norm statistics, parameter groups."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from torchsmith.errors import SurgeryError
from torchsmith.surgery import (
    check_param_groups,
    feature_info,
    format_param_groups,
    freeze,
    frozen_bn_paths,
    layer_ids,
    param_groups,
    remove_features,
    return_features,
    unfreeze,
)


def _hooked(model: nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What plain forward hooks record: the reference for return_features."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(p).register_forward_hook(
            lambda m, a, o, p=p: seen.setdefault(p, o.detach().clone())
        )
        for p in paths
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("kind", ["torchvision", "timm"])
def test_extra_outputs_equal_forward_hook_records(kind):
    if kind == "torchvision":
        net, paths = torchvision.models.resnet18(weights=None).eval(), ["layer1.0.conv2", "layer3", "avgpool"]
    else:
        net, paths = (
            timm.create_model("mobilenetv3_small_050", pretrained=False).eval(),
            ["blocks.2.0", "conv_head"],
        )
    x = torch.randn(2, 3, 64, 64)
    ref = _hooked(net, paths, x)
    with torch.no_grad():
        ref_out = net(x)
        r = return_features(net, paths)
        out, feats = net(x)
    assert r.mechanism.startswith("forward hooks") and r.params_before == r.params_after
    assert torch.equal(out, ref_out)
    assert list(feats) == paths
    for p in paths:
        assert torch.equal(feats[p], ref[p]), p


def test_features_only_skips_the_rest_and_train_only_strips_in_eval():
    net = torchvision.models.resnet18(weights=None)
    ran = []
    net.layer4.register_forward_pre_hook(lambda m, a: ran.append("layer4"))
    net.fc.register_forward_pre_hook(lambda m, a: ran.append("fc"))
    keys = list(net.state_dict())
    return_features(net, {"c2": "layer1", "c3": "layer2"}, output=False)
    out = net.eval()(torch.randn(1, 3, 32, 32))
    assert list(out) == ["c2", "c3"] and out["c3"].shape == (1, 128, 4, 4)
    assert ran == []  # layer3, layer4 and fc were never computed
    assert list(net.state_dict()) == keys
    copy.deepcopy(net)  # still an ordinary, copyable module

    return_features(net, {"aux": "layer3"}, train_only=True)  # deep supervision
    out, feats = net.train()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 1000) and feats["aux"].shape == (2, 256, 2, 2)
    assert isinstance(net.eval()(torch.randn(1, 3, 32, 32)), torch.Tensor)
    remove_features(net)
    assert isinstance(net.train()(torch.randn(2, 3, 32, 32)), torch.Tensor)
    with pytest.raises(SurgeryError, match="nearest valid paths: 'layer3'"):
        return_features(net, ["layer3x"])


def test_feature_info_channels_and_strides_wire_an_fpn():
    net = torchvision.models.resnet50(weights=None)
    auto = feature_info(net)
    assert [(f["path"], f["channels"], f["stride"]) for f in auto][1:] == [
        ("layer1", 256, 4),
        ("layer2", 512, 8),
        ("layer3", 1024, 16),
        ("layer4", 2048, 32),
    ]
    tinfo = feature_info(
        timm.create_model("mobilenetv3_small_050", pretrained=False), ["blocks.1", "blocks.3"]
    )
    assert [(f["channels"], f["stride"]) for f in tinfo] == [(16, 8), (24, 16)]

    from torchsmith.blocks import FeaturePyramidNetwork

    small = torchvision.models.resnet18(weights=None).eval()
    stages = ["layer2", "layer3", "layer4"]
    info = feature_info(small, stages)
    fpn = FeaturePyramidNetwork([f["channels"] for f in info], 32).eval()
    return_features(small, stages, output=False)
    with torch.no_grad():
        levels = fpn(small(torch.randn(1, 3, 64, 64)))
    assert [tuple(v.shape) for v in levels.values()] == [(1, 32, 8, 8), (1, 32, 4, 4), (1, 32, 2, 2)]


def test_freeze_outside_layer2_to_4_keeps_weights_and_bn_statistics():
    net = torchvision.models.resnet18(weights=None)
    r = freeze(net, exclude=["layer2", "layer3", "layer4", "fc"], bn_stats=True)
    assert r.trainable_before == r.params_before and r.trainable_after < r.trainable_before
    assert frozen_bn_paths(net) == ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1", "layer1.1.bn2"]
    frozen = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(("conv1", "bn1", "layer1"))}
    trained = net.layer2[0].conv1.weight.clone()
    opt = torch.optim.SGD(param_groups(net, lr=0.1, weight_decay=1e-4), lr=0.1, momentum=0.9)
    net.eval()
    net.train()  # must not wake the frozen batch norms up
    assert not net.bn1.training and net.layer2[0].bn1.training
    loss = net(torch.randn(2, 3, 32, 32)).logsumexp(dim=1).mean()
    loss.backward()
    opt.step()
    after = net.state_dict()
    for k, v in frozen.items():
        assert torch.equal(after[k], v), k  # weights, running_mean/var and num_batches_tracked
    assert not torch.equal(net.layer2[0].conv1.weight, trained)
    assert net.layer2[0].bn1.num_batches_tracked.item() == 1

    unfreeze(net, "layer1")
    net.train()
    assert net.layer1[0].bn1.training and net.layer1[0].conv1.weight.requires_grad
    assert not net.conv1.weight.requires_grad

    net2 = torchvision.models.resnet18(weights=None)
    freeze(net2, before="layer2")
    assert [n for n, p in net2.named_parameters() if not p.requires_grad][-1] == "layer1.1.bn2.bias"
    assert net2.layer2[0].conv1.weight.requires_grad
    with pytest.raises(SurgeryError, match="did you mean 'layer4'"):
        freeze(net2, ["layr4"])


def test_param_groups_real_lr_no_decay_layer_decay_and_checks():
    net = torchvision.models.resnet18(weights=None)
    freeze(net, "conv1")
    groups = param_groups(
        net, lr=0.01, weight_decay=1e-4, rules=[{"match": "fc", "lr_scale": 10}], layer_decay=0.5
    )
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert "conv1.weight" not in by_name
    assert by_name["fc.weight"]["lr"] == pytest.approx(0.1) and by_name["fc.weight"]["weight_decay"] == 1e-4
    assert by_name["fc.bias"]["weight_decay"] == 0.0 and by_name["bn1.weight"]["weight_decay"] == 0.0
    ids, n = layer_ids(net)
    assert ids["bn1.weight"] == 0 and ids["layer1.0.conv1.weight"] == 1 and ids["fc.weight"] == n - 1 == 9
    assert by_name["layer1.0.conv1.weight"]["lr"] == pytest.approx(0.01 * 0.5**8)
    lrs = {g["lr"] for g in groups}
    opt = torch.optim.AdamW(groups, lr=123.0)  # the groups' own lr win over the default
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    assert {g["lr"] for g in opt.param_groups} == {lr * 0.5 for lr in lrs}  # a plain scheduler applies
    assert "fc" in format_param_groups(groups)

    dup = [{"params": list(net.parameters())}, {"params": [net.fc.weight]}]
    with pytest.raises(SurgeryError, match=r"in more than one group: fc\.weight"):
        check_param_groups(net, dup)
    with pytest.raises(SurgeryError, match=r"frozen but in a group: conv1\.weight"):
        check_param_groups(net, [{"params": list(net.parameters())}])
    with pytest.raises(SurgeryError, match="trainable but in no group"):
        check_param_groups(net, [{"params": [net.fc.weight]}])
    with pytest.raises(SurgeryError, match="selects no parameter"):
        param_groups(net, lr=0.1, rules=[{"match": "head", "lr": 1.0}])
    recipe_style = param_groups(
        net, lr=0.1, rules=[{"params": ["layer4", "fc"], "lr": 0.5}]
    )  # as recipes write
    assert {n: g["lr"] for g in recipe_style for n in g["param_names"]}["layer4.1.bn2.bias"] == 0.5


def test_layer_decay_of_cait_equals_timms():
    """CaiT's class-attention blocks: the sweep found them off timm's depths; timm's own grouping
    is now the oracle used."""
    import math

    import timm.optim

    model = timm.create_model("cait_xxs24_224", pretrained=False)
    groups = param_groups(model, 1e-3, weight_decay=0.05, layer_decay=0.75)
    ref = timm.optim.create_optimizer_v2(model, "sgd", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    want = {id(p): g["lr"] * g.get("lr_scale", 1.0) for g in ref.param_groups for p in g["params"]}
    got = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert want.keys() == got.keys()
    assert all(math.isclose(want[k], got[k], rel_tol=1e-6) for k in want)
