"""DCF keys and the FSS ReLU against plaintext, with edge inputs."""

from __future__ import annotations

import numpy as np
import pytest

from medfl.smpc import InMemoryChannel, reconstruct, ring, share
from medfl.smpc.dealer import relu_keys
from medfl.smpc.engine import relu
from medfl.smpc.fss import dcf_eval, dcf_gen

RNG = np.random.default_rng(11)  # test data only


def test_dcf_matches_comparison_on_random_and_edge_points() -> None:
    n = 600
    alpha = RNG.integers(0, 2**64, size=n, dtype=np.uint64)
    alpha[:4] = [0, 1, 2**63, 2**64 - 1]
    beta = RNG.integers(0, 2**64, size=n, dtype=np.uint64)
    near = alpha + RNG.integers(-2, 3, size=n).astype(np.uint64)
    far = RNG.integers(0, 2**64, size=n, dtype=np.uint64)
    k0, k1 = dcf_gen(alpha, beta)
    for x in (near, far, alpha, np.zeros(n, np.uint64), np.full(n, 2**64 - 1, np.uint64)):
        got = dcf_eval(0, k0, x) + dcf_eval(1, k1, x)
        assert np.array_equal(got, np.where(x < alpha, beta, np.uint64(0)))


def test_dcf_single_key_output_looks_uniform() -> None:
    n = 4096
    alpha = np.full(n, 2**40, np.uint64)
    k0, _ = dcf_gen(alpha, np.ones(n, np.uint64))
    y = dcf_eval(0, k0, np.zeros(n, np.uint64))  # true answer is 1 everywhere
    top = (y >> np.uint64(63)).astype(np.float64)
    assert abs(top.mean() - 0.5) < 6 * 0.5 / np.sqrt(n)


@pytest.mark.parametrize("kind", ["random", "all_negative", "near_range", "full_int64", "zeros"])
def test_relu_is_exact(kind: str) -> None:
    if kind == "random":
        x = ring.encode(RNG.normal(size=(3, 50)) * 10)
    elif kind == "all_negative":
        x = ring.encode(-np.abs(RNG.normal(size=(3, 50))) - 2.0**-16)
    elif kind == "near_range":  # activations at the edge of the truncation headroom |x| < 2^62
        raw = np.array([2**62 - 1, -(2**62) + 1, 0, 1, -1, 2**61, -(2**61)], dtype=np.int64)
        x = raw.view(np.uint64)
    elif kind == "full_int64":  # the sign comes out right for every signed 64-bit value
        raw = np.array([2**63 - 1, -(2**63), -(2**63) + 1, 2**62, -(2**62), 2**63 - 2], dtype=np.int64)
        x = np.concatenate([raw.view(np.uint64), RNG.integers(0, 2**64, size=200, dtype=np.uint64)])
    else:
        x = np.zeros(17, np.uint64)
    ch = InMemoryChannel()
    out = reconstruct(relu(share(x), relu_keys(x.size), ch))
    assert np.array_equal(out.view(np.int64), np.maximum(x.view(np.int64), 0))
    assert ch.rounds == 1


@pytest.mark.parametrize("bits", [2, 20, 40, 63])
def test_relu_with_a_planned_range_is_exact_inside_and_wraps_outside(bits: int) -> None:
    half = 2 ** (bits - 1)
    inside = np.concatenate([np.array([half - 1, -half, 0, 1, -1], dtype=np.int64),
                             RNG.integers(-half, half, size=300, dtype=np.int64)])
    ch = InMemoryChannel()
    out = reconstruct(relu(share(inside.view(np.uint64)), relu_keys(inside.size, bits=bits), ch))
    assert np.array_equal(out.view(np.int64), np.maximum(inside, 0))
    assert ch.rounds == 1
    # just outside the plan the sign is that of x mod 2^bits: this is where wrap-around starts
    outside = np.array([half, -half - 1], dtype=np.int64)
    out = reconstruct(relu(share(outside.view(np.uint64)), relu_keys(2, bits=bits), InMemoryChannel()))
    assert np.array_equal(out.view(np.int64), np.array([0, -half - 1], dtype=np.int64))


def test_relu_keys_reject_a_bad_range() -> None:
    for bad in (1, 65):
        with pytest.raises(ValueError, match="bits must be"):
            relu_keys(4, bits=bad)
