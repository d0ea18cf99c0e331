"""The weights' own metadata at work: their preprocessing becomes a recipe's default data transforms
(and predict's), and their category names label predictions while the model keeps their head.

No test reaches the network: weights are planted in a local ``$TORCH_HOME`` cache, offline.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from _hub_cache import plant
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

import torchsmith
from torchsmith.cli.main import main
from torchsmith.training.data import build_transforms, recipe_transforms
from torchsmith.training.recipe import load_recipe

RESNET18 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
IMAGENET = list(RESNET18.meta["categories"])


def _image(path, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def test_the_weights_preprocessing_is_the_libraries_own():
    """torchvision: the val pipeline made from the weights gives what ``weights.transforms()`` gives;
    timm: the resize is timm's floor(crop / crop_pct), not a rounding of it."""
    r = load_recipe(
        None, ["model.weights=IMAGENET1K_V1", "data.image_size=null", "data.channels=3", "surgery=[]"]
    )
    items = recipe_transforms(r)
    assert items["source"] == "torchvision:resnet18:IMAGENET1K_V1"
    assert items["train_transforms"] == items["val_transforms"]  # train: the same resize/normalize
    x = torch.rand(3, 300, 260)
    ours = build_transforms(items["val_transforms"])(x)
    assert ours.shape == (3, 224, 224)
    assert torch.allclose(ours, RESNET18.transforms()(x), atol=1e-5)

    import timm
    from timm.data import create_transform, resolve_data_config

    from torchsmith.hub import weights_preprocessing

    _, pre = weights_preprocessing("timm:resnet18.a1_in1k", True)
    cfg = resolve_data_config({}, model=timm.create_model("resnet18.a1_in1k", pretrained=False))
    resize = create_transform(**cfg).transforms[0]
    assert pre["resize"] == [resize.size] and pre["interpolation"] == "bicubic"  # 235, not 236


def test_recipe_given_transforms_win_and_the_weights_fill_the_rest():
    base = ["model.weights=DEFAULT", "data.image_size=null", "data.channels=3", "surgery=[]"]
    norm = "{Normalize: {mean: [0.5, 0.4, 0.3], std: [0.2, 0.2, 0.2]}}"
    own = f"data.val_transforms=[{{Resize: {{size: 64}}}}, {norm}]"
    items = recipe_transforms(load_recipe(None, [*base, own, "data.train_transforms=[RandomHorizontalFlip]"]))
    assert items["val_transforms"] == load_recipe(None, [own])["data"]["val_transforms"]  # kept as given
    names = [next(iter(i)) if isinstance(i, dict) else i for i in items["train_transforms"]]
    assert names == ["Resize", "CenterCrop", "RandomHorizontalFlip", "Normalize"]  # augmentation between
    assert any("the recipe's 1" in n for n in items["notes"])
    # data.image_size decides the size: only the normalization comes from the weights (gray: averaged)
    gray = recipe_transforms(load_recipe(None, ["model.weights=DEFAULT"]))
    assert gray["val_transforms"] == [
        {"Normalize": {"mean": [pytest.approx(0.449)], "std": [pytest.approx(0.226)]}}
    ]
    assert recipe_transforms(load_recipe(None, []))["val_transforms"] == []  # no weights: nothing added


def test_a_pretrained_run_prepares_data_and_predictions_from_the_weights(
    tmp_path, offline_cache, monkeypatch
):
    """An image-folder finetune from planted resnet18 weights with no transforms in the recipe: the
    set-up says which transforms came from the weights, and predict on its checkpoint prepares an image
    exactly as torchvision's ``weights.transforms()`` does, naming the folder's classes (a new head:
    never ImageNet's)."""
    from torchsmith.training.api import _model_from_checkpoint

    torch.manual_seed(0)
    plant(offline_cache, monkeypatch, RESNET18, torchvision.models.resnet18())
    files = []
    for c, cls in enumerate(("cat", "dog")):
        (tmp_path / "data" / cls).mkdir(parents=True)
        files += [_image(tmp_path / "data" / cls / f"{i}.png", seed=10 * c + i) for i in range(3)]
    lines: list[str] = []
    sets = [
        "model.weights=IMAGENET1K_V1", "surgery=[{op: set_num_classes, num_classes: 2}]", "init=null",
        "data.kind=image_folder", f"data.root={tmp_path / 'data'}", "data.image_size=null", "data.channels=3",
        "data.batch_size=2", "data.val_fraction=0.34", "train.epochs=1", "train.max_steps=1",
        "train.progress=false", "train.plot=false",
    ]  # fmt: skip
    torchsmith.train(None, out=tmp_path / "run", overrides=sets, log=lines.append)
    text = "\n".join(lines)
    assert "preprocessing from the weights torchvision:resnet18:IMAGENET1K_V1" in text
    assert "data.val_transforms: Resize(size=[256], interpolation=bilinear), CenterCrop(size=[224])" in text

    preds = torchsmith.predict(tmp_path / "run" / "last.pt", files[:2], top_k=2)
    model, _, _ = _model_from_checkpoint(tmp_path / "run" / "last.pt", None, torch.device("cpu"))
    x = pil_to_tensor(Image.open(files[0]))
    with torch.no_grad():
        want = torch.softmax(model(RESNET18.transforms()(x).unsqueeze(0)), dim=1)[0]
    assert preds[0]["probability"] == pytest.approx(want.max().item(), abs=1e-4)
    assert {t["class"] for p in preds for t in p["top"]} == {"cat", "dog"}


