"""``train --check`` validates a recipe, its data and its model without training (exit 0 / 2), and
the docs' ``auto`` sizes claim holds on the digits (docs/training.md, "Sizes from the data")."""

from __future__ import annotations

import json

import pytest
import yaml

from torchsmith.cli.main import main
from torchsmith.training import check_recipe


@pytest.mark.parametrize(
    ("channels", "size", "in_features"),
    [(1, None, 64), (3, None, 192), (1, 16, 256), (3, [6, 10], 180)],
)
def test_auto_in_features_on_the_digits_is_what_the_docs_say(channels, size, in_features):
    lines: list[str] = []
    r = {
        "name": "autodigits",
        "model": {"name": "mlp", "kwargs": {"in_features": "auto", "num_classes": "auto"}},
        "data": {"channels": channels, "image_size": size, "limit": 64},
    }
    summary = check_recipe(r, log=lines.append)
    assert f"model: model.kwargs.in_features auto -> {in_features} (from the training data)" in lines
    assert "model: model.kwargs.num_classes auto -> 10 (from the training data)" in lines
    assert summary["classes"] == 10 and summary["train_samples"] + summary["val_samples"] == 64


def test_check_exits_0_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "ok", "model": {"name": "mlp", "kwargs": {"in_features": 192}}}))
    assert main(["train", str(path), "--check", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["name"] == "ok" and summary["parameters"] > 0 and summary["optimizer"] == "AdamW"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]  # no runs/ folder, no files


@pytest.mark.parametrize(
    ("recipe", "expect"),
    [
        # a model that does not fit the data: was "internal error: mat1 and mat2 shapes cannot be multiplied"
        ({"model": {"name": "mlp", "kwargs": {"in_features": 10}}}, "does not go through the model"),
        ({"model": {"name": "mlp"}, "data": {"channels": 1}}, "in_features: auto"),
        ({"model": {"name": "mlpp"}}, "mlp"),  # a model name with a suggestion
        ({"model": {"name": "mlp", "kwargs": {"num_classes": 3, "in_features": 192}}}, "3 outputs"),
        ({"model": {"name": "mlp"}, "data": {"kind": "image_folder", "root": "."}}, "class sub-folders"),
    ],
)
def test_check_exits_2_naming_the_problem(tmp_path, capsys, monkeypatch, recipe, expect):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", **recipe}))
    code = main(["train", str(path), "--check", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expect in err and "internal error" not in err
    assert not (tmp_path / "runs").exists()
