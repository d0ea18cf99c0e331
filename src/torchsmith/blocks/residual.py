"""Residual blocks: the seed's ``ResidualBlock`` (S6) and torchvision-compatible ``BasicBlock`` /
``Bottleneck`` (S7).

``BasicBlock`` and ``Bottleneck`` have exactly torchvision's parameter names (``conv1``, ``bn1``,
``conv2``, ``bn2``, ``conv3``, ``bn3``, ``downsample.0``, ``downsample.1``), so a torchvision ResNet's
``state_dict`` loads into a network built from them with ``strict=True``.

>>> import torch
>>> down = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256))
>>> Bottleneck(64, 64, downsample=down)(torch.randn(1, 64, 8, 8)).shape
torch.Size([1, 256, 8, 8])
"""

from __future__ import annotations

import torch
import torch.nn as nn

from torchsmith.blocks._factory import LayerArg, make_act, make_norm
from torchsmith.blocks.conv import conv_norm_act_layers
from torchsmith.errors import InputError

__all__ = ["BasicBlock", "Bottleneck", "ResidualBlock", "conv_shortcut"]


def conv_shortcut(
    in_channels: int, out_channels: int, stride: int = 1, norm_layer: LayerArg = nn.BatchNorm2d
) -> nn.Sequential:
    """The projection shortcut ``Sequential(conv 1×1 stride s, norm)`` used by S6 and S7."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, stride, bias=norm_layer is None)]
    norm = make_norm(norm_layer, out_channels)
    if norm is not None:
        layers.append(norm)
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """S6's residual block: ``left`` = conv3×3-norm-act-conv3×3-norm, ``right`` = the shortcut.

    ``out = act(left(x) + (x if right is None else right(x)))``. The parameter names are the
    seed's (``left.0.weight``, ``left.1.*``, ``left.3.weight``, ``left.4.*``, ``right.0.weight``, ...).
    ``shortcut`` may be a module, ``None`` (identity) or ``True`` (build a 1×1 conv projection).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        shortcut: nn.Module | bool | None = None,
        *,
        norm_layer: LayerArg = nn.BatchNorm2d,
        act_layer: LayerArg = nn.ReLU,
    ) -> None:
        super().__init__()
        first = conv_norm_act_layers(
            in_channels, out_channels, 3, stride, 1, bias=False, norm_layer=norm_layer, act_layer=act_layer
        )
        second = conv_norm_act_layers(
            out_channels, out_channels, 3, 1, 1, bias=False, norm_layer=norm_layer, act_layer=None
        )
        self.left = nn.Sequential(*first, *second)
        if shortcut is True:
            shortcut = conv_shortcut(in_channels, out_channels, stride, norm_layer)
        elif shortcut is False:
            shortcut = None
        if shortcut is None and (stride != 1 or in_channels != out_channels):
            raise InputError(
                f"ResidualBlock({in_channels}, {out_channels}, stride={stride}) changes the shape, so it "
                "needs a shortcut: pass shortcut=True or a module"
            )
        self.right = shortcut
        self.act = make_act(act_layer, inplace=False) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.left(x)
        residual = x if self.right is None else self.right(x)
        return self.act(out + residual)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with an identity or ``downsample`` shortcut (ResNet-18/34).

    Same constructor and parameter names as ``torchvision.models.resnet.BasicBlock``, plus ``act_layer``.
    """

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: LayerArg = None,
        *,
        act_layer: LayerArg = nn.ReLU,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise InputError(
                f"BasicBlock supports only groups=1 and base_width=64, got groups={groups}, "
                f"base_width={base_width}; use Bottleneck for ResNeXt/wide variants"
            )
        if dilation > 1:
            raise InputError(f"BasicBlock does not support dilation > 1, got dilation={dilation}")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm_layer, planes) or nn.Identity()
        self.relu = make_act(act_layer, inplace=True) or nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm_layer, planes) or nn.Identity()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 squeeze, 3×3 (stride here, "ResNet v1.5"), 1×1 expand ×4, with a ``downsample`` shortcut.

    The S7 seed's ``Bottleneck`` with torchvision's constructor (``groups``/``base_width`` give
    ResNeXt and wide ResNets) and parameter names, plus ``act_layer``.
    """

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: LayerArg = None,
        *,
        act_layer: LayerArg = nn.ReLU,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = make_norm(norm_layer, width) or nn.Identity()
        self.conv2 = nn.Conv2d(width, width, 3, stride, dilation, dilation, groups, bias=False)
        self.bn2 = make_norm(norm_layer, width) or nn.Identity()
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = make_norm(norm_layer, planes * self.expansion) or nn.Identity()
        self.relu = make_act(act_layer, inplace=True) or nn.Identity()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)
