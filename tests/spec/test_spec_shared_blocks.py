"""Issue 16: ``shared:`` (one module used at several places, or run ``n`` times) and block parameters
(``in_channels``, ``in_features``, ``d_model``, ...) read off the block's input when left out."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchsmith
from torchsmith.errors import SpecError
from torchsmith.spec import build_model, validate_spec
from torchsmith.spec.graph import SharedModule

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "specs" / "shared_blocks.yaml"


def _error(spec, **kwargs) -> SpecError:
    with pytest.raises(SpecError) as info:
        validate_spec(spec, **kwargs)
    return info.value


class _Refine(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(conv, nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return F.relu(self.body(x) + x)


class _SharedBlocks(nn.Module):  # the plain-PyTorch twin of examples/specs/shared_blocks.yaml
    def __init__(self, width: int = 16, steps: int = 4) -> None:
        super().__init__()
        self.steps = steps
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.refine = nn.Sequential(_Refine(width))  # refine.0: one block
        self.down1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.MaxPool2d(2))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for _ in range(self.steps):
            x = self.refine[0](x)
        x = self.down1(self.down1(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_example_is_one_module_per_shared_key_and_matches_its_twin(tmp_path):
    model = build_model(EXAMPLE).eval()
    twin = _SharedBlocks().eval()
    assert list(model.state_dict()) == list(twin.state_dict())  # refine.0 and down1 once
    assert len(model.state_dict()) == 10
    count = sum(p.numel() for p in twin.parameters())
    assert sum(p.numel() for p in model.parameters()) == count == 7_578
    report = validate_spec(EXAMPLE)
    assert report["parameters"] == count
    assert torchsmith.summarize(model, (1, 3, 32, 32)).total_params == count  # shared: counted once
    assert report["inferred"]["stem"] == {"in_channels": 3}
    assert report["inferred"]["refine.0"] == {"in_channels": 16} and report["inferred"]["down1"] == {
        "in_channels": 16
    }
    assert isinstance(model.refine[3], SharedModule) and model.refine[3]._shared[0] is model.refine[0]
    assert model.down2._shared[0] is model.down1
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)
    torchsmith.save(model, tmp_path / "m.safetensors")
    loaded = torchsmith.load_model(tmp_path / "m.safetensors").eval()
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert loaded.refine[1]._shared[0] is loaded.refine[0]  # still one module after the rebuild
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


TOWERS = """
input_shape: {a: [2, 6], b: [2, 6]}
graph:
  inputs: [a, b]
  nodes:
    ta: {inputs: a, chain: [{type: Linear, out_features: 4, shared: tower}, Tanh]}
    tb: {inputs: b, chain: [{type: Linear, out_features: 4, shared: tower}, Tanh]}
    d: {op: subtract, inputs: [ta, tb]}
"""


def test_shared_towers_inside_chains_are_one_module_trained_as_one():
    model = build_model(TOWERS)
    assert list(model.state_dict()) == ["ta.0.weight", "ta.0.bias"]
    assert "runs ta.0" in repr(model.tb)
    a, b = torch.randn(2, 6), torch.randn(2, 6)
    assert torch.equal(model(a, a), torch.zeros(2, 4))
    model(a, b).sum().backward()  # both uses put their gradients into the one weight
    w, bias = model.ta[0].weight, model.ta[0].bias
    loss = (torch.tanh(F.linear(a, w, bias)) - torch.tanh(F.linear(b, w, bias))).sum()
    torch.testing.assert_close(w.grad, torch.autograd.grad(loss, w)[0])
    twin = copy.deepcopy(model)
    assert twin.tb[0]._shared[0] is twin.ta[0] and twin.ta[0] is not model.ta[0]
    exported = torch.export.export(model, (a, b))
    torch.testing.assert_close(exported.module()(a, b), model(a, b))


@pytest.mark.parametrize(
    ("body", "keys"),
    [
        ("chain: {r: {type: Linear, out_features: 8, n: 3, shared: true}}", ["r.0.weight", "r.0.bias"]),
        ("chain: [{type: Linear, out_features: 8, n: 3, shared: true}]", ["0.weight", "0.bias"]),  # in place
        ("list: [{type: Linear, out_features: 8, n: 3, shared: true}]", ["0.weight", "0.bias"]),
        (
            "graph: {inputs: [x], nodes: {r: {type: Linear, out_features: 8, n: 3, shared: true}}}",
            ["r.0.weight", "r.0.bias"],
        ),
    ],
)
def test_n_with_shared_is_one_module_run_n_times(body, keys):
    model = build_model(f"input_shape: [2, 8]\n{body}\n")
    assert list(model.state_dict()) == keys
    lin = model.get_submodule(keys[0].rsplit(".", 1)[0])
    x = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), lin(lin(lin(x))), rtol=0, atol=0)
    assert validate_spec(f"input_shape: [2, 8]\n{body}\n")["parameters"] == 72


def test_a_later_use_that_runs_first_holds_the_module():
    # 'b' is written after 'a' but runs before it ('a' needs 'c', which needs 'b'): 'b' holds it
    text = """
