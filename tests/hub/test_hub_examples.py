"""The S11/S15 pretrained finetune example runs from a local cache the test builds (offline)."""

from __future__ import annotations

import torch
import torchvision
from _hub_cache import plant

from example_modules import load_example


def test_s15_pretrained_finetune_runs_from_a_local_cache(tmp_path, offline_cache, monkeypatch, capsys):
    """The weights come from the planted file (a resnet18 state dict under torchvision's
    ``resnet18-<sha256 prefix>.pth`` name in ``$TORCH_HOME/hub/checkpoints``; TORCHSMITH_OFFLINE=1,
    so a miss would be an error, never a download); the frozen backbone stays bit-identical, only
    the new head learns, and the saved model reloads with the same outputs."""
    torch.manual_seed(1)
    planted = torchvision.models.resnet18()
    path = plant(offline_cache, monkeypatch, torchvision.models.ResNet18_Weights.IMAGENET1K_V1, planted)
    r = load_example("transfer", "s15_pretrained_finetune").main(image_size=32, out=str(tmp_path))
    assert r["source"] == "torchvision:resnet18:IMAGENET1K_V1"
    assert torch.equal(r["model"].conv1.weight, planted.conv1.weight)  # read from the planted file
    assert r["backbone_unchanged"] and r["reloaded_equal"]
    assert r["model"].fc.out_features == 10 and r["val_acc"] > 0.2  # the head learned (chance: 0.1)
    assert sorted(p.name for p in offline_cache.iterdir()) == [path.name]  # nothing else fetched
    assert "held-out accuracy" in capsys.readouterr().out
