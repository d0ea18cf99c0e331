"""A torch hub cache the tests build: weights planted under torchvision's file name, nothing fetched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def plant(folder: Path, monkeypatch, enum, model: torch.nn.Module) -> Path:
    """Save ``model``'s weights as torchvision names them (``stem-<sha[:8]>.pth``); point ``enum`` there."""
    tmp = folder / "tmp.pth"
    torch.save(model.state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    stem = os.path.basename(enum.url).rsplit("-", 1)[0]
    path = folder / f"{stem}-{digest[:8]}.pth"
    os.replace(tmp, path)
    monkeypatch.setattr(enum.value, "url", f"https://download.pytorch.org/models/{path.name}")
    return path
