"""Local training and validation at a hospital: plain SGD/Adam, or DP-SGD when the job asks for it.

References
----------
.. [1] Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020 (the FedProx
   proximal term).
.. [2] M. Abadi et al., "Deep learning with differential privacy", CCS 2016 (DP-SGD, run by
   :class:`medfl.privacy.trainer.DPTrainer`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from agent.budget import RoundPlan
from agent.metrics import accuracy, binary_log_loss, roc_auc
from medfl.privacy.accountant import SgdRun
from medfl.privacy.trainer import DPTrainer

__all__ = ["TrainResult", "evaluate", "evaluate_segmentation", "train_local"]


@dataclass(frozen=True)
class TrainResult:
    """What a local training pass reports."""

    num_samples: int
    mean_loss: float
    seconds: float
    epsilon: float | None = None
    steps: int = 0


def train_local(model: torch.nn.Module, dataset: TensorDataset, *, epochs: int, batch_size: int, lr: float,
                momentum: float = 0.9, weight_decay: float = 0.0, fedprox_mu: float = 0.0, optimizer: str = "sgd",
                global_arrays: dict[str, np.ndarray] | None = None, seed: int = 0,
                progress: Callable[[int, int], None] | None = None, device: str = "cpu",
                dp: RoundPlan | None = None, dp_prior: tuple[SgdRun, ...] = (),
                task: str = "classification") -> TrainResult:
    """Train ``model`` in place on ``dataset`` with SGD: cross-entropy, or Dice + cross-entropy.

    Parameters
    ----------
    model : torch.nn.Module
        Starts from the global weights; trained in place.
    dataset : TensorDataset
        (images, labels).
    epochs, batch_size, lr, momentum, weight_decay
        Optimiser settings (momentum is SGD's).
    fedprox_mu : float
        FedProx proximal coefficient; adds (mu/2)*||w - w_global||^2.
    optimizer : {"sgd", "adam"}
        Local optimiser; its state starts fresh every round.
    global_arrays : dict, optional
        The global weights (required when fedprox_mu > 0).
    seed : int
        Seed of the shuffling generator (the global torch RNG is not touched).
    progress : callable(done, total), optional
        Called after each batch.
    device : str
        Torch device.
    dp : RoundPlan, optional
        Train with DP-SGD as planned (Poisson rate, steps, noise, clip); ``epochs`` and
        ``batch_size`` are then the plan's, and ``seed`` is unused (sampling and noise come from
        the CSPRNG).
    dp_prior : tuple of SgdRun
        Earlier runs of the same job, so the reported epsilon covers the whole job.
    task : {"classification", "segmentation"}
        The loss: cross-entropy of image labels, or per-sample soft Dice + cross-entropy of voxel
        labels (:mod:`medfl.segmentation.losses`; per sample, so DP-SGD clips each case).
    """
    if len(dataset) == 0:
        raise ValueError("cannot train on an empty data set")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not lr > 0 or fedprox_mu < 0 or weight_decay < 0 or not 0 <= momentum < 1:
        raise ValueError(f"need lr > 0, fedprox_mu >= 0, weight_decay >= 0 and 0 <= momentum < 1; got lr={lr}, "
                         f"fedprox_mu={fedprox_mu}, weight_decay={weight_decay}, momentum={momentum}")
    started = time.monotonic()
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                                     weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    anchors = None
    if fedprox_mu > 0:
        if global_arrays is None:
            raise ValueError("fedprox_mu > 0 needs global_arrays")
        names = dict(model.named_parameters())
        missing = sorted(set(names) - set(global_arrays))
        if missing:
            raise ValueError(f"global_arrays lacks parameter(s) {missing[:5]} of the model")
        anchors = {k: torch.as_tensor(global_arrays[k]).to(device) for k in names}
    if task == "segmentation":
        from medfl.segmentation.losses import dice_ce_loss, dice_ce_losses

        batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = dice_ce_loss
        per_sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = dice_ce_losses
    elif task == "classification":
        batch_loss = F.cross_entropy

        def per_sample(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, y, reduction="none")
    else:
        raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
    if dp is not None:
        return _train_dp(model, dataset, opt, dp, dp_prior, anchors, fedprox_mu, progress, device, started,
                         per_sample)
    total = epochs * len(loader)
    losses, done = [], 0
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            loss = batch_loss(model(x), y)
            objective = loss
            if anchors is not None:
                prox = sum(((p - anchors[k]) ** 2).sum() for k, p in model.named_parameters())
                objective = loss + 0.5 * fedprox_mu * prox
            objective.backward()
            opt.step()
            losses.append(float(loss.detach()))
            done += 1
            if progress is not None:
                progress(done, total)
    return TrainResult(num_samples=len(dataset), mean_loss=float(np.mean(losses)),
                       seconds=time.monotonic() - started)


def _train_dp(model: torch.nn.Module, dataset: TensorDataset, opt: torch.optim.Optimizer, plan: RoundPlan,
              prior: tuple[SgdRun, ...], anchors: dict[str, torch.Tensor] | None, mu: float,
              progress: Callable[[int, int], None] | None, device: str, started: float,
              criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> TrainResult:
    regularizer = None
    if anchors is not None:
        named = dict(model.named_parameters())

        def regularizer() -> torch.Tensor:
            return 0.5 * mu * sum(((p - anchors[k]) ** 2).sum() for k, p in named.items())  # type: ignore[return-value]

    trainer = DPTrainer(model=model, optimizer=opt, dataset=dataset, sample_rate=plan.sample_rate,
                        noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm, delta=plan.delta,
                        accountant=plan.accountant, prior=prior, max_physical_batch=plan.max_physical_batch,
                        regularizer=regularizer, epsilon_every=0, device=device, criterion=criterion)
    try:
        stats = trainer.train(steps=plan.steps,
                              on_step=None if progress is None else (lambda s: progress(s.step, plan.steps)))
    finally:
        trainer.close()
    losses = [s.loss * s.batch_size for s in stats if s.batch_size]
    seen = sum(s.batch_size for s in stats)
    return TrainResult(num_samples=len(dataset), mean_loss=float(sum(losses) / seen) if seen else float("nan"),
                       seconds=time.monotonic() - started, epsilon=trainer.epsilon(), steps=plan.steps)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: TensorDataset, *, batch_size: int = 256,
             device: str = "cpu") -> dict[str, float]:
    """Validation metrics of ``model``: n, auc, accuracy, loss (positive class = index 1).

    Parameters
    ----------
    model : torch.nn.Module
        The model to score.
    dataset : TensorDataset
        (images, labels).
    batch_size : int
        Scoring batch size.
    device : str
        Torch device.
    """
    model.to(device).eval()
    probs, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        probs.append(torch.softmax(model(x.to(device)), dim=1)[:, 1].cpu().numpy())
        labels.append(y.numpy())
    p = np.concatenate(probs) if probs else np.zeros(0)
    y = np.concatenate(labels) if labels else np.zeros(0)
    return {"n": float(len(y)), "auc": roc_auc(y, p), "accuracy": accuracy(y, p), "loss": binary_log_loss(y, p)}


@torch.no_grad()
def evaluate_segmentation(model: torch.nn.Module, dataset: TensorDataset, *, num_classes: int, batch_size: int = 4,
                          device: str = "cpu") -> dict[str, float]:
    """Validation metrics of a segmentation model, NaN where undefined.

    The keys: n, dice (mean over the foreground classes), dice_1 .. dice_{K-1}, hd95 (mean over
    the classes, in voxels) and loss (Dice + cross-entropy).

    Parameters
    ----------
    model : torch.nn.Module
        Per-voxel logits (N, K, *spatial).
    dataset : TensorDataset
        (images, class maps).
    num_classes : int
        K, background included.
    batch_size : int
        Scoring batch size.
    device : str
        Torch device.
    """
    import math

    from medfl.segmentation.losses import dice_ce_losses
    from medfl.segmentation.metrics import segmentation_metrics

    model.to(device).eval()
    preds, labels, losses = [], [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        logits = model(x.to(device))
        losses.append(dice_ce_losses(logits, y.to(device)).cpu())
        preds.append(logits.argmax(1).cpu())
        labels.append(y)
    if not preds:
        return {"n": 0.0, "dice": math.nan, "hd95": math.nan, "loss": math.nan,
                **{f"dice_{k}": math.nan for k in range(1, num_classes)}}
    m = segmentation_metrics(torch.cat(preds), torch.cat(labels), num_classes)
    dice, hd = list(m["dice"]), list(m["hd95"])  # type: ignore[call-overload]
    finite_hd = [h for h in hd if math.isfinite(h)]
    out = {"n": float(len(dataset)), "dice": float(m["mean_dice"]),  # type: ignore[arg-type]
           "hd95": float(np.mean(finite_hd)) if finite_hd else math.nan,
           "loss": float(torch.cat(losses).mean())}
    out.update({f"dice_{k + 1}": float(d) for k, d in enumerate(dice)})
    return out
