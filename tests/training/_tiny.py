"""Tiny models registered for the training tests (fast on 2 CPU cores)."""

from __future__ import annotations

import torch.nn as nn

from torchsmith.zoo import register_model


@register_model("test_tiny_mlp", input_shape=(1, 1, 8, 8), overwrite=True)
def tiny_mlp(num_classes: int = 10, hidden: int = 32, dropout: float = 0.1, in_features: int = 64):
    """Flatten -> Linear -> ReLU -> Dropout -> Linear: a 2.4k-parameter digits classifier."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class _WithUnused(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
        self.spare_head = nn.Linear(64, num_classes)  # never called in forward

    def forward(self, x):
        return self.body(x)


@register_model("test_unused_mlp", input_shape=(1, 1, 8, 8), overwrite=True)
def unused_mlp(num_classes: int = 10):
    """A model with a layer that forward never uses (DDP's unused-parameter trap)."""
    return _WithUnused(num_classes)


def recipe(**sections) -> dict:
    """A tiny digits recipe; keyword arguments update its sections."""
    r = {
        "name": "tiny",
        "seed": 0,
        "model": {"name": "test_tiny_mlp", "kwargs": {}},
        "data": {"kind": "digits", "channels": 1, "batch_size": 32, "val_fraction": 0.2},
        "optimizer": {"name": "Adam", "lr": 0.01},
        "train": {"epochs": 1, "progress": False, "threads": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(r.get(key), dict):
            r[key] = {**r[key], **value}
        else:
            r[key] = value
    return r
