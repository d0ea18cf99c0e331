"""``torchsmith build``: in-process CLI runs on every example spec, JSON output, saving, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import torchsmith
from torchsmith.cli.main import main

SPECS = Path(__file__).resolve().parents[2] / "examples" / "specs"
SMALL = {
    "s2_my_sequential": ["--input-shape", "1,3,16,16"],
    "s5_simple_cnn": ["--input-shape", "1,3,32,32"],
    "s6_resnet34": ["--input-shape", "1,3,32,32", "--check"],
    "s8_resnet_fpn": [
        "--param", "backbone=torchvision:resnet18", "--param", "channels=[64, 128, 256, 512]",
        "--param", "width=8", "--input-shape", "1,3,32,32",
    ],
    "s9_unet": ["--param", "width=2", "--input-shape", "1,3,32,32"],
    "s10_unet": ["--param", "width=2", "--param", "bilinear=false", "--input-shape", "1,3,19,23"],
    "s12_extra_input": [
        "--param", "backbone=torchvision:squeezenet1_1",
        "--input-shape", "x=2,3,32,32", "--input-shape", "add_variable=2",
    ],
    "s13_extra_output": ["--param", "backbone=torchvision:squeezenet1_1", "--input-shape", "x=2,3,32,32"],
}  # fmt: skip


@pytest.mark.parametrize("spec", sorted(p.stem for p in SPECS.glob("*.yaml")))
def test_build_every_example(spec, capsys):
    rc = main(["build", str(SPECS / f"{spec}.yaml"), "--json", *SMALL.get(spec, [])])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads(out)
    assert report["parameters"] > 0 and report["outputs"]
    assert report["built"] is ("--check" not in SMALL.get(spec, []))
    assert report["spec"]["name"] == spec


def test_build_table_output(capsys):
    rc = main(["build", str(SPECS / "s10_unet.yaml"), "--param", "width=2", "--input-shape", "1,3,21,17"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert out.splitlines()[0] == "s10_unet: inputs x (1, 3, 21, 17) -> outputs (1, 2, 21, 17)"
    assert "up1    UpBilinear" in out and "parameters:" in out and "inferred from shapes:" in out


def test_build_saves_and_load_model_rebuilds(tmp_path, capsys):
    if not hasattr(torchsmith, "load_model"):  # pragma: no cover
        pytest.skip("the checkpoint concern is missing")
    out_path = tmp_path / "extra.safetensors"
    args = ["--param", "backbone=torchvision:squeezenet1_1", "--param", "num_classes=4"]
    rc = main(["build", str(SPECS / "s12_extra_input.yaml"), *args, "-o", str(out_path)])
    assert rc == 0, capsys.readouterr().err
    model = torchsmith.load_model(out_path).eval()
    x, extra = torch.randn(2, 3, 32, 32), torch.randn(2)
    assert model(x, extra).shape == (2, 4)
    assert model.fc_add.in_features == 1001


def test_build_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input_shape: [1, 4]\nchain:\n  - {type: Linaer, out_features: 2}\n")
    assert main(["build", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"torchsmith build: error: {bad}:3: chain[0].type: unknown type 'Linaer' (did you mean 'Linear'"
    )
    assert err.count("\n") == 1
    assert main(["build", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the spec file" in capsys.readouterr().err
    assert main(["build", str(SPECS / "s1_mlp.yaml"), "--input-shape", "1,-4"]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["build", str(SPECS / "s1_mlp.yaml"), "--param", "nope=1"]) == 2
    assert "unknown spec parameter 'nope'" in capsys.readouterr().err
    assert main(["build", str(SPECS / "s1_mlp.yaml"), "--max-parameters", "1000"]) == 2
    assert "the model would have 203,530 parameters" in capsys.readouterr().err
