"""Recipes as hostile text and as people type them: limits while parsing, FILE:LINE, names by case.

Every refusal is a RecipeError (CLI exit 2) naming the file and line, never "internal error".
"""

from __future__ import annotations

import pytest

from torchsmith.cli.main import main
from torchsmith.errors import RecipeError
from torchsmith.training.recipe import load_recipe

HOSTILE = {
    "long-int": ("name: x\ntrain:\n  epochs: " + "9" * 100_000 + "\n", 3),
    "long-float": ("name: x\noptimizer:\n  lr: 0." + "1" * 100_000 + "\n", 3),
    "long-neg": ("seed: -" + "7" * 5_000 + "\n", 1),
    "long-exp": ("optimizer:\n  lr: 1e" + "9" * 1_000 + "\n", 2),
    "flow-nesting": ("name: x\nsurgery: " + "[" * 50_000 + "]" * 50_000 + "\n", 2),
    "map-nesting": ("name: x\ninit: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n", 2),
    "block-nesting": ("name: x\nsurgery:\n" + "- " * 50_000 + "x\n", 3),
    "alias-bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
        None,
    ),
    "python-tag": ("name: !!python/object/apply:os.system [echo hi]\n", 1),
    "duplicate-key": ("name: a\nseed: 1\nname: b\n", 3),
    "binary": ("name: !!binary aGVsbG8=\n", 1),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_recipe_text_is_a_clean_error_with_file_and_line(tmp_path, capsys, kind):
    text, line = HOSTILE[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:"), msg[:300]
    if line is not None:
        assert msg.startswith(f"{path}:{line}:"), msg[:300]
    assert len(msg) < 2000  # the 100,000 digits are not echoed
    assert main(["train", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err and str(path) in err


def test_a_huge_recipe_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.write(b"name: x\n")
        f.truncate(50 << 20)
    with pytest.raises(RecipeError, match=r"huge\.yaml.*bytes"):
        load_recipe(path)


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "folder"])
def test_a_recipe_that_is_not_a_regular_file_is_never_opened(tmp_path, special):
    import os

    if special == "fifo":
        path = tmp_path / "r.yaml"
        os.mkfifo(path)
    elif special == "folder":
        path = tmp_path / "r.yaml"
        path.mkdir()
    else:
        path = special
    with pytest.raises(RecipeError, match="regular file"):
        load_recipe(path)


_MODEL = "model:\n  name: torchvision:resnet18\n"
_BASE = {"name": "x", "model": {"name": "torchvision:resnet18"}}

# (YAML text, the field the error names, its line)
FIELD_ERRORS = [
    ("name: x\ndata:\n  kind: digits\n  batch_size: 0\n", "data.batch_size", 4),
    ("name: x\ndata:\n  knd: digits\n", "data.knd", 3),
    ("name: x\n\n\noptimizer:\n  name: Adamm\n", "optimizer.name", 5),
    ("name: x\nloss:\n  name: CrossEntropy\n", "loss.name", 3),
    ("train:\n  epochs: 1\n  precision: fp8\n", "train.precision", 3),
    ("name: x\nscheduler:\n  name: cosinus\n", "scheduler.name", 3),
    (
        "seed: 0\ndata:\n  kind: csv\n  root: .\n  val_fraction: 2.0\n  csv: r.yaml\n  list: r.yaml\n",
        "data.val_fraction",
        5,
    ),
]


@pytest.mark.parametrize(("text", "field", "line"), FIELD_ERRORS)
def test_recipe_errors_carry_file_and_line(tmp_path, text, field, line):
    path = tmp_path / "r.yaml"
    path.write_text(text + _MODEL)  # after the lines counted
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}:{line}: recipe field '{field}'"), str(info.value)


def test_a_field_set_on_the_command_line_has_no_file_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 2\n" + _MODEL)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["train.epochs=0"])
    assert str(info.value).startswith("recipe field 'train.epochs'")


# Names as people type them: (field, typed, what the recipe then holds)
CASE = [
    ("optimizer.name", "adamw", "AdamW"),
    ("optimizer.name", "ADAMW", "AdamW"),
    ("optimizer.name", "sgd", "SGD"),
    ("optimizer.name", "Sgd", "SGD"),
    ("optimizer.name", "rmsprop", "RMSprop"),
    ("optimizer.name", "lbfgs", "LBFGS"),
    ("loss.name", "crossentropyloss", "CrossEntropyLoss"),
    ("loss.name", "mseloss", "MSELoss"),
    ("scheduler.name", "onecyclelr", "OneCycleLR"),
    ("scheduler.name", "cosineannealinglr", "CosineAnnealingLR"),
    ("scheduler.name", "steplr", "StepLR"),
]


@pytest.mark.parametrize(("field", "typed", "canonical"), CASE)
def test_names_match_case_insensitively(field, typed, canonical):
    extra = ["scheduler.args={step_size: 1}"] if canonical == "StepLR" else []
    r = load_recipe(_BASE, [f"{field}={typed}", *extra])
    section, key = field.split(".")
    assert r[section][key] == canonical


@pytest.mark.parametrize(
    ("field", "typed", "suggested"),
    [
        ("optimizer.name", "adamm", "Adam"),
        ("optimizer.name", "sgdd", "SGD"),
        ("optimizer.name", "adamww", "AdamW"),
        ("loss.name", "crossentropylos", "CrossEntropyLoss"),
        ("scheduler.name", "onecyclr", "OneCycleLR"),
    ],
)
def test_a_near_miss_suggests_the_case_folded_match(field, typed, suggested):
    with pytest.raises(RecipeError, match=f"did you mean .*'{suggested}'"):
        load_recipe(_BASE, [f"{field}={typed}"])
