"""Sharing, Beaver matrix products and dealer truncation against plaintext ring arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from medfl.errors import RingOverflowError
from medfl.smpc import InMemoryChannel, LocalDealer, mask_weight, matmul, reconstruct, ring, share, truncate
from medfl.smpc.engine.truncation import check_headroom

RNG = np.random.default_rng(7)  # test data only; protocol randomness comes from medfl.csprng


def test_share_reconstructs_and_shares_look_uniform() -> None:
    x = ring.encode(RNG.normal(size=4096))
    s = share(x)
    assert np.array_equal(reconstruct(s), x)
    # share 0 is uniform: its top bit is a fair coin (4096 draws, 6 sigma bound)
    top = (s.s0 >> np.uint64(63)).astype(np.float64)
    assert abs(top.mean() - 0.5) < 6 * 0.5 / np.sqrt(top.size)


def test_encode_decode_roundtrip_and_overflow() -> None:
    x = RNG.normal(size=100).astype(np.float32)
    assert np.max(np.abs(ring.decode(ring.encode(x)) - x)) <= 2.0**-17
    with pytest.raises(RingOverflowError):
        ring.encode(np.array([2.0**48], dtype=np.float32))


@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (3, 7, 5), (4, 33, 2)])
def test_beaver_matmul_is_exact_mod_2_64(m: int, k: int, n: int) -> None:
    x = ring.uniform((m, k))
    w = ring.uniform((k, n))
    ch, dealer = InMemoryChannel(), LocalDealer()
    mw = mask_weight(share(w), dealer, ch)
    assert ch.rounds == 1
    for _ in range(2):  # the weight mask serves several queries
        z = matmul(share(x), mw, dealer, ch)
        assert np.array_equal(reconstruct(z), x @ w)
    assert ch.rounds == 3
    assert ch.bytes_sent == [8 * (k * n + 2 * m * k)] * 2


def _clear_floor(raw: np.ndarray, f: int) -> np.ndarray:
    return raw.view(np.int64) >> f  # arithmetic shift: floor division by 2^f


@pytest.mark.parametrize("f", [0, 1, 16, 32])
def test_truncation_within_one_ulp_including_edges(f: int) -> None:
    lim = 2**62 - 1
    vals = np.concatenate([RNG.integers(-lim, lim, size=2000), [0, 1, -1, lim, -lim, 2**f, -(2**f)]])
    raw = vals.astype(np.int64).view(np.uint64)
    ch, dealer = InMemoryChannel(), LocalDealer()
    out = reconstruct(truncate(share(raw), dealer.trunc_pair(raw.shape, f), ch)).view(np.int64)
    diff = out - _clear_floor(raw, f)
    assert set(np.unique(diff)) <= {0, 1}
    assert ch.rounds == 1


def test_fixed_point_product_then_truncation_matches_plaintext() -> None:
    x = RNG.normal(size=(2, 6)).astype(np.float32)
    w = RNG.normal(size=(6, 3)).astype(np.float32)
    ch, dealer = InMemoryChannel(), LocalDealer()
    mw = mask_weight(share(ring.encode(w)), dealer, ch)
    z = matmul(share(ring.encode(x)), mw, dealer, ch)
    y = truncate(z, dealer.trunc_pair(z.s0.shape, ring.FRAC_BITS), ch)
    got = ring.decode(reconstruct(y))
    assert np.max(np.abs(got - x.astype(np.float64) @ w)) < 1e-3


def test_headroom_check_shows_where_wraparound_starts() -> None:
    check_headroom(np.array([2**62 - 1, -(2**62) + 1], dtype=np.int64).view(np.uint64))
    with pytest.raises(RingOverflowError, match="2\\^62"):
        check_headroom(np.array([2**62], dtype=np.int64).view(np.uint64))
    # just past the headroom, truncation is off by a wrap: the error is 2^(64-f) scale, not one ulp
    raw = np.full(64, 2**63 - 5, dtype=np.int64).view(np.uint64)
    ch, dealer = InMemoryChannel(), LocalDealer()
    out = reconstruct(truncate(share(raw), dealer.trunc_pair(raw.shape, 16), ch)).view(np.int64)
    assert np.any(np.abs(out - _clear_floor(raw, 16)) > 2**40)


def test_opened_values_are_uniform_and_independent_of_input() -> None:
    ch, dealer = InMemoryChannel(record=True), LocalDealer()
    zeros = np.zeros(4096, dtype=np.uint64)
    big = np.full(4096, 2**61, dtype=np.uint64)
    truncate(share(zeros), dealer.trunc_pair(zeros.shape, 16), ch)
    truncate(share(big), dealer.trunc_pair(big.shape, 16), ch)
    v0 = np.frombuffer(ch.views[1][0], dtype=np.uint64)
    v1 = np.frombuffer(ch.views[1][1], dtype=np.uint64)
    for v in (v0, v1):
        bits = ((v[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)
        assert np.all(np.abs(bits - 0.5) < 6 * 0.5 / np.sqrt(v.size))
