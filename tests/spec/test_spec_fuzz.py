"""Malformed and adversarial specs: always a SpecError naming its path, in bounded time, never a traceback."""

from __future__ import annotations

import time

import pytest
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchsmith.cli.main import main
from torchsmith.errors import SpecError
from torchsmith.spec import build_model

KEYS = [
    "type", "chain", "list", "dict", "graph", "inputs", "nodes", "outputs", "n", "when", "args", "kwargs",
    "shared", "params", "blocks", "op", "input_shape", "dim", "out_features", "in_features", "out_channels",
    "kernel_size", "x", "a", "b", "fc1",
]  # fmt: skip
STRINGS = [
    "Linear", "ReLU", "Conv2d", "Flatten", "Sequential", "concat", "add", "pad_to", "x", "a", "b", "fc1",
    "$x", "$a", "${1/0}", "${x *}", "${a if b else 'ReLU'}", "$$literal", "torchvision:nope", "timm:",
    "os.system", "nn.Nope", "a.0", "", "forward", "zoo:nope",
]  # fmt: skip
SCALARS = st.one_of(
    st.sampled_from(STRINGS),
    st.sampled_from([0, 1, 2, 3, -1, 7, 2**31, 10**9, 10**30]),
    st.booleans(),
    st.none(),
    st.sampled_from([0.5, -1.5, float("inf")]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
    ),
    max_leaves=25,
)
SPECS = st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=6)
SHAPES = st.one_of(st.none(), st.sampled_from([[1, 4], [2, 3, 8, 8], [1], [0, 4], "1,2", [10**9, 10**9]]))

BUDGET_S = 20  # generous: CI shares 2 cores; a hang or an expansion bomb would take minutes


def _check(spec, input_shape=None):
    start = time.perf_counter()
    try:
        model = build_model(spec, input_shape=input_shape, max_parameters=10**6)
    except SpecError as e:
        msg = str(e)
        assert ": " in msg and "Traceback" not in msg  # '<where>: <what>'
        result = e
    else:
        assert isinstance(model, nn.Module)
        result = model
    assert time.perf_counter() - start < BUDGET_S
    return result


@settings(derandomize=True, max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPECS, shape=SHAPES)
def test_random_specs_give_a_module_or_a_spec_error(spec, shape):
    _check(spec, shape)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(data=st.data())
def test_mutated_yaml_gives_a_module_or_a_spec_error(data):
    text = (
        "input_shape: [1, 8]\nparams: {w: 4}\nchain:\n  fc: {type: Linear, out_features: $w}\n  act: ReLU\n"
    )
    pos = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 6))
    insert = data.draw(
        st.sampled_from(["", "{", "]", ":", "&a", "*a", "!!python/name:os.system", "\t", "- ", "$", "'"])
    )
    _check(text[:pos] + insert + text[pos + cut :])


def _laughs(levels: int = 9, width: int = 9) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append(f"chain: [{{type: Linear, args: *a{levels}}}]")
    return "\n".join(lines) + "\n"


def _expansion_bomb() -> dict:
    blocks = {"L0": {"type": "ReLU"}}
    for i in range(1, 6):
        blocks[f"L{i}"] = {"chain": [{"type": f"L{i - 1}", "n": 100}]}
    return {"blocks": blocks, "type": "L5"}


ADVERSARIAL = [
    ("billion laughs", _laughs(), "expands to more than"),
    ("deep nesting", "chain: " + "[" * 5000 + "]" * 5000, "nests too deeply"),
    ("deep flow mapping", "a: " + "{b: " * 3000 + "1" + "}" * 3000, "nests too deeply"),
    ("recursive alias", "chain: &a [ReLU, *a]\n", "refers to itself"),
    ("huge repeat", {"chain": [{"type": "ReLU", "n": 10**9}]}, "from 1 to 10000"),
    ("expansion bomb", _expansion_bomb(), "more than 10000 modules"),
    ("self-recursive block", {"blocks": {"A": {"chain": ["A"]}}, "type": "A"}, "uses itself"),
    (
        "huge layer",
        {"input_shape": [1, 10**6], "chain": [{"type": "Linear", "out_features": 10**7}]},
        "parameters",
    ),
    ("huge string", "name: " + "x" * 3_000_000, "bytes"),
    (
        "expression bomb",
        {"chain": [{"type": "ReLU", "n": "${" + "(" * 200 + "1" + ")" * 200 + "}"}]},
        "expression",
    ),
    (
        "string bomb",
        {"params": {"s": "${'ab' + 'ab'}"}, "chain": [{"type": "${s * 1000000000}"}]},
        "cannot apply",
    ),
    ("bad top level", "- just\n- a list\n", "must be a mapping"),
]


@pytest.mark.parametrize(("what", "spec", "expected"), ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL])
def test_adversarial_specs_fail_fast_and_clearly(what, spec, expected):
    result = _check(spec)
    assert isinstance(result, SpecError), what
    assert expected in str(result)


