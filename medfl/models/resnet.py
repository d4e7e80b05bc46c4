"""ResNet-18 with GroupNorm and a 1-channel stem, written for medfl.

References
----------
.. [1] He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
.. [2] Wu and He, "Group Normalization", ECCV 2018 (used instead of BatchNorm, which
   per-sample DP-SGD and small federated batches handle badly).
"""

from __future__ import annotations

import torch
from torch import nn

from medfl.models.registry import register_model

__all__ = ["ResNet18"]


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32 if c >= 32 else 8, c)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block."""
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (2-2-2-2 basic blocks, 64-512 channels) for ``in_channels``-channel images.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_channels : int
        Image channels.
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 1):
        super().__init__()
        for name, value, least in (("num_classes", num_classes, 2), ("in_channels", in_channels, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"resnet18: {name} must be an integer >= {least}, got {value!r}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), _norm(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        layers = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.head(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


@register_model("resnet18")
def resnet18(num_classes: int = 2, in_channels: int = 1) -> ResNet18:
    """ResNet-18 with GroupNorm (about 11.2M parameters)."""
    return ResNet18(num_classes=num_classes, in_channels=in_channels)
