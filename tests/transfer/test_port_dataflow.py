"""Structure ports match dataflow graphs: the order branches run in does not matter."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from torchsmith.transfer import load_weights
from torchsmith.transfer.dataflow import dataflow_groups
from torchsmith.zoo import create_model


class Block(nn.Module):
    def __init__(self, shortcut_first: bool):
        super().__init__()
        self.shortcut_first = shortcut_first
        self.main = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.short = nn.Linear(8, 8)

    def forward(self, x):
        if self.shortcut_first:
            s = self.short(x)
            return self.main(x) + s
        return self.main(x) + self.short(x)


def test_branch_order_does_not_change_the_graph_order():
    a, b = Block(True), Block(False)
    assert dataflow_groups(a, torch.zeros(1, 8)) == dataflow_groups(b, torch.zeros(1, 8))


def test_a_block_running_its_shortcut_first_ports_into_one_running_it_last():
    source, model = Block(True), Block(False)
    report = load_weights(model, source, match="structure", example_input=torch.randn(3, 8))
    assert torch.equal(model.short.weight, source.short.weight)
    assert any("numerical check: outputs" in n for n in report.notes)


def test_the_zoo_resnet_as_a_source_model_ports_like_its_state_dict():
    """issue 11: the zoo ResNet runs ``downsample`` first; as a model it was refused, as a state_dict not."""
    source = create_model("resnet18")
    model = torchvision.models.resnet18()
    report = load_weights(model, source, match="structure", example_input=torch.randn(1, 3, 64, 64))
    assert report.fraction == 1.0
    assert any("numerical check: outputs" in n for n in report.notes), report.notes


def test_root_owned_tensors_are_groups_of_their_own():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.randn(1, 1, 4))
            self.pos_embed = nn.Parameter(torch.randn(1, 3, 4))
            self.proj = nn.Linear(4, 4)

        def forward(self, x):
            x = self.proj(x)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            return x + self.pos_embed

    groups = dataflow_groups(Tokens(), torch.zeros(2, 2, 4))
    assert groups == [("proj", ("bias", "weight")), ("", ("cls_token",)), ("", ("pos_embed",))]


class _DataDependent(nn.Module):
    """Branches on a value: the meta device cannot run it, the graph-only trace falls back to a real run."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        y = self.a(x)
        return self.b(y) if bool(y.abs().sum() >= 0) else y


def test_the_graph_only_trace_gives_the_groups_of_a_real_run(monkeypatch):
    """A crop of the input (convnet), the meta device (fixed-size ViT), a real run (data-dependent)."""
    import timm

    from torchsmith.transfer import dataflow

    runs: list[str] = []
    record = dataflow._record

    def spy(model, x, meta):
        runs.append("meta" if meta else "x".join(map(str, x.shape)))
        return record(model, x, meta)

    cases = [
        (torchvision.models.resnet18(), torch.randn(2, 3, 64, 64), "1x3x16x16"),
        (timm.create_model("vit_tiny_patch16_224", depth=2), torch.randn(1, 3, 224, 224), "meta"),
        (_DataDependent(), torch.randn(2, 4), "2x4"),
    ]
    for model, x, how in cases:
        want = dataflow_groups(model, x)
        monkeypatch.setattr(dataflow, "_record", spy)
        runs.clear()
        assert dataflow_groups(model, x, graph_only=True) == want
        monkeypatch.setattr(dataflow, "_record", record)
        assert runs[-1] == how, runs
