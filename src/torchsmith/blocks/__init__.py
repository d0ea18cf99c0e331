"""Reusable building blocks: every zoo network is assembled from these (the seeds' "model blocks").

Normalisation and activation are parameters of every block (``norm_layer``, ``act_layer``): a
module factory such as ``nn.BatchNorm2d``, a name such as ``"groupnorm"`` / ``"silu"``, or None.

>>> import torch
>>> from torchsmith.blocks import ConvNormAct, DoubleConv
>>> stem = torch.nn.Sequential(ConvNormAct(3, 16, stride=2), DoubleConv(16, 32, norm_layer="groupnorm"))
>>> stem(torch.randn(1, 3, 32, 32)).shape
torch.Size([1, 32, 16, 16])
"""

# The names marked noqa: F401 are public helpers, not blocks: __all__ lists only block classes.
from torchsmith.blocks._factory import (  # noqa: F401
    ACT_LAYERS,
    NORM_LAYERS,
    get_act_layer,
    get_norm_layer,
    make_act,
    make_norm,
)
from torchsmith.blocks.conv import (
    CNNLayer,
    ConvNormAct,
    DoubleConv,
    OutConv,
    conv_norm_act_layers,  # noqa: F401
)
from torchsmith.blocks.fpn import (
    BackboneWithFPN,
    FeaturePyramidNetwork,
    IntermediateLayerGetter,
    LastLevelMaxPool,
)
from torchsmith.blocks.residual import (
    BasicBlock,
    Bottleneck,
    ResidualBlock,
    conv_shortcut,  # noqa: F401
)
from torchsmith.blocks.sampling import (
    Down,
    DownSampling,
    Up,
    UpSampling,
    pad_to,  # noqa: F401
)

#: Every block class (an ``nn.Module`` subclass), by name. Specs refer to blocks by these names.
__all__ = [
    "BackboneWithFPN",
    "BasicBlock",
    "Bottleneck",
    "CNNLayer",
    "ConvNormAct",
    "DoubleConv",
    "Down",
    "DownSampling",
    "FeaturePyramidNetwork",
    "IntermediateLayerGetter",
    "LastLevelMaxPool",
    "OutConv",
    "ResidualBlock",
    "Up",
    "UpSampling",
]
