"""S12: an extra input (``add_variable``, one number per sample) joins the features of resnet50.

The seeds wrap the network in a new class whose ``forward`` concatenates ``add_variable.unsqueeze(1)``
to the 1000-d output before a new ``fc_add`` (1001 -> 10); any other shape breaks ``torch.cat``
(trap 8). Here two calls do it on the model itself: ``set_num_classes`` gives the 10-class
classifier, ``add_inputs`` widens it by one zero-initialised column for ``add_variable``. The model
computes what it did until training moves the new weights; ``(batch,)`` and ``(batch, 1)`` values are
accepted, anything else is refused naming both shapes.

Run:  python examples/surgery/s12_extra_input.py
"""

from __future__ import annotations

import torch
import torch.nn as nn

import torchsmith
from torchsmith.errors import InputError
from torchsmith.surgery import add_inputs, set_num_classes


def main() -> None:
    torch.manual_seed(0)
    net = torchsmith.create_model("torchvision:resnet50").eval()
    set_num_classes(net, 10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
    print(add_inputs(net, "fc", {"add_variable": 1}))
    add_variable = torch.tensor([0.3, 1.7])  # shape (batch,), as in the seed
    with torch.no_grad():
        torch.testing.assert_close(net(x, add_variable), before, rtol=1e-5, atol=1e-5)  # zero weights
    try:
        net(x, add_variable=torch.zeros(2, 5))
    except InputError as e:
        print("refused:", e)

    opt = torch.optim.SGD(net.parameters(), lr=0.01)  # built after the surgery: fc.weight is new
    net.train()
    nn.functional.cross_entropy(net(x, add_variable=add_variable), torch.tensor([2, 9])).backward()
    opt.step()
    print("weight of add_variable after one step:", net.fc.weight[:3, -1].tolist())


if __name__ == "__main__":
    main()
