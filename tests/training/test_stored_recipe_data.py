"""A checkpoint's stored recipe is data: eval/predict read only what it names, safely, and say so.

Hostile variants of a downloaded checkpoint's recipe: data paths naming a FIFO, a device, another
user's file, a huge file, a file where a folder belongs; each is refused (exit 2) before anything is
read, no message quotes the file, and ``--data`` evaluates on other data instead. Also: ``eval
RECIPE --checkpoint`` with ``auto`` sizes takes the sizes the run resolved.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from _tiny import recipe
from PIL import Image
from sklearn.datasets import load_digits

from torchsmith.cli.main import main
from torchsmith.training import evaluate, train
from torchsmith.training.checkpointing import load_checkpoint, save_checkpoint

SECRET = "SECRET-TOKEN-0451"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stored")
    r = recipe(
        model={"name": "test_tiny_mlp", "kwargs": {"num_classes": "auto", "in_features": "auto"}},
        data={"limit": 96},
        train={"epochs": 1, "progress": False, "plot": False, "threads": 1},
    )
    path = root / "auto.yaml"
    path.write_text(yaml.safe_dump(r))
    train(path, out=root / "run", log=None)
    return path, root / "run" / "last.pt"


def _with_stored_data(ckpt, tmp_path, **data) -> str:
    """A copy of the checkpoint whose stored recipe names other data (what a hostile file can do)."""
    state = load_checkpoint(ckpt)
    state.pop("format")
    r = json.loads(state["recipe"])
    r["data"].update(data)
    state["recipe"] = json.dumps(r)
    out = tmp_path / "downloaded.pt"
    save_checkpoint(out, state)
    return str(out)


def _secret_file(tmp_path) -> str:
    p = tmp_path / "private.txt"
    p.write_text(f"{SECRET},other\nrow-{SECRET},1\n")
    return str(p)


def _hostile(kind: str, tmp_path) -> dict:
    if kind == "fifo-csv":
        os.mkfifo(tmp_path / "fifo")
        return {
            "kind": "csv",
            "csv": str(tmp_path / "fifo"),
            "root": str(tmp_path),
            "list": _secret_file(tmp_path),
        }
    if kind == "device-csv":
        return {"kind": "csv", "csv": "/dev/zero", "root": str(tmp_path), "list": _secret_file(tmp_path)}
    if kind == "device-list":
        p = tmp_path / "labels.csv"
        p.write_text("Image_index,label\na.png,1\n")
        return {"kind": "csv", "csv": str(p), "root": str(tmp_path), "list": "/dev/urandom"}
    if kind == "secret-csv":  # a regular file that is not a label file: its first line must not be echoed
        return {
            "kind": "csv",
            "csv": _secret_file(tmp_path),
            "root": str(tmp_path),
            "list": _secret_file(tmp_path),
        }
    if kind == "secret-list":  # a label file, and someone's file as the list of images
        p = tmp_path / "labels.csv"
        p.write_text("Image_index,label\na.png,1\n")
        return {"kind": "csv", "csv": str(p), "root": str(tmp_path), "list": _secret_file(tmp_path)}
    if kind == "huge-csv":
        p = tmp_path / "huge.csv"
        with open(p, "wb") as f:
            f.truncate(300 << 20)  # sparse: no disk used
        return {"kind": "csv", "csv": str(p), "root": str(tmp_path), "list": _secret_file(tmp_path)}
    if kind == "device-root":
        return {"kind": "image_folder", "root": "/dev/null"}
    if kind == "file-root":
        return {"kind": "image_folder", "root": _secret_file(tmp_path)}
    if kind == "missing-root":
        return {"kind": "image_folder", "root": str(tmp_path / "nowhere")}
    raise AssertionError(kind)


KINDS = [
    "fifo-csv",
    "device-csv",
    "device-list",
    "secret-csv",
    "secret-list",
    "huge-csv",
    "device-root",
    "file-root",
    "missing-root",
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_stored_recipes_hostile_data_is_refused_unquoted(run, tmp_path, capsys, kind):
    _, ckpt = run
    hostile = _with_stored_data(ckpt, tmp_path, **_hostile(kind, tmp_path))
    assert main(["eval", "--checkpoint", hostile]) == 2
    err = capsys.readouterr().err
    assert SECRET not in err and "internal error" not in err and "Traceback" not in err
    first = next(ln for ln in err.splitlines() if ln.strip())
    assert "stored recipe" in first  # said before anything was read (names it, or says it is unusable)
    assert "--data" in err and hostile in err


@pytest.mark.parametrize("kind", ["fifo-csv", "missing-root", "secret-list"])
def test_data_overrides_the_stored_recipe(run, tmp_path, capsys, kind):
    _, ckpt = run
    hostile = _with_stored_data(ckpt, tmp_path, **_hostile(kind, tmp_path))
    d = load_digits()
    folder = tmp_path / "mine"
    for i in range(30):
        sub = folder / str(d.target[i])
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), mode="L").save(sub / f"{i}.png")
    assert main(["eval", "--checkpoint", hostile, "--data", str(folder), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics.get("samples", 30) == 30
    assert 0.0 <= metrics["val_acc"] <= 1.0


def test_eval_with_a_recipe_of_auto_sizes(run, capsys):
    path, ckpt = run
    metrics = evaluate(path, ckpt, log=None)  # was "invalid literal for int()"
    assert 0.0 <= metrics["val_acc"] <= 1.0
    assert main(["eval", str(path), "--checkpoint", str(ckpt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_acc"] == metrics["val_acc"]


def test_predict_refuses_a_stored_spec_that_is_a_device(run, tmp_path, capsys):
    _, ckpt = run
    state = load_checkpoint(ckpt)
    state.pop("format")
    r = json.loads(state["recipe"])
    r["model"] = {"name": None, "kwargs": {}, "weights": None, "spec": "/dev/zero"}
    state["recipe"] = json.dumps(r)
    save_checkpoint(tmp_path / "spec.pt", state)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(img)
    assert main(["predict", "--checkpoint", str(tmp_path / "spec.pt"), str(img)]) == 2
    err = capsys.readouterr().err
    assert "model.spec" in err and "/dev/zero" in err and "internal error" not in err
    assert torch.is_tensor(load_checkpoint(ckpt)["model"]["1.weight"])


@pytest.mark.parametrize("bad", ["bomb", "damaged", "fifo"])
def test_predict_exits_2_naming_a_bad_image(run, tmp_path, capsys, bad):
    from test_image_inputs import _png_header_only

    _, ckpt = run
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(good)
    path = tmp_path / f"{bad}.png"
    if bad == "bomb":
        _png_header_only(path, 12000, 12000)
    elif bad == "damaged":
        path.write_bytes(good.read_bytes()[:30])
    else:
        os.mkfifo(path)
    assert main(["predict", "--checkpoint", str(ckpt), str(good), str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "internal error" not in err
