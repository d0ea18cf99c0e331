"""Recipes fail before training, naming the field: unknown keys, wrong types, missing files, bad names."""

from __future__ import annotations

import pytest
import yaml

from torchsmith.errors import RecipeError
from torchsmith.training import load_recipe
from torchsmith.training.recipe import apply_overrides, default_recipe_path


def test_defaults_fill_and_overrides_apply():
    r = load_recipe({"model": {"name": "torchvision:resnet18"}}, ["train.epochs=3", "optimizer.lr=0.5"])
    assert r["train"]["epochs"] == 3
    assert r["optimizer"]["lr"] == 0.5
    assert r["data"]["kind"] == "digits"
    assert r["loss"]["name"] == "CrossEntropyLoss"


def test_default_recipe_is_valid_and_packaged():
    path = default_recipe_path()
    assert path.is_file()
    r = load_recipe(None)
    assert r.source == str(path)
    assert r["data"]["kind"] == "digits"


@pytest.mark.parametrize(
    ("raw", "overrides", "expected"),
    [
        ({"train": {"epocs": 2}}, [], ["'train.epocs'", "unknown key", "'epochs'"]),
        ({"trian": {}}, [], ["'trian'", "'train'"]),
        ({"train": {"epochs": "ten"}}, [], ["'train.epochs'", "an integer", "'ten'"]),
        ({"train": {"epochs": True}}, [], ["'train.epochs'", "an integer"]),
        ({"train": {"precision": "fp8"}}, [], ["'train.precision'", "fp8", "bf16"]),
        ({"data": {"batch_size": 0}}, [], ["'data.batch_size'", ">= 1"]),
        ({"loss": {"name": "CrossEntropy"}}, [], ["'loss.name'", "'CrossEntropyLoss'"]),
        ({"loss": {"args": {"smoothing": 0.1}}}, [], ["'loss.args.smoothing'", "label_smoothing"]),
        ({"optimizer": {"name": "Adamm"}}, [], ["'optimizer.name'", "'Adam'", "SparseAdam"]),
        (
            {"optimizer": {"name": "SGD", "args": {"momentun": 0.9}}},
            [],
            ["'optimizer.args.momentun'", "'momentum'"],
        ),
        ({"scheduler": {"name": "CosineAnnealing"}}, [], ["'scheduler.name'", "CosineAnnealingLR"]),
        ({"scheduler": {"name": "LambdaLR"}}, [], ["'scheduler.name'", "callables"]),
        (
            {"data": {"train_transforms": ["RandomFlip"]}},
            [],
            ["data.train_transforms[0]", "RandomVerticalFlip"],
        ),
        (
            {"data": {"train_transforms": [{"RandomAffine": {"degree": 3}}]}},
            [],
            ["data.train_transforms[0].degree", "degrees"],
        ),
        ({"data": {"kind": "csv", "root": "."}}, [], ["'data.csv'", "required"]),
        ({"data": {"kind": "folder"}}, [], ["'data.kind'", "image_folder"]),
        ({"model": {"name": None}}, [], ["'model'", "exactly one"]),
        ({}, ["train.epochs"], ["KEY=VALUE"]),
        ({}, ["train.epochs.x=1"], ["'train.epochs'", "an integer"]),
        ({}, ["optimizer.lrr=0.1"], ["'optimizer.lrr'", "'lr'"]),
    ],
)
def test_bad_recipes_name_the_field(raw, overrides, expected):
    raw = {"model": {"name": "torchvision:resnet18"}, **raw} if "model" not in raw else raw
    with pytest.raises(RecipeError) as info:
        load_recipe(raw, overrides)
    for part in expected:
        assert part in str(info.value), (part, str(info.value))


def test_missing_files_are_named_relative_to_the_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump({"model": {"name": "x"}, "data": {"kind": "image_folder", "root": "images"}})
    )
    with pytest.raises(RecipeError, match=r"'data.root': file not found: .*images"):
        load_recipe(path)
    (tmp_path / "images").mkdir()
    assert load_recipe(path)["data"]["root"] == str(tmp_path / "images")


def test_bad_yaml_and_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:\d+: not valid YAML"):  # FILE:LINE, as spec errors
        load_recipe(bad)


def test_override_values_are_yaml():
    assert apply_overrides({}, ["a.b=[1, 5]", "a.c=null", "d=true", "e=1e-3"]) == {
        "a": {"b": [1, 5], "c": None},
        "d": True,
        "e": 0.001,
    }


def test_cli_bad_recipe_exits_2_before_training(tmp_path, capsys):
    from torchsmith.cli.main import main

    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--set", "train.epocs=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.epocs" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing started


def test_default_recipe_builds_through_surgery_and_init():
    from torchsmith.training.build import build_model

    lines: list[str] = []
    model = build_model(load_recipe(None), log=lines.append)
    assert model.conv1.in_channels == 1  # surgery: grayscale input
    assert model.fc.out_features == 10  # surgery: new head
    assert float(model.fc.bias.detach().abs().sum()) == 0.0  # init rule: zeros
    assert any(s.startswith("surgery:") for s in lines) and any(s.startswith("init:") for s in lines)


def test_surgery_freeze_and_param_group_errors_name_the_recipe_field():
    from torchsmith.training.build import build_model, build_param_groups

    base = {"model": {"name": "torchvision:resnet18"}}
    with pytest.raises(RecipeError, match=r"recipe field 'surgery'"):
        build_model(load_recipe({**base, "surgery": [{"op": "set_num_clases", "num_classes": 3}]}))
    r = load_recipe(
        {
            **base,
            "freeze": {"patterns": ["layer1.*", "conv1.*"]},
            "param_groups": [{"match": "fc.*", "lr": 0.1}],
        }
    )
    model = build_model(r)
    assert not model.conv1.weight.requires_grad and model.fc.weight.requires_grad
    groups = build_param_groups(model, r)
    assert any(g["lr"] == 0.1 for g in groups)
    with pytest.raises(RecipeError, match=r"recipe field 'param_groups'"):
        build_param_groups(model, load_recipe({**base, "param_groups": [{"match": "fc.*", "lrr": 1}]}))
