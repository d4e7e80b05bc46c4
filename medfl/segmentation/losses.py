"""The segmentation loss: soft Dice plus cross-entropy, as in nnU-Net and the BraTS winners.

MONAI's ``DiceCELoss`` is used as it is (softmax over classes, integer labels turned one-hot),
with ``batch=False`` so that Dice is computed per sample: the batch loss is then the mean of
per-sample losses, which is what per-sample clipping (``loss_reduction="mean"``) assumes.

References
----------
.. [1] F. Isensee et al., "nnU-Net: a self-configuring method for deep learning-based
   biomedical image segmentation", Nature Methods 18, 2021 (Dice + CE).
.. [2] F. Milletari, N. Navab, S.-A. Ahmadi, "V-Net", 3DV 2016 (soft Dice).
.. [3] MONAI Consortium, "MONAI: Medical Open Network for AI", https://monai.io (DiceCELoss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dice_ce_loss", "dice_ce_losses"]


def _checked(logits: Tensor, labels: Tensor, dice_weight: float, ce_weight: float) -> Tensor:
    """``labels`` as (N, 1, *spatial) long class indices, after checking them against ``logits``."""
    if logits.dim() < 4:
        raise ValueError(f"dice_ce_loss: logits must be (N, K, *spatial) with 2 or 3 spatial dims, got "
                         f"{tuple(logits.shape)}")
    if labels.dim() == logits.dim() - 1:
        labels = labels.unsqueeze(1)
    if labels.shape[0] != logits.shape[0] or labels.shape[1] != 1 or labels.shape[2:] != logits.shape[2:]:
        raise ValueError(f"dice_ce_loss: labels of shape {tuple(labels.shape)} do not match logits "
                         f"{tuple(logits.shape)}; expected (N, *spatial) class indices")
    if labels.is_floating_point():
        labels = labels.round()
    k = logits.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"dice_ce_loss: labels must lie in [0, {k - 1}] for {k} classes, got values "
                         f"{int(labels.min())}..{int(labels.max())}")
    if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
        raise ValueError(f"dice_ce_loss: weights must be >= 0 and not both 0, got {dice_weight}, {ce_weight}")
    return labels.to(torch.long)


def dice_ce_losses(logits: Tensor, labels: Tensor, *, dice_weight: float = 1.0, ce_weight: float = 1.0) -> Tensor:
    """Per-sample soft Dice loss + cross-entropy, shape (N,): the loss DP-SGD clips sample by sample.

    The Dice term is MONAI's ``DiceLoss`` with ``reduction="none"`` (one value per sample and
    class, averaged over classes); the cross-entropy is averaged over each sample's voxels. The
    mean of the result equals :func:`dice_ce_loss` (MONAI's ``DiceCELoss`` with ``batch=False``).

    Parameters and errors as :func:`dice_ce_loss`.
    """
    from monai.losses import DiceLoss  # lazy: MONAI imports in about a second

    y = _checked(logits, labels, dice_weight, ce_weight)
    n = logits.shape[0]
    dice = DiceLoss(to_onehot_y=True, softmax=True, batch=False, reduction="none")(logits, y).reshape(n, -1).mean(1)
    ce = F.cross_entropy(logits, y[:, 0], reduction="none").reshape(n, -1).mean(1)
    return dice_weight * dice + ce_weight * ce


def dice_ce_loss(logits: Tensor, labels: Tensor, *, dice_weight: float = 1.0, ce_weight: float = 1.0) -> Tensor:
    """Mean over samples of (soft Dice loss + cross-entropy) for per-pixel/voxel logits.

    Parameters
    ----------
    logits : Tensor
        (N, K, *spatial) raw scores, K >= 2 classes with background at 0.
    labels : Tensor
        (N, *spatial) or (N, 1, *spatial) integer class indices in [0, K).
    dice_weight, ce_weight : float
        Weights of the two terms (both >= 0, not both 0).

    Raises
    ------
    ValueError
        On mismatched shapes or labels outside [0, K).
    """
    from monai.losses import DiceCELoss  # lazy: MONAI imports in about a second

    y = _checked(logits, labels, dice_weight, ce_weight)
    loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=False, lambda_dice=dice_weight, lambda_ce=ce_weight)
    return loss(logits, y)
