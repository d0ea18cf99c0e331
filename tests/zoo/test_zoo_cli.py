"""``torchsmith zoo`` and ``torchsmith summary``: JSON that parses, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from torchsmith.cli.main import main
from torchsmith.zoo import list_models


def _one_line_error(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"torchsmith {command}: error: ") and "Traceback" not in err
    return lines[0]


def test_zoo_json_parses_and_counts_parameters(capsys):
    assert main(["zoo", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [i["name"] for i in items] == list_models()
    by_name = {i["name"]: i for i in items}
    assert by_name["resnet50"]["params"] == 25_557_032
    assert by_name["mlp"]["params"] == 784 * 256 + 256 + 256 * 10 + 10
    assert by_name["unet"]["input_shape"] == [1, 3, 128, 128]
    assert all(i["description"] for i in items)


def test_zoo_table_and_pattern(capsys):
    assert main(["zoo", "resnet*"]) == 0
    out = capsys.readouterr().out
    assert "25,557,032" in out and "resnet152" in out and "unet" not in out
    assert main(["zoo", "vgg*"]) == 2
    line = _one_line_error(capsys.readouterr().err, "zoo")
    assert "no zoo model matches 'vgg*'" in line and "resnet50" in line


def test_summary_json(capsys):
    assert main(["summary", "resnet18", "--input-shape", "1,3,32,32", "--depth", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "resnet18" and data["total_params"] == 11_689_512
    assert data["rows"][-1]["name"] == "fc" and data["rows"][-1]["output_shape"] == [1, 1000]


def test_summary_table_with_model_arguments(capsys):
    assert main(["summary", "mlp", "--arg", "num_classes=3", "--arg", "hidden=[16]"]) == 0
    out = capsys.readouterr().out
    assert "[1, 3]" in out and f"Total params: {784 * 16 + 16 + 16 * 3 + 3:,}" in out
    # a model argument named like a command option (resnet_fpn's depth) is the model's
    argv = [
        "summary",
        "resnet_fpn",
        "--no-forward",
        "--depth",
        "1",
        "--arg",
        "depth=18",
        "--arg",
        "trainable_layers=0",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Total params: 13,783,616" in out and "Trainable params: 2,607,104" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["summary", "resnet18", "--input-shape", "1,3,a,b"], "expected positive integers"),
        (["summary", "resnet18", "--input-shape", "1,3,32"], "takes 4, like 1,3,224,224"),
        (["summary", "resnet18", "--input-shape", "1,4,32,32"], "4 channels.*looks like 1,3,224,224"),
        (["summary", "simple_cnn", "--input-shape", "1,3,8,8"], "at least 10, got \\(1, 3, 8, 8\\)"),
        (["summary", "resnet50x"], "unknown model 'resnet50x'.*valid zoo models: mlp, resnet18, resnet34"),
        (["summary", "torchvision:resnet5"], "unknown torchvision model 'resnet5'.*did you mean"),
        (["summary", "mlp", "--arg", "num_class=3"], "no argument 'num_class'.*did you mean 'num_classes'"),
        (["summary", "mlp", "--arg", "oops"], "expected KEY=VALUE"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, expected):
    import re

    assert main(argv) == 2
    line = _one_line_error(capsys.readouterr().err, "summary")
    assert re.search(expected, line), line


def test_bad_model_name_in_a_real_process():
    proc = subprocess.run(
        [sys.executable, "-m", "torchsmith.cli.main", "summary", "resnt50"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr, "summary")
    assert "did you mean 'resnet50'" in line and "valid zoo models:" in line
    assert proc.stdout == ""
