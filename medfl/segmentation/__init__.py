"""Segmentation: the Dice + cross-entropy loss and per-class Dice / HD95 metrics (from MONAI)."""

from medfl.segmentation.losses import dice_ce_loss
from medfl.segmentation.metrics import segmentation_metrics

__all__ = ["dice_ce_loss", "segmentation_metrics"]