input_shape: [2, 4]
graph:
  inputs: [x]
  nodes:
    a: {inputs: c, type: Linear, out_features: 4, shared: true}
    b: {inputs: x, type: Linear, out_features: 4, shared: true}
    c: {inputs: b, op: relu}
  outputs: a
"""
    model = build_model(text)
    assert list(model.state_dict()) == ["b.weight", "b.bias"] and model.a._shared[0] is model.b
    x = torch.randn(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.b(F.relu(model.b(x))))


def test_shapes_through_shared_uses_come_from_formulas():
    from torchsmith.spec.fastshape import module_output

    lin = nn.Linear(4, 4, device="meta")
    chain = nn.Sequential(lin, nn.ReLU(), SharedModule(lin, "0"))
    assert module_output(chain, [torch.empty(2, 4, device="meta")]).shape == (2, 4)  # no meta kernel run


def test_a_shared_node_inside_a_block_is_one_module_for_every_use_of_the_block():
    text = """
input_shape: [2, 4]
blocks:
  Pair:
    params: []
    chain: [{type: Linear, out_features: 4, shared: inner}, {type: Linear, out_features: 4}]
chain: [Pair, Pair]
"""
    model = build_model(text)
    assert model[1][0]._shared[0] is model[0][0] and model[1][1] is not model[0][1]
    assert list(model.state_dict()) == [
        "0.0.weight",
        "0.0.bias",
        "0.1.weight",
        "0.1.bias",
        "1.1.weight",
        "1.1.bias",
    ]


def test_docs_residual_example_projects_only_where_channels_change():
    text = """
input_shape: [1, 3, 8, 8]
blocks:
  Res:
    params: [in_channels, out_channels]
    graph:
      inputs: [x]
      nodes:
        body: {inputs: x, type: Conv2d, in_channels: $in_channels, out_channels: $out_channels,
               kernel_size: 3, padding: 1}
        proj: {inputs: x, when: "${in_channels != out_channels}", type: Conv2d, out_channels: $out_channels,
               kernel_size: 1}
        sum: {op: add, inputs: [body, "${'proj' if in_channels != out_channels else 'x'}"]}
chain:
  - {type: Res, out_channels: 16}
  - {type: Res, out_channels: 16}
"""
    model = build_model(text)
    assert model[0].proj.in_channels == 3 and model[0].body.in_channels == 3
    assert not hasattr(model[1], "proj") and model[1].body.in_channels == 16
    assert validate_spec(text)["inferred"] == {
        "0": {"in_channels": 3},
        "0.proj": {"in_channels": 3},
        "1": {"in_channels": 16},
    }


def test_shared_false_builds_copies_and_names_key_groups():
    text = """
input_shape: [2, 4]
chain:
  - {type: Linear, out_features: 4, shared: false}
  - {type: Linear, out_features: 4, shared: p}
  - {type: Linear, out_features: 4, shared: q}
  - {type: Linear, out_features: 4, shared: p}
  - {type: Linear, out_features: 4, shared: q}
"""
    model = build_model(text)
    assert [k for k in model.state_dict() if k.endswith("weight")] == ["0.weight", "1.weight", "2.weight"]
    assert model[3]._shared[0] is model[1] and model[4]._shared[0] is model[2]


SHARED = """
input_shape: [1, 4]
chain:
  a: {type: Linear, out_features: 4, shared: true}
  b: %s
