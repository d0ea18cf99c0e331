"""Data: image folders, the seed's image dir + CSV + list layout, bad samples, reproducible augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import recipe
from PIL import Image
from sklearn.datasets import load_digits

from torchsmith.errors import InputError
from torchsmith.training import load_recipe, train
from torchsmith.training.data import ResumableSampler, build_datasets


def _digit_png(path, image):
    Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(path)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images, d.target


def _seed_layout(root, digits, n=60, bad=()):
    """image dir + labels.csv (Image_index first column = label, like seed 004) + train/val lists."""
    images, target = digits
    (root / "images").mkdir(parents=True)
    rows = ["label,Image_index"]
    names = []
    for i in range(n):
        name = f"img{i:03d}.png"
        _digit_png(root / "images" / name, images[i])
        names.append(name)
        if name not in bad:
            rows.append(f"{target[i]},{name}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "train.txt").write_text("\n".join(names[: n - 20]) + "\n")
    (root / "val.txt").write_text("\n".join(names[n - 20 :]) + "\n")
    return names


def _csv_recipe(root, **data):
    return recipe(
        data={
            "kind": "csv",
            "root": str(root / "images"),
            "csv": str(root / "labels.csv"),
            "list": str(root / "train.txt"),
            "val_list": str(root / "val.txt"),
            "image_size": 8,
            **data,
        },
        train={"epochs": 1, "progress": False, "plot": False, "threads": 1},
    )


def test_seed_csv_layout_trains_and_matches_the_digits(tmp_path, digits):
    _seed_layout(tmp_path, digits)
    r = load_recipe(_csv_recipe(tmp_path, label_column=0))
    train_ds, val_ds = build_datasets(r)
    assert len(train_ds) == 40 and len(val_ds) == 20
    x, y = train_ds[3]
    assert x.shape == (1, 8, 8) and y == int(digits[1][3])
    expected = torch.from_numpy((digits[0][3] * 255 / 16).astype(np.uint8) / 255.0).float()
    torch.testing.assert_close(x[0], expected)
    res = train(r, out=tmp_path / "run", log=None)
    assert res.history[-1]["val_samples"] == 20


def test_missing_label_names_the_list_file_line_or_is_skipped(tmp_path, digits):
    _seed_layout(tmp_path, digits, bad=("img005.png",))
    with pytest.raises(InputError, match=r"train\.txt line 6: image 'img005\.png' has no row in label file"):
        build_datasets(load_recipe(_csv_recipe(tmp_path)))
    train_ds, _ = build_datasets(load_recipe(_csv_recipe(tmp_path, on_bad_sample="skip")))
    assert len(train_ds) == 39
    assert train_ds.skipped == [("img005.png", f"no label in {tmp_path / 'labels.csv'}")]


def test_image_folder_with_a_corrupt_file(tmp_path, digits):
    images, target = digits
    for i in range(30):
        folder = tmp_path / "data" / f"class_{target[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        _digit_png(folder / f"{i}.png", images[i])
    broken = tmp_path / "data" / "class_0" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = recipe(data={"kind": "image_folder", "root": str(tmp_path / "data"), "val_fraction": 0.2})
    with pytest.raises(InputError, match=r"broken\.png: cannot be read.*on_bad_sample: skip"):
        build_datasets(load_recipe(r))
    r["data"]["on_bad_sample"] = "skip"
    train_ds, val_ds = build_datasets(load_recipe(r))
    assert len(train_ds) + len(val_ds) == 30
    assert [p for p, _ in train_ds.skipped] == [str(broken)]
    assert train_ds.classes == sorted({f"class_{t}" for t in target[:30]})


def test_random_transforms_are_reproducible_per_epoch_and_index():
    r = load_recipe(recipe(data={"train_transforms": [{"RandomAffine": {"degrees": 30}}]}))
    a, _ = build_datasets(r)
    b, _ = build_datasets(r)
    torch.manual_seed(123)
    x1 = a[7][0]
    torch.manual_seed(999)  # the global stream does not matter...
    assert torch.equal(x1, b[7][0])
    state = torch.get_rng_state()
    a.set_epoch(1)
    assert not torch.equal(x1, a[7][0])  # ...the epoch does
    assert torch.equal(state, torch.get_rng_state())  # and the global stream is left alone


def test_split_is_reproducible_and_disjoint():
    r = load_recipe(recipe())
    t1, v1 = build_datasets(r)
    t2, v2 = build_datasets(r)
    assert t1.items == t2.items and v1.items == v2.items
    assert not set(t1.items) & set(v1.items)
    assert len(v1) == 359


def test_sampler_ranks_partition_the_global_batches():
    single = list(ResumableSampler(64, shuffle=True, seed=3))
    r0 = list(ResumableSampler(64, shuffle=True, seed=3, rank=0, world_size=2))
    r1 = list(ResumableSampler(64, shuffle=True, seed=3, rank=1, world_size=2))
    for b in range(4):  # global batch 16 = 8 per rank
        assert sorted(r0[8 * b : 8 * b + 8] + r1[8 * b : 8 * b + 8]) == sorted(single[16 * b : 16 * b + 16])
    s = ResumableSampler(64, shuffle=True, seed=3)
    s.set_epoch(0, start=40)
    assert list(s) == single[40:] and len(s) == 24
