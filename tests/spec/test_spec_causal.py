"""Graph nodes pass tensors and constants to forward by keyword (``keywords:``); ``causal_mask``
makes the mask; the GPT-style example equals a plain-PyTorch twin built independently."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchsmith
from torchsmith.errors import SpecError

GPT = Path(__file__).resolve().parents[2] / "examples" / "specs" / "gpt_causal.yaml"


class TwinGPT(nn.Module):
    """The same decoder written as plain PyTorch, with PyTorch's own float causal mask."""

    def __init__(self, vocab=64, context=16, width=32, heads=4, mlp=128, layers=2):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(1, context, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, mlp, 0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, tokens):
        x = self.tok(tokens) + self.pos
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.head(self.norm(x))


def _twin_of(model: nn.Module) -> TwinGPT:
    twin = TwinGPT()
    state = {k.replace("block0.", "blocks.0.").replace("block1.", "blocks.1."): v
             for k, v in model.state_dict().items()}  # fmt: skip
    twin.load_state_dict(state, strict=True)
    return twin


@pytest.mark.parametrize("train_mode", [False, True])
def test_gpt_example_equals_its_plain_pytorch_twin(train_mode):
    torch.manual_seed(0)
    model = torchsmith.build_model(GPT)
    twin = _twin_of(model)
    model.train(train_mode)
    twin.train(train_mode)
    tokens = torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        assert torch.allclose(model(tokens), twin(tokens), atol=1e-5)


@pytest.mark.parametrize("t", [0, 5, 15])
def test_a_position_sees_no_later_token(t):
    torch.manual_seed(1)
    model = torchsmith.build_model(GPT).eval()
    tokens = torch.randint(0, 64, (2, 16))
    changed = tokens.clone()
    changed[:, t] = (changed[:, t] + 1) % 64
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :t], b[:, :t])  # earlier positions: bit-identical
    assert not torch.allclose(a[:, t], b[:, t])


def test_keywords_survive_save_and_load_model(tmp_path):
    model = torchsmith.build_model(GPT).eval()
    torchsmith.save(model, tmp_path / "gpt.safetensors")
    again = torchsmith.load_model(tmp_path / "gpt.safetensors").eval()
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(tokens), again(tokens))


def _graph(node: dict, extra: dict | None = None) -> dict:
    nodes = {"mask": {"op": "causal_mask", "inputs": "x"}, "attn": node, **(extra or {})}
    return {"graph": {"inputs": {"x": [2, 5, 8]}, "nodes": nodes, "outputs": "attn.0"}}


MHA = {"type": "MultiheadAttention", "embed_dim": 8, "num_heads": 2, "batch_first": True,
       "inputs": ["x", "x", "x"]}  # fmt: skip


def test_multihead_attention_takes_a_mask_and_is_causal():
    model = torchsmith.build_model(_graph({**MHA, "keywords": {"attn_mask": "mask", "is_causal": True}}))
    x = torch.randn(2, 5, 8)
    mha = model.attn
    with torch.no_grad():
        want = mha(x, x, x, attn_mask=nn.Transformer.generate_square_subsequent_mask(5), is_causal=True)[0]
        assert torch.allclose(model(x), want, atol=1e-6)


@pytest.mark.parametrize(
    ("node", "match"),
    [
        ({**MHA, "keywords": {"attn_mask": "maks"}}, r"unknown input 'maks'.*did you mean 'mask'"),
        ({**MHA, "keywords": {"attn_mask": [1, 2]}}, "expected the name of an input or node, or a constant"),
        ({**MHA, "keywords": {"1bad": True}}, "expected a Python keyword argument name"),
        ({**MHA, "keywords": {}}, "expected a mapping of forward keyword"),
        ({**MHA, "n": 2, "keywords": {"is_causal": True}}, "cannot go with 'n'"),
        ({**MHA, "keywords": {"attn_mask": "mask", "no_such_kw": True}},
         "with keywords attn_mask, no_such_kw"),
    ],
)  # fmt: skip
def test_keyword_mistakes_are_named_at_their_line(node, match):
    with pytest.raises(SpecError, match=match):
        torchsmith.build_model(_graph(node))


def test_sizes_are_still_read_off_the_inputs():
    node = {k: v for k, v in MHA.items() if k != "embed_dim"} | {"keywords": {"attn_mask": "mask"}}
    model = torchsmith.build_model(_graph(node))
    assert model.attn.embed_dim == 8


def test_keywords_are_refused_outside_graphs():
    spec = {"input_shape": [2, 8], "chain": [{"type": "Linear", "out_features": 4, "keywords": {"a": "x"}}]}
    with pytest.raises(SpecError, match="'keywords' is not allowed here"):
        torchsmith.build_model(spec)
