"""Pretrained models after the load: surgery keeps the weights, detection backbones are built as
torchvision builds them, and the weights' own metadata (categories, preprocessing, licence) travels.

No test reaches the network: the weights are files planted in ``$TORCH_HOME/hub/checkpoints`` under a
name carrying their real SHA-256 prefix (the weights enum's URL is pointed at that name), and the
process is offline (``TORCHSMITH_OFFLINE=1``), so a missing file would be an error, not a download.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from _hub_cache import plant

import torchsmith
from torchsmith.errors import CheckpointError
from torchsmith.hub import OfflineError


def test_set_in_channels_after_a_pretrained_load_keeps_the_weights(tmp_path, offline_cache, monkeypatch):
    """resnet18 with its weights from the cache, then 1 input channel: a gray image gives exactly what
    the pretrained RGB model gives for it on 3 channels, and the saved model reloads the same."""
    torch.manual_seed(0)
    original = torchvision.models.resnet18().eval()
    plant(offline_cache, monkeypatch, torchvision.models.ResNet18_Weights.IMAGENET1K_V1, original)
    model = torchsmith.create_model("torchvision:resnet18", weights="IMAGENET1K_V1").eval()
    assert torch.equal(model.conv1.weight, original.conv1.weight)
    torchsmith.set_in_channels(model, 1)
    # timm's rule: the 1-channel kernel is the RGB kernel summed over its input channels
    assert torch.equal(model.conv1.weight, original.conv1.weight.sum(dim=1, keepdim=True))
    before, after = original.state_dict(), model.state_dict()
    assert after.keys() == before.keys()
    for key in before.keys() - {"conv1.weight"}:  # every other tensor is the pretrained one
        assert torch.equal(after[key], before[key]), key
    gray = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        want, got = original(gray.expand(-1, 3, -1, -1)), model(gray)
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.equal(model.layer4[1].conv2.weight, original.layer4[1].conv2.weight)
    again = torchsmith.load_model(torchsmith.save(model, tmp_path / "gray.safetensors")).eval()
    with torch.no_grad():
        assert torch.equal(again(gray), got)


@pytest.mark.parametrize(
    ("name", "norm"),
    [
        ("fasterrcnn_mobilenet_v3_large_fpn", "FrozenBatchNorm2d"),
        ("lraspp_mobilenet_v3_large", "BatchNorm2d"),
    ],
)
def test_weights_backbone_builds_what_torchvision_builds(tmp_path, offline_cache, monkeypatch, name, norm):
    """The same modules, frozen parameters and backbone tensors as torchvision's own builder reading the
    same cached file; saved and reloaded (offline, the cache emptied) it is the same model again."""
    enum = torchvision.models.MobileNet_V3_Large_Weights.DEFAULT
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v3_large()
    path = plant(offline_cache, monkeypatch, enum, source)
    model = torchsmith.create_model(f"torchvision:{name}", weights_backbone="DEFAULT", progress=False)
    reference = torchvision.models.get_model(name, weights_backbone=enum)  # reads the same cache file

    def structure(m):
        return (
            [(n, type(x).__name__) for n, x in m.named_modules()],
            [(n, p.requires_grad) for n, p in m.named_parameters()],
        )

    assert structure(model) == structure(reference)
    assert type(model.backbone["0"][1] if "lraspp" in name else model.backbone.body["0"][1]).__name__ == norm
    prefix = "backbone." if "lraspp" in name else "backbone.body."
    state, loaded = model.state_dict(), 0
    for key, value in source.state_dict().items():  # every backbone tensor comes from the file
        mine = prefix + key.removeprefix("features.")
        if mine in state:
            assert torch.equal(state[mine], value), mine
            loaded += 1
    assert loaded >= 150

    record = torchsmith._provenance.get_provenance(model)
    assert record["arch"]["weights_structure"] == {
        "weights_backbone": "MobileNet_V3_Large_Weights.IMAGENET1K_V2"
    }
    assert "categories" not in record["weights"]  # ImageNet's classes are the backbone's, not the model's
    saved = torchsmith.save(model, tmp_path / "m.safetensors")
    path.unlink()  # the rebuild must not need (or fetch) the weights
    again = torchsmith.load_model(saved)
    assert structure(again) == structure(model)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    x = torch.rand(1, 3, 96, 96)
    model.eval(), again.eval()
    with torch.no_grad():
        a = model.backbone(x)
        b = again.backbone(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrained_backbone_true_is_the_legacy_spelling(offline_cache, monkeypatch):
    enum = torchvision.models.MobileNet_V3_Large_Weights.DEFAULT
    plant(offline_cache, monkeypatch, enum, torchvision.models.mobilenet_v3_large())
    model = torchsmith.create_model("torchvision:lraspp_mobilenet_v3_large", pretrained_backbone=True)
    record = torchsmith._provenance.get_provenance(model)
    assert record["arch"]["weights_structure"]["weights_backbone"].endswith("IMAGENET1K_V2")
    assert "deprecated" in record["weights"]["notes"][0]


def test_a_recorded_structure_is_checked_before_anything_is_built(tmp_path, offline_cache, monkeypatch):
    """A damaged or hostile weights_structure is refused naming the field; nothing is read or fetched."""
    import json

    from safetensors.torch import load_file, save_file

    model = torchsmith.create_model("torchvision:lraspp_mobilenet_v3_large", num_classes=3)
    saved = torchsmith.save(model, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(saved, "pt") as f:
        meta = f.metadata()
    tensors = load_file(saved)
    for bad in ({"weights_backbone": "os.system"}, {"weights": "ResNet18_Weights.IMAGENET1K_V1"}, {"x": "y"}):
        arch = json.loads(meta["torchsmith.arch"]) | {"weights_structure": bad}
        save_file(
            tensors, tmp_path / "bad.safetensors", metadata=meta | {"torchsmith.arch": json.dumps(arch)}
        )
        with pytest.raises(CheckpointError, match="weights_structure"):
            torchsmith.load_model(tmp_path / "bad.safetensors")


def test_a_checkpoint_of_a_pretrained_run_reloads_without_the_weights_file(
    tmp_path, offline_cache, monkeypatch
):
    """A run finetuned from pretrained weights is evaluated and predicted from its checkpoint alone:
    the rebuild makes the pretrained structure but neither reads nor fetches the weights file (the
    checkpoint holds every tensor), so it works on a machine that never had the file."""
    from torchsmith.training.api import _model_from_checkpoint

    torch.manual_seed(0)
    weights_file = plant(
        offline_cache,
        monkeypatch,
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
        torchvision.models.resnet18(),
    )
    sets = ["model.weights=IMAGENET1K_V1", "train.epochs=1", "train.max_steps=2", "train.progress=false"]
    result = torchsmith.train(None, out=tmp_path / "run", overrides=sets, log=None)
    weights_file.unlink()  # another machine: the cache is empty and the process is offline
    model, state, recipe = _model_from_checkpoint(tmp_path / "run" / "last.pt", None, torch.device("cpu"))
    assert recipe["model"]["weights"] == "IMAGENET1K_V1"
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    again = torchsmith.evaluate(None, tmp_path / "run" / "last.pt")
    assert again["val_acc"] == pytest.approx(result.history[-1]["val_acc"])
    resumed = torchsmith.train(None, out=tmp_path / "run", overrides=sets, log=None, resume=True)
    assert resumed.resumed_from is not None and resumed.steps == result.steps
    with pytest.raises(OfflineError, match="not cached"):
        torchsmith.create_model("torchvision:resnet18", weights="IMAGENET1K_V1")  # a real load still needs it


def test_weights_off_builds_the_structure_torchvision_builds_for_the_weights(offline_cache, monkeypatch):
    """Inside weights_off nothing is read or fetched (the cache is empty, offline), yet a detection
    model gets the FrozenBatchNorm2d backbone its pretrained build has, so a checkpoint's tensors fit."""
    from torchsmith.hub import weights_off

    with weights_off():
        model = torchsmith.create_model(
            "torchvision:fasterrcnn_mobilenet_v3_large_fpn", weights_backbone="IMAGENET1K_V1", num_classes=3
        )
    kinds = {type(m).__name__ for m in model.backbone.modules()}
    assert "FrozenBatchNorm2d" in kinds and "BatchNorm2d" not in kinds
    with pytest.raises(OfflineError):
        torchsmith.create_model(
            "torchvision:fasterrcnn_mobilenet_v3_large_fpn", weights_backbone="IMAGENET1K_V1", num_classes=3
        )


def test_weights_off_builds_a_tagged_timm_model_without_its_file(offline_cache, monkeypatch):
    """timm: the tagged model is built (its pretrained_cfg attached) and no file is looked for;
    outside weights_off the same call, offline with an empty cache, is refused."""
    from torchsmith.hub import weights_off

    monkeypatch.setenv("HF_HOME", str(offline_cache.parent / "hf"))
    with weights_off():
        model = torchsmith.create_model("timm:resnet18.a1_in1k", pretrained=True, num_classes=4)
    assert model.get_classifier().out_features == 4
    with pytest.raises(OfflineError):
        torchsmith.create_model("timm:resnet18.a1_in1k", pretrained=True, num_classes=4)
