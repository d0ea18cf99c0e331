"""The train, eval and predict commands, called in-process."""

from __future__ import annotations

import json

import numpy as np
import yaml
from _tiny import recipe
from PIL import Image
from sklearn.datasets import load_digits

from torchsmith.cli.main import main


def test_train_eval_predict_commands(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe(optimizer={"lr": 0.02}, train={"epochs": 4, "threads": 1})))
    out = tmp_path / "run"
    assert (
        main(["train", str(path), "--out", str(out), "--quiet", "--json", "--set", "train.plot=false"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["val_acc"] > 0.85 and result["reloaded_acc"] == result["val_acc"]
    assert result["steps"] == 4 * 45

    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert abs(metrics["val_acc"] - result["val_acc"]) < 1e-9 and metrics["epoch"] == 4

    assert main(["eval", str(path), "--checkpoint", str(out / "best.pt")]) == 0
    table = capsys.readouterr().out
    assert "val_acc" in table and "%" in table

    d = load_digits()
    files = []
    for i in (1500, 1501, 1502, 1503):  # held-out-ish digits written as PNG files
        f = tmp_path / f"digit{i}.png"
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), mode="L").save(f)
        files.append(str(f))
    assert main(["predict", "--checkpoint", str(out / "last.pt"), "--top-k", "3", "--json", *files]) == 0
    printed = json.loads(capsys.readouterr().out)  # one object, the predictions a list inside
    assert printed["checkpoint"] == str(out / "last.pt") and printed["top_k"] == 3
    preds = printed["predictions"]
    assert [p["input"] for p in preds] == files
    assert all(len(p["top"]) == 3 and 0 <= p["probability"] <= 1 for p in preds)
    right = sum(p["class"] == str(d.target[i]) for p, i in zip(preds, (1500, 1501, 1502, 1503)))
    assert right >= 3

    assert main(["predict", "--checkpoint", str(out / "last.pt"), files[0]]) == 0
    assert "class" in capsys.readouterr().out


def test_bad_checkpoint_and_missing_input_exit_2(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"nope")
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "last.pt" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), "x.png"]) == 2
    assert "file not found" in capsys.readouterr().err
