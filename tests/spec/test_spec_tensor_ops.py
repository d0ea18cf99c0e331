"""Param nodes and tensor ops in graphs: the ViT example against plain PyTorch, and an error per op."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchsmith
from torchsmith.errors import SpecError
from torchsmith.spec import build_model, validate_spec

VIT = Path(__file__).resolve().parents[2] / "examples" / "specs" / "vit_tiny.yaml"


class _ViT(nn.Module):  # plain PyTorch, the dims of examples/specs/vit_tiny.yaml
    def __init__(self, image=32, patch=8, dim=64, depth=2, heads=4, mlp=128, classes=10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        layer = dict(dropout=0.0, batch_first=True, norm_first=True, activation="gelu")
        self.blocks = nn.Sequential(
            *[nn.TransformerEncoderLayer(dim, heads, mlp, **layer) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def test_vit_tiny_matches_plain_pytorch_and_round_trips(tmp_path):
    model = build_model(VIT).eval()
    twin = _ViT().eval()
    count = sum(p.numel() for p in twin.parameters())
    assert sum(p.numel() for p in model.parameters()) == count == validate_spec(VIT)["parameters"]
    assert sorted(model.state_dict()) == sorted(twin.state_dict())
    assert model.pos_embed.std() > 0 and torch.equal(model.cls_token, torch.zeros(1, 1, 64))
    twin.load_state_dict(model.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x))
    torchsmith.save(model, tmp_path / "vit.safetensors")
    loaded = torchsmith.load_model(tmp_path / "vit.safetensors").eval()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def _graph(nodes: str, shape: str = "[2, 3, 4]") -> str:
    return f"input_shape: {shape}\ngraph:\n  nodes:\n{nodes}"


def test_ops_compute_what_torch_does():
    text = _graph(
        "    p: {op: permute, dims: [0, 2, 1]}\n"  # (2, 4, 3)
        "    parts: {op: split, size: 2, dim: 1, names: [a, b]}\n"
        "    m: {op: matmul, inputs: [parts.a, x]}\n"  # (2, 2, 3) @ (2, 3, 4)
        "    c: {op: chunk, chunks: 2, dim: 2, inputs: m}\n"
        "    g: {op: getitem, index: 1, inputs: c}\n"  # (2, 2, 2)
        "    i: {op: index, dim: 2, index: [1, 0]}\n"
        "    w: {param: {shape: [1, 2, 2], init: ones, trainable: false}}\n"
        "    e: {op: expand, size: [2, -1, -1], inputs: w}\n"
        "    s: {op: add, inputs: [i, e]}\n"
    )
    assert validate_spec(text)["outputs"] == [2, 2, 2]
    model = build_model(text)
    assert not model.w.requires_grad
    x = torch.randn(2, 3, 4)
    m = x.permute(0, 2, 1)[:, :2] @ x
    torch.testing.assert_close(model(x), m[:, :, 2:][:, :, [1, 0]] + 1)


def test_param_buffer_is_saved_by_name():
    text = _graph(
        "    w: {param: {shape: [1, 3, 4], buffer: true, init: ones}}\n    s: {op: add, inputs: [x, w]}\n"
    )
    model = build_model(text)
    assert "w" in model.state_dict() and not list(model.parameters())


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ("{op: permute, dims: [0, 1]}", "op 'permute' cannot take inputs of shape (2, 3, 4)"),
        ("{op: permute, dims: [1, 0, 2]}", "batch dimension"),
        ("{op: transpose, dim0: 1, dim1: 5}", "op 'transpose' cannot take inputs"),
        ("{op: transpose, dim0: 0, dim1: 1}", "batch dimension"),
        ("{op: select, dim: 1, index: 7}", "op 'select' cannot take inputs"),
        ("{op: select, dim: 0, index: 0}", "batch dimension"),
        ("{op: index, dim: 2, index: [0, 9]}", "op 'index' cannot take inputs"),
        ("{op: split, size: 2, dim: 1, names: [a]}", "gives 2 parts but names lists 1"),
        ("{op: chunk, chunks: 2, dim: 9}", "op 'chunk' cannot take inputs"),
        ("{op: getitem, index: 0}", "op 'getitem' cannot take inputs"),
        ("{op: matmul, inputs: [x, x]}", "op 'matmul' cannot take inputs of shape (2, 3, 4) and (2, 3, 4)"),
        ("{op: expand, size: [2, 5, 4]}", "op 'expand' cannot take inputs"),
        ("{op: expand_batch, inputs: [x, x]}", "expected a first input with batch 1"),
        ("{op: cat, dim: 3, inputs: [x, x]}", "op 'cat' cannot take inputs"),
        ("{op: permute}", "op 'permute' needs the argument 'dims'"),
        ("{param: {shape: [0, 2]}}", "expected a list of 1 to 8 positive integers"),
        ("{param: {shape: [1, 2], init: xavier}}", "found init 'xavier'"),
        ("{param: {shape: [1, 2], sizes: 3}}", "unknown key 'sizes' in a param"),
    ],
)
def test_each_op_error_names_the_node_and_line(node, expected):
    text = _graph(
        f"    bad: {node}\n    out: {{op: add, inputs: [bad, x]}}\n"
        if "param" in node
        else f"    bad: {node}\n"
    )
    with pytest.raises(SpecError) as info:
        validate_spec(text)
    msg = str(info.value)
    assert info.value.line == 4 and "graph.nodes.bad" in msg and expected in msg, msg
