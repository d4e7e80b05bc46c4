"""A small convolutional network for 1-channel medical images (GroupNorm, DP-friendly).

References
----------
.. [1] Wu and He, "Group Normalization", ECCV 2018 (instead of BatchNorm, which per-sample
   DP-SGD and small federated batches handle badly).
.. [2] Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017
   (zero-initialised last layer, so that the first SGD steps are stable).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medfl.models.registry import register_model

__all__ = ["SmallCNN"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(math.gcd(8, cout), cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    """Four conv blocks (w-2w-4w-4w channels), 4x4 average pooling, a zero-initialised linear head.

    Works for any image side >= 28 (the adaptive pooling fixes the head's input size).

    Parameters
    ----------
    num_classes : int
        Output logits (>= 2; the positive-class score is ``softmax(logits)[:, 1]``).
    in_channels : int
        Image channels (1 for X-rays).
    width : int
        Channels of the first block; later blocks scale with it.

    References
    ----------
    .. [1] Wu and He, "Group Normalization", ECCV 2018.
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 1, width: int = 24):
        super().__init__()
        for name, value, least in (("num_classes", num_classes, 2), ("in_channels", in_channels, 1),
                                   ("width", width, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"cnn: {name} must be an integer >= {least}, got {value!r}")
        w = width
        self.features = nn.Sequential(_block(in_channels, w), _block(w, 2 * w), _block(2 * w, 4 * w),
                                      _block(4 * w, 4 * w))
        # a 4x4 map, not a global average: after per-sample GroupNorm a global mean is almost the
        # same for every image, so where the opacities are must reach the head
        self.pool = nn.AdaptiveAvgPool2d(4)
        last = nn.Linear(4 * w * 16, num_classes)
        # logits start at 0 (loss ln 2): SGD with momentum then trains stably from the first step
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.head(self.pool(self.features(x)))


@register_model("cnn")
def cnn(num_classes: int = 2, in_channels: int = 1, width: int = 24) -> SmallCNN:
    """The small CNN (about 139k parameters at the default width 24)."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, width=width)
