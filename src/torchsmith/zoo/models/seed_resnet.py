"""S6: the 001 seed's ``ResNet34``, built and named exactly as the seed builds it.

``pre`` (7×7 stem + max-pool), ``layer1..layer4`` of :class:`~torchsmith.blocks.ResidualBlock`
(``left`` branch, ``right`` shortcut) with the seed's non-standard widths 128-256-512-512 and a
projection shortcut on every stage's first block (even layer1's, stride 1), then ``fc``. The seed
pooled with ``F.avg_pool2d(x, 7)``, which needs a 224×224 input; an adaptive pool (no parameters)
makes any input size work and gives the seed's result at 224×224.

>>> import torch
>>> SeedResNet34(num_classes=10)(torch.randn(1, 3, 64, 64)).shape
torch.Size([1, 10])
"""

from __future__ import annotations

import torch
import torch.nn as nn

from torchsmith.blocks import ResidualBlock
from torchsmith.blocks._factory import LayerArg, make_act, make_norm
from torchsmith.blocks.residual import conv_shortcut
from torchsmith.zoo._entries import register_model

__all__ = ["SeedResNet34", "seed_resnet34"]


class SeedResNet34(nn.Module):
    """The seed's ResNet34 (``pre``, ``layer1..4``, ``fc``), norm and activation as parameters."""

    def __init__(
        self,
        num_classes: int = 101,
        in_chans: int = 3,
        norm_layer: LayerArg = nn.BatchNorm2d,
        act_layer: LayerArg = nn.ReLU,
    ) -> None:
        super().__init__()
        self.model_name = "ResNet34"
        self._norm_layer, self._act_layer = norm_layer, act_layer
        self.pre = nn.Sequential(
            nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False),
            make_norm(norm_layer, 64) or nn.Identity(),
            make_act(act_layer, inplace=True) or nn.Identity(),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer1 = self.make_layer(64, 128, 3)
        self.layer2 = self.make_layer(128, 256, 4, stride=2)
        self.layer3 = self.make_layer(256, 512, 6, stride=2)
        self.layer4 = self.make_layer(512, 512, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def make_layer(
        self, in_channels: int, out_channels: int, block_num: int, stride: int = 1
    ) -> nn.Sequential:
        """One stage: a block with a 1×1-conv shortcut, then ``block_num - 1`` identity-shortcut blocks."""
        kw = dict(norm_layer=self._norm_layer, act_layer=self._act_layer)
        shortcut = conv_shortcut(in_channels, out_channels, stride, self._norm_layer)
        layers = [ResidualBlock(in_channels, out_channels, stride, shortcut, **kw)]
        layers += [ResidualBlock(out_channels, out_channels, **kw) for _ in range(1, block_num)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("seed_resnet34", input_shape=(1, 3, 224, 224))
def seed_resnet34(
    num_classes: int = 101,
    in_chans: int = 3,
    norm_layer: LayerArg = "batchnorm",
    act_layer: LayerArg = "relu",
) -> SeedResNet34:
    """The 001 seed's ResNet34 (S6): pre, layer1-4 of left/right residual blocks, widths 128-256-512-512."""
    return SeedResNet34(
        num_classes=num_classes, in_chans=in_chans, norm_layer=norm_layer, act_layer=act_layer
    )
