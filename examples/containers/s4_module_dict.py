"""S4: ``nn.ModuleDict``: named layers, one added by key afterwards, a forward over the names.

Like ``ModuleList`` it stores and registers modules without defining a forward, but each layer has
a name: ``net['output']`` and ``net.output`` are the same module, and ``state_dict`` keys carry the
names (``ModuleDict.linear.weight``). Iteration follows insertion order.

Run: ``python examples/containers/s4_module_dict.py``
"""

from __future__ import annotations

import torch
import torch.nn as nn


class DictModel(nn.Module):
    def __init__(self, layers: nn.ModuleDict) -> None:
        super().__init__()
        self.ModuleDict = layers

    def forward(self, x: torch.Tensor, trace: list | None = None) -> torch.Tensor:
        for name, layer in self.ModuleDict.items():  # insertion order
            x = layer(x)
            if trace is not None:
                trace.append((name, tuple(x.shape)))
        return x


def main() -> dict:
    torch.manual_seed(0)
    layers = nn.ModuleDict({"linear": nn.Linear(784, 256), "act": nn.ReLU()})
    layers["output"] = nn.Linear(256, 10)  # add by key
    print(layers["linear"])
    print(layers.output is layers["output"])
    net = DictModel(layers)
    trace: list = []
    y = net(torch.randn(1, 784), trace)
    for name, shape in trace:
        print(f"layer: {name}  output: {shape}")
    print(f"final output: {tuple(y.shape)}")
    return {
        "order": [name for name, _ in trace],
        "shapes": [shape for _, shape in trace],
        "attr_is_item": layers.output is layers["output"],
        "keys": list(net.state_dict()),
    }


if __name__ == "__main__":
    main()