def test_self_referencing_dict():
    spec: dict = {"chain": []}
    spec["chain"].append(spec)
    result = _check(spec)
    assert isinstance(result, SpecError) and "chain[0]: the spec contains itself" in str(result)


@pytest.mark.parametrize("index", range(len(ADVERSARIAL)), ids=[a[0] for a in ADVERSARIAL])
def test_cli_never_prints_a_traceback(index, tmp_path, capsys):
    _, spec, expected = ADVERSARIAL[index]
    path = tmp_path / "spec.yaml"
    if isinstance(spec, dict):
        import json

        path.write_text(json.dumps(spec))
    else:
        path.write_text(spec)
    rc = main(["build", str(path)])
    _, err = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("torchsmith build: error: ") and expected in err


# ----------------------------------------------------------------- grammar-based: mostly valid specs
def _layers():
    sizes = st.sampled_from([1, 3, 8, "$w", "${w * 2}", 0, -2, "big"])
    return st.one_of(
        st.sampled_from(["ReLU", "Tanh", "Identity", {"type": "Dropout", "p": 0.1}]),
        st.builds(lambda o: {"type": "Linear", "out_features": o}, sizes),
        st.builds(
            lambda o, k: {"type": "Conv2d", "out_channels": o, "kernel_size": k, "padding": 1},
            sizes,
            st.sampled_from([1, 3, 9]),
        ),
        st.just({"type": "BatchNorm2d"}),
        st.just({"type": "LayerNorm"}),
        st.sampled_from(["LBlock", "CBlock", {"type": "CBlock", "out": "$w"}]),  # in_* read off the input
    )


# spec blocks whose first layer's input size is a required parameter, left out at every use
BLOCKS = {
    "LBlock": {
        "params": ["in_features", {"out": 8}],
        "chain": [{"type": "Linear", "in_features": "$in_features", "out_features": "$out"}, "Tanh"],
    },
    "CBlock": {
        "params": ["in_channels", {"out": 3}],
        "type": "Conv2d",
        "in_channels": "$in_channels",
        "out_channels": "$out",
        "kernel_size": 1,
    },
}


def _graphs(children):
    names = ["a", "b", "c", "d"]

    @st.composite
    def build(draw):
        count = draw(st.integers(1, 4))
        nodes: dict = {}
        for i in range(count):
            avail = ["x", *names[:i]]
            if i and draw(st.booleans()):
                op = draw(st.sampled_from(["add", "concat", "multiply", "pad_to"]))
                ins = draw(st.lists(st.sampled_from(avail), min_size=2, max_size=2))
                nodes[names[i]] = {"op": op, "inputs": ins}
            else:
                child = draw(children)
                node = dict(child) if isinstance(child, dict) else {"type": child}
                node["inputs"] = draw(st.sampled_from(avail))
                nodes[names[i]] = node
        return {"graph": {"inputs": ["x"], "nodes": nodes, "outputs": names[count - 1]}}

    return build()


NODES = st.recursive(
    _layers(),
    lambda children: st.one_of(
        st.builds(lambda items: {"chain": items}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda items: {"list": items}, st.lists(children, min_size=1, max_size=3)),
        st.builds(
            lambda n, c: {"chain": [dict(c, n=n) if isinstance(c, dict) else {"type": c, "n": n}]},
            st.sampled_from([1, 2, 0]),
            children,
        ),
        st.builds(  # one module run n times, or one module at every place with the same key
            lambda n, c, key: {
                "chain": [
                    dict(c, n=n, shared=key) if isinstance(c, dict) else {"type": c, "n": n, "shared": key}
                ]
            },
            st.sampled_from([1, 2, 3]),
            children,
            st.sampled_from([True, "k", False]),
        ),
        _graphs(children),
    ),
    max_leaves=8,
)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@settings(derandomize=True, max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=NODES, shape=st.sampled_from([[2, 8], [2, 3, 6, 6], [2, 4, 5, 7]]), mutate=st.integers(0, 4))
def test_generated_specs_build_and_run_as_inferred(body, shape, mutate):
    """A spec that builds runs on a real input and gives exactly the shapes the meta pass predicted."""
    import torch

    from torchsmith.spec import validate_spec

    spec = {
        "params": {"w": 4},
        "blocks": BLOCKS,
        "input_shape": shape,
        **(body if isinstance(body, dict) else {"type": body}),
    }
    if mutate == 0:  # drop the sample shape: omitted sizes can no longer be inferred
        del spec["input_shape"]
    try:
        report = validate_spec(spec, max_parameters=10**6)
        model = build_model(spec, max_parameters=10**6)
    except SpecError as e:
        assert ": " in str(e)
        return
    if "input_shape" not in spec:
        return
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(*shape))
    assert list(out.shape) == report["outputs"]
