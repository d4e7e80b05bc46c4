"""A small convolutional network for 1-channel medical images (GroupNorm, DP-friendly)."""

from __future__ import annotations

import torch
from torch import nn

from medfl.models.registry import register_model

__all__ = ["SmallCNN"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(min(8, cout), cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    """Four conv blocks (16-32-64-64 channels), 4x4 average pooling, a linear head.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_channels : int
        Image channels (1 for X-rays).
    width : int
        Channels of the first block; later blocks scale with it.
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 1, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(_block(in_channels, w), _block(w, 2 * w), _block(2 * w, 4 * w),
                                      _block(4 * w, 4 * w))
        # a 4x4 map, not a global average: after per-sample GroupNorm a global mean is almost the
        # same for every image, so where the opacities are must reach the head
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.head(self.pool(self.features(x)))


@register_model("cnn")
def cnn(num_classes: int = 2, in_channels: int = 1, width: int = 16) -> SmallCNN:
    """The small CNN (about 70k parameters at width 16)."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, width=width)
