"""2-D and 3-D U-Nets for segmentation, built from layers DP-SGD can clip per sample.

GroupNorm replaces BatchNorm (per-sample clipping needs samples that do not mix), and the
decoder upsamples by nearest-neighbour interpolation followed by a 3x3(x3) convolution rather
than by a transposed convolution: the pair has the same receptive field, no checkerboard
artefacts, and its trainable layer is an ordinary convolution the clipper already handles.

References
----------
.. [1] O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional networks for biomedical image
   segmentation", MICCAI 2015.
.. [2] O. Cicek et al., "3D U-Net: learning dense volumetric segmentation from sparse
   annotation", MICCAI 2016.
.. [3] A. Odena, V. Dumoulin, C. Olah, "Deconvolution and checkerboard artifacts", Distill 2016
   (resize-convolution instead of transposed convolution).
.. [4] Wu and He, "Group Normalization", ECCV 2018.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medfl.models.registry import register_model

__all__ = ["UNet"]


def _check_int(model: str, name: str, value: object, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{model}: {name} must be an integer >= {least}, got {value!r}")
    return value


class _DoubleConv(nn.Sequential):
    def __init__(self, dims: int, cin: int, cout: int):
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        groups = math.gcd(8, cout)
        super().__init__(conv(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
                         conv(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """An encoder-decoder with skip connections; channels double at each of ``depth`` levels.

    Parameters
    ----------
    spatial_dims : {2, 3}
        2 for slices (N, C, H, W), 3 for volumes (N, C, D, H, W).
    in_channels : int
        Input channels (1 for CT, 4 for the BraTS MR sequences t1, t1ce, t2, flair).
    num_classes : int
        Output channels, background included (logits; softmax over dim 1).
    width : int
        Channels of the first level.
    depth : int
        Number of down-sampling steps; every spatial side must be divisible by ``2**depth``.

    References
    ----------
    Ronneberger et al. 2015; Cicek et al. 2016 (module docstring).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2, width: int = 16,
                 depth: int = 3):
        super().__init__()
        name = f"unet{spatial_dims}d"
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"unet: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        _check_int(name, "in_channels", in_channels, 1)
        _check_int(name, "num_classes", num_classes, 2)
        _check_int(name, "width", width, 1)
        _check_int(name, "depth", depth, 1)
        if depth > 6:
            raise ValueError(f"{name}: depth must be <= 6, got {depth}")
        self.spatial_dims, self.depth, self.name = spatial_dims, depth, name
        chans = [width * 2 ** i for i in range(depth + 1)]
        pool = nn.MaxPool2d(2) if spatial_dims == 2 else nn.MaxPool3d(2)
        self.pool = pool
        self.down = nn.ModuleList([_DoubleConv(spatial_dims, in_channels, chans[0])]
                                  + [_DoubleConv(spatial_dims, chans[i], chans[i + 1]) for i in range(depth)])
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.up_conv = nn.ModuleList([conv(chans[i + 1], chans[i], 3, padding=1, bias=False)
                                      for i in reversed(range(depth))])
        self.up = nn.ModuleList([_DoubleConv(spatial_dims, 2 * chans[i], chans[i]) for i in reversed(range(depth))])
        self.head = conv(chans[0], num_classes, 1)
        nn.init.zeros_(self.head.weight)  # uniform class probabilities at the start: a stable first step
        nn.init.zeros_(self.head.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-voxel logits, shape (N, num_classes, *spatial)."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"{self.name}: expected a {self.spatial_dims + 2}-D batch (N, C, "
                             f"{'H, W' if self.spatial_dims == 2 else 'D, H, W'}), got shape {tuple(x.shape)}")
        step = 2 ** self.depth
        if any(s % step for s in x.shape[2:]):
            raise ValueError(f"{self.name}: every spatial side must be divisible by 2**depth = {step}, got "
                             f"{tuple(x.shape[2:])}; crop or pad the patch (e.g. patch size "
                             f"{tuple(max(step, s - s % step) for s in x.shape[2:])})")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up_conv, block in zip(self.up_conv, self.up, strict=True):
            x = up_conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = block(torch.cat([skips.pop(), x], dim=1))
        return self.head(x)


@register_model("unet2d", task="segmentation")
def unet2d(num_classes: int = 2, in_channels: int = 1, width: int = 16, depth: int = 3) -> UNet:
    """A 2-D U-Net for slices (about 0.47 M parameters at width 16, depth 3)."""
    return UNet(2, in_channels=in_channels, num_classes=num_classes, width=width, depth=depth)


@register_model("unet3d", task="segmentation")
def unet3d(num_classes: int = 4, in_channels: int = 4, width: int = 8, depth: int = 3) -> UNet:
    """A 3-D U-Net for volumes; the defaults fit BraTS (4 MR sequences in, background + 3 sub-regions out)."""
    return UNet(3, in_channels=in_channels, num_classes=num_classes, width=width, depth=depth)
