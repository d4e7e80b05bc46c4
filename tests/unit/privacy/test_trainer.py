"""DPTrainer: noise scale, Poisson rate, micro-batches, accounting, and that it actually trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from medfl.privacy import UnsupportedModel
from medfl.privacy.accountant import SgdRun, epsilon
from medfl.privacy.trainer import DPTrainer

torch.set_num_threads(1)


def _zero_grad_setup(n=500, d=100, k=50):
    """Inputs of zeros into a bias-free linear layer: every per-sample gradient is exactly 0."""
    model = nn.Linear(d, k, bias=False)
    nn.init.zeros_(model.weight)
    data = TensorDataset(torch.zeros(n, d), torch.randint(0, k, (n,)))
    return model, data


@pytest.mark.parametrize("sigma,clip", [(1.0, 1.0), (0.5, 3.0)])
def test_noise_has_the_dp_sgd_scale(sigma, clip):
    model, data = _zero_grad_setup()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    tr = DPTrainer(model=model, optimizer=opt, dataset=data, batch_size=25, noise_multiplier=sigma,
                   max_grad_norm=clip, delta=1e-5)
    before = model.weight.detach().clone()
    tr.step()
    first = (model.weight.detach() - before).flatten().double()
    tr.step()
    second = (model.weight.detach() - before).flatten().double() - first
    want = sigma * clip / (tr.sample_rate * len(data))  # lr * sigma * C / (q n)
    for upd in (first, second):
        assert abs(float(upd.mean())) < 4 * want / math.sqrt(upd.numel())
        assert float(upd.std()) == pytest.approx(want, rel=0.05)
        # Gaussian tails: about 0.27 % beyond 3 std
        assert float((upd.abs() > 3 * want).double().mean()) < 0.01
    # fresh noise every step
    assert abs(float(torch.corrcoef(torch.stack([first, second]))[0, 1])) < 0.06


def test_poisson_batches_have_the_sampling_rate():
    model, data = _zero_grad_setup(n=400, d=4, k=2)
    tr = DPTrainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), dataset=data,
                   sample_rate=0.1, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, epsilon_every=0)
    sizes = np.array([s.batch_size for s in tr.train(steps=300)])
    n, q = 400, 0.1
    assert sizes.mean() == pytest.approx(n * q, abs=4 * math.sqrt(n * q * (1 - q) / 300))
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.3)
    assert len(set(sizes.tolist())) > 10  # not a fixed batch size


class _Blobs(Dataset):
    """A map-style dataset (not a TensorDataset): two well separated Gaussian blobs."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.randn(n, 2, 8, 8, generator=g) * 0.5 + (self.y.float() * 2 - 1).view(-1, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 64, 2))


def test_a_few_steps_actually_train():
    torch.manual_seed(0)
    data = _Blobs(2000, seed=1)
    model = _small_net()
    tr = DPTrainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5),
                   dataset=data, batch_size=100, noise_multiplier=0.8, max_grad_norm=1.0, delta=1e-5,
                   max_physical_batch=32)
    with torch.no_grad():
        loss0 = float(nn.functional.cross_entropy(model(data.x), data.y))
    stats = tr.train(steps=30)
    model.eval()
    with torch.no_grad():
        logits = model(data.x)
        loss1 = float(nn.functional.cross_entropy(logits, data.y))
        acc = float((logits.argmax(1) == data.y).float().mean())
    assert loss1 < 0.5 * loss0 and acc > 0.9
    # epsilon after every step is the accountant's for k steps at (q, sigma)
    eps = [s.epsilon for s in stats]
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False))
    assert eps[-1] == pytest.approx(epsilon([SgdRun(0.05, 0.8, 30)], delta=1e-5), rel=1e-12)
    assert tr.epsilon() == eps[-1]


