"""Per-class Dice and 95% Hausdorff distance of predicted label maps (MONAI's implementations).

Classes absent from the truth of a case have no Dice there (NaN, left out of the mean: MONAI's
``ignore_empty``), so a case without tumour neither raises nor lowers the tumour Dice.
HD95 is NaN where either side is empty (undefined), and is reported in voxels unless spacing is given.

References
----------
.. [1] L. R. Dice, "Measures of the amount of ecologic association between species", Ecology 1945.
.. [2] B. H. Menze et al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)",
   IEEE TMI 2015 (Dice and the 95th-percentile Hausdorff distance per sub-region).
.. [3] MONAI Consortium, https://monai.io (DiceMetric, compute_hausdorff_distance).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["segmentation_metrics"]


def _nanmean(x: Tensor) -> float:
    ok = ~torch.isnan(x)
    return float(x[ok].mean()) if bool(ok.any()) else math.nan


def segmentation_metrics(pred: Tensor, labels: Tensor, num_classes: int, *,
                         spacing: Sequence[float] | None = None, hd95: bool = True) -> dict[str, object]:
    """Dice and HD95 per foreground class, each averaged over the cases where it is defined.

    Parameters
    ----------
    pred : Tensor
        (N, K, *spatial) logits, or (N, *spatial) predicted class indices.
    labels : Tensor
        (N, *spatial) true class indices in [0, num_classes).
    num_classes : int
        K, background included.
    spacing : sequence of float, optional
        Voxel size (mm) per spatial axis for HD95; voxels when omitted.
    hd95 : bool
        Whether to compute HD95 (the costlier metric).

    Returns
    -------
    dict
        ``dice`` and ``hd95``: lists of K-1 floats (class 1..K-1, NaN where never defined);
        ``mean_dice``: mean of the defined per-class Dice values; ``cases``: N.
    """
    from monai.metrics import DiceMetric, compute_hausdorff_distance
    from monai.networks.utils import one_hot

    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"segmentation_metrics: num_classes must be an integer >= 2, got {num_classes!r}")
    if pred.dim() == labels.dim() + 1:
        if pred.shape[1] != num_classes:
            raise ValueError(f"segmentation_metrics: logits have {pred.shape[1]} classes, expected {num_classes}")
        pred = pred.argmax(1)
    if pred.shape != labels.shape or pred.dim() not in (3, 4):
        raise ValueError(f"segmentation_metrics: prediction {tuple(pred.shape)} and labels {tuple(labels.shape)} "
                         "must both be (N, H, W) or (N, D, H, W) class maps")
    for name, t in (("prediction", pred), ("labels", labels)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"segmentation_metrics: {name} values must lie in [0, {num_classes - 1}]")
    p1 = one_hot(pred.long().unsqueeze(1), num_classes)
    y1 = one_hot(labels.long().unsqueeze(1), num_classes)
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    dice = torch.as_tensor(metric(p1, y1))  # (N, K-1)
    out: dict[str, object] = {"cases": int(pred.shape[0]),
                              "dice": [_nanmean(dice[:, k]) for k in range(num_classes - 1)]}
    out["mean_dice"] = _nanmean(torch.tensor(out["dice"], dtype=torch.float64))  # type: ignore[arg-type]
    if hd95:
        with warnings.catch_warnings():  # MONAI warns for every empty class; NaN already says it
            warnings.simplefilter("ignore")
            hd = compute_hausdorff_distance(p1, y1, include_background=False, percentile=95,
                                            spacing=list(spacing) if spacing is not None else None)
        hd = hd.to(torch.float64)
        hd[torch.isinf(hd)] = math.nan
        out["hd95"] = [_nanmean(hd[:, k]) for k in range(num_classes - 1)]
    return out
