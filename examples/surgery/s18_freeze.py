"""S18: train only layer2-layer4 of a ResNet; the rest keeps its weights and batch-norm statistics.

The seed loops over ``named_parameters`` and calls ``requires_grad_(False)`` outside layer2-4. That
stops gradients, but the frozen batch norms still update their running statistics in training mode,
and ``model.eval()`` on them is undone by the next ``model.train()``. ``freeze(..., bn_stats=True)``
keeps them in eval mode through later ``model.train()`` calls, and the parameter groups hold only
trainable parameters (checked), with no weight decay on norms and biases.

Run:  python examples/surgery/s18_freeze.py
"""

from __future__ import annotations

import torch

import torchsmith
from torchsmith.surgery import format_param_groups, freeze, param_groups


def main() -> None:
    torch.manual_seed(0)
    net = torchsmith.create_model("resnet50")  # the zoo's, from blocks; torchvision's works the same
    print(freeze(net, exclude=["layer2", "layer3", "layer4"], bn_stats=True))
    frozen = {
        k: v.clone() for k, v in net.state_dict().items() if not k.startswith(("layer2", "layer3", "layer4"))
    }
    groups = param_groups(net, lr=0.01, weight_decay=1e-4)
    print(format_param_groups(groups))
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9)
    net.train()
    net(torch.randn(2, 3, 64, 64)).logsumexp(dim=1).mean().backward()
    opt.step()
    net.train()
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    print(f"{len(frozen)} frozen tensors (weights and batch-norm statistics) unchanged after a step")


if __name__ == "__main__":
    main()
