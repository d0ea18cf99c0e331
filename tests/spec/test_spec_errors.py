"""Bad specs fail before anything is built, naming the spec path, the line, what was found and expected."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from torchsmith.errors import SpecError
from torchsmith.spec import build_model, load_spec, validate_spec


def _error(spec, **kwargs) -> str:
    with pytest.raises(SpecError) as info:
        build_model(spec, **kwargs)
    return str(info.value)


UNET_TAIL = """
input_shape: [1, 3, 32, 32]
graph:
  inputs: [x]
  nodes:
    down1: {type: Conv2d, out_channels: 4, kernel_size: 3, stride: 2, padding: 1}
    down2: {type: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}
    up1: {type: Upsample, scale_factor: 2}
    cat: {op: concat, inputs: [up1, down_1]}
"""


def test_unknown_type_names_line_and_close_match(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("input_shape: [1, 4]\nchain:\n  - {type: Linear, out_features: 3}\n  - {type: Relu}\n")
    msg = _error(path)
    assert msg.startswith(f"{path}:4: chain[1].type: unknown type 'Relu'")
    assert "did you mean" in msg and "'ReLU'" in msg


def test_dangling_input_names_path_line_and_close_match(tmp_path):
    path = tmp_path / "unet.yaml"
    path.write_text(UNET_TAIL)
    msg = _error(path)
    assert f"{path}:9: graph.nodes.cat.inputs[1]: unknown input 'down_1'" in msg
    assert "(did you mean 'down1'" in msg


def test_unknown_argument_checked_against_signature():
    msg = _error("input_shape: [1, 4]\nchain: [{type: Linear, out_feature: 3}]")
    assert "<spec>:2: chain[0].type: Linear has no argument 'out_feature' (did you mean 'out_features'" in msg


def test_shape_mismatch_reports_both_shapes():
    msg = _error(
        {"input_shape": [1, 64], "chain": [{"type": "Linear", "in_features": 100, "out_features": 10}]}
    )
    assert "chain[0].in_features: Linear cannot take an input of shape (1, 64)" in msg
    assert "[1, 64] X [100, 10]" in msg  # torch's own words, from the meta run
    msg = _error(
        """
input_shape: {a: [1, 3, 8, 8], b: [1, 3, 7, 7]}
graph:
  inputs: [a, b]
  nodes:
    cat: {op: concat, inputs: [a, b]}
