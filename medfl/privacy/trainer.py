"""DP-SGD training: Poisson-sampled logical batches, micro-batches, per-sample clipping, secure noise.

One :meth:`DPTrainer.step` is one step of DP-SGD [1]: draw a logical batch by Poisson sampling
at rate ``q`` (:mod:`medfl.privacy.sampling`), run it through the model in micro-batches of at
most ``max_physical_batch`` records (one forward and one backward each), clip every record's
gradient to ``max_grad_norm`` and sum (:class:`~medfl.privacy.clipping.GradSampleClipper`),
add Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm`` once per logical
batch (:mod:`medfl.privacy.noise`), divide by the *expected* batch size ``q * n`` (the
sensitivity analysis of Poisson sampling needs a fixed denominator [2]), step the optimiser,
and record the step with the accountant (:mod:`medfl.privacy.accountant`).

References
----------
.. [1] M. Abadi et al., "Deep learning with differential privacy", CCS 2016.
.. [2] I. Mironov, K. Talwar, L. Zhang, "Renyi differential privacy of the sampled Gaussian
   mechanism", arXiv:1908.10530, 2019.
.. [3] A. Yousefpour et al., "Opacus: user-friendly differential privacy library in PyTorch",
   arXiv:2109.12298, 2021 (virtual steps, validate before training).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from medfl.privacy.accountant import Accountant, SgdRun, noise_multiplier_for
from medfl.privacy.clipping import GradSampleClipper
from medfl.privacy.noise import gaussian_for
from medfl.privacy.sampling import micro_batches, poisson_indices
from medfl.privacy.validation import UnsupportedModel, validate

__all__ = ["DPTrainer", "StepStats", "steps_per_epoch"]

#: per-record loss: (logits, targets) -> losses of shape (B,)
Criterion = Callable[[Tensor, Tensor], Tensor]


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def steps_per_epoch(sample_rate: float) -> int:
    """Logical batches per epoch at Poisson rate ``q``: ``round(1 / q)``, at least 1."""
    return max(1, round(1.0 / sample_rate))


@dataclass(frozen=True)
class StepStats:
    """What one DP-SGD step reports (nothing here is a secret: no per-record values).

    ``loss`` is the mean loss of the sampled records before the step (NaN for an empty
    batch); ``clipped`` the fraction of records whose gradient was clipped; ``epsilon`` the
    guarantee at ``delta`` after the step, or None when not computed for this step.
    """

    step: int
    batch_size: int
    loss: float
    clipped: float
    epsilon: float | None


class DPTrainer:
    """DP-SGD on a model and a map-style dataset.

    Parameters
    ----------
    model : torch.nn.Module
        A DP-compatible model (run :func:`medfl.privacy.fix` first); trained in place.
    optimizer : torch.optim.Optimizer
        Over the model's parameters; it sees the noised, averaged gradient.
    dataset : torch.utils.data.Dataset
        Map-style (index access); ``TensorDataset`` is gathered without a Python loop.
    max_grad_norm : float
        Per-record clip bound ``C``.
    delta : float
        Delta at which epsilon is reported.
    noise_multiplier : float, optional
        ``sigma``; give it or ``target_epsilon``.
    target_epsilon : float, optional
        Budget for the whole training (``prior`` included); ``sigma`` is then chosen by the
        accountant for ``steps`` (or ``epochs``) steps.
    sample_rate : float, optional
        Poisson rate ``q``; default ``batch_size / len(dataset)``.
    batch_size : int, optional
        Expected logical batch size (used when ``sample_rate`` is not given).
    steps, epochs : int, optional
        Planned training length, needed with ``target_epsilon``.
    accountant : {"rdp", "pld"}
        Accounting method.
    prior : sequence of SgdRun
        Runs this data already spent in the same budget (earlier rounds of a job).
    max_physical_batch : int
        Largest micro-batch put through the model at once (memory bound; no privacy effect).
    criterion : callable, optional
        Per-record losses ``(logits, y) -> (B,)``; default cross-entropy.
    regularizer : callable, optional
        A data-independent loss of the parameters (e.g. FedProx's proximal term); its gradient
        is added after the noise, which is allowed because it reads no record.
    epsilon_every : int, optional
        Compute epsilon after every ``epsilon_every`` steps (0: never; ask :meth:`epsilon`).
        Default: every step with RDP; once per epoch with PLD, whose analysis costs about a
        second per call.
    device : str or torch.device
        Where micro-batches are moved.

    References
    ----------
    Abadi et al. 2016; Mironov et al. 2019; Yousefpour et al. 2021 (module docstring).
    """

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset,
                 max_grad_norm: float, delta: float, noise_multiplier: float | None = None,
                 target_epsilon: float | None = None, sample_rate: float | None = None,
                 batch_size: int | None = None, steps: int | None = None, epochs: int | None = None,
                 accountant: str = "rdp", prior: Sequence[SgdRun] = (), max_physical_batch: int = 64,
                 criterion: Criterion | None = None, regularizer: Callable[[], Tensor] | None = None,
                 epsilon_every: int | None = None, device: str | torch.device = "cpu"):
        problems = validate(model)
        if problems:
            raise UnsupportedModel(problems)
        self.n = len(dataset)  # type: ignore[arg-type]
        if self.n < 1:
            raise ValueError("cannot train on an empty data set")
        self.sample_rate = self._rate(sample_rate, batch_size)
        if epsilon_every is None:
            epsilon_every = 1 if accountant == "rdp" else steps_per_epoch(self.sample_rate)
        if max_physical_batch < 1 or epsilon_every < 0:
            raise ValueError(f"need max_physical_batch >= 1 and epsilon_every >= 0, got {max_physical_batch} "
                             f"and {epsilon_every}")
        self.model, self.optimizer, self.dataset = model, optimizer, dataset
        self.delta = float(delta)
        self.max_physical_batch = max_physical_batch
        self.criterion = criterion or _cross_entropy
        self.regularizer = regularizer
        self.epsilon_every = epsilon_every
        self.device = torch.device(device)
        self.accountant = Accountant(accountant=accountant, runs=prior)
        self.noise_multiplier = self._sigma(noise_multiplier, target_epsilon, steps, epochs, prior, accountant)
        self.max_grad_norm = float(max_grad_norm)
        self.clipper = GradSampleClipper(model, max_grad_norm=max_grad_norm, loss_reduction="sum")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps_done = 0

    def _rate(self, sample_rate: float | None, batch_size: int | None) -> float:
        if (sample_rate is None) == (batch_size is None):
            raise ValueError("give exactly one of sample_rate and batch_size")
        if sample_rate is None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
            return min(1.0, batch_size / self.n)
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate={sample_rate!r} must be in (0, 1]")
        return float(sample_rate)

    def _sigma(self, noise_multiplier: float | None, target_epsilon: float | None, steps: int | None,
               epochs: int | None, prior: Sequence[SgdRun], accountant: str) -> float:
        if (noise_multiplier is None) == (target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and target_epsilon")
        if noise_multiplier is not None:
            SgdRun(self.sample_rate, float(noise_multiplier), 0)  # range check with its message
            return float(noise_multiplier)
        if (steps is None) == (epochs is None):
            raise ValueError("target_epsilon needs exactly one of steps and epochs (the planned training length)")
        total = steps if steps is not None else int(epochs or 0) * steps_per_epoch(self.sample_rate)
        return noise_multiplier_for(target_epsilon=float(target_epsilon or 0), delta=self.delta,
                                    sample_rate=self.sample_rate, steps=total, accountant=accountant, prior=prior)

    @property
    def steps_per_epoch(self) -> int:
        """Logical batches per epoch, ``round(1/q)``."""
        return steps_per_epoch(self.sample_rate)

    def epsilon(self) -> float:
        """Epsilon at ``delta`` of everything trained so far (``prior`` included)."""
        return self.accountant.epsilon(self.delta)

    def _gather(self, idx: np.ndarray) -> tuple[Any, Any]:
        if isinstance(self.dataset, TensorDataset):
            t = torch.from_numpy(idx)
            x, y = (d[t] for d in self.dataset.tensors[:2])
        else:
            x, y = default_collate([self.dataset[int(i)] for i in idx])[:2]
        return x.to(self.device), y.to(self.device)

    def _clipped_sums(self, indices: np.ndarray) -> tuple[list[Tensor], float, int]:
        sums = [torch.zeros_like(p) for p in self.params]
        loss_total, clipped = 0.0, 0
        for mb in micro_batches(indices, max_size=self.max_physical_batch):
            x, y = self._gather(mb)
            for p in self.params:
                p.grad = None
            losses = self.criterion(self.model(x), y)
            losses.sum().backward()
            norms = self.clipper.clip_and_accumulate()
            clipped += int((norms > self.max_grad_norm).sum())
            loss_total += float(losses.detach().sum())
            for s, p in zip(sums, self.params, strict=True):
                if p.grad is not None:
                    s.add_(p.grad)
        return sums, loss_total, clipped

    def step(self) -> StepStats:
        """One DP-SGD step on a fresh Poisson sample; returns its statistics."""
        self.model.train()
        indices = poisson_indices(self.n, rate=self.sample_rate)
        sums, loss_total, clipped = self._clipped_sums(indices)
        std = self.noise_multiplier * self.max_grad_norm
        denom = self.sample_rate * self.n
        for s, p, z in zip(sums, self.params, gaussian_for(self.params, std=std), strict=True):
            p.grad = s.add_(z).div_(denom)  # the sums are this step's own buffers
        if self.regularizer is not None:
            self.regularizer().backward()  # data-independent: added after the noise
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.accountant.step(sample_rate=self.sample_rate, noise_multiplier=self.noise_multiplier)
        self.steps_done += 1
        b = len(indices)
        eps = self.epsilon() if self.epsilon_every and self.steps_done % self.epsilon_every == 0 else None
        return StepStats(step=self.steps_done, batch_size=b, loss=loss_total / b if b else math.nan,
                         clipped=clipped / b if b else 0.0, epsilon=eps)

    def train(self, *, steps: int | None = None, epochs: int | None = None,
              on_step: Callable[[StepStats], None] | None = None) -> list[StepStats]:
        """Run ``steps`` steps, or ``epochs * steps_per_epoch`` steps; returns every step's stats."""
        if (steps is None) == (epochs is None):
            raise ValueError("give exactly one of steps and epochs")
        total = steps if steps is not None else int(epochs or 0) * self.steps_per_epoch
        if total < 0:
            raise ValueError(f"cannot train {total} steps")
        out = []
        for _ in range(total):
            stats = self.step()
            out.append(stats)
            if on_step is not None:
                on_step(stats)
        return out

    def close(self) -> None:
        """Remove the clipping hooks from the model."""
        self.clipper.remove()
