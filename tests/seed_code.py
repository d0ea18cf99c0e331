"""The seeds' own model code, copied from the seed documents (their typos fixed, trap 9): the reference
that the zoo, the blocks and the example specs are checked against, weight for weight.

Importable from every test folder (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SeedNet(nn.Module):  # S5
    """Seed 001's Net; ``flat`` is its hard-coded 64*54*54 (trap 10), a parameter so small inputs work."""

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


class SeedResidualBlock(nn.Module):  # S6
    """Seed 001's block: the main path is ``left``, the shortcut ``right``."""

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


class SeedResNet34(nn.Module):  # S6
    """Seed 001's ResNet34; ``adaptive_pool`` replaces its avg_pool2d(x, 7) (equal at 224x224)."""

    def __init__(self, num_classes=101, adaptive_pool=False):
        super().__init__()
        self.adaptive_pool = adaptive_pool
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
        layers = [SeedResidualBlock(in_channels, out_channels, stride, shortcut)]
        for _ in range(1, block_num):
            layers.append(SeedResidualBlock(out_channels, out_channels))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.pre(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1) if self.adaptive_pool else F.avg_pool2d(x, 7)
        return self.fc(x.view(x.size(0), -1))


class SeedCNNLayer(nn.Module):
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


class SeedDownSampling(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(C, C, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)), nn.LeakyReLU()
        )

    def forward(self, x):
        return self.layer(x)


class SeedUpSampling(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.C = nn.Conv2d(C, C // 2, kernel_size=(1, 1), stride=(1, 1))

    def forward(self, x, r):
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.C(up)
        return torch.cat((x, r), 1)


class SeedUnet9(nn.Module):
    """Seed 002's Unet; ``w`` is the seed's 64."""

    def __init__(self, w=64):
        super().__init__()
        self.C1 = SeedCNNLayer(3, w)
        self.D1 = SeedDownSampling(w)
        self.C2 = SeedCNNLayer(w, 2 * w)
        self.D2 = SeedDownSampling(2 * w)
        self.C3 = SeedCNNLayer(2 * w, 4 * w)
        self.D3 = SeedDownSampling(4 * w)
        self.C4 = SeedCNNLayer(4 * w, 8 * w)
        self.D4 = SeedDownSampling(8 * w)
        self.C5 = SeedCNNLayer(8 * w, 16 * w)
        self.U1 = SeedUpSampling(16 * w)
        self.C6 = SeedCNNLayer(16 * w, 8 * w)
        self.U2 = SeedUpSampling(8 * w)
        self.C7 = SeedCNNLayer(8 * w, 4 * w)
        self.U3 = SeedUpSampling(4 * w)
        self.C8 = SeedCNNLayer(4 * w, 2 * w)
        self.U4 = SeedUpSampling(2 * w)
        self.C9 = SeedCNNLayer(2 * w, w)
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


class SeedDoubleConv(nn.Module):
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


class SeedDown(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), SeedDoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class SeedUp(nn.Module):
    def __init__(self, in_channels, out_channels, bilinear=True):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = SeedDoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        diffY = x2.size()[2] - x1.size()[2]
        diffX = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class SeedOutConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class SeedUNet10(nn.Module):
    def __init__(self, n_channels, n_classes, bilinear=True, w=64):
        super().__init__()
        self.inc = SeedDoubleConv(n_channels, w)
        self.down1 = SeedDown(w, 2 * w)
        self.down2 = SeedDown(2 * w, 4 * w)
        self.down3 = SeedDown(4 * w, 8 * w)
        factor = 2 if bilinear else 1
        self.down4 = SeedDown(8 * w, 16 * w // factor)
        self.up1 = SeedUp(16 * w, 8 * w // factor, bilinear)
        self.up2 = SeedUp(8 * w, 4 * w // factor, bilinear)
        self.up3 = SeedUp(4 * w, 2 * w // factor, bilinear)
        self.up4 = SeedUp(2 * w, w, bilinear)
        self.outc = SeedOutConv(w, n_classes)

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