"""
    )
    assert (
        "<spec>:6: graph.nodes.cat: op 'concat' cannot take inputs of shape (1, 3, 8, 8) and (1, 3, 7, 7)"
        in msg
    )


def test_cycles_unused_nodes_and_unused_inputs():
    cycle = _error(
        {
            "graph": {
                "inputs": ["x"],
                "nodes": {
                    "a": {"type": "ReLU", "inputs": "c"},
                    "b": {"type": "ReLU", "inputs": "a"},
                    "c": {"type": "ReLU", "inputs": "b"},
                },
                "outputs": "c",
            }
        }
    )
    assert "graph.nodes.a.inputs: the graph has a cycle: a -> c -> b -> a" in cycle
    unused = _error({"graph": {"nodes": {"a": "ReLU", "b": {"type": "Tanh", "inputs": "x"}}, "outputs": "a"}})
    assert "graph.nodes.b: node 'b' is computed but never used" in unused
    unused_input = _error({"graph": {"inputs": ["x", "t"], "nodes": {"a": {"type": "ReLU", "inputs": "x"}}}})
    assert "graph input 't' is never used" in unused_input
    self_ref = _error({"graph": {"nodes": {"a": {"type": "ReLU", "inputs": "a"}}}})
    assert "cycle: a -> a" in self_ref


def test_inferred_argument_needs_a_shape():
    msg = _error({"chain": [{"type": "Linear", "out_features": 3}]})
    assert "missing a required argument: 'in_features'" in msg
    assert "input_shape" in msg


def test_imports_by_path_only_when_allowed():
    spec = {
        "input_shape": [1, 8, 4, 4],
        "type": "torchvision.ops.SqueezeExcitation",
        "squeeze_channels": 2,
        "input_channels": 8,
    }
    msg = _error(spec)
    assert "would import Python code by path" in msg and "allow_imports=True" in msg
    model = build_model(spec, allow_imports=True)
    assert type(model).__name__ == "SqueezeExcitation"
    for target in ("os.system", "collections.OrderedDict"):  # builtins and non-module classes: never
        msg = _error({"type": target, "args": ["true"]}, allow_imports=True)
        assert "is not an nn.Module class or a model factory function" in msg


def test_block_errors():
    recursive = {
        "blocks": {"A": {"chain": [{"type": "B"}]}, "B": {"chain": [{"type": "A"}]}},
        "type": "A",
    }
    assert "block 'A' uses itself (A -> B -> A)" in _error(recursive)
    blocks = {
        "Mlp": {
            "params": ["width", {"act": "ReLU"}],
            "chain": [{"type": "Linear", "out_features": "$width"}, "$act"],
        }
    }
    assert "block 'Mlp' has no parameter 'widht' (did you mean 'width'?)" in _error(
        {"blocks": blocks, "input_shape": [1, 2], "type": "Mlp", "widht": 3}
    )
    assert "block 'Mlp' needs the parameter 'width'" in _error(
        {"blocks": blocks, "input_shape": [1, 2], "type": "Mlp"}
    )
    ok = build_model(
        {"blocks": blocks, "input_shape": [1, 2], "chain": [{"type": "Mlp", "args": [5], "act": "Tanh"}]}
    )
    assert ok[0][0].out_features == 5 and type(ok[0][1]).__name__ == "Tanh"
    # defaults may refer to earlier parameters (the seeds' DoubleConv: mid_channels defaults to out_channels)
    two = {
        "Two": {
            "params": ["out", {"mid": "$out"}],
            "chain": [{"type": "Linear", "out_features": "$mid"}, {"type": "Linear", "out_features": "$out"}],
        }
    }
    model = build_model({"blocks": two, "input_shape": [1, 2], "type": "Two", "out": 7})
    assert model[0].out_features == 7 and model[1].in_features == 7


def test_yaml_problems_name_the_line():
    assert re.match(
        r"<spec>:4: not valid YAML: expected ',' or ']'", _error("chain:\n  - ReLU\n  - [unclosed\n")
    )
    assert _error("chain:\n  - ReLU\n - Tanh\n").startswith("<spec>:3: not valid YAML")
    dup = _error("input_shape: [1, 2]\nchain:\n  a: ReLU\n  a: Tanh\n")
    assert "<spec>:4: chain.a: duplicate key 'a'" in dup
    assert "found a date" in _error("chain: [ReLU]\nname: 2024-01-01\n")
    assert "could not determine a constructor" in _error("chain: [!!python/object:os.system ReLU]")
    tagged = _error("chain: !!python/object/apply:os.system [echo]\n")
    assert "<spec>:1: chain: found the YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'" in tagged


def test_params_and_expressions():
    base = {
        "params": {"width": 4},
        "input_shape": [1, 2],
        "chain": [{"type": "Linear", "out_features": "${width * 2}"}],
    }
    assert build_model(base)[0].out_features == 8
    assert build_model(base, params={"width": 3})[0].out_features == 6
    with pytest.raises(SpecError, match=r"unknown spec parameter 'widht' \(did you mean 'width'\?\)"):
        build_model(base, params={"widht": 3})
    bad = dict(base, chain=[{"type": "Linear", "out_features": "${__import__('os').getpid()}"}])
    assert "Call is not allowed" in _error(bad) or "is not allowed in a spec expression" in _error(bad)
    power = dict(base, chain=[{"type": "Linear", "out_features": "${width ** 99}"}])
    assert "BinOp is not allowed" in _error(power)
    unknown = dict(base, chain=[{"type": "Linear", "out_features": "$widht"}])
    assert "chain[0].out_features: unknown parameter 'widht' (did you mean 'width'?)" in _error(unknown)
    assert "expected true or false" in _error(dict(base, chain=[{"type": "ReLU", "when": "yes please"}]))


def test_structure_errors_suggest_keys():
    assert "unknown key 'chian' in the spec (did you mean 'chain'?)" in _error({"chian": ["ReLU"]})
    assert "expected one of type, chain, list, dict, graph" in _error({"chain": [{"typ": "ReLU"}]})
    assert "clashes with an nn.Module attribute" in _error({"chain": {"forward": "ReLU"}})
    assert "unknown op 'concatenate' (did you mean 'concat'?)" in _error(
        {"graph": {"nodes": {"c": {"op": "concatenate", "inputs": ["x", "x"]}}}}
    )
    assert "op 'add' takes at least 2 input(s); found 1" in _error({"graph": {"nodes": {"c": {"op": "add"}}}})
    assert "no sample shape for input 't'" in _error(
        {
            "input_shape": {"x": [1, 2]},
            "graph": {"inputs": ["x", "t"], "nodes": {"c": {"op": "add", "inputs": ["x", "t"]}}},
        }
    )
    assert "'Sequential' is a container" in _error({"type": "Sequential"})


def test_too_many_parameters_is_refused_before_allocating():
    start = time.perf_counter()
    msg = _error({"input_shape": [1, 1_000_000], "chain": [{"type": "Linear", "out_features": 1_000_000}]})
    assert "would have 1,000,001,000,000 parameters" in msg and "max_parameters" in msg
    assert time.perf_counter() - start < 20  # nothing of the 4 TB was allocated


def test_validate_returns_a_report_and_load_spec_keeps_lines(tmp_path):
    path = tmp_path / "mlp.json"
    path.write_text(
        '{\n  "input_shape": [1, 6],\n  "chain": [\n    {"type": "Linear", "out_features": 2}\n  ]\n}\n'
    )
    spec = load_spec(path)
    assert spec.source.line(("chain", 0)) == 4
    report = validate_spec(path)
    assert report["outputs"] == [1, 2] and report["parameters"] == 14
    assert report["inferred"] == {"0": {"in_features": 6}}


def test_seed_traps_7_and_8_are_caught_before_building():
    from pathlib import Path

    specs = Path(__file__).resolve().parents[2] / "examples" / "specs"
    # trap 8: add_variable must be (batch,); a (batch, 1) tensor breaks the concat after unsqueeze
    msg = _error(
        specs / "s12_extra_input.yaml",
        params={"backbone": "torchvision:squeezenet1_1"},
        input_shape={"x": [2, 3, 32, 32], "add_variable": [2, 1]},
    )
    assert "graph.nodes.cat: op 'concat' cannot take inputs of shape (2, 1000) and (2, 1, 1)" in msg
    # trap 7: the seed defines fc1 and returns the backbone's output instead; every node must be used
    seed_like = {
        "input_shape": [2, 8],
        "graph": {
            "nodes": {
                "net": {"type": "Linear", "out_features": 6},
                "fc1": {"type": "Linear", "out_features": 2},
            },
            "outputs": ["net", "net"],
        },
    }
    assert "graph.nodes.fc1: node 'fc1' is computed but never used" in _error(seed_like)


# Hostile spec text (issue 28): each is a SpecError naming the file and line, found while parsing.
HOSTILE_SPECS = {
    "long-int": ("input_shape: [1, 4]\nchain:\n  - {type: Linear, out_features: " + "9" * 100_000 + "}\n", 3),
    "long-float": ("input_shape: [1, 4]\nparams:\n  scale: 1." + "5" * 50_000 + "\n", 3),
    "long-int-key": ("input_shape: [1, 4]\nchain:\n  " + "7" * 10_000 + ": ReLU\n", 3),
    "flow-nesting": ("input_shape: [1, 4]\nchain: " + "[" * 50_000 + "]" * 50_000 + "\n", 2),
    "map-nesting": ("input_shape: [1, 4]\nparams: " + "{a: " * 30_000 + "1" + "}" * 30_000 + "\n", 2),
    "block-nesting": ("input_shape: [1, 4]\nchain:\n" + "- " * 50_000 + "ReLU\n", 3),
}


@pytest.mark.parametrize("kind", list(HOSTILE_SPECS))
def test_hostile_spec_text_is_a_clean_error_with_file_and_line(tmp_path, kind):
    text, line = HOSTILE_SPECS[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}:"), msg[:300]
    assert len(msg) < 2000 and time.perf_counter() - start < 10
    with pytest.raises(SpecError) as info:
        load_spec(text)  # as text: the same refusal, named <spec>
    assert str(info.value).startswith(f"<spec>:{line}:"), str(info.value)[:300]


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "folder"])
def test_a_spec_that_is_not_a_regular_file_is_never_opened(tmp_path, special):
    import os

    path = tmp_path / "s.yaml"
    if special == "fifo":
        os.mkfifo(path)
    elif special == "folder":
        path.mkdir()
    else:
        path = special
    with pytest.raises(SpecError, match=r"regular file"):
        load_spec(Path(path))
