"""Python twins of the example specs, written as the seeds write them (seed typos fixed).

Each twin has the same module names as its spec, so a state_dict moves across with strict=True.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class S5Net(nn.Module):
    """Seed 001's Net; ``flat`` replaces the hard-coded 64*54*54 so small inputs work."""

    def __init__(self, flat: int = 64 * 54 * 54, num_classes: int = 101):
        super().__init__()
        self.flat = flat
        self.conv1 = nn.Conv2d(in_channels=3, out_channels=32, kernel_size=(3, 3))
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(in_channels=32, out_channels=64, kernel_size=3)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(flat, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = x.view(-1, self.flat)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class ResidualBlock(nn.Module):
    """Seed 001."""

    def __init__(self, in_channels, out_channels, stride=1, shortcut=None):
        super().__init__()
        self.left = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.right = shortcut

    def forward(self, x):
        out = self.left(x)
        residual = x if self.right is None else self.right(x)
        out += residual
        return F.relu(out)


class ResNet34(nn.Module):
    """Seed 001, with adaptive pooling instead of avg_pool2d(x, 7) (equal at 224x224)."""

    def __init__(self, num_classes=101):
        super().__init__()
        self.pre = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer1 = self.make_layer(64, 128, 3)
        self.layer2 = self.make_layer(128, 256, 4, stride=2)
        self.layer3 = self.make_layer(256, 512, 6, stride=2)
        self.layer4 = self.make_layer(512, 512, 3, stride=2)
        self.fc = nn.Linear(512, num_classes)

    def make_layer(self, in_channels, out_channels, block_num, stride=1):
        shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
        )
        layers = [ResidualBlock(in_channels, out_channels, stride, shortcut)]
        for _ in range(1, block_num):
            layers.append(ResidualBlock(out_channels, out_channels))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.pre(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


# ---------------------------------------------------------------------------------------------- S9
class CNNLayer(nn.Module):
    def __init__(self, C_in, C_out):
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(C_in, C_out, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(C_out),
            nn.Dropout(0.3),
            nn.LeakyReLU(),
            nn.Conv2d(C_out, C_out, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(C_out),
            nn.Dropout(0.4),
            nn.LeakyReLU(),
        )

    def forward(self, x):
        return self.layer(x)


class DownSampling(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(C, C, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)), nn.LeakyReLU()
        )

    def forward(self, x):
        return self.layer(x)


class UpSampling(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.C = nn.Conv2d(C, C // 2, kernel_size=(1, 1), stride=(1, 1))

    def forward(self, x, r):
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.C(up)
        return torch.cat((x, r), 1)


class Unet9(nn.Module):
    """Seed 002's Unet; ``w`` is the seed's 64."""

    def __init__(self, w=64):
        super().__init__()
        self.C1 = CNNLayer(3, w)
        self.D1 = DownSampling(w)
        self.C2 = CNNLayer(w, 2 * w)
        self.D2 = DownSampling(2 * w)
        self.C3 = CNNLayer(2 * w, 4 * w)
        self.D3 = DownSampling(4 * w)
        self.C4 = CNNLayer(4 * w, 8 * w)
        self.D4 = DownSampling(8 * w)
        self.C5 = CNNLayer(8 * w, 16 * w)
        self.U1 = UpSampling(16 * w)
        self.C6 = CNNLayer(16 * w, 8 * w)
        self.U2 = UpSampling(8 * w)
        self.C7 = CNNLayer(8 * w, 4 * w)
        self.U3 = UpSampling(4 * w)
        self.C8 = CNNLayer(4 * w, 2 * w)
        self.U4 = UpSampling(2 * w)
        self.C9 = CNNLayer(2 * w, w)
        self.pre = nn.Conv2d(w, 3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        R1 = self.C1(x)
        R2 = self.C2(self.D1(R1))
        R3 = self.C3(self.D2(R2))
        R4 = self.C4(self.D3(R3))
        Y1 = self.C5(self.D4(R4))
        O1 = self.C6(self.U1(Y1, R4))
        O2 = self.C7(self.U2(O1, R3))
        O3 = self.C8(self.U3(O2, R2))
        O4 = self.C9(self.U4(O3, R1))
        return self.sigmoid(self.pre(O4))


# --------------------------------------------------------------------------------------------- S10
class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels, mid_channels=None):
        super().__init__()
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels, out_channels, bilinear=True):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        diffY = x2.size()[2] - x1.size()[2]
        diffX = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class OutConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class UNet10(nn.Module):
    def __init__(self, n_channels, n_classes, bilinear=True, w=64):
        super().__init__()
        self.inc = DoubleConv(n_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 8 * w)
        factor = 2 if bilinear else 1
        self.down4 = Down(8 * w, 16 * w // factor)
        self.up1 = Up(16 * w, 8 * w // factor, bilinear)
        self.up2 = Up(8 * w, 4 * w // factor, bilinear)
        self.up3 = Up(4 * w, 2 * w // factor, bilinear)
        self.up4 = Up(2 * w, w, bilinear)
        self.outc = OutConv(w, n_classes)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


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