"""


@pytest.mark.parametrize(
    ("node", "line", "expected"),
    [
        (
            "{type: Linear, out_features: 5, shared: true}",
            5,
            "chain.b.out_features: this use of the shared module 'Linear' has out_features=5 but its first "
            "use (<spec>:4: chain.a) has out_features=4",
        ),
        (
            "{type: Linear, out_features: 4, bias: false, shared: true}",
            5,
            "chain.b.bias: this use of the shared module 'Linear' has bias=False but its first use "
            "(<spec>:4: chain.a) has bias='(not given)'",
        ),
        (  # compared as written: a default given is not the same as a default left out
            "{type: Linear, out_features: 4, bias: true, shared: true}",
            5,
            "chain.b.bias: this use of the shared module 'Linear' has bias=True but its first use",
        ),
        ("{chain: [ReLU], shared: true}", 5, "chain.b.shared: 'shared' needs a node with 'type'"),
        ("{type: Linear, out_features: 4, shared: 3}", 5, "chain.b.shared: found 3; expected true, false"),
        ("{type: Linear, out_features: 4, shared: 'a b'}", 5, "found 'a b'; expected true, false, or a name"),
    ],
)
def test_shared_misuse_names_both_lines(node, line, expected):
    err = _error(SHARED % node)
    assert err.line == line and expected in str(err), str(err)


def test_one_key_for_two_types_is_an_error():
    text = SHARED.replace("shared: true}", "shared: enc}") % "{type: Conv1d, out_channels: 4, shared: enc}"
    err = _error(text)
    assert err.line == 5 and "chain.b.type: this use of the shared module 'enc' has type='Conv1d'" in str(err)
    assert "(<spec>:4: chain.a) has type='Linear'" in str(err)


def test_shared_module_that_cannot_take_another_use_input():
    text = """
input_shape: [1, 4]
chain:
  a: {type: Linear, out_features: 6, shared: true}
  b: {type: Linear, out_features: 6, shared: true}
"""
    msg = str(_error(text))
    assert msg.startswith("<spec>:5: chain.b: the shared module 'Linear' (held at a) cannot take an input")
    assert "(1, 6)" in msg and "its first use took (1, 4)" in msg
    # n + shared: each run's output is the next run's input, so it must keep the shape it takes
    msg = str(_error("input_shape: [1, 4]\nchain:\n  - {type: Linear, out_features: 6, n: 2, shared: s}\n"))
    assert msg.startswith("<spec>:3: chain[0]: the shared module 's' (held at 0) cannot take an input")
    assert "(1, 6)" in msg


def test_shared_is_refused_where_it_means_nothing():
    text = """
input_shape: [1, 4]
graph:
  inputs: [x]
  nodes:
    a: {type: Linear, out_features: 4}
    b: {op: add, inputs: [a, x], shared: true}
"""
    err = _error(text)
    assert err.line == 7 and "unknown key 'shared' in op 'add'" in str(err)


def test_a_shared_block_run_1000_times_adds_no_parameters():
    # one Refine is planned and built; 1000 shared uses add one small stateless module each
    text = EXAMPLE.read_text().replace("n: $steps", "n: 1000")
    report = validate_spec(text)
    assert report["parameters"] == 7_578


# ------------------------------------------------------------------------- block parameters inferred
BLOCKS = """
blocks:
  ConvBN:
    params: [in_channels, out_channels, {mid: $in_channels}]
    chain:
      - {type: Conv2d, in_channels: $in_channels, out_channels: $mid, kernel_size: 1}
      - {type: Conv2d, in_channels: $mid, out_channels: $out_channels, kernel_size: 3, padding: 1}
  Res:
    params: [in_channels, out_channels]
    graph:
      inputs: [x]
      nodes:
        body: {inputs: x, type: ConvBN, out_channels: $out_channels}
        proj: {inputs: x, when: "${in_channels != out_channels}", type: Conv2d, out_channels: $out_channels,
               kernel_size: 1}
        sum: {op: add, inputs: [body, "${'proj' if in_channels != out_channels else 'x'}"]}
  Mlp:
    params: [in_features, hidden]
    chain:
      - {type: Linear, in_features: $in_features, out_features: $hidden}
      - {type: Linear, in_features: $hidden, out_features: $in_features}
  Attn:
    params: [d_model, {heads: 2}]
    type: TransformerEncoderLayer
    d_model: $d_model
    nhead: $heads
    dim_feedforward: 16
    batch_first: true
