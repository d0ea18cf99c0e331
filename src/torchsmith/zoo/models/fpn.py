"""S8: a ResNet + Feature Pyramid Network backbone for any depth (the seed's ``resnet152_fpn_backbone``).

The result is a :class:`~torchsmith.blocks.BackboneWithFPN`: ``body`` runs the ResNet (without its
head) and returns ``layer1..layer4``; ``fpn`` maps them to ``out_channels`` channels each and adds
a ``'pool'`` level, so ``model(x)`` is an ``OrderedDict`` with keys ``'0', '1', '2', '3', 'pool'``
at strides 4, 8, 16, 32 and 64.

``trainable_layers`` follows torchvision's ``resnet_fpn_backbone``: the last ``k`` of
``layer4, layer3, layer2, layer1, conv1`` stay trainable (5 also keeps ``bn1``), everything else of
the ResNet is frozen. The seed froze layer1 and before, which is ``trainable_layers=3``, the default.

>>> import torch
>>> model = resnet_fpn(depth=18)
>>> {k: tuple(v.shape) for k, v in model(torch.randn(1, 3, 64, 64)).items()}
{'0': (1, 256, 16, 16), '1': (1, 256, 8, 8), '2': (1, 256, 4, 4), '3': (1, 256, 2, 2), 'pool': (1, 256, 1, 1)}
"""

from __future__ import annotations

from torchsmith.blocks import BackboneWithFPN, LastLevelMaxPool
from torchsmith.blocks._factory import LayerArg
from torchsmith.errors import InputError
from torchsmith.zoo._entries import register_model
from torchsmith.zoo.models.resnet import build_resnet

__all__ = ["freeze_resnet_layers", "resnet_fpn"]

_LAYERS_FROM_TOP = ("layer4", "layer3", "layer2", "layer1", "conv1")


def freeze_resnet_layers(resnet, trainable_layers: int) -> list[str]:
    """Freeze a ResNet except its last ``trainable_layers`` stages; return the prefixes left trainable."""
    if not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= 5:
        raise InputError(f"trainable_layers must be an integer from 0 to 5, got {trainable_layers!r}")
    keep = list(_LAYERS_FROM_TOP[:trainable_layers])
    if trainable_layers == 5:
        keep.append("bn1")
    for name, parameter in resnet.named_parameters():
        parameter.requires_grad_(any(name.startswith(prefix) for prefix in keep))
    return keep


@register_model("resnet_fpn", input_shape=(1, 3, 224, 224))
def resnet_fpn(
    depth: int = 50,
    trainable_layers: int = 3,
    out_channels: int = 256,
    returned_layers: tuple[int, ...] = (1, 2, 3, 4),
    in_chans: int = 3,
    norm_layer: LayerArg = None,
    extra_pool: bool = True,
) -> BackboneWithFPN:
    """ResNet-FPN backbone (S8) for depth 18-152: OrderedDict '0'..'3', 'pool' of 256 channels.

    ``returned_layers`` picks the stages fed to the FPN (keys ``'0'``... in that order);
    ``norm_layer`` is the ResNet's (e.g. ``"frozen_batchnorm"``, as torchvision uses for detection).
    """
    returned = list(returned_layers)
    if not returned or any(i not in (1, 2, 3, 4) for i in returned) or returned != sorted(set(returned)):
        raise InputError(
            f"returned_layers must be increasing stage numbers from 1 to 4, got {returned_layers!r}"
        )
    resnet = build_resnet(depth, include_top=False, in_chans=in_chans, norm_layer=norm_layer)
    freeze_resnet_layers(resnet, trainable_layers)
    stage2 = resnet.num_features // 8  # layer1's channels: 256 for Bottleneck ResNets, 64 for Basic
    return_layers = {f"layer{i}": str(k) for k, i in enumerate(returned)}
    in_channels_list = [stage2 * 2 ** (i - 1) for i in returned]
    return BackboneWithFPN(
        resnet,
        return_layers,
        in_channels_list,
        out_channels,
        extra_blocks=LastLevelMaxPool() if extra_pool else None,
    )
