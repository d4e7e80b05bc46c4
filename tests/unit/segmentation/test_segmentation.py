"""U-Nets, Conv3d per-sample clipping, the Dice+CE loss and the Dice/HD95 metrics (issue 19 items 1, 3).

References are independent: torch.func (vmap + grad) for per-sample gradients, a per-sample loop
for the loss, numpy set counting for Dice and scipy's distance transform for HD95.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from medfl.errors import ConfigError
from medfl.models import create_model, list_models, model_task
from medfl.privacy import GradSampleClipper
from medfl.privacy.validation import validate
from medfl.segmentation import dice_ce_loss, segmentation_metrics

torch.set_num_threads(1)


def _looped_reference(model, x, y, loss_of_one, clip):
    """Per-sample gradients one sample at a time (for losses that check their input, which vmap cannot)."""
    names = [k for k, _ in model.named_parameters()]
    per: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    for i in range(x.shape[0]):
        gs = torch.autograd.grad(loss_of_one(model(x[i:i + 1]), y[i:i + 1]), list(model.parameters()))
        for k, g in zip(names, gs, strict=True):
            per[k].append(g)
    stacked = {k: torch.stack(v) for k, v in per.items()}
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in stacked.values()))
    f = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("b...,b->...", g, f) for k, g in stacked.items()}


def _clipped_reference(model, x, y, loss_of_one, clip):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return loss_of_one(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per.values()))
    f = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("b...,b->...", g, f) for k, g in per.items()}


def _conv3d_net(groups_bias: bool = True) -> nn.Module:
    return nn.Sequential(nn.Conv3d(2, 6, 3, padding=1, bias=groups_bias), nn.GroupNorm(3, 6), nn.ReLU(),
                         nn.Conv3d(6, 8, 3, stride=2, dilation=1, padding=1, bias=False), nn.GroupNorm(4, 8),
                         nn.ReLU(), nn.Conv3d(8, 4, (1, 3, 3), padding=(0, 2, 2), dilation=(1, 2, 2)),
                         nn.Flatten(), nn.LazyLinear(3))


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("clip", [1e-3, 1.0, 1e4])
@pytest.mark.parametrize("bias", [True, False])
def test_conv3d_clipping_matches_torch_func(batch, clip, bias):
    torch.manual_seed(3)
    model = _conv3d_net(bias).double()
    x = torch.randn(batch, 2, 6, 7, 5, dtype=torch.float64)  # odd sides
    model(x[:1])  # materialise the lazy layer
    y = torch.randint(0, 3, (batch,))

    def ce(out, yi):
        return nn.functional.cross_entropy(out, yi, reduction="sum")

    ref = _clipped_reference(model, x, y, ce, clip)
    clipper = GradSampleClipper(model, max_grad_norm=clip)
    ce(model(x), y).backward()
    norms = clipper.clip_and_accumulate()
    assert norms.shape == (batch,) and bool(torch.isfinite(norms).all())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-5, atol=1e-9 * max(1.0, clip))


def test_conv3d_clipping_non_contiguous_and_zero_input():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 4 * 4 * 6, 2)
                          ).double()
    x = torch.randn(3, 1, 6, 4, 4, dtype=torch.float64).transpose(2, 4)  # (3, 1, 4, 4, 6), non-contiguous
    assert not x.is_contiguous()
    x[0] = 0.0
    y = torch.tensor([0, 1, 1])

    def ce(out, yi):
        return nn.functional.cross_entropy(out, yi, reduction="sum")

    ref = _clipped_reference(model, x, y, ce, 0.5)
    clipper = GradSampleClipper(model, max_grad_norm=0.5)
    ce(model(x), y).backward()
    clipper.clip_and_accumulate()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("name,shape,classes", [("unet2d", (3, 1, 16, 16), 2), ("unet3d", (2, 4, 8, 8, 8), 4)])
def test_unets_are_dp_compatible_and_clip_like_torch_func(name, shape, classes):
    torch.manual_seed(5)
    model = create_model(name, num_classes=classes, in_channels=shape[1], width=4, depth=2).double()
    assert validate(model) == []
    for p in model.head.parameters():  # the zero-initialised head would hide the other layers' gradients
        nn.init.normal_(p, std=0.3)
    x = torch.randn(*shape, dtype=torch.float64)
    y = torch.randint(0, classes, (shape[0], *shape[2:]))
    y[0] = 0  # a case with no foreground at all

    ref = _looped_reference(model, x, y, dice_ce_loss, 0.1)
    clipper = GradSampleClipper(model, max_grad_norm=0.1, loss_reduction="mean")
    dice_ce_loss(model(x), y).backward()  # the mean of per-sample losses (Dice per sample)
    clipper.clip_and_accumulate()
    for pname, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[pname], rtol=1e-5, atol=1e-10)


def test_dice_ce_batch_loss_is_the_mean_of_per_sample_losses():
    torch.manual_seed(6)
    logits = torch.randn(4, 3, 8, 8, 8, dtype=torch.float64)
    labels = torch.randint(0, 3, (4, 8, 8, 8))
    whole = dice_ce_loss(logits, labels)
    each = torch.stack([dice_ce_loss(logits[i:i + 1], labels[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(whole, each.mean())
    # the Dice term against a hand computation for one sample (MONAI's smooth terms are 1e-5)
    p = torch.softmax(logits[:1], 1)
    onehot = nn.functional.one_hot(labels[:1], 3).permute(0, 4, 1, 2, 3).double()
    inter, den = (p * onehot).sum((2, 3, 4)), (p + onehot).sum((2, 3, 4))
    dice = (1 - (2 * inter + 1e-5) / (den + 1e-5)).mean()
    ce = nn.functional.cross_entropy(logits[:1], labels[:1])
    torch.testing.assert_close(dice_ce_loss(logits[:1], labels[:1]), dice + ce)


def test_dice_ce_rejects_bad_labels_and_shapes():
    logits = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        dice_ce_loss(logits, torch.full((2, 8, 8), 3))
    with pytest.raises(ValueError, match="do not match"):
        dice_ce_loss(logits, torch.zeros(2, 8, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="spatial"):
        dice_ce_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def _hd95_reference(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import ndimage

    def surface(m):
        return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(m.ndim, 1))

    sa, sb = surface(a), surface(b)
    da = ndimage.distance_transform_edt(~sb)[sa]  # a's surface to b's surface
    db = ndimage.distance_transform_edt(~sa)[sb]
    return max(float(np.percentile(da, 95)), float(np.percentile(db, 95)))


def test_metrics_against_numpy_and_scipy():
    rng = np.random.default_rng(7)
    truth = np.zeros((3, 12, 12, 12), dtype=np.int64)
    pred = np.zeros_like(truth)
    truth[:, 2:8, 2:8, 2:8] = 1
    truth[:, 9:11, 9:11, 9:11] = 2
    pred[:, 3:9, 2:8, 2:7] = 1
    pred[:2, 9:11, 8:11, 9:11] = 2
    truth[2, 9:11, 9:11, 9:11] = 0  # case 2: no class 2 in truth -> its class-2 Dice is not counted
    noise = rng.random(pred.shape) < 0.01
    pred[noise & (pred == 0)] = 1
    m = segmentation_metrics(torch.from_numpy(pred), torch.from_numpy(truth), 3)
    for k in (1, 2):
        dices, hds = [], []
        for i in range(3):
            a, b = pred[i] == k, truth[i] == k
            if b.any():
                dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
            if a.any() and b.any():
                hds.append(_hd95_reference(a, b))
        assert m["dice"][k - 1] == pytest.approx(np.mean(dices), rel=1e-6)
        assert m["hd95"][k - 1] == pytest.approx(np.mean(hds), rel=0.05, abs=0.5)
    assert m["mean_dice"] == pytest.approx(np.mean(m["dice"]))
    assert m["cases"] == 3


def test_metrics_edge_cases():
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    empty = segmentation_metrics(y, y, 2)  # no foreground anywhere: undefined, not perfect
    assert math.isnan(empty["dice"][0]) and math.isnan(empty["mean_dice"]) and math.isnan(empty["hd95"][0])
    y[:, 2:5, 2:5] = 1
    same = segmentation_metrics(y, y, 2)
    assert same["dice"] == [1.0] and same["hd95"] == [0.0]
    logits = nn.functional.one_hot(y, 2).permute(0, 3, 1, 2).float() * 5
    assert segmentation_metrics(logits, y, 2, hd95=False)["dice"] == [1.0]
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\]"):
        segmentation_metrics(y * 2, y, 2)
    with pytest.raises(ValueError, match="must both be"):
        segmentation_metrics(y[:, :4], y, 2)
    with pytest.raises(ValueError, match="3 classes, expected 2"):
        segmentation_metrics(torch.zeros(2, 3, 8, 8), y, 2)


def test_unet_shapes_and_errors():
    assert {"unet2d", "unet3d"} <= set(list_models())
    assert model_task("unet3d") == "segmentation" and model_task("cnn") == "classification"
    net = create_model("unet3d")
    with torch.no_grad():
        out = net(torch.zeros(1, 4, 16, 16, 16))
    assert out.shape == (1, 4, 16, 16, 16) and float(out.abs().max()) == 0.0  # zero head: uniform start
    with pytest.raises(ValueError, match=r"divisible by 2\*\*depth = 8.*patch size \(16, 16, 8\)"):
        net(torch.zeros(1, 4, 17, 16, 12))
    with pytest.raises(ValueError, match="expected a 5-D batch"):
        net(torch.zeros(4, 16, 16, 16))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        create_model("unet2d", num_classes=1)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_jobspec_task_checks():
    from medfl.jobspec import job_from_dict

    spec = job_from_dict({"job": {"name": "x"}})
    assert spec.job.task == "classification" and "task" not in spec.to_dict()["job"]  # old agents read it
    with pytest.raises(ConfigError, match="'unet2d' is a segmentation model but task = 'classification'"):
        job_from_dict({"job": {"name": "x", "model": "unet2d"}})
    with pytest.raises(ConfigError, match="did you mean 'segmentation'"):
        job_from_dict({"job": {"name": "x", "task": "segmentaton"}})
    seg = job_from_dict({"job": {"name": "x", "task": "segmentation", "model": "unet3d", "image_size": 32}})
    assert seg.num_classes == 4 and seg.patch == (32, 32, 32)  # the factory's default classes, a cube
    assert "patch_depth" not in seg.to_dict()["job"]
    liver = job_from_dict({"job": {"name": "x", "task": "segmentation", "model": "unet2d", "image_size": 64,
                                   "patch_depth": 4, "model_args": {"num_classes": 3}}})
    assert liver.num_classes == 3 and liver.patch == (4, 64, 64)
    assert job_from_dict(liver.to_dict()) == liver
    with pytest.raises(ConfigError, match="patch_depth"):
        job_from_dict({"job": {"name": "x", "task": "segmentation", "model": "unet2d", "patch_depth": -1}})


def test_per_sample_dice_ce_matches_monai_dice_ce():
    from medfl.segmentation.losses import dice_ce_loss, dice_ce_losses

    g = torch.Generator().manual_seed(0)
    for shape in ((3, 4, 8, 8, 8), (2, 3, 16, 16), (1, 2, 5, 7)):
        logits = torch.randn(*shape, generator=g)
        labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
        per = dice_ce_losses(logits, labels)
        assert per.shape == (shape[0],)
        assert torch.allclose(per.mean(), dice_ce_loss(logits, labels), atol=1e-6)
        # each sample's loss depends on that sample only (what per-sample clipping needs)
        assert torch.allclose(dice_ce_losses(logits[:1], labels[:1]), per[:1], atol=1e-6)
    with pytest.raises(ValueError, match="labels must lie in"):
        dice_ce_losses(torch.zeros(1, 2, 4, 4), torch.full((1, 4, 4), 2))
