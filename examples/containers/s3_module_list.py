"""S3: ``nn.ModuleList``: append/extend, a forward loop, and layers used out of order.

A ``ModuleList`` only *stores* modules (and registers their parameters); it defines no forward.
The order in the list is not the order of computation: ``forward`` decides. The example builds the
784-256-10 MLP with ``append`` and ``extend``, runs it in a loop, calls single layers directly, and
builds a model whose forward uses its list in reverse order.

Run: ``python examples/containers/s3_module_list.py``
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LoopModel(nn.Module):
    """The seed's ``model``: the list is run front to back."""

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.ModuleList = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.ModuleList:
            x = m(x)
        return x


class ReversedModel(nn.Module):
    """Layers registered as [fc2, relu, fc1] but run as fc1 -> relu -> fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(256, 10), nn.ReLU(), nn.Linear(784, 256)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in (2, 1, 0):
            x = self.layers[i](x)
        return x


def main() -> dict:
    torch.manual_seed(0)
    layers = nn.ModuleList([nn.Linear(784, 256), nn.ReLU()])
    layers.append(nn.Linear(256, 10))
    print(layers[-1])
    net = LoopModel(layers)
    print(net)
    for param in net.parameters():
        print(type(param.data).__name__, tuple(param.size()))

    x = torch.randn(1, 784)
    out = net(x)
    first = net.ModuleList[0](x)  # a single layer, out of the loop
    last = net.ModuleList[2](torch.randn(1, 256))
    print(f"loop output: {tuple(out.shape)}; layer 0 alone: {tuple(first.shape)}")
    print(f"layer 2 alone: {tuple(last.shape)}")

    rev = ReversedModel()
    rev_out = rev(x)
    print(f"reversed-order model output: {tuple(rev_out.shape)}")

    repeated = nn.ModuleList()
    repeated.extend(nn.Linear(16, 16) for _ in range(3))  # one line for a repeated layer
    print(f"extend added {len(repeated)} layers")
    return {
        "param_shapes": [tuple(p.shape) for p in net.parameters()],
        "out_shape": tuple(out.shape),
        "first_shape": tuple(first.shape),
        "last_shape": tuple(last.shape),
        "rev_shape": tuple(rev_out.shape),
        "rev_keys": list(rev.state_dict()),
        "repeated": len(repeated),
    }


if __name__ == "__main__":
    main()
