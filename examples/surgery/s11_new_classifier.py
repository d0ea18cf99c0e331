"""S11: give torchvision's resnet50 a new classifier for 10 classes, keep every other weight.

The seeds assign ``net.fc = Sequential(OrderedDict(fc1, relu1, dropout1, fc2, output))`` by hand.
``replace_head`` finds the classifier itself (on any model), checks that the new head accepts the
2048-wide features, reports what changed, and records the operation, so a checkpoint saved with
``torchsmith.save`` is rebuilt by replaying it on a fresh resnet50: no pickle.

The seed ends the head with ``nn.Softmax`` and trains it with ``CrossEntropyLoss``: softmax twice
(trap 11, which ``torchsmith doctor`` reports). Here the head ends with ``LogSoftmax`` and trains with
``NLLLoss``, the correct pair.

Run:  python examples/surgery/s11_new_classifier.py [OUTDIR]
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

import torchsmith
from torchsmith.surgery import replace_head


def main(out: Path) -> None:
    torch.manual_seed(0)
    net = torchsmith.create_model("torchvision:resnet50")
    base = {k: v.clone() for k, v in net.state_dict().items()}
    head = nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(2048, 128)),
                ("relu1", nn.ReLU()),
                ("dropout1", nn.Dropout(0.5)),
                ("fc2", nn.Linear(128, 10)),
                ("output", nn.LogSoftmax(dim=1)),
            ]
        )
    )
    print(replace_head(net, head))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in base.items() if not k.startswith("fc."))

    # One training step (batch norms in eval mode: a batch of 2 tiny images is too small for them).
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    net.eval()
    nn.functional.nll_loss(net(x), y).backward()
    opt.step()

    # Save with provenance; load_model rebuilds a fresh resnet50, replays the recorded surgery and
    # loads the weights strictly. No pickle of the changed model is involved.
    path = torchsmith.save(net, out / "s11.safetensors")
    ops = json.loads(torchsmith.read_checkpoint(path).metadata["torchsmith.surgery"])
    again = torchsmith.load_model(path).eval()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in again.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x), rtol=1e-6, atol=1e-6)
    print(f"reloaded {path.name} by replaying {[op['op'] for op in ops]}: same weights, same outputs")
    # The same by hand: torchsmith.surgery.apply_surgery(create_model("torchvision:resnet50"), ops),
    # then load_state_dict(torchsmith.read_state_dict(path), strict=True).


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
