"""``torchsmith load``: in-process CLI runs on real checkpoint files."""

from __future__ import annotations

import json

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file

from torchsmith.cli.main import main


def _resnet18_file(tmp_path, num_classes: int = 1000):
    path = tmp_path / "resnet18.safetensors"
    sd = torchvision.models.resnet18(num_classes=num_classes).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path, sd


def test_load_json_parses_and_reports_the_new_head(tmp_path, capsys):
    path, sd = _resnet18_file(tmp_path)
    rc = main(["load", "torchvision:resnet18", str(path), "--arg", "num_classes=10", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)
    assert data["ok"] is True and data["match"] == "name" and data["checkpoint"] == str(path)
    assert data["counts"]["loaded"] == len(sd) - 2 and data["counts"]["skipped_shape"] == 2
    assert [e["key"] for e in data["skipped_shape"]] == ["fc.weight", "fc.bias"]
    assert 0.99 < data["fraction"] < 1.0


def test_load_table_and_exit_codes(tmp_path, capsys):
    path, _ = _resnet18_file(tmp_path)
    out_file = tmp_path / "out.safetensors"
    # Less than the asked fraction: the report is still printed, exit 2, nothing saved.
    rc = main(["load", "torchvision:resnet18", str(path), "--arg", "num_classes=10", "--min-fraction", "1",
               "-o", str(out_file)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 2 and not out_file.exists()
    assert "skipped (shape)" in captured.out and "fc.weight" in captured.out
    assert "nothing saved" in captured.out
    assert "less than min_fraction=100.0%; nothing was loaded" in captured.err
    # Nothing in common: refused by default, with a hint.
    other = tmp_path / "other.safetensors"
    save_file({"encoder.w": torch.zeros(2, 2)}, str(other))
    rc = main(["load", "mlp", str(other)])
    captured = capsys.readouterr()
    assert rc == 2 and "unexpected" in captured.out and "nothing was loaded" in captured.err
    assert "rename=" in captured.err and "match='structure'" in captured.err
    # Bad input: exit 2, one line.
    rc = main(["load", "torchvision:resnet181", str(path)])
    assert rc == 2 and "did you mean 'resnet18'" in capsys.readouterr().err


def test_load_by_structure_into_a_zoo_model_and_save(tmp_path, capsys):
    src = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    path = tmp_path / "numbered.safetensors"
    save_file(src.state_dict(), str(path))
    out_file = tmp_path / "mlp.safetensors"
    # a hand-made Sequential is no known architecture: the port cannot be proven, so it is refused ...
    rc = main(["load", "mlp", str(path), "--match", "structure", "-o", str(out_file)])
    captured = capsys.readouterr()
    assert rc == 2 and "not identified" in captured.err and "--allow-unverified" in captured.err
    assert not out_file.exists()
    # ... unless asked for, and then UNVERIFIED is the first line and a warning
    rc = main(["load", "mlp", str(path), "--match", "structure", "--allow-unverified", "-o", str(out_file)])
    captured = capsys.readouterr()
    text = captured.out
    assert rc == 0, text
    assert text.startswith("UNVERIFIED: ") and "UNVERIFIED port" in captured.err
    assert "fc1" in text and "100.00% of the model's parameters" in text and f"saved to {out_file}" in text
    from torchsmith.checkpoint import read_state_dict

    saved = read_state_dict(out_file)
    assert torch.equal(saved["fc1.weight"], src[1].weight) and torch.equal(saved["fc2.bias"], src[3].bias)


def test_load_into_a_spec_file_model(tmp_path, capsys):
    from pathlib import Path

    spec = Path(__file__).resolve().parents[2] / "examples" / "specs" / "s1_mlp_named.yaml"
    src = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    path = tmp_path / "numbered.pt"
    torch.save(src.state_dict(), path)  # a torch zip keeps the key order
    rc = main(["load", str(spec), str(path), "--match", "structure", "--allow-unverified", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["fraction"] == 1.0
    assert data["verified"] is False and "not identified" in data["unverified"]
    assert [(m["target"], m["source"]) for m in data["mapping"]] == [("fc1", "1"), ("fc2", "3")]
