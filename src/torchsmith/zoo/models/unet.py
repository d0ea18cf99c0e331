"""S9 and S10: the two U-Nets of the seeds, built from :mod:`torchsmith.blocks`.

* :class:`UNet` (S10, 003 seed): ``DoubleConv`` / ``Down`` (max-pool) / ``Up`` (bilinear or
  transposed conv) / ``OutConv``. Trap 9's typos are fixed and ``Up`` pads to the skip's size, so
  odd sizes work: a 3×101×75 input gives 101×75 logits. Parameter names are the seed's
  (and Pytorch-UNet's): ``inc``, ``down1..4``, ``up1..4``, ``outc``.
* :class:`SeedUnet` (S9, 002 seed): ``CNNLayer`` ``C1..C9``, strided-conv ``DownSampling``
  ``D1..D4``, nearest + 1×1 conv ``UpSampling`` ``U1..U4``, a 3×3 ``pre`` conv and a ``sigmoid``.

>>> import torch
>>> UNet(3, 2, base_channels=8)(torch.randn(1, 3, 101, 75)).shape
torch.Size([1, 2, 101, 75])
"""

from __future__ import annotations

import torch
import torch.nn as nn

from torchsmith.blocks import CNNLayer, DoubleConv, Down, DownSampling, OutConv, Up, UpSampling
from torchsmith.blocks._factory import LayerArg
from torchsmith.errors import InputError
from torchsmith.zoo._entries import register_model

__all__ = ["MIN_SIZE", "SeedUnet", "UNet", "unet", "unet_seed"]

#: Four 2× max-pools need at least 16 pixels per side to leave one.
MIN_SIZE = 16


class UNet(nn.Module):
    """The 003 seed's U-Net (S10), width ``base_channels`` (64 in the seed) doubling four times."""

    def __init__(
        self,
        n_channels: int = 3,
        n_classes: int = 2,
        bilinear: bool = True,
        base_channels: int = 64,
        norm_layer: LayerArg = nn.BatchNorm2d,
        act_layer: LayerArg = nn.ReLU,
    ) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.bilinear = bilinear
        c = base_channels
        kw = dict(norm_layer=norm_layer, act_layer=act_layer)
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, c, **kw)
        self.down1 = Down(c, 2 * c, **kw)
        self.down2 = Down(2 * c, 4 * c, **kw)
        self.down3 = Down(4 * c, 8 * c, **kw)
        self.down4 = Down(8 * c, 16 * c // factor, **kw)
        self.up1 = Up(16 * c, 8 * c // factor, bilinear, **kw)
        self.up2 = Up(8 * c, 4 * c // factor, bilinear, **kw)
        self.up3 = Up(4 * c, 2 * c // factor, bilinear, **kw)
        self.up4 = Up(2 * c, c, bilinear, **kw)
        self.outc = OutConv(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and (x.dim() != 4 or min(x.shape[-2:]) < MIN_SIZE):
            raise InputError(
                f"unet expects input (N, C, H, W) with H and W at least {MIN_SIZE}, got {tuple(x.shape)}"
            )
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


class SeedUnet(nn.Module):
    """The 002 seed's ``Unet`` (S9) as it defines it; ``in_channels``/``out_channels`` default to 3/3."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        self.C1 = CNNLayer(in_channels, 64)
        self.D1 = DownSampling(64)
        self.C2 = CNNLayer(64, 128)
        self.D2 = DownSampling(128)
        self.C3 = CNNLayer(128, 256)
        self.D3 = DownSampling(256)
        self.C4 = CNNLayer(256, 512)
        self.D4 = DownSampling(512)
        self.C5 = CNNLayer(512, 1024)
        self.U1 = UpSampling(1024)
        self.C6 = CNNLayer(1024, 512)
        self.U2 = UpSampling(512)
        self.C7 = CNNLayer(512, 256)
        self.U3 = UpSampling(256)
        self.C8 = CNNLayer(256, 128)
        self.U4 = UpSampling(128)
        self.C9 = CNNLayer(128, 64)
        self.pre = nn.Conv2d(64, out_channels, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


@register_model("unet", input_shape=(1, 3, 128, 128))
def unet(
    n_channels: int = 3,
    n_classes: int = 2,
    bilinear: bool = True,
    base_channels: int = 64,
    norm_layer: LayerArg = "batchnorm",
    act_layer: LayerArg = "relu",
) -> UNet:
    """U-Net of DoubleConv/Down/Up/OutConv (S10); bilinear or transposed-conv upsampling; odd sizes work."""
    return UNet(n_channels, n_classes, bilinear, base_channels, norm_layer, act_layer)


@register_model("unet_seed", input_shape=(1, 3, 128, 128))
def unet_seed(in_channels: int = 3, out_channels: int = 3) -> SeedUnet:
    """The 002 seed's U-Net (S9): CNNLayer C1-C9, strided-conv D1-D4, nearest+1x1 U1-U4, sigmoid."""
    return SeedUnet(in_channels, out_channels)
