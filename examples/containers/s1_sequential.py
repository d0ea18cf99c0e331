"""S1: the MLP 784-256-10 as ``nn.Sequential``, from positional layers and from an ``OrderedDict``.

Positional layers are named by their index (``0``, ``1``, ``2``); an ``OrderedDict`` names them
(``fc1``, ``relu1``, ``fc2``). The two networks are the same computation: copying the weights
across by position gives the same output. The zoo's ``mlp`` is the named form.

Run: ``python examples/containers/s1_sequential.py``
"""

from __future__ import annotations

import collections

import torch
import torch.nn as nn


def main() -> dict:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    net2 = nn.Sequential(
        collections.OrderedDict(
            [("fc1", nn.Linear(784, 256)), ("relu1", nn.ReLU()), ("fc2", nn.Linear(256, 10))]
        )
    )
    print(net)
    print(net2)

    # same architecture, different names: copy weights by position, then compare outputs
    net2.load_state_dict(dict(zip(net2.state_dict(), net.state_dict().values())))
    x = torch.randn(4, 784)
    same = torch.equal(net(x), net2(x))

    from torchsmith import create_model

    zoo = create_model("mlp")
    zoo.load_state_dict(net2.state_dict())  # the zoo's mlp has the OrderedDict names
    same_as_zoo = torch.equal(zoo(x), net2(x))

    params = sum(p.numel() for p in net.parameters())
    print(f"children: {[n for n, _ in net.named_children()]} vs {[n for n, _ in net2.named_children()]}")
    print(f"output shape: {tuple(net(x).shape)}; parameters: {params:,}")
    print(f"same outputs: {same}; zoo mlp same: {same_as_zoo}")
    return {
        "names": [n for n, _ in net.named_children()],
        "named": [n for n, _ in net2.named_children()],
        "output_shape": tuple(net2(x).shape),
        "params": params,
        "same": same,
        "same_as_zoo": same_as_zoo,
    }


if __name__ == "__main__":
    main()