def test_predict_names_the_weights_categories_only_while_the_model_has_their_head(
    tmp_path, offline_cache, monkeypatch, capsys
):
    """A saved pretrained classifier predicts ImageNet names (text and --json), prepared by its weights'
    preprocessing; after a new head the same call shows indices, never the old names."""
    torch.manual_seed(0)
    plant(offline_cache, monkeypatch, RESNET18, torchvision.models.resnet18())
    model = torchsmith.create_model("torchvision:resnet18", weights="IMAGENET1K_V1").eval()
    image = _image(tmp_path / "x.png", size=(300, 260))
    saved = torchsmith.save(model, tmp_path / "pretrained.safetensors")
    x = pil_to_tensor(Image.open(image))
    with torch.no_grad():
        want = model(RESNET18.transforms()(x).unsqueeze(0))[0].argmax().item()

    assert main(["predict", "--checkpoint", str(saved), image, "--top-k", "2", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["predictions"]  # one object, a list inside
    assert row["index"] == want and row["class"] == IMAGENET[want]
    assert all(t["class"] == IMAGENET[t["index"]] for t in row["top"])
    assert main(["predict", "--checkpoint", str(saved), image]) == 0
    assert IMAGENET[want] in capsys.readouterr().out

    torchsmith.set_num_classes(model, 5)  # a finetune's new head: the names belonged to the old one
    renamed = torchsmith.predict(torchsmith.save(model, tmp_path / "new_head.safetensors"), [image], top_k=5)
    assert [t["class"] for t in renamed[0]["top"]] == [str(t["index"]) for t in renamed[0]["top"]]

    plain = torchsmith.save(torchsmith.create_model("torchvision:resnet18"), tmp_path / "plain.safetensors")
    with pytest.raises(torchsmith.errors.InputError, match="no preprocessing"):
        torchsmith.predict(plain, [image])  # random weights record no preprocessing: said, not guessed


def test_a_new_timm_head_records_no_categories(offline_cache, monkeypatch):
    """timm builds the new head itself (num_classes=): the in1k names are not recorded for it."""
    from torchsmith._provenance import get_provenance
    from torchsmith.hub import weights_categories, weights_off

    monkeypatch.setenv("HF_HOME", str(offline_cache.parent / "hf"))
    with weights_off():
        new = torchsmith.create_model("timm:resnet18.a1_in1k", pretrained=True, num_classes=4)
        kept = torchsmith.create_model("timm:resnet18.a1_in1k", pretrained=True)
    assert "categories" not in get_provenance(new)["weights"]
    assert weights_categories(new) is None
    assert weights_categories(kept, 1000) == IMAGENET and weights_categories(kept, 999) is None


def test_an_hf_hub_config_gives_the_preprocessing_offline(tmp_path, monkeypatch):
    """``timm:hf-hub:ORG/NAME``: the pretrained_cfg of the repository's config.json, read from an HF
    cache the test builds (offline), is what a recipe's data gets; timm's floor(160 / 0.9) = 177."""
    from torchsmith.hub import weights_preprocessing

    cfg = {
        "architecture": "resnet18",
        "num_classes": 3,
        "pretrained_cfg": {"input_size": [3, 160, 160], "crop_pct": 0.9, "interpolation": "bilinear",
                           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }  # fmt: skip
    repo = tmp_path / "hf" / "hub" / "models--org--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs" / "c0ffee").write_text(json.dumps(cfg))
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").symlink_to("../../blobs/c0ffee")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source, pre = weights_preprocessing("timm:hf-hub:org/tiny", True)
    assert source == "hf-hub:org/tiny"
    assert pre == {
        "resize": [177],
        "crop": [160],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "interpolation": "bilinear",
    }
    r = load_recipe(None, ["model.name=timm:hf-hub:org/tiny", "model.weights=true", "surgery=[]", "init=null",
                           "data.image_size=null", "data.channels=3"])  # fmt: skip
    assert recipe_transforms(r)["val_transforms"][-1] == {"Normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}
