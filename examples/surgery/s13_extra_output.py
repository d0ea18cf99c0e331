"""S13: return resnet50's 1000-d output and a new 10-d result from one forward pass.

The seeds write a wrapper with ``fc1 = Linear(1000, 10)``, and in one version forget to call it, so
the "10-d" output is 1000-d (trap 7, which ``torchsmith doctor`` reports). Here two calls: put a
10-class head after ``fc`` and return ``fc``'s 1000-d output alongside. The activations are recorded
by forward hooks, so they equal what a hook of your own records, and nothing is traced.

Run:  python examples/surgery/s13_extra_output.py
"""

from __future__ import annotations

import torch
import torch.nn as nn

import torchsmith
from torchsmith.surgery import doctor, insert_module, return_features


def main() -> None:
    torch.manual_seed(0)
    net = torchsmith.create_model("torchvision:resnet50").eval()
    head10 = nn.Sequential(nn.ReLU(), nn.Dropout(0.5), nn.Linear(1000, 10))
    print(insert_module(net, "fc", head10, name="head10"))  # fc -> Sequential(fc, head10)
    print(return_features(net, {"x1000": "fc.fc"}))
    seen = {}
    net.fc.fc.register_forward_hook(lambda m, a, o: seen.setdefault("x1000", o))
    with torch.no_grad():
        x10, feats = net(torch.randn(2, 3, 64, 64))
    assert x10.shape == (2, 10) and feats["x1000"].shape == (2, 1000)
    assert torch.equal(feats["x1000"], seen["x1000"])
    print("out10", tuple(x10.shape), "out1000", tuple(feats["x1000"].shape))
    assert doctor(net, (2, 3, 64, 64)) == []


if __name__ == "__main__":
    main()
