"""S14: per-type weight initialisation, the seed's way and the torchsmith way.

The seed (001) adds an ``init_weights`` method that walks ``self.modules()`` with an ``isinstance``
ladder: Xavier-normal convolutions, batch norms at 1/0, linear layers drawn from N(0, 0.01), biases
zeroed. ``torchsmith.init_weights`` takes the same decisions from ordered rules (the first matching
rule wins; bias and norm defaults come last) and reports which rule set each parameter. Both draw
from the global RNG in module order, so from the same seed they give *identical* weights; with
``seed=`` torchsmith instead seeds each parameter from its name, independent of the global RNG.

Run: ``python examples/transfer/s14_init_weights.py``
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    """The seed's CNN (conv-pool-conv-pool-fc x3), with the flatten size computed, not hard-coded."""

    def __init__(self, image_size: int = 224, num_classes: int = 101):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.pool2 = nn.MaxPool2d(2, 2)
        side = ((image_size - 2) // 2 - 2) // 2  # 54 for 224 (the seed's 64*54*54)
        self.fc1 = nn.Linear(64 * side * side, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def init_weights(self):
        """The seed's version (``m.weight.data`` replaced by ``m.weight``; the effect is the same)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


# The same decisions as rules; as YAML in a recipe or spec:
#   init:
#     - {fn: xavier_normal, type: Conv2d}
#     - {fn: normal, type: Linear, mean: 0, std: 0.01}
SEED_RULES = [
    {"fn": "xavier_normal", "type": "Conv2d"},
    {"fn": "normal", "type": "Linear", "mean": 0.0, "std": 0.01},
]


def main(image_size: int = 64) -> dict:
    from torchsmith import InitRule, init_weights

    torch.manual_seed(0)
    seed_net = Net(image_size)
    torch.manual_seed(1)
    seed_net.init_weights()

    torch.manual_seed(0)
    smith_net = Net(image_size)
    torch.manual_seed(1)
    report = init_weights(smith_net, SEED_RULES)
    print(report)
    identical = all(torch.equal(a, b) for a, b in zip(seed_net.parameters(), smith_net.parameters()))
    print(f"identical to the seed's init_weights: {identical}")

    # More than the ladder can say simply: a path rule before the type rule, a gain by name,
    # per-parameter seeds (reproducible whatever else changes).
    rules = [
        InitRule("zeros", path="fc3"),  # the classifier starts at zero
        InitRule("kaiming_normal", type="Conv2d", mode="fan_out", nonlinearity="relu"),
        InitRule("xavier_uniform", type="Linear", gain="relu"),
    ]
    report2 = init_weights(smith_net, rules, seed=0)
    print(report2)
    return {
        "identical": identical,
        "rules": {n: report.rule_of(n) for n in ("conv1.weight", "conv1.bias", "fc1.weight", "fc3.bias")},
        "fc3_zero": bool(torch.all(smith_net.fc3.weight == 0)),
        "fc3_rule": report2.rule_of("fc3.weight"),
        "conv_std": smith_net.conv2.weight.std().item(),
        "conv_expected_std": (2.0 / (64 * 9)) ** 0.5,
    }


if __name__ == "__main__":
    main()
