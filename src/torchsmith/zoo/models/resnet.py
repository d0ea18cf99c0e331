"""S7: ResNet-18/34/50/101/152 whose ``state_dict`` is key-for-key and shape-for-shape torchvision's.

Built from :class:`~torchsmith.blocks.BasicBlock` / :class:`~torchsmith.blocks.Bottleneck` with the
seed's ``_make_layer`` and ``include_top``, so torchvision checkpoints load with ``strict=True``
and give the same outputs. ``include_top=False`` drops ``avgpool``/``fc`` and returns the last
feature map (what a detection backbone needs). Convolutions get Kaiming-normal (fan_out) init,
norms weight 1 / bias 0, as in the seed and torchvision.

>>> import torch
>>> model = resnet18(num_classes=10, in_chans=1)
>>> model(torch.randn(2, 1, 64, 64)).shape
torch.Size([2, 10])
>>> resnet50(include_top=False)(torch.randn(1, 3, 64, 64)).shape
torch.Size([1, 2048, 2, 2])
"""

from __future__ import annotations

import torch
import torch.nn as nn

from torchsmith.blocks import BasicBlock, Bottleneck
from torchsmith.blocks._factory import LayerArg, get_norm_layer, make_act
from torchsmith.errors import InputError, close_matches
from torchsmith.zoo._entries import register_model

__all__ = ["DEPTHS", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

#: depth -> (block, blocks per stage)
DEPTHS: dict[int, tuple[type[nn.Module], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


class ResNet(nn.Module):
    """A ResNet with torchvision's module names: ``conv1 bn1 relu maxpool layer1..4 [avgpool fc]``."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        include_top: bool = True,
        in_chans: int = 3,
        norm_layer: LayerArg = None,
        act_layer: LayerArg = nn.ReLU,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise InputError(f"ResNet: layers must be 4 positive block counts, got {layers}")
        if isinstance(norm_layer, str) and norm_layer.strip().lower() == "none":
            raise InputError(
                "ResNet: norm_layer='none' is not supported (the torchvision layout has a norm layer after "
                "every convolution); pass a norm name such as 'batchnorm' or 'groupnorm', "
                "or None for BatchNorm2d"
            )
        norm_layer = get_norm_layer(norm_layer) or nn.BatchNorm2d
        self._norm_layer = norm_layer
        self._act_layer = act_layer
        self.include_top = include_top
        self.groups = groups
        self.base_width = width_per_group
        self.in_channel = 64  # the seed's name for the running channel count

        self.conv1 = nn.Conv2d(in_chans, self.in_channel, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.in_channel)
        self.relu = make_act(act_layer, inplace=True) or nn.Identity()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.num_features = 512 * block.expansion
        if include_top:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(self.num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:  # each residual branch starts as zero, so each block as identity
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (BasicBlock, Bottleneck)) and getattr(last, "weight", None) is not None:
                    nn.init.constant_(last.weight, 0)

    def _make_layer(
        self, block: type[nn.Module], channel: int, block_num: int, stride: int = 1
    ) -> nn.Sequential:
        norm_layer = self._norm_layer
        downsample = None
        if stride != 1 or self.in_channel != channel * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.in_channel, channel * block.expansion, kernel_size=1, stride=stride, bias=False
                ),
                norm_layer(channel * block.expansion),
            )
        kw = dict(
            groups=self.groups, base_width=self.base_width, norm_layer=norm_layer, act_layer=self._act_layer
        )
        layers = [block(self.in_channel, channel, stride, downsample, **kw)]
        self.in_channel = channel * block.expansion
        layers += [block(self.in_channel, channel, **kw) for _ in range(1, block_num)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the four stages: the last feature map, ``(N, num_features, H/32, W/32)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        if self.include_top:
            x = torch.flatten(self.avgpool(x), 1)
            x = self.fc(x)
        return x


def build_resnet(depth: int, **kwargs) -> ResNet:
    """A ResNet of ``depth`` 18, 34, 50, 101 or 152 (keyword arguments go to :class:`ResNet`)."""
    if depth not in DEPTHS:
        raise InputError(
            f"unknown ResNet depth {depth!r}{close_matches(str(depth), map(str, DEPTHS))}; "
            f"valid depths: {', '.join(map(str, DEPTHS))}"
        )
    block, layers = DEPTHS[depth]
    return ResNet(block, layers, **kwargs)


def _factory(depth: int):
    def factory(
        num_classes: int = 1000,
        include_top: bool = True,
        in_chans: int = 3,
        norm_layer: LayerArg = None,
        act_layer: LayerArg = "relu",
        zero_init_residual: bool = False,
    ) -> ResNet:
        return build_resnet(
            depth,
            num_classes=num_classes,
            include_top=include_top,
            in_chans=in_chans,
            norm_layer=norm_layer,
            act_layer=act_layer,
            zero_init_residual=zero_init_residual,
        )

    kind = "BasicBlock" if DEPTHS[depth][0] is BasicBlock else "Bottleneck"
    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = (
        f"ResNet-{depth} ({kind}, S7), state_dict identical to torchvision's resnet{depth}.\n\n"
        "``include_top=False`` returns the last feature map; ``in_chans`` changes the stem's input."
    )
    return register_model(f"resnet{depth}", input_shape=(1, 3, 224, 224))(factory)


resnet18 = _factory(18)
resnet34 = _factory(34)
resnet50 = _factory(50)
resnet101 = _factory(101)
resnet152 = _factory(152)
