"""Seeds S11, S12, S13: built in one or two calls, trained a step, saved, rebuilt by replay, reloaded."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torchvision

from torchsmith._provenance import get_provenance
from torchsmith.surgery import (
    add_inputs,
    apply_surgery,
    insert_module,
    replace_head,
    return_features,
    set_num_classes,
)


def _untouched_equal(base: dict, model: nn.Module, touched: tuple[str, ...]) -> None:
    after = model.state_dict()
    for k, v in base.items():
        if not k.startswith(touched):
            assert torch.equal(after[k], v), k


def _step(model: nn.Module, loss_fn, *inputs, train_mode: bool = True) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train(train_mode)
    loss = loss_fn(model(*inputs))
    loss.backward()
    opt.step()
    model.eval()


def _reload(model: nn.Module, make_base, path) -> nn.Module:
    torch.save(model.state_dict(), path)
    fresh = make_base()
    apply_surgery(fresh, get_provenance(model)["surgery"])
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return fresh.eval()


def test_s11_resnet50_new_classifier(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    base = {k: v.clone() for k, v in net.state_dict().items()}
    classifier = nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(2048, 128)),
                ("relu1", nn.ReLU()),
                ("dropout1", nn.Dropout(0.5)),
                ("fc2", nn.Linear(128, 10)),
                ("output", nn.LogSoftmax(dim=1)),
            ]
        )
    )
    report = replace_head(net, classifier)  # one call
    assert report.replaced == ["fc"] and "fc.fc1.weight" in report.keys_added
    _untouched_equal(base, net, ("fc.",))
    # The step runs in eval mode: at 32x32 layer4's batch norms would see 2 values per channel.
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    fc1 = net.fc.fc1.weight.detach().clone()
    _step(net, lambda out: nn.functional.nll_loss(out, y), x, train_mode=False)
    assert not torch.equal(net.fc.fc1.weight, fc1)
    again = _reload(net, lambda: torchvision.models.resnet50(weights=None), tmp_path / "s11.pt")
    with torch.no_grad():
        out = again(x)
        assert torch.isfinite(out).all() and out.shape == (2, 10)
        assert torch.equal(out, net(x))


def test_s12_extra_input_timm(tmp_path):
    import timm

    def make():
        return timm.create_model("mobilenetv3_small_050", pretrained=False)

    net = make().eval()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    set_num_classes(net, 10)  # two calls: seed S12's fc_add(1001 -> 10) is this head plus one input
    add_inputs(net, "classifier", {"add_variable": 1})
    _untouched_equal(base, net, ("classifier.",))
    assert net.classifier.weight.shape == (10, 1025)
    v = torch.tensor([0.5, 2.0])
    _step(net, lambda out: nn.functional.cross_entropy(out, torch.tensor([1, 2])), x, v)
    assert net.classifier.weight[:, -1].abs().sum() > 0  # the new column trained
    again = _reload(net, make, tmp_path / "s12.pt")
    with torch.no_grad():
        assert torch.equal(again(x, add_variable=v), net(x, v))


def test_s13_extra_output_zoo_unet_and_resnet50(tmp_path):
    from torchsmith.zoo import create_model

    def make():
        return create_model("unet", base_channels=8)  # the real U-Net, narrow: fast on CPU

    net = make().eval()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    info_path = [p for p, _ in net.named_children()][-2]  # the last decoder stage
    return_features(net, {"decoder": info_path})  # one call
    _untouched_equal(base, net, ())
    x = torch.randn(2, 3, 16, 16)
    _step(net, lambda out: out[0].square().mean() + out[1]["decoder"].square().mean(), x)
    again = _reload(net, make, tmp_path / "s13.pt")
    with torch.no_grad():
        seg, feats = again(x)
        ref_seg, ref_feats = net(x)
    assert torch.equal(seg, ref_seg) and torch.equal(feats["decoder"], ref_feats["decoder"])

    # The seed's own S13 on resnet50: the 1000-d output and a new 10-d one, in two calls.
    res = torchvision.models.resnet50(weights=None).eval()
    insert_module(res, "fc", nn.Sequential(nn.ReLU(), nn.Dropout(0.5), nn.Linear(1000, 10)), name="head10")
    return_features(res, {"x1000": "fc.fc"})
    with torch.no_grad():
        x10, feats = res(torch.randn(1, 3, 32, 32))
    assert x10.shape == (1, 10) and feats["x1000"].shape == (1, 1000)
    assert [op["op"] for op in get_provenance(res)["surgery"]] == ["insert_module", "return_features"]


def test_torchsmith_save_records_every_op_and_replay_rebuilds(tmp_path):
    import json

    import torchsmith

    net = torchsmith.create_model("torchvision:resnet18")
    set_num_classes(net, 5, keep=[0, 1])
    from torchsmith.surgery import freeze, replace_modules, set_in_channels

    set_in_channels(net, 4, channel_map=[0, 1, 2, "mean"])
    replace_modules(net, "type:ReLU", "SiLU")
    add_inputs(net, "layer4.0.conv1", {"meta": 2}, mode="add")
    return_features(net, ["layer2"])
    freeze(net, before="layer3", bn_stats=True)
    path = torchsmith.save(net, tmp_path / "net.safetensors")
    ckpt = torchsmith.read_checkpoint(path)
    ops = json.loads(ckpt.metadata["torchsmith.surgery"])
    assert [op["op"] for op in ops] == [
        "set_num_classes",
        "set_in_channels",
        "replace_modules",
        "add_inputs",
        "return_features",
        "freeze",
    ]
    fresh = torchsmith.create_model("torchvision:resnet18")
    apply_surgery(fresh, ops)
    fresh.load_state_dict(ckpt.state_dict, strict=True)
    x, m = torch.randn(1, 4, 32, 32), torch.randn(1, 2)
    with torch.no_grad():
        out, feats = fresh.eval()(x, meta=m)
        ref_out, ref_feats = net.eval()(x, meta=m)
    assert torch.equal(out, ref_out) and torch.equal(feats["layer2"], ref_feats["layer2"])
    assert [n for n, p in fresh.named_parameters() if not p.requires_grad] == [
        n for n, p in net.named_parameters() if not p.requires_grad
    ]
    loaded = torchsmith.load_model(path).eval()  # the same, done by the checkpoint concern
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in loaded.state_dict().items())
    with torch.no_grad():
        out2, feats2 = loaded(x, meta=m)
    # Same weights; memory-mapped tensors may take other SIMD paths, hence a tolerance on outputs.
    torch.testing.assert_close(out2, ref_out, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(feats2["layer2"], ref_feats["layer2"], rtol=1e-6, atol=1e-7)
