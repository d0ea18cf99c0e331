"""S5: the seed's simple CNN classifier ``Net`` (conv-pool-conv-pool-fc×3, 101 classes).

The seed flattened with ``x.view(-1, 64*54*54)``, which works only for 224×224 inputs (trap 10)
and, for other sizes, silently mixes images of a batch. Here an adaptive average pool brings the
feature map to ``pool_size`` first, so any input of at least :data:`MIN_SIZE` pixels works. With the
default ``pool_size=54`` the network is the seed's, parameter for parameter, and on a 224×224 input
it computes exactly what the seed computed (the pool is then an identity).

>>> import torch
>>> Net(num_classes=5, pool_size=4)(torch.randn(2, 3, 40, 31)).shape
torch.Size([2, 5])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchsmith.errors import InputError
from torchsmith.zoo._entries import register_model

__all__ = ["MIN_SIZE", "Net", "simple_cnn"]

#: Smallest input side: conv3 -> pool2 -> conv3 -> pool2 needs 10 pixels to leave one.
MIN_SIZE = 10


class Net(nn.Module):
    """The 001 seed's ``Net`` with a computed (not hard-coded) flatten size."""

    def __init__(self, num_classes: int = 101, in_chans: int = 3, pool_size: int = 54) -> None:
        super().__init__()
        if pool_size < 1 or num_classes < 1 or in_chans < 1:
            raise InputError(
                f"Net: num_classes, in_chans and pool_size must be positive, got {num_classes}, "
                f"{in_chans}, {pool_size}"
            )
        self.conv1 = nn.Conv2d(in_channels=in_chans, out_channels=32, kernel_size=(3, 3))
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(in_channels=32, out_channels=64, kernel_size=3)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.fc1 = nn.Linear(64 * pool_size * pool_size, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (a torch.fx Proxy is not a Tensor: symbolic tracing skips the check)
        if isinstance(x, torch.Tensor) and (x.dim() != 4 or min(x.shape[-2:]) < MIN_SIZE):
            raise InputError(
                f"simple_cnn expects input (N, C, H, W) with H and W at least {MIN_SIZE}, "
                f"got {tuple(x.shape)}"
            )
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = torch.flatten(self.avgpool(x), 1)  # keeps the batch dimension, whatever the size
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register_model("simple_cnn", input_shape=(1, 3, 224, 224))
def simple_cnn(num_classes: int = 101, in_chans: int = 3, pool_size: int = 54) -> Net:
    """Simple CNN `Net` (conv-pool-conv-pool-fc×3, 101 classes, S5) without a hard-coded flatten size.

    ``pool_size=54`` keeps the seed's 64·54·54-input ``fc1``; a smaller one makes a lighter model.
    """
    return Net(num_classes=num_classes, in_chans=in_chans, pool_size=pool_size)