def test_micro_batch_size_does_not_change_the_clipped_sum():
    torch.manual_seed(0)
    data = _Blobs(70, seed=2)
    idx = np.arange(70)
    results = []
    for mb in (1, 7, 64, 70):
        model = _small_net().double()
        model.load_state_dict({k: v.double() for k, v in _seeded_state().items()})
        data.x = data.x.double()
        tr = DPTrainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), dataset=data,
                       batch_size=10, noise_multiplier=1.0, max_grad_norm=0.5, delta=1e-5, max_physical_batch=mb)
        sums, loss, clipped = tr._clipped_sums(idx)
        results.append((sums, loss, clipped))
    for sums, loss, clipped in results[1:]:
        assert clipped == results[0][2] and loss == pytest.approx(results[0][1], rel=1e-12)
        for a, b in zip(sums, results[0][0], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the clip bound holds: the sum of 70 clipped gradients has norm <= 70 * C
    total = math.sqrt(sum(float(s.pow(2).sum()) for s in results[0][0]))
    assert total <= 70 * 0.5 + 1e-9


def _seeded_state():
    torch.manual_seed(123)
    return _small_net().state_dict()


def test_target_epsilon_is_met_after_the_planned_steps():
    model, data = _zero_grad_setup(n=200, d=4, k=2)
    tr = DPTrainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), dataset=data,
                   batch_size=20, target_epsilon=2.0, epochs=3, max_grad_norm=1.0, delta=1e-5, epsilon_every=0)
    assert tr.steps_per_epoch == 10
    tr.train(epochs=3)
    assert 1.9 < tr.epsilon() <= 2.0


def test_prior_rounds_count_towards_the_budget():
    model, data = _zero_grad_setup(n=200, d=4, k=2)
    prior = [SgdRun(0.1, 1.0, 20)]
    tr = DPTrainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), dataset=data,
                   batch_size=20, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, prior=prior)
    assert tr.epsilon() == pytest.approx(epsilon(prior, delta=1e-5))
    tr.train(steps=5)
    assert tr.epsilon() == pytest.approx(epsilon([SgdRun(0.1, 1.0, 25)], delta=1e-5), rel=1e-12)


def test_empty_poisson_batches_still_step_with_noise():
    model, data = _zero_grad_setup(n=3, d=4, k=2)
    tr = DPTrainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), dataset=data,
                   sample_rate=0.01, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    stats = tr.train(steps=20)
    assert any(s.batch_size == 0 and math.isnan(s.loss) for s in stats)
    assert float(model.weight.detach().abs().sum()) > 0  # the noise moved it


def test_regularizer_gradient_is_added_after_the_noise():
    model, data = _zero_grad_setup(n=100, d=4, k=2)
    anchor = torch.full_like(model.weight, 1.0)
    mu = 0.5

    def prox() -> torch.Tensor:
        return 0.5 * mu * (model.weight - anchor).pow(2).sum()

    tr = DPTrainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), dataset=data,
                   batch_size=50, noise_multiplier=1e-9, max_grad_norm=1.0, delta=1e-5, regularizer=prox)
    tr.step()
    # zero data gradient and negligible noise: one step of lr 1 on mu/2 ||w - 1||^2 from 0 gives w = mu
    torch.testing.assert_close(model.weight.detach(), torch.full_like(anchor, mu), rtol=0, atol=1e-6)


def test_bad_models_and_arguments_are_refused():
    _, data = _zero_grad_setup(n=10, d=4, k=2)
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModel, match="GroupNorm"):
        DPTrainer(model=bn, optimizer=torch.optim.SGD(bn.parameters(), lr=0.1), dataset=data, batch_size=2,
                  noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    base = dict(model=model, optimizer=opt, dataset=data, max_grad_norm=1.0, delta=1e-5)
    with pytest.raises(ValueError, match="exactly one of noise_multiplier and target_epsilon"):
        DPTrainer(**base, batch_size=2)
    with pytest.raises(ValueError, match="exactly one of noise_multiplier and target_epsilon"):
        DPTrainer(**base, batch_size=2, noise_multiplier=1.0, target_epsilon=1.0, steps=3)
    with pytest.raises(ValueError, match="exactly one of sample_rate and batch_size"):
        DPTrainer(**base, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="needs exactly one of steps and epochs"):
        DPTrainer(**base, batch_size=2, target_epsilon=1.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        DPTrainer(**base, batch_size=2, noise_multiplier=0.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        DPTrainer(**{**base, "max_grad_norm": -1.0}, batch_size=2, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="empty"):
        DPTrainer(**{**base, "dataset": TensorDataset(torch.zeros(0, 4), torch.zeros(0))}, batch_size=2,
                  noise_multiplier=1.0)
