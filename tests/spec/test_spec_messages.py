"""Issue 12's spec messages: each names the parameter, key or line at fault and what was expected."""

from __future__ import annotations

import pytest

from torchsmith.cli.main import main
from torchsmith.errors import SpecError
from torchsmith.spec import build_model, load_spec, validate_spec


def _error(spec, **kwargs) -> str:
    with pytest.raises(SpecError) as info:
        validate_spec(spec, **kwargs)
    return str(info.value)


def test_yaml_merge_key_merges_and_explicit_keys_override():
    text = """
input_shape: [1, 4]
chain:
  a: &a {type: Linear, out_features: 3, bias: false}
  b:
    <<: *a
    out_features: 5
"""
    model = build_model(text)
    assert model.b.out_features == 5 and model.b.bias is None and model.b.in_features == 3
    # a real duplicate is still refused, at its own line
    msg = _error(text + "    out_features: 6\n")
    assert msg.startswith("<spec>:8: chain.b.out_features: duplicate key 'out_features'")


def test_unknown_top_level_key_names_its_own_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("chain:\n  - {type: Linear, in_features: 2, out_features: 3}\nbogus:\n  x: 1\n")
    assert _error(path).startswith(f"{path}:3: bogus: unknown key 'bogus'")


def test_param_override_of_wrong_kind_names_the_parameter(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(
        "params: {width: 4}\ninput_shape: [1, 4]\nchain:\n  - {type: Linear, out_features: '${width * 2}'}\n"
    )
    assert main(["build", str(path), "--check", "--param", "width=abc"]) == 2
    err = capsys.readouterr().err
    assert "parameter 'width'" in err and "expected a number" in err and "Mult" not in err
    assert f"{path}:1: params.width" in err
    assert validate_spec(path, params={"width": 8})["parameters"] == 4 * 16 + 16


def test_parameter_limit_names_the_cli_flag(tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text("input_shape: [1, 4]\nchain:\n  - {type: Linear, out_features: 8}\n")
    assert main(["build", str(path), "--check", "--max-parameters", "3"]) == 2
    assert "--max-parameters" in capsys.readouterr().err
    assert main(["build", str(path), "--check", "--max-parameters", "0"]) == 0


@pytest.mark.parametrize(
    "layer",
    ["Conv2d, in_channels: 5, out_channels: 4, kernel_size: 3", "Linear, in_features: 5, out_features: 2"],
)
def test_input_size_mismatch_says_expected_and_actual(layer):
    first = "Conv2d, out_channels: 4, kernel_size: 3" if "Conv" in layer else "Linear, out_features: 4"
    shape = "[1, 3, 8, 8]" if "Conv" in layer else "[1, 3]"
    text = f"input_shape: {shape}\nchain:\n  - {{type: {first}}}\n  - type: {layer.split(',')[0]}\n"
    for arg in layer.split(",")[1:]:
        text += f"    {arg.strip()}\n"
    msg = _error(text)
    name = "in_channels" if "Conv" in layer else "in_features"
    assert msg.startswith(f"<spec>:5: chain[1].{name}: ")
    assert f"expected {name}=5" in msg and "has 4 at" in msg


@pytest.mark.parametrize(
    "text",
    [
        '{"chain": [{"type": "Linear", "in_features": 2, "out_features": 3},]}',
        '# a comment\n{"chain": [{"type": "Linear", "in_features": 2, "out_features": 3}]}',
        '{"chain": [{"type": "Linear", "in_features": 2, "out_features": NaN}]}',
    ],
)
def test_json_file_is_strict_json(tmp_path, text):
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(SpecError, match=r"s\.json(:\d+)?: not valid JSON"):
        load_spec(path)
    (tmp_path / "s.yaml").write_text(text.replace("NaN", "3"))
    assert load_spec(tmp_path / "s.yaml")["chain"][0]["type"] == "Linear"  # YAML stays lenient


def test_json_file_keeps_lines_and_refuses_duplicates(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"input_shape": [1, 4],\n "chain": [{"type": "Relu"}]}\n')
    assert _error(path).startswith(f"{path}:2: chain[0].type: unknown type 'Relu'")
    path.write_text('{"chain": [],\n "chain": ["ReLU"]}\n')
    assert "duplicate key 'chain'" in _error(path)


@pytest.mark.parametrize(
    "op", ["{op: reshape, shape: [6, 4]}", "{op: reshape, shape: [-1, 4]}", "{op: flatten, start_dim: 0}"]
)
def test_op_that_folds_the_batch_is_refused(op):
    text = (
        f"input_shape: [2, 3, 4]\ngraph:\n  nodes:\n    r: {op}\n    fc: {{type: Linear, out_features: 2}}\n"
    )
    msg = _error(text)
    assert msg.startswith("<spec>:4: graph.nodes.r: op ") and "batch dimension" in msg


def test_op_that_keeps_the_batch_is_accepted():
    text = (
        "input_shape: [2, 3, 4]\ngraph:\n  nodes:\n    r: {op: reshape, shape: [-1, 12]}\n"
        "    fc: {type: Linear, out_features: 2}\n"
    )
    assert validate_spec(text)["outputs"] == [2, 2]
