"""load_weights by name: partial loads with a report, prefixes, renames, adaptation, strictness, traps."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torchvision

from torchsmith.errors import InputError, TransferError
from torchsmith.transfer import TransferReport, load_weights


def _small_net(classes: int = 3, in_ch: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_ch, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def test_resnet50_imagenet_state_dict_into_10_class_resnet50_loads_all_but_the_head():
    source = torchvision.models.resnet50().state_dict()
    model = torchvision.models.resnet50(num_classes=10)
    report = load_weights(model, source)
    assert [e["key"] for e in report.skipped_shape] == ["fc.weight", "fc.bias"]
    assert report.skipped_shape[0]["source_shape"] == (1000, 2048)
    assert report.skipped_shape[0]["shape"] == (10, 2048)
    assert not report.missing and not report.unexpected and not report.adapted
    assert len(report.loaded) == len(source) - 2
    head = 10 * 2048 + 10
    total = sum(p.numel() for p in model.parameters())
    assert report.params_total == total
    assert report.fraction == pytest.approx((total - head) / total)
    for key in ("conv1.weight", "layer4.2.conv3.weight", "layer2.0.downsample.1.running_var"):
        assert torch.equal(model.state_dict()[key], source[key])
    text = str(report)
    assert "skipped (shape)" in text and "fc.weight" in text and "(1000, 2048) vs (10, 2048)" in text
    assert "classifier size differs" in text
    # The same checkpoint saved from DataParallel loads the same way, and the report says why.
    wrapped = {f"module.{k}": v for k, v in source.items()}
    report2 = load_weights(torchvision.models.resnet50(num_classes=10), wrapped)
    assert report2.counts() == report.counts()
    assert "removed wrapper prefix 'module.'" in report2.notes


def test_three_channel_checkpoint_into_one_channel_model_adapts_the_first_conv():
    source = torchvision.models.resnet18()
    source.eval()
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    model.eval()
    report = load_weights(model, source.state_dict())
    assert [e["key"] for e in report.adapted] == ["conv1.weight"]
    entry = report.adapted[0]
    assert entry["source_shape"] == (64, 3, 7, 7) and entry["shape"] == (64, 1, 7, 7)
    assert "summed" in entry["how"]
    assert report.fraction == 1.0 and not report.skipped_shape
    # Summing the RGB filters means a grey image gives what the 3-channel net gives on grey RGB.
    grey = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(grey), source(grey.expand(-1, 3, -1, -1)), atol=1e-4)
    assert "conv1.weight" in report.table()
    # With adaptation off the conv is skipped, and said so.
    report = load_weights(_small_net(in_ch=4), _small_net().state_dict(), adapt=False)
    assert report.skipped_shape[0]["key"] == "0.weight" and "adapt=True" in report.skipped_shape[0]["why"]
    report = load_weights(_small_net(in_ch=4), _small_net().state_dict())
    assert "repeated and scaled by 3/4" in report.adapted[0]["how"]


def test_classifier_truncate_and_widen_are_opt_in():
    src = _small_net(classes=5)
    wide = _small_net(classes=7)
    before = wide[5].weight.detach().clone()
    report = load_weights(wide, src, adapt="all")
    assert {e["key"] for e in report.adapted} == {"5.weight", "5.bias"}
    assert torch.equal(wide[5].weight[:5], src[5].weight)
    assert torch.equal(wide[5].weight[5:], before[5:])  # new rows keep the model's initialisation
    assert "rows 5..6 keep the model's initialisation" in report.adapted[0]["how"]
    assert report.fraction < 1.0
    narrow = _small_net(classes=2)
    report = load_weights(narrow, src, adapt={"classifier"})
    assert torch.equal(narrow[5].bias, src[5].bias[:2]) and "truncated" in report.adapted[1]["how"]
    with pytest.raises(
        InputError, match=r"adapt: unknown adaptation 'clasifier' \(did you mean 'classifier'"
    ):
        load_weights(narrow, src, adapt=["clasifier"])


def test_rename_include_exclude_and_automatic_prefixes():
    src = _small_net()
    sd = {k.replace("0.", "stem.", 1) if k.startswith("0.") else k: v for k, v in src.state_dict().items()}
    model = _small_net()
    report = load_weights(model, sd, rename=[r"^stem\.=0."])
    assert report.fraction == 1.0 and "2 source keys renamed by rules" in report.notes[0]
    report = load_weights(_small_net(), src, exclude=["5"])
    assert {e["key"] for e in report.excluded} == {"5.weight", "5.bias"}
    report = load_weights(_small_net(), src, include=["re:^1\\."])
    assert {e["key"] for e in report.loaded} == {
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    }
    # A backbone saved alone loads into model.backbone, and a Lightning "model." prefix is removed.
    holder = nn.Module()
    holder.backbone = _small_net()
    report = load_weights(holder, src)
    assert report.fraction == 1.0 and "added prefix 'backbone.' to the source keys" in report.notes
    report = load_weights(_small_net(), {f"model.{k}": v for k, v in src.state_dict().items()})
    assert report.fraction == 1.0 and "removed prefix 'model.' from the source keys" in report.notes


def test_trap5_update_without_load_is_silent_but_load_weights_is_not():
    pretrained = _small_net(classes=10).state_dict()
    net = _small_net(classes=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # The seed's S15 code: keeps matching keys, updates a dict, never loads it.
    net_state_dict = net.state_dict()
    pre_dict = {k: v for k, v in pretrained.items() if k in net_state_dict}
    net_state_dict.update(pre_dict)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing changed
    # torchsmith: one call, the weights change, the report says what did not fit.
    report = load_weights(net, pretrained)
    assert torch.equal(net[0].weight, pretrained["0.weight"])
    assert [e["key"] for e in report.skipped_shape] == ["5.weight", "5.bias"]
    # A load that takes nothing raises instead of silently doing nothing.
    other = {"encoder.block.weight": torch.zeros(2, 2)}
    with pytest.raises(
        TransferError, match=r"nothing was loaded from state_dict: 0 of \d+ model keys matched.*rename="
    ):
        load_weights(net, other)
    report = load_weights(net, other, allow_empty=True)
    assert report.fraction == 0.0 and report.unexpected[0]["key"] == "encoder.block.weight"
    assert torch.equal(net[0].weight, pretrained["0.weight"])


def test_trap1_state_dict_assignment_is_refused():
    net = _small_net()
    net.state_dict = _small_net().state_dict()  # the seeds' mistake: loads nothing
    with pytest.raises(InputError, match=r"model.state_dict was replaced by a OrderedDict"):
        load_weights(net, _small_net())
    with pytest.raises(InputError, match=r"source.state_dict was replaced"):
        load_weights(_small_net(), net)


def test_strict_levels_and_min_fraction_refuse_before_touching_the_model():
    src = _small_net(classes=5)
    model = _small_net(classes=3)
    before = model[0].weight.detach().clone()
    with pytest.raises(
        TransferError, match=r"strict='target': 2 model keys would not come from .*'5.weight'"
    ):
        load_weights(model, src, strict="target")
    with pytest.raises(TransferError, match=r"less than min_fraction=99.0%"):
        load_weights(model, src, min_fraction=0.99)
    assert torch.equal(model[0].weight, before)  # refused loads leave the model untouched
    extra = dict(_small_net().state_dict(), **{"aux.weight": torch.zeros(1)})
    assert load_weights(_small_net(), extra, strict="target").fraction == 1.0
    with pytest.raises(
        TransferError, match=r"strict='all': 1 source keys would be left unused: 'aux.weight'"
    ):
        load_weights(_small_net(), extra, strict=True)
    with pytest.raises(InputError, match=r"strict: expected"):
        load_weights(model, src, strict="yes")
    report = load_weights(model, src, dry_run=True)
    assert not report.applied and torch.equal(model[0].weight, before)


def test_report_is_json_able_and_lists_loaded_names():
    src = _small_net(classes=5)
    report = load_weights(_small_net(classes=3), nn.DataParallel(src))
    data = json.loads(json.dumps(report.to_dict()))
    expected = {"loaded": 7, "adapted": 0, "skipped_shape": 2, "missing": 0, "unexpected": 0, "excluded": 0}
    assert data["counts"] == expected
    assert data["skipped_shape"][0] == {
        "key": "5.weight",
        "source_key": "5.weight",
        "source_shape": [5, 8],
        "shape": [3, 8],
        "why": data["skipped_shape"][0]["why"],
    }
    assert report.loaded_names == {e["key"] for e in report.loaded}
    assert "0.weight" in report.loaded_names and "5.weight" not in report.loaded_names
    assert isinstance(report, TransferReport) and "DataParallel" not in report.source


def test_bad_sources_are_named():
    with pytest.raises(
        InputError, match=r"source: expected a checkpoint path, a state_dict or an nn.Module, got int"
    ):
        load_weights(_small_net(), 3)
    net = _small_net()
    with pytest.raises(InputError, match=r"got the bound method model.state_dict, not the weights"):
        load_weights(_small_net(), net.state_dict)  # trap 2's missing call
    with pytest.raises(TransferError, match=r"holds no tensors"):
        load_weights(_small_net(), {"epoch": 3})
    report = load_weights(_small_net(), {"epoch": 3, "state_dict": _small_net().state_dict()})
    assert report.fraction == 1.0 and "took the weights from the 'state_dict' entry" in report.notes[0]
    with pytest.raises(
        InputError, match=r"match: expected 'name' or 'structure', got 'structur' \(did you mean"
    ):
        load_weights(_small_net(), _small_net(), match="structur")


@pytest.mark.gpu
def test_cuda_model_seeded_init_and_load_from_cpu_weights():
    from torchsmith.transfer import InitRule, init_weights

    net = _small_net().cuda()
    report = init_weights(net, [InitRule("normal", std=0.02)], seed=0)
    assert report.rule_of("0.weight") == "#0 normal" and net[0].weight.device.type == "cuda"
    cpu = _small_net()
    load_report = load_weights(net, cpu.state_dict())
    assert load_report.fraction == 1.0
    assert torch.equal(net[0].weight.cpu(), cpu[0].weight) and net[0].weight.device.type == "cuda"
