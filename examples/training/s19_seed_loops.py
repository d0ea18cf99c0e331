"""S19: seed 004's Dataset/DataLoader and train/val loops, with trap 12 fixed, then the same as a recipe.

Seed 004 (§3.3, §3.7) reads images listed in a text file, looks their labels up in a CSV, and trains
with two loops. Its loops have two bugs (trap 12), both silent until they are not:

* ``loss = criterion(label, output)``: the arguments are swapped. CrossEntropyLoss wants
  ``(output, label)``; with integer labels first it fails, with float targets it computes nonsense.
* ``running_accu += ...`` in ``val`` is never initialised, so the first batch raises NameError
  (or, at module level, silently keeps adding to a stale global).

Below: the seed's code with both fixed (marked FIX), run on the bundled digits written out as PNG
files in the seed's layout; then the same training as a torchsmith recipe (``data.kind: csv``).

    .venv/bin/python examples/training/s19_seed_loops.py
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T


def write_seed_layout(root: Path, n: int = 600) -> None:
    """Digits as PNG files + labels.csv (label first, Image_index second) + train/val lists."""
    d = load_digits()
    (root / "images").mkdir(parents=True)
    names = []
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "Image_index"])
        for i in range(n):
            name = f"{i:04d}.png"
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), mode="L").save(root / "images" / name)
            w.writerow([int(d.target[i]), name])
            names.append(name)
    (root / "train.txt").write_text("\n".join(names[: int(0.8 * n)]) + "\n")
    (root / "val.txt").write_text("\n".join(names[int(0.8 * n) :]) + "\n")


class MyDataset(Dataset):
    """The seed's MyDataset (pandas replaced by the csv module; labels returned as ints)."""

    def __init__(self, data_dir, info_csv, image_list, transform=None):
        with open(info_csv, newline="") as f:
            self.label_info = {row["Image_index"]: int(row["label"]) for row in csv.DictReader(f)}
        with open(image_list) as f:  # the seed left this file open
            self.image_file = f.readlines()
        self.data_dir = data_dir
        self.transform = transform

    def __getitem__(self, index):
        image_name = self.image_file[index].strip("\n")
        label = self.label_info[image_name]
        image = Image.open(os.path.join(self.data_dir, image_name)).convert("L")
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __len__(self):
        return len(self.image_file)


def seed_loops(root: Path, epochs: int = 8) -> float:
    torch.manual_seed(0)
    tf = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True)])
    train_data = MyDataset(root / "images", root / "labels.csv", root / "train.txt", tf)
    val_data = MyDataset(root / "images", root / "labels.csv", root / "val.txt", tf)
    train_loader = torch.utils.data.DataLoader(train_data, batch_size=32, shuffle=True, drop_last=True)
    val_loader = torch.utils.data.DataLoader(val_data, batch_size=32, shuffle=False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def train(epoch):
        model.train()
        train_loss = 0
        for data, label in train_loader:
            optimizer.zero_grad()
            output = model(data)
            loss = criterion(output, label)  # FIX (trap 12): the seed wrote criterion(label, output)
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * data.size(0)
        train_loss = train_loss / len(train_loader.dataset)
        print(f"Epoch: {epoch} \tTraining Loss: {train_loss:.6f}")

    def val(epoch):
        model.eval()
        val_loss = 0
        running_accu = 0  # FIX (trap 12): the seed never initialised it
        with torch.no_grad():
            for data, label in val_loader:
                output = model(data)
                preds = torch.argmax(output, 1)
                loss = criterion(output, label)
                val_loss += loss.item() * data.size(0)
                running_accu += torch.sum(preds == label).item()
        val_loss = val_loss / len(val_loader.dataset)
        accuracy = running_accu / len(val_loader.dataset)
        # FIX: the seed printed "Training Loss" here too
        print(f"Epoch: {epoch} \tValidation Loss: {val_loss:.6f} \tAccuracy: {accuracy:.3f}")
        return accuracy

    for epoch in range(1, epochs + 1):
        train(epoch)
        accuracy = val(epoch)
    return accuracy


def as_recipe(root: Path, epochs: int = 8) -> float:
    """The same data and loops as one torchsmith recipe (model.name: zoo, torchvision: or timm: names)."""
    import torchsmith

    recipe = {
        "name": "s19",
        "model": {"name": "timm:test_efficientnet", "kwargs": {"num_classes": 10, "in_chans": 1}},
        "data": {"kind": "csv", "root": str(root / "images"), "csv": str(root / "labels.csv"),
                 "list": str(root / "train.txt"), "val_list": str(root / "val.txt"), "channels": 1,
                 "image_column": "Image_index", "label_column": "label", "batch_size": 32, "drop_last": True},
        "optimizer": {"name": "Adam", "lr": 0.01},
        "train": {"epochs": epochs, "progress": False},
    }  # fmt: skip
    result = torchsmith.train(recipe, out=root / "run")
    return result.val_acc


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_seed_layout(root)
        acc = seed_loops(root)
        print(f"seed loops (fixed): validation accuracy {acc:.3f}")
        acc2 = as_recipe(root)
        print(f"torchsmith recipe:  validation accuracy {acc2:.3f}")
