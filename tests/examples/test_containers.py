"""The seed container examples S1-S4 run and show what they claim (imported in-process, not spawned)."""

from __future__ import annotations

import pytest

from example_modules import load_example


def test_s1_sequential(capsys):
    r = load_example("containers", "s1_sequential").main()
    assert r["names"] == ["0", "1", "2"] and r["named"] == ["fc1", "relu1", "fc2"]
    assert r["output_shape"] == (4, 10)
    assert r["params"] == 784 * 256 + 256 + 256 * 10 + 10 == 203_530
    assert r["same"] and r["same_as_zoo"]
    assert "(fc1): Linear(in_features=784, out_features=256, bias=True)" in capsys.readouterr().out


def test_s2_my_sequential(capsys):
    r = load_example("containers", "s2_my_sequential").main()
    assert r["conv_names"] == ["conv1", "relu1", "conv2", "relu2"]
    assert r["conv_shape"] == (1, 64, 24, 24) and r["conv_same"]
    assert r["mlp_names"] == ["0", "1", "2"] and r["mlp_shape"] == (2, 10) and r["mlp_same"]
    assert r["state_dict_keys"] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    assert "same as nn.Sequential: True" in capsys.readouterr().out


def test_s3_module_list(capsys):
    r = load_example("containers", "s3_module_list").main()
    assert r["param_shapes"] == [(256, 784), (256,), (10, 256), (10,)]
    assert r["out_shape"] == (1, 10) and r["first_shape"] == (1, 256) and r["last_shape"] == (1, 10)
    assert r["rev_shape"] == (1, 10)
    assert r["rev_keys"][0] == "layers.0.weight"  # registered first, used last
    assert r["repeated"] == 3
    assert "Linear(in_features=256, out_features=10, bias=True)" in capsys.readouterr().out


def test_s4_module_dict(capsys):
    r = load_example("containers", "s4_module_dict").main()
    assert r["order"] == ["linear", "act", "output"]
    assert r["shapes"] == [(1, 256), (1, 256), (1, 10)]
    assert r["attr_is_item"]
    assert r["keys"] == [
        "ModuleDict.linear.weight",
        "ModuleDict.linear.bias",
        "ModuleDict.output.weight",
        "ModuleDict.output.bias",
    ]
    assert "layer: output  output: (1, 10)" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["s1_sequential", "s2_my_sequential", "s3_module_list", "s4_module_dict"])
def test_every_example_has_a_docstring_and_main(name):
    module = load_example("containers", name)
    assert module.__doc__ and "Run: " in module.__doc__ and callable(module.main)
