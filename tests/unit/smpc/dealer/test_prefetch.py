"""The prefetching dealer: offline material by the recorded plan, an online phase that only consumes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medfl.smpc import InMemoryChannel, LocalDealer
from medfl.smpc.dealer.prefetch import PrefetchDealer
from medfl.smpc.engine.layers import Session
from medfl.smpc.evaluator import SecureModel


class CountingDealer(LocalDealer):
    """A real LocalDealer that also counts the requests it serves."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __getattribute__(self, name: str) -> object:
        if name in ("matmul_triple", "trunc_pair", "relu_keys", "mul_triple"):
            object.__setattr__(self, "calls", object.__getattribute__(self, "calls") + 1)
        return object.__getattribute__(self, name)


def _model() -> nn.Module:
    torch.manual_seed(0)  # test model weights only
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2)).eval()


def test_prefetched_queries_are_exact_and_do_no_dealer_work_online() -> None:
    model, inner, ch = _model(), CountingDealer(), InMemoryChannel()
    dealer = PrefetchDealer(inner)
    sm = SecureModel(model, Session(dealer, ch), (1, 12, 12))  # type: ignore[arg-type]
    rng = np.random.default_rng(1)  # test data only
    imgs = [rng.normal(size=(1, 12, 12)).astype(np.float32) for _ in range(3)]
    setup = ch.rounds  # the weights' masks, opened once per session
    sm(imgs[0])  # records the plan
    dealer.end_query()
    rounds = ch.rounds - setup
    dealer.prefetch(2)
    queued = dealer.ready
    calls = inner.calls
    for img in imgs[1:]:
        before = ch.rounds
        got = sm(img)
        assert ch.rounds - before == rounds  # the same protocol, only the material came early
        with torch.no_grad():
            want = model(torch.from_numpy(img)[None])[0].double().numpy()
        assert np.max(np.abs(got - want)) < 1e-2
    assert inner.calls == calls  # online: nothing generated
    assert dealer.ready == 0 and queued > 0


def test_plan_violations_fail_clearly() -> None:
    dealer = PrefetchDealer(LocalDealer())
    with pytest.raises(ValueError, match="no plan yet"):
        dealer.prefetch()
    sm = SecureModel(_model(), Session(dealer, InMemoryChannel()), (1, 12, 12))  # type: ignore[arg-type]
    img = np.zeros((1, 12, 12), np.float32)
    sm(img)
    dealer.end_query()
    with pytest.raises(ValueError, match="call prefetch"):
        sm(img)
    dealer2 = PrefetchDealer(LocalDealer())
    dealer2.trunc_pair((3,), 16)
    dealer2.end_query()
    dealer2.prefetch()
    with pytest.raises(ValueError, match="model or input shape changed"):
        dealer2.trunc_pair((4,), 16)
