"""S1: the multi-layer perceptron 784-256-10 as an ``nn.Sequential`` of named layers.

>>> import torch
>>> model = mlp()
>>> [name for name, _ in model.named_children()]
['flatten', 'fc1', 'relu1', 'fc2']
>>> model(torch.randn(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

import torch.nn as nn

from torchsmith.blocks import make_act
from torchsmith.errors import InputError
from torchsmith.zoo._entries import register_model

__all__ = ["mlp"]


@register_model("mlp", input_shape=(1, 784))
def mlp(
    in_features: int = 784,
    hidden: int | Sequence[int] = 256,
    num_classes: int = 10,
    act_layer: str = "relu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """MLP 784-256-10 from the seeds' nn.Sequential/OrderedDict example (S1).

    Children are named as the seed's ``OrderedDict`` names them (``fc1``, ``relu1``, ``fc2``); a
    parameter-free ``flatten`` in front accepts images too (``(N, 1, 28, 28)``). ``hidden`` may be
    a list for more layers: ``fc1, relu1, fc2, relu2, ..., fcN``.
    """
    widths = [hidden] if isinstance(hidden, int) else list(hidden)
    if any(int(w) <= 0 for w in [in_features, *widths, num_classes]):
        raise InputError(
            f"mlp: layer widths must be positive, got in_features={in_features}, hidden={hidden}, "
            f"num_classes={num_classes}"
        )
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    sizes = [in_features, *widths]
    for i, (a, b) in enumerate(itertools.pairwise(sizes), start=1):
        layers.append((f"fc{i}", nn.Linear(a, b)))
        act = make_act(act_layer)
        if act is not None:
            layers.append((f"relu{i}" if act_layer == "relu" else f"act{i}", act))
        if dropout:
            layers.append((f"dropout{i}", nn.Dropout(dropout)))
    layers.append((f"fc{len(sizes)}", nn.Linear(sizes[-1], num_classes)))
    return nn.Sequential(OrderedDict(layers))
