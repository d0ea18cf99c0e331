"""S2: a hand-written ``MySequential``: ``add_module`` in ``__init__``, a forward over ``_modules``.

This is how ``nn.Sequential`` works inside: ``add_module`` stores each child in ``self._modules``
(an ordered dict), and ``forward`` runs the children in insertion order. The example checks that it
computes exactly what ``nn.Sequential`` computes with the same layers, in both forms the seeds use
(an ``OrderedDict`` of convolutions, and the 784-256-10 MLP given positionally).

Run: ``python examples/containers/s2_my_sequential.py``
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn


class MySequential(nn.Module):
    def __init__(self, *args: nn.Module) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):  # named children
            for key, module in args[0].items():
                self.add_module(key, module)  # stored in self._modules, an ordered dict
        else:  # positional children, named "0", "1", ...
            for idx, module in enumerate(args):
                self.add_module(str(idx), module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self._modules.values():  # insertion order
            x = module(x)
        return x


def main() -> dict:
    torch.manual_seed(0)
    convs = OrderedDict(
        [
            ("conv1", nn.Conv2d(3, 20, (5, 5))),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(20, 64, (5, 5))),
            ("relu2", nn.ReLU()),
        ]
    )
    model = MySequential(convs)
    reference = nn.Sequential(convs)  # the very same layer objects
    x = torch.randn(1, 3, 32, 32)
    y = model(x)
    print(model)
    print(f"conv output shape: {tuple(y.shape)}; same as nn.Sequential: {torch.equal(y, reference(x))}")

    layers = [nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)]
    mlp = MySequential(*layers)
    v = torch.randn(2, 784)
    mlp_same = torch.equal(mlp(v), nn.Sequential(*layers)(v))
    print(f"mlp children: {list(mlp._modules)}; output shape: {tuple(mlp(v).shape)}; same: {mlp_same}")
    return {
        "conv_names": list(model._modules),
        "conv_shape": tuple(y.shape),
        "conv_same": torch.equal(y, reference(x)),
        "mlp_names": list(mlp._modules),
        "mlp_shape": tuple(mlp(v).shape),
        "mlp_same": mlp_same,
        "state_dict_keys": list(model.state_dict()),
    }


if __name__ == "__main__":
    main()
