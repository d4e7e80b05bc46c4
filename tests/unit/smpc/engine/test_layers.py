"""Secure layers (conv, linear, ReLU, max-pool, avg-pool, residual add) vs torch on random inputs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from medfl.smpc import InMemoryChannel, LocalDealer, reconstruct, ring, share
from medfl.smpc.engine.layers import Session, add, avg_pool, conv2d, linear, max_pool2d, prepare_weight, relu_layer

RNG = np.random.default_rng(5)  # test data only
BOUND = 1e-2  # stated bound on the absolute error of a layer's output


def _session() -> Session:
    return Session(LocalDealer(), InMemoryChannel())


def _sh(a: np.ndarray) -> object:
    return share(ring.encode(a))


def _open(x: object) -> np.ndarray:
    return ring.decode(reconstruct(x))  # type: ignore[arg-type]


def test_conv2d_matches_torch_odd_sizes_stride_padding() -> None:
    x = RNG.normal(size=(3, 9, 7)).astype(np.float32)
    w = (RNG.normal(size=(5, 3, 3, 3)) * 0.3).astype(np.float32)
    b = RNG.normal(size=5).astype(np.float32)
    s = _session()
    mw = prepare_weight(_sh(w.reshape(5, -1).T.copy()), s)
    for stride, pad in ((1, 1), (2, 0)):
        got = _open(conv2d(_sh(x), mw, _sh(b), s, kernel=3, stride=stride, padding=pad))
        want = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(w), torch.from_numpy(b), stride, pad)[0]
        assert got.shape == tuple(want.shape)
        assert np.max(np.abs(got - want.double().numpy())) < BOUND


def test_linear_relu_maxpool_avgpool_add() -> None:
    s = _session()
    x = RNG.normal(size=(1, 12)).astype(np.float32)
    w = RNG.normal(size=(12, 4)).astype(np.float32)
    got = _open(linear(_sh(x), prepare_weight(_sh(w), s), None, s))
    assert np.max(np.abs(got - x.astype(np.float64) @ w)) < BOUND

    img = (RNG.normal(size=(2, 8, 6)) * 5).astype(np.float32)
    t = torch.from_numpy(img)
    assert np.array_equal(_open(relu_layer(_sh(img), s)), ring.decode(ring.encode(np.maximum(img, 0))))
    assert np.array_equal(_open(max_pool2d(_sh(img), s)), ring.decode(ring.encode(F.max_pool2d(t, 2).numpy())))
    assert np.max(np.abs(_open(avg_pool(_sh(img), 2, s)) - F.avg_pool2d(t, 2).double().numpy())) < BOUND
    assert np.max(np.abs(_open(add(_sh(img), _sh(img))) - 2 * img)) < BOUND


def test_all_negative_relu_and_maxpool_of_negatives() -> None:
    s = _session()
    img = -np.abs(RNG.normal(size=(1, 4, 4))).astype(np.float32) - 0.5
    assert np.all(_open(relu_layer(_sh(img), s)) == 0)
    want = ring.decode(ring.encode(F.max_pool2d(torch.from_numpy(img), 2).numpy()))
    assert np.array_equal(_open(max_pool2d(_sh(img), s)), want)


def test_max_pool_3x3_stride2_padded_after_relu_matches_torch() -> None:
    """The ResNet stem's pool (separable on shares), on post-ReLU values where zero padding is exact."""
    img = np.maximum(RNG.normal(size=(3, 11, 10)), 0).astype(np.float32)
    s = _session()
    got = _open(max_pool2d(_sh(img), s, kernel=3, stride=2, padding=1))
    want = ring.decode(ring.encode(F.max_pool2d(torch.from_numpy(img), 3, stride=2, padding=1).numpy()))
    assert np.array_equal(got, want)
    assert s.channel.rounds == 4  # type: ignore[attr-defined]
