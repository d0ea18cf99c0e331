"""Partial loads are loud: another architecture is refused unless allow_partial, a new head is not.

Real torchvision models, built on the meta device where only shapes matter (no allocation).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file

from seed_code import SeedResNet34
from torchsmith.cli.main import main
from torchsmith.errors import InputError, TransferError
from torchsmith.transfer import load_weights


def _meta(fn, *args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return fn(*args, **kwargs)


def test_resnet18_into_resnet50_is_refused_naming_fraction_and_mismatches():
    source = _meta(torchvision.models.resnet18).state_dict()
    with pytest.raises(TransferError) as info:
        load_weights(_meta(torchvision.models.resnet50), source)
    msg = str(info.value)
    assert "looks like another architecture" in msg
    assert "24 tensors outside the head and the input layer have other shapes" in msg
    assert "'layer1.0.conv1.weight' (64, 64, 3, 3) vs (64, 64, 1, 1)" in msg
    assert "only 24.6% of the model's parameters" in msg and "allow_partial=True" in msg
    assert info.value.exit_code == 2 and isinstance(info.value, InputError)
    assert info.value.report.fraction == pytest.approx(0.2459, abs=1e-3)  # the report rides along
    # Asked for by name, it loads, and the report still says what it is.
    report = load_weights(_meta(torchvision.models.resnet50), source, allow_partial=True)
    assert report.applied and len(report.skipped_shape) == 24
    assert any(n.startswith("partial load allowed (allow_partial=True)") for n in report.notes)
    # An explicit bar holds even then.
    with pytest.raises(TransferError, match=r"less than min_fraction=50.0%"):
        load_weights(_meta(torchvision.models.resnet50), source, allow_partial=True, min_fraction=0.5)


def test_seed_resnet34_into_torchvision_resnet34_is_refused_though_one_key_matches():
    source = _meta(SeedResNet34, num_classes=1000).state_dict()
    with pytest.raises(TransferError) as info:
        load_weights(_meta(torchvision.models.resnet34), source)
    msg = str(info.value)
    assert "only 2.4% of the model's parameters" in msg
    assert (
        "model keys not in the source: 'conv1.weight'" in msg
        and "source keys not in the model: 'pre.0" in msg
    )
    # min_fraction= moves the bar: 1% is met (2.35% loaded, no shape skips).
    report = load_weights(_meta(torchvision.models.resnet34), source, min_fraction=0.01)
    assert [e["key"] for e in report.loaded] == ["fc.weight", "fc.bias"]


def test_a_refused_load_leaves_the_model_untouched():
    source = torchvision.models.resnet18().state_dict()
    model = torchvision.models.resnet50()
    before = model.conv1.weight.detach().clone()
    with pytest.raises(TransferError):
        load_weights(model, source)
    assert torch.equal(model.conv1.weight, before)
    load_weights(model, source, allow_partial=True)
    assert torch.equal(model.conv1.weight, source["conv1.weight"])


def test_new_heads_and_input_layers_are_normal():
    # Two conv heads (segmentation classifier + aux classifier) with another number of classes.
    seg = _meta(
        torchvision.models.segmentation.fcn_resnet50, weights=None, weights_backbone=None, aux_loss=True
    )
    report = load_weights(
        _meta(
            torchvision.models.segmentation.fcn_resnet50,
            weights=None,
            weights_backbone=None,
            aux_loss=True,
            num_classes=5,
        ),
        seg.state_dict(),
    )
    assert {e["key"] for e in report.skipped_shape} == {
        "classifier.4.weight", "classifier.4.bias", "aux_classifier.4.weight", "aux_classifier.4.bias",
    }  # fmt: skip
    # A CIFAR-style stem (3x3 conv, 1 input channel, adapt off) and a 10-class head: still normal.
    model = _meta(torchvision.models.resnet18, num_classes=10)
    model.conv1 = _meta(nn.Conv2d, 1, 64, 3, 1, 1, bias=False)
    report = load_weights(model, _meta(torchvision.models.resnet18).state_dict(), adapt=False)
    assert {e["key"] for e in report.skipped_shape} == {"conv1.weight", "fc.weight", "fc.bias"}
    assert not any("another architecture" in n for n in report.notes)
    # A tiny net whose head is most of its parameters: a new head is still not a mismatch.
    src = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    load_weights(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 50)), src)


def test_width_change_inside_the_network_is_a_mismatch():
    def net(width: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.Conv2d(width, 8, 3), nn.Linear(8, 2)
        )

    with pytest.raises(TransferError, match=r"'1.weight' \(16,\) vs \(32,\)"):
        load_weights(net(32), net(16))


def test_no_rules_means_no_renamed_by_rules():
    src = torchvision.models.resnet18().state_dict()
    lightning = {f"model.{k}": v for k, v in src.items()}
    report = load_weights(torchvision.models.resnet18(), lightning)
    assert "removed prefix 'model.' from the source keys" in report.notes
    assert not any("renamed by rules" in n for n in report.notes)
    # With a rule of the caller's as well, only the keys that rule changed are counted.
    renamed = {k.replace("model.fc.", "model.head."): v for k, v in lightning.items()}
    report = load_weights(torchvision.models.resnet18(), renamed, rename=[r"head\.=fc."])
    assert report.fraction == 1.0
    assert "2 source keys renamed by rules" in report.notes


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("partial") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet18().state_dict().items()}, str(path))
    return path


def test_cli_refuses_another_architecture_and_saves_nothing(resnet18_file, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    rc = main(["load", "torchvision:resnet50", str(resnet18_file), "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 2 and not out.exists()
    assert "skipped (shape)" in captured.out and "nothing saved" in captured.out
    assert "looks like another architecture" in captured.err and "--allow-partial" in captured.err
    rc = main(["load", "torchvision:resnet50", str(resnet18_file), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 2 and data["kind"] == "TransferError" and data["exit_code"] == 2
    assert "24.6%" in data["error"] and data["details"]["ok"] is False
    assert data["details"]["counts"]["skipped_shape"] == 24
    # Allowed by name: exit 0, saved, and a warning on stderr.
    rc = main(["load", "torchvision:resnet50", str(resnet18_file), "--allow-partial", "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 0 and out.exists() and "warning: partial load allowed" in captured.err


def test_json_is_printed_on_every_failure(tmp_path, capsys):
    # Bad input in a command: a missing checkpoint.
    rc = main(["inspect", str(tmp_path / "missing.pt"), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 2 and data["exit_code"] == 2 and data["error"] and data["kind"]
    # Bad usage: argparse's own refusal.
    rc = main(["summary", "mlp", "--json", "--depth", "x"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 2 and data["kind"] == "usage" and "--depth" in data["error"]
    # A refused structure match: JSON on stdout, exit 2 (the checkpoint does not fit the model).
    path = tmp_path / "longer.pt"
    longer = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10), nn.Linear(10, 10)
    )
    torch.save(longer.state_dict(), path)
    rc = main(["load", "mlp", str(path), "--match", "structure", "--json"])
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert rc == 2 and data["kind"] == "TransferError" and "structure match" in data["error"]
    # Without --json stdout stays free of JSON.
    rc = main(["inspect", str(tmp_path / "missing.pt")])
    assert rc == 2 and capsys.readouterr().out == ""


def test_recipe_weights_from_another_architecture_need_allow_partial(resnet18_file):
    from torchsmith.errors import RecipeError
    from torchsmith.training import load_recipe
    from torchsmith.training.build import build_model

    raw = {"model": {"name": "torchvision:resnet50"}, "weights": {"source": str(resnet18_file)}}
    with pytest.raises(RecipeError, match=r"recipe field 'weights': .*looks like another architecture"):
        build_model(load_recipe(raw))
    raw["weights"]["args"] = {"allow_partial": True}
    lines: list[str] = []
    model = build_model(load_recipe(raw), log=lines.append)
    assert any("partial load allowed" in line for line in lines)
    assert model.conv1.weight.shape == (64, 3, 7, 7)


@pytest.mark.parametrize(
    ("model", "source", "side"), [("resnet34", "resnet18", "model"), ("resnet18", "resnet34", "source")]
)
def test_another_depth_of_the_same_family_is_refused(model, source, side):
    # No shape skips and 54 % of resnet34 filled: the evidence is the repeated blocks one side lacks.
    sd = _meta(getattr(torchvision.models, source)).state_dict()
    with pytest.raises(TransferError, match=f"the {side} has 8 repeated blocks .*'layer1.2'.*another depth"):
        load_weights(_meta(getattr(torchvision.models, model)), sd)
    report = load_weights(_meta(getattr(torchvision.models, model)), sd, allow_partial=True)
    assert report.partial and "another depth" in report.partial


def test_a_new_head_made_of_numbered_layers_is_not_another_depth():
    sd = _meta(torchvision.models.resnet18).state_dict()
    model = _meta(torchvision.models.resnet18)
    with torch.device("meta"):
        model.fc = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 5))  # fc.0, fc.2: no siblings
    report = load_weights(model, sd)
    assert report.applied and not report.partial
    assert {e["key"] for e in report.missing} == {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"}
