"""Down- and up-sampling stages of U-Nets (S9, S10).

:class:`Down` halves the spatial size by max-pool (S10) or by a strided convolution (S9), then
optionally applies a :class:`~torchsmith.blocks.DoubleConv`. :class:`Up` doubles it by bilinear
interpolation, by a transposed convolution (S10) or by nearest interpolation + 1×1 convolution (S9),
**pads (or crops) to the skip connection's size**, so odd input sizes work, concatenates the skip
and optionally applies a ``DoubleConv``.

>>> import torch
>>> skip, deep = torch.randn(1, 32, 25, 19), torch.randn(1, 64, 12, 9)
>>> Up(96, 32)(deep, skip).shape  # bilinear: deep keeps 64 channels, 64 + 32 = 96 in
torch.Size([1, 32, 25, 19])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchsmith.blocks._factory import LayerArg, make_act, make_norm
from torchsmith.blocks.conv import DoubleConv
from torchsmith.errors import InputError, close_matches

__all__ = ["Down", "DownSampling", "Up", "UpSampling", "pad_to"]

DOWN_MODES = ("maxpool", "conv")
UP_MODES = ("bilinear", "transpose", "nearest")


def pad_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Zero-pad (or crop, when larger) the last two dims of ``x`` to those of ``ref``, centred.

    This is the step the 003 seed meant to do (trap 9: its result was assigned to ``X1`` and lost).
    """
    dy = ref.shape[-2] - x.shape[-2]
    dx = ref.shape[-1] - x.shape[-1]
    if dy == 0 and dx == 0:
        return x
    # Negative pads crop, which covers a strided-conv encoder whose sizes round up.
    return F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])


def _check_mode(mode: str, valid: tuple[str, ...], what: str) -> str:
    if mode not in valid:
        hint = close_matches(mode, valid)
        raise InputError(f"{what}: unknown mode {mode!r}{hint}; valid modes: {', '.join(valid)}")
    return mode


class Down(nn.Module):
    """Halve the spatial size, then (optionally) a double convolution.

    ``mode="maxpool"``: ``MaxPool2d(2)`` then ``DoubleConv(in, out)`` (S10; attribute ``maxpool_conv``).
    ``mode="conv"``: a 3×3 stride-2 convolution ``in -> out`` (+ norm) + activation, then optionally a
    ``DoubleConv(out, out)`` (S9's ``DownSampling`` has no norm and no double conv; attribute ``layer``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mode: str = "maxpool",
        *,
        double_conv: bool = True,
        norm_layer: LayerArg = nn.BatchNorm2d,
        act_layer: LayerArg = nn.ReLU,
        conv_norm_layer: LayerArg = None,
    ) -> None:
        super().__init__()
        self.mode = _check_mode(mode, DOWN_MODES, "Down")
        layers: list[nn.Module]
        if mode == "maxpool":
            if not double_conv and in_channels != out_channels:
                raise InputError(
                    f"Down(mode='maxpool', double_conv=False) cannot change channels ({in_channels} -> "
                    f"{out_channels}); set double_conv=True or use mode='conv'"
                )
            layers = [nn.MaxPool2d(2)]
            conv_in = in_channels
        else:
            norm = make_norm(conv_norm_layer, out_channels)
            layers = [nn.Conv2d(in_channels, out_channels, 3, 2, 1, bias=norm is None)]
            if norm is not None:
                layers.append(norm)
            act = make_act(act_layer)
            if act is not None:
                layers.append(act)
            conv_in = out_channels
        if double_conv:
            layers.append(DoubleConv(conv_in, out_channels, norm_layer=norm_layer, act_layer=act_layer))
        self._seq_name = "maxpool_conv" if mode == "maxpool" else "layer"
        self.add_module(self._seq_name, nn.Sequential(*layers))
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._modules[self._seq_name](x)


class DownSampling(Down):
    """S9's ``DownSampling(C)``: a biased 3×3 stride-2 conv ``C -> C`` and LeakyReLU (``layer.0``)."""

    def __init__(self, C: int, *, act_layer: LayerArg = nn.LeakyReLU) -> None:  # the seed's argument name
        super().__init__(C, C, mode="conv", double_conv=False, act_layer=act_layer)


class Up(nn.Module):
    """Double the spatial size of ``x1``, pad it to the skip ``x2``, concatenate, (double) convolve.

    ``in_channels`` counts the channels *after* concatenation (S10's convention):

    * ``mode="bilinear"`` (``bilinear=True``): ``x1`` already has ``in_channels - skip`` channels;
      ``up`` is an ``nn.Upsample``; ``conv = DoubleConv(in, out, mid_channels)`` (the seed leaves
      ``mid_channels`` unset; Pytorch-UNet uses ``in // 2``).
    * ``mode="transpose"`` (``bilinear=False``): ``up = ConvTranspose2d(in, in // 2, 2, stride 2)``.
    * ``mode="nearest"``: nearest ×2, then a 1×1 conv ``in -> in // 2`` (S9's ``UpSampling``).

    ``skip_first`` puts the skip before the upsampled map in the concatenation (S10) or after it (S9).
    With ``double_conv=False`` there is no ``conv`` and the output has ``in_channels`` channels.
    """

    # Attribute of the 1×1 conv in "nearest" mode; S9's UpSampling calls it "C".
    _reduce_name = "reduce"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bilinear: bool = True,
        *,
        mode: str | None = None,
        double_conv: bool = True,
        skip_first: bool = True,
        mid_channels: int | None = None,
        norm_layer: LayerArg = nn.BatchNorm2d,
        act_layer: LayerArg = nn.ReLU,
    ) -> None:
        super().__init__()
        mode = mode or ("bilinear" if bilinear else "transpose")
        self.mode = _check_mode(mode, UP_MODES, "Up")
        self.skip_first = skip_first
        if mode == "bilinear":
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        elif mode == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        else:
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.add_module(self._reduce_name, nn.Conv2d(in_channels, in_channels // 2, kernel_size=1))
        if double_conv:
            self.conv = DoubleConv(
                in_channels, out_channels, mid_channels, norm_layer=norm_layer, act_layer=act_layer
            )
        elif out_channels != in_channels:
            raise InputError(
                f"Up(double_conv=False) outputs the concatenation's {in_channels} channels, "
                f"but out_channels={out_channels} was asked; set double_conv=True"
            )
        else:
            self.conv = None
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``x1``: the deeper (smaller) map; ``x2``: the skip connection from the encoder."""
        x1 = self.up(x1)
        if self.mode == "nearest":
            x1 = self._modules[self._reduce_name](x1)
        x1 = pad_to(x1, x2)
        x = torch.cat([x2, x1] if self.skip_first else [x1, x2], dim=1)
        return x if self.conv is None else self.conv(x)


class UpSampling(Up):
    """S9's ``UpSampling(C)``: nearest ×2, 1×1 conv ``C -> C//2`` (attribute ``C``), concat ``(x, skip)``."""

    _reduce_name = "C"

    def __init__(self, C: int) -> None:  # the seed's argument name
        super().__init__(C, C, mode="nearest", double_conv=False, skip_first=False)
