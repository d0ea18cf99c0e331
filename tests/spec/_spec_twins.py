"""Python twins of the example specs, written as the seeds write them (seed typos fixed).

Each twin has the same module names as its spec, so a state_dict moves across with strict=True.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from seed_code import SeedNet, SeedResNet34, SeedUnet9, SeedUNet10


def s1_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def s1_mlp_named() -> nn.Module:
    return nn.Sequential(
        OrderedDict([("fc1", nn.Linear(784, 256)), ("relu1", nn.ReLU()), ("fc2", nn.Linear(256, 10))])
    )


class MySequential(nn.Module):
    """S2, seed 002."""

    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for key, module in args[0].items():
                self.add_module(key, module)
        else:
            for idx, module in enumerate(args):
                self.add_module(str(idx), module)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x


def s2_my_sequential() -> nn.Module:
    return MySequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 20, (5, 5))),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(20, 64, (5, 5))),
                ("relu2", nn.ReLU()),
            ]
        )
    )


class S3Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.modulelist = nn.ModuleList([nn.Linear(784, 256), nn.ReLU()])
        self.modulelist.append(nn.Linear(256, 10))

    def forward(self, x):
        for module in self.modulelist:
            x = module(x)
        return x


class S4Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.moduledict = nn.ModuleDict({"linear": nn.Linear(784, 256), "relu": nn.ReLU()})
        self.moduledict["output"] = nn.Linear(256, 10)

    def forward(self, x):
        for name in self.moduledict:
            x = self.moduledict[name](x)
        return x


S5Net = SeedNet
Unet9 = SeedUnet9
UNet10 = SeedUNet10


class ResNet34(SeedResNet34):
    """Seed 001's ResNet34 with adaptive pooling, as the S6 spec builds it."""

    def __init__(self, num_classes=101):
        super().__init__(num_classes, adaptive_pool=True)


# ---------------------------------------------------------------------------------------- S12, S13
class ExtraInput(nn.Module):
    def __init__(self, net, softmax=True):
        super().__init__()
        self.net = net
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.fc_add = nn.Linear(1001, 10, bias=True)
        self.output = nn.Softmax(dim=1) if softmax else nn.Identity()

    def forward(self, x, add_variable):
        x = self.net(x)
        x = torch.cat((self.dropout(self.relu(x)), add_variable.unsqueeze(1)), 1)
        x = self.fc_add(x)
        return self.output(x)


class ExtraOutput(nn.Module):
    """Seed 003's model with trap 7 fixed: fc1 is used, so the first output really is 10-d."""

    def __init__(self, net, softmax=True):
        super().__init__()
        self.net = net
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(1000, 10, bias=True)
        self.output = nn.Softmax(dim=1) if softmax else nn.Identity()

    def forward(self, x):
        x1000 = self.net(x)
        x10 = self.fc1(self.dropout(self.relu(x1000)))
        return self.output(x10), x1000