"""


def test_block_in_channels_is_read_off_its_input_in_a_graph():
    text = (
        BLOCKS
        + """
input_shape: {x: [1, 3, 8, 8], y: [1, 5, 8, 8]}
graph:
  inputs: [x, y]
  nodes:
    rx: {inputs: x, type: Res, out_channels: 6}
    ry: {inputs: y, type: Res, out_channels: 5}
    cat: {op: concat, inputs: [rx, ry]}
    out: {type: Res, out_channels: 11}
"""
    )
    report = validate_spec(text)
    assert report["inferred"]["rx"] == {"in_channels": 3} and report["inferred"]["ry"] == {"in_channels": 5}
    assert report["inferred"]["out"] == {"in_channels": 11}
    model = build_model(text)
    assert model.rx.body[0].in_channels == 3 and model.rx.body[0].out_channels == 3  # mid: $in_channels
    assert model.rx.proj.in_channels == 3 and not hasattr(model.ry, "proj")  # no projection at 5 -> 5
    assert not hasattr(model.out, "proj")
    assert model(torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8, 8)).shape == (2, 11, 8, 8)


def test_block_in_features_and_d_model_are_read_off_the_last_dim():
    text = BLOCKS + "input_shape: [2, 7, 12]\nchain:\n  - {type: Mlp, hidden: 9}\n  - Attn\n"
    report = validate_spec(text)
    assert report["inferred"]["0"] == {"in_features": 12} and report["inferred"]["1"] == {"d_model": 12}
    model = build_model(text)
    assert model[0][0].in_features == 12 and model[1].self_attn.embed_dim == 12
    assert model(torch.randn(3, 7, 12)).shape == (3, 7, 12)


def test_shared_block_with_an_inferred_parameter():
    text = BLOCKS + "input_shape: [1, 4, 6, 6]\nchain:\n  - {type: Res, out_channels: 4, n: 3, shared: s}\n"
    model = build_model(text)  # in a chain list, n expands in place: 0 holds the block, 1 and 2 run it
    assert validate_spec(text)["parameters"] == sum(p.numel() for p in model[0].parameters()) == 168
    assert len(model.state_dict()) == 4 and model[2]._shared[0] is model[0]


def test_block_parameter_that_cannot_be_inferred_names_block_parameter_and_line():
    text = BLOCKS + "chain:\n  - {type: Tanh}\n  - {type: Mlp, hidden: 3}\n"
    err = _error(text)
    line = BLOCKS.count("\n") + 3
    assert err.line == line and str(err).startswith(
        f"<spec>:{line}: chain[1]: block 'Mlp' needs the parameter 'in_features': it can be left out only "
        "when the model has a sample input shape"
    )
    err = _error(BLOCKS + "input_shape: [4]\nchain:\n  - {type: Res, out_channels: 3}\n")
    assert err.line == line and (
        "block 'Res' needs the parameter 'in_channels': it could not be read off an input of shape (4)"
    ) in str(err)
    text = BLOCKS + (
        "input_shape: [1, 2, 8]\nchain:\n"
        "  - {type: TransformerEncoder, encoder_layer: {module: {type: Attn}}, num_layers: 1}\n"
    )
    assert "block 'Attn' needs the parameter 'd_model': its input is not known here" in str(_error(text))
    # a required parameter shape inference does not know is still an error where the spec is read
    assert "block 'Res' needs the parameter 'out_channels'" in str(_error(BLOCKS + "chain: [Res]\n"))


def test_block_parameter_with_a_default_is_not_inferred():
    text = """
input_shape: [1, 3, 8, 8]
blocks:
  B:
    params: [{in_channels: 2}]
    type: Conv2d
    in_channels: $in_channels
    out_channels: 4
    kernel_size: 1
chain: [B]
"""
    assert "Conv2d cannot take an input of shape (1, 3, 8, 8)" in str(_error(text))


def test_a_deferred_block_using_itself_is_still_a_cycle():
    text = """
input_shape: [1, 3, 8, 8]
blocks:
  A:
    params: [in_channels]
    chain: [{type: A}]
chain: [A]
"""
    assert "block 'A' uses itself (A -> A)" in str(_error(text))
