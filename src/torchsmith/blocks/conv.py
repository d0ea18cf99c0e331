"""Convolution blocks: conv-norm-activation, the U-Net double convolution, the output convolution.

>>> import torch
>>> block = ConvNormAct(3, 16, kernel_size=3, stride=2, act_layer="silu")
>>> block(torch.randn(1, 3, 32, 32)).shape
torch.Size([1, 16, 16, 16])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from torchsmith.blocks._factory import LayerArg, make_act, make_norm
from torchsmith.errors import InputError

__all__ = ["CNNLayer", "ConvNormAct", "DoubleConv", "OutConv", "conv_norm_act_layers"]


def conv_norm_act_layers(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int | None = None,
    *,
    groups: int = 1,
    dilation: int = 1,
    bias: bool | None = None,
    norm_layer: LayerArg = nn.BatchNorm2d,
    act_layer: LayerArg = nn.ReLU,
    dropout: float = 0.0,
    inplace: bool = True,
) -> list[nn.Module]:
    """The flat list ``[conv, norm?, dropout?, act?]`` that :class:`ConvNormAct` wraps.

    Blocks that must keep a seed's flat parameter names (``left.0``, ``left.1``, ...) splice this
    list into their own ``nn.Sequential``. ``padding=None`` keeps the spatial size at stride 1
    ("same" for odd kernels); ``bias=None`` means "a bias only when there is no norm layer".
    """
    if padding is None:
        padding = (kernel_size - 1) // 2 * dilation
    norm = make_norm(norm_layer, out_channels)
    if bias is None:
        bias = norm is None
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)
    ]
    if norm is not None:
        layers.append(norm)
    if dropout:
        layers.append(nn.Dropout(dropout))
    act = make_act(act_layer, inplace=inplace)
    if act is not None:
        layers.append(act)
    return layers


class ConvNormAct(nn.Sequential):
    """``Conv2d -> norm -> activation`` as one ``nn.Sequential`` (children ``0``, ``1``, ``2``).

    The same layout as torchvision's ``Conv2dNormActivation``, so its parameter names match. Pass
    ``norm_layer=None`` or ``act_layer=None`` to leave either out.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        *,
        groups: int = 1,
        dilation: int = 1,
        bias: bool | None = None,
        norm_layer: LayerArg = nn.BatchNorm2d,
        act_layer: LayerArg = nn.ReLU,
        dropout: float = 0.0,
        inplace: bool = True,
    ) -> None:
        super().__init__(
            *conv_norm_act_layers(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                groups=groups,
                dilation=dilation,
                bias=bias,
                norm_layer=norm_layer,
                act_layer=act_layer,
                dropout=dropout,
                inplace=inplace,
            )
        )
        self.in_channels = in_channels
        self.out_channels = out_channels


def _pair(value: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    value = tuple(value)
    if len(value) != 2:
        raise InputError(f"dropout must be a number or a pair of numbers, got {value!r}")
    return float(value[0]), float(value[1])


class DoubleConv(nn.Module):
    """``(conv 3×3 -> norm -> [dropout] -> act) × 2``: the U-Net stage (S10 ``DoubleConv``).

    Parameter names are those of the seed (and of the widely used Pytorch-UNet):
    ``double_conv.0.weight``, ``double_conv.1.weight``, ... so their checkpoints load.

    >>> import torch
    >>> DoubleConv(3, 8)(torch.randn(1, 3, 17, 9)).shape
    torch.Size([1, 8, 17, 9])
    """

    # The attribute holding the layers; subclasses that mirror another seed's names change it.
    _seq_name = "double_conv"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        *,
        norm_layer: LayerArg = nn.BatchNorm2d,
        act_layer: LayerArg = nn.ReLU,
        dropout: float | Sequence[float] = 0.0,
        bias: bool | None = None,
        inplace: bool = True,
    ) -> None:
        super().__init__()
        mid_channels = mid_channels or out_channels
        p1, p2 = _pair(dropout)
        common = dict(norm_layer=norm_layer, act_layer=act_layer, bias=bias, inplace=inplace)
        layers = conv_norm_act_layers(in_channels, mid_channels, 3, dropout=p1, **common)
        layers += conv_norm_act_layers(mid_channels, out_channels, 3, dropout=p2, **common)
        self.add_module(self._seq_name, nn.Sequential(*layers))
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._modules[self._seq_name](x)


class CNNLayer(DoubleConv):
    """S9's ``CNNLayer``: conv-BN-Dropout(0.3)-LeakyReLU, conv-BN-Dropout(0.4)-LeakyReLU, biased convs.

    A :class:`DoubleConv` with the seed's settings and its attribute name ``layer``, so the seed's
    parameter names (``layer.0.weight``, ``layer.1.running_mean``, ...) are kept.
    """

    _seq_name = "layer"

    def __init__(
        self,
        C_in: int,  # the seed's argument names
        C_out: int,
        *,
        norm_layer: LayerArg = nn.BatchNorm2d,
        act_layer: LayerArg = nn.LeakyReLU,
        dropout: float | Sequence[float] = (0.3, 0.4),
    ) -> None:
        super().__init__(
            C_in, C_out, norm_layer=norm_layer, act_layer=act_layer, dropout=dropout, bias=True, inplace=False
        )


class OutConv(nn.Module):
    """The 1×1 output convolution of a U-Net (S10 ``OutConv``; parameter names ``conv.weight/bias``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
